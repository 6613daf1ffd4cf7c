"""LoHa, LoKr and DoRA from Likeness LoRA Train on a real ComfyUI (the 2024-03 host, or any ``COMFYUI_DIR``), loaded
by ComfyUI's own LoRA code (the functions core LoraLoader calls, and LoraLoader -> KSampler in the server): every key
loaded, one patch per trained layer, each change as our maths says, strength 0 the base image, strength 1 not; and
continue_lora on the node.

What a host does with DoRA depends on its version, read from its own source (``dora_support``): ComfyUI from 2025-04
on applies output-axis DoRA (peft's); the 2024-03 release has no DoRA at all: it logs "lora key not loaded" for
each ``dora_scale`` key and applies the LoRA part alone. The test checks exactly that on such a host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import comfy_lora_patches, training_inputs

pytestmark = pytest.mark.host

NODE = "LikenessLoRATrain"
BASE = "likeness_lora_base.safetensors"  # the same link as test_host_lora.py (add_model is idempotent)
RES = 64
# output name -> (lora_type, dora, rank, alpha); LoKr rank 16 gives both full and low-rank w2 on 320/768/1280/3072
VARIANTS = {
    "lorav_loha": ("loha", False, 4, 2.0),
    "lorav_lokr": ("lokr", False, 16, 8.0),
    "lorav_dora": ("lora", True, 4, 2.0),
}


def dora_support(comfy_dir: Path) -> str:
    """What the host's LoRA code does with a ``dora_scale`` key: "output-axis" (2025-04 on), "input-axis" (mid 2024
    to 2025-04: only LyCORIS' old layout), or "none" (the 2024-03 release)."""
    base = comfy_dir / "comfy" / "weight_adapter" / "base.py"
    if base.is_file() and "wd_on_output_axis" in base.read_text():
        return "output-axis"
    return "input-axis" if "dora_scale" in (comfy_dir / "comfy" / "lora.py").read_text() else "none"


def _not_loaded(log: str) -> list[str]:
    return [line for line in log.splitlines() if "lora key not loaded" in line or "NOT LOADED" in line]


@pytest.fixture(scope="module")
def host(comfy_host, comfy_tiny_checkpoint):
    return training_inputs(comfy_host, comfy_tiny_checkpoint, BASE, "lorav", RES)


def _lora_node(name: str, loader: str = "1", options: str = "9", **widgets) -> dict:
    kind, dora, rank, alpha = VARIANTS.get(name, ("lora", False, 4, 2.0))
    values = dict(
        model=[loader, 3], output_name=name, instance_prompt="a photo of sks shape", class_prompt="a photo of shape",
        steps=2, resolution=RES, learning_rate=1e-2, lora_rank=rank, lora_alpha=alpha, lora_layers="all",
        train_text_encoder=True, instance_folder="lorav_subject", class_folder="lorav_class", options=[options, 0],
        lora_type=kind, dora=dora,
    ) | widgets  # fmt: skip
    return {"class_type": NODE, "inputs": values}


