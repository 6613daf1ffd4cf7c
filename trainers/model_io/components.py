"""Diffusers components of an SD1.x model, loaded from a single file, a diffusers folder or a ``ModelHandle``.

The model configs come from the pack (``configs/sd15``, see ``model_configs``), adjusted to the shapes found in the file (so merges,
fine-tunes and our tiny test models all load); nothing is fetched from a hub. Weights are loaded into modules built
on the meta device, so a model is never held twice in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from .convert import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    KeyTable,
    module_tables,
    modules_to_ldm,
    text_table,
    to_diffusers_tensor,
    unet_table,
    vae_table,
)
from .diffusers_folder import folder_sources, is_diffusers_folder, load_folder, not_a_diffusers_folder
from .model_configs import (
    build_text_encoder,
    build_unet,
    build_vae,
    bundled_config,
    configs_from_metadata,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
)
from .reader import read_checkpoint, read_vae_file
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The diffusers pieces of an SD1.x model. ``tokenizer`` may be None when none was asked for."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ model building


def _load_into(model, table: KeyTable, ldm_sd: dict[str, Any], what: str, path: Any, dtype, consume: bool = False):
    expected = table.ldm_keys()
    present = {k for k in ldm_sd if k in expected}
    missing = sorted(expected - present)
    if missing:
        raise CheckpointError(
            f"{path}: the {what} is incomplete or not SD1-shaped: {len(missing)} weights missing, e.g. {missing[:3]}"
        )
    extra = sorted(
        k for k in ldm_sd if k not in expected and k.startswith(_PREFIX_OF[what]) and not k.endswith("position_ids")
    )
    if extra:
        raise CheckpointError(f"{path}: the {what} has {len(extra)} unexpected weights, e.g. {extra[:3]}")
    state = {}
    for diff_key, ldm_key in table.to_ldm.items():
        t = to_diffusers_tensor(table, diff_key, ldm_sd.pop(ldm_key) if consume else ldm_sd[ldm_key])
        state[diff_key] = t.to(dtype) if t.is_floating_point() else t
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the {what} weights do not fit an SD1 {what}: {str(e)[:400]}") from e
    model.eval()
    model.requires_grad_(False)
    return model


_PREFIX_OF = {"UNet": UNET_PREFIX, "VAE": VAE_PREFIX, "text encoder": TEXT_PREFIX}


def make_noise_scheduler(config: dict[str, Any] | None = None):
    """The DDPM training scheduler with SD1.5's noise schedule (epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config or bundled_config("scheduler"))


def components_from_ldm(
    sd: dict[str, Any],
    *,
    metadata: dict[str, str] | None = None,
    dtype=None,
    path: Any = "<state dict>",
    consume: bool = False,
):
    """(unet, vae, text_encoder, configs) from a full LDM-layout SD1 state dict; ``consume`` empties ``sd`` as the
    components are filled (lower peak memory)."""
    import torch

    dtype = dtype or torch.float32
    hints = configs_from_metadata(metadata or {})
    unet, ucfg = unet_from_ldm(sd, hints.get("unet"), dtype, path, consume)
    vae, vcfg = vae_from_ldm(sd, hints.get("vae"), dtype, path, consume)
    te, tcfg = text_encoder_from_ldm(sd, hints.get("text_encoder"), dtype, path, consume)
    return unet, vae, te, {"unet": ucfg, "vae": vcfg, "text_encoder": tcfg}


def unet_from_ldm(sd: dict[str, Any], hint: dict[str, Any] | None, dtype, path: Any, consume: bool = False):
    cfg = infer_unet_config(sd, hint)
    model = build_unet(cfg)
    return _load_into(model, unet_table(cfg, model.state_dict().keys()), sd, "UNet", path, dtype, consume), cfg


def vae_from_ldm(sd: dict[str, Any], hint: dict[str, Any] | None, dtype, path: Any, consume: bool = False):
    cfg = infer_vae_config(sd, hint)
    model = build_vae(cfg)
    return _load_into(model, vae_table(cfg, model.state_dict().keys()), sd, "VAE", path, dtype, consume), cfg


def text_encoder_from_ldm(sd: dict[str, Any], hint: dict[str, Any] | None, dtype, path: Any, consume: bool = False):
    cfg = infer_text_config(sd, hint)
    model = build_text_encoder(cfg)
    return _load_into(model, text_table(model.state_dict().keys()), sd, "text encoder", path, dtype, consume), cfg


