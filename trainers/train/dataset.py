"""Training images: find them, caption them, square them, and decide (from the seed alone) what each step sees.

- A folder holds images directly and/or kohya-style ``<repeats>_<name>`` sub-folders whose images count
  ``repeats`` times per epoch (``10_sks woman/``); hidden files and other sub-folders are ignored.
- A ``photo.txt`` beside ``photo.jpg`` is that image's caption; otherwise the folder's prompt is used. A
  ``photo.mask.png`` beside it is its soft face mask (the face crop writes them) for the face-weighted loss.
- Images are resized (shorter side) and centre-cropped to the training resolution with PIL; with aspect buckets
  (:mod:`.buckets`) each image keeps its aspect instead, at about the same pixel count, and is never enlarged past
  the limit.
- The order is a pure function of ``(seed, sample index)``: a seeded permutation per epoch and a seeded flip per
  sample. Nothing about the order has to be saved for an exact resume, and every process of a multi-GPU run agrees.

Everything here runs before any model is loaded, so a bad folder is reported before training starts.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.images import list_images, load_rgb, mask_path
from ..errors import DatasetError
from ..fsutil import file_sha256

log = logging.getLogger(__name__)

_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Example:
    """One training image at its training size (``pixels``: uint8 HxWx3 bytes; ``mask``: uint8 HxW or None)."""

    path: Path
    caption: str
    pixels: bytes
    width: int
    height: int
    mask: bytes | None = None  # the soft face mask at the same size (0..255), when the dataset has one

    @property
    def bucket(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class Sizing:
    """How images get their training size: squares at ``resolution``, or aspect buckets (:mod:`.buckets`)."""

    resolution: int
    buckets: bool = False
    step: int = 64
    max_upscale: float = 2.0

    @classmethod
    def of(cls, config) -> Sizing:
        return cls(config.resolution, config.buckets, config.bucket_step, config.max_upscale)

    def bucket(self, width: int, height: int) -> tuple[int, int]:
        if not self.buckets:
            return (self.resolution, self.resolution)
        from ..data.buckets import bucket_for

        return bucket_for(width, height, self.resolution, self.step, self.max_upscale)


@dataclass(frozen=True)
class ImageSet:
    """The images of one folder (instance or class), repeats expanded, in a stable order."""

    kind: str  # "instance" | "class"
    folder: Path
    examples: tuple[Example, ...]  # with repeats (the same Example object repeated)
    files: tuple[Path, ...]  # distinct files read (images and captions)
    skipped: tuple[str, ...]  # unreadable images and why

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def unique(self) -> list[Example]:
        """Distinct examples, in order (for caching latents once per image)."""
        seen: dict[int, Example] = {}
        for ex in self.examples:
            seen.setdefault(id(ex), ex)
        return list(seen.values())


def scan_folder(folder: str | Path, what: str) -> list[tuple[Path, int]]:
    """``(image, repeats)`` for every image in ``folder`` and its ``<repeats>_<name>`` sub-folders."""
    root = Path(folder)
    if not str(folder).strip():
        raise DatasetError(f"no {what} folder given; point it at a folder of images")
    if not root.exists():
        raise DatasetError(f"{what} folder {root} does not exist; create it and put the images in it")
    if not root.is_dir():
        raise DatasetError(f"{what} folder {root} is a file, not a folder")
    found = [(p, 1) for p in list_images(root)]
    for sub in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        m = _REPEAT_DIR.match(sub.name)
        if not m:
            log.debug("ignoring sub-folder %s (not '<repeats>_<name>')", sub)
            continue
        repeats = int(m.group(1))
        if repeats < 1:
            log.warning("sub-folder %s has 0 repeats: its images are not used", sub)
            continue
        found.extend((p, repeats) for p in list_images(sub))
    if not found:
        raise DatasetError(
            f"{what} folder {root} holds no images (.jpg/.png/.webp/...); "
            "put the photos in it or in '<repeats>_<name>' sub-folders"
        )
    return found


def fingerprint(folder: str | Path, what: str = "dataset") -> str:
    """The identity of a dataset folder, used everywhere a folder of images is named (result keys, resumable states,
    metadata): each image's path inside the folder, its repeats and bytes, and its caption file's bytes.

    Reads no pixels; file hashes are cached by path, size and modification time, so asking again is cheap.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for path, repeats in scan_folder(root, what):
        h.update(f"{path.relative_to(root).as_posix()}:{repeats}:{_file_identity(path)}".encode())
        caption = path.with_suffix(".txt")
        if caption.is_file():
            h.update(b"caption:" + _file_identity(caption).encode())
        mask = mask_path(path)
        if mask.is_file():
            h.update(b"mask:" + _file_identity(mask).encode())
    return h.hexdigest()


def _file_identity(path: Path) -> str:
    """The file's hash, or why it cannot be read (a broken link, no permission): that file is skipped when the
    images are read, and reported there."""
    try:
        return file_sha256(path)
    except OSError as e:
        return f"unreadable:{e.strerror or e}"


