"""Likeness Load Checkpoint and our exported checkpoints on a real ComfyUI server (see tests/host/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.host.harness import sample_prompt

pytestmark = pytest.mark.host

NODE = "LikenessLoadCheckpoint"


def _likeness_loader(ckpt_name: str, **optional) -> dict:
    return {"class_type": NODE, "inputs": {"ckpt_name": ckpt_name, **optional}}


def _sample(loader: dict, prefix: str) -> dict:
    return sample_prompt(loader, prefix, text="a photo of a person", seed=7)


def _assert_image(result, size=(64, 64)) -> Path:
    from PIL import Image

    (path,) = result.images("7")
    with Image.open(path) as im:
        assert im.size == size
    return path


def test_node_is_registered_with_tooltips(comfy_host):
    info = comfy_host.object_info(NODE)
    assert info["category"] == "Likeness/loaders"
    assert info["display_name"] == "Likeness Load Checkpoint"
    assert info["output"] == ["MODEL", "CLIP", "VAE", "LIKENESS_MODEL"]
    assert info.get("description")
    inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert set(inputs) == {"ckpt_name", "vae_name", "ema"}
    for name, spec in inputs.items():
        assert len(spec) > 1 and spec[1].get("tooltip"), f"input {name} has no tooltip"


def test_loads_and_samples_in_the_same_graph(comfy_host, comfy_tiny_checkpoint):
    name = comfy_host.add_model("checkpoints", comfy_tiny_checkpoint, "likeness_tiny.safetensors")
    assert name in comfy_host.object_info(NODE)["input"]["required"]["ckpt_name"][0]
    log_start = len(comfy_host.log_text())
    result = comfy_host.run(_sample(_likeness_loader(name), "likeness_loader"), timeout=240).check()
    _assert_image(result)
    _assert_loaded_completely(comfy_host.log_text()[log_start:])
    assert result.events("progress"), "KSampler reported no progress"


def test_ckpt_and_separate_vae_reach_the_host_safely(comfy_host, comfy_tiny_checkpoint, tmp_path):
    """A .ckpt (nested state_dict) is loaded through a safetensors copy; a VAE from models/vae replaces its own."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(comfy_tiny_checkpoint))
    ckpt = comfy_host.checkpoints_dir / "likeness_tiny_old.ckpt"
    if not ckpt.exists():
        torch.save({"state_dict": sd, "global_step": 10}, ckpt)
    vae = comfy_host.vae_dir / "likeness_tiny_vae.safetensors"
    if not vae.exists():
        vae_sd = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
        save_file(vae_sd, str(vae))
    del sd
    loader = _likeness_loader(ckpt.name, vae_name=vae.name, ema="auto")
    result = comfy_host.run(_sample(loader, "likeness_ckpt_vae"), timeout=240).check()
    _assert_image(result)
    copies = list((comfy_host.likeness_cache / "host_files").glob("*.safetensors"))
    assert copies, "the .ckpt did not go through a normalized safetensors copy"


def test_refused_checkpoint_fails_with_our_message(comfy_host):
    import torch
    from safetensors.torch import save_file

    path = comfy_host.checkpoints_dir / "likeness_sdxl_shaped.safetensors"
    if not path.exists():
        save_file(
            {
                "conditioner.embedders.1.model.ln_final.weight": torch.zeros(8),
                "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 8),
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
            },
            str(path),
        )
    result = comfy_host.run(_sample(_likeness_loader(path.name), "likeness_refused"), timeout=120)
    assert result.status == "error"
    assert result.error_info["node_type"] == NODE
    assert "CheckpointError" in result.error_info["exception_type"]
    assert "SDXL" in result.error and "SD1.5-based checkpoint" in result.error
    assert path.name in result.error


def test_malicious_ckpt_never_runs_its_payload(comfy_host, tmp_path):
    import torch

    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = comfy_host.checkpoints_dir / "likeness_evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, "x": Payload()}, path)
    assert not marker.exists()
    result = comfy_host.run(_sample(_likeness_loader(path.name), "likeness_evil"), timeout=120)
    assert result.status == "error" and result.error_info["node_type"] == NODE
    assert "never unpickled" in result.error
    assert not marker.exists(), "the pickle payload ran inside ComfyUI"


