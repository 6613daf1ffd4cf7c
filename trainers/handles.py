"""The values that flow between Likeness nodes (``LIKENESS_MODEL``, ``LIKENESS_DATASET``, ``LIKENESS_TRAINED``).

They are small, immutable descriptions (paths, hashes, metadata), never weights: ComfyUI caches node outputs, so a
handle must not pin a second copy of a model in memory, and nobody may mutate one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelHandle:
    """An SD1.x base model on disk, from which the engine loads diffusers components when it runs."""

    path: str  # single file (.safetensors/.ckpt/...) or a diffusers folder
    variant: str  # e.g. "sd1" (the only accepted one today)
    content_hash: str  # sha256 of the file (or of the folder's files)
    vae_path: str | None = None  # optional separate VAE file
    base_path: str | None = None  # optional checkpoint completing a UNet-only file
    ema: str = "auto"  # "auto" | "ema" | "non_ema"
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """Identity of the weights the trainers will load: the contents of the file, of the separate VAE and base
        files (not their paths, so the CLI and the nodes agree), and the EMA choice."""
        from .fsutil import content_sha256

        parts = [
            self.content_hash,
            content_sha256(self.vae_path) if self.vae_path else "",
            content_sha256(self.base_path) if self.base_path else "",
            self.ema,
        ]
        return "|".join(parts)


@dataclass(frozen=True)
class DatasetHandle:
    """A folder of training images (instance or class) with the prompt that describes them."""

    folder: str
    prompt: str
    count: int
    kind: str = "instance"  # "instance" | "class"
    report: str = ""  # human-readable report (face crop) or manifest summary (class images)


@dataclass(frozen=True)
class TrainedResult:
    """What a training node produced: a full checkpoint (DreamBooth) or a LoRA file."""

    kind: str  # "dreambooth" | "lora"
    path: str
    base: ModelHandle | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
