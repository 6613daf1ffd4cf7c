"""Validation loss (issue 15): held-out photos, fixed timesteps and noise: the same seed gives the same curve, the
curve survives a stop and resume, and validating changes nothing about training."""

from __future__ import annotations

import json

import torch
from train_helpers import fresh, subject_images, tiny_config

from trainers.train import Callbacks, train
from trainers.train.plan import plan


class Curve(Callbacks):
    def __init__(self):
        self.points, self.step = [], 0

    def on_progress(self, info):
        if info.phase == "validation":
            self.points.append([info.step, info.loss_validation])
        elif info.phase == "training":
            self.step = info.step


def test_the_same_seed_gives_the_same_validation_curve_and_validating_changes_no_weight(tiny_components, tmp_path):
    subject_images(tmp_path / "inst")
    subject_images(tmp_path / "val", n=2)
    common = dict(steps=6, instance_data=str(tmp_path / "inst"), validation_every=2)

    def run(name, **extra):
        c, rec = fresh(tiny_components), Curve()
        out = train(tiny_config(tmp_path / name, **common, **extra), components=c, callbacks=rec)
        return out, rec, c

    a, rec_a, c_a = run("a", validation_folder=str(tmp_path / "val"))
    b, rec_b, _ = run("b", validation_folder=str(tmp_path / "val"))
    assert [p[0] for p in rec_a.points] == [0, 2, 4, 6]
    assert rec_a.points == rec_b.points  # identical, not just close
    assert json.loads(a.metadata["likeness.validation_loss"]) == rec_a.points
    assert len({p[1] for p in rec_a.points}) == 4  # the model changes, so the points do

    plain, _, c_plain = run("c")
    assert plain.losses == a.losses
    sa, sp = c_a.unet.state_dict(), c_plain.unet.state_dict()
    assert all(torch.equal(sa[k], sp[k]) for k in sa)


def test_held_out_photos_are_never_trained_on_and_the_curve_survives_a_resume(tiny_components, tmp_path):
    subject_images(tmp_path / "inst", n=5)
    common = dict(steps=6, instance_data=str(tmp_path / "inst"), validation_images=2, validation_every=2)
    the_plan = plan(tiny_config(tmp_path / "p", **common))
    held = {e.path.name for e in the_plan.validation.examples}
    trained = {e.path.name for e in the_plan.instance.examples}
    assert len(held) == 2 and len(trained) == 3 and not held & trained

    full_rec = Curve()
    train(tiny_config(tmp_path / "a", **common), components=fresh(tiny_components), callbacks=full_rec)
    rec = Curve()
    stopped = train(
        tiny_config(tmp_path / "b", **common), components=fresh(tiny_components), callbacks=rec,
        stop=lambda: rec.step >= 3,
    )  # fmt: skip
    assert stopped.state == "stopped" and rec.points == full_rec.points[:2]
    resumed = train(tiny_config(tmp_path / "b", **common, resume_from="latest"), components=fresh(tiny_components))
    assert json.loads(resumed.metadata["likeness.validation_loss"]) == full_rec.points


def test_the_cli_prints_validation_points_and_takes_the_options(capsys):
    import pytest

    from trainers.cli import main as cli_main
    from trainers.train.cli import TextProgress
    from trainers.train.events import ProgressInfo

    bar = TextProgress(enabled=False)
    bar.on_progress(ProgressInfo(step=200, total=1000, phase="validation", loss_validation=0.123456))
    assert "step 200: validation loss 0.12346" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["lora", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--validation-images",
        "--validation-folder",
        "--validation-every",
        "--ema",
        "--prior",
        "--masked-loss",
    ):
        assert flag in out, flag
