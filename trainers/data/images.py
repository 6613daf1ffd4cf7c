"""Reading user photos safely: list a folder, open any common image as upright 8-bit RGB, or refuse with a reason.

Photos from phones and the web come in every shape: EXIF-rotated JPEGs, CMYK print files, 16-bit PNGs, palette
images with a transparent colour, RGBA cut-outs, animated GIF/WebP, truncated downloads, HTML pages saved as
``.jpg``. :func:`load_rgb` turns each into an upright RGB image or raises :class:`DatasetError` naming the file and
the reason, so a dataset builder can skip it and report why.

Gigantic images are refused from their header, before any pixel is decoded, against a limit given per call;
Pillow's global ``Image.MAX_IMAGE_PIXELS`` is left as it is for the rest of the process.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic", ".heif"}
)
"""Lower-case suffixes :func:`list_images` picks up (matched case-insensitively). AVIF is read by Pillow 11+, HEIC/HEIF
(iPhone photos) when ``pillow-heif`` is installed; otherwise such a photo is reported by name, never silently skipped."""

_NEEDS_PLUGIN = {".heic": "pillow-heif", ".heif": "pillow-heif", ".avif": "a Pillow with AVIF support (11 or newer)"}

DEFAULT_MAX_PIXELS = 80_000_000
"""Largest image (width x height) :func:`load_rgb` decodes by default: above any camera's photos (a 61 MP full
frame is 9504x6336), below Pillow's own bomb warning, and ~240 MB as RGB."""

MASK_SUFFIX = ".mask.png"
"""A soft face mask beside a training image (``0001.png`` -> ``0001.mask.png``, grey levels 0..255): written by the
face crop, read by the training dataset for the face-weighted loss, never listed as a photo itself."""

