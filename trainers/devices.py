"""Where work runs and in which precision: one set of rules for training, LoRA and class images.

- device ``auto`` is CUDA when a GPU is there, else the CPU;
- precision ``auto`` is bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU; fp16 on the CPU is refused
  (PyTorch has no fast half kernels there), bf16 on the CPU is allowed for compute (autocast);
- frozen weights (a LoRA's base model, the VAE and a frozen text encoder, a model that only generates) are kept in the
  compute precision on a GPU and in fp32 on the CPU.

Torch is imported inside the functions, so front ends can import this module cheaply.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: Any = "auto") -> str:
    """``auto`` / ``cpu`` / ``cuda`` (or a ``torch.device``) -> ``"cpu"`` or ``"cuda"``."""
    import torch

    kind = getattr(name, "type", None) or str(name or "auto")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("option 'device' is cuda but no CUDA GPU is available; use device=auto or cpu")
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"option 'device' is {kind!r}; choose one of: {', '.join(DEVICES)}")
    return kind


def resolve_precision(name: str, device_type: str) -> str:
    """The compute precision (``fp32`` / ``fp16`` / ``bf16``) for ``name`` on ``device_type``."""
    import torch

    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r} is not one of: {', '.join(PRECISIONS)}")
    if name != "auto":
        if device_type == "cpu" and name == "fp16":
            raise ConfigError("precision fp16 needs a CUDA GPU; on the CPU use fp32 or bf16")
        return name
    if device_type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def frozen_dtype(precision: str, device_type: str):
    """The dtype of weights that do not train: the compute precision on a GPU, fp32 on the CPU."""
    import torch

    return torch.float32 if device_type == "cpu" else torch_dtype(precision)


@dataclass(frozen=True)
class Placement:
    """Device and precisions of one run (what a training method or a generator is told, never decides)."""

    device_type: str  # "cpu" | "cuda"
    precision: str  # compute precision: "fp32" | "fp16" | "bf16"

    @property
    def frozen_dtype(self):
        return frozen_dtype(self.precision, self.device_type)


def placement(device: Any = "auto", precision: str = "auto") -> Placement:
    device_type = resolve_device(device)
    return Placement(device_type, resolve_precision(precision, device_type))


def to_device(tensor, device):
    """``tensor`` on ``device`` without making the host wait: a CPU tensor bound for a GPU goes through pinned memory
    with a non-blocking copy (a plain ``.to("cuda")`` of pageable memory synchronises the stream)."""
    target = getattr(device, "type", str(device))
    if tensor.device.type == "cpu" and target.startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def release_freed_host_memory() -> None:
    """Give the pages of freed CPU memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    Training on the CPU frees the gradients after every step and allocates them again in the next backward; glibc
    keeps the freed pages of its heap, and the next step's allocations, interleaved with the forward's, do not fit
    them exactly, so the heap grows by hundreds of MB over the first steps (measured on SD1.5: the second step's
    peak 420 MB above the first's). Trimming once a step, while the gradients are gone, keeps the process's
    resident memory at what its tensors hold."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim", None)
    except OSError:
        return None
