"""Diffusers components of an SD1.x model, loaded from a single file, a diffusers folder or a ``ModelHandle``.

The model configs come from the pack (``configs/sd15``), adjusted to the shapes found in the file (so merges,
fine-tunes and our tiny test models all load); nothing is fetched from a hub. Weights are loaded into modules built
on the meta device, so a model is never held twice in memory.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from .convert import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    KeyTable,
    text_table,
    to_diffusers_tensor,
    to_ldm_tensor,
    unet_table,
    vae_table,
)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd15"
CONFIG_METADATA_KEY = "likeness.configs"  # JSON of the diffusers configs, written by our exporter


@dataclass
class Components:
    """The diffusers pieces of an SD1.x model. ``tokenizer`` may be None when none was asked for."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    info: dict[str, Any] = field(default_factory=dict)


def bundled_config(name: str) -> dict[str, Any]:
    """One of the pack's SD1.5 configs: "unet", "vae", "text_encoder", "scheduler" or "model_index"."""
    path = CONFIG_DIR / "model_index.json" if name == "model_index" else CONFIG_DIR / name
    if path.is_dir():
        path = next(path.glob("*config.json"))
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------- configs from shapes


def _public(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def infer_unet_config(sd: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """SD1.5's UNet config with depth, channels, layer counts and context read from the LDM keys."""
    cfg = _public(copy.deepcopy(base or bundled_config("unet")))
    p = UNET_PREFIX
    levels: list[tuple[int, int, bool]] = []  # (channels, resnets, has attention)
    idx = 1
    while True:
        start, count, attn = idx, 0, False
        while p + f"input_blocks.{idx}.0.in_layers.0.weight" in sd:
            attn = attn or (p + f"input_blocks.{idx}.1.norm.weight" in sd)
            count, idx = count + 1, idx + 1
        if count == 0:
            break
        channels = sd[p + f"input_blocks.{start}.0.out_layers.3.weight"].shape[0]
        levels.append((channels, count, attn))
        if p + f"input_blocks.{idx}.0.op.weight" in sd:
            idx += 1
        else:
            break
    if not levels or len({n for _, n, _ in levels}) != 1:
        raise CheckpointError("the UNet's block layout is not SD1-like (could not read its levels)")
    cfg["block_out_channels"] = [c for c, _, _ in levels]
    cfg["layers_per_block"] = levels[0][1]
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for _, _, a in levels]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for _, _, a in reversed(levels)]
    cfg["in_channels"] = sd[p + "input_blocks.0.0.weight"].shape[1]
    cfg["out_channels"] = sd[p + "out.2.weight"].shape[0]
    for k, v in sd.items():
        if k.startswith(p) and k.endswith("attn2.to_k.weight"):
            cfg["cross_attention_dim"] = v.shape[1]
            break
    heads = cfg.get("attention_head_dim", 8)
    if isinstance(heads, int) and any(c % heads for c in cfg["block_out_channels"]):
        cfg["attention_head_dim"] = 1
    return cfg


