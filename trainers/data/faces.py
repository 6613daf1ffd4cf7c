"""Face detection behind one small interface, with an offline default that needs no model download.

- :class:`HaarDetector` (default): OpenCV's Haar cascades shipped inside ``opencv-python-headless`` — frontal
  first; if it finds nothing, frontal again on a border-padded copy (faces that fill the frame), then the profile
  cascade on the image and its mirror (faces turned left or right).
- :class:`YuNetDetector`: OpenCV's ``FaceDetectorYN`` with a YuNet ``.onnx`` model the user put on disk (e.g. in
  ComfyUI's ``models/facedetection/``); more accurate on turned and partly hidden faces.

:func:`make_detector` picks one by name (``auto`` = YuNet when a model file is given and loads, else Haar) and
says which one it is in ``detector.name``. ``cv2`` is imported only when a detector is built (it is heavy).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

DETECTORS = ("auto", "haar", "yunet")
YUNET_FOLDER = "facedetection"  # under ComfyUI's models folder


@dataclass(frozen=True)
class Face:
    """A face box in the coordinates of the image given to the detector (may reach past its borders)."""

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0
    kind: str = "frontal"  # "frontal" | "frontal-padded" | "profile" | "yunet"

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def side(self) -> float:
        return max(self.w, self.h)

    @property
    def area(self) -> float:
        return self.w * self.h


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an ``HxWx3`` uint8 RGB array, largest first."""
        ...

    def fresh(self) -> FaceDetector:
        """An equivalent detector to use in another thread."""
        ...


def _cv2():
    import cv2

    return cv2


def _detection_copy(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale (never upscale) so the longer side is at most ``max_side``; returns the copy and its scale."""
    cv2 = _cv2()
    h, w = gray.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return gray, scale


class HaarDetector:
    """Haar cascades from OpenCV's bundled data: frontal, padded frontal, then profile (both directions).

    Detection runs on a grey copy whose longer side is at most ``max_side`` pixels (speed). A first pass looks for
    faces of at least ``portrait_face`` of the shorter side (the usual training photo, and 4x cheaper than looking
    for small faces); only if it finds none does a second pass look down to ``min_face`` (smaller faces need a
    large upscale to train on anyway).
    """

    name = "haar"

    def __init__(
        self,
        *,
        max_side: int = 640,
        min_face: float = 0.04,
        portrait_face: float = 0.15,
        min_neighbors: int = 5,
        scale_factor: float = 1.1,
        profile: bool = True,
        pad: float = 0.25,
    ):
        self._kwargs = dict(
            max_side=max_side,
            min_face=min_face,
            portrait_face=portrait_face,
            min_neighbors=min_neighbors,
            scale_factor=scale_factor,
            profile=profile,
            pad=pad,
        )
        cv2 = _cv2()
        root = Path(cv2.data.haarcascades)
        self._frontal = self._load(cv2, root / "haarcascade_frontalface_alt2.xml")
        self._profile = self._load(cv2, root / "haarcascade_profileface.xml") if profile else None
        self.max_side = max_side
        self.min_face = min_face
        self.portrait_face = portrait_face
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.pad = pad
        self.name = "haar (frontal + profile)" if profile else "haar (frontal)"

    def fresh(self) -> HaarDetector:
        """An equivalent detector for another thread (OpenCV classifiers are not shared between threads)."""
        other = HaarDetector(**self._kwargs)
        other.name = self.name
        return other

    @staticmethod
    def _load(cv2, path: Path):
        clf = cv2.CascadeClassifier(str(path))
        if clf.empty():
            raise ConfigError(f"OpenCV's Haar cascade {path} could not be loaded; reinstall opencv-python-headless")
        return clf

    def _run(
        self, clf, gray: np.ndarray, min_px: int, max_px: int = 0
    ) -> list[tuple[float, float, float, float, float]]:
        boxes, _, weights = clf.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_px, min_px),
            maxSize=(max_px, max_px),
            outputRejectLevels=True,
        )
        out = []
        for (x, y, w, h), s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1), strict=True):
            out.append((float(x), float(y), float(w), float(h), float(s)))
        return out

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        small, scale = _detection_copy(gray, self.max_side)
        small = cv2.equalizeHist(small)
        h, w = small.shape
        # The cost of a pass grows with (image side / smallest face)^2: look for portrait-sized faces first and
        # for small ones only when none was found.
        min_big = max(20, int(self.portrait_face * min(h, w)))
        min_small = max(20, int(self.min_face * min(h, w)))

        def faces(raw, kind: str, dx: float = 0.0, flip_w: int | None = None) -> list[Face]:
            found = []
            for x, y, bw, bh, s in raw:
                if flip_w is not None:
                    x = flip_w - x - bw
                found.append(Face((x - dx) / scale, (y - dx) / scale, bw / scale, bh / scale, s, kind))
            return found

        found = faces(self._run(self._frontal, small, min_big), "frontal")
        if not found and min_small < min_big:
            found = faces(self._run(self._frontal, small, min_small, int(min_big * 1.25)), "frontal")
        if not found and self.pad > 0:
            # A face filling the frame touches the borders; Haar needs some context around it.
            b = int(round(self.pad * min(h, w)))
            padded = cv2.copyMakeBorder(small, b, b, b, b, cv2.BORDER_REPLICATE)
            found = faces(self._run(self._frontal, padded, min_big), "frontal-padded", dx=b)
        if not found and self._profile is not None:
            # The cascade knows faces turned one way; the mirror image finds the other way.
            found = faces(self._run(self._profile, small, min_big), "profile")
            found += faces(self._run(self._profile, cv2.flip(small, 1), min_big), "profile", flip_w=w)
            found = _suppress(found)
        return sorted(_suppress(found, 0.5), key=lambda f: -f.area)


class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``) from a user-supplied ``.onnx`` file."""

    def __init__(self, model_path: str | Path, *, score_threshold: float = 0.7, max_side: int = 640):
        cv2 = _cv2()
        path = Path(model_path)
        if not path.is_file():
            raise ConfigError(f"YuNet model {path} does not exist; put face_detection_yunet_*.onnx there")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ConfigError(f"this OpenCV ({cv2.__version__}) has no FaceDetectorYN; use detector 'haar'")
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, 0.3, 50)
        except cv2.error as e:
            raise ConfigError(f"YuNet model {path} cannot be loaded by OpenCV ({e}); use detector 'haar'") from None
        self.max_side = max_side
        self._args = (path, score_threshold, max_side)
        self.name = f"yunet ({path.name})"

    def fresh(self) -> YuNetDetector:
        path, score, max_side = self._args
        return YuNetDetector(path, score_threshold=score, max_side=max_side)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        small, scale = _detection_copy(bgr, self.max_side)
        h, w = small.shape[:2]
        self._net.setInputSize((w, h))
        _, rows = self._net.detect(small)
        found = []
        for r in [] if rows is None else rows:
            x, y, bw, bh = (float(v) / scale for v in r[:4])
            found.append(Face(x, y, bw, bh, float(r[-1]), "yunet"))
        return sorted(found, key=lambda f: -f.area)