def square(image, size: int):
    """Resize the shorter side to ``size`` and centre-crop to ``size`` x ``size`` (PIL, Lanczos)."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image_set(
    folder: str | Path,
    prompt: str,
    resolution: int,
    kind: str,
    *,
    sizing: Sizing | None = None,
    masks: bool = False,
    exclude: frozenset[Path] = frozenset(),
) -> ImageSet:
    """Read, caption and size every image of a folder (squares, or buckets with ``sizing``); unreadable ones are
    skipped (and listed), none is an error. ``masks`` reads each image's soft mask when it has one; ``exclude``
    leaves out images (held out for validation)."""
    what = {"instance": "instance (subject)", "class": "class"}.get(kind, kind)
    root = Path(folder)
    sizing = sizing or Sizing(resolution)
    entries = [(p, r) for p, r in scan_folder(root, what) if p not in exclude]
    examples: list[Example] = []
    files: list[Path] = []
    skipped: list[str] = []
    loaded: dict[Path, Example] = {}
    for path, repeats in entries:
        if path not in loaded:
            try:
                example, used = read_example(path, prompt, sizing, masks)
            except DatasetError as e:
                skipped.append(str(e))
                log.warning("skipping %s", e)
                continue
            files.extend(used)
            loaded[path] = example
        examples.extend([loaded[path]] * repeats)
    if not examples:
        reasons = "; ".join(skipped[:3])
        raise DatasetError(f"{what} folder {root} has no readable images ({len(skipped)} refused: {reasons})")
    return ImageSet(kind=kind, folder=root, examples=tuple(examples), files=tuple(files), skipped=tuple(skipped))


def read_example(path: Path, prompt: str, sizing: Sizing, masks: bool = False) -> tuple[Example, list[Path]]:
    """One image at its training size, its caption (``.txt`` beside it, else ``prompt``) and its mask; with the files
    read. Raises :class:`DatasetError` for an unreadable image (an unreadable mask is ignored, with a warning)."""
    from ..data.buckets import fit

    image = load_rgb(path)
    bucket = sizing.bucket(*image.size)
    pixels = fit(image, bucket) if sizing.buckets else square(image, sizing.resolution)
    files = []
    caption = prompt
    caption_file = path.with_suffix(".txt")
    if caption_file.is_file():
        text = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            caption = text
            files.append(caption_file)
    files.append(path)
    mask = None
    if masks and mask_path(path).is_file():
        mask = _read_mask(mask_path(path), image.size, bucket, sizing)
        if mask is not None:
            files.append(mask_path(path))
    return Example(path, caption, pixels.tobytes(), bucket[0], bucket[1], mask), files


def _read_mask(path: Path, size: tuple[int, int], bucket: tuple[int, int], sizing: Sizing) -> bytes | None:
    """A grey mask sized and cropped exactly like its image (a mask of another size is stretched to it first)."""
    from PIL import Image, UnidentifiedImageError

    from ..data.buckets import fit

    try:
        with Image.open(path) as im:
            mask = im.convert("L")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        log.warning("ignoring the mask %s (%s): that image trains without a mask", path, e)
        return None
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    sized = fit(mask, bucket, Image.Resampling.BILINEAR) if sizing.buckets else square(mask, sizing.resolution)
    return sized.tobytes()


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across runs, platforms and processes)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Order:
    """Which example (and whether mirrored) is global sample ``k``: a seeded permutation per epoch.

    A pure function of ``(seed, salt, k)``, so a resumed run continues the exact order without saved state.
    """

    def __init__(self, n: int, seed: int, salt: int, flip: bool):
        self.n, self.seed, self.salt, self.flip = n, seed, salt, flip
        self._epoch = -1
        self._perm: list[int] = []
        self._flips: list[bool] = []

    def __call__(self, k: int) -> tuple[int, bool]:
        import torch

        epoch, pos = divmod(k, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.salt, epoch))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._flips = (torch.rand(self.n, generator=g) < 0.5).tolist()
            self._epoch = epoch
        return self._perm[pos], (self.flip and self._flips[pos])


def to_tensor(example: Example, flip: bool):
    """uint8 pixels -> float tensor 3xHxW in [-1, 1] (mirrored if ``flip``)."""
    import torch

    t = torch.frombuffer(bytearray(example.pixels), dtype=torch.uint8).view(example.height, example.width, 3)
    t = t.permute(2, 0, 1).float().div(127.5).sub(1.0)
    return t.flip(-1) if flip else t


def mask_tensor(example: Example, flip: bool):
    """The example's mask as a float tensor 1xHxW in [0, 1] (mirrored with its image); all ones without a mask."""
    import torch

    if example.mask is None:
        return torch.ones(1, example.height, example.width)
    t = torch.frombuffer(bytearray(example.mask), dtype=torch.uint8).view(1, example.height, example.width)
    t = t.float().div(255.0)
    return t.flip(-1) if flip else t


def refit(example: Example, bucket: tuple[int, int]) -> Example:
    """A class image moved to another bucket (resized to cover it and centre-cropped), for a batch of that shape."""
    from PIL import Image

    from ..data.buckets import fit

    if example.bucket == tuple(bucket):
        return example
    image = Image.frombytes("RGB", example.bucket, example.pixels)
    return Example(example.path, example.caption, fit(image, bucket).tobytes(), bucket[0], bucket[1], None)