def infer_vae_config(sd: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = _public(copy.deepcopy(base or bundled_config("vae")))
    p = VAE_PREFIX
    channels = []
    while p + f"encoder.down.{len(channels)}.block.0.conv2.weight" in sd:
        channels.append(sd[p + f"encoder.down.{len(channels)}.block.0.conv2.weight"].shape[0])
    if not channels:
        raise CheckpointError("the VAE's layout is not SD-like (no encoder.down.* blocks)")
    layers = 0
    while p + f"encoder.down.0.block.{layers}.conv1.weight" in sd:
        layers += 1
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = layers
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(channels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(channels)
    cfg["in_channels"] = sd[p + "encoder.conv_in.weight"].shape[1]
    cfg["out_channels"] = sd[p + "decoder.conv_out.weight"].shape[0]
    cfg["latent_channels"] = sd[p + "post_quant_conv.weight"].shape[0]
    return cfg


def infer_text_config(sd: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(base or bundled_config("text_encoder"))
    p = TEXT_PREFIX + "text_model."
    tok = sd[p + "embeddings.token_embedding.weight"]
    cfg["vocab_size"], cfg["hidden_size"] = tok.shape[0], tok.shape[1]
    cfg["max_position_embeddings"] = sd[p + "embeddings.position_embedding.weight"].shape[0]
    layers = 0
    while p + f"encoder.layers.{layers}.mlp.fc1.weight" in sd:
        layers += 1
    cfg["num_hidden_layers"] = layers
    cfg["intermediate_size"] = sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    if base is None or cfg["hidden_size"] % cfg.get("num_attention_heads", 12):
        cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    cfg["projection_dim"] = cfg["hidden_size"]
    return cfg


def _configs_from_metadata(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    raw = metadata.get(CONFIG_METADATA_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {k: v for k, v in data.items() if isinstance(v, dict)}
    except (json.JSONDecodeError, AttributeError):
        log.warning("ignoring unreadable %s metadata", CONFIG_METADATA_KEY)
        return {}


# ------------------------------------------------------------------------------------------------ model building


def _empty(cls_or_factory, *args):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls_or_factory(*args)


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


def build_unet(config: dict[str, Any]):
    from diffusers import UNet2DConditionModel

    return _empty(UNet2DConditionModel.from_config, config)


def build_vae(config: dict[str, Any]):
    from diffusers import AutoencoderKL

    return _empty(AutoencoderKL.from_config, config)


def build_text_encoder(config: dict[str, Any]):
    from transformers import CLIPTextConfig, CLIPTextModel

    return _empty(CLIPTextModel, CLIPTextConfig(**_public(config)))


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
    hints = _configs_from_metadata(metadata or {})
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
    return {
        "unet": unet_table(components.unet.config, components.unet.state_dict().keys()),
        "vae": vae_table(components.vae.config, components.vae.state_dict().keys()),
        "text_encoder": text_table(components.text_encoder.state_dict().keys()),
    }


def components_to_ldm(components: Components, dtype=None) -> dict[str, Any]:
    """One LDM-layout state dict (full prefixes) from the components; ``dtype`` casts floating tensors."""
    out: dict[str, Any] = {}
    tables = ldm_tables(components)
    for name, table in tables.items():
        for key, tensor in getattr(components, name).state_dict().items():
            t = to_ldm_tensor(table, key, tensor.detach())
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[table.to_ldm[key]] = t
    return out


def diffusers_vae_to_ldm(sd: dict[str, Any], path: Any = "<VAE>") -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` state dict -> LDM keys with the ``first_stage_model.`` prefix."""
    levels = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))}
    if not levels or not layers:
        raise CheckpointError(f"{path} is not a diffusers AutoencoderKL state dict")
    cfg = {"block_out_channels": [0] * (max(levels) + 1), "layers_per_block": max(layers) + 1}
    try:
        table = vae_table(cfg, sd.keys())
    except KeyError as e:
        raise CheckpointError(f"{path}: unexpected VAE key ({e})") from e
    return {table.to_ldm[k]: to_ldm_tensor(table, k, v) for k, v in sd.items()}


# ------------------------------------------------------------------------------------------------------- loading


def _is_diffusers_folder(p: Path) -> bool:
    return p.is_dir() and (p / "unet").is_dir() and ((p / "model_index.json").is_file() or (p / "vae").is_dir())


def _resolve_tokenizer(tokenizer: Any, folder: Path | None):
    """tokenizer: a CLIPTokenizer, a path, None (take the folder's, else error) or False (do not load one)."""
    from .tokenizer import load_tokenizer

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


def _load_folder(folder: Path, dtype) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
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
    return unet, vae, te, sched_cfg, {"format": "diffusers", "ema_used": False, "ema_present": False}


def load_components(source: Any, *, tokenizer: Any = None, dtype=None, device: Any = "cpu") -> Components:
    """Diffusers components from a ``ModelHandle``, a single-file checkpoint or a diffusers folder.

    ``tokenizer``: a ``CLIPTokenizer``, a path to one, or None (take the diffusers folder's; a single file has none,
    which is an error). ``dtype`` defaults to float32. Weights are frozen (``requires_grad`` False) and in eval mode.
    """
    import torch

    from ..handles import ModelHandle
    from .detect import state_dict_dtype
    from .reader import read_checkpoint

    dtype = dtype or torch.float32
    vae_path = base_path = None
    ema = "auto"
    if isinstance(source, ModelHandle):
        path, vae_path, base_path, ema = Path(source.path), source.vae_path, source.base_path, source.ema
    else:
        path = Path(source)
    if _is_diffusers_folder(path):
        unet, vae, te, sched_cfg, info = _load_folder(path, dtype)
        info["dtype"] = state_dict_dtype(dict(unet.state_dict()))
        if vae_path:  # a separate VAE replaces the folder's
            from .reader import read_vae_file

            vae, _ = vae_from_ldm(read_vae_file(Path(vae_path)), None, dtype, vae_path)
            info["sources"] = {"vae": str(vae_path)}
        tok = _resolve_tokenizer(tokenizer, path)
        info.update({"variant": "sd1", "path": str(path)})
        info["sources"] = {"unet": str(path), "vae": str(path), "text_encoder": str(path), **info.get("sources", {})}
    else:
        if path.is_dir():
            raise CheckpointError(
                f"{path} is a folder but not a diffusers model (needs unet/, vae/, text_encoder/ and model_index.json)"
            )
        tok = _resolve_tokenizer(tokenizer, None)
        ckpt = read_checkpoint(path, ema=ema, vae_path=vae_path, base_path=base_path)
        unet, vae, te, configs = components_from_ldm(
            ckpt.state_dict, metadata=ckpt.info.get("metadata"), dtype=dtype, path=path, consume=True
        )
        sched_cfg = None
        info = {k: v for k, v in ckpt.info.items() if k != "metadata"}
        info["configs"] = configs
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
