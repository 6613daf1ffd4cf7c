"""Training images: find them, caption them, square them, and decide (from the seed alone) what each step sees.

- A folder holds images directly and/or kohya-style ``<repeats>_<name>`` sub-folders whose images count
  ``repeats`` times per epoch (``10_sks woman/``); hidden files and other sub-folders are ignored.
- A ``photo.txt`` beside ``photo.jpg`` is that image's caption; otherwise the folder's prompt is used.
- Images are resized (shorter side) and centre-cropped to the training resolution with PIL.
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

from ..data.images import list_images, load_rgb
from ..errors import DatasetError
from ..fsutil import file_sha256

log = logging.getLogger(__name__)

_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Example:
    """One training image, already squared to the resolution (``pixels``: uint8 HxWx3 bytes)."""

    path: Path
    caption: str
    pixels: bytes
    size: int  # side in pixels


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


def load_image_set(folder: str | Path, prompt: str, resolution: int, kind: str) -> ImageSet:
    """Read, caption and square every image of a folder; unreadable ones are skipped (and listed), none is an error."""
    what = "instance (subject)" if kind == "instance" else "class"
    root = Path(folder)
    entries = scan_folder(root, what)
    examples: list[Example] = []
    files: list[Path] = []
    skipped: list[str] = []
    loaded: dict[Path, Example] = {}
    for path, repeats in entries:
        if path not in loaded:
            try:
                image = square(load_rgb(path), resolution)
            except DatasetError as e:
                skipped.append(str(e))
                log.warning("skipping %s", e)
                continue
            caption_file = path.with_suffix(".txt")
            caption = prompt
            if caption_file.is_file():
                text = caption_file.read_text(encoding="utf-8", errors="replace").strip()
                if text:
                    caption = text
                    files.append(caption_file)
            files.append(path)
            loaded[path] = Example(path=path, caption=caption, pixels=image.tobytes(), size=resolution)
        examples.extend([loaded[path]] * repeats)
    if not examples:
        reasons = "; ".join(skipped[:3])
        raise DatasetError(f"{what} folder {root} has no readable images ({len(skipped)} refused: {reasons})")
    return ImageSet(kind=kind, folder=root, examples=tuple(examples), files=tuple(files), skipped=tuple(skipped))


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

    t = torch.frombuffer(bytearray(example.pixels), dtype=torch.uint8).view(example.size, example.size, 3)
    t = t.permute(2, 0, 1).float().div(127.5).sub(1.0)
    return t.flip(-1) if flip else t
