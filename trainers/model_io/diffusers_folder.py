"""Diffusers SD1.x folders (``unet/``, ``vae/``, ``text_encoder/``, ``model_index.json``): recognise one, refuse
SDXL/SD2/inpainting folders, load its three modules from local files, or read it as one LDM-layout state dict.

diffusers/transformers/torch are imported only inside the loading functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .convert import modules_to_ldm
from .detect import state_dict_dtype


def is_diffusers_folder(p: Path) -> bool:
    return p.is_dir() and (p / "unet").is_dir() and ((p / "model_index.json").is_file() or (p / "vae").is_dir())


def not_a_diffusers_folder(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a folder but not a diffusers model (needs unet/, vae/, text_encoder/ and model_index.json)"
    )


def folder_sources(folder: Path) -> dict[str, str]:
    """Where each component of a folder's model comes from: the folder itself."""
    return {"unet": str(folder), "vae": str(folder), "text_encoder": str(folder)}


def _check_diffusers_sd1(folder: Path, unet_cfg: dict[str, Any]) -> None:
    ctx = unet_cfg.get("cross_attention_dim")
    if unet_cfg.get("addition_embed_type") or ctx == 2048:
        raise CheckpointError(f"{folder} is an SDXL diffusers model; Likeness trains SD1.x only")
    if ctx == 1024 or unet_cfg.get("use_linear_projection"):
        raise CheckpointError(f"{folder} is a Stable Diffusion 2.x diffusers model; Likeness trains SD1.x only")
    if unet_cfg.get("in_channels", 4) != 4:
        raise CheckpointError(
            f"{folder}: the UNet takes {unet_cfg.get('in_channels')} input channels (inpainting?); Likeness trains "
            "text-to-image SD1.x only"
        )


# The one weight file of each module in a plain diffusers folder (no shards, no fp16/EMA variants, no pickles).
WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


def _plain_files(folder: Path) -> dict[str, Path] | None:
    """Each module's config and single safetensors file, when the folder is laid out that plainly; else None."""
    files = {}
    for name, weights in WEIGHT_FILES.items():
        d = folder / name
        if not (d / "config.json").is_file() or sorted(q.name for q in d.glob("*.safetensors")) != [weights]:
            return None
        if any(d.glob("*.bin")) or any(d.glob("*.index.json")):
            return None
        files[name] = d / weights
    return files


def _matching_keys(module: Any, tensors: dict[str, Any]) -> dict[str, Any] | None:
    """The file's tensors under the module's own names (the CLIP text model's ``text_model.`` level added or dropped
    as this transformers spells it, a saved ``position_ids`` buffer it does not keep left out), or None when the
    names still differ: a layout older than the module (diffusers' renamed attention weights, say)."""
    expected = set(module.state_dict().keys())
    if set(tensors) == expected:
        return tensors
    with_level = any(k.startswith("text_model.") for k in expected)
    out = {}
    for key, tensor in tensors.items():
        bare = key.removeprefix("text_model.")
        name = "text_model." + bare if with_level else bare
        if name in expected or not name.endswith("position_ids"):
            out[name] = tensor
    return out if set(out) == expected else None


def _load_plain(files: dict[str, Path], dtype) -> tuple[Any, Any, Any] | None:
    """The three modules of a plain folder, built from its configs on the meta device and given the weights read
    straight from its safetensors files (one tensor at a time, cast to ``dtype``), or None when a file's names are
    not the modules' own (then ``from_pretrained`` converts them). The same tensors ``from_pretrained`` would
    load, without its set-up: transformers 5 compiles ~1000 key-conversion patterns on its first load, ~0.15 s of a
    tiny model's start-up."""
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    from .model_configs import _empty, build_unet, build_vae

    unet = build_unet(json.loads(files["unet"].with_name("config.json").read_text()))
    vae = build_vae(json.loads(files["vae"].with_name("config.json").read_text()))
    te = _empty(CLIPTextModel, CLIPTextConfig.from_pretrained(files["text_encoder"].parent, local_files_only=True))
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        with safe_open(str(files[name]), framework="pt") as f:
            tensors = {}
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                t = f.get_tensor(key)
                tensors[key] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t
        state = _matching_keys(module, tensors)
        if state is None:
            return None
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(f"{files[name]}: the weights do not fit its config.json: {str(e)[:400]}") from e
    return unet, vae, te


def load_folder(folder: Path, dtype) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """(unet, vae, text_encoder, scheduler config or None, info) of a diffusers SD1 folder, frozen, in eval mode;
    ``info`` holds format, EMA flags and the weights' dtype. A plain folder (one safetensors file per module) is
    read directly (:func:`_load_plain`); any other layout goes through diffusers' and transformers'
    ``from_pretrained``."""
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    _check_diffusers_sd1(folder, unet_cfg)
    files = _plain_files(folder)
    try:
        modules = _load_plain(files, dtype) if files else None
    except CheckpointError:
        raise
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder} is not a complete diffusers SD1.5 folder: {e}") from e
    if modules is None:
        modules = _load_pretrained(folder, dtype)
    unet, vae, te = modules
    sched_dir = folder / "scheduler"
    sched_cfg = None
    if (sched_dir / "scheduler_config.json").is_file():
        sched_cfg = json.loads((sched_dir / "scheduler_config.json").read_text())
    for m in (unet, vae, te):
        m.eval()
        m.requires_grad_(False)
    info = {"format": "diffusers", "ema_used": False, "ema_present": False}
    info["dtype"] = state_dict_dtype(dict(unet.state_dict()))
    return unet, vae, te, sched_cfg, info


def _load_pretrained(folder: Path, dtype) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, local_files_only=True)
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder} is not a complete diffusers SD1.5 folder: {e}") from e
    return unet, vae, te


def describe_folder(folder: Path) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """What :func:`load_folder` returns, built from the folder's configs on the meta device: every key and shape,
    no weights read (inspecting a 4 GB folder costs milliseconds). Weight files that are not safetensors are loaded
    as before."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = {name: folder / name for name in ("unet", "vae", "text_encoder")}
    if not all((d / "config.json").is_file() and list(d.glob("*.safetensors")) for d in parts.values()):
        return load_folder(folder, torch.float32)
    configs = {name: json.loads((d / "config.json").read_text()) for name, d in parts.items()}
    _check_diffusers_sd1(folder, configs["unet"])
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(configs["unet"])
            vae = AutoencoderKL.from_config(configs["vae"])
            te = CLIPTextModel(CLIPTextConfig.from_pretrained(parts["text_encoder"], local_files_only=True))
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder} is not a complete diffusers SD1.5 folder: {e}") from e
    return unet, vae, te, None, {"format": "diffusers", "ema_used": False, "ema_present": False, "dtype": "fp32"}


def read_folder(folder: Path, load: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """A diffusers SD1 folder as (one float32 LDM-layout state dict with full prefixes, info); ``load=False``
    gives meta tensors (keys and shapes only)."""
    import torch

    if not is_diffusers_folder(folder):
        raise not_a_diffusers_folder(folder)
    unet, vae, te, _, info = load_folder(folder, torch.float32) if load else describe_folder(folder)
    info.update({"variant": "sd1", "path": str(folder)})
    info["sources"] = folder_sources(folder)
    return modules_to_ldm(unet, vae, te), info
