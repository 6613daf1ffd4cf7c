"""Scores: how much a picture's face looks like the subject, on a 0-1 scale with a documented mapping.

**The mapping.** dlib's descriptor distance ``d`` (Euclidean, 128 numbers) becomes
``similarity = clamp(1 - d / 1.2, 0, 1)``: linear, so steps in the curves mean the same everywhere, and dlib's own
same-person threshold ``d = 0.6`` lands on :data:`SAME_PERSON` = 0.5. Measured on real photos: the same person is
0.33-0.43 apart (similarity 0.64-0.73), different people 0.70-0.91 (0.24-0.42). Against a reference *centroid* the
same person comes out closer still (the mean of several photos is nearer to each of them than they are to each
other).

**No score** is given, with the reason, when a picture has no face, when its face is too small to be described, or
when it has several faces of comparable size (the second at least half as large as the first: which one is meant?).
Small faces in the background and weak detections (a pattern on a shirt) do not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DISTANCE_SCALE = 1.2  # similarity 0 at this distance
SAME_PERSON = 0.5  # similarity at dlib's threshold (distance 0.6): above it, the same person by dlib's rule
SEVERAL_FACES = 0.5  # a second face at least this share of the largest one's side makes a picture ambiguous

NO_FACE = "no face"
TOO_SMALL = "face too small"
SEVERAL = "several faces"


def similarity(distance: float) -> float:
    """dlib descriptor distance -> 0-1 similarity (0.5 at dlib's same-person threshold 0.6)."""
    return float(min(1.0, max(0.0, 1.0 - distance / DISTANCE_SCALE)))


def distance_for(similarity_value: float) -> float:
    """The inverse of :func:`similarity` (inside 0-1)."""
    return (1.0 - similarity_value) * DISTANCE_SCALE


@dataclass
class ImageScore:
    """One picture against the subject. ``similarity``/``distance`` are None when there is no score (``reason``)."""

    index: int
    name: str
    faces: int
    similarity: float | None
    distance: float | None
    reason: str = ""
    box: tuple[float, float, float, float] | None = None  # the scored face (else the largest)
    per_face: list[dict[str, Any]] = field(default_factory=list)  # every face: box, similarity (None: too small)

    @property
    def scored(self) -> bool:
        return self.similarity is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "faces": self.faces,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "distance": None if self.distance is None else round(self.distance, 4),
            "reason": self.reason,
            "box": None if self.box is None else [round(v, 1) for v in self.box],
            "per_face": self.per_face,
        }


def score_faces(faces: Sequence[Any], centroid: np.ndarray, *, index: int = 0, name: str = "") -> ImageScore:
    """Score one picture's faces (largest first, as :func:`~.faces.analyse` gives them) against a centroid."""
    from .faces import MIN_FACE

    per_face = []
    for f in faces:
        d = None if f.vector is None else float(np.linalg.norm(f.array() - centroid))
        per_face.append(
            {
                "box": [round(v, 1) for v in f.box],
                "similarity": None if d is None else round(similarity(d), 4),
                "distance": None if d is None else round(d, 4),
            }
        )
    out = ImageScore(index, name, len(faces), None, None, per_face=per_face)
    if not faces:
        out.reason = NO_FACE
        return out
    main = faces[0]
    out.box = main.box
    rivals = [f for f in faces[1:] if f.side >= max(SEVERAL_FACES * main.side, MIN_FACE)]
    if rivals:
        out.reason = f"{SEVERAL} ({1 + len(rivals)})"
    elif main.vector is None:
        out.reason = f"{TOO_SMALL} ({main.side:.0f} px; needs {MIN_FACE})"
    else:
        out.distance = per_face[0]["distance"]
        out.similarity = similarity(out.distance)
    return out


def score(images: Sequence[Any], reference, names: Sequence[str] | None = None) -> list[ImageScore]:
    """Score pictures (PIL images or ``HxWx3`` arrays) against a :class:`~.reference.Reference`, in order."""
    from ..errors import IdentityUnavailable
    from .faces import analyse

    if reference.centroid is None:
        raise IdentityUnavailable(
            f"the reference has no usable face ({reference.summary()}); give photos where the face is clearly visible"
        )
    out = []
    for i, image in enumerate(images):
        name = names[i] if names is not None and i < len(names) else f"image {i + 1}"
        out.append(score_faces(analyse(image), reference.centroid, index=i, name=name))
    return out


def format_table(scores: Sequence[ImageScore], reference=None) -> str:
    """A plain-text table (node report, CLI): one row per picture, in order, then a summary line."""
    lines = []
    if reference is not None:
        lines.append(reference.summary())
    width = max([len(s.name) for s in scores] + [5])
    lines.append(f"{'#':>3}  {'image':<{width}}  faces  similarity  distance  note")
    for s in scores:
        sim = f"{s.similarity:10.3f}" if s.similarity is not None else f"{'-':>10}"
        dist = f"{s.distance:8.3f}" if s.distance is not None else f"{'-':>8}"
        note = s.reason or ("same person" if s.similarity >= SAME_PERSON else "probably someone else")
        lines.append(f"{s.index + 1:>3}  {s.name:<{width}}  {s.faces:>5}  {sim}  {dist}  {note}")
    scored = [s.similarity for s in scores if s.similarity is not None]
    if scored:
        best = max(scores, key=lambda s: -1.0 if s.similarity is None else s.similarity)
        lines.append(
            f"{len(scored)} of {len(scores)} scored; mean {sum(scored) / len(scored):.3f}, best {best.name} "
            f"({best.similarity:.3f}); {SAME_PERSON} = dlib's same-person threshold"
        )
    else:
        lines.append(f"none of {len(scores)} pictures could be scored")
    return "\n".join(lines)


def draw_scores(image: Any, result: ImageScore):
    """A copy of the picture with every face box and its similarity drawn (green: same person, red: not)."""
    from PIL import Image, ImageDraw

    from .faces import as_rgb_array

    canvas = Image.fromarray(as_rgb_array(image))
    draw = ImageDraw.Draw(canvas)
    size = max(12, canvas.width // 24)
    font = _font(size)
    for face in result.per_face:
        x, y, w, h = face["box"]
        value = face["similarity"]
        color = (60, 200, 90) if value is not None and value >= SAME_PERSON else (230, 70, 60)
        draw.rectangle([x, y, x + w, y + h], outline=color, width=max(2, canvas.width // 200))
        label = f"{value:.2f}" if value is not None else "small"
        draw.text((x + 2, max(0, y - size - 2)), label, fill=color, font=font)
    label = f"{result.similarity:.2f}" if result.similarity is not None else result.reason
    draw.text((4, canvas.height - size - 4), label, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=0)
    return canvas


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()
