from __future__ import annotations

import os

import pytest

from trainers.errors import ConfigError
from trainers.fsutil import atomic_path, file_sha256, safe_name, write_json_atomic


def test_atomic_write_is_all_or_nothing(tmp_path):
    dest = tmp_path / "sub" / "model.bin"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("cancelled")
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial or temp file left
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole"
    mask = os.umask(0)
    os.umask(mask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(FileExistsError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"other")
    assert dest.read_bytes() == b"whole"
    write_json_atomic(tmp_path / "a.json", {"b": 1})
    assert (tmp_path / "a.json").read_text().strip().startswith("{")


def test_file_hash_follows_content(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    h1 = file_sha256(f)
    assert h1 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 10**18))
    assert file_sha256(f) != h1


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "  ", ".hidden", "a\\b"])
def test_safe_name_rejects_paths(bad):
    with pytest.raises(ConfigError, match="plain name"):
        safe_name(bad)


def test_safe_name_keeps_plain_names():
    assert safe_name("my_subject-v2") == "my_subject-v2"
    assert safe_name("émilie face") == "_milie face"


def test_big_file_hashes_persist_across_processes_and_follow_every_change(tmp_path, monkeypatch):
    """A model-sized file is hashed once; another process (a fresh in-memory cache) reads the stored hash; writing,
    replacing or touching the file hashes it again; a damaged cache file is ignored."""
    import hashlib

    from trainers import fsutil, hashcache

    monkeypatch.setenv("LIKENESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashcache, "MIN_BYTES", 1000)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 5000)
    reads = []
    real_open = open

    def counting_open(p, *a, **k):
        if str(p) == str(f):
            reads.append(p)
        return real_open(p, *a, **k)

    monkeypatch.setattr("builtins.open", counting_open)
    first = fsutil.file_sha256(f)
    assert first == hashlib.sha256(b"a" * 5000).hexdigest() and len(reads) == 1
    monkeypatch.setattr(fsutil, "_HASH_CACHE", {})  # as if a new process started
    assert fsutil.file_sha256(f) == first and len(reads) == 1  # from the cache on disk, no read
    f.write_bytes(b"b" * 5000)  # same size, new content
    monkeypatch.setattr(fsutil, "_HASH_CACHE", {})
    assert fsutil.file_sha256(f) == hashlib.sha256(b"b" * 5000).hexdigest() and len(reads) == 2
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched
    monkeypatch.setattr(fsutil, "_HASH_CACHE", {})
    fsutil.file_sha256(f)
    assert len(reads) == 3
    (tmp_path / "cache" / "file_hashes.json").write_text("{not json")
    monkeypatch.setattr(fsutil, "_HASH_CACHE", {})
    assert fsutil.file_sha256(f) == hashlib.sha256(b"b" * 5000).hexdigest() and len(reads) == 4
    small = tmp_path / "photo.png"
    small.write_bytes(b"x" * 10)
    fsutil.file_sha256(small)
    assert str(small) not in (tmp_path / "cache" / "file_hashes.json").read_text()  # small files are not kept
