"""Face identity on real photos the tests can have offline: the same person scores above dlib's threshold under
crops, flips, rescales and colour changes; other people score below it; no face / several faces / a tiny face give
their reasons; the reference is cached by content; the dataset report flags a photo of someone else.

Photos: scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain) and ``lfw_subset`` (25x25 crops of Labeled
Faces in the Wild), ``chelsea`` (a cat), and ``tests/data/faces/hopper.jpg`` (Grace Hopper, U.S. Navy, public domain).
"""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

pytest.importorskip("skimage")
from skimage import data  # noqa: E402

from trainers.identity import SAME_PERSON, backend, build_reference, score, similarity  # noqa: E402

FACES = Path(__file__).parent / "data" / "faces"

requires_backend = pytest.mark.skipif(not backend.available(), reason=backend.status()[1])


def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def hopper() -> Image.Image:
    return Image.open(FACES / "hopper.jpg").convert("RGB")


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def warm(im: Image.Image) -> Image.Image:
    r, g, b = im.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.2))), g, b.point(lambda v: int(v * 0.75))))


def variants(im: Image.Image) -> dict[str, Image.Image]:
    """The same photo cropped, mirrored, rescaled, recoloured, rotated, recompressed."""
    w, h = im.size
    return {
        "crop": im.crop((w // 5, 0, w * 4 // 5, h * 3 // 5)),
        "flip": ImageOps.mirror(im),
        "half size": im.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "1.7x": im.resize((int(w * 1.7), int(h * 1.7)), Image.Resampling.BICUBIC),
        "grey": ImageOps.grayscale(im).convert("RGB"),
        "warm": warm(im),
        "dark": ImageEnhance.Brightness(im).enhance(0.55),
        "desaturated": ImageEnhance.Color(im).enhance(0.3),
        "rotated 10": im.rotate(10, resample=Image.Resampling.BICUBIC),
        "jpeg 35": jpeg(im, 35),
    }


def lfw_faces(n: int) -> list[Image.Image]:
    """The first ``n`` faces of scikit-image's LFW subset, upscaled from 25 px (the rest of the set are non-faces)."""
    faces = data.lfw_subset()[:n]
    return [
        Image.fromarray((f * 255).round().astype(np.uint8)).resize((150, 150), Image.Resampling.BICUBIC).convert("RGB")
        for f in faces
    ]


@pytest.fixture(scope="module")
def astronaut_ref():
    return build_reference([("astronaut.png", astronaut())])


# ---------------------------------------------------------------------------------------------------------------
# the mapping


def test_similarity_mapping_puts_dlibs_threshold_at_one_half():
    assert similarity(0.6) == pytest.approx(SAME_PERSON) == pytest.approx(0.5)
    assert similarity(0.0) == 1.0 and similarity(1.2) == 0.0 and similarity(2.0) == 0.0
    values = [similarity(d) for d in np.linspace(0, 1.2, 13)]
    assert values == sorted(values, reverse=True)  # closer = more alike, linear in between
    assert similarity(0.33) - similarity(0.43) == pytest.approx(0.1 / 1.2)


# ---------------------------------------------------------------------------------------------------------------
# real photos


@requires_backend
def test_the_same_person_scores_above_the_threshold_under_crops_flips_rescales_and_colour(astronaut_ref):
    assert astronaut_ref.ready and len(astronaut_ref.used) == 1
    shown = variants(astronaut())
    results = score(list(shown.values()), astronaut_ref, names=list(shown))
    low = {r.name: (r.similarity, r.reason) for r in results if not r.scored or r.similarity < SAME_PERSON}
    assert not low, f"the same person scored under {SAME_PERSON}: {low}"
    for r in results:
        assert r.faces >= 1 and r.distance == pytest.approx((1 - r.similarity) * 1.2, abs=1e-3)
        assert r.distance < 0.6  # dlib's own rule agrees


@requires_backend
def test_other_people_score_below_the_threshold(astronaut_ref):
    [grace] = score([hopper()], astronaut_ref)
    assert grace.scored and grace.similarity < SAME_PERSON, grace
    # and the other way round: a reference of Grace Hopper does not take the astronaut for her
    [eileen] = score([astronaut()], build_reference([("hopper.jpg", hopper())]))
    assert eileen.scored and eileen.similarity < SAME_PERSON, eileen
    # many other people (tiny 25-px LFW crops, so noisier): nearly all below, the typical one far below
    others = [r.similarity for r in score(lfw_faces(24), astronaut_ref) if r.scored]
    assert len(others) >= 18
    assert sum(s < SAME_PERSON for s in others) >= 0.9 * len(others), others
    assert statistics.median(others) < SAME_PERSON - 0.1, others


@requires_backend
def test_no_face_several_faces_and_a_tiny_face_give_their_reasons(astronaut_ref):
    cat = Image.fromarray(data.chelsea())
    two = Image.new("RGB", (800, 512), (128, 128, 128))  # two faces of about the same size side by side
    two.paste(astronaut(), (0, 0))
    two.paste(hopper().resize((170, 170)), (580, 80))
    tiny = astronaut().resize((128, 128), Image.Resampling.LANCZOS)
    no_face, several, small = score([cat, two, tiny], astronaut_ref, names=["cat", "two", "tiny"])
    assert (no_face.faces, no_face.similarity, no_face.distance, no_face.reason) == (0, None, None, "no face")
    assert several.faces >= 2 and several.similarity is None and several.reason.startswith("several faces"), several
    # both faces are still measured: the astronaut's face is the subject, the other one is not
    sims = sorted(f["similarity"] for f in several.per_face if f["similarity"] is not None)
    assert sims[-1] > 0.9 and sims[0] < SAME_PERSON
    assert small.faces >= 1 and small.similarity is None and small.reason.startswith("face too small"), small


@requires_backend
def test_reference_centroid_leave_one_out_and_the_content_cache(monkeypatch, tmp_path):
    from trainers.identity import reference as ref_mod

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, im in list(variants(astronaut()).items())[:4]:
        im.save(folder / f"{name.replace(' ', '_')}.png")
    hopper().save(folder / "zz_other.png")
    (folder / "cat.png").write_bytes(b"")  # unreadable: listed, not fatal
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")

    ref = build_reference([folder])
    reasons = {p.name: p.reason for p in ref.photos}
    assert reasons["chelsea.png"] == "no face found" and reasons["cat.png"].startswith("unreadable")
    assert len(ref.used) == 5 and ref.centroid.shape == (128,)
    assert np.allclose(ref.centroid, ref.vectors().mean(axis=0))
    loo = {p.name: p.loo for p in ref.used}
    assert loo["zz_other.png"] < SAME_PERSON < min(v for k, v in loo.items() if k != "zz_other.png")

    # built again: every face comes from the content cache (the detector is not run)
    def fail(_):
        raise AssertionError("analysed again although the photo did not change")

    monkeypatch.setattr(ref_mod, "analyse", fail)
    again = build_reference([folder])
    assert [p.loo for p in again.used] == [p.loo for p in ref.used]
    # a changed photo (new bytes) is analysed again, the others still come from the cache
    seen = []
    monkeypatch.setattr(ref_mod, "analyse", lambda im: seen.append(im.size) or [])
    astronaut().resize((300, 300)).save(folder / "zz_other.png")
    changed = build_reference([folder])
    assert seen == [(300, 300)] and {p.name for p in changed.photos if not p.used} >= {"zz_other.png"}


# ---------------------------------------------------------------------------------------------------------------
# the dataset report


@requires_backend
def test_the_dataset_report_flags_a_photo_of_another_person(tmp_path):
    from trainers.data.crop import CropConfig, build_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (name, im) in enumerate(variants(astronaut()).items()):
        if name not in ("half size", "crop"):  # the crop needs room around the face
            im.save(photos / f"IMG_{i:04d}.jpg", quality=92)
    hopper().resize((512, 512), Image.Resampling.LANCZOS).save(photos / "IMG_0042.jpg", quality=92)
    out = build_dataset(CropConfig(duplicates="keep"), input_folder=photos, output_root=tmp_path / "out")
    section = out.report["identity"]
    assert section["available"] and len(section["photos"]) == out.count == 9
    assert [f["name"] for f in section["flagged"]] == ["IMG_0042.jpg"]
    assert section["flagged"][0]["why"] == "probably another person"
    entry = next(r for r in out.report["images"] if r["source"] == "IMG_0042.jpg")
    assert entry["identity"]["flag"] == "probably another person" and entry["identity"]["similarity"] < SAME_PERSON
    others = [r["identity"]["similarity"] for r in out.report["images"] if r["source"] != "IMG_0042.jpg"]
    assert min(others) > SAME_PERSON
    line = next(ln for ln in out.text.splitlines() if "IMG_0042.jpg: similarity" in ln)
    assert "is this the same person?" in line and f"{min(others):.2f}" in line
    assert "Head pose: turn" in out.text
    # the same photos again: the dataset is reused and the report still says it
    again = build_dataset(CropConfig(duplicates="keep"), input_folder=photos, output_root=tmp_path / "out")
    assert again.reused and "IMG_0042.jpg: similarity" in again.text


# ---------------------------------------------------------------------------------------------------------------
# the CLI


@requires_backend
def test_score_cli_prints_a_table_and_json_in_the_order_given(tmp_path, capsys):
    from trainers.cli import main

    ref = tmp_path / "ref"
    ref.mkdir()
    for i, (_, im) in enumerate(list(variants(astronaut()).items())[:3]):
        im.save(ref / f"{i}.png")
    pics = tmp_path / "pics"
    pics.mkdir()
    hopper().save(pics / "b_hopper.jpg")
    Image.fromarray(data.chelsea()).save(pics / "a_cat.png")
    astronaut().save(tmp_path / "astronaut.jpg")

    assert main(["score", "--reference", str(ref), str(tmp_path / "astronaut.jpg"), str(pics), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = [(Path(r["name"]).name, r["reason"]) for r in out["images"]]
    assert rows == [("astronaut.jpg", ""), ("a_cat.png", "no face"), ("b_hopper.jpg", "")]
    sims = [r["similarity"] for r in out["images"]]
    assert sims[0] > SAME_PERSON > sims[2] and sims[1] is None
    assert out["same_person"] == SAME_PERSON and out["reference"]["used"] == 3

    assert main(["score", "--reference", str(ref), str(pics), "--preview", str(tmp_path / "prev")]) == 0
    table = capsys.readouterr().out
    assert "no face" in table and "probably someone else" in table and "1 of 2 scored" in table
    assert sorted(p.name for p in (tmp_path / "prev").iterdir()) == ["0001_a_cat.png", "0002_b_hopper.png"]

    assert main(["score", "--reference", str(pics / "a_cat.png"), str(pics)]) == 2  # not a folder: one clear line
    assert "is not a folder" in capsys.readouterr().err


def test_requirements_install_the_backend_only_where_prebuilt_wheels_exist():
    """pip evaluates the markers: on a platform without a dlib-bin wheel the two lines are skipped (the install
    never fails there), and where the wheels exist they are installed."""
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    lines = [ln.split("#")[0].strip() for ln in (root / "requirements.txt").read_text().splitlines()]
    reqs = {r.name: r for r in (Requirement(ln) for ln in lines if ln)}
    assert {"dlib-bin", "face_recognition_models"} <= set(reqs)

    def env(system, machine, python, release="6.1.0"):
        return {
            "sys_platform": system,
            "platform_machine": machine,
            "python_version": python,
            "platform_release": release,
        }

    wheels = [env("linux", "x86_64", "3.10"), env("linux", "aarch64", "3.13"), env("win32", "AMD64", "3.12"),
              env("darwin", "arm64", "3.12", "23.4.0"), env("darwin", "arm64", "3.13", "25.0.0")]  # fmt: skip
    none = [
        env("linux", "ppc64le", "3.12"),
        env("win32", "ARM64", "3.12"),
        env("win32", "x86", "3.11"),
        env("linux", "x86_64", "3.14"),
        env("darwin", "x86_64", "3.12", "23.4.0"),  # dlib-bin 20: no Intel wheels
        env("darwin", "arm64", "3.12", "22.6.0"),
    ]  # macOS 13 (Darwin 22): the arm64 wheels need macOS 14
    for name in ("dlib-bin", "face_recognition_models"):
        marker = reqs[name].marker
        assert marker is not None, f"{name} must carry an environment marker"
        assert all(marker.evaluate(e) for e in wheels), name
        assert not any(marker.evaluate(e) for e in none), name
