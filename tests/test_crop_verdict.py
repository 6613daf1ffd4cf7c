"""The dataset check says what to do in plain words: how many usable images, how many more photos (singular or
plural), and which photos it dropped and why, without opening report.json."""

from __future__ import annotations

import shutil


class _Quiet:
    def step(self, *args, **kwargs) -> None:
        pass


def test_the_verdict_names_the_dropped_photos_and_counts_right(tmp_path):
    from trainers.data.crop import CropConfig, build_dataset, format_report
    from trainers.demo import make_sample_photos

    photos = make_sample_photos(tmp_path / "photos", _Quiet(), n=14)
    shutil.copyfile(photos / "photo_03.jpg", photos / "photo_99.jpg")  # the same photo twice
    (photos / "notes.png").write_bytes((photos / "photo_00.jpg").read_bytes()[:200])  # a broken file
    outcome = build_dataset(CropConfig(resolution=64), input_folder=photos, output_root=tmp_path / "out")
    verdict = outcome.report["summary"]["verdict"]
    assert verdict.startswith("14 usable images; DreamBooth wants 15+: add 1 more photo of the face (")
    assert "; dropped: " in verdict
    assert "photo_99.jpg (near-duplicate of photo_03.jpg)" in verdict
    assert "notes.png (" in verdict
    text = format_report(outcome.report)  # the text report lists the dropped photos once, above its verdict
    assert sum("photo_99.jpg" in line for line in text.splitlines()) == 1
    assert text.splitlines()[-1] == f"Verdict: {verdict.split('; dropped: ')[0]}"


def test_plural_when_more_than_one_photo_is_missing(tmp_path):
    from trainers.data.crop import CropConfig, build_dataset
    from trainers.demo import make_sample_photos

    photos = make_sample_photos(tmp_path / "photos", _Quiet(), n=3)
    outcome = build_dataset(CropConfig(resolution=64), input_folder=photos, output_root=tmp_path / "out")
    verdict = outcome.report["summary"]["verdict"]
    assert verdict.startswith("3 usable images; DreamBooth wants 15+: add 12 more photos of the face")
    assert "dropped" not in verdict
