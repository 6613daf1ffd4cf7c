"""The training engine: one loop (``loop.train``) for DreamBooth and LoRA, typed configs, a strategy seam, and the
session (``session.Session``) that owns a run's files: its content key, reuse, output name and resumable states.

Importing this package is cheap (no torch, no PIL); the loop's and the session's names load on first use.
"""

from __future__ import annotations

from typing import Any

from .config import DreamBoothConfig, TrainConfig
from .strategy import FullFineTune, Strategy

_LAZY = {
    "Callbacks": ".events",
    "ProgressInfo": ".events",
    "TrainOutcome": ".events",
    "plan": ".plan",
    "train": ".loop",
    "Session": ".session",
}

__all__ = ["DreamBoothConfig", "FullFineTune", "Strategy", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
