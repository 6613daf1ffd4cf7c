"""Aspect-ratio buckets: which training size an image gets, and how a batch of one bucket is chosen.

A bucket is a ``(width, height)`` in pixels of about ``resolution``² pixels (never more): a square image trains at
``resolution`` x ``resolution`` as before, a 3:4 portrait at 448 x 576 for 512 (sides multiples of ``step``, 64 for
SD1.5, whose UNet halves the latents three times). Rules, all plain functions of the image size:

- the bucket's aspect is the one closest to the image's (within 1:2 .. 2:1) among the sizes whose sides are
  multiples of ``step`` and whose area is at most ``resolution``²; the square bucket is always a candidate;
- an image is resized to cover its bucket and centre-cropped; it is **never enlarged more than** ``max_upscale``
  (default 2, the face crop's warning limit): a smaller image gets a smaller bucket of the same aspect instead
  (kohya's ``bucket_no_upscale`` does the same without any enlargement);
- a batch holds images of one bucket only (:class:`BucketOrder`); with one bucket the order is exactly
  :class:`~.dataset.Order`'s, so square datasets train as they always did.

The order stays a pure function of ``(seed, batch index)``: nothing about it is saved for an exact resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


class BucketOrder:
    """Which examples (and whether mirrored) form global batch ``j``: every batch from one bucket.

    ``buckets[i]`` is the bucket of example ``i``. With a single bucket this is :class:`~.dataset.Order` taken
    ``batch_size`` samples at a time (the order square datasets always had). With several, each epoch shuffles
    every bucket's examples, cuts them into batches (the last one of a bucket filled up from the start of the
    same bucket), and shuffles the batches; all from generators seeded with ``(seed, salt, epoch)``.
    """

    def __init__(self, buckets: Sequence[Bucket], seed: int, salt: int, flip: bool, batch_size: int):
        from .dataset import Order

        self.seed, self.salt, self.flip, self.batch_size = seed, salt, flip, batch_size
        self.groups: dict[Bucket, list[int]] = {}
        for i, b in enumerate(buckets):
            self.groups.setdefault(tuple(b), []).append(i)
        self.single = Order(len(buckets), seed, salt, flip) if len(self.groups) == 1 else None
        self.per_epoch = sum(-(-len(v) // batch_size) for v in self.groups.values())
        self._epoch = -1
        self._batches: list[list[tuple[int, bool]]] = []

    def __call__(self, j: int) -> list[tuple[int, bool]]:
        if self.single is not None:
            return [self.single(k) for k in range(j * self.batch_size, (j + 1) * self.batch_size)]
        epoch, pos = divmod(j, self.per_epoch)
        if epoch != self._epoch:
            self._batches = self._epoch_batches(epoch)
            self._epoch = epoch
        return self._batches[pos]

    def _epoch_batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        import torch

        from .dataset import mix_seed

        batches: list[list[tuple[int, bool]]] = []
        for g_index, (_, members) in enumerate(sorted(self.groups.items())):
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.salt, epoch, g_index + 1))
            perm = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            flips = (torch.rand(len(perm), generator=g) < 0.5).tolist()
            picks = [(idx, self.flip and f) for idx, f in zip(perm, flips, strict=True)]
            for start in range(0, len(picks), self.batch_size):
                batch = picks[start : start + self.batch_size]
                batch += [picks[i % len(picks)] for i in range(self.batch_size - len(batch))]
                batches.append(batch)
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.salt, epoch, 0))
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
