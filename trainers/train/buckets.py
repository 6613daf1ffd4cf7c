"""Batches of one aspect bucket (the bucket geometry is :mod:`trainers.data.buckets`).

A batch holds images of one bucket only (:class:`BucketOrder`); with one bucket the order is exactly
:class:`~.dataset.Order`'s, so square datasets train as they always did. The order stays a pure function of
``(seed, batch index)``: nothing about it is saved for an exact resume.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.buckets import MAX_ASPECT, Bucket, bucket_for, fit, portrait_size

__all__ = ["MAX_ASPECT", "Bucket", "BucketOrder", "bucket_for", "fit", "portrait_size"]


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
