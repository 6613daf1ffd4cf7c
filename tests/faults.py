"""Fault injection for the reliability tests: a really full disk where the machine allows one, else ENOSPC raised at
the write call itself. Which one ran is printed at the end of the test run."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

USED: set[str] = set()  # "tmpfs" and/or "injected ENOSPC", for the end-of-run summary


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[bool]:
    """Mount a ``size_kb`` tmpfs at ``path`` when running as root with ``mount`` available (yields True), else make
    ``path`` a plain folder (yields False: the caller injects ENOSPC instead)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount") and not os.environ.get("LIKENESS_TEST_NO_TMPFS"):
        run = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, timeout=30
        )
        mounted = run.returncode == 0
    USED.add("tmpfs" if mounted else "injected ENOSPC")
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def enospc_under(folder: Path):
    """A replacement for ``safetensors.torch.save_file`` / ``PIL.Image.Image.save`` wrappers: raise ENOSPC for
    destinations inside ``folder``, like a full disk would, after writing a little (a partial file)."""
    from safetensors.torch import save_file as real_save

    def save_file(tensors, filename, metadata=None):
        if Path(filename).resolve().is_relative_to(folder.resolve()):
            Path(filename).write_bytes(b"\0" * 1024)  # the first blocks landed, then the disk was full
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save(tensors, filename, metadata=metadata)

    return save_file
