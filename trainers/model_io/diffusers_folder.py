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


def load_folder(folder: Path, dtype) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """(unet, vae, text_encoder, scheduler config or None, info) of a diffusers SD1 folder, frozen, in eval mode;
    ``info`` holds format, EMA flags and the weights' dtype."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    _check_diffusers_sd1(folder, unet_cfg)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, local_files_only=True)
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder} is not a complete diffusers SD1.5 folder: {e}") from e
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
