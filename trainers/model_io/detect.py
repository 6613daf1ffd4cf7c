"""Which model family a state dict belongs to, from its keys and a few shapes. Only SD1.x is accepted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .convert import TEXT_PREFIX, UNET_PREFIX

_DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "F16": "fp16", "BF16": "bf16", "F32": "fp32"}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _dtype(value: Any) -> str:
    name = getattr(value, "dtype_name", None) or str(value.dtype).removeprefix("torch.")
    return _DTYPE_NAMES.get(name, name)


def state_dict_dtype(state_dict: dict[str, Any]) -> str:
    """The dominant floating dtype of a state dict ("fp16", "bf16", "fp32"), by tensor count."""
    counts = Counter(_dtype(v) for v in state_dict.values())
    floats = {k: n for k, n in counts.items() if k in ("fp16", "bf16", "fp32", "float64")}
    return max(floats, key=floats.get) if floats else "unknown"


def _refuse(path: str | Path, found: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is {found}. Likeness trains Stable Diffusion 1.x (1.4/1.5 and their fine-tunes/merges) only; "
        "pick an SD1.5-based checkpoint"
    )


def detect_architecture(state_dict: dict[str, Any], path: str | Path = "<state dict>") -> str:
    """Return "sd1" for an SD1.x state dict (LDM layout, full prefixes), else raise a CheckpointError saying what
    the file is."""
    keys = list(state_dict)
    if not keys:
        raise CheckpointError(f"{path} holds no tensors; it is not a model checkpoint")
    if any("joint_blocks." in k for k in keys):
        raise _refuse(path, "a Stable Diffusion 3 model (MMDiT 'joint_blocks' found)")
    if any("double_blocks." in k for k in keys):
        raise _refuse(path, "a Flux model ('double_blocks' found)")
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise _refuse(path, "an SDXL model ('conditioner.embedders' found)")
    if any(k.startswith(UNET_PREFIX + "label_emb.") or k.startswith(UNET_PREFIX + "add_embedding.") for k in keys):
        raise _refuse(path, "an SDXL-type model (UNet with 'label_emb' size conditioning)")
    unet_keys = [k for k in keys if k.startswith(UNET_PREFIX)]
    if not unet_keys:
        if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys):
            raise CheckpointError(
                f"{path} is a diffusers-layout UNet file, not a full checkpoint; point Likeness at the whole diffusers "
                "folder (with model_index.json) or at a single-file SD1.5 checkpoint"
            )
        if any("lora_" in k for k in keys[:50]):
            raise CheckpointError(f"{path} is a LoRA, not a checkpoint; load it with a LoRA loader")
        raise CheckpointError(
            f"{path} has no Stable Diffusion UNet ('model.diffusion_model.*' keys; found e.g. {sorted(keys)[:3]}); "
            "it is not an SD checkpoint"
        )
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise CheckpointError(f"{path}: the UNet has no input convolution (input_blocks.0.0); the file is damaged")
    in_ch = _shape(conv_in)[1]
    context = None
    linear_proj = False
    for k in unet_keys:
        if k.endswith("attn2.to_k.weight") and context is None:
            context = _shape(state_dict[k])[1]
        if k.endswith(".proj_in.weight") and len(_shape(state_dict[k])) == 2:
            linear_proj = True
    if context == 2048:
        raise _refuse(path, "an SDXL model (cross-attention context 2048)")
    if context == 1024 or any(k.startswith("cond_stage_model.model.") for k in keys):
        raise _refuse(path, "a Stable Diffusion 2.x model (OpenCLIP text encoder, context 1024, often v-prediction)")
    if linear_proj:
        raise _refuse(path, "an SD2-style model (linear attention projections)")
    if in_ch == 9:
        raise _refuse(path, "an inpainting model (UNet input convolution takes 9 channels)")
    if in_ch == 8:
        raise _refuse(path, "an instruct-pix2pix model (UNet input convolution takes 8 channels)")
    if in_ch != 4:
        raise _refuse(path, f"not a standard latent model (UNet input convolution takes {in_ch} channels)")
    te = state_dict.get(TEXT_PREFIX + "text_model.embeddings.token_embedding.weight")
    if te is not None and context is not None and _shape(te)[1] != context:
        raise CheckpointError(
            f"{path}: text encoder width {_shape(te)[1]} does not match the UNet context {context}; the file mixes "
            "models and cannot be used"
        )
    return "sd1"


# ComfyUI recognises an SD1.5 UNet by these two numbers only (``comfy/supported_models.py``: SD15's unet_config);
# any other SD1-shaped file makes its loader fail deep inside with "'NoneType' object has no attribute ...".
COMFY_SD15_SHAPE = {"model_channels": 320, "context_dim": 768}


def unet_shape(state_dict: dict[str, Any]) -> dict[str, int | None]:
    """The UNet's ``model_channels`` (input convolution width) and ``context_dim`` (cross-attention input width)."""
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    context = next(
        (_shape(v)[1] for k, v in state_dict.items() if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")),
        None,
    )
    return {"model_channels": _shape(conv_in)[0] if conv_in is not None else None, "context_dim": context}


def comfy_load_problem(info: dict[str, Any], path: str | Path) -> str | None:
    """Why ComfyUI's own loader cannot load this SD1 checkpoint (None when it can), from ``read_checkpoint`` info."""
    shape = info.get("unet_shape") or {}
    if all(shape.get(k) == v for k, v in COMFY_SD15_SHAPE.items()):
        return None
    return (
        f"{path} is SD1-shaped but its UNet has model_channels {shape.get('model_channels')} and context "
        f"{shape.get('context_dim')}: ComfyUI recognises SD1.5 only at model_channels 320 and context 768, so its "
        "loader cannot load this file (a tiny test model, e.g. from an older 'python -m trainers demo'?). Pick a real "
        "SD1.5 checkpoint, or the ComfyUI-loadable tiny model the demo writes "
        "(likeness-output/models/checkpoints/likeness-tiny-sd15.safetensors)"
    )
