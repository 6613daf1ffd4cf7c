"""What each micro-batch holds: subject examples of one bucket, class examples of the same shape, and masks.

:class:`BatchPlan` turns a global batch number into ``[(kind, example, flip), ...]`` — the subject half first,
then (with class images) as many class images — from orders that are pure functions of the seed:

- the subject half comes from :class:`~.buckets.BucketOrder` (one bucket per batch; a single-bucket dataset keeps
  the plain :class:`~.dataset.Order`, so square datasets see exactly the data they always did);
- the class half comes from the class images of the same bucket when there are any (class images generated in the
  same buckets), else from all class images, each resized and centre-cropped to the subject batch's bucket once
  (the same :class:`~.dataset.Example` object every time, so its VAE latents are cached once).

:func:`pixel_masks` stacks the subject half's soft face masks for the face-weighted loss (class images never).
"""

from __future__ import annotations

from typing import Any

from .buckets import Bucket, BucketOrder
from .dataset import Example, ImageSet, Order, mask_tensor, mix_seed, refit


class BatchPlan:
    """The examples of every batch of a run (see the module docstring)."""

    def __init__(self, instance: ImageSet, classes: ImageSet | None, seed: int, flip: bool, batch_size: int):
        self.instance, self.classes, self.batch_size = instance, classes, batch_size
        self.subject = BucketOrder([e.bucket for e in instance.examples], seed, 1, flip, batch_size)
        self.class_orders: dict[Bucket, tuple[Order, list[int]]] = {}
        self.refits: dict[tuple[int, Bucket], Example] = {}
        if classes is not None:
            everyone = list(range(len(classes)))
            by_bucket: dict[Bucket, list[int]] = {}
            for i, e in enumerate(classes.examples):
                by_bucket.setdefault(e.bucket, []).append(i)
            for bucket in self.buckets:
                members = by_bucket.get(bucket, everyone)
                salt = 2 if len(members) == len(everyone) else mix_seed(2, *bucket)
                self.class_orders[bucket] = (Order(len(members), seed, salt, flip), members)

    @property
    def buckets(self) -> list[Bucket]:
        """The subject buckets, most images first (the first is where samples are drawn)."""
        counts: dict[Bucket, int] = {}
        for e in self.instance.examples:
            counts[e.bucket] = counts.get(e.bucket, 0) + 1
        return sorted(counts, key=lambda b: (-counts[b], b))

    def __call__(self, batch: int) -> list[tuple[str, Example, bool]]:
        picks = self.subject(batch)
        out = [("instance", self.instance.examples[i], f) for i, f in picks]
        if self.classes is not None:
            bucket = out[0][1].bucket
            order, members = self.class_orders[bucket]
            for k in range(batch * self.batch_size, (batch + 1) * self.batch_size):
                index, flip = order(k)
                out.append(("class", self.class_example(members[index], bucket), flip))
        return out

    def class_example(self, index: int, bucket: Bucket) -> Example:
        example = self.classes.examples[index]
        if example.bucket == bucket:
            return example
        key = (id(example), bucket)
        if key not in self.refits:
            self.refits[key] = refit(example, bucket)
        return self.refits[key]

    def unique(self) -> list[tuple[str, Example]]:
        """Every distinct example a batch can hold (class images in every subject bucket they are moved to)."""
        out: list[tuple[str, Example]] = [("instance", e) for e in self.instance.unique]
        if self.classes is not None:
            for bucket in self.buckets:
                _, members = self.class_orders[bucket]
                seen: dict[int, Example] = {}
                for i in members:
                    e = self.class_example(i, bucket)
                    seen.setdefault(id(e), e)
                out += [("class", e) for e in seen.values()]
        return out


def has_masks(images: ImageSet) -> bool:
    return any(e.mask is not None for e in images.unique)


def pixel_masks(picks: list[tuple[str, Example, bool]]) -> Any:
    """The subject half's soft masks ``(n, 1, H, W)`` in [0, 1] (all ones for an image without one)."""
    import torch

    return torch.stack([mask_tensor(e, flip) for kind, e, flip in picks if kind == "instance"])
