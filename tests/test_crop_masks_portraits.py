"""Face Crop Dataset's soft face masks and 3:4 portrait crops, and how the training dataset reads them (issue 15).

A fixed-box detector stands in for the real one, so the geometry is exact: a 600 x 800 photo with the face box at
(250, 200, 100 x 100).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from trainers.data.buckets import bucket_for, portrait_size
from trainers.data.crop import CropConfig, _is_own_name, build_dataset
from trainers.data.crop_shapes import FACE_HEIGHT, portrait_box
from trainers.data.faces import Face
from trainers.data.images import list_images
from trainers.train.dataset import Sizing, load_image_set

FACE = Face(250, 200, 100, 100)


class BoxDetector:
    name = "box"

    def detect(self, rgb):
        return [FACE] if rgb.shape[:2] == (800, 600) else []


def _photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (800, 600, 3), dtype=np.uint8)


def _build(tmp_path, name="ds", **options):
    cfg = CropConfig(instance_prompt="photo of zwx person", resolution=64, **options)
    return build_dataset(cfg, images=[_photo(0), _photo(1)], output_folder=tmp_path / name, detector=BoxDetector())


def test_each_crop_gets_a_soft_face_mask_bright_on_the_face_dark_at_the_edges(tmp_path):
    out = _build(tmp_path)
    names = sorted(p.name for p in out.folder.iterdir())
    assert names == ["0001.mask.png", "0001.png", "0001.txt", "0002.mask.png", "0002.png", "0002.txt", "report.json"]
    mask = np.asarray(Image.open(out.folder / "0001.mask.png"))
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    assert mask[32, 32] == 255  # the face sits in the middle of the square crop
    assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[0, 32] < 255  # soft: falls off away from the face
    assert 0 < (mask == 255).mean() < 0.5 and ((mask > 0) & (mask < 255)).any()
    assert all(r["mask"] for r in out.report["images"])
    # masks are never taken for photos, by the crop's own listing or by training
    assert [p.name for p in list_images(out.folder)] == ["0001.png", "0002.png"]
    assert all(_is_own_name(n) for n in names if n != "report.json")

    no_masks = _build(tmp_path, "plain", masks=False)
    assert not list(no_masks.folder.glob("*.mask.png"))
    assert no_masks.key != out.key


def test_the_training_dataset_reads_masks_cropped_like_their_images(tmp_path):
    out = _build(tmp_path)
    images = load_image_set(out.folder, "p", 32, "instance", masks=True)
    assert len(images) == 2 and all(e.mask is not None and len(e.mask) == 32 * 32 for e in images.examples)
    small = np.asarray(Image.open(out.folder / "0001.mask.png").resize((32, 32), Image.Resampling.LANCZOS))
    got = np.frombuffer(images.examples[0].mask, np.uint8).reshape(32, 32)
    assert np.abs(got.astype(int) - small.astype(int)).max() <= 2
    unmasked = load_image_set(out.folder, "p", 32, "instance", masks=False)
    assert all(e.mask is None for e in unmasked.examples)
    classes = load_image_set(out.folder, "p", 32, "class")
    assert all(e.mask is None for e in classes.examples)  # class images are never masked


def test_portrait_crops_frame_head_and_shoulders_at_the_training_bucket(tmp_path):
    assert portrait_size(512) == (448, 576) and portrait_size(32) == (24, 32)
    box = portrait_box(FACE, 600, 800, margin=0.7)
    assert (box.width, box.height) == (240, 320) and not box.padded
    assert abs((FACE.cy - box.top) / box.height - FACE_HEIGHT) < 0.01 and abs(FACE.cx - (box.left + 120)) <= 1

    both = _build(tmp_path, shape="both")
    names = sorted(p.name for p in both.folder.iterdir())
    assert "0001.portrait.png" in names and "0001.portrait.mask.png" in names and "0001.portrait.txt" in names
    assert Image.open(both.folder / "0001.png").size == (64, 64)
    assert Image.open(both.folder / "0001.portrait.png").size == portrait_size(64) == (56, 72)
    tall_mask = np.asarray(Image.open(both.folder / "0001.portrait.mask.png"))
    assert tall_mask[round(FACE_HEIGHT * 72), 28] == 255 and tall_mask[-1, 28] == 0  # face high, shoulders weigh less
    assert all(_is_own_name(n) for n in names if n != "report.json")
    # training keeps the aspect: the portraits land in a 3:4 bucket, the squares in the square one
    images = load_image_set(both.folder, "p", 64, "instance", sizing=Sizing(64, True, 8, 2.0), masks=True)
    assert sorted({e.bucket for e in images.examples}) == [(56, 72), (64, 64)]

    only = _build(tmp_path, "tall", shape="portrait")
    assert Image.open(only.folder / "0001.png").size == (56, 72)
    assert not list(only.folder.glob("*.portrait.*"))

    # a new crop into the same folder removes the previous run's portraits and masks (our own names only)
    (both.folder / "notes.portrait.png").write_bytes(b"mine")
    again = build_dataset(
        CropConfig(instance_prompt="x", resolution=64, masks=False),
        images=[_photo(0)],
        output_folder=both.folder,
        detector=BoxDetector(),
    )
    assert sorted(p.name for p in again.folder.iterdir()) == [
        "0001.png",
        "0001.txt",
        "notes.portrait.png",
        "report.json",
    ]


def test_buckets_keep_the_pixel_count_and_never_enlarge_past_the_limit():
    assert bucket_for(768, 1024, 512, 64, 2.0) == (448, 576)
    assert bucket_for(512, 512, 512, 64, 2.0) == (512, 512)
    for w, h in [(768, 1024), (1024, 768), (1000, 500), (600, 1400), (512, 512)]:
        bw, bh = bucket_for(w, h, 512, 64, 2.0)
        assert bw * bh <= 512 * 512 and bw % 64 == 0 and bh % 64 == 0 and bw * bh > 0.8 * 512 * 512
    # small images get a smaller bucket of the same aspect rather than being enlarged more than 2x
    for w, h, limit in [(200, 200, 2.0), (150, 200, 2.0), (120, 160, 1.5), (100, 100, 1.0)]:
        bw, bh = bucket_for(w, h, 512, 64, limit)
        assert max(bw / w, bh / h) <= limit + 1e-9, (w, h, bw, bh)
    assert bucket_for(200, 200, 512, 64, 2.0) == (384, 384)