def ldm_tables(components: Components) -> dict[str, KeyTable]:
    """The key tables of the three components (diffusers key -> LDM key)."""
    return module_tables(components.unet, components.vae, components.text_encoder)


def components_to_ldm(components: Components, dtype=None) -> dict[str, Any]:
    """One LDM-layout state dict (full prefixes) from the components; ``dtype`` casts floating tensors."""
    return modules_to_ldm(components.unet, components.vae, components.text_encoder, dtype)


# ------------------------------------------------------------------------------------------------------- loading


def _resolve_tokenizer(tokenizer: Any, folder: Path | None):
    """tokenizer: a CLIPTokenizer, a path, None (take the folder's, else error) or False (do not load one)."""
    if tokenizer is False:
        return None
    if tokenizer is None:
        if folder is not None and (folder / "tokenizer").is_dir():
            return load_tokenizer(folder / "tokenizer")
        raise ConfigError(
            "no tokenizer: a single-file checkpoint does not contain one. Pass the SD1 CLIP tokenizer folder "
            "(inside ComfyUI: comfy/sd1_tokenizer; else the 'tokenizer' folder of a diffusers SD1.5 model)"
        )
    if isinstance(tokenizer, (str, Path)):
        return load_tokenizer(tokenizer)
    if getattr(tokenizer, "model_max_length", 77) != 77:
        tokenizer.model_max_length = 77
    return tokenizer


def _folder_modules(folder: Path, vae_path: Any, dtype) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """(unet, vae, text_encoder, scheduler config, info) of a diffusers folder; ``vae_path`` replaces its VAE."""
    unet, vae, te, sched_cfg, info = load_folder(folder, dtype)
    if vae_path:  # a separate VAE replaces the folder's
        vae, _ = vae_from_ldm(read_vae_file(Path(vae_path)), None, dtype, vae_path)
        info["sources"] = {"vae": str(vae_path)}
    info.update({"variant": "sd1", "path": str(folder)})
    info["sources"] = {**folder_sources(folder), **info.get("sources", {})}
    return unet, vae, te, sched_cfg, info


def _file_modules(path: Path, ema: str, vae_path: Any, base_path: Any, dtype) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(unet, vae, text_encoder, info) of a single-file checkpoint (with its separate VAE / base, if any)."""
    ckpt = read_checkpoint(path, ema=ema, vae_path=vae_path, base_path=base_path)
    unet, vae, te, configs = components_from_ldm(
        ckpt.state_dict, metadata=ckpt.info.get("metadata"), dtype=dtype, path=path, consume=True
    )
    info = {k: v for k, v in ckpt.info.items() if k != "metadata"}
    info["configs"] = configs
    return unet, vae, te, info


def load_components(source: Any, *, tokenizer: Any = None, dtype=None, device: Any = "cpu") -> Components:
    """Diffusers components from a ``ModelHandle``, a single-file checkpoint or a diffusers folder.

    ``tokenizer``: a ``CLIPTokenizer``, a path to one, or None (take the diffusers folder's; a single file has none,
    which is an error). ``dtype`` defaults to float32. Weights are frozen (``requires_grad`` False) and in eval mode.
    """
    import torch

    from ..handles import ModelHandle

    dtype = dtype or torch.float32
    if isinstance(source, ModelHandle):
        path, vae_path, base_path, ema = Path(source.path), source.vae_path, source.base_path, source.ema
    else:
        path, vae_path, base_path, ema = Path(source), None, None, "auto"
    if is_diffusers_folder(path):
        unet, vae, te, sched_cfg, info = _folder_modules(path, vae_path, dtype)
        tok = _resolve_tokenizer(tokenizer, path)
    else:
        if path.is_dir():
            raise not_a_diffusers_folder(path)
        tok = _resolve_tokenizer(tokenizer, None)
        unet, vae, te, info = _file_modules(path, ema, vae_path, base_path, dtype)
        sched_cfg = None
    unet.to(device)
    vae.to(device)
    te.to(device)
    return Components(unet, vae, te, tok, make_noise_scheduler(sched_cfg), info)


def make_pipeline(components: Components, scheduler: Any):
    """A diffusers ``StableDiffusionPipeline`` sharing ``components``' modules (no copies, no safety checker), in eval
    mode with its progress bar off. ``scheduler`` is a diffusers scheduler made by the caller (sampler choice)."""
    from diffusers import StableDiffusionPipeline

    for module in (components.unet, components.vae, components.text_encoder):
        module.eval()
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
