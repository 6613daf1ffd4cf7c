"""ComfyUI ``IMAGE`` tensors <-> PIL images: the one place the nodes convert pictures.

An ``IMAGE`` is a float32 tensor ``[batch, height, width, channels]`` with values in 0..1 (3 channels; masks and
RGBA batches are reduced to RGB here). The engine works on PIL images and files, never on ``IMAGE`` tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..trainers.errors import ConfigError


def pil_to_image(images: Sequence[Any]):
    """PIL images -> one ``IMAGE`` batch; images of another size than the first are resized to it (Lanczos)."""
    import numpy as np
    import torch
    from PIL import Image

    if not images:
        raise ValueError("no images to convert")
    size = images[0].size
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.LANCZOS)
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))


def blank_image(side: int = 64):
    """A black ``IMAGE`` of one picture (for an output that has nothing to show)."""
    import torch

    return torch.zeros((1, side, side, 3), dtype=torch.float32)


def files_to_image(paths: Iterable[str | Path], limit: int | None = None):
    """The image files (the first ``limit``) as one ``IMAGE`` batch; a blank picture when there are none."""
    from PIL import Image

    chosen = list(paths)[:limit] if limit is not None else list(paths)
    if not chosen:
        return blank_image()
    images = []
    for p in chosen:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return pil_to_image(images)


def image_to_pil(images: Any) -> list:
    """An ``IMAGE`` batch (or one picture ``[H, W, C]``, or a list of either, or PIL images) -> RGB PIL images.

    The input is read, never changed (ComfyUI shares node outputs between nodes).
    """
    import numpy as np
    from PIL import Image

    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, list | tuple):
        return [im for item in images for im in image_to_pil(item)]
    arr = (
        images.detach().to("cpu").float().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    )
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ConfigError(f"the image batch has shape {tuple(arr.shape)}; connect an IMAGE (batch, height, width, 3)")
    arr = arr[..., :3] if arr.shape[-1] != 1 else np.repeat(arr, 3, axis=-1)
    pixels = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return [Image.fromarray(p, mode="RGB") for p in pixels]
