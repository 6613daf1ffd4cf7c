"""``python -m trainers dreambooth``: a TOML config + overrides -> a checkpoint that diffusers loads, identical to
the same training run in-process (same seed)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from train_helpers import subject_images

from conftest import ROOT
from trainers.configspec import load_config
from trainers.train import DreamBoothConfig, train


def test_cli_checkpoint_matches_in_process_run_and_loads_in_diffusers(tiny_checkpoint, tiny_components, tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from trainers.model_io import load_components
    from trainers.model_io.export import save_diffusers_folder

    tok_dir = tmp_path / "tokenizer"
    tiny_components.tokenizer.save_pretrained(tok_dir)
    subject_images(tmp_path / "inst")
    toml = tmp_path / "my.toml"
    toml.write_text(
        f'base_model = "{tiny_checkpoint}"\n'
        f'tokenizer = "{tok_dir}"\n'
        f'instance_data = "{tmp_path / "inst"}"\n'
        'instance_prompt = "a photo of sks shape"\n'
        "prior_preservation = false\n"
        "resolution = 32\n"
        "steps = 100\n"
        "learning_rate = 1e-3\n"
        "seed = 3\n"
        'mixed_precision = "fp32"\n'
        "gradient_checkpointing = false\n"
        "sample_at_end = false\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cli_out = tmp_path / "cli.safetensors"
    run = subprocess.run(
        [sys.executable, "-m", "trainers", "dreambooth", "--config", str(toml), "steps=4", f"output={cli_out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"saved {cli_out}" in run.stdout and "step 4/4" in run.stderr

    # the same config in-process (one thread, like the CLI run) gives the same file
    cfg = load_config(DreamBoothConfig, toml, [f"output={tmp_path / 'lib.safetensors'}", "steps=4"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = train(cfg)
    finally:
        torch.set_num_threads(before)
    a, b = load_file(str(cli_out)), load_file(str(out.path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(str(tiny_checkpoint))
    unet_keys = [k for k in a if k.startswith("model.diffusion_model.")]
    assert any(not torch.equal(a[k], base[k]) for k in unet_keys)  # it trained
    assert all(torch.equal(a[k], base[k]) for k in a if k.startswith("first_stage_model."))  # VAE untouched

    # diffusers' own single-file loader (offline, local config) reads it and samples
    config_dir = save_diffusers_folder(tiny_components, tmp_path / "config", dtype="fp32")
    pipe = StableDiffusionPipeline.from_single_file(
        str(cli_out),
        config=str(config_dir),
        tokenizer=tiny_components.tokenizer,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    ours = load_components(cli_out, tokenizer=tiny_components.tokenizer)
    sd = pipe.unet.state_dict()
    assert all(torch.equal(sd[k].float(), v.float()) for k, v in ours.unet.state_dict().items())
    image = pipe("a photo of sks shape", height=32, width=32, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    meta = __import__("safetensors").safe_open(str(cli_out), "pt").metadata()
    assert meta["likeness.kind"] == "dreambooth" and meta["likeness.steps"] == "4"
    assert meta["likeness.base_model_sha256"] and meta["likeness.dataset_sha256"]


def test_cli_trains_with_the_separate_vae_and_reuses_its_result(tiny_checkpoint, tiny_components, tmp_path):
    """``vae_path`` is honoured (the VAE inside the result is the separate one, as on the node), and the same
    command again finds its result instead of training (the same session rules as the nodes)."""
    from safetensors.torch import load_file

    from trainers.tiny import tiny_components as build
    from trainers.tiny import write_civitai_file

    other = write_civitai_file(build(seed=1), tmp_path / "other.safetensors", dtype="fp32")
    tok_dir = tmp_path / "tokenizer"
    tiny_components.tokenizer.save_pretrained(tok_dir)
    subject_images(tmp_path / "inst")
    out = tmp_path / "out" / "db.safetensors"
    args = [
        f"base_model={tiny_checkpoint}", f"vae_path={other}", f"tokenizer={tok_dir}", f"instance_data={tmp_path / 'inst'}",
        "prior_preservation=false", "resolution=32", "steps=1", "mixed_precision=fp32", "gradient_checkpointing=false",
        "sample_at_end=false", "save_dtype=fp32", f"output={out}",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "trainers", "dreambooth", *args]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got, vae = load_file(str(out)), load_file(str(other))
    vae_keys = [k for k in got if k.startswith("first_stage_model.")]
    assert vae_keys and all(torch.equal(got[k], vae[k]) for k in vae_keys)
    base = load_file(str(tiny_checkpoint))
    assert any(not torch.equal(got[k].float(), base[k].float()) for k in vae_keys)  # not the checkpoint's own VAE
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"reused {out}" in again.stdout, again.stderr[-2000:]
    assert sorted(p.name for p in out.parent.glob("*.safetensors")) == ["db.safetensors"]
