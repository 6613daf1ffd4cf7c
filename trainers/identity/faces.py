"""Find, align and describe faces: dlib's HOG detector, 5-point landmarks, the 128-number ResNet descriptor.

:func:`analyse` turns one picture into :class:`FaceVector` s, largest first. Each face is aligned by its 5
landmarks (eye corners and the base of the nose) before it is described, so the same person turned, scaled or lit
differently gets nearly the same descriptor; two descriptors closer than 0.6 (Euclidean) are the same person by
dlib's own rule. A face whose box is under :data:`MIN_FACE` pixels is found but not described (too few pixels to
say who it is).

Detection runs on a copy at most :data:`DETECT_SIDE` pixels long (dlib's HOG window finds faces of 80 px and
more); a picture where nothing is found is searched again at twice the size (faces down to ~40 px) when it is at
most :data:`UPSAMPLE_UNTIL` long, and at four times (~20 px) when at most :data:`UPSAMPLE_TWICE_UNTIL`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import load

MIN_FACE = 40  # px: the side of a face box below which a face is "too small" to be described
WEAK = 0.3  # detector score below which a detection is "weak" (often a pattern on clothes): dropped beside clear faces
DETECT_SIDE = 1024  # px: the longer side of the copy the detector looks at
UPSAMPLE_UNTIL = 800  # px: pictures at most this long are searched again at twice the size when nothing was found
UPSAMPLE_TWICE_UNTIL = 400  # px: ...and at four times the size (faces down to ~20 px, reported as too small)
ANALYSIS_VERSION = 2  # bump when the same picture would give other faces (part of cache keys)

_RUN = threading.Lock()  # dlib's models are shared; one picture at a time


@dataclass(frozen=True)
class FaceVector:
    """One face: its box (x, y, w, h in picture pixels), detector score, 5 landmarks and descriptor (or None)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]
    vector: tuple[float, ...] | None

    @property
    def side(self) -> float:
        return max(self.box[2], self.box[3])

    def array(self) -> np.ndarray:
        if self.vector is None:
            raise ValueError("this face is too small to have a descriptor")
        return np.asarray(self.vector, dtype=np.float64)

    def pose(self) -> dict[str, float]:
        """Head pose from the 5 landmarks: ``turn`` (the nose's offset from the eyes' middle along the eye line, in
        eye distances: 0 frontal, about ±0.3 for a three-quarter view) and ``tilt`` (the eye line's angle, degrees)."""
        p = np.asarray(self.landmarks, dtype=np.float64)
        eye_a, eye_b, nose = p[0:2].mean(axis=0), p[2:4].mean(axis=0), p[4]
        line = eye_a - eye_b
        span = float(line @ line) or 1.0
        turn = float((nose - (eye_a + eye_b) / 2) @ line) / span
        tilt = math.degrees(math.atan2(line[1], line[0]))
        return {"turn": round(turn, 3), "tilt": round(tilt, 1)}

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 3),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "vector": None if self.vector is None else [float(v) for v in self.vector],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaceVector:
        vector = data.get("vector")
        return cls(
            box=tuple(float(v) for v in data["box"]),
            score=float(data["score"]),
            landmarks=tuple((float(x), float(y)) for x, y in data["landmarks"]),
            vector=None if vector is None else tuple(float(v) for v in vector),
        )


def as_rgb_array(image: Any) -> np.ndarray:
    """A PIL image or an ``HxWx3`` array (uint8, or floats in 0..1) as contiguous uint8 RGB."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def analyse(image: Any) -> list[FaceVector]:
    """Every face in a picture, largest first, each aligned and described (unless too small). Weak detections
    (score under :data:`WEAK`: a badge, a pattern on a shirt) are dropped when the picture has a clear face."""
    rgb = as_rgb_array(image)
    models = load()
    with _RUN:
        found = _detect(models, rgb)
        return [_describe(models, rgb, rect, score) for rect, score in found]


def _detect(models, rgb: np.ndarray) -> list[tuple[Any, float]]:
    """Face rectangles (in ``rgb``'s pixels) with detector scores, in :func:`analyse`'s order."""
    h, w = rgb.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(h, w))
    small = rgb if scale == 1.0 else _resize(rgb, scale)
    rects, scores, _ = models.detector.run(small, 0, 0.0)
    for upsample, limit in ((1, UPSAMPLE_UNTIL), (2, UPSAMPLE_TWICE_UNTIL)):
        if len(rects) or max(small.shape[:2]) > limit:
            break
        rects, scores, _ = models.detector.run(small, upsample, 0.0)
    dlib = models.dlib
    out = []
    for r, s in zip(rects, scores, strict=True):
        box = dlib.rectangle(
            round(r.left() / scale), round(r.top() / scale), round(r.right() / scale), round(r.bottom() / scale)
        )
        out.append((box, float(s)))
    if any(score >= WEAK for _, score in out):
        out = [item for item in out if item[1] >= WEAK]
    return sorted(out, key=lambda item: -item[0].width() * item[0].height())


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)))


def _describe(models, rgb: np.ndarray, rect, score: float) -> FaceVector:
    shape = models.landmarks(rgb, rect)
    points = tuple((float(shape.part(i).x), float(shape.part(i).y)) for i in range(shape.num_parts))
    box = (float(rect.left()), float(rect.top()), float(rect.width()), float(rect.height()))
    vector = None
    if max(box[2], box[3]) >= MIN_FACE:
        vector = tuple(float(v) for v in models.descriptor.compute_face_descriptor(rgb, shape, 0, 0.25))
    return FaceVector(box, score, points, vector)
