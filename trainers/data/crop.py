"""Face Crop Dataset: photos in, a clean square training set out, with a report of every image.

For each photo: read it safely (:mod:`.images`), find the subject's face (:mod:`.faces`), cut a square around it
with a margin (shifted to stay inside the photo; padded only as a reported last resort), resize it to the training
resolution with LANCZOS, and measure what would hurt training (small face -> upscaling, blur, several faces,
near-duplicate shots). The kept crops are written as ``0001.png, 0002.png, ...`` (plus ``.txt`` captions, soft face
masks ``0001.mask.png`` for the face-weighted loss, and with ``shape="both"`` a 3:4 portrait crop
``0001.portrait.png`` beside each square: :mod:`.crop_shapes`) with a ``report.json``; the folder name is a key of the inputs and options, so running again on the same photos reuses it
instead of writing a second copy.

Entry point: :func:`build_dataset`. Geometry (:func:`face_crop_box`), blur and hashes are plain functions.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..configspec import config_hash, opt, to_dict
from ..errors import ConfigError, DatasetError
from ..fsutil import STALE_AFTER_S, file_sha256, write_json_atomic
from ..train.config import DEFAULT_INSTANCE_PROMPT
from .buckets import portrait_size
from .crop_shapes import RectBox, cut_rect, face_mask, portrait_box
from .faces import DETECTORS, Face, FaceDetector, choose_face, make_detector
from .images import LoadedImage, list_images, read_image

log = logging.getLogger(__name__)

PIPELINE_VERSION = 2  # bump when the same inputs and options would give different crops
RECOMMENDED_IMAGES = 15  # what DreamBooth wants for a person
UPSCALE_WARN = 2.0
MAX_TIGHT_FRACTION = 0.8  # a crop narrower than the margin asks for may hold the face up to this share of its side
REPORT_NAME = "report.json"
_OWN_NAME = re.compile(r"\d{4,}(\.portrait)?(\.png|\.txt|\.mask\.png)")  # the names _keep gives crops, captions, masks
SHAPES = ("square", "portrait", "both")
_PART_NAME = re.compile(r"^\.report\.json\.[A-Za-z0-9_]{8}\.part$")  # an unfinished report (atomic write)


@dataclass
class CropConfig:
    """Options of the face-crop dataset builder (CLI flags and node inputs come from these)."""

    instance_prompt: str = opt(
        DEFAULT_INSTANCE_PROMPT,
        "Instance prompt: the caption of every crop (rare token + class), written to the .txt files and passed on "
        "to training.",
    )
    resolution: int = opt(
        512,
        "Side of the square crops in pixels (512 for SD1.5; 768 also works). A multiple of 8.",
        min=64,
        max=2048,
        step=8,
    )
    margin: float = opt(
        0.7,
        "Space around the face on each side, in face widths: 0.7 makes the face about 0.42 of the crop side "
        "(0.5 -> 0.50, 0.9 -> 0.36).",
        min=0.0,
        max=3.0,
        step=0.05,
    )
    no_face: str = opt(
        "skip",
        "Photos where no face is found: skip them (listed in the report) or keep a centre crop.",
        choices=("skip", "center_crop"),
    )
    detector: str = opt(
        "auto",
        "Face detector: auto (YuNet when its model file is present, else Haar), haar (OpenCV cascades, built in) "
        "or yunet (needs models/facedetection/*.onnx).",
        choices=DETECTORS,
    )
    detector_model: str | None = opt(
        None, "YuNet .onnx model file for detector auto/yunet (the node finds it in models/facedetection/).", node=False
    )
    shape: str = opt(
        "square",
        "Crop shape: square (resolution x resolution), portrait (3:4 head and shoulders, 448x576 for 512: "
        "training keeps the aspect) or both (a square and a portrait crop of every photo).",
        choices=SHAPES,
        advanced=True,
    )
    masks: bool = opt(
        True,
        "Write a soft face mask beside each crop (0001.mask.png) for the face-weighted loss (training option "
        "masked_loss).",
        advanced=True,
    )
    captions: bool = opt(True, "Write a .txt caption with the instance prompt beside each image.", advanced=True)
    recursive: bool = opt(False, "Also read photos in subfolders of the input folder.", advanced=True)
    duplicates: str = opt(
        "skip",
        "Near-duplicate photos (the same shot resaved, resized or in a burst): skip all but the first, or keep them. "
        "Reported either way.",
        choices=("skip", "keep"),
        advanced=True,
    )
    duplicate_distance: int = opt(
        4,
        "Two photos are near-duplicates when their 64-bit perceptual hashes differ in at most this many bits.",
        min=0,
        max=32,
        advanced=True,
    )
    blur_threshold: float = opt(
        25.0,
        "Warn when the face's sharpness (variance of the Laplacian at the training resolution) is below this.",
        min=0.0,
        max=10000.0,
        advanced=True,
    )
    identity_check: bool = opt(
        True,
        "Compare the faces with each other (face identity, when dlib is installed) and flag a photo that is probably "
        "someone else; also reports the spread of head poses.",
        advanced=True,
    )
    max_megapixels: float = opt(
        80.0,
        "Refuse photos larger than this many megapixels (decompression-bomb guard).",
        min=1.0,
        max=1000.0,
        advanced=True,
    )
    workers: int = opt(
        0,
        "Threads that decode and detect in parallel (0 = one per CPU core, at most 4).",
        min=0,
        max=32,
        advanced=True,
        node=False,
    )

    def check(self) -> None:
        if self.resolution % 8:
            raise ConfigError(f"option 'resolution' is {self.resolution}; use a multiple of 8 (e.g. 512 or 768)")
        if not self.instance_prompt.strip():
            raise ConfigError(
                f"option 'instance_prompt' is empty; describe the subject, e.g. '{DEFAULT_INSTANCE_PROMPT}'"
            )


# ---------------------------------------------------------------------------------------------------------------
# geometry and measurements (plain functions)


@dataclass(frozen=True)
class CropBox:
    """A square in image pixel coordinates; it reaches past the image only when ``padded``."""

    left: int
    top: int
    side: int
    padded: bool = False
    tight: bool = False  # narrower than the margin asked for (photo too small around the face)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.side, self.top + self.side)

    def contains(self, face: Face, tol: float = 0.5) -> bool:
        left, top, right, bottom = self.box
        return (
            face.x >= left - tol
            and face.y >= top - tol
            and face.x + face.w <= right + tol
            and face.y + face.h <= bottom + tol
        )


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(v, hi))


def face_crop_box(face: Face, width: int, height: int, margin: float) -> CropBox:
    """The square around ``face``: side = face x (1 + 2 x margin), centred on the face, shifted to stay inside.

    If the photo is narrower than that square, the crop uses the photo's shorter side as long as the face stays
    inside with some margin (``tight``); otherwise (face at the very edge, or filling the frame) the square is
    centred on the face and the missing part is padded (``padded``): the last resort, reported.
    """
    want = face.side * (1 + 2 * margin)
    short = min(width, height)
    inside = face.x >= 0 and face.y >= 0 and face.x + face.w <= width and face.y + face.h <= height
    for side, tight in ((want, False), (float(short), True)):
        if side > short or (tight and face.side > MAX_TIGHT_FRACTION * side):
            continue
        s = max(1, round(side))
        left = round(_clamp(face.cx - s / 2, 0, width - s))
        top = round(_clamp(face.cy - s / 2, 0, height - s))
        box = CropBox(left, top, s, tight=tight and want > short)
        if inside and box.contains(face):
            return box
    s = max(1, round(max(want, face.side)))
    return CropBox(round(face.cx - s / 2), round(face.cy - s / 2), s, padded=True)


def center_crop_box(width: int, height: int) -> CropBox:
    s = min(width, height)
    return CropBox((width - s) // 2, (height - s) // 2, s)


def cut_square(image: Image.Image, box: CropBox, resolution: int) -> Image.Image:
    """Cut ``box`` out of ``image`` and resize it to ``resolution`` (LANCZOS); pads by edge replication if needed."""
    return cut_rect(image, box, (resolution, resolution))  # a square box is a rectangle (``box``, ``padded``)


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (higher = sharper) of a uint8 grey image."""
    import cv2

    if gray.size == 0:
        return 0.0
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: 64 bits saying whether each pixel of a 9x8 grey thumbnail is brighter than its neighbour.

    Robust to resizing, re-compression and small colour changes; different shots differ in many bits.
    """
    small = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# ---------------------------------------------------------------------------------------------------------------
# one image


@dataclass
class ImageReport:
    """What happened to one input photo (one entry of ``report.json``)."""

    source: str
    status: str = "skipped"  # "kept" | "skipped"
    reason: str = ""  # why it was skipped
    output: str = ""  # e.g. "0003.png"
    size: list[int] | None = None  # [width, height] after EXIF rotation
    faces: int = 0
    face: dict[str, Any] | None = None  # x, y, w, h (source pixels), kind, fraction (of the crop side)
    crop: dict[str, Any] | None = None  # left, top, side (source pixels), padded, tight, center
    upscale: float = 0.0  # output side / crop side in source pixels
    blur: float = 0.0  # sharpness of the face region of the crop
    dhash: str = ""  # 64-bit difference hash of the whole (upright) photo, for near-duplicates
    portrait: str = ""  # the 3:4 crop beside the square one (shape "both"), e.g. "0003.portrait.png"
    mask: bool = False  # a soft face mask was written beside each crop
    duplicate_of: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    identity: dict[str, Any] | None = None  # similarity to the other photos, head turn and tilt (identity check)


Loader = Callable[[], LoadedImage]


def crop_one(name: str, load: Loader, cfg: CropConfig, detector: FaceDetector) -> tuple[ImageReport, Crops | None]:
    """Read, detect, crop and measure one photo. Never raises for a bad photo: it is reported as skipped."""
    rep = ImageReport(source=name)
    try:
        return _crop_one(rep, load, cfg, detector)
    except DatasetError as e:
        rep.reason = _strip_path(str(e), name)
    except Exception as e:  # noqa: BLE001 - one odd photo must not end a run of hundreds; it is reported
        log.exception("face crop: %s failed", name)
        rep.reason = f"could not be processed ({type(e).__name__}: {e})"
    rep.status = "skipped"
    return rep, None


def _crop_one(
    rep: ImageReport, load: Loader, cfg: CropConfig, detector: FaceDetector
) -> tuple[ImageReport, Crops | None]:
    loaded = load()
    image = loaded.image
    rep.notes.extend(loaded.notes)
    w, h = image.size
    rep.size = [w, h]
    rgb = np.asarray(image)
    faces = detector.detect(rgb)
    rep.faces = len(faces)
    face = choose_face(faces, w, h)
    if face is None:
        if cfg.no_face == "skip":
            rep.reason = "no face found"
            return rep, None
        box = center_crop_box(w, h)
        rep.notes.append("no face found: centre crop")
    else:
        box = face_crop_box(face, w, h, cfg.margin)
        rep.face = {
            "x": round(face.x, 1),
            "y": round(face.y, 1),
            "w": round(face.w, 1),
            "h": round(face.h, 1),
            "kind": face.kind,
            "fraction": round(face.side / box.side, 3),
        }
        if len(faces) > 1:
            rep.warnings.append(f"{len(faces)} faces found; the largest (most central) one was used")
        if face.kind != "frontal":
            rep.notes.append(f"face found by the {face.kind} pass")
        if box.padded:
            rep.warnings.append("padded: the face is too close to the edge (or too large) for a square crop")
        elif box.tight:
            rep.notes.append(f"tight crop: the face is {face.side / box.side:.0%} of the crop side")
    rep.crop = {
        "left": box.left,
        "top": box.top,
        "side": box.side,
        "padded": box.padded,
        "tight": box.tight,
        "center": face is None,
    }
    crop = cut_square(image, box, cfg.resolution)
    rep.upscale = round(cfg.resolution / box.side, 3)
    if rep.upscale > UPSCALE_WARN:
        rep.warnings.append(
            f"upscaled {rep.upscale:.1f}x: the face is small in this photo (a closer or larger photo trains better)"
        )
    rep.blur = round(sharpness(_focus_region(crop, face, box, cfg.resolution)), 1)
    if rep.blur < cfg.blur_threshold:
        rep.warnings.append(f"looks blurry (sharpness {rep.blur:.0f} < {cfg.blur_threshold:.0f})")
    # The whole photo's hash (not the crop's): a resaved or resized copy matches even if the face box jitters.
    rep.dhash = f"{dhash(image):016x}"
    rep.status = "kept"
    return rep, make_crops(rep, image, face, box, crop, cfg)


@dataclass
class Crops:
    """What one kept photo becomes: the main crop (square, or 3:4 with ``shape="portrait"``), its mask, and with
    ``shape="both"`` a portrait crop and its mask as well."""

    main: Image.Image
    mask: Image.Image | None = None
    portrait: Image.Image | None = None
    portrait_mask: Image.Image | None = None


def make_crops(rep: ImageReport, image: Image.Image, face: Face | None, box: CropBox, square, cfg: CropConfig) -> Crops:
    """The square crop's companions: the portrait crop (by shape) and the soft masks (from the face box)."""
    want_mask = cfg.masks and face is not None
    rect = RectBox(box.left, box.top, box.side, box.side, box.padded, box.tight)
    out = Crops(square, face_mask(face, rect, square.size) if want_mask else None)
    if cfg.shape == "square":
        return out
    size = portrait_size(cfg.resolution)
    if face is None:
        tall = RectBox(*_centre_portrait(*image.size))
    else:
        tall = portrait_box(face, *image.size, cfg.margin)
        if tall.padded:
            rep.warnings.append("portrait padded: the face is too close to the edge for a 3:4 crop")
    portrait = cut_rect(image, tall, size)
    portrait_mask = face_mask(face, tall, size) if want_mask else None
    rep.crop = {**(rep.crop or {}), "portrait": [tall.left, tall.top, tall.width, tall.height]}
    if cfg.shape == "portrait":
        return Crops(portrait, portrait_mask)
    return Crops(square, out.mask, portrait, portrait_mask)


