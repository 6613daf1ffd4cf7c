"""Likeness DreamBooth Train on a real ComfyUI server (see tests/host/): train, sample the result with core nodes,
progress events, cancel, content-addressed reuse, validation errors, and the CLI writing the same file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import training_graph, training_inputs

from conftest import ROOT
from tests.host.harness import sample_prompt

pytestmark = pytest.mark.host

NODE = "LikenessDreamBoothTrain"
BASE = "likeness_db_base.safetensors"
RES = 64


@pytest.fixture(scope="module")
def setup(comfy_host, comfy_tiny_checkpoint):
    return training_inputs(comfy_host, comfy_tiny_checkpoint, BASE, "db", RES)


def _sample(ckpt_name: str, prefix: str) -> dict:
    loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}
    return sample_prompt(loader, prefix, text="a photo of sks shape", size=RES)


def _train_graph(host, ids=("1", "2", "9"), **widgets) -> dict:
    widgets = dict(resolution=RES, learning_rate=1e-4, train_text_encoder=False) | widgets
    return training_graph(host, NODE, BASE, "db", ids, **widgets)


def _ours(result, event: str, node_id: str) -> list[dict]:
    return [d for d in result.events(f"likeness.{event}") if str(d.get("node_id")) == node_id]


def _results(host) -> list[Path]:
    """This module's results (output names 'db_…'); other tests share the host's folders."""
    folder = host.checkpoints_dir / "likeness"
    return sorted(folder.glob("db_*.safetensors")) if folder.is_dir() else []


def test_nodes_are_registered_with_tooltips(setup):
    info = setup.object_info(NODE)
    assert info["category"] == "Likeness/training" and info["display_name"] == "Likeness DreamBooth Train"
    assert info["output"] == ["LIKENESS_TRAINED", "IMAGE", "IMAGE"]
    for section in ("required", "optional"):
        for name, spec in info["input"][section].items():
            assert spec[1].get("tooltip"), f"{name} has no tooltip"
    opts = setup.object_info("LikenessTrainingOptions")["input"]["optional"]  # all optional: old prompts validate
    assert {"optimizer", "lr_scheduler", "mixed_precision", "checkpoint_every"} <= set(opts)


def test_train_sample_reuse_and_cli_identity(setup, tmp_path):
    host = setup
    graph = _train_graph(host)
    result = host.run(graph, timeout=600).check()
    progress = [d for d in _ours(result, "progress", "2") if d["phase"] == "training"]
    assert [d["step"] for d in progress] == [1, 2, 3]
    assert all({"loss", "loss_smoothed", "lr", "eta", "loss_instance", "loss_prior"} <= set(d) for d in progress)
    assert _ours(result, "start", "2")[0]["total"] == 3 and _ours(result, "end", "2")[-1]["state"] == "finished"
    (trained,) = _results(host)
    assert trained.name == "db_test.safetensors"
    assert not list(trained.parent.glob("*.part"))
    assert result.images("2"), "the node shows its last samples"

    # the trained checkpoint in the core loader -> KSampler -> SaveImage
    sampled = host.run(_sample(f"likeness/{trained.name}", "db_trained"), timeout=300).check()
    (image,) = sampled.images("7")
    assert image.is_file()

    # identical prompt: cached by the host, no training
    again = host.run(graph, timeout=120).check()
    assert not _ours(again, "progress", "2") and again.seconds < 30
    # same inputs under other node ids: our node runs, finds the result by content hash, does not train
    renamed = host.run(_train_graph(host, ids=("11", "12", "19")), timeout=300).check()
    assert not _ours(renamed, "start", "12") and not _ours(renamed, "progress", "12")
    assert _results(host) == [trained]

    # the CLI with the same options writes a byte-identical checkpoint
    tokenizer = host.install.comfy_dir / "comfy" / "sd1_tokenizer"
    out = tmp_path / "cli.safetensors"
    args = [
        f"base_model={(host.checkpoints_dir / BASE).resolve()}",
        f"tokenizer={tokenizer}",
        f"instance_data={host.input_dir / 'db_subject'}",
        f"class_data={host.input_dir / 'db_class'}",
        "instance_prompt=a photo of sks shape",
        "class_prompt=a photo of shape",
        "steps=3",
        f"resolution={RES}",
        "learning_rate=1e-4",
        "train_text_encoder=false",
        "gradient_checkpointing=false",
        "sample_steps=2",
        f"output={out}",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-m", "trainers", "dreambooth", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_checkpoint(out, trained)
    # the CLI asked to write into the node's folder finds the node's result there (one session rule for both)
    shared = host.checkpoints_dir / "likeness" / "db_from_cli.safetensors"
    args[-1] = f"output={shared}"
    reuse = subprocess.run(
        [sys.executable, "-m", "trainers", "dreambooth", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert reuse.returncode == 0, reuse.stderr[-3000:]
    assert f"reused {trained}" in reuse.stdout and not shared.exists()
    assert "step 1/" not in reuse.stderr  # nothing trained


def test_fresh_node_from_object_info_defaults_trains_once(setup):
    """A DreamBooth node exactly as the menu creates it (the /object_info defaults, no example workflow): queued
    twice (under other node ids, so the host's cache does not answer), it trains once."""
    host = setup
    info = host.object_info(NODE)["input"]
    assert "seed" not in info["required"] and "seed" not in info["optional"]  # no "randomize after queue" widget
    train = host.defaults(NODE)
    train.update(model=["1", 3], output_name="db_fresh", instance_folder="db_subject", steps=2, resolution=RES)
    graph = {"1": {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": BASE}},
             "2": {"class_type": NODE, "inputs": train}}  # fmt: skip
    first = host.run(graph, timeout=900).check()
    assert _ours(first, "start", "2")
    again = host.run({"11": graph["1"], "12": {**graph["2"], "inputs": {**train, "model": ["11", 3]}}}, timeout=300)
    again.check()
    assert not _ours(again, "start", "12") and not _ours(again, "progress", "12")
    assert [p.name for p in _results(host) if p.name.startswith("db_fresh")] == ["db_fresh.safetensors"]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    """The same checkpoint: every tensor bitwise equal and the same metadata, same size on disk.

    (Not a raw byte comparison: safetensors keeps the header's metadata in a hash map, so two processes may write
    the same entries in another order.)"""
    import torch
    from safetensors import safe_open

    assert a.stat().st_size == b.stat().st_size
    fa, fb = safe_open(str(a), "pt"), safe_open(str(b), "pt")
    ma, mb = fa.metadata(), fb.metadata()
    meta = {k: (ma.get(k), mb.get(k)) for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)}
    assert set(fa.keys()) == set(fb.keys())
    tensors = [k for k in fa.keys() if not torch.equal(fa.get_tensor(k), fb.get_tensor(k))]  # noqa: SIM118
    assert not meta and not tensors, f"CLI and node checkpoints differ: metadata {meta}; tensors {tensors[:5]}"


def test_interrupt_stops_within_two_steps_and_leaves_no_model(setup):
    host = setup
    before = _results(host)
    graph = _train_graph(host, output_name="db_cancel", steps=400, train_seed=5)
    since = len(host.ws_messages)  # only this prompt's progress counts
    prompt_id = host.submit(graph)
    msg = host.wait_for_message(
        lambda m: m.get("type") == "likeness.progress" and m["data"].get("phase") == "training"
        and m["data"].get("step", 0) >= 2, timeout=300, since=since,
    )  # fmt: skip
    assert msg is not None, "training never reported progress"
    host.interrupt()
    step_at_interrupt = max(
        m["data"]["step"] for m in host.ws_messages[since:]
        if m.get("type") == "likeness.progress" and m["data"].get("phase") == "training"
    )  # fmt: skip
    result = host.wait(prompt_id, timeout=300)
    assert result.status == "interrupted", result
    steps = [d["step"] for d in _ours(result, "progress", "2") if d["phase"] == "training"]
    assert max(steps) <= step_at_interrupt + 2
    assert _ours(result, "end", "2")[-1]["state"] == "stopped"
    assert _results(host) == before  # no partial or finished model file
    folder = host.checkpoints_dir / "likeness"
    assert not [p for p in folder.glob(".*") if p.name.endswith(".part")]
    states = list((host.output_dir / "likeness" / "training_state").glob("db_cancel-*/step-*"))
    assert states, "a resumable state was kept"
    # the server is fine afterwards
    time.sleep(0.5)
    host.run(_sample(BASE, "after_cancel"), timeout=300).check()


@pytest.mark.parametrize(
    "widgets, words",
    [
        ({"output_name": "../x"}, "not a plain name"),
        ({"instance_folder": "db_missing"}, "does not exist"),
        ({"instance_folder": "db_empty"}, "holds no images"),
        ({"class_folder": "db_empty"}, "class folder"),
        ({"resolution": 100}, "multiple of 8"),
    ],
)
def test_bad_inputs_fail_before_training(setup, widgets, words):
    result = setup.run(_train_graph(setup, **widgets), timeout=120)
    assert result.status == "error", result
    assert words in result.error
    assert not _ours(result, "start", "2")


@pytest.mark.parametrize("widgets", [{"steps": 0}, {"learning_rate": -1e-4}])
def test_out_of_range_numbers_are_rejected_by_the_host(setup, widgets):
    result = setup.run(_train_graph(setup, **widgets), timeout=60)
    assert result.status == "rejected", result
    assert list(widgets)[0] in result.error
