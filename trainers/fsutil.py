"""Small file-system helpers shared by every part of the engine: atomic writes, content hashes, safe names."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

_HASH_CACHE: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, cached in memory by (path, size, mtime, inode) so repeated calls are free, and for
    model-sized files on disk too (:mod:`.hashcache`), so the next process does not read them again."""
    from . import hashcache

    try:
        p = Path(path).resolve()
    except RuntimeError as e:  # Python < 3.13 raises this for a symlink loop; newer ones an OSError
        raise OSError(errno.ELOOP, f"symlink loop ({e})", str(path)) from None
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASH_CACHE:
        known = hashcache.lookup(p, st)
        if known is None:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
            known = h.hexdigest()
            hashcache.remember(p, st, known)
        _HASH_CACHE[key] = known
    return _HASH_CACHE[key]


def folder_stamp(folder: str | Path, *, recursive: bool = True, limit: int = 20_000) -> str:
    """A cheap identity of a folder's state: names, sizes and modification times of its files (no contents read).

    Hidden files and folders are skipped and symlinked folders are not followed; the walk stops after ``limit``
    entries, so a stamp of a huge folder costs a bounded time (and changes when what was seen changes).
    """
    root = Path(folder)
    h = hashlib.sha256(str(root).encode())
    seen = 0
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            seen += 1
            if seen > limit:
                h.update(b"...more")
                return h.hexdigest()
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def content_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, hidden files left out)."""
    p = Path(path)
    if p.is_dir():
        return tree_sha256([q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")], root=p)
    return file_sha256(p)


def tree_sha256(paths: list[Path], root: Path | None = None) -> str:
    """One hash over the names (relative to ``root``) and contents of many files, order independent."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: str(q.relative_to(root) if root else q)):
        name = str(p.relative_to(root) if root else p.name)
        h.update(name.encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it over ``dest``, on error delete it.

    A reader never sees a half-written file, and a cancelled write leaves nothing behind. An existing ``dest`` is an
    error unless ``overwrite`` is set.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; choose another name or allow overwriting")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


_PART_RE = re.compile(r"^\.(?P<dest>.+)\.[A-Za-z0-9_]{8}\.part$")  # what atomic_path's mkstemp names look like
STALE_AFTER_S = 15 * 60  # a temporary file untouched this long belongs to a killed write


def clean_stale_parts(folder: str | Path, *, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files a killed :func:`atomic_path` write left in ``folder`` (our own name pattern only,
    plain files only, and only when untouched for ``older_than`` seconds, so a write in progress is never hit)."""
    import time

    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for p in root.iterdir():
        if not _PART_RE.match(p.name) or p.is_symlink() or not p.is_file():
            continue
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime >= older_than:
                p.unlink()
                removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stable_header(header: bytes) -> bytes:
    """A safetensors JSON header with its ``__metadata__`` in sorted key order, the same length.

    safetensors keeps the metadata in a hash map whose order changes from one write to the next, so identical
    weights and metadata would give different bytes (and a different content hash) every time.
    """
    text = header.rstrip(b" ")
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return header
    meta = data.get("__metadata__") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or list(meta) == sorted(meta):
        return header
    if _compact_json(data) != text:  # not written the way we would write it: leave it untouched
        return header
    data["__metadata__"] = dict(sorted(meta.items()))
    return _compact_json(data) + header[len(text) :]


def _compact_json(data: object) -> bytes:
    """JSON as safetensors (serde_json) writes it: no spaces, UTF-8, the same escapes."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def stable_safetensors_bytes(blob: bytes) -> bytes:
    """A serialized safetensors file (``safetensors.torch.save``) with its metadata in a stable order."""
    if len(blob) < 8:
        return blob
    (n,) = struct.unpack("<Q", blob[:8])
    header = blob[8 : 8 + n]
    fixed = stable_header(header)
    return blob if fixed == header else blob[:8] + fixed + blob[8 + n :]


def _stabilize_file(path: str | Path) -> None:
    """Rewrite a safetensors file's header in place with its metadata in a stable order (same length)."""
    with open(path, "r+b") as f:
        head = f.read(8)
        if len(head) < 8:  # not a safetensors file (nothing was written): nothing to reorder
            return
        (n,) = struct.unpack("<Q", head)
        header = f.read(n)
        fixed = stable_header(header)
        if fixed != header:
            f.seek(8)
            f.write(fixed)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the metadata in a stable order (the same tensors and metadata give the
    same bytes), and a failed write raised as the ``OSError`` it is (safetensors reports a full disk as its own
    error type), so callers can tell a full disk from a bug."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
        _stabilize_file(path)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError carries the OS error in its text
        found = re.search(r"os error (\d+)", str(e))
        if found:
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(path)) from None
        raise


def write_json_atomic(dest: str | Path, data: object, overwrite: bool = True) -> None:
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


MAX_NAME_BYTES = 200  # a file name is at most 255 bytes; our suffixes (".likeness.json", temporary names) need ~50
_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(name: str, what: str = "output name") -> str:
    """Validate a user-chosen file/folder name: no path separators, no '..', nothing hidden, not empty."""
    raw = name.strip()
    if not raw or raw in {".", ".."} or "/" in raw or "\\" in raw or ".." in raw or raw.startswith("."):
        raise ConfigError(
            f"{what} {name!r} is not a plain name: use letters, digits, '-', '_' (no '/', '\\' or '..'), "
            "e.g. 'my_subject'"
        )
    cleaned = _SAFE.sub("_", raw)
    if len(cleaned.encode("utf-8")) > MAX_NAME_BYTES:
        raise ConfigError(
            f"{what} is {len(cleaned.encode('utf-8'))} bytes long; file systems allow 255 and Likeness adds suffixes "
            f"(.safetensors, _2, temporary names): use at most {MAX_NAME_BYTES} characters, e.g. {cleaned[:40]!r}"
        )
    return cleaned


def cache_dir() -> Path:
    """Where Likeness keeps derived files outside ComfyUI's folders (``LIKENESS_CACHE`` overrides)."""
    root = os.environ.get("LIKENESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "likeness"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p
