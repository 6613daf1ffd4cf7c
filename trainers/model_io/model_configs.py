"""SD1.x model configs: the pack's bundled SD1.5 configs (``configs/sd15``), configs inferred from the shapes of an
LDM state dict (merges, fine-tunes, tiny test models), and empty modules built from a config on the meta device.

Nothing is fetched from a hub. diffusers/transformers are imported only inside the functions that build modules.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .convert import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "sd15"
CONFIG_METADATA_KEY = "likeness.configs"  # JSON of the diffusers configs, written by our exporter


def bundled_config(name: str) -> dict[str, Any]:
    """One of the pack's SD1.5 configs: "unet", "vae", "text_encoder", "scheduler" or "model_index"."""
    path = CONFIG_DIR / "model_index.json" if name == "model_index" else CONFIG_DIR / name
    if path.is_dir():
        path = next(path.glob("*config.json"))
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------- configs from shapes


def _public(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config without diffusers' private entries (``_class_name``, ``_diffusers_version``, ...)."""
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
    """SD1.5's VAE config with channels, layer counts and latent channels read from the LDM keys."""
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
    """SD1.5's CLIP text config with vocabulary, width, depth and heads read from the LDM keys."""
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


def configs_from_metadata(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The diffusers configs our exporter wrote into a file's header (``CONFIG_METADATA_KEY``), {} when none."""
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
    """A module built on the meta device (no memory until weights are assigned)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return cls_or_factory(*args)


def build_unet(config: dict[str, Any]):
    from diffusers import UNet2DConditionModel

    return _empty(UNet2DConditionModel.from_config, config)


def build_vae(config: dict[str, Any]):
    from diffusers import AutoencoderKL

    return _empty(AutoencoderKL.from_config, config)


def build_text_encoder(config: dict[str, Any]):
    from transformers import CLIPTextConfig, CLIPTextModel

    return _empty(CLIPTextModel, CLIPTextConfig(**_public(config)))
