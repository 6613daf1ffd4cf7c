"""The subject's reference: one descriptor per photo, their centroid, and how each photo agrees with the others.

:func:`build_reference` reads photos (a folder, files, or in-memory pictures), takes the largest face of each (a
face-crop dataset holds one centred face per photo) and keeps:

- one descriptor per usable photo, and for every photo why it was not used (no face, face too small);
- the **centroid** (mean descriptor): the subject, what generated pictures are measured against;
- each photo's **leave-one-out** similarity: its descriptor against the centroid of the *other* photos, which is what
  the dataset report uses to spot a photo of someone else.

What a picture's faces are is cached by content (the file's bytes, or the pixels of an in-memory picture) under
``<cache>/identity/``, so building the same reference again, or one with a photo added, only describes the new
photos. Cache files hold numbers only; a damaged one is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import cache_dir, file_sha256, write_json_atomic
from .backend import load
from .faces import ANALYSIS_VERSION, MIN_FACE, FaceVector, analyse
from .scoring import similarity

log = logging.getLogger(__name__)

CACHE_FOLDER = "identity"


@dataclass
class Photo:
    """One reference photo: its faces (largest first), the descriptor used (or None) and why not."""

    name: str
    faces: list[FaceVector]
    reason: str = ""  # why the photo is not part of the reference ("" when it is)
    loo: float | None = None  # similarity to the centroid of the other photos

    @property
    def face(self) -> FaceVector | None:
        return self.faces[0] if self.faces else None

    @property
    def used(self) -> bool:
        return not self.reason


@dataclass
class Reference:
    """The subject: usable photos, their descriptors and centroid (see the module docstring)."""

    photos: list[Photo]
    centroid: np.ndarray | None = None
    tag: str = ""  # the backend's identity: references of another backend are not comparable
    notes: list[str] = field(default_factory=list)

    @property
    def used(self) -> list[Photo]:
        return [p for p in self.photos if p.used]

    @property
    def ready(self) -> bool:
        return self.centroid is not None

    def vectors(self) -> np.ndarray:
        return np.stack([p.face.array() for p in self.used]) if self.used else np.zeros((0, 128))

    def summary(self) -> str:
        used = len(self.used)
        text = f"reference: {used} of {len(self.photos)} photos with a usable face"
        skipped = [f"{p.name} ({p.reason})" for p in self.photos if not p.used]
        return text + (f"; not used: {', '.join(skipped)}" if skipped else "")


# ---------------------------------------------------------------------------------------------------------------
# building


def build_reference(items: Sequence[Any], *, cache: bool = True) -> Reference:
    """A reference from photos: paths (files, or a folder of photos) or ``(name, picture)`` pairs."""
    models = load()
    photos = [_photo(name, faces) for name, faces in _analysed(_expand(items), models.tag, cache)]
    ref = Reference(photos, tag=models.tag)
    vectors = ref.vectors()
    if len(vectors):
        ref.centroid = vectors.mean(axis=0)
    _leave_one_out(ref, vectors)
    return ref


def _expand(items: Sequence[Any]) -> list[tuple[str, Any]]:
    """``(name, path-or-picture)`` for each photo; a folder becomes its images."""
    from ..data.images import list_images

    out: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, tuple):
            out.append((str(item[0]), item[1]))
            continue
        p = Path(item)
        if p.is_dir():
            out += [(f.relative_to(p).as_posix(), f) for f in list_images(p)]
        else:
            out.append((p.name, p))
    return out


def _analysed(items: list[tuple[str, Any]], tag: str, cache: bool) -> list[tuple[str, list[FaceVector] | str]]:
    """Each photo's faces (from the cache when known), or the reason it could not be read."""
    from ..errors import DatasetError

    out: list[tuple[str, list[FaceVector] | str]] = []
    for name, item in items:
        try:
            out.append((name, faces_of(item, tag, cache=cache)))
        except DatasetError as e:
            out.append((name, f"unreadable ({e})"))
    return out


def _photo(name: str, faces: list[FaceVector] | str) -> Photo:
    if isinstance(faces, str):
        return Photo(name, [], faces)
    if not faces:
        return Photo(name, [], "no face found")
    if faces[0].vector is None:
        return Photo(name, faces, f"face too small ({faces[0].side:.0f} px; needs {MIN_FACE})")
    return Photo(name, faces)


def _leave_one_out(ref: Reference, vectors: np.ndarray) -> None:
    """Each used photo's similarity to the mean of the others (needs at least two photos)."""
    n = len(vectors)
    if n < 2:
        return
    total = vectors.sum(axis=0)
    for photo, v in zip(ref.used, vectors, strict=True):
        others = (total - v) / (n - 1)
        photo.loo = similarity(float(np.linalg.norm(v - others)))


# ---------------------------------------------------------------------------------------------------------------
# the cache


def content_key(item: Any) -> str:
    """sha256 of a file's bytes, or of a picture's pixels and size."""
    if isinstance(item, (str, Path)):
        return file_sha256(item)
    from .faces import as_rgb_array

    a = as_rgb_array(item)
    return hashlib.sha256(a.tobytes() + repr(a.shape).encode()).hexdigest()


def faces_of(item: Any, tag: str, *, cache: bool = True) -> list[FaceVector]:
    """The faces of one photo (a path or a picture), from the content cache when it has them."""
    key = content_key(item)
    path = cache_dir() / CACHE_FOLDER / f"{tag}-v{ANALYSIS_VERSION}" / key[:2] / f"{key}.json"
    if cache:
        known = _read_cached(path)
        if known is not None:
            return known
    faces = analyse(_picture(item))
    if cache:
        try:
            write_json_atomic(path, {"faces": [f.to_json() for f in faces]})
        except OSError as e:  # a read-only or full cache only costs time
            log.debug("face identity: could not cache %s: %s", path, e)
    return faces


def _picture(item: Any):
    if isinstance(item, (str, Path)):
        from ..data.images import load_rgb

        return load_rgb(item)
    return item


def _read_cached(path: Path) -> list[FaceVector] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [FaceVector.from_json(f) for f in data["faces"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
