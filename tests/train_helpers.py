"""Helpers for the training-engine tests: a fixed synthetic subject, class images, configs on the tiny model."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32  # the tiny model's VAE halves the side: 32 px -> 16x16 latents


def subject_images(folder: Path, n: int = 4, size: int = SIZE) -> Path:
    """One subject: an orange/blue checkerboard square on grey, slightly shifted per photo."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.full((size, size, 3), 128, np.uint8)
        off = 2 + i % 3
        for y in range(0, size // 2, 4):
            for x in range(0, size // 2, 4):
                color = (240, 140, 20) if (x + y) // 4 % 2 == 0 else (30, 60, 220)
                a[off + y : off + y + 4, off + x : off + x + 4] = color
        Image.fromarray(a).save(folder / f"subject_{i}.png")
    return folder


def class_images(folder: Path, n: int = 4, size: int = SIZE, seed: int = 0) -> Path:
    """Class images: random coloured blocks on grey (seeded)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.full((size, size, 3), 128, np.uint8)
        x, y, s = rng.integers(0, size // 2, 3)
        a[y : y + s + 4, x : x + s + 4] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / f"class_{i}.png")
    return folder


def tiny_config(tmp: Path, **overrides):
    from trainers.configspec import from_dict
    from trainers.train import DreamBoothConfig

    data = dict(
        instance_data=str(tmp / "inst") if (tmp / "inst").is_dir() else str(subject_images(tmp / "inst")),
        instance_prompt="a photo of sks shape",
        class_data=None,
        class_prompt="a photo of shape",
        prior_preservation=False,
        output=str(tmp / "out.safetensors"),
        resolution=SIZE,
        steps=10,
        learning_rate=1e-3,
        seed=7,
        mixed_precision="fp32",
        device="cpu",
        optimizer="adamw",
        gradient_checkpointing=False,
        sample_at_end=False,
        save_dtype="fp32",
    )
    data.update(overrides)
    return from_dict(DreamBoothConfig, data)


def fresh(components):
    """A private copy of the shared tiny components (training changes weights in place)."""
    return copy.deepcopy(components)


def state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> set[str]:
    after = module.state_dict()
    return {k for k, v in before.items() if not v.equal(after[k])}


def training_inputs(host, checkpoint: Path, base_name: str, prefix: str, size: int):
    """A host ready for training tests: the base checkpoint linked as ``base_name`` and input folders
    ``<prefix>_subject`` (3 images), ``<prefix>_class`` (3 images) and an empty ``<prefix>_empty``."""
    host.add_model("checkpoints", checkpoint, base_name)
    subject_images(host.input_dir / f"{prefix}_subject", n=3, size=size)
    class_images(host.input_dir / f"{prefix}_class", n=3, size=size)
    (host.input_dir / f"{prefix}_empty").mkdir(exist_ok=True)
    return host


def training_graph(host, node: str, base_name: str, prefix: str, ids=("1", "2", "9"), options=None, **inputs) -> dict:
    """An API prompt: Likeness Load Checkpoint (``base_name``) -> ``node`` with Likeness Training Options, every input
    filled from the nodes' defaults, then a short run on the ``training_inputs`` folders of ``prefix``; ``inputs`` and
    ``options`` override. ``ids`` are the loader's, the training node's and the options node's ids."""
    loader, train, opt_id = ids
    opts = host.defaults("LikenessTrainingOptions")
    opts.update(sample_steps=2, gradient_checkpointing=False, **(options or {}))
    values = host.defaults(node)
    values.update(
        model=[loader, 3],
        output_name=f"{prefix}_test",
        instance_prompt="a photo of sks shape",
        class_prompt="a photo of shape",
        steps=3,
        instance_folder=f"{prefix}_subject",
        class_folder=f"{prefix}_class",
        options=[opt_id, 0],
    )
    values.update(inputs)
    return {
        loader: {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": base_name}},
        train: {"class_type": node, "inputs": values},
        opt_id: {"class_type": "LikenessTrainingOptions", "inputs": opts},
    }


# Run with the host's Python: load the checkpoint once, then each LoRA the way LoraLoader does, and ComfyUI's own
# weight-patch maths per patched weight; prints, per LoRA file, the size of each change and the log of its loading.
COMFY_LORA_PATCHES = r"""
import io, json, logging, sys
comfy_dir, ckpt, strength, loras = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
sys.path.insert(0, comfy_dir)
buf = io.StringIO()
logging.basicConfig(stream=buf, level=logging.INFO, force=True)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
torch.set_grad_enabled(False)
import comfy.sd, comfy.utils
model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
def changes(patcher):
    sd = patcher.model_state_dict()
    out = {}
    for key, patches in patcher.patches.items():
        w = sd[key].float().clone()
        new = patcher.calculate_weight(patches, w.clone(), key)
        out[key] = float((new.float() - w).norm())
    return out
result = {}
for path in loras:
    buf.seek(0)
    buf.truncate()
    lora = comfy.utils.load_torch_file(path, safe_load=True)
    m2, c2 = comfy.sd.load_lora_for_models(model, clip, lora, strength, strength)
    result[path] = {"unet": changes(m2), "clip": changes(c2.patcher), "log": buf.getvalue()}
print(json.dumps(result))
"""


def comfy_lora_patches(host, base_name: str, loras: list[Path], tmp_path: Path, strength: float = 1.0) -> dict:
    """Per LoRA file (by stem): ComfyUI's own patches on the host's checkpoint ``base_name`` (``unet``/``clip``: the
    size of each weight's change) and what loading it logged (``log``)."""
    script = tmp_path / "count_patches.py"
    script.write_text(COMFY_LORA_PATCHES)
    ckpt = (host.checkpoints_dir / base_name).resolve()
    run = subprocess.run(
        [str(host.install.python), str(script), str(host.install.comfy_dir), str(ckpt), str(strength),
         *map(str, loras)], cwd=str(host.install.comfy_dir), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return {Path(k).stem: v for k, v in out.items()}
