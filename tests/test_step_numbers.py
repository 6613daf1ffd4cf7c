"""A step's numbers (losses, gradient norm) are the training loop's only wait for the device.

On a GPU the loop reads them during the next step (``Trainer.settle``), so the GPU never waits for Python between
steps. The CPU reads them at once; here the GPU's order is switched on for CPU runs (``defer_numbers``) to show that
it trains, reports and saves exactly what the CPU's order does, reads each step while the next one runs, and still
never saves or shows a diverged model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import class_images, fresh, subject_images, tiny_config

from trainers.errors import TrainingDiverged
from trainers.train import Callbacks, loop, train
from trainers.train.loop import StepNumbers, Trainer


class Recorder(Callbacks):
    def __init__(self):
        self.progress = []

    def on_progress(self, info):
        if info.phase == "training":
            self.progress.append(
                (info.step, info.loss, info.loss_instance, info.loss_prior, info.loss_smoothed, info.lr)
            )


def _defer(monkeypatch) -> None:
    """From now on runs read each step's numbers the way they are read on a GPU."""
    setup = Trainer.setup

    def deferred_setup(self):
        setup(self)
        assert self.defer_numbers is (self.device.type == "cuda")  # the CPU reads at once by default
        self.defer_numbers = True

    monkeypatch.setattr(Trainer, "setup", deferred_setup)


@pytest.fixture
def deferred(monkeypatch):
    _defer(monkeypatch)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _run(tiny_components, folder: Path, **overrides):
    subject_images(folder / "inst")
    class_images(folder / "cls")
    cfg = tiny_config(
        folder, steps=6, class_data=str(folder / "cls"), prior_preservation=True, checkpoint_every=4, ema=True,
        keep_checkpoints=3, lr_scheduler="cosine", lr_warmup_steps=2, **overrides,
    )  # fmt: skip
    rec = Recorder()
    return train(cfg, components=fresh(tiny_components), callbacks=rec), rec


def _order(monkeypatch, tiny_components, folder: Path) -> list[tuple[str, int]]:
    """The training forwards and the reads of step numbers of a 4-step run, in the order they happened."""
    events: list[tuple[str, int]] = []
    read = StepNumbers.read

    def reading(self):
        events.append(("read", self.step))
        return read(self)

    monkeypatch.setattr(StepNumbers, "read", reading)
    c = fresh(tiny_components)
    c.unet.register_forward_pre_hook(
        lambda m, args: events.append(("forward", sum(e[0] == "forward" for e in events) + 1)) if m.training else None
    )
    train(tiny_config(folder, steps=4), components=c)
    return events


def test_reading_a_step_during_the_next_trains_reports_and_saves_exactly_the_same(
    tiny_components, tmp_path, monkeypatch
):
    at_once, rec_at_once = _run(tiny_components, tmp_path / "a")
    _defer(monkeypatch)
    later, rec_later = _run(tiny_components, tmp_path / "b")
    assert at_once.state == later.state == "finished" and at_once.steps_done == later.steps_done == 6
    assert [p[0] for p in rec_later.progress] == [1, 2, 3, 4, 5, 6]  # every step reported once, in order
    assert rec_later.progress == rec_at_once.progress  # the same losses, prior losses, smoothed curve, lr
    assert later.losses == at_once.losses and later.losses_prior == at_once.losses_prior
    assert all(x is not None for p in rec_later.progress for x in p)
    a, b = _weights(at_once.path), _weights(later.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the EMA weights, bit for bit
    # the resumable state of step 4 was written with step 4 read (its losses in it), not one step behind
    info_a, info_b = (
        json.loads((f / "out.state/step-000004/state.json").read_text()) for f in (tmp_path / "a", tmp_path / "b")
    )
    assert len(info_b["losses"]) == 4 and info_b["losses"] == info_a["losses"]


def test_on_a_gpu_a_step_is_read_while_the_next_one_runs_and_on_the_cpu_before_it(
    tiny_components, tmp_path, monkeypatch
):
    cpu = _order(monkeypatch, tiny_components, tmp_path / "cpu")
    assert cpu == [(kind, n) for n in (1, 2, 3, 4) for kind in ("forward", "read")]
    _defer(monkeypatch)
    gpu = _order(monkeypatch, tiny_components, tmp_path / "gpu")
    # step n is read after step n + 1 was launched; the last step is read before the result is saved
    assert gpu == [("forward", 1), ("forward", 2), ("read", 1), ("forward", 3), ("read", 2), ("forward", 4),
                   ("read", 3), ("read", 4)]  # fmt: skip


@pytest.mark.parametrize("bad_step", [3, 4])
def test_a_step_read_late_that_diverged_still_saves_nothing(tiny_components, tmp_path, monkeypatch, deferred, bad_step):
    """Step 3 diverges and is read during step 4; step 4 diverges and is read before its resumable state: either
    way no state of the diverged steps, no result, and the message names the step that diverged."""
    calls = []
    loss = loop.diffusion_loss

    def poisoned(*args, **kwargs):
        parts = loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == bad_step:
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(loop, "diffusion_loss", poisoned)
    with pytest.raises(TrainingDiverged) as e:
        _run(tiny_components, tmp_path)
    assert f"became NaN at step {bad_step}:" in str(e.value) and "nothing was saved" in str(e.value)
    assert not (tmp_path / "out.safetensors").exists()
    assert not (tmp_path / "out.state").exists() or not list((tmp_path / "out.state").glob("step-*"))


def test_a_stop_with_a_step_pending_saves_it_and_the_resumed_run_ends_bit_for_bit_as_a_straight_one(
    tiny_components, tmp_path, deferred
):
    """The stop comes while the last step's numbers are still pending: they are read before the resumable state is
    written, so the state holds every step done and the resumed run continues exactly."""
    subject_images(tmp_path / "inst")
    common = dict(steps=8, instance_data=str(tmp_path / "inst"), lr_scheduler="cosine", lr_warmup_steps=2)
    straight = fresh(tiny_components)
    full = train(tiny_config(tmp_path / "a", **common), components=straight)

    rec = Recorder()
    stop = lambda: any(p[0] >= 3 for p in rec.progress)  # noqa: E731 - step 3 is reported while step 4 runs
    stopped = train(tiny_config(tmp_path / "b", **common), components=fresh(tiny_components), callbacks=rec, stop=stop)
    assert stopped.state == "stopped" and stopped.steps_done == 4 and [p[0] for p in rec.progress] == [1, 2, 3, 4]
    assert stopped.state_path.name == "step-000004" and stopped.losses == full.losses[:4]
    assert json.loads((stopped.state_path / "state.json").read_text())["losses"] == full.losses[:4]
    resumed_parts = fresh(tiny_components)
    resumed = train(tiny_config(tmp_path / "b", **common, resume_from="latest"), components=resumed_parts)
    assert resumed.steps_done == 8 and resumed.losses == full.losses
    for a, b in ((straight.unet, resumed_parts.unet), (straight.text_encoder, resumed_parts.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
