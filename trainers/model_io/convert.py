"""LDM (original Stable Diffusion / civitai) <-> diffusers key mapping for SD1.x.

One table per component, built from the component's diffusers config, maps every diffusers state-dict key to its
LDM key. The import uses the inverted table and the export the table itself, so an export is the exact inverse of an
import by construction (the table is checked to be one-to-one).

The table is made of module pairs ``(ldm_module, diffusers_module, kind)``; ``kind`` names the renaming of the
module's children (ResNet blocks and the VAE's attention differ between the two layouts, everything else keeps its
name). The VAE attention's q/k/v/proj are 1x1 convolutions in LDM and linear layers in diffusers: only their weight
shapes differ (``[C, C, 1, 1]`` vs ``[C, C]``).

Whole state dicts: three diffusers modules -> one LDM state dict, and a diffusers ``AutoencoderKL`` state dict (a
separate VAE file) -> LDM VAE keys. torch is never imported here; tensors come from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import CheckpointError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL = "text_model."

# children renamed inside a module pair, LDM name -> diffusers name
_CHILD_RENAMES: dict[str, dict[str, str]] = {
    "same": {},
    "unet_resnet": {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    },
    "vae_resnet": {"nin_shortcut": "conv_shortcut"},
    "vae_attn": {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
}
# LDM children whose weights are 1x1 convolutions where diffusers has linear layers
_CONV1X1 = {"vae_attn": {"q", "k", "v", "proj_out"}}

ModulePair = tuple[str, str, str]  # (ldm module, diffusers module, kind)


def _layers(config: Mapping[str, Any]) -> int:
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise ValueError(f"per-block layer counts {layers!r} are not SD1.x; expected one integer")
    return layers


def unet_module_pairs(config: Mapping[str, Any]) -> list[ModulePair]:
    """Module pairs of an SD1.x-style ``UNet2DConditionModel`` (any depth, channels, layer count)."""
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    n, layers = len(down), _layers(config)
    pairs: list[ModulePair] = [
        ("time_embed.0", "time_embedding.linear_1", "same"),
        ("time_embed.2", "time_embedding.linear_2", "same"),
        ("input_blocks.0.0", "conv_in", "same"),
        ("out.0", "conv_norm_out", "same"),
        ("out.2", "conv_out", "same"),
    ]
    for i, kind in enumerate(down):
        for j in range(layers):
            idx = 1 + i * (layers + 1) + j
            pairs.append((f"input_blocks.{idx}.0", f"down_blocks.{i}.resnets.{j}", "unet_resnet"))
            if "CrossAttn" in kind:
                pairs.append((f"input_blocks.{idx}.1", f"down_blocks.{i}.attentions.{j}", "same"))
        if i < n - 1:
            idx = 1 + i * (layers + 1) + layers
            pairs.append((f"input_blocks.{idx}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "same"))
    pairs.append(("middle_block.0", "mid_block.resnets.0", "unet_resnet"))
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        pairs.append(("middle_block.1", "mid_block.attentions.0", "same"))
        pairs.append(("middle_block.2", "mid_block.resnets.1", "unet_resnet"))
    else:
        pairs.append(("middle_block.1", "mid_block.resnets.1", "unet_resnet"))
    for i, kind in enumerate(up):
        attn = "CrossAttn" in kind
        for j in range(layers + 1):
            idx = i * (layers + 1) + j
            pairs.append((f"output_blocks.{idx}.0", f"up_blocks.{i}.resnets.{j}", "unet_resnet"))
            if attn:
                pairs.append((f"output_blocks.{idx}.1", f"up_blocks.{i}.attentions.{j}", "same"))
        if i < n - 1:
            idx = i * (layers + 1) + layers
            pairs.append((f"output_blocks.{idx}.{2 if attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv", "same"))
    return [(UNET_PREFIX + ldm, diff, kind) for ldm, diff, kind in pairs]


def vae_module_pairs(config: Mapping[str, Any]) -> list[ModulePair]:
    """Module pairs of an SD-style ``AutoencoderKL`` (any number of levels and layers)."""
    n, layers = len(config["block_out_channels"]), _layers(config)
    pairs: list[ModulePair] = [
        ("quant_conv", "quant_conv", "same"),
        ("post_quant_conv", "post_quant_conv", "same"),
    ]
    for side in ("encoder", "decoder"):
        pairs += [
            (f"{side}.conv_in", f"{side}.conv_in", "same"),
            (f"{side}.conv_out", f"{side}.conv_out", "same"),
            (f"{side}.norm_out", f"{side}.conv_norm_out", "same"),
            (f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", "vae_resnet"),
            (f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0", "vae_attn"),
            (f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", "vae_resnet"),
        ]
    for i in range(n):
        for j in range(layers):
            pairs.append((f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "vae_resnet"))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", "same"))
    for i in range(n):  # diffusers counts decoder levels from the bottom, LDM from the top
        level = n - 1 - i
        for j in range(layers + 1):
            pairs.append((f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", "vae_resnet"))
        if i < n - 1:
            pairs.append((f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv", "same"))
    return [(VAE_PREFIX + ldm, diff, kind) for ldm, diff, kind in pairs]


class KeyTable:
    """A one-to-one map between the diffusers keys of one component and their LDM keys (with full prefixes)."""

    def __init__(self, to_ldm: dict[str, str], conv1x1: set[str]):
        self.to_ldm = to_ldm
        self.to_diffusers = {v: k for k, v in to_ldm.items()}
        if len(self.to_diffusers) != len(to_ldm):
            dupes = len(to_ldm) - len(self.to_diffusers)
            raise AssertionError(f"key table is not one-to-one ({dupes} LDM keys reached twice)")
        self.conv1x1 = conv1x1  # diffusers keys stored as [C, C, 1, 1] in LDM

    def __len__(self) -> int:
        return len(self.to_ldm)

    def ldm_keys(self) -> set[str]:
        return set(self.to_diffusers)


def _table_from_pairs(pairs: list[ModulePair], diffusers_keys: Iterable[str], what: str) -> KeyTable:
    by_module = {diff: (ldm, kind) for ldm, diff, kind in pairs}
    to_ldm: dict[str, str] = {}
    conv1x1: set[str] = set()
    for key in diffusers_keys:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in by_module:
                break
        else:
            raise KeyError(f"{what}: no LDM name for diffusers key {key!r}")
        ldm_module, kind = by_module[module]
        rest = ".".join(parts[cut:])
        for ldm_child, diff_child in _CHILD_RENAMES[kind].items():
            if rest.startswith(diff_child + "."):
                rest = ldm_child + rest[len(diff_child) :]
                if ldm_child in _CONV1X1.get(kind, ()) and rest.endswith(".weight"):
                    conv1x1.add(key)
                break
        to_ldm[key] = f"{ldm_module}.{rest}"
    return KeyTable(to_ldm, conv1x1)


def unet_table(config: Mapping[str, Any], diffusers_keys: Iterable[str]) -> KeyTable:
    return _table_from_pairs(unet_module_pairs(config), diffusers_keys, "UNet")


def vae_table(config: Mapping[str, Any], diffusers_keys: Iterable[str]) -> KeyTable:
    return _table_from_pairs(vae_module_pairs(config), diffusers_keys, "VAE")


def text_table(diffusers_keys: Iterable[str]) -> KeyTable:
    """CLIP text model keys; transformers 5 drops the ``text_model.`` level that LDM files keep."""
    return KeyTable({k: TEXT_PREFIX + TEXT_MODEL + k.removeprefix(TEXT_MODEL) for k in diffusers_keys}, set())


def to_ldm_tensor(table: KeyTable, key: str, tensor):
    """Diffusers tensor -> LDM tensor (1x1-conv reshape where the layouts differ)."""
    if key in table.conv1x1 and tensor.ndim == 2:
        return tensor.reshape(*tensor.shape, 1, 1)
    return tensor


def to_diffusers_tensor(table: KeyTable, key: str, tensor):
    """LDM tensor -> diffusers tensor, ``key`` being the diffusers key."""
    if key in table.conv1x1 and tensor.ndim == 4:
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


# ------------------------------------------------------------------------------------------- whole state dicts


def module_tables(unet: Any, vae: Any, text_encoder: Any) -> dict[str, KeyTable]:
    """The key tables of the three diffusers modules (diffusers key -> LDM key)."""
    return {
        "unet": unet_table(unet.config, unet.state_dict().keys()),
        "vae": vae_table(vae.config, vae.state_dict().keys()),
        "text_encoder": text_table(text_encoder.state_dict().keys()),
    }


def modules_to_ldm(unet: Any, vae: Any, text_encoder: Any, dtype=None) -> dict[str, Any]:
    """One LDM-layout state dict (full prefixes) from the three diffusers modules; ``dtype`` casts floating
    tensors."""
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    out: dict[str, Any] = {}
    for name, table in module_tables(unet, vae, text_encoder).items():
        for key, tensor in modules[name].state_dict().items():
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