def _graph(host, nodes: dict[str, dict]) -> dict:
    opts = host.defaults("LikenessTrainingOptions")
    opts.update(sample_steps=2, gradient_checkpointing=False, text_encoder_lr=1e-2)
    graph = {
        "1": {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": BASE}},
        "9": {"class_type": "LikenessTrainingOptions", "inputs": opts},
    }
    for node_id, node in nodes.items():
        node["inputs"] = host.defaults(NODE) | node["inputs"]
        graph[node_id] = node
    return graph


@pytest.fixture(scope="module")
def trained(host) -> dict[str, Path]:
    """One prompt training the three types (2 steps each, every layer, text encoder too)."""
    nodes = {str(20 + i): _lora_node(name) for i, name in enumerate(VARIANTS)}
    result = host.run(_graph(host, nodes), timeout=1500).check()
    for node_id in nodes:
        ends = [d for d in result.events("likeness.end") if str(d.get("node_id")) == node_id]
        assert ends and ends[-1]["state"] == "finished", ends
    paths = {name: host.loras_dir / "likeness" / f"{name}.safetensors" for name in VARIANTS}
    assert all(p.is_file() for p in paths.values()), sorted((host.loras_dir / "likeness").glob("*"))
    return paths


def _counts(host, loras: list[Path], tmp_path: Path, strength: float = 1.0) -> dict[str, dict]:
    return comfy_lora_patches(host, BASE, loras, tmp_path, strength)


def _ours(host, path: Path) -> tuple[object, dict, dict]:
    """The file as our reader sees it, the base weight of each of its layers (our own loader), and the layer
    count the trainer adapts with lora_layers=all (UNet, text encoder)."""
    from trainers.lora import adapters, kohya
    from trainers.model_io import load_components

    comps = load_components(str((host.checkpoints_dir / BASE).resolve()), tokenizer=False)
    f = kohya.read_kohya(path)
    unet, te = kohya.resolve(f, comps.unet, comps.text_encoder)
    bases = {n: comps.unet.get_submodule(n).weight.float() for n in unet}
    bases.update({n: comps.text_encoder.get_submodule(n).weight.float() for n in te})
    wanted = (
        len(adapters.unet_target_names(comps.unet, "all")),
        len(adapters.text_encoder_target_names(comps.text_encoder, "all")),
    )
    return {**unet, **te}, bases, {"unet": wanted[0], "clip": wanted[1], "file": (len(unet), len(te))}


def _base_norm_dora(w, base):
    """ComfyUI's output-axis DoRA as its base.py computes it (up to 0.3.64, ComfyUI PR #15458 open): the magnitude
    over the *base* weight's norm, m * (W + dW) / (||W|| + eps), instead of DoRA's ||W + dW||."""
    import torch

    merged = base + w.delta(shape=base.shape)
    norm = base.reshape(base.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (base.dim() - 1))
    return merged * (w.dora_scale.float().reshape(norm.shape) / (norm + torch.finfo(torch.float32).eps)) - base


def test_lycoris_files_load_in_the_core_lora_loader(host, trained, tmp_path):
    support = dora_support(host.install.comfy_dir)
    if support == "input-axis":
        pytest.skip(f"{host.install.label} applies DoRA on the input axis only (ComfyUI mid-2024 to 2025-04)")
    got = _counts(host, list(trained.values()), tmp_path)
    report = {}
    for name, (_, dora, _, _) in VARIANTS.items():
        layers, bases, n = _ours(host, trained[name])
        seen = got[name]
        assert n["file"] == (n["unet"], n["clip"]), n  # the file holds every trained layer
        assert len(seen["unet"]) == n["unet"] and len(seen["clip"]) == n["clip"], (name, support)
        lost = _not_loaded(seen["log"])
        have = sorted(list(seen["unet"].values()) + list(seen["clip"].values()))
        if dora and support == "none":  # 2024-03: the magnitudes are not read, the LoRA part is applied alone
            assert len(lost) == len(layers) and all(line.endswith(".dora_scale") for line in lost), lost[:3]
            want = sorted(float(w.delta(shape=bases[k].shape).norm()) for k, w in layers.items())
            np.testing.assert_allclose(have, want, rtol=2e-3, atol=1e-6)
            report[name] = "LoRA part only (dora_scale not loaded)"
            continue
        assert lost == [], (name, lost[:3])
        want = sorted(float(w.update(bases[k]).norm()) for k, w in layers.items())
        if not dora:
            np.testing.assert_allclose(have, want, rtol=2e-3, atol=1e-6)
            continue
        variant = sorted(float(_base_norm_dora(w, bases[k]).norm()) for k, w in layers.items())
        exact = np.allclose(have, want, rtol=2e-3, atol=1e-6)
        assert exact or np.allclose(have, variant, rtol=2e-3, atol=1e-6), "the host's DoRA is neither formula"
        gap = float(np.max(np.abs(np.array(variant) - np.array(want)) / np.maximum(want, 1e-12)))
        report[name] = "DoRA as trained" if exact else f"DoRA normalised by ||W|| (largest change off by {gap:.1%})"
    print(f"{host.install.label}: {report}")


APPLY_NODE_PATCHES = r"""
import io, json, logging, sys, types
comfy_dir, pack, ckpt, lora_path = sys.argv[1:5]
sys.path.insert(0, comfy_dir)
logging.basicConfig(stream=io.StringIO(), level=logging.INFO, force=True)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
torch.set_grad_enabled(False)
import comfy.sd, comfy.utils
for name, folder in (("likeness", pack), ("likeness.nodes", pack + "/nodes")):  # the bridge without the node table
    module = types.ModuleType(name)
    module.__path__ = [folder]
    sys.modules[name] = module
from likeness.nodes import bridge
model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
def changes(patcher):
    sd = patcher.model_state_dict()
    return [float((patcher.calculate_weight(p, sd[k].float().clone(), k).float() - sd[k].float()).norm())
            for k, p in patcher.patches.items()]
out = {}
for strength in (1.0, 0.5):
    m2, c2, lost = bridge.apply_lora_for_host(model, clip, lora, strength, strength)
    out[str(strength)] = {"changes": changes(m2) + changes(c2.patcher), "lost": lost}
print(json.dumps(out))
"""


def test_the_apply_node_lands_dora_as_trained_on_this_host(host, trained, tmp_path):
    """Likeness Apply Trained Model computes each DoRA layer's change from the host's own base weight, as training
    did, and adds it as a weight difference: on every host (the 2024-03 release, which ignores ``dora_scale``, too)
    every layer lands, each change is ours to float precision, and strength scales it."""
    import json
    import subprocess

    from conftest import ROOT

    script = tmp_path / "apply_patches.py"
    script.write_text(APPLY_NODE_PATCHES)
    ckpt = (host.checkpoints_dir / BASE).resolve()
    run = subprocess.run(
        [str(host.install.python), str(script), str(host.install.comfy_dir), str(ROOT), str(ckpt),
         str(trained["lorav_dora"])], cwd=str(host.install.comfy_dir), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    layers, bases, n = _ours(host, trained["lorav_dora"])
    want = sorted(float(w.update(bases[k]).norm()) for k, w in layers.items())
    assert len(want) == n["unet"] + n["clip"]
    for strength in (1.0, 0.5):
        seen = got[str(strength)]
        assert seen["lost"] == [], seen["lost"][:3]
        np.testing.assert_allclose(sorted(seen["changes"]), np.array(want) * strength, rtol=2e-3, atol=1e-6)


def _sample_graph(loras: dict[str, Path]) -> dict:
    """Core nodes only: the base image, and each LoRA at strength 1 and 0 (LoraLoader -> KSampler -> SaveImage)."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BASE}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": RES, "height": RES, "batch_size": 1}},
    }
    branches = [("base", None, 0.0)] + [(f"{n}_{s}", n, s) for n in loras for s in (1.0, 0.0)]
    for i, (tag, name, strength) in enumerate(branches):
        model, clip, b = ["1", 0], ["1", 1], 100 + 10 * i
        if name is not None:
            graph[str(b)] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": f"likeness/{loras[name].name}",
                "strength_model": strength, "strength_clip": strength}}  # fmt: skip
            model, clip = [str(b), 0], [str(b), 1]
        graph.update({
            str(b + 1): {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks shape", "clip": clip}},
            str(b + 2): {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
            str(b + 3): {"class_type": "KSampler", "inputs": {
                "model": model, "positive": [str(b + 1), 0], "negative": [str(b + 2), 0], "latent_image": ["4", 0],
                "seed": 3, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            str(b + 4): {"class_type": "VAEDecode", "inputs": {"samples": [str(b + 3), 0], "vae": ["1", 2]}},
            str(b + 5): {"class_type": "SaveImage", "inputs": {"images": [str(b + 4), 0], "filename_prefix": tag}},
        })  # fmt: skip
    return graph


def test_strength_zero_is_the_base_image_and_one_differs(host, trained):
    graph = _sample_graph(trained)
    log_start = len(host.log_text())
    result = host.run(graph, timeout=900).check()
    pixels = {}
    for node in graph.values():
        if node["class_type"] == "SaveImage":
            save_id = next(k for k, v in graph.items() if v is node)
            (path,) = result.images(save_id)
            pixels[node["inputs"]["filename_prefix"]] = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    lost = _not_loaded(host.log_text()[log_start:])
    if dora_support(host.install.comfy_dir) == "none":
        assert all(".dora_scale" in line for line in lost), lost[:3]  # only the DoRA magnitudes (see above)
    else:
        assert lost == [], lost[:3]
    for name in trained:
        assert np.array_equal(pixels[f"{name}_0.0"], pixels["base"]), f"{name} at strength 0 is not the base image"
        assert np.abs(pixels[f"{name}_1.0"] - pixels["base"]).max() > 0, f"{name} at strength 1 changes nothing"


def test_continue_a_lora_on_the_node(host, trained, tmp_path):
    """continue_lora lists the trained files; continuing the LoKr one trains a new LoKr file with its layers (the
    node's own lora_type/rank are not used), which ComfyUI loads fully; the source file is untouched."""
    info = host.object_info(NODE)["input"]["optional"]["continue_lora"]
    choice = f"likeness/{trained['lorav_lokr'].name}"
    assert info[0][0] == "(none)" and choice in info[0]
    before = trained["lorav_lokr"].read_bytes()
    node = _lora_node("lorav_continued", continue_lora=choice, lora_type="loha", lora_rank=8, train_text_encoder=False)
    host.run(_graph(host, {"30": node}), timeout=900).check()
    out = host.loras_dir / "likeness" / "lorav_continued.safetensors"
    assert out.is_file() and trained["lorav_lokr"].read_bytes() == before
    from trainers.lora import kohya

    f, src = kohya.read_kohya(out), kohya.read_kohya(trained["lorav_lokr"])
    assert f.kinds == {"lokr"} and set(f.layers) == set(src.layers)
    assert f.metadata["likeness.continued_from"] == trained["lorav_lokr"].name
    te = [k for k in src.text_encoder_layers]
    assert all(f.layers[k].w1.equal(src.layers[k].w1) for k in te)  # the text encoder did not train
    seen = _counts(host, [out], tmp_path)["lorav_continued"]
    assert _not_loaded(seen["log"]) == [] and len(seen["unet"]) + len(seen["clip"]) == len(f.layers)
