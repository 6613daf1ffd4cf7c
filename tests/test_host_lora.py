"""Likeness LoRA Train / Extract LoRA on a real ComfyUI server (see tests/host/), and the saved LoRA in ComfyUI's
core LoraLoader: every key loaded (no "lora key not loaded"), one patch per adapted layer with the right size
(alpha/rank), output changed at strength 1 and unchanged at strength 0. Cancel, resume and bad inputs on the node.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import comfy_lora_patches, training_graph, training_inputs

pytestmark = pytest.mark.host

NODE = "LikenessLoRATrain"
BASE = "likeness_lora_base.safetensors"
RES = 64
RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def setup(comfy_host, comfy_tiny_checkpoint):
    return training_inputs(comfy_host, comfy_tiny_checkpoint, BASE, "lora", RES)


def _train_graph(host, ids=("1", "2", "9"), **widgets) -> dict:
    widgets = dict(
        resolution=RES, learning_rate=1e-2, lora_rank=RANK, lora_alpha=ALPHA, lora_layers="all",
        train_text_encoder=True,
    ) | widgets  # fmt: skip
    return training_graph(host, NODE, BASE, "lora", ids, options={"text_encoder_lr": 1e-2}, **widgets)


def _sample_graph(lora_name: str | None, strength: float, prefix: str) -> dict:
    """Core nodes only: checkpoint (+ LoraLoader) -> KSampler -> VAEDecode -> SaveImage."""
    model, clip = ["1", 0], ["1", 1]
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BASE}}}
    if lora_name is not None:
        graph["8"] = {
            "class_type": "LoraLoader",
            "inputs": {"model": model, "clip": clip, "lora_name": lora_name,
                       "strength_model": strength, "strength_clip": strength},
        }  # fmt: skip
        model, clip = ["8", 0], ["8", 1]
    graph.update({
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks shape", "clip": clip}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": RES, "height": RES, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
            "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    })  # fmt: skip
    return graph


def _ours(result, event: str, node_id: str) -> list[dict]:
    return [d for d in result.events(f"likeness.{event}") if str(d.get("node_id")) == node_id]


def _loras(host) -> list[Path]:
    """This module's LoRAs (output names 'lora_…'); other tests share the host's folders."""
    folder = host.loras_dir / "likeness"
    return sorted(folder.glob("lora_*.safetensors")) if folder.is_dir() else []


def _pixels(result) -> np.ndarray:
    (path,) = result.images("7")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _comfy_patches(host, lora: Path, strength: float, tmp_path: Path) -> dict:
    return comfy_lora_patches(host, BASE, [lora], tmp_path, strength)[lora.stem]


def _adapted_module_count() -> tuple[int, int]:
    """How many layers the trainer adapts on the ComfyUI-sized tiny model (built on the meta device)."""
    import torch

    from trainers.lora import adapters
    from trainers.tiny import comfy_tiny_components

    with torch.device("meta"):
        c = comfy_tiny_components()
    return len(adapters.unet_target_names(c.unet, "all")), len(
        adapters.text_encoder_target_names(c.text_encoder, "all")
    )


def test_nodes_are_registered_with_tooltips(setup):
    info = setup.object_info(NODE)
    assert info["category"] == "Likeness/training" and info["display_name"] == "Likeness LoRA Train"
    assert info["output"] == ["LIKENESS_TRAINED", "IMAGE", "IMAGE"]
    req = info["input"]["required"]
    assert {"lora_rank", "lora_alpha", "lora_layers", "learning_rate"} <= set(req)
    assert req["learning_rate"][1]["default"] == 1e-4
    for section in ("required", "optional"):
        for name, spec in info["input"][section].items():
            assert spec[1].get("tooltip"), f"{name} has no tooltip"
    ext = setup.object_info("LikenessExtractLoRA")
    assert ext["category"] == "Likeness/training" and ext["output"] == ["LIKENESS_TRAINED"]


def test_train_then_core_lora_loader(setup, tmp_path):
    host = setup
    result = host.run(_train_graph(host), timeout=900).check()
    progress = [d for d in _ours(result, "progress", "2") if d["phase"] == "training"]
    assert [d["step"] for d in progress] == [1, 2, 3]
    assert _ours(result, "start", "2")[0]["kind"] == "lora" and _ours(result, "end", "2")[-1]["state"] == "finished"
    (lora,) = _loras(host)
    assert lora.name == "lora_test.safetensors" and lora.stat().st_size < 3_000_000
    assert not list(lora.parent.glob(".*.part"))

    # ComfyUI's own loading code: every key used, one patch per adapted layer, each of the right size
    from trainers.lora import kohya

    layers = kohya.read_kohya(lora)
    n_unet, n_te = _adapted_module_count()
    assert len(layers.unet_layers) == n_unet and len(layers.text_encoder_layers) == n_te
    for strength in (1.0, 0.5):
        got = _comfy_patches(host, lora, strength, tmp_path)
        assert "lora key not loaded" not in got["log"] and "NOT LOADED" not in got["log"], got["log"]
        assert len(got["unet"]) == n_unet and len(got["clip"]) == n_te  # text encoder keys applied too
        want = sorted(strength * float(w.delta().norm()) for w in layers.layers.values())
        have = sorted(list(got["unet"].values()) + list(got["clip"].values()))
        assert max(w for w in want) > 0
        np.testing.assert_allclose(have, want, rtol=2e-3, atol=1e-6)  # alpha/rank scale as ours

    # the real server: core LoraLoader -> KSampler -> SaveImage
    log_start = len(host.log_text())
    name = f"likeness/{lora.name}"
    base_img = _pixels(host.run(_sample_graph(None, 0.0, "lora_base"), timeout=300).check())
    on_img = _pixels(host.run(_sample_graph(name, 1.0, "lora_on"), timeout=300).check())
    off_img = _pixels(host.run(_sample_graph(name, 0.0, "lora_off"), timeout=300).check())
    log = host.log_text()[log_start:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log, log[-3000:]
    assert np.abs(on_img - base_img).max() > 0, "the LoRA at strength 1 does not change the image"
    assert np.array_equal(off_img, base_img), "strength 0 must give the base model's image"

    # same inputs again under other node ids: found by content hash, no training
    again = host.run(_train_graph(host, ids=("11", "12", "19")), timeout=300).check()
    assert not _ours(again, "start", "12") and not _ours(again, "progress", "12")
    assert _loras(host) == [lora]


def test_untouched_options_node_keeps_the_lora_defaults_and_old_seed_input_works(setup):
    """A LoRA node and a Training Options node as created from /object_info, the options left alone: the LoRA keeps
    its own text-encoder learning rate (5e-5, not DreamBooth's "same as learning_rate"). The prompt uses the input
    name of saved prompts from before the rename ("seed"), which still sets the seed."""
    host = setup
    lora = host.defaults(NODE)
    del lora["train_seed"]
    lora.update(model=["1", 3], options=["9", 0], output_name="lora_defaults", instance_folder="lora_subject",
                steps=2, resolution=RES, seed=3)  # fmt: skip
    graph = {
        "1": {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": BASE}},
        "2": {"class_type": NODE, "inputs": lora},
        "9": {"class_type": "LikenessTrainingOptions", "inputs": host.defaults("LikenessTrainingOptions")},
    }
    host.run(graph, timeout=900).check()
    (path,) = [p for p in _loras(host) if p.name == "lora_defaults.safetensors"]
    from trainers.lora import kohya

    meta = kohya.read_kohya(path).metadata
    config = json.loads(meta["likeness.config"])
    assert config["text_encoder_lr"] == 5e-05 and float(meta["ss_text_encoder_lr"]) == 5e-05
    assert config["learning_rate"] == 1e-4 and config["seed"] == 3


def test_cancel_then_resume(setup):
    host = setup
    graph = _train_graph(
        host, output_name="lora_cancel", steps=12, train_seed=5, train_text_encoder=False, lora_layers="attention"
    )
    since = len(host.ws_messages)  # only this prompt's progress counts (earlier tests trained too)
    prompt_id = host.submit(graph)
    msg = host.wait_for_message(
        lambda m: m.get("type") == "likeness.progress" and m["data"].get("phase") == "training"
        and m["data"].get("step", 0) >= 2, timeout=600, since=since,
    )  # fmt: skip
    assert msg is not None, "training never reported progress"
    host.interrupt()
    result = host.wait(prompt_id, timeout=300)
    assert result.status == "interrupted", result
    stopped_at = max(d["step"] for d in _ours(result, "progress", "2") if d["phase"] == "training")
    assert stopped_at < 12 and _ours(result, "end", "2")[-1]["state"] == "stopped"
    assert not [p for p in _loras(host) if p.name.startswith("lora_cancel")]
    states = list((host.output_dir / "likeness" / "training_state").glob("lora_cancel-*/step-*"))
    assert states, "a resumable state was kept"
    # queue again: continues from the saved step, finishes, saves the LoRA
    resumed = host.run(graph, timeout=900).check()
    steps = [d["step"] for d in _ours(resumed, "progress", "2") if d["phase"] == "training"]
    assert steps and steps[0] > 1 and steps[-1] == 12
    assert [p for p in _loras(host) if p.name == "lora_cancel.safetensors"]


@pytest.mark.parametrize(
    "widgets, words",
    [
        ({"output_name": "../x"}, "not a plain name"),
        ({"instance_folder": "lora_missing"}, "does not exist"),
        ({"instance_folder": "lora_empty"}, "holds no images"),
        ({"lora_alpha": 0.0}, "lora_alpha"),
        ({"resolution": 100}, "multiple of 8"),
    ],
)
def test_bad_inputs_fail_before_training(setup, widgets, words):
    result = setup.run(_train_graph(setup, **widgets), timeout=120)
    assert result.status == "error", result
    assert words in result.error
    assert not _ours(result, "start", "2")


@pytest.mark.parametrize("widgets", [{"lora_rank": 0}, {"lora_layers": "everything"}])
def test_out_of_range_lora_options_are_rejected_by_the_host(setup, widgets):
    result = setup.run(_train_graph(setup, **widgets), timeout=60)
    assert result.status == "rejected", result
    assert list(widgets)[0] in result.error


def test_extract_lora_from_a_dreambooth_result(setup, tmp_path):
    """DreamBooth Train -> Extract LoRA in the server; the extracted file loads fully in the core LoraLoader."""
    host = setup
    opts = host.defaults("LikenessTrainingOptions")
    opts.update(sample_steps=2, gradient_checkpointing=False, sample_prompts="")
    db = host.defaults("LikenessDreamBoothTrain")
    db.update(
        model=["1", 3], output_name="lora_extract_db", instance_prompt="a photo of sks shape", steps=2,
        resolution=RES, learning_rate=1e-3, train_text_encoder=True, instance_folder="lora_subject",
        options=["9", 0],
    )  # fmt: skip
    graph = {
        "1": {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": BASE}},
        "2": {"class_type": "LikenessDreamBoothTrain", "inputs": db},
        "9": {"class_type": "LikenessTrainingOptions", "inputs": opts},
        "3": {"class_type": "LikenessExtractLoRA", "inputs": {
            "trained": ["2", 0], "rank": 8, "layers": "attention_ff", "text_encoder": True,
            "output_name": "lora_extracted"}},
    }  # fmt: skip
    host.run(graph, timeout=900).check()
    (extracted,) = [p for p in _loras(host) if p.name == "lora_extracted.safetensors"]
    from trainers.lora import kohya

    f = kohya.read_kohya(extracted)
    assert f.metadata["likeness.kind"] == "lora_extract" and f.metadata["ss_network_dim"] == "8"
    assert f.unet_layers and f.text_encoder_layers
    got = _comfy_patches(host, extracted, 1.0, tmp_path)
    assert "lora key not loaded" not in got["log"] and "NOT LOADED" not in got["log"], got["log"]
    assert len(got["unet"]) == len(f.unet_layers) and len(got["clip"]) == len(f.text_encoder_layers)
    base_img = _pixels(host.run(_sample_graph(None, 0.0, "extract_base"), timeout=300).check())
    on_img = _pixels(host.run(_sample_graph(f"likeness/{extracted.name}", 1.0, "extract_on"), timeout=300).check())
    assert np.abs(on_img - base_img).max() > 0