def _centre_portrait(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred 3:4 box of a photo (no face found, centre crops asked for)."""
    w = min(width, round(height * 0.75))
    h = min(height, round(w / 0.75))
    return ((width - w) // 2, (height - h) // 2, w, h)


def _focus_region(crop: Image.Image, face: Face | None, box: CropBox, resolution: int) -> np.ndarray:
    """The grey pixels whose sharpness matters: the face in the crop (the central half without a face)."""
    gray = np.asarray(crop.convert("L"))
    k = resolution / box.side
    if face is None:
        q = resolution // 4
        return gray[q : resolution - q, q : resolution - q]
    x0 = int(_clamp((face.x - box.left) * k, 0, resolution))
    y0 = int(_clamp((face.y - box.top) * k, 0, resolution))
    x1 = int(_clamp((face.x + face.w - box.left) * k, 0, resolution))
    y1 = int(_clamp((face.y + face.h - box.top) * k, 0, resolution))
    return gray[y0:y1, x0:x1]


def _strip_path(message: str, name: str) -> str:
    """'/abs/path/x.jpg: reason' -> 'reason' (the report already names the file)."""
    head, sep, tail = message.partition(": ")
    return tail if sep and head.endswith(Path(name).name) else message


# ---------------------------------------------------------------------------------------------------------------
# many images


@dataclass
class Source:
    """One input: a display name (relative path or ``batch[3]``), a loader, and the bytes identity for the key."""

    name: str
    load: Loader
    identity: str


def folder_sources(folder: str | Path, cfg: CropConfig) -> list[Source]:
    root = Path(folder)
    files = list_images(root, recursive=cfg.recursive)
    limit = int(cfg.max_megapixels * 1e6)
    out = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        try:
            ident = file_sha256(p)
        except OSError as e:
            ident = f"unreadable:{e}"
        out.append(Source(rel, (lambda p=p: read_image(p, max_pixels=limit)), ident))
    return out


def array_sources(images: Sequence[np.ndarray | Image.Image], prefix: str = "batch") -> list[Source]:
    """In-memory images (e.g. a ComfyUI IMAGE batch as uint8/float arrays ``HxWxC``) as sources."""
    out = []
    for i, item in enumerate(images):
        pil = _as_pil(item)
        ident = hashlib.sha256(pil.tobytes() + repr(pil.size).encode()).hexdigest()
        out.append(Source(f"{prefix}[{i}]", (lambda pil=pil: LoadedImage(pil, pil.mode, "array")), ident))
    return out


def _as_pil(item: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    a = np.asarray(item)
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        return Image.fromarray(np.ascontiguousarray(a)).convert("RGBA").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(a[..., :3]))


@dataclass
class CropOutcome:
    """What :func:`build_dataset` made."""

    folder: Path
    count: int
    key: str
    report: dict[str, Any]
    text: str  # the human-readable report
    reused: bool = False

    @property
    def images(self) -> list[Path]:
        return [self.folder / r["output"] for r in self.report["images"] if r["status"] == "kept"]


ProgressFn = Callable[[int, int, ImageReport], None]


def dataset_key(sources: Sequence[Source], cfg: CropConfig, detector_name: str) -> str:
    """Identity of the dataset a run will produce: input names + bytes, options, detector and pipeline version."""
    h = hashlib.sha256()
    h.update(f"likeness-facecrop-v{PIPELINE_VERSION}\n{detector_name}\n".encode())
    h.update(config_hash(cfg, exclude=("workers", "recursive", "identity_check")).encode())
    for s in sources:
        h.update(f"\n{s.name}\0{s.identity}".encode())
    return h.hexdigest()[:16]


def build_dataset(
    cfg: CropConfig,
    *,
    input_folder: str | Path | None = None,
    images: Sequence[np.ndarray | Image.Image] | None = None,
    output_root: str | Path | None = None,
    output_folder: str | Path | None = None,
    progress: ProgressFn | None = None,
    detector: FaceDetector | None = None,
) -> CropOutcome:
    """Face-crop a folder of photos (or in-memory images) into a dataset folder and return what was made.

    The dataset goes to ``output_folder`` when given, else to ``<output_root>/likeness/datasets/<key>/``. When that
    folder already holds the dataset of the same inputs and options, it is reused (nothing is processed again).
    ``progress(done, total, report)`` is called after each photo, in input order; it may raise to stop (the
    partial work is removed).
    """
    if (input_folder is None) == (images is None):
        raise ConfigError("give either an input folder or images to crop (not both)")
    if output_folder is None and output_root is None:
        raise ConfigError("give an output folder (or an output root for a content-keyed dataset folder)")
    sources = folder_sources(input_folder, cfg) if input_folder is not None else array_sources(images or [])
    if not sources:
        where = f"folder {input_folder}" if input_folder is not None else "the image batch"
        raise DatasetError(f"{where} holds no images ({', '.join(sorted(_ext_names()))}); add your photos there")
    detector = detector or make_detector(cfg.detector, cfg.detector_model)
    key = dataset_key(sources, cfg, detector.name)
    folder = Path(output_folder) if output_folder is not None else Path(output_root) / "likeness" / "datasets" / key
    previous = _read_report(folder)
    if previous is not None and previous.get("key") == key and _complete(folder, previous):
        log.info("face crop: reusing %s (same photos and options)", folder)
        if cfg.identity_check and "identity" not in previous:  # a dataset made before the check existed
            kept = [(r["source"], r["output"]) for r in previous["images"] if r.get("status") == "kept"]
            previous = {**previous, "identity": identity_section(folder, kept)}
        text = format_report(previous, folder)
        return CropOutcome(folder, previous["summary"]["kept"], key, previous, text, reused=True)
    if folder.exists() and any(folder.iterdir()) and previous is None:
        raise DatasetError(
            f"output folder {folder} already holds other files; choose a new or empty folder for the dataset"
        )

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}-{threading.get_ident()}"
    for stale in [staging, *_stale_stagings(folder)]:
        _remove_staging(stale)
    staging.mkdir()
    t0 = time.perf_counter()
    try:
        reports = _process_all(sources, cfg, detector, staging, progress)
        identity = _check_identity(staging, reports) if cfg.identity_check else None
        report = _make_report(reports, cfg, key, detector.name, time.perf_counter() - t0, identity)
        write_json_atomic(staging / REPORT_NAME, report)
        _install(staging, folder, previous)
    except OSError as e:
        raise write_error(folder.parent, e) from None
    finally:
        _remove_staging(staging)
    text = format_report(report, folder)
    log.info("face crop: %s", report["summary"]["verdict"])
    return CropOutcome(folder, report["summary"]["kept"], key, report, text)


def _stale_stagings(folder: Path) -> list[Path]:
    """Unfinished staging folders of this dataset left by a killed run (untouched for 15 minutes)."""
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.partial-\d+-\d+$")
    if not folder.parent.is_dir():
        return []
    now = time.time()
    out = []
    for p in folder.parent.iterdir():
        with contextlib.suppress(OSError):
            if pattern.match(p.name) and p.is_dir() and not p.is_symlink() and now - p.stat().st_mtime > STALE_AFTER_S:
                out.append(p)
    return out


def _remove_staging(staging: Path) -> None:
    """Delete a staging folder's own files (crops, captions, the report), then the folder if nothing else is in it."""
    if not staging.is_dir() or staging.is_symlink():
        return
    for p in staging.iterdir():
        if (_is_own_name(p.name) or p.name == REPORT_NAME or _PART_NAME.match(p.name)) and not p.is_dir():
            with contextlib.suppress(OSError):
                p.unlink()
    with contextlib.suppress(OSError):
        staging.rmdir()


def write_error(folder: Path, error: OSError) -> DatasetError:
    """A failed write as one line naming the folder (the unfinished files are removed by the caller)."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DatasetError(f"disk full in {folder}: the dataset could not be written; free some space and run again")
    return DatasetError(f"cannot write the dataset in {folder} ({error.strerror or error}); check the folder")


def _ext_names() -> set[str]:
    from .images import IMAGE_EXTENSIONS

    return {e.lstrip(".") for e in IMAGE_EXTENSIONS}


def _workers(cfg: CropConfig) -> int:
    return cfg.workers or max(1, min(4, os.cpu_count() or 1))


def _process_all(
    sources: list[Source], cfg: CropConfig, detector: FaceDetector, staging: Path, progress: ProgressFn | None
) -> list[ImageReport]:
    """Crop every source (in parallel threads, bounded), then keep/number/write them in input order."""
    from .. import collector

    collector.resume()  # a command-line run paused the collector for its set-up (trainers/collector.py)
    local = threading.local()
    fresh = getattr(detector, "fresh", None)
    shared = threading.Lock()

    def work(src: Source) -> tuple[ImageReport, Crops | None]:
        # Detectors are not thread-safe: one per worker thread, or the given one shared under a lock when a custom
        # detector cannot make a copy of itself.
        det = getattr(local, "det", None)
        if det is None:
            det = detector if fresh is None else fresh()
            local.det = det
        if fresh is None:
            with shared:
                return crop_one(src.name, src.load, cfg, det)
        return crop_one(src.name, src.load, cfg, det)

    reports: list[ImageReport] = []
    kept_hashes: list[tuple[int, str, str]] = []  # (hash, output, source)
    total = len(sources)
    n_workers = min(_workers(cfg), total)
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="likeness-crop") as pool:
        pending: collections.deque[Future] = collections.deque()
        it = iter(sources)
        try:
            for src in it:
                pending.append(pool.submit(work, src))
                if len(pending) >= 2 * n_workers:
                    break
            while pending:
                rep, crop = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(work, nxt))
                _keep(rep, crop, cfg, staging, kept_hashes)
                reports.append(rep)
                if progress is not None:
                    progress(len(reports), total, rep)
        finally:
            for f in pending:
                f.cancel()
    return reports


def _keep(rep: ImageReport, crop: Crops | None, cfg: CropConfig, staging: Path, kept: list) -> None:
    if crop is None:
        return
    h = int(rep.dhash, 16)
    dup = next(((out, src, d) for hh, out, src in kept if (d := hamming(h, hh)) <= cfg.duplicate_distance), None)
    if dup is not None:
        out, src, d = dup
        rep.duplicate_of = out
        if cfg.duplicates == "skip":
            rep.status = "skipped"
            rep.reason = f"near-duplicate of {out} ({src}, hash distance {d})"
            return
        rep.warnings.append(f"near-duplicate of {out} ({src}, hash distance {d})")
    name = f"{len(kept) + 1:04d}"
    rep.output = f"{name}.png"
    files = [(name, crop.main, crop.mask)]
    if crop.portrait is not None:
        rep.portrait = f"{name}.portrait.png"
        files.append((f"{name}.portrait", crop.portrait, crop.portrait_mask))
    for stem, image, mask in files:
        image.save(staging / f"{stem}.png", format="PNG", compress_level=1)
        if mask is not None:
            mask.save(staging / f"{stem}.mask.png", format="PNG", compress_level=1)
            rep.mask = True
        if cfg.captions:
            (staging / f"{stem}.txt").write_text(cfg.instance_prompt.strip() + "\n", encoding="utf-8")
    kept.append((h, rep.output, rep.source))


def identity_section(folder: Path, kept: list[tuple[str, str]]) -> dict[str, Any]:
    """The report's identity check over the crops ``(source name, crop file)`` in ``folder`` (see
    :mod:`..identity.consistency`); without the backend, a section that says what to install."""
    from ..identity import backend
    from ..identity.consistency import consistency, unavailable

    ok, message = backend.status()
    if not ok:
        return unavailable(message)
    from ..identity.reference import build_reference

    try:
        return consistency(build_reference([(name, folder / out) for name, out in kept]))
    except Exception as e:  # noqa: BLE001 - an optional check must never cost the user the dataset
        log.warning("face crop: identity check failed: %s", e, exc_info=True)
        return unavailable(f"it failed: {type(e).__name__}: {e}")


def _check_identity(staging: Path, reports: list[ImageReport]) -> dict[str, Any]:
    """The identity section, with each kept photo's own figures copied into its report entry."""
    section = identity_section(staging, [(r.source, r.output) for r in reports if r.status == "kept"])
    flags = {f["name"]: f["why"] for f in section.get("flagged", [])}
    by_name = {p["name"]: p for p in section.get("photos", [])}
    for r in reports:
        if r.source in by_name:
            r.identity = {
                **{k: v for k, v in by_name[r.source].items() if k != "name"},
                "flag": flags.get(r.source, ""),
            }
    return section


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _dropped(reports: list[ImageReport], shown: int = 4) -> str:
    """'; dropped: a.jpg (no face found), b.jpg (near-duplicate of c.jpg)' for the photos not kept ('' if none)."""
    dropped = [r for r in reports if r.status != "kept"]
    if not dropped:
        return ""

    def why(r: ImageReport) -> str:
        if r.duplicate_of:
            first = next((o.source for o in reports if o.output == r.duplicate_of), r.duplicate_of)
            return f"near-duplicate of {first}"
        return r.reason.split(" (")[0] or "skipped"

    names = ", ".join(f"{r.source} ({why(r)})" for r in dropped[:shown])
    more = f" and {len(dropped) - shown} more (see the report)" if len(dropped) > shown else ""
    return f"; dropped: {names}{more}"


