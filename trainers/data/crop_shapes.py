"""Face crop extras: 3:4 portrait crops and soft face masks (plain functions on boxes and PIL images).

- **Portrait crops** (:func:`portrait_box`): the width is the square crop's side (the face plus ``margin`` face
  widths each side), the height 4/3 of it, the face centred across and its centre at :data:`FACE_HEIGHT` (40 %)
  of the height from the top: the usual head-and-shoulders framing, with room for hair above and shoulders below.
  Written at :func:`~.buckets.portrait_size` (448 x 576 for 512), the bucket training puts 3:4 images in.
- **Soft masks** (:func:`face_mask`): 1 on an ellipse around the face box (the box widened to take in the hair and
  chin, :data:`MASK_AXES`), falling linearly to 0 at :data:`MASK_FADE` times that ellipse: the face-weighted loss
  weighs the picture outside it by its floor. From the face box (the landmark-based identity backend is not used
  here yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .faces import Face

PORTRAIT = 3 / 4  # width / height
FACE_HEIGHT = 0.40  # the face centre's height from the top, as a share of the portrait's height
MASK_AXES = (0.6, 0.75)  # the ellipse's half-axes in face-box widths / heights (1.2 x 1.5 the box)
MASK_FADE = 1.5  # the mask reaches 0 at this multiple of the ellipse


@dataclass(frozen=True)
class RectBox:
    """A rectangle in image pixels; it reaches past the image only when ``padded``."""

    left: int
    top: int
    width: int
    height: int
    padded: bool = False
    tight: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.width, self.top + self.height)


def _inside(face: Face, left: float, top: float, width: float, height: float) -> bool:
    return (
        face.x >= left - 0.5
        and face.y >= top - 0.5
        and face.x + face.w <= left + width + 0.5
        and face.y + face.h <= top + height + 0.5
    )


def portrait_box(face: Face, width: int, height: int, margin: float) -> RectBox:
    """The 3:4 box around ``face`` (see the module docstring), shifted to stay inside the photo; narrowed to fit a
    small photo while the face stays inside (``tight``); padded as the last resort."""
    want_w = face.side * (1 + 2 * margin)
    fits = min(float(width), height * PORTRAIT)
    for w, tight in ((want_w, False), (fits, True)):
        if w > fits + 1e-6 or (tight and face.side > 0.8 * w):
            continue
        bw, bh = max(1, round(w)), max(1, round(w / PORTRAIT))
        bh = min(bh, height)
        left = round(min(max(face.cx - bw / 2, 0), width - bw))
        top = round(min(max(face.cy - FACE_HEIGHT * bh, 0), height - bh))
        if _inside(face, left, top, bw, bh) and face.x >= 0 and face.y >= 0:
            return RectBox(left, top, bw, bh, tight=tight and want_w > fits)
    bw = max(1, round(max(want_w, face.side)))
    bh = round(bw / PORTRAIT)
    return RectBox(round(face.cx - bw / 2), round(face.cy - FACE_HEIGHT * bh), bw, bh, padded=True)


def cut_rect(image: Image.Image, rect: RectBox, size: tuple[int, int]) -> Image.Image:
    """Cut ``rect`` out of ``image`` and resize it to ``size`` (LANCZOS); pads by edge replication if needed."""
    if not rect.padded:
        return image.resize(size, Image.Resampling.LANCZOS, box=rect.box)
    import cv2

    a = np.asarray(image)
    h, w = a.shape[:2]
    x0, y0, x1, y1 = rect.box
    inner = a[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    padded = cv2.copyMakeBorder(
        inner, max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w), borderType=cv2.BORDER_REPLICATE
    )
    return Image.fromarray(padded).resize(size, Image.Resampling.LANCZOS)


def face_mask(face: Face, rect: RectBox, size: tuple[int, int]) -> Image.Image:
    """The soft face mask of a crop: ``rect`` (source pixels) cut to ``size``, grey levels 0..255."""
    out_w, out_h = size
    kx, ky = out_w / rect.width, out_h / rect.height
    cx, cy = (face.cx - rect.left) * kx, (face.cy - rect.top) * ky
    ax, ay = MASK_AXES[0] * face.w * kx, MASK_AXES[1] * face.h * ky
    yy, xx = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    r = np.sqrt(((xx + 0.5 - cx) / max(ax, 1e-6)) ** 2 + ((yy + 0.5 - cy) / max(ay, 1e-6)) ** 2)
    level = np.clip((MASK_FADE - r) / (MASK_FADE - 1.0), 0.0, 1.0)
    return Image.fromarray(np.round(level * 255).astype(np.uint8), "L")
