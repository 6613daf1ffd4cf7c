"""Face identity: does a picture show the subject? (dlib: detect, 5-point align, 128-number descriptor.)

- :mod:`.backend` — dlib and its model files, loaded once; :func:`status` says what to install when they are missing
  (the pack imports and trains without them).
- :mod:`.faces` — :func:`analyse`: every face of a picture with its box, landmarks, pose and descriptor.
- :mod:`.reference` — :func:`build_reference`: the subject from its photos (descriptors, centroid, each photo's
  leave-one-out similarity), cached by content.
- :mod:`.scoring` — :func:`score`: per picture the faces found, the similarity (0-1, documented mapping from dlib's
  distance) and the raw distance, or why there is no score; text tables and previews.
- :mod:`.consistency` — the dataset report's identity check (which photo is probably someone else, head-pose spread).
- :mod:`.cli` — ``python -m trainers score --reference DIR IMAGE_OR_DIR...``.

Everything heavy (dlib, the models) loads on first use.
"""

from __future__ import annotations

from .backend import INSTALL, INSTALL_HINT, available, status
from .scoring import SAME_PERSON, ImageScore, similarity

__all__ = [
    "INSTALL",
    "INSTALL_HINT",
    "SAME_PERSON",
    "ImageScore",
    "available",
    "build_reference",
    "score",
    "similarity",
    "status",
]


def build_reference(items, *, cache: bool = True):
    """See :func:`.reference.build_reference`."""
    from .reference import build_reference as build

    return build(items, cache=cache)


def score(images, reference, names=None):
    """See :func:`.scoring.score`."""
    from .scoring import score as run

    return run(images, reference, names)