def _verdict(reports: list[ImageReport]) -> tuple[str, int]:
    """The verdict on a crop (usable count, what to add) and the number of usable images."""
    kept = [r for r in reports if r.status == "kept"]
    serious = [r for r in kept if any(w.startswith(("upscaled", "looks blurry")) for w in r.warnings)]
    usable = len(kept) - len(serious)
    extra = f" (+{len(serious)} kept with quality warnings)" if serious else ""
    if not kept:
        verdict = f"no usable images out of {len(reports)}; DreamBooth wants {RECOMMENDED_IMAGES}+ photos of the face"
    elif usable >= RECOMMENDED_IMAGES:
        verdict = f"{_plural(usable, 'usable image')}{extra}: enough for DreamBooth ({RECOMMENDED_IMAGES}+)"
    else:
        verdict = (
            f"{_plural(usable, 'usable image')}{extra}; DreamBooth wants {RECOMMENDED_IMAGES}+: add "
            f"{_plural(RECOMMENDED_IMAGES - usable, 'more photo')} of the face (varied angles, light and backgrounds)"
        )
    return verdict, usable


def _make_report(
    reports: list[ImageReport], cfg: CropConfig, key: str, detector: str, seconds: float, identity=None
) -> dict:
    kept = [r for r in reports if r.status == "kept"]
    verdict, usable = _verdict(reports)
    dropped = _dropped(reports)
    return {
        "format": "likeness-facecrop",
        "version": PIPELINE_VERSION,
        "key": key,
        "detector": detector,
        "config": {k: v for k, v in to_dict(cfg).items() if k != "workers"},
        "seconds": round(seconds, 2),
        "summary": {
            "total": len(reports),
            "kept": len(kept),
            "usable": usable,
            "skipped": len(reports) - len(kept),
            "warnings": sum(len(r.warnings) for r in kept),
            "several_faces": sum(1 for r in reports if r.faces > 1),
            "duplicates": sum(1 for r in reports if r.duplicate_of),
            "verdict": verdict + dropped,  # one line for a node or a command to show
            "dropped": dropped,  # the verdict's last part: the text report lists them already
        },
        "images": [asdict(r) for r in reports],
        **({"identity": identity} if identity is not None else {}),
    }