def test_exported_checkpoint_loads_in_core_loader(comfy_host, comfy_tiny_checkpoint):
    """save_single_file's output is an ordinary checkpoint for ComfyUI's CheckpointLoaderSimple."""
    from trainers.model_io import load_components, save_single_file
    from trainers.tiny import tiny_tokenizer

    dest = comfy_host.checkpoints_dir / "likeness_exported.safetensors"
    if not dest.exists():
        components = load_components(comfy_tiny_checkpoint, tokenizer=tiny_tokenizer())
        save_single_file(components, dest, dtype="fp16", metadata={"likeness.test": "export"})
        del components
    loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": dest.name}}
    log_start = len(comfy_host.log_text())
    result = comfy_host.run(_sample(loader, "likeness_exported"), timeout=240).check()
    _assert_image(result)
    _assert_loaded_completely(comfy_host.log_text()[log_start:])


# ComfyUI's CLIP-L has two weights SD1.x files never carry (it logs "clip missing" for every SD1.5 checkpoint).
_CLIP_NEVER_IN_SD1 = {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}


def _assert_loaded_completely(log: str) -> None:
    """ComfyUI warns (and carries on) when text encoder or VAE weights are missing from a checkpoint."""
    for line in log.splitlines():
        if line.startswith("clip missing:"):
            missing = set(ast.literal_eval(line.split(":", 1)[1].strip()))
            assert missing <= _CLIP_NEVER_IN_SD1, f"ComfyUI: {line}"
    for warning in ("no CLIP/text encoder weights", "Missing VAE keys"):
        assert warning not in log, f"ComfyUI: {warning!r} while loading the checkpoint"


class _Report:
    def step(self, *args, **outputs) -> None:
        self.outputs = outputs


def test_the_demos_model_for_the_page_samples_through_the_core_loader(comfy_host, comfy_tiny_checkpoint, tmp_path):
    """The tiny SD1.5 the demo writes into likeness-output/models/checkpoints/ (the demo's own step, here finding the
    file its writer makes, so it is not built twice) is an ordinary checkpoint for core CheckpointLoaderSimple, and
    for Likeness Load Checkpoint."""
    import shutil

    from trainers.demo import COMFY_MODEL, write_comfy_model

    demo_models = tmp_path / "likeness-output" / "models"
    (demo_models / "checkpoints").mkdir(parents=True)
    shutil.copyfile(comfy_tiny_checkpoint, demo_models / "checkpoints" / COMFY_MODEL)
    report = _Report()
    path = write_comfy_model(demo_models, report)
    assert report.outputs["comfyui_checkpoint"] == path and path.read_bytes() == comfy_tiny_checkpoint.read_bytes()
    name = comfy_host.add_model("checkpoints", path, "likeness_demo_" + COMFY_MODEL)
    log_start = len(comfy_host.log_text())
    core = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}}
    result = comfy_host.run(_sample(core, "likeness_demo_core"), timeout=240).check()
    _assert_image(result)
    _assert_loaded_completely(comfy_host.log_text()[log_start:])
    comfy_host.run(_sample(_likeness_loader(name), "likeness_demo_ours"), timeout=240).check()


def test_the_old_tiny_demo_model_gets_the_clear_message(comfy_host, tiny_checkpoint):
    """SD1-shaped but 32 channels (the demo's model before it wrote one for the page): refused by our node, before
    ComfyUI's loader fails inside with "'NoneType' object has no attribute 'supported_inference_dtypes'"."""
    name = comfy_host.add_model("checkpoints", tiny_checkpoint, "likeness_old_demo_tiny.safetensors")
    result = comfy_host.run(_sample(_likeness_loader(name), "likeness_old_tiny"), timeout=120)
    assert result.status == "error" and result.error_info["node_type"] == NODE
    assert "CheckpointError" in result.error_info["exception_type"]
    assert "model_channels 32 and context 32" in result.error and "model_channels 320 and context 768" in result.error
    assert "NoneType" not in result.error


def test_the_template_browser_lists_the_examples_where_the_host_has_one(comfy_host):
    """README: ComfyUI 0.3.x (2025 on) lists a pack's example_workflows/ in its template browser; the 2024 ones have
    no such list (drag the file onto the canvas)."""
    has_browser = (comfy_host.install.comfy_dir / "app" / "custom_node_manager.py").is_file()
    status, body = comfy_host.request("GET", "/workflow_templates")
    if not has_browser:
        assert status == 404
        return
    assert status == 200
    assert sorted(body["likeness"]) == ["dreambooth_face", "lora_face", "sample_trained"]
