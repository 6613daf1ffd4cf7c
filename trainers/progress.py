"""Progress for a person at a terminal: the bars of the CLI and the demo, and log lines that do not break them.

:class:`Bar` draws a tqdm bar on stderr when stderr is a terminal (step, rate, elapsed time and ETA come from tqdm)
and draws nothing otherwise: the commands then print plain lines, which logs, CI and tests read. :class:`LogHandler`
writes log records above any open bar. :func:`saving` shows a bar while a file is written. The engine never uses
this module; its front ends (``cli.py``, the commands, ``demo.py``) do.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Bar", "LogHandler", "interactive", "saving", "tqdm_options", "write"]


def interactive() -> bool:
    """Whether stderr is a terminal (bars are drawn only then)."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def write(text: str) -> None:
    """A line on stderr above the open bars (or a plain line when there are none)."""
    if interactive():
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def tqdm_options() -> dict[str, Any]:
    """tqdm keyword arguments for a bar of ours, e.g. for a library's own bar (diffusers' pipelines)."""
    return {"file": sys.stderr, "leave": True, **_width()}


def _width() -> dict[str, Any]:
    """Follow the terminal's width; a terminal that reports no size (0×0: a bare pty, some CI) gets 100×40
    (tqdm draws nothing in 0 rows)."""
    import os

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return {"dynamic_ncols": True} if columns > 0 else {"ncols": 100, "nrows": 40}


class Bar:
    """One tqdm bar on stderr (a no-op when stderr is not a terminal, or when ``enabled`` is False)."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "it", initial: int = 0,
                 enabled: bool | None = None, bytes_: bool = False):  # fmt: skip
        self.enabled = interactive() if enabled is None else enabled
        self._bar: Any = None
        if self.enabled:
            from tqdm import tqdm

            scale = {"unit": "B", "unit_scale": True, "unit_divisor": 1000} if bytes_ else {"unit": unit}
            self._bar = tqdm(
                total=total, initial=initial, desc=desc, file=sys.stderr, leave=True, mininterval=0.2,
                **_width(), **scale,
            )  # fmt: skip

    @property
    def n(self) -> int:
        return int(self._bar.n) if self._bar is not None else 0

    def to(self, done: int, total: int | None = None, postfix: str | None = None) -> None:
        """Move the bar to ``done`` (of ``total``, when it changed), with a short text after it."""
        bar = self._bar
        if bar is None:
            return
        if total is not None and total != bar.total:
            bar.total = total
        if postfix is not None:
            bar.set_postfix_str(postfix, refresh=False)
        if done != bar.n:
            bar.update(done - bar.n)
        else:
            bar.refresh()

    def describe(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def saving(path: str | Path, enabled: bool | None = None) -> Iterator[Bar]:
    """A bar for writing ``path``: open while the body runs, then filled with the file's size (bytes, rate)."""
    bar = Bar(f"saving {Path(path).name}", None, bytes_=True, enabled=enabled)
    try:
        yield bar
        finish_saving(bar, path)
    finally:
        bar.close()


def finish_saving(bar: Bar, path: str | Path | None) -> None:
    """Fill a saving bar with the size of the file that was written."""
    try:
        size = Path(path).stat().st_size if path else 0
    except OSError:
        size = 0
    bar.to(size or 1, total=size or 1)


class LogHandler(logging.Handler):
    """Log records as plain lines on stderr, written above the open bars."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