def format_report(report: dict[str, Any], folder: str | Path | None = None) -> str:
    """The report as text for people (node STRING output, CLI): summary, skipped files, warnings, verdict."""
    s = report["summary"]
    cfg = report["config"]
    lines = [
        f"Face crop: {s['kept']} of {s['total']} photos kept, {s['skipped']} skipped "
        f"({_shape_text(cfg)}, detector {report['detector']})",
    ]
    if folder is not None:
        lines.append(f"Dataset folder: {folder}")
    images = report["images"]
    skipped = [r for r in images if r["status"] != "kept"]
    if skipped:
        lines.append("Skipped:")
        lines += [f"  - {r['source']}: {r['reason']}" for r in skipped]
    kept = [r for r in images if r["status"] == "kept"]
    if kept:
        lines.append("Kept:")
        for r in kept:
            face = r["face"]
            what = f"face {face['w']:.0f}px ({face['fraction']:.0%} of crop)" if face else "centre crop (no face)"
            lines.append(
                f"  {r['output']}  {r['source']}: {what}, upscale {r['upscale']:.2f}x, sharpness {r['blur']:.0f}"
            )
    warned = [r for r in kept if r["warnings"]]
    if warned:
        lines.append("Warnings:")
        for r in warned:
            lines += [f"  - {r['source']}: {w}" for w in r["warnings"]]
    from ..identity.consistency import format_lines

    lines += format_lines(report.get("identity"))
    lines.append(f"Verdict: {s['verdict'].removesuffix(s.get('dropped', ''))}")
    return "\n".join(lines)


