"""Loader nodes: Likeness Load Checkpoint (a civitai SD1.5 file -> MODEL/CLIP/VAE + a LIKENESS_MODEL handle)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import bridge

log = logging.getLogger(__name__)

VAE_OWN = "(checkpoint's own)"
EMA_CHOICES = ("auto", "ema", "non_ema")  # == trainers.model_io.reader.EMA_CHOICES (a unit test checks)


def _stamp(path: str | None) -> str:
    if not path:
        return ""
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _vae_path(vae_name: str | None) -> str | None:
    if not vae_name or vae_name == VAE_OWN:
        return None
    return bridge.full_path("vae", vae_name)


def check_host_can_load(handle) -> None:
    """Refuse, with what to do, an SD1-shaped file ComfyUI's own loader cannot recognise (it would fail inside with
    "'NoneType' object has no attribute ..."): its SD1.5 detection needs model_channels 320 and context 768."""
    from ..trainers.errors import CheckpointError
    from ..trainers.model_io.detect import comfy_load_problem

    problem = comfy_load_problem(handle.info or {}, handle.path)
    if problem:
        raise CheckpointError(problem)


def load_checkpoint(ckpt_path: str, vae_path: str | None = None, ema: str = "auto"):
    """Check and describe a checkpoint, then load it through ComfyUI's own loader.

    Returns ``(MODEL, CLIP, VAE, ModelHandle)``. Every file is read by our safe reader first (safetensors, or
    ``torch.load(weights_only=True)``): a refused architecture, a damaged file or a malicious pickle fails here with a
    ``CheckpointError``, before the host sees anything. The host only ever gets a ``.safetensors`` path (the file
    itself, or a normalized copy of a ``.ckpt``/EMA choice). A separate VAE reaches it as a state dict, or, for a
    file without a VAE of its own, baked into the normalized copy.
    """
    from ..trainers.errors import CheckpointError
    from ..trainers.model_io import host_loadable_file, make_model_handle

    handle = make_model_handle(ckpt_path, vae_path=vae_path, ema=ema)  # the whole model, as the trainers see it
    check_host_can_load(handle)
    vae_sd = None
    host_handle = handle
    if vae_path:
        try:
            host_handle = make_model_handle(ckpt_path, ema=ema)  # complete without the VAE: no copy needed
        except CheckpointError:
            host_handle = handle  # e.g. no VAE of its own: the host gets a copy with this VAE in it
        else:
            from ..trainers.model_io.reader import read_vae_file

            vae_sd = read_vae_file(Path(vae_path))
    host_file = host_loadable_file(host_handle)
    log.info("likeness: loading %s for ComfyUI from %s (ema=%s, vae=%s)", ckpt_path, host_file, ema, vae_path)
    model, clip, vae = bridge.load_checkpoint_for_host(host_file)
    if vae_sd is not None:
        vae = bridge.vae_from_state_dict(vae_sd)
    return model, clip, vae, handle


class LikenessLoadCheckpoint:
    DESCRIPTION = (
        "Loads a Stable Diffusion 1.5 checkpoint from models/checkpoints (.safetensors or an old .ckpt, fp16/fp32, "
        "with or without EMA weights), read safely: pickle files never run code. MODEL, CLIP and VAE come from "
        "ComfyUI's own loader, so you can sample the base model in the same graph; LIKENESS_MODEL is a light "
        "description of the same file (path, detected variant, content hash, VAE and EMA choice) from which the "
        "Likeness training nodes load the model when they run. SDXL, SD2, SD3, Flux and inpainting models are "
        "refused with a message saying what was found, and so is an SD1-shaped file ComfyUI's own loader cannot "
        "load (a UNet other than 320 channels with context 768)."
    )
    CATEGORY = "Likeness/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "LIKENESS_MODEL")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE", "likeness_model")
    OUTPUT_TOOLTIPS = (
        "The diffusion model, loaded by ComfyUI (connect to KSampler to try the base model).",
        "The text encoder, loaded by ComfyUI (connect to CLIP Text Encode).",
        "The VAE: the checkpoint's own, or the one chosen in vae_name.",
        "The checkpoint for the Likeness training nodes (a reference to the file, no weights in memory).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": (
                    bridge.filenames("checkpoints"),
                    {
                        "tooltip": "An SD1.5-based checkpoint in models/checkpoints (civitai .safetensors or .ckpt). "
                        "Other model families are refused."
                    },
                ),
            },
            "optional": {
                "vae_name": (
                    [VAE_OWN, *bridge.filenames("vae")],
                    {
                        "default": VAE_OWN,
                        "tooltip": "A separate VAE from models/vae to use instead of the checkpoint's own (also "
                        "for training), or '(checkpoint's own)'. Needed when the file holds only a UNet.",
                    },
                ),
                "ema": (
                    list(EMA_CHOICES),
                    {
                        "default": "auto",
                        "tooltip": "Which UNet weights to use when the file holds EMA weights too: auto = the "
                        "regular ones (EMA only if that is all there is), ema = the EMA copy, non_ema = the regular "
                        "ones. Files without EMA weights ignore this.",
                    },
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, ckpt_name, vae_name=VAE_OWN, ema="auto"):
        """Reload when a file with the same name was replaced (size or modification time changed)."""
        try:
            return "|".join((_stamp(bridge.full_path("checkpoints", ckpt_name)), _stamp(_vae_path(vae_name)), ema))
        except Exception:  # noqa: BLE001 - let load() report the missing file
            return ""

    def load(self, ckpt_name, vae_name=VAE_OWN, ema="auto"):
        if ema not in EMA_CHOICES:
            from ..trainers.errors import ConfigError

            raise ConfigError(f"ema={ema!r} is not one of {', '.join(EMA_CHOICES)}")
        ckpt_path = bridge.full_path("checkpoints", ckpt_name)
        return load_checkpoint(ckpt_path, _vae_path(vae_name), ema)


NODE_CLASS_MAPPINGS = {"LikenessLoadCheckpoint": LikenessLoadCheckpoint}
NODE_DISPLAY_NAME_MAPPINGS = {"LikenessLoadCheckpoint": "Likeness Load Checkpoint"}
