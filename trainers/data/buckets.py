"""Aspect-ratio buckets, the geometry: which training size an image of a given size gets, and fitting it there.

A bucket is a ``(width, height)`` in pixels of about ``resolution``² pixels (never more): a square image trains at
``resolution`` x ``resolution``, a 3:4 portrait at 448 x 576 for 512 (sides multiples of ``step``, 64 for SD1.5,
whose UNet halves the latents three times). :func:`bucket_for`:

- the bucket's aspect is the one closest to the image's (within 1:2 .. 2:1) among the sizes whose sides are
  multiples of ``step`` and whose area is at most ``resolution``²; the square bucket is always a candidate;
- an image is resized to cover its bucket and centre-cropped (:func:`fit`); it is **never enlarged more than**
  ``max_upscale`` (default 2, the face crop's warning limit): a smaller image gets a smaller bucket of the same
  aspect instead (kohya's ``bucket_no_upscale`` does the same without any enlargement).

The face crop writes its 3:4 portrait crops at :func:`portrait_size`, the bucket training puts them in. Batches of
one bucket are :mod:`trainers.train.buckets`' business. Plain functions; PIL only inside :func:`fit`.
"""

from __future__ import annotations

import math

Bucket = tuple[int, int]  # (width, height) in pixels

MAX_ASPECT = 2.0  # buckets run from 1:2 to 2:1


def bucket_for(width: int, height: int, resolution: int, step: int, max_upscale: float) -> Bucket:
    """The bucket of an image of ``width`` x ``height`` pixels (see the module docstring)."""
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    bucket = _closest(aspect, resolution, step)
    scale = max(bucket[0] / width, bucket[1] / height)
    if scale <= max_upscale + 1e-9:
        return bucket
    shrink = max_upscale / scale
    w = max(step, math.floor(bucket[0] * shrink / step) * step)
    h = max(step, math.floor(bucket[1] * shrink / step) * step)
    if bucket[0] == bucket[1]:
        w = h = min(w, h)
    return (w, h)


def _closest(aspect: float, resolution: int, step: int) -> Bucket:
    """Among the sizes near ``resolution``² at this aspect (sides rounded to ``step``), the closest in aspect."""
    area = resolution * resolution
    ideal_w, ideal_h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    candidates = {(resolution, resolution)}
    for w in (math.floor(ideal_w / step) * step, math.ceil(ideal_w / step) * step):
        for h in (math.floor(ideal_h / step) * step, math.ceil(ideal_h / step) * step):
            if w >= step and h >= step and w * h <= area:
                candidates.add((w, h))

    def badness(b: Bucket) -> tuple[float, int]:
        return (abs(math.log(b[0] / b[1]) - math.log(aspect)), -b[0] * b[1])

    return min(sorted(candidates), key=badness)


def fit(image, bucket: Bucket, resample=None):
    """Resize ``image`` (PIL) to cover ``bucket`` and centre-crop it to exactly that size (Lanczos by default)."""
    from PIL import Image

    bw, bh = bucket
    w, h = image.size
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), resample if resample is not None else Image.Resampling.LANCZOS)
    left, top = (nw - bw) // 2, (nh - bh) // 2
    return image.crop((left, top, left + bw, top + bh))


def portrait_size(resolution: int, step: int | None = None) -> Bucket:
    """The 3:4 (width:height) bucket for ``resolution``: 448 x 576 for 512 (step 64), 24 x 32 for 32 (step 8).
    The step is 64 (SD1.5's bucket step) for resolutions of 256 and more that are multiples of 64, else 8."""
    step = step or (64 if resolution >= 256 and resolution % 64 == 0 else 8)
    return _closest(0.75, resolution, step)