def _shape_text(cfg: dict[str, Any]) -> str:
    """'512x512', '448x576 portraits' or '512x512 + 448x576 portraits', and whether masks were written."""
    res, shape = cfg["resolution"], cfg.get("shape", "square")
    tall = "{}x{} portraits".format(*portrait_size(res))
    text = {"portrait": tall, "both": f"{res}x{res} + {tall}"}.get(shape, f"{res}x{res}")
    return text + (", face masks" if cfg.get("masks") else "")


def _is_own_name(name: Any) -> bool:
    """A file name this module generates for a crop (``0001.png``, ``0001.txt``, ``0001.mask.png``,
    ``0001.portrait.png``, ...): the only names it ever deletes."""
    return isinstance(name, str) and _OWN_NAME.fullmatch(name) is not None


def _read_report(folder: Path) -> dict[str, Any] | None:
    """The report of an earlier run in ``folder``, or None. What a report says is never trusted as a path: entries
    whose output is not one of our own file names are dropped (and the report then does not count as complete)."""
    p = folder / REPORT_NAME
    if not p.is_file() or p.is_symlink():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != "likeness-facecrop"
        or not isinstance(data.get("images"), list)
    ):
        return None
    images = [r for r in data["images"] if isinstance(r, dict)]
    kept = [r for r in images if r.get("status") != "kept" or _is_own_name(r.get("output"))]
    if len(kept) != len(data["images"]):
        log.warning("face crop: %s lists files that are not crops of ours; they are ignored", p)
        return {**data, "images": kept, "untrusted": True}
    return data


