"""A file-hash cache that outlives the process, so the CLI does not read a 4 GB model again on every start.

Only big files are kept (``MIN_BYTES``: model files; hashing a photo costs less than writing this cache). An entry is
used only while the file's path, size, modification time, change time and inode are all what they were when it was
hashed; any write, replacement, copy or ``touch`` of the file makes it hash again. The cache names content for
identity and reuse only: nothing ever decides what to delete from it.

It lives in ``fsutil.cache_dir()/file_hashes.json`` (``LIKENESS_CACHE`` moves it), holds at most ``MAX_ENTRIES``
files (the least recently used go first) and is written atomically; a damaged or foreign file is ignored and
rewritten. Several processes may share it: the last writer wins, which costs at most one hash again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "likeness.file_hashes"
NAME = "file_hashes.json"
MIN_BYTES = 64 << 20
MAX_ENTRIES = 500


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _file() -> Path:
    from .fsutil import cache_dir

    return cache_dir() / NAME


def _read() -> dict[str, Any]:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def lookup(path: Path, st: os.stat_result) -> str | None:
    """The sha256 recorded for ``path`` in this exact state, or None."""
    if st.st_size < MIN_BYTES:
        return None
    entry = _read().get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == _stamp(st) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return None


def remember(path: Path, st: os.stat_result, digest: str) -> None:
    """Record ``digest`` for ``path`` in its state ``st`` (a cache that cannot be written is only logged)."""
    if st.st_size < MIN_BYTES:
        return
    from .fsutil import write_json_atomic

    files = _read()
    files[str(path)] = {"stamp": _stamp(st), "sha256": digest, "used": time.time()}
    if len(files) > MAX_ENTRIES:
        keep = sorted(files, key=lambda k: files[k].get("used", 0) if isinstance(files[k], dict) else 0)
        files = {k: files[k] for k in keep[-MAX_ENTRIES:]}
    try:
        write_json_atomic(_file(), {"format": FORMAT, "version": 1, "files": files})
    except OSError as e:
        log.debug("could not write the file-hash cache %s: %s", _file(), e)
