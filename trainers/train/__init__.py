"""The training engine: one loop (``loop.train``) for DreamBooth and LoRA, typed configs, a strategy seam.

Importing this package is cheap (no torch, no PIL); ``train`` and the loop's types are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from .config import DreamBoothConfig, TrainConfig
from .strategy import FullFineTune, Strategy

_FROM_LOOP = ("Callbacks", "ProgressInfo", "TrainOutcome", "plan", "train")

__all__ = ["DreamBoothConfig", "FullFineTune", "Strategy", "TrainConfig", *_FROM_LOOP]


def __getattr__(name: str) -> Any:
    if name in _FROM_LOOP:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