def _owned_files(report: dict[str, Any]) -> list[str]:
    """The files of an earlier run that a new run replaces: our generated names only, inside the folder."""
    names = []
    for r in report.get("images", []):
        out = r.get("output")
        if r.get("status") == "kept" and _is_own_name(out):
            stem = Path(out).stem
            names += [f"{s}{ext}" for s in (stem, f"{stem}.portrait") for ext in (".png", ".txt", ".mask.png")]
    return names + [REPORT_NAME]


def _complete(folder: Path, report: dict[str, Any]) -> bool:
    if report.get("untrusted"):
        return False
    return all((folder / r["output"]).is_file() for r in report["images"] if r["status"] == "kept")


def _install(staging: Path, folder: Path, previous: dict[str, Any] | None) -> None:
    """Move the finished dataset into place: a rename when the folder is new, else replace our previous files."""
    if not folder.exists():
        try:
            os.replace(staging, folder)
            return
        except OSError:
            if not folder.exists():
                raise
            previous = _read_report(folder)  # another run made it meanwhile
    for name in _owned_files(previous or {}):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    for item in sorted(staging.iterdir()):
        if item.name != REPORT_NAME:
            os.replace(item, folder / item.name)
    os.replace(staging / REPORT_NAME, folder / REPORT_NAME)  # last: the folder counts as complete after this