NEUTRAL_GREY = (128, 128, 128)
"""Background that transparent pixels are flattened onto: neither the black nor white a model would learn."""


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive), sorted by relative path: deterministic.

    Hidden files and folders (``.name``) and soft masks (``*.mask.png``) are ignored. Raises :class:`DatasetError`
    if ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DatasetError(f"image folder {root} {what}; give the folder that holds your photos")
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath)
            found.extend(base / n for n in filenames if _is_image_name(n))
    else:
        found = [p for p in root.iterdir() if p.is_file() and _is_image_name(p.name)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _is_image_name(name: str) -> bool:
    lower = name.lower()
    return (
        not name.startswith(".") and os.path.splitext(lower)[1] in IMAGE_EXTENSIONS and not lower.endswith(MASK_SUFFIX)
    )


def mask_path(image: Path) -> Path:
    """Where the soft mask of a training image lives (``photo.png`` -> ``photo.mask.png``)."""
    return image.with_name(image.stem + MASK_SUFFIX)


@dataclass
class LoadedImage:
    """An upright RGB image plus what was done to get it (for the dataset report)."""

    image: Image.Image
    source_mode: str  # Pillow mode as stored in the file (e.g. "CMYK", "I;16", "P")
    source_format: str  # "JPEG", "PNG", ...
    notes: list[str] = field(default_factory=list)  # e.g. "EXIF orientation 6 applied", "first of 12 frames"


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image (see :func:`read_image`)."""
    return read_image(path, max_pixels=max_pixels).image


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Open ``path`` as an upright 8-bit RGB image, or raise :class:`DatasetError` naming the file and the reason.

    - EXIF orientation is applied; the first frame of an animated GIF/WebP/APNG is taken.
    - CMYK (through its ICC profile when it has one), palette (with transparency), 16-bit, float, grayscale and
      alpha images become RGB; transparent pixels are flattened onto :data:`NEUTRAL_GREY`.
    - An image larger than ``max_pixels`` is refused from its header, before decoding.
    - Zero-byte, truncated, corrupt and non-image files are refused.
    """
    p = Path(path)
    with _open(p) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise DatasetError(
                f"{p}: refused, {w}x{h} = {w * h / 1e6:.0f} MP is over the limit of {max_pixels / 1e6:.0f} MP "
                "(a decompression-bomb guard); downscale the photo first"
            )
        if w < 1 or h < 1:
            raise DatasetError(f"{p}: image has no pixels ({w}x{h})")
        notes: list[str] = []
        if getattr(im, "is_animated", False):
            # Counting GIF frames means reading them all: only formats that store the count say how many.
            count = im.n_frames if _has_frame_count(im) else None
            notes.append(f"first of {count} frames used" if count else "animated: first frame used")
        fmt = im.format or "?"
        mode = im.mode
        try:
            im.seek(0)
            im.load()
            out = _to_rgb(im, notes)
            orientation = _exif_orientation(im)
            if orientation not in (None, 1):
                out = _apply_orientation(out, orientation)
                notes.append(f"EXIF orientation {orientation} applied")
        except Image.DecompressionBombError as e:
            raise DatasetError(f"{p}: refused, too many pixels to decode safely ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            reason = str(e) or type(e).__name__
            if "truncated" in reason.lower() or isinstance(e, EOFError):
                reason = f"truncated or damaged file ({reason})"
            raise DatasetError(f"{p}: cannot be decoded: {reason}") from None
    return LoadedImage(image=out, source_mode=mode, source_format=fmt, notes=notes)


def _open(p: Path) -> Image.Image:
    """``Image.open`` with every way it fails (no file, empty, a format this install cannot read) as a DatasetError."""
    if p.suffix.lower() in (".heic", ".heif"):
        _register_heif()
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DatasetError(f"{p}: cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise DatasetError(f"{p}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that applies; Pillow's global is left untouched for other code.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(p)
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{p}: refused, too many pixels to decode safely ({e})") from None
    except UnidentifiedImageError:
        plugin = _NEEDS_PLUGIN.get(p.suffix.lower())
        if plugin:
            raise DatasetError(
                f"{p}: a {p.suffix.lstrip('.').upper()} photo this install cannot read; install {plugin} "
                "('pip install pillow-heif' in ComfyUI's Python) or export the photo as JPEG"
            ) from None
        raise DatasetError(f"{p}: not an image (or a format Pillow cannot read)") from None
    except OSError as e:
        raise DatasetError(f"{p}: cannot be opened ({e})") from None


def _register_heif() -> None:
    """Let Pillow open HEIC/HEIF files when pillow-heif is installed (once; nothing happens without it)."""
    if getattr(_register_heif, "done", False):
        return
    _register_heif.done = True  # type: ignore[attr-defined]
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def _has_frame_count(im: Image.Image) -> bool:
    """True when the file's header says how many frames it has (WebP, APNG, TIFF), unlike GIF."""
    return (im.format or "") in {"WEBP", "PNG", "TIFF", "MPO"}


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unreadable
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


_ORIENTATION_OPS = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    for op in _ORIENTATION_OPS.get(orientation, ()):
        im = im.transpose(op)
    return im


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> a new 8-bit RGB image (never returns ``im`` itself: the file handle is closed after)."""
    mode = im.mode
    if mode == "RGB":
        if "transparency" in im.info:
            notes.append("transparent colour flattened on grey")
            return _flatten(im.convert("RGBA"))
        return im.copy()
    if mode == "CMYK":
        notes.append("converted from CMYK")
        return _cmyk_to_rgb(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        notes.append(f"converted from {mode} (high bit depth)")
        return _high_depth_to_rgb(im)
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        if has_alpha:
            notes.append("palette transparency flattened on grey")
            return _flatten(im.convert("RGBA"))
        return im.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La"):
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("alpha flattened on grey")
            return _flatten(rgba)
        return rgba.convert("RGB")
    if mode in ("L", "1") and "transparency" in im.info:
        notes.append("transparency flattened on grey")
        return _flatten(im.convert("RGBA"))
    if mode not in ("L", "1"):
        notes.append(f"converted from {mode}")
    return im.convert("RGB")


def _flatten(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, NEUTRAL_GREY)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    import numpy as np

    a = np.asarray(im)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
        hi = float(a.max()) if a.size else 0.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255.0 else 1.0)
        a8 = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    else:
        a = a.astype(np.int64)
        hi = int(a.max()) if a.size else 0
        # 16-bit data (also when Pillow widened it to mode "I"); 8-bit values stored in mode "I" stay as they are.
        a8 = (np.clip(a, 0, 65535) >> 8).astype(np.uint8) if hi > 255 else np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a8).convert("RGB")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception as e:  # noqa: BLE001 - a broken profile falls back to the plain conversion
            log.debug("CMYK ICC conversion failed (%s); using the plain conversion", e)
    return im.convert("RGB")
