"""Likeness evaluation in the training loop (tiny model, CPU): probes, events, keep-best, keep-last, early stop, bleed,
exact stop/resume, and training without the identity backend.

The tiny model draws no faces, so runs scored by face identity say "no face"; the selection logic is checked with a
scripted judge (a config's ``make_judge``, the seam the learning proof uses) whose likeness curve is known.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_helpers import fresh, tiny_config

from trainers.configspec import from_dict, to_dict
from trainers.train import Callbacks, DreamBoothConfig, train


class Recorder(Callbacks):
    def __init__(self, stop_at: int | None = None):
        self.evaluations, self.status, self.stop_at, self.step = [], [], stop_at, 0

    def on_progress(self, info):
        self.step = info.step

    def on_status(self, text):
        self.status.append(text)

    def on_evaluation(self, info):
        self.evaluations.append(info)

    def stop(self) -> bool:
        return self.stop_at is not None and self.step >= self.stop_at


def face_photos(folder: Path, n: int = 3) -> Path:
    """Real face photos (scikit-image's astronaut, NASA, public domain), slightly different crops."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    a = Image.fromarray(data.astronaut())
    for i in range(n):
        a.crop((100 + 10 * i, 20, 400 + 10 * i, 320)).resize((160, 160)).save(folder / f"photo_{i}.png")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# a judge with a known curve


class ScriptedJudge:
    """Subject probes score ``curve[step]``, class probes ``klass[step]`` (the last ``eval_images`` probes)."""

    name = "scripted"

    def __init__(self, curve: dict[int, float], klass: dict[int, float], per_prompt: int):
        self.curve, self.klass, self.per_prompt = curve, klass, per_prompt

    def prepare(self, trainer):
        self.trainer = trainer
        return None

    def score(self, images):
        step = self.trainer.step
        n_class = self.per_prompt
        subject = [(self.curve.get(step), "") for _ in images[:-n_class]] if len(images) > n_class else []
        return subject + [(self.klass.get(step, 0.3), "") for _ in images[-n_class:]]


def scripted_config(tmp: Path, curve: dict, klass: dict | None = None, **overrides):
    @dataclass
    class Scripted(DreamBoothConfig):
        def make_judge(self):
            return ScriptedJudge(curve, klass or {}, self.eval_images)

    base = tiny_config(tmp, eval_steps=2, **overrides)
    return from_dict(Scripted, to_dict(base))


def weights(path: Path) -> dict:
    return load_file(str(path))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history(outcome) -> list[dict]:
    return json.loads(outcome.metadata["likeness.evaluation"])["history"]


# ---------------------------------------------------------------------------------------------------------------
# face identity on the tiny model: no face anywhere, and nothing breaks


def test_tiny_model_probes_find_no_face_and_the_events_say_so(tiny_components, tmp_path):
    from trainers.identity import backend

    if not backend.available():
        pytest.skip(backend.status()[1])
    face_photos(tmp_path / "inst")
    cfg = tiny_config(tmp_path, steps=4, eval_every=2, eval_steps=2)
    rec = Recorder()
    out = train(cfg, components=fresh(tiny_components), callbacks=rec)
    assert out.state == "finished" and out.path.is_file() and out.steps_done == 4
    states = [(e.state, e.step) for e in rec.evaluations]
    assert states == [("baseline", 0), ("evaluated", 2), ("evaluated", 4)]
    for e in rec.evaluations[1:]:
        assert e.probes == 4 and e.no_face == 4 and e.likeness is None and e.bleed is None
        assert e.message == "no face in any probe image"
        assert [s["reason"] for s in e.scores] == ["no face"] * 4
        assert len(e.images) == 4 and e.images[0].size == (32, 32)
        assert {s["kind"] for s in e.scores} == {"subject", "class"}
    assert [s["prompt"] for s in rec.evaluations[1].scores] == [
        "a photo of sks shape",
        "a photo of sks shape, in a park",
        "a photo of sks shape, at night, neon light",
        "a photo of shape",
    ]
    meta = json.loads(out.metadata["likeness.evaluation"])
    assert meta["judge"] == "face identity (dlib)" and meta["kept_step"] == 4 and meta["best"] is None
    assert [h["step"] for h in meta["history"]] == [2, 4] and all(h["no_face"] == 4 for h in meta["history"])
    assert out.metadata["likeness.kept_step"] == "4"


def test_subject_photos_without_a_face_turn_evaluation_off(tiny_components, tmp_path):
    from trainers.identity import backend

    if not backend.available():
        pytest.skip(backend.status()[1])
    rec = Recorder()
    out = train(tiny_config(tmp_path, steps=2, eval_every=1), components=fresh(tiny_components), callbacks=rec)
    assert out.state == "finished"
    assert [e.state for e in rec.evaluations] == ["off"]
    assert "no usable face in the subject photos" in rec.evaluations[0].message
    assert "no usable face" in json.loads(out.metadata["likeness.evaluation"])["off"]


# ---------------------------------------------------------------------------------------------------------------
# keep the best, keep the last, early stop, bleed


CURVE = {2: 0.40, 4: 0.80, 6: 0.60, 8: 0.55}


def test_keep_best_saves_the_best_step_and_keep_last_the_last(tiny_components, tmp_path):
    # the weights of step 4, from a plain run of 4 steps (training is deterministic on CPU)
    plain = train(tiny_config(tmp_path / "a", steps=4, eval_every=0), components=fresh(tiny_components))
    step4 = weights(plain.path)
    rec = Recorder()
    cfg = scripted_config(tmp_path / "b", CURVE, steps=6, eval_every=2, keep_last=True)
    out = train(cfg, components=fresh(tiny_components), callbacks=rec)
    assert out.state == "finished" and out.steps_done == 6
    assert same_weights(weights(out.path), step4), "the result is not the best step's weights"
    last = out.path.with_name(f"{out.path.stem}_last.safetensors")
    assert last.is_file() and not same_weights(weights(last), step4)
    assert load_file(str(last)).keys() == step4.keys()
    meta = json.loads(out.metadata["likeness.evaluation"])
    assert meta["kept_step"] == 4 and meta["best"]["step"] == 4 and meta["best"]["likeness"] == 0.8
    assert [h["likeness"] for h in meta["history"]] == [0.4, 0.8, 0.6]
    assert any("keeping step 4" in s for s in rec.status)
    assert [e.best_step for e in rec.evaluations if e.state == "evaluated"] == [2, 4, 4]


def test_keep_best_with_lora_saves_the_best_steps_adapters(tiny_components, tmp_path):
    from trainers.lora.config import LoRAConfig

    lora = dict(lora_rank=4, lora_alpha=4.0, learning_rate=1e-2, text_encoder_lr=1e-2, save_dtype="fp32")

    @dataclass
    class ScriptedLoRA(LoRAConfig):
        def make_judge(self):
            return ScriptedJudge({2: 0.9, 4: 0.5}, {}, self.eval_images)

    def config(folder: Path, **kw):
        return from_dict(ScriptedLoRA, {**to_dict(tiny_config(folder)), **lora, "eval_steps": 2, **kw})

    plain = train(config(tmp_path / "a", steps=2, eval_every=0), components=fresh(tiny_components))
    out = train(config(tmp_path / "b", steps=4, eval_every=2), components=fresh(tiny_components))
    assert out.metadata["likeness.kept_step"] == "2"
    assert same_weights(weights(out.path), weights(plain.path))
    from trainers.lora.kohya import read_kohya

    assert json.loads(read_kohya(out.path).metadata["likeness.evaluation"])["kept_step"] == 2  # in the LoRA file too


def test_keep_best_off_keeps_the_last_step(tiny_components, tmp_path):
    plain = train(tiny_config(tmp_path / "a", steps=4, eval_every=0), components=fresh(tiny_components))
    cfg = scripted_config(tmp_path / "b", {2: 0.8, 4: 0.5}, steps=4, eval_every=2, keep_best=False)
    out = train(cfg, components=fresh(tiny_components))
    assert same_weights(weights(out.path), weights(plain.path))
    assert json.loads(out.metadata["likeness.evaluation"])["best"]["step"] == 2  # measured, not used
    assert out.metadata["likeness.kept_step"] == "4"


def test_early_stop_ends_the_run_when_likeness_stops_improving(tiny_components, tmp_path):
    rec = Recorder()
    cfg = scripted_config(tmp_path, CURVE, steps=20, eval_every=2, early_stop_patience=2)
    out = train(cfg, components=fresh(tiny_components), callbacks=rec)
    # best at 4; 6 and 8 bring nothing new: the run ends at step 8 of 20, finished and saved
    assert out.state == "finished" and out.steps_done == 8 and out.path.is_file()
    assert any("training ends at step 8: likeness has not improved for 2 evaluations" in s for s in rec.status)
    assert out.metadata["likeness.kept_step"] == "4"


def test_a_checkpoint_whose_class_probes_bleed_is_not_kept(tiny_components, tmp_path):
    # the base's class probes score 0.30; at step 4 they score 0.60 (bleed 0.30 > 0.15): step 2 stays the best
    klass = {0: 0.30, 2: 0.35, 4: 0.60}
    cfg = scripted_config(tmp_path, CURVE, klass, steps=4, eval_every=2)
    out = train(cfg, components=fresh(tiny_components))
    meta = json.loads(out.metadata["likeness.evaluation"])
    assert meta["base_class_similarity"] == 0.3
    assert [(h["bleed"], h["eligible"]) for h in meta["history"]] == [(0.05, True), (0.3, False)]
    assert meta["kept_step"] == 2


# ---------------------------------------------------------------------------------------------------------------
# stop and resume


def test_stop_and_resume_keep_the_evaluation_history_exact(tiny_components, tmp_path):
    whole = train(scripted_config(tmp_path / "a", CURVE, steps=6, eval_every=2), components=fresh(tiny_components))
    cfg = scripted_config(tmp_path / "b", CURVE, steps=6, eval_every=2)
    rec = Recorder(stop_at=5)  # after the best (step 4): its weights must come back from the state
    first = train(cfg, components=fresh(tiny_components), callbacks=rec, stop=rec.stop)
    assert first.state == "stopped" and first.steps_done == 5 and first.state_path is not None
    resumed = train(
        from_dict(type(cfg), {**to_dict(cfg), "resume_from": str(first.state_path)}), components=fresh(tiny_components)
    )
    assert resumed.state == "finished"
    assert history(resumed) == history(whole)
    assert same_weights(weights(resumed.path), weights(whole.path))  # the kept (best) weights came through the state


def test_an_evaluation_cut_short_by_stop_runs_again_on_resume(tiny_components, tmp_path):
    whole = train(scripted_config(tmp_path / "a", CURVE, steps=6, eval_every=2), components=fresh(tiny_components))
    cfg = scripted_config(tmp_path / "b", CURVE, steps=6, eval_every=2)
    seen = {"renders": 0}

    class StopInsideTheProbes(Recorder):
        def on_progress(self, info):
            super().on_progress(info)
            if info.phase == "evaluating" and info.step == 4:
                seen["renders"] += 1

        def stop(self):
            return seen["renders"] == 1 and self.step == 4  # pressed while step 4's probes render

    rec = StopInsideTheProbes()
    first = train(cfg, components=fresh(tiny_components), callbacks=rec, stop=rec.stop)
    assert first.state == "stopped" and first.steps_done == 4
    assert [e.step for e in rec.evaluations if e.state == "evaluated"] == [2]  # step 4's was cut short
    seen["renders"] = 2
    resumed = train(
        from_dict(type(cfg), {**to_dict(cfg), "resume_from": str(first.state_path)}), components=fresh(tiny_components)
    )
    assert history(resumed) == history(whole) and [h["step"] for h in history(resumed)] == [2, 4, 6]
    assert same_weights(weights(resumed.path), weights(whole.path))


# ---------------------------------------------------------------------------------------------------------------
# without the backend


def test_training_works_without_the_identity_backend(tiny_components, tmp_path, monkeypatch):
    from trainers.identity import backend

    monkeypatch.setitem(sys.modules, "dlib", None)  # "import dlib" now fails, as on a platform without a wheel
    backend.reset()
    try:
        ok, message = backend.status()
        assert not ok and "dlib is not installed" in message
        assert "pip install dlib-bin face_recognition_models" in message
        face_photos(tmp_path / "inst")
        rec = Recorder()
        out = train(tiny_config(tmp_path, steps=3, eval_every=1), components=fresh(tiny_components), callbacks=rec)
        assert out.state == "finished" and out.path.is_file() and out.steps_done == 3
        assert [e.state for e in rec.evaluations] == ["off"]
        assert "pip install dlib-bin face_recognition_models" in rec.evaluations[0].message
        assert any(
            s.startswith("likeness evaluation is off: face identity is off: dlib is not installed") for s in rec.status
        )
    finally:
        monkeypatch.undo()
        backend.reset()


def test_the_cli_prints_each_evaluation(capsys):
    from trainers.train.cli import TextProgress
    from trainers.train.events import EvaluationInfo

    bar = TextProgress(enabled=False)
    bar.on_evaluation(EvaluationInfo(0, 10, "baseline", class_similarity=0.3, probes=1))
    bar.on_evaluation(EvaluationInfo(4, 10, "evaluated", likeness=0.72, bleed=0.03, no_face=1, probes=4, best_step=4,
                                     best_likeness=0.72, message="1 of 4 probe images without a usable face"))  # fmt: skip
    bar.on_evaluation(EvaluationInfo(8, 10, "evaluated", no_face=4, probes=4, message="no face in any probe image"))
    bar.on_evaluation(EvaluationInfo(0, 10, "off", message="likeness evaluation is off: dlib is not installed"))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "step 0: base model's class probes: similarity 0.300, no face 0/1",
        "step 4: likeness 0.720, bleed +0.030, no face 1/4, best 0.720 at step 4 (1 of 4 probe images without a usable face)",
        "step 8: likeness -, no face 4/4 (no face in any probe image)",
        "step 0: likeness evaluation is off: dlib is not installed",
    ]
