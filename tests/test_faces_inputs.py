"""Face Crop Dataset on bad and unusual photos: one test per kind of input.

Each photo goes through the whole pipeline (``build_dataset`` on a folder holding it and one good photo): unreadable
files are skipped with their reason, convertible ones (CMYK, 16-bit, palette, EXIF-rotated, animated) are kept with
the face found, and nothing crashes. The photo is scikit-image's bundled ``astronaut`` (512x512, one face).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from trainers.data.crop import CropConfig, build_dataset
from trainers.data.images import list_images, load_rgb, read_image
from trainers.errors import DatasetError

ASTRONAUT = data.astronaut()  # RGB uint8, the face is at about x 178..270, y 69..161


def _run(folder: Path, tmp_path: Path, **options):
    cfg = CropConfig(**options)
    return build_dataset(cfg, input_folder=folder, output_folder=tmp_path / "dataset")


def _entry(outcome, name: str) -> dict:
    (entry,) = [r for r in outcome.report["images"] if r["source"] == name]
    return entry


@pytest.fixture
def folder(tmp_path) -> Path:
    """A photo folder that already holds one good photo (so every run also proves the rest goes on)."""
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(ASTRONAUT).save(d / "good.jpg", quality=95)
    return d


def _assert_skipped(outcome, name: str, *words: str) -> str:
    entry = _entry(outcome, name)
    assert entry["status"] == "skipped", entry
    for w in words:
        assert w in entry["reason"], entry["reason"]
    assert f"{name}: {entry['reason']}" in outcome.text  # every skipped file is listed with its reason
    assert _entry(outcome, "good.jpg")["status"] == "kept"
    return entry["reason"]


def _assert_kept_with_face(outcome, name: str) -> dict:
    entry = _entry(outcome, name)
    assert entry["status"] == "kept", entry
    assert entry["face"] is not None, entry
    return entry


def _kept_crop(outcome, name: str) -> np.ndarray:
    return np.asarray(Image.open(outcome.folder / _entry(outcome, name)["output"]).convert("RGB"), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# unreadable files: skipped with a reason


def test_truncated_jpeg_is_skipped(folder, tmp_path):
    blob = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(blob[: len(blob) // 2])
    _assert_skipped(_run(folder, tmp_path), "truncated.jpg", "truncated")


def test_zero_byte_file_is_skipped(folder, tmp_path):
    (folder / "empty.jpg").write_bytes(b"")
    _assert_skipped(_run(folder, tmp_path), "empty.jpg", "empty file")


def test_text_file_named_jpg_is_skipped(folder, tmp_path):
    (folder / "notes.jpg").write_text("<html>this is a web page saved as .jpg</html>")
    _assert_skipped(_run(folder, tmp_path), "notes.jpg", "not an image")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but which holds almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# PIL warns about the 90-megapixel header before our limit refuses it: expected here.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width,height", [(10_000, 9_000), (40_000, 40_000)])
def test_image_over_the_pixel_limit_is_refused_from_its_header(folder, tmp_path, width, height):
    """90 MP is over our 80 MP limit (under Pillow's own bomb error); 1600 MP is over both: refused either way."""
    (folder / "bomb.png").write_bytes(_png_header_only(width, height))
    before = Image.MAX_IMAGE_PIXELS
    reason = _assert_skipped(_run(folder, tmp_path), "bomb.png", "refused")
    assert "pixels" in reason or "MP" in reason
    assert before == Image.MAX_IMAGE_PIXELS  # Pillow's global is untouched


def test_pixel_limit_is_an_option(folder, tmp_path):
    Image.fromarray(ASTRONAUT).resize((1200, 1200)).save(folder / "large.png")
    outcome = _run(folder, tmp_path, max_megapixels=1.0)
    _assert_skipped(outcome, "large.png", "over the limit of 1 MP")
    with pytest.raises(DatasetError, match="large.png"):
        load_rgb(folder / "large.png", max_pixels=1_000_000)


# ---------------------------------------------------------------------------------------------------------------
# convertible photos: kept, face found, converted right


def _reference_crop(tmp_path, photo: np.ndarray = ASTRONAUT) -> np.ndarray:
    d = tmp_path / "ref"
    d.mkdir()
    Image.fromarray(photo).save(d / "ref.png")
    out = build_dataset(CropConfig(), input_folder=d, output_folder=tmp_path / "ref_dataset")
    return _kept_crop(out, "ref.png")


def test_cmyk_jpeg_is_converted(folder, tmp_path):
    Image.fromarray(ASTRONAUT).convert("CMYK").save(folder / "print.jpg", quality=95)
    assert Image.open(folder / "print.jpg").mode == "CMYK"
    outcome = _run(folder, tmp_path, duplicates="keep")
    entry = _assert_kept_with_face(outcome, "print.jpg")
    assert "converted from CMYK" in entry["notes"]
    # Colours survive: the crop matches the RGB photo's crop closely (JPEG noise only).
    diff = np.abs(_kept_crop(outcome, "print.jpg") - _reference_crop(tmp_path)).mean()
    assert diff < 12, diff


def test_16_bit_png_is_converted(folder, tmp_path):
    # 16-bit RGB (OpenCV writes uint16 PNGs; BGR order) and 16-bit grey.
    cv2.imwrite(str(folder / "rgb16.png"), ASTRONAUT[..., ::-1].astype(np.uint16) * 257)
    Image.fromarray(cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode.startswith("I")
    outcome = _run(folder, tmp_path, duplicates="keep")
    _assert_kept_with_face(outcome, "rgb16.png")
    grey = _assert_kept_with_face(outcome, "grey16.png")
    assert any("high bit depth" in n for n in grey["notes"])
    # Not crushed to black or white by a wrong scale: the 16-bit crop equals the 8-bit one.
    diff = np.abs(_kept_crop(outcome, "rgb16.png") - _reference_crop(tmp_path)).mean()
    assert diff < 3, diff


def test_palette_png_with_transparency_is_flattened_on_grey(folder, tmp_path):
    pal = Image.fromarray(ASTRONAUT).quantize(64)
    # Make the palette colour of the top-left corner (background) transparent.
    idx = pal.getpixel((0, 0))
    pal.save(folder / "palette.png", transparency=idx)
    assert Image.open(folder / "palette.png").mode == "P"
    outcome = _run(folder, tmp_path, duplicates="keep")
    entry = _assert_kept_with_face(outcome, "palette.png")
    assert any("transparency" in n for n in entry["notes"])
    assert load_rgb(folder / "palette.png").getpixel((0, 0)) == (128, 128, 128)


def test_rgba_png_alpha_is_flattened_on_grey(tmp_path):
    rgba = np.dstack([ASTRONAUT, np.full(ASTRONAUT.shape[:2], 255, np.uint8)])
    rgba[:50, :50, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    img = load_rgb(tmp_path / "cut.png")
    assert img.mode == "RGB" and img.getpixel((10, 10)) == (128, 128, 128)
    assert img.getpixel((300, 300)) == tuple(ASTRONAUT[300, 300])


def test_exif_rotated_photo_gives_an_upright_crop(folder, tmp_path):
    # A camera held sideways stores the pixels rotated and says "rotate 90 deg clockwise to view" (orientation 6).
    upright = np.concatenate([ASTRONAUT, np.full((128, 512, 3), 90, np.uint8)])  # portrait, 512 wide x 640 tall
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (640, 512)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "sideways.jpg", exif=exif, quality=95)
    outcome = _run(folder, tmp_path, duplicates="keep")
    entry = _assert_kept_with_face(outcome, "sideways.jpg")
    assert "EXIF orientation 6 applied" in entry["notes"]
    assert entry["size"] == [512, 640]
    # Upright: the face sits where it is in the upright photo, and the crop looks like the upright photo's crop
    # (much more than like that crop turned sideways).
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    Image.fromarray(upright).save(ref_dir / "upright.png")
    ref = build_dataset(CropConfig(), input_folder=ref_dir, output_folder=tmp_path / "ref_dataset")
    ref_face = ref.report["images"][0]["face"]
    assert abs(entry["face"]["x"] - ref_face["x"]) <= 8 and abs(entry["face"]["y"] - ref_face["y"]) <= 8
    crop = _kept_crop(outcome, "sideways.jpg")
    ref_crop = _kept_crop(ref, "upright.png")
    assert np.abs(crop - ref_crop).mean() < 0.5 * np.abs(np.rot90(crop) - ref_crop).mean()
    # ... and without the EXIF step the sideways pixels have no face the detector can find.
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    stored.save(raw_dir / "sideways_no_exif.jpg", quality=95)
    raw = build_dataset(CropConfig(), input_folder=raw_dir, output_folder=tmp_path / "raw_dataset")
    assert raw.report["images"][0]["reason"] == "no face found"


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_image_uses_its_first_frame(folder, tmp_path, fmt):
    first = Image.fromarray(ASTRONAUT)
    others = [Image.fromarray(a).resize((512, 512)) for a in (data.coffee(), data.chelsea())]
    first.save(folder / f"anim.{fmt}", save_all=True, append_images=others, duration=100, loop=0)
    assert getattr(Image.open(folder / f"anim.{fmt}"), "n_frames", 1) == 3
    outcome = _run(folder, tmp_path, duplicates="keep")
    entry = _assert_kept_with_face(outcome, f"anim.{fmt}")
    # WebP stores its frame count; a GIF's is only known by reading every frame, which we do not do.
    assert ("first of 3 frames used" if fmt == "webp" else "animated: first frame used") in entry["notes"]


# ---------------------------------------------------------------------------------------------------------------
# faces: two, none


def test_two_faces_are_reported_and_the_largest_is_used(folder, tmp_path):
    canvas = np.full((512, 1024, 3), 200, np.uint8)
    canvas[:, :512] = ASTRONAUT
    small = np.asarray(Image.fromarray(ASTRONAUT[:, ::-1]).resize((384, 384), Image.Resampling.LANCZOS))
    canvas[64:448, 576:960] = small
    Image.fromarray(canvas).save(folder / "two.png")
    outcome = _run(folder, tmp_path)
    entry = _assert_kept_with_face(outcome, "two.png")
    assert entry["faces"] == 2
    assert any("2 faces found" in w for w in entry["warnings"])
    assert "two.png: 2 faces found" in outcome.text
    assert entry["face"]["x"] < 512  # the larger face, on the left half
    assert outcome.report["summary"]["several_faces"] == 1


def test_photo_without_a_face_is_skipped_or_centre_cropped(folder, tmp_path):
    Image.fromarray(data.coffee()).save(folder / "coffee.png")  # 400x600, a cup of coffee
    skipped = _run(folder, tmp_path)
    _assert_skipped(skipped, "coffee.png", "no face found")
    centre = build_dataset(CropConfig(no_face="center_crop"), input_folder=folder, output_folder=tmp_path / "c")
    entry = _entry(centre, "coffee.png")
    assert entry["status"] == "kept" and entry["face"] is None
    assert entry["crop"] == {"left": 100, "top": 0, "side": 400, "padded": False, "tight": False, "center": True}


# ---------------------------------------------------------------------------------------------------------------
# listing


def test_list_images_is_sorted_case_insensitive_and_optionally_recursive(tmp_path):
    for name in ["b.JPG", "a.png", "c.WebP", "notes.txt", ".hidden.jpg", "sub/d.jpeg", "sub/e.TIFF"]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.WebP"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.png",
        "b.JPG",
        "c.WebP",
        "sub/d.jpeg",
        "sub/e.TIFF",
    ]
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_read_image_names_the_file_in_errors(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=r"bad\.png"):
        read_image(p)
