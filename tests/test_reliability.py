"""Every failure keeps the user's work (see docs/reliability.md): a full disk at the final save or at a resumable
state, a file that appears at the output path, a diverging run, a killed save, a damaged state; a crafted report never
makes the crop delete anything outside its folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import faults
import pytest
import torch
from train_helpers import fresh, tiny_config

from trainers.errors import DatasetError, SaveFailed, TrainingDiverged
from trainers.train import Callbacks, train
from trainers.train.session import Session
from trainers.train.state import StateError


class Steps(Callbacks):
    def __init__(self, on_step=None):
        self.steps: list[int] = []
        self.status: list[str] = []
        self.on_step = on_step

    def on_progress(self, info):
        if info.phase == "training":
            self.steps.append(info.step)
            if self.on_step:
                self.on_step(info.step)

    def on_status(self, text):
        self.status.append(text)


def _session(cfg, tmp_path) -> Session:
    return Session(cfg, model_key="tiny", state_root=tmp_path / "states")


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_full_disk_at_the_final_save_keeps_the_weights_and_the_next_run_only_saves(
    tiny_components, tmp_path, monkeypatch
):
    reference = train(tiny_config(tmp_path / "ref", steps=3), components=fresh(tiny_components))
    disk = tmp_path / "disk"
    cfg = tiny_config(tmp_path, steps=3, output=str(disk / "result.safetensors"))
    with faults.small_disk(disk, 64) as real:
        if not real:
            monkeypatch.setattr("safetensors.torch.save_file", faults.enospc_under(disk))
        with pytest.raises(SaveFailed) as e:
            _session(cfg, tmp_path).train(fresh(tiny_components))
        message = str(e.value)
        assert str(disk / "result.safetensors") in message and "needs about" in message
        assert "resumable state in" in message and "run the same training again" in message
        assert list(disk.iterdir()) == []  # no partial file, no sidecar
    monkeypatch.undo()
    states = list((tmp_path / "states").glob("result-*/step-000003"))
    assert len(states) == 1 and (states[0] / "state.json").is_file()
    # space freed: the same run saves without a training step, and saves the trained weights
    rec = Steps()
    again = _session(cfg, tmp_path).train(fresh(tiny_components), callbacks=rec)
    assert again.state == "finished" and rec.steps == [] and again.path == disk / "result.safetensors"
    a, b = _tensors(again.path), _tensors(reference.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_at_a_resumable_state_warns_and_training_goes_on(tiny_components, tmp_path, monkeypatch):
    disk = tmp_path / "statedisk"
    cfg = tiny_config(tmp_path, steps=4, checkpoint_every=1, state_dir=str(disk))
    rec = Steps()
    with faults.small_disk(disk, 16) as real:
        if not real:
            monkeypatch.setattr("safetensors.torch.save_file", faults.enospc_under(disk))
        out = _session(cfg, tmp_path).train(fresh(tiny_components), callbacks=rec)
        assert out.state == "finished" and out.path.is_file() and rec.steps == [1, 2, 3, 4]
        assert any("could not save a resumable state" in s and str(disk) in s for s in rec.status)
        assert not [p for p in disk.rglob("*") if p.name.endswith(".part")]


def test_a_file_that_appears_at_the_output_is_kept_and_the_run_is_saved_beside_it(tiny_components, tmp_path):
    cfg = tiny_config(tmp_path, steps=3)
    target = Path(cfg.output)

    def appear(step):
        if step == 2:
            target.write_bytes(b"someone else's file")

    out = _session(cfg, tmp_path).train(fresh(tiny_components), callbacks=Steps(appear))
    assert out.state == "finished" and out.path == target.with_name("out_2.safetensors")
    assert target.read_bytes() == b"someone else's file" and out.path.is_file()


def test_a_diverging_run_saves_nothing_and_says_what_to_change(tiny_components, tmp_path):
    cfg = tiny_config(tmp_path, steps=8, learning_rate=1e12, max_grad_norm=0.0, checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as e:
        _session(cfg, tmp_path).train(fresh(tiny_components))
    message = str(e.value)
    assert "became" in message and "at step" in message and "learning_rate" in message
    assert not Path(cfg.output).exists()
    for state in (tmp_path / "states").glob("*/step-*"):  # every state kept holds finite numbers only
        assert all(torch.isfinite(t).all() for t in _tensors(state / "trainable.safetensors").values())


def test_leftovers_of_a_killed_save_are_removed_and_nothing_else(tiny_components, tmp_path):
    cfg = tiny_config(tmp_path, steps=1)
    folder = Path(cfg.output).parent
    folder.mkdir(parents=True, exist_ok=True)
    old = folder / ".out.safetensors.a1b2c3d4.part"
    recent = folder / ".out.safetensors.e5f6g7h8.part"
    foreign = folder / ".mine.part"
    for p in (old, recent, foreign):
        p.write_bytes(b"x" * 100)
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(foreign, (hour_ago, hour_ago))
    _session(cfg, tmp_path).train(fresh(tiny_components))
    assert not old.exists() and recent.exists() and foreign.exists()


def test_a_damaged_state_is_moved_aside_with_a_message_and_the_next_run_starts_afresh(tiny_components, tmp_path):
    cfg = tiny_config(tmp_path, steps=6)
    rec = Steps()
    stopped = _session(cfg, tmp_path).train(fresh(tiny_components), callbacks=rec, stop=lambda: len(rec.steps) >= 2)
    state = stopped.state_path
    (state / "optimizer.pt").write_bytes((state / "optimizer.pt").read_bytes()[:100])  # truncated
    with pytest.raises(StateError) as e:
        _session(cfg, tmp_path).train(fresh(tiny_components))
    message = str(e.value)
    assert "optimizer.pt" in message and "moved aside" in message and not state.exists()
    moved = list(state.parent.glob(f"{state.name}.unusable-*"))
    assert len(moved) == 1 and (moved[0] / "state.json").is_file()  # set aside, never deleted
    rec2 = Steps()
    done = _session(cfg, tmp_path).train(fresh(tiny_components), callbacks=rec2)
    assert done.state == "finished" and rec2.steps[0] == 1


def test_a_crafted_report_never_deletes_outside_the_dataset_folder(tmp_path):
    """A report.json in a dataset folder naming files outside it (absolute and ../): the crop runs, they stay."""
    from skimage import data

    from trainers.data.crop import CropConfig, build_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(data.astronaut()).save(photos / "a.png")
    dataset = tmp_path / "out" / "dataset"
    dataset.mkdir(parents=True)
    victims = [tmp_path / "victim.txt", tmp_path / "out" / "sibling.txt"]
    for v in victims:
        v.write_text("precious")
    report = {
        "format": "likeness-facecrop",
        "key": "not-this-one",
        "images": [
            {"status": "kept", "output": str(victims[0])},
            {"status": "kept", "output": "../sibling.txt"},
            {"status": "kept", "output": "../../victim.txt"},
        ],
        "summary": {"kept": 3},
    }
    (dataset / "report.json").write_text(json.dumps(report))
    outcome = build_dataset(CropConfig(resolution=128), input_folder=photos, output_folder=dataset)
    assert outcome.count == 1 and not outcome.reused
    assert all(v.read_text() == "precious" for v in victims)
    assert json.loads((dataset / "report.json").read_text())["key"] == outcome.key  # our own report now


def test_full_disk_in_the_crop_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    from PIL import Image
    from skimage import data

    from trainers.data.crop import CropConfig, build_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(data.astronaut()).rotate(i * 3).save(photos / f"p{i}.png")
    disk = tmp_path / "cropdisk"
    with faults.small_disk(disk, 32) as real:
        if not real:
            original = Image.Image.save

            def save(self, fp, *a, **k):
                if Path(fp).resolve().is_relative_to(disk.resolve()):
                    raise OSError(28, "No space left on device", str(fp))
                return original(self, fp, *a, **k)

            monkeypatch.setattr(Image.Image, "save", save)
        with pytest.raises(DatasetError, match="disk full in") as e:
            build_dataset(CropConfig(resolution=256), input_folder=photos, output_folder=disk / "set")
        assert str(disk) in str(e.value)
        assert not [p for p in disk.rglob("*") if p.name.startswith(".")]  # the staging folder is gone


def test_an_over_long_name_is_refused_with_the_limit(tmp_path):
    from trainers.errors import ConfigError
    from trainers.fsutil import MAX_NAME_BYTES, safe_name

    assert safe_name("a" * MAX_NAME_BYTES) == "a" * MAX_NAME_BYTES
    with pytest.raises(ConfigError, match=f"at most {MAX_NAME_BYTES}"):
        safe_name("a" * 250)  # over what a file system allows once our suffixes are added (255 bytes a name)
    (tmp_path / ("b" * MAX_NAME_BYTES + ".likeness.json")).write_text("{}")  # our longest suffix still fits


def test_is_changed_refuses_a_folder_outside_comfyui_before_walking_it(pack, tmp_path, monkeypatch):
    """Typing /usr (or /) into a folder input must not make the queue walk the disk."""
    from likeness_pack.nodes import bridge
    from likeness_pack.trainers import fsutil

    monkeypatch.setattr(bridge, "input_dir", lambda: tmp_path / "input")
    monkeypatch.setattr(bridge, "output_dir", lambda: tmp_path / "output")
    walked = []
    monkeypatch.setattr(fsutil.os, "walk", lambda *a, **k: walked.append(a) or iter(()))
    for folder in ("/usr", "/", "../../etc"):
        stamp = bridge.input_folder_stamp(folder)
        assert stamp.startswith("error:") and "outside ComfyUI's input and output folders" in stamp
    assert walked == []


def test_a_folder_stamp_walks_a_bounded_number_of_entries(tmp_path):
    from trainers.fsutil import folder_stamp

    for i in range(30):
        (tmp_path / f"{i:03d}.png").write_bytes(b"x")
    small = folder_stamp(tmp_path, limit=10)
    (tmp_path / "029.png").write_bytes(b"changed")  # beyond the limit: not looked at
    assert folder_stamp(tmp_path, limit=10) == small
    (tmp_path / "000.png").write_bytes(b"changed")  # within it
    assert folder_stamp(tmp_path, limit=10) != small
