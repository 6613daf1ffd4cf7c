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
