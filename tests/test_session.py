"""The session owns a run: its content key, reuse of an earlier result (without decoding a single image), the free
output name, the per-run state folder, and a sidecar that is never trusted with a path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import fresh, tiny_config

from trainers.train.session import Session, find_existing


def _session(cfg, tmp_path, **kw) -> Session:
    return Session(cfg, model_key="tiny-model", state_root=tmp_path / "states", **kw)


@pytest.fixture
def trained(tiny_components, tmp_path):
    cfg = tiny_config(tmp_path, steps=2)
    result = _session(cfg, tmp_path).train(fresh(tiny_components))
    return cfg, result


def test_the_same_inputs_are_found_again_without_decoding_an_image(trained, tmp_path, monkeypatch):
    cfg, first = trained
    assert first.state == "finished" and first.path.name == "out.safetensors"
    side = json.loads(first.path.with_name("out.likeness.json").read_text())
    assert side["key"] == first.key and side["file"] == "out.safetensors"

    def no_decoding(*a, **k):
        raise AssertionError("a cache hit must not decode images")

    monkeypatch.setattr("trainers.train.dataset.load_rgb", no_decoding)
    again = _session(cfg, tmp_path).existing()
    assert again.state == "reused" and again.path == first.path and again.losses == first.losses


def test_another_option_or_image_is_another_key(trained, tmp_path):
    cfg, first = trained
    assert _session(tiny_config(tmp_path, steps=3), tmp_path).key != first.key
    assert _session(tiny_config(tmp_path, steps=2, learning_rate=2e-3), tmp_path).key != first.key
    assert _session(tiny_config(tmp_path, steps=2, sample_steps=9), tmp_path).key == first.key  # samples only
    assert Session(cfg, model_key="other-model", state_root=tmp_path / "s").key != first.key
    (Path(cfg.instance_data) / "subject_0.png").write_bytes(
        (Path(cfg.instance_data) / "subject_1.png").read_bytes()
    )  # another picture under the same name
    assert _session(cfg, tmp_path).key != first.key


def test_a_new_result_never_replaces_an_old_one(trained, tiny_components, tmp_path):
    _, first = trained
    other = _session(tiny_config(tmp_path, steps=3), tmp_path).train(fresh(tiny_components))
    assert other.path.name == "out_2.safetensors" and first.path.is_file()
    forced = _session(tiny_config(tmp_path, steps=2), tmp_path, force=True).train(fresh(tiny_components))
    assert forced.path.name == "out_3.safetensors"


def test_plan_runs_once_per_run(tiny_components, tmp_path, monkeypatch):
    from trainers.train import dataset, plan

    calls = []
    real = dataset.load_image_set
    monkeypatch.setattr(plan, "load_image_set", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    session = _session(tiny_config(tmp_path, steps=1), tmp_path)
    session.plan()
    session.train(fresh(tiny_components))
    assert len(calls) == 1  # the instance folder, read once


def test_a_sidecar_naming_a_file_elsewhere_is_not_trusted(trained, tmp_path):
    cfg, first = trained
    side = first.path.with_name("out.likeness.json")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(first.path.read_bytes())
    for name in (str(outside), "../elsewhere.safetensors", "sub/out.safetensors", ""):
        data = json.loads(side.read_text())
        data["file"] = name
        side.write_text(json.dumps(data))
        assert find_existing(first.path.parent, first.key) is None, name


def test_each_run_has_its_own_state_folder_and_resumes_from_it(tiny_components, tmp_path):
    cfg = tiny_config(tmp_path, steps=6)
    steps = []

    class Rec:
        def on_progress(self, info):
            if info.phase == "training":
                steps.append(info.step)

        def on_sample(self, *a):
            pass

        def on_status(self, text):
            pass

    session = _session(cfg, tmp_path)
    stopped = session.train(fresh(tiny_components), callbacks=Rec(), stop=lambda: len(steps) >= 3)
    assert stopped.state == "stopped" and stopped.state_path.parent == session.state_dir
    assert session.state_dir.name == f"out-{session.key[:16]}"
    steps.clear()
    done = _session(cfg, tmp_path).train(fresh(tiny_components), callbacks=Rec())
    assert done.state == "finished" and steps[0] == 4  # resumed automatically
    assert not session.state_dir.exists()  # a finished run removes its states
