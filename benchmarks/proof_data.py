"""Procedural images for the learning proof: a class ("a photo of a shape") and one subject ("a photo of sks shape").

Everything is 32x32 RGB on a grey background, drawn from a seeded ``numpy`` generator so a seed always gives the
same pictures.

- Class: one circle, square or triangle of a named colour (red, green, blue, yellow, purple, white; jittered),
  random size and position, captioned with what it shows (see :data:`CAPTIONS`).
- Subject: one large square filled with an orange/blue checkerboard of 8-px cells (the cells must cover at least
  two latent pixels of the 4x-downsampling VAE to be learnable in a few hundred steps), at a slightly varying place.
- Subject on backgrounds (the face-weighted-loss variant): the same subject pictures (same places), each on its own
  random background of four 16-px blocks in random colours, with a mask of the subject square
  (:func:`subject_on_backgrounds`): like holiday photos, where the person stays and the scenery changes.
- Textures (VAE pre-training only): shapes filled with random two-colour checkerboards or stripes, so the
  autoencoder can reproduce texture in general without ever seeing the subject.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
BACKGROUND = (128, 128, 128)
CLASS_WORD = "shape"
CLASS_PROMPT = "a photo of a shape"
INSTANCE_PROMPT = "a photo of sks shape"
SUBJECT_COLOURS = ((255, 140, 0), (20, 70, 255))  # orange, blue
SUBJECT_SIDE = 24
SUBJECT_CELL = 8
KINDS = ("circle", "square", "triangle")
# Named class colours (each drawn with a little jitter), so captions can say what a picture holds. The subject's
# orange is not among them.
COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 190),
    "white": (240, 240, 240),
}


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random colour that stands out from the grey background."""
    while True:
        c = rng.integers(0, 256, size=3)
        if np.abs(c.astype(int) - 128).max() > 60:
            return int(c[0]), int(c[1]), int(c[2])


def _box(rng: np.random.Generator, lo: int = 10, hi: int = 22) -> tuple[int, int, int, int]:
    side = int(rng.integers(lo, hi + 1))
    x0 = int(rng.integers(0, SIZE - side + 1))
    y0 = int(rng.integers(0, SIZE - side + 1))
    return x0, y0, x0 + side - 1, y0 + side - 1


def _mask(kind: str, box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(m)
    x0, y0, x1, y1 = box
    if kind == "circle":
        d.ellipse(box, fill=255)
    elif kind == "square":
        d.rectangle(box, fill=255)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=255)
    return m


def _solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), colour)


def _checker(a, b, cell: int, ox: int = 0, oy: int = 0, stripes: bool = False) -> Image.Image:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    idx = ((xx - ox) // cell) if stripes else ((xx - ox) // cell + (yy - oy) // cell)
    arr = np.where((idx % 2 == 0)[..., None], np.array(a, np.uint8), np.array(b, np.uint8))
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def class_image(rng: np.random.Generator) -> Image.Image:
    """One class sample: a plain circle, square or triangle of a random colour at a random place."""
    return described_class_image(rng)[0]


def described_class_image(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    """A class picture with what it shows: ``(image, kind, colour name)``."""
    img = _solid(BACKGROUND)
    kind = KINDS[int(rng.integers(len(KINDS)))]
    name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    jitter = rng.integers(-20, 21, size=3)
    colour = tuple(int(v) for v in np.clip(np.array(COLOURS[name]) + jitter, 0, 255))
    img.paste(_solid(colour), (0, 0), _mask(kind, _box(rng)))
    return img, kind, name


# Caption mix for pre-training: (probability, template). Most captions name colour and kind, as real captions say
# what is in the picture; some say only one of them; some are the bare class prompt, so it draws the whole class.
CAPTIONS = (
    (0.5, "a photo of a {colour} {kind}"),
    (0.15, "a photo of a {colour} shape"),
    (0.15, "a photo of a {kind}"),
    (0.2, CLASS_PROMPT),
)


def class_caption(kind: str, colour: str, rng: np.random.Generator) -> str:
    """A pre-training caption for a class picture, drawn from :data:`CAPTIONS`."""
    r, acc, chosen = rng.random(), 0.0, CAPTIONS[-1][1]
    for p, template in CAPTIONS:
        acc += p
        if r < acc:
            chosen = template
            break
    return chosen.format(colour=colour, kind=kind)


def class_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [class_image(rng) for _ in range(n)]


def subject_images(n: int = 5, seed: int = 1234) -> list[Image.Image]:
    """``n`` pictures of the subject: the same checkered square, moved by up to 8 px."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - SUBJECT_SIDE + 1, size=2))
        img = _solid(BACKGROUND)
        fill = _checker(*SUBJECT_COLOURS, SUBJECT_CELL, ox=x0, oy=y0)
        img.paste(fill, (0, 0), _mask("square", (x0, y0, x0 + SUBJECT_SIDE - 1, y0 + SUBJECT_SIDE - 1)))
        out.append(img)
    return out


def _subject_places(n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(0, SIZE - SUBJECT_SIDE + 1, size=2)) for _ in range(n)]


def background_image(rng: np.random.Generator) -> Image.Image:
    """A random scenery: four 16-px blocks, each a random colour that stands out from grey."""
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    half = SIZE // 2
    for y in (0, half):
        for x in (0, half):
            arr[y : y + half, x : x + half] = _colour(rng)
    return Image.fromarray(arr, "RGB")


def subject_on_backgrounds(n: int = 5, seed: int = 1234, bg_seed: int = 77) -> list[tuple[Image.Image, Image.Image]]:
    """``(picture, mask)`` pairs: :func:`subject_images`' subject at the same places, on a new background each
    (seeded by ``bg_seed``); the mask ("L", 255 on the subject square) is what the face crop would write."""
    rng = np.random.default_rng(bg_seed)
    out = []
    for x0, y0 in _subject_places(n, seed):
        img = background_image(rng)
        square = _mask("square", (x0, y0, x0 + SUBJECT_SIDE - 1, y0 + SUBJECT_SIDE - 1))
        img.paste(_checker(*SUBJECT_COLOURS, SUBJECT_CELL, ox=x0, oy=y0), (0, 0), square)
        out.append((img, square))
    return out


def texture_image(rng: np.random.Generator) -> Image.Image:
    """VAE pre-training picture: a plain or textured (checker/stripes, random colours and cell size) shape."""
    img = _solid(BACKGROUND)
    for _ in range(int(rng.integers(1, 3))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        box = _box(rng, 8, 28)
        r = rng.random()
        if r < 0.4:
            fill = _solid(_colour(rng))
        else:
            cell = int(rng.choice([4, 6, 8, 10]))
            fill = _checker(_colour(rng), _colour(rng), cell, box[0], box[1], stripes=r > 0.8)
        img.paste(fill, (0, 0), _mask(kind, box))
    return img


def to_tensor(images: list[Image.Image]):
    """Images → float tensor (N, 3, H, W) in [-1, 1], the VAE's input range."""
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_unit_array(images: list[Image.Image]) -> np.ndarray:
    """Images → float64 array (N, H, W, 3) in [0, 1], the space the pixel metrics are measured in."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0 for im in images])
