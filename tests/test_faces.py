"""Face Crop Dataset on real photos (scikit-image's bundled astronaut and LFW subset), geometry, the dataset folder
and the CLI.

Tolerance used for "the face is centred": the detected face's centre lies within 10% of the crop side from the
crop's centre when the photo leaves room around the face (astronaut: measured ~1%). Crops are centred on the face
and only shifted to stay inside the photo, so where the photo has no room (LFW: tight face crops) a "tight" crop
(the whole photo) may hold the face off-centre: there the tolerance is 20% (measured median 7%, max 16%), and a
padded crop is centred (2%).

The LFW subset (``skimage.data.lfw_subset()``) is 200 grey 25x25 images: the first 100 are faces cropped tightly
from Labeled Faces in the Wild, the last 100 random non-face patches from the same photos. 25 px is below the
20-24 px window of a Haar cascade plus context, so each image is upscaled 8x (LANCZOS, to 200x200) before it is
given to the pipeline; the faces then fill the frame, which also exercises the padded detection pass and padding.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage import data

from trainers.cli import main as cli_main
from trainers.data.crop import (
    CropBox,
    CropConfig,
    build_dataset,
    dhash,
    face_crop_box,
    hamming,
)
from trainers.data.faces import Face, HaarDetector, choose_face, find_yunet_model, make_detector
from trainers.errors import ConfigError, DatasetError

ASTRONAUT = data.astronaut()
CENTRE_TOLERANCE = 0.10  # of the crop side, when the photo has room around the face
TIGHT_TOLERANCE = 0.20  # when the photo is narrower than the crop the margin asks for
PADDED_TOLERANCE = 0.02
LFW_UPSCALE = 8


def _contains(crop: dict, face: dict, tol: float = 1.0) -> bool:
    left, top, side = crop["left"], crop["top"], crop["side"]
    return (
        face["x"] >= left - tol
        and face["y"] >= top - tol
        and face["x"] + face["w"] <= left + side + tol
        and face["y"] + face["h"] <= top + side + tol
    )


def _centre_offset(crop: dict, face: dict) -> float:
    """Distance from the face centre to the crop centre, as a fraction of the crop side."""
    cx, cy = face["x"] + face["w"] / 2, face["y"] + face["h"] / 2
    ox, oy = crop["left"] + crop["side"] / 2, crop["top"] + crop["side"] / 2
    return math.hypot(cx - ox, cy - oy) / crop["side"]


# ---------------------------------------------------------------------------------------------------------------
# real photos


def test_astronaut_crop_holds_the_whole_face_centred(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(ASTRONAUT).save(photos / "astronaut.png")
    outcome = build_dataset(CropConfig(), input_folder=photos, output_folder=tmp_path / "ds")
    (entry,) = outcome.report["images"]
    assert entry["status"] == "kept" and entry["faces"] == 1
    face, crop = entry["face"], entry["crop"]
    # The face is at about x 178..270, y 69..161 in this 512x512 photo (checked by eye once; Haar finds it).
    assert 160 < face["x"] < 200 and 50 < face["y"] < 90 and 80 < face["w"] < 120
    assert _contains(crop, face)
    assert _centre_offset(crop, face) <= CENTRE_TOLERANCE
    assert not crop["padded"]
    assert 0.35 <= face["fraction"] <= 0.50  # margin 0.7 -> the face is ~42% of the crop side
    # The written crop is 512x512 and a detector finds the face again, in its middle.
    out = np.asarray(Image.open(outcome.folder / "0001.png"))
    assert out.shape == (512, 512, 3)
    (again,) = HaarDetector().detect(out)
    assert abs(again.cx - 256) < 0.1 * 512 and abs(again.cy - 256) < 0.1 * 512
    # Face 92 px -> crop ~221 px -> 512 px: upscaled ~2.3x, reported as a warning.
    assert entry["upscale"] > 2.0 and any(w.startswith("upscaled") for w in entry["warnings"])


@pytest.mark.parametrize("resolution,margin", [(768, 0.5), (512, 0.9)])
def test_resolution_and_margin_options(tmp_path, resolution, margin):
    photo = np.asarray(Image.fromarray(ASTRONAUT).resize((1536, 1536), Image.Resampling.LANCZOS))
    outcome = build_dataset(
        CropConfig(resolution=resolution, margin=margin), images=[photo], output_root=tmp_path / "out"
    )
    (entry,) = outcome.report["images"]
    assert entry["face"]["fraction"] == pytest.approx(1 / (1 + 2 * margin), abs=0.01)
    assert Image.open(outcome.images[0]).size == (resolution, resolution)
    assert not any(w.startswith("upscaled") for w in entry["warnings"])


def _lfw_outcome(tmp_path_factory):
    faces = data.lfw_subset()
    assert faces.shape == (200, 25, 25)
    up = [
        np.asarray(
            Image.fromarray((f * 255).round().astype(np.uint8)).resize(
                (25 * LFW_UPSCALE, 25 * LFW_UPSCALE), Image.Resampling.LANCZOS
            )
        )
        for f in faces
    ]
    out = tmp_path_factory.mktemp("lfw")
    # 100 different people: the identity check (tests/test_identity.py) would only add ~30 s here
    cfg = CropConfig(duplicates="keep", resolution=256, identity_check=False)
    return build_dataset(cfg, images=up, output_root=out)


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    return _lfw_outcome(tmp_path_factory)


def test_lfw_faces_are_found_and_centred(lfw):
    entries = lfw.report["images"][:100]
    found = [e for e in entries if e["face"] is not None]
    # Measured: 98 of 100 with this detector; asserted: at least 90%.
    assert len(found) >= 90, f"only {len(found)} of 100 LFW faces found"
    for e in found:
        crop = e["crop"]
        assert _contains(crop, e["face"]), e
        tol = PADDED_TOLERANCE if crop["padded"] else TIGHT_TOLERANCE if crop["tight"] else CENTRE_TOLERANCE
        assert _centre_offset(crop, e["face"]) <= tol, e
    # They really are frame-filling: every crop is the whole photo (tight) or padded around it.
    assert all(e["crop"]["tight"] or e["crop"]["padded"] for e in found)


def test_lfw_non_faces_are_reported_as_no_face(lfw):
    entries = lfw.report["images"][100:]
    no_face = [e for e in entries if e["status"] == "skipped" and e["reason"] == "no face found"]
    # Measured: 99 of 100 (one false positive, from the padded frontal pass); asserted: at least 95%.
    assert len(no_face) >= 95, [e["source"] for e in entries if e not in no_face]
    assert all(f"{e['source']}: no face found" in lfw.text for e in no_face)


# ---------------------------------------------------------------------------------------------------------------
# geometry


def test_crop_box_is_centred_on_the_face_when_there_is_room():
    box = face_crop_box(Face(450, 300, 100, 100), 1000, 800, margin=0.7)
    assert box == CropBox(left=380, top=230, side=240)
    assert box.contains(Face(450, 300, 100, 100))


def test_crop_box_shifts_inside_the_photo_at_the_edges():
    face = Face(10, 700, 100, 100)  # bottom-left corner of a 1000x800 photo
    box = face_crop_box(face, 1000, 800, margin=0.7)
    assert (box.left, box.top, box.side, box.padded) == (0, 560, 240, False)
    assert box.contains(face)


def test_crop_box_narrows_then_pads_as_a_last_resort():
    # The margin asks for 480 px but the photo is 400 px high: the whole height, face 50% of it (tight).
    tight = face_crop_box(Face(250, 100, 200, 200), 700, 400, margin=0.7)
    assert (tight.side, tight.top, tight.tight, tight.padded) == (400, 0, True, False)
    # A face filling the frame (or reaching past it) cannot fit with any margin: padded, centred on the face.
    padded = face_crop_box(Face(-10, -5, 220, 220), 200, 200, margin=0.7)
    assert padded.padded and padded.side == round(220 * 2.4)
    assert abs(padded.left + padded.side / 2 - 100) <= 1 and abs(padded.top + padded.side / 2 - 105) <= 1


def test_choose_face_prefers_largest_then_most_central():
    big_edge = Face(0, 0, 100, 100)
    big_centre = Face(450, 450, 95, 95)
    small_centre = Face(480, 480, 40, 40)
    assert choose_face([small_centre, big_edge], 1000, 1000) == big_edge
    assert choose_face([big_edge, big_centre, small_centre], 1000, 1000) == big_centre  # similar size: central
    assert choose_face([], 10, 10) is None


def test_dhash_matches_resized_copies_not_other_photos():
    a = Image.fromarray(ASTRONAUT)
    resized = a.resize((300, 300), Image.Resampling.BILINEAR)
    other = Image.fromarray(data.coffee()).resize((512, 512))
    assert hamming(dhash(a), dhash(resized)) <= 4
    assert hamming(dhash(a), dhash(other)) > 16


# ---------------------------------------------------------------------------------------------------------------
# the dataset folder


def _photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(ASTRONAUT).save(d / "a.jpg", quality=92)
    Image.fromarray(ASTRONAUT[:, ::-1]).resize((700, 700)).save(d / "b.png")  # mirrored: another "shot"
    Image.fromarray(data.coffee()).resize((300, 200)).save(d / "c.png")  # no face
    (d / "d.jpg").write_bytes(b"")
    return d


def test_dataset_folder_is_numbered_captioned_and_reused(tmp_path):
    photos = _photos(tmp_path)
    cfg = CropConfig(instance_prompt="photo of zwx person")
    first = build_dataset(cfg, input_folder=photos, output_root=tmp_path / "out")
    assert first.folder.parent == tmp_path / "out" / "likeness" / "datasets" and first.folder.name == first.key
    names = sorted(p.name for p in first.folder.iterdir())
    assert names == ["0001.mask.png", "0001.png", "0001.txt", "0002.mask.png", "0002.png", "0002.txt", "report.json"]
    assert (first.folder / "0002.txt").read_text() == "photo of zwx person\n"
    report = json.loads((first.folder / "report.json").read_text())
    assert [(r["source"], r["output"]) for r in report["images"]] == [
        ("a.jpg", "0001.png"),
        ("b.png", "0002.png"),
        ("c.png", ""),
        ("d.jpg", ""),
    ]
    assert report["summary"]["kept"] == 2 and report["summary"]["skipped"] == 2
    assert "DreamBooth wants 15+" in report["summary"]["verdict"]
    assert first.text.splitlines()[-1].startswith("Verdict: ")

    mtimes = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}
    again = build_dataset(cfg, input_folder=photos, output_root=tmp_path / "out")
    assert again.reused and again.folder == first.folder and again.text == first.text
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.iterdir()} == mtimes  # nothing rewritten
    assert len(list((tmp_path / "out" / "likeness" / "datasets").iterdir())) == 1  # no second copy

    # Other options or other photos: another key, another folder.
    other = build_dataset(
        CropConfig(instance_prompt="photo of zwx person", resolution=768),
        input_folder=photos,
        output_root=tmp_path / "out",
    )
    assert other.key != first.key and not other.reused


def test_named_output_folder_is_replaced_not_mixed(tmp_path):
    photos = _photos(tmp_path)
    target = tmp_path / "dataset"
    first = build_dataset(CropConfig(), input_folder=photos, output_folder=target)
    assert first.count == 2
    (photos / "b.png").unlink()
    second = build_dataset(CropConfig(captions=False), input_folder=photos, output_folder=target)
    assert second.count == 1
    assert sorted(p.name for p in target.iterdir()) == ["0001.mask.png", "0001.png", "report.json"]  # stale removed

    foreign = tmp_path / "holiday"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="already holds other files"):
        build_dataset(CropConfig(), input_folder=photos, output_folder=foreign)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_near_duplicates_are_skipped_or_kept_and_reported(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(ASTRONAUT).save(d / "a.png")
    Image.fromarray(ASTRONAUT).resize((450, 450), Image.Resampling.BICUBIC).save(d / "a_small.jpg", quality=80)
    skip = build_dataset(CropConfig(), input_folder=d, output_folder=tmp_path / "s")
    assert skip.count == 1
    assert "a_small.jpg: near-duplicate of 0001.png (a.png" in skip.text
    keep = build_dataset(CropConfig(duplicates="keep"), input_folder=d, output_folder=tmp_path / "k")
    assert keep.count == 2 and keep.report["images"][1]["duplicate_of"] == "0001.png"


def test_blurry_photo_is_warned_sharp_one_is_not(tmp_path):
    from PIL import ImageFilter

    sharp = Image.fromarray(ASTRONAUT)
    blurry = sharp.filter(ImageFilter.GaussianBlur(2))
    out = build_dataset(CropConfig(duplicates="keep"), images=[sharp, blurry], output_root=tmp_path)
    a, b = out.report["images"]
    assert a["blur"] > 2 * CropConfig().blur_threshold > b["blur"] * 2
    assert not any("blurry" in w for w in a["warnings"])
    assert any("blurry" in w for w in b["warnings"])


def test_stopping_midway_leaves_nothing_behind(tmp_path):
    photos = _photos(tmp_path)

    def stop(done, total, rep):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(CropConfig(), input_folder=photos, output_root=tmp_path / "out", progress=stop)
    assert list((tmp_path / "out" / "likeness" / "datasets").iterdir()) == []


def test_options_are_validated_before_any_work(tmp_path):
    from trainers.configspec import from_dict

    with pytest.raises(ConfigError, match="multiple of 8"):
        from_dict(CropConfig, {"resolution": 500})
    with pytest.raises(ConfigError, match="no_face"):
        from_dict(CropConfig, {"no_face": "guess"})
    with pytest.raises(DatasetError, match="holds no images"):
        build_dataset(CropConfig(), input_folder=tmp_path, output_root=tmp_path)


def test_detectors_yunet_needs_a_loadable_model(tmp_path):
    assert make_detector("haar").name.startswith("haar")
    with pytest.raises(ConfigError, match="needs a YuNet"):
        make_detector("yunet")
    bad = tmp_path / "face_detection_yunet_2023mar.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "other.onnx").write_bytes(b"x")
    assert find_yunet_model(tmp_path) == bad
    assert find_yunet_model(tmp_path / "missing") is None
    with pytest.raises(ConfigError, match="cannot be loaded"):
        make_detector("yunet", bad)
    # auto: a model that does not load falls back to Haar, and says so in its name.
    assert make_detector("auto", bad).name.startswith("haar")
    assert make_detector("auto", None).name.startswith("haar")


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_crop(tmp_path, capsys):
    photos = _photos(tmp_path)
    code = cli_main(["crop", "--input", str(photos), "--output", str(tmp_path / "ds"), "--resolution", "256"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Face crop: 2 of 4 photos kept" in out and "c.png: no face found" in out and "d.jpg: empty file" in out
    assert Image.open(tmp_path / "ds" / "0001.png").size == (256, 256)
    assert cli_main(["crop", "--input", str(photos), "--output", str(tmp_path / "ds"), "--resolution", "250"]) == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_an_unexpected_error_on_one_photo_skips_it_and_goes_on(tmp_path):
    class Flaky:
        name = "flaky"

        def __init__(self):
            self.inner = HaarDetector()

        def detect(self, rgb):
            if rgb.shape[0] == 300:
                raise RuntimeError("detector broke on this one")
            return self.inner.detect(rgb)

    photos = [ASTRONAUT, np.zeros((300, 300, 3), np.uint8)]
    out = build_dataset(CropConfig(), images=photos, output_root=tmp_path, detector=Flaky())
    ok, broken = out.report["images"]
    assert ok["status"] == "kept" and out.count == 1
    assert broken["status"] == "skipped" and "RuntimeError: detector broke on this one" in broken["reason"]


def test_cli_crop_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["crop", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--input", "--output", "--resolution", "--margin", "--no-face", "--detector", "--duplicates"):
        assert flag in out
