"""A stand-in for the few ``torchvision.transforms`` diffusers' DreamBooth scripts use (benchmarks only): ``Compose``,
``Resize``, ``CenterCrop``, ``RandomCrop``, ``ToTensor``, ``Normalize`` on PIL images, written for the benchmarks.

The project never depends on torchvision; ``benchmarks/probe.py`` loads this file as ``torchvision.transforms`` for
diffusers' runs only, and only when torchvision is not installed. Lighter to import than torchvision, so it can only
favour diffusers' start-up and memory.
"""

from __future__ import annotations

import enum
import random


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


def _pil_filter(mode: InterpolationMode):
    from PIL import Image

    return {
        InterpolationMode.NEAREST: Image.Resampling.NEAREST,
        InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
        InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
        InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
    }[mode]


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    """Shorter side to ``size`` (an int), keeping the aspect ratio."""

    def __init__(self, size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        self.size, self.interpolation = int(size), interpolation

    def __call__(self, image):
        w, h = image.size
        if w <= h:
            nw, nh = self.size, int(self.size * h / w)
        else:
            nw, nh = int(self.size * w / h), self.size
        return image.resize((nw, nh), _pil_filter(self.interpolation))


class CenterCrop:
    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image):
        w, h = image.size
        left, top = round((w - self.size) / 2), round((h - self.size) / 2)
        return image.crop((left, top, left + self.size, top + self.size))


class RandomCrop(CenterCrop):
    def __call__(self, image):
        w, h = image.size
        left, top = random.randint(0, w - self.size), random.randint(0, h - self.size)
        return image.crop((left, top, left + self.size, top + self.size))


class ToTensor:
    """PIL RGB -> float tensor CxHxW in [0, 1]."""

    def __call__(self, image):
        import numpy as np
        import torch

        a = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div(255.0)


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = float(mean[0]), float(std[0])

    def __call__(self, t):
        return (t - self.mean) / self.std