def _iou(a: Face, b: Face) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.area + b.area - inter) if inter > 0 else 0.0


def _suppress(faces: list[Face], iou: float = 0.3) -> list[Face]:
    """Drop boxes that overlap a larger kept one (the same face seen by two passes)."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.area):
        if all(_iou(f, k) < iou for k in kept):
            kept.append(f)
    return kept


def choose_face(faces: list[Face], width: int, height: int, similar: float = 0.8) -> Face | None:
    """The subject: the largest face; among faces at least ``similar`` x its area, the one nearest the centre."""
    if not faces:
        return None
    biggest = max(f.area for f in faces)
    close = [f for f in faces if f.area >= similar * biggest]
    return min(close, key=lambda f: (math.hypot(f.cx - width / 2, f.cy - height / 2), -f.area))


def find_yunet_model(folder: str | Path | None) -> Path | None:
    """The newest-named ``*.onnx`` in ``folder`` whose name mentions YuNet (else any ``.onnx``), or None."""
    if not folder:
        return None
    root = Path(folder)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.glob("*.onnx") if p.is_file())
    named = [p for p in files if "yunet" in p.name.lower()]
    pick = (named or files)[-1:] or [None]
    return pick[0]


def make_detector(name: str = "auto", model_path: str | Path | None = None) -> FaceDetector:
    """Build a detector: ``haar``, ``yunet`` (needs ``model_path``) or ``auto`` (YuNet if it loads, else Haar)."""
    if name not in DETECTORS:
        raise ConfigError(f"option 'detector' is {name!r}; choose one of: {', '.join(DETECTORS)}")
    if name == "haar":
        return HaarDetector()
    if name == "yunet":
        if not model_path:
            raise ConfigError(
                f"detector 'yunet' needs a YuNet .onnx model (put it in ComfyUI's models/{YUNET_FOLDER}/ or pass "
                "--detector-model); or use detector 'haar'"
            )
        return YuNetDetector(model_path)
    if model_path:
        try:
            return YuNetDetector(model_path)
        except ConfigError as e:
            log.warning("face detector: %s; falling back to Haar cascades", e)
            haar = HaarDetector()
            haar.name += f"; YuNet model {Path(model_path).name} did not load"
            return haar
    return HaarDetector()
