"""Issue-15 methods through a real ComfyUI (see tests/host/): LoRA Train with the prior from the base model (no
class images connected or made), EMA weights and a validation-loss curve, from an API prompt."""

from __future__ import annotations

import json

import pytest
from train_helpers import training_graph, training_inputs

pytestmark = pytest.mark.host

NODE = "LikenessLoRATrain"
BASE = "likeness_methods_base.safetensors"
RES = 64


@pytest.fixture(scope="module")
def setup(comfy_host, comfy_tiny_checkpoint):
    return training_inputs(comfy_host, comfy_tiny_checkpoint, BASE, "methods", RES)


def test_lora_with_the_base_model_prior_ema_and_validation(setup):
    host = setup
    class_sets = host.output_dir / "likeness" / "class_images"
    before = sorted(class_sets.rglob("*.png")) if class_sets.is_dir() else []
    graph = training_graph(
        host, NODE, BASE, "methods", output_name="methods_lora", steps=3, resolution=RES, class_folder="",
        prior="base_model", lora_rank=4, lora_alpha=4.0, train_text_encoder=False,
        options={"ema": True, "ema_decay": 0.5, "validation_images": 1, "validation_every": 1},
    )  # fmt: skip
    result = host.run(graph, timeout=900).check()
    ours = [d for d in result.events("likeness.progress") if str(d.get("node_id")) == "2"]
    training = [d for d in ours if d["phase"] == "training"]
    assert [d["step"] for d in training] == [1, 2, 3]
    assert all(d.get("loss_prior") is not None for d in training)  # the class half from the base model
    validation = [(d["step"], d["loss_validation"]) for d in ours if d["phase"] == "validation"]
    assert [s for s, _ in validation] == [0, 1, 2, 3]
    (path,) = sorted((host.loras_dir / "likeness").glob("methods_lora*.safetensors"))
    from trainers.lora import kohya

    meta = kohya.read_kohya(path).metadata
    assert json.loads(meta["likeness.ema"]) == {"decay": 0.5, "start_step": 0}
    assert [tuple(p) for p in json.loads(meta["likeness.validation_loss"])] == validation
    config = json.loads(meta["likeness.config"])
    assert config["prior"] == "base_model" and config["prior_preservation"]
    assert (sorted(class_sets.rglob("*.png")) if class_sets.is_dir() else []) == before  # no class image made
