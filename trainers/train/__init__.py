"""The training engine: one loop (``loop.train``) for DreamBooth and LoRA, typed configs, a strategy seam.

Importing this package is cheap (no torch); torch, diffusers and accelerate are imported when ``train`` runs.
"""

from .config import DreamBoothConfig, TrainConfig
from .loop import Callbacks, ProgressInfo, TrainOutcome, plan, train
from .strategy import FullFineTune, Strategy

__all__ = [
    "Callbacks",
    "DreamBoothConfig",
    "FullFineTune",
    "ProgressInfo",
    "Strategy",
    "TrainConfig",
    "TrainOutcome",
    "plan",
    "train",
]
