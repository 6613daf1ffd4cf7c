"""The kohya / A1111 LoRA file format (what ComfyUI, A1111/Forge and diffusers all load), written and read.

Keys, one group per adapted layer (diffusers module path, dots turned into underscores)::

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight   (rank, in[, k, k])
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight     (out, rank[, 1, 1])
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha              scalar, the real alpha
    lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight                   (text encoder)

A loader applies ``strength * alpha / rank * up @ down``. ``alpha`` is stored in fp32 (exact), the matrices in fp16
by default. The safetensors header carries kohya's ``ss_*`` training metadata (shown by A1111's LoRA metadata
viewer) and ``sshs_model_hash``, the hash A1111 uses for the file (sha256 of everything after the header).

The LyCORIS types use the same layer names with their own suffixes (what ComfyUI's LoraLoader, A1111/Forge and
LyCORIS read): LoHa ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` + ``alpha``; LoKr ``lokr_w1`` and
``lokr_w2`` or ``lokr_w2_a`` / ``lokr_w2_b`` + ``alpha``; DoRA is a LoRA group plus ``dora_scale`` (the magnitude per
output channel, shape ``(out, 1[, 1, 1])``: the output axis, as peft trains it). Their header says
``ss_network_module = lycoris.kohya`` with ``algo`` (and ``dora_wd`` / ``wd_on_output``) in ``ss_network_args``.

The reader also takes LDM-style UNet names (``lora_unet_input_blocks_1_1_proj_in``, as some trainers write them) and
maps them onto the diffusers modules. A second, optional format is diffusers/peft (``unet.<module>.lora_A.weight``
with ``lora_adapter_metadata``), for plain LoRA and DoRA (what diffusers' ``load_lora_weights`` reads for SD1.5).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..fsutil import atomic_path, stable_safetensors_bytes
from .adapters import te_canonical
from .weights import SUFFIXES, UNSUPPORTED, LayerWeights, LoraWeights, from_file_group

log = logging.getLogger(__name__)

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DIFFUSERS_TYPES = (
    "save_diffusers writes the diffusers/peft LoRA format, which diffusers' load_lora_weights reads for plain LoRA "
    "and DoRA on SD1.5, not for LoHa or LoKr: turn save_diffusers off (the kohya file loads in ComfyUI and A1111/Forge)"
)


def kohya_name(prefix: str, module_name: str) -> str:
    """``lora_unet_`` + ``down_blocks.0.attentions.0.proj_in`` -> ``lora_unet_down_blocks_0_attentions_0_proj_in``.

    Text encoder names are spelt from ``text_model.`` (``lora_te_text_model_encoder_layers_0_…``) whatever the
    transformers version calls the module.
    """
    if prefix == TE_PREFIX:
        module_name = te_canonical(module_name)
    return prefix + module_name.replace(".", "_")


def to_state_dict(
    unet: Mapping[str, LayerWeights],
    text_encoder: Mapping[str, LayerWeights] | None = None,
    dtype: str = "fp16",
) -> dict[str, torch.Tensor]:
    """Kohya/LyCORIS-format tensors for the adapted UNet (and text encoder) layers."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown LoRA dtype {dtype!r}; choose one of {tuple(DTYPES)}")
    tdtype = DTYPES[dtype]
    out: dict[str, torch.Tensor] = {}
    for prefix, weights in ((UNET_PREFIX, unet), (TE_PREFIX, text_encoder or {})):
        for name, w in weights.items():
            key = kohya_name(prefix, name)
            if key + ".alpha" in out:
                raise ValueError(f"two layers map to the same LoRA key {key}")
            for suffix, t in w.file_tensors().items():
                out[f"{key}.{suffix}"] = t.detach().to("cpu", tdtype).contiguous()
            out[key + ".alpha"] = torch.tensor(float(w.alpha), dtype=torch.float32)
    return out


# ---------------------------------------------------------------------------------------------------------------
# hashes (kohya / A1111 conventions)


def data_hash(blob: bytes) -> str:
    """sha256 of a safetensors file's tensor data (everything after the header): A1111's LoRA hash."""
    (n,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(blob[8 + n :]).hexdigest()


def legacy_file_hash(blob: bytes) -> str:
    """The old 8-hex "model hash": sha256 of the 64 KiB at offset 1 MiB."""
    return hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def base_model_hashes(path: str | Path) -> tuple[str, str]:
    """(legacy 8-hex model hash, full sha256) of a base checkpoint file, as kohya records them."""
    from ..fsutil import file_sha256

    with open(path, "rb") as f:
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    return legacy, file_sha256(path)


# ---------------------------------------------------------------------------------------------------------------
# metadata


def tag_frequency(captions: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
    """kohya's ``ss_tag_frequency``: per dataset folder, how often each comma-separated tag occurs in the captions."""
    out: dict[str, dict[str, int]] = {}
    for folder, caps in captions.items():
        counts: dict[str, int] = {}
        for cap in caps:
            for tag in {t.strip() for t in cap.split(",") if t.strip()}:
                counts[tag] = counts.get(tag, 0) + 1
        out[folder] = counts
    return out


def _s(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if value is None:
        return "None"
    return str(value)


@dataclass
class TrainingFacts:
    """What the LoRA metadata records about a run (everything optional except the network shape)."""

    rank: int
    alpha: float
    layers: str = "attention"
    lora_type: str = "lora"  # lora | loha | lokr
    dora: bool = False
    lokr_factor: int = -1
    train_text_encoder: bool = False
    dropout: float = 0.0
    output_name: str = ""
    base_model_path: str | None = None
    base_model_name: str = ""
    base_model_hash: str = ""  # legacy 8-hex
    base_model_sha256: str = ""
    vae_name: str = ""
    steps: int = 0
    max_steps: int = 0
    epochs: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 1
    resolution: int = 512
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    optimizer: str = "AdamW"
    mixed_precision: str = "no"
    seed: int = 0
    num_train_images: int = 0
    num_reg_images: int = 0
    prior_loss_weight: float = 1.0
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    max_grad_norm: float = 1.0
    clip_skip: int | None = None
    cache_latents: bool = False
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> {n_repeats, img_count}
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    training_comment: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)  # other keys, written as they are


def training_metadata(facts: TrainingFacts) -> dict[str, str]:
    """The kohya-style ``ss_*`` header (plus a few ``modelspec.*`` keys) for a LoRA file, all strings."""
    import uuid

    md = {
        **_network_metadata(facts),
        **_training_metadata(facts),
        "ss_session_id": str(uuid.uuid4().int % 2**31),
        "ss_training_started_at": _s(facts.started_at),
        "ss_training_finished_at": _s(facts.finished_at),
        "ss_output_name": facts.output_name,
        "ss_sd_model_name": facts.base_model_name,
        "ss_sd_model_hash": facts.base_model_hash,
        "ss_new_sd_model_hash": facts.base_model_sha256,
        "ss_vae_name": facts.vae_name or "None",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs),
        "ss_tag_frequency": json.dumps(facts.tag_frequency),
        "ss_training_comment": facts.training_comment or "None",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": facts.output_name,
        "modelspec.resolution": f"{facts.resolution}x{facts.resolution}",
        "modelspec.prediction_type": "epsilon",
    }
    md.update({k: _s(v) for k, v in facts.extra.items()})
    return md


def _network_metadata(facts: TrainingFacts) -> dict[str, str]:
    network_args: dict[str, str] = {}
    lycoris = facts.lora_type != "lora" or facts.dora
    if lycoris:  # LyCORIS' own keys: its loaders and metadata viewers read the algorithm from here
        network_args["algo"] = facts.lora_type
    if facts.layers == "all":
        network_args.update(conv_dim=str(facts.rank), conv_alpha=_s(facts.alpha))
    if facts.dropout:
        network_args["dropout"] = _s(facts.dropout)
    if facts.lora_type == "lokr":
        network_args["factor"] = str(facts.lokr_factor)
    if facts.dora:
        network_args.update(dora_wd="True", wd_on_output="True")  # the magnitude is per output channel (peft)
    return {
        "ss_network_module": "lycoris.kohya" if lycoris else "networks.lora",
        "ss_network_dim": _s(facts.rank),
        "ss_network_alpha": _s(facts.alpha),
        "ss_network_dropout": _s(facts.dropout),
        "ss_network_args": json.dumps(network_args) if network_args else "None",
        "ss_network_train_unet_only": _s(not facts.train_text_encoder),
        "ss_network_train_text_encoder_only": "False",
    }


def _training_metadata(facts: TrainingFacts) -> dict[str, str]:
    return {
        "ss_steps": _s(facts.steps),
        "ss_max_train_steps": _s(facts.max_steps or facts.steps),
        "ss_epoch": _s(facts.epochs),
        "ss_num_epochs": _s(facts.epochs),
        "ss_batch_size_per_device": _s(facts.batch_size),
        "ss_total_batch_size": _s(facts.batch_size * facts.gradient_accumulation),
        "ss_gradient_accumulation_steps": _s(facts.gradient_accumulation),
        "ss_resolution": f"({facts.resolution}, {facts.resolution})",
        "ss_learning_rate": _s(facts.learning_rate),
        "ss_unet_lr": _s(facts.learning_rate),
        "ss_text_encoder_lr": _s(facts.text_encoder_lr if facts.train_text_encoder else None),
        "ss_lr_scheduler": facts.lr_scheduler,
        "ss_lr_warmup_steps": _s(facts.lr_warmup_steps),
        "ss_optimizer": facts.optimizer,
        "ss_mixed_precision": facts.mixed_precision,
        "ss_full_fp16": "False",
        "ss_seed": _s(facts.seed),
        "ss_num_train_images": _s(facts.num_train_images),
        "ss_num_reg_images": _s(facts.num_reg_images),
        "ss_prior_loss_weight": _s(facts.prior_loss_weight),
        "ss_noise_offset": _s(facts.noise_offset or None),
        "ss_min_snr_gamma": _s(facts.min_snr_gamma),
        "ss_max_grad_norm": _s(facts.max_grad_norm),
        "ss_clip_skip": _s(facts.clip_skip),
        "ss_cache_latents": _s(facts.cache_latents),
    }


# ---------------------------------------------------------------------------------------------------------------
# writing


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize a LoRA with its metadata; adds ``sshs_model_hash`` / ``sshs_legacy_hash`` like kohya does."""
    from safetensors.torch import save

    md = {k: _s(v) for k, v in (metadata or {}).items()}
    training_only = {k: v for k, v in md.items() if k.startswith("ss_")}
    first = save(dict(tensors), metadata=training_only or None)
    md["sshs_model_hash"] = data_hash(first)
    md["sshs_legacy_hash"] = legacy_file_hash(first)
    blob = stable_safetensors_bytes(save(dict(tensors), metadata=md))  # same weights -> same bytes
    if data_hash(blob) != md["sshs_model_hash"]:  # the tensor bytes never depend on the header
        raise RuntimeError("safetensors data section changed with the header; cannot record the LoRA hash")
    return blob


def save_kohya(
    path: str | Path,
    unet: Mapping[str, LayerWeights],
    text_encoder: Mapping[str, LayerWeights] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> Path:
    """Write a kohya/A1111 LoRA ``.safetensors`` atomically; returns the path."""
    path = Path(path)
    blob = encode(to_state_dict(unet, text_encoder, dtype), metadata)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(blob)
    log.info("LoRA saved: %s (%d layers, %.2f MB)", path, len(unet) + len(text_encoder or {}), len(blob) / 1e6)
    return path


# ---------------------------------------------------------------------------------------------------------------
# reading


@dataclass
class KohyaFile:
    """A LoRA file as read: layer groups by kohya name (``lora_unet_…`` / ``lora_te_…``) and the header metadata."""

    layers: dict[str, LayerWeights]
    metadata: dict[str, str]

    @property
    def unet_layers(self) -> dict[str, LayerWeights]:
        return {k: v for k, v in self.layers.items() if k.startswith(UNET_PREFIX)}

    @property
    def text_encoder_layers(self) -> dict[str, LayerWeights]:
        return {k: v for k, v in self.layers.items() if k.startswith(TE_PREFIX)}

    @property
    def kinds(self) -> set[str]:
        """The adapter types in the file: "lora", "dora", "loha", "lokr"."""
        return {"dora" if w.dora else w.kind for w in self.layers.values()}


def _open_tensors(p: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not p.is_file():
        raise CheckpointError(f"LoRA file {p} does not exist")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as e:  # noqa: BLE001 - any parse error is a bad file
        raise CheckpointError(f"LoRA file {p} is not a readable .safetensors file: {e}") from None
    return metadata, tensors


def _groups(p: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors grouped by layer (kohya names have no dots: the layer is everything before the first one)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, suffix = key.partition(".")
        if suffix in UNSUPPORTED:
            raise CheckpointError(
                f"LoRA file {p}: key {key!r} is {UNSUPPORTED[suffix]}, which Likeness cannot read or train; "
                "use a plain LoRA/LoCon, LoHa, LoKr or DoRA file"
            )
        if suffix not in SUFFIXES:
            raise CheckpointError(
                f"LoRA file {p}: key {key!r} is not kohya LoRA format (expected <name>.lora_down.weight, "
                ".lora_up.weight, .alpha, or the LyCORIS LoHa/LoKr/DoRA keys)"
            )
        groups.setdefault(name, {})[suffix] = t
    return groups


def read_kohya(path: str | Path) -> KohyaFile:
    """Read a kohya/LyCORIS-format LoRA (LoRA, DoRA, LoHa, LoKr); raises CheckpointError naming the file for
    anything that is not one."""
    p = Path(path)
    metadata, tensors = _open_tensors(p)
    layers = {}
    for name, group in _groups(p, tensors).items():
        try:
            layers[name] = from_file_group(group)
        except ValueError as e:
            raise CheckpointError(f"LoRA file {p}: layer {name} {e}") from None
    return KohyaFile(layers=layers, metadata=metadata)


def split_dora(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, LoraWeights]]:
    """A LoRA file's tensors as (everything but the kohya DoRA layers, unchanged; the DoRA layers by kohya layer
    name). A DoRA layer's change depends on the base weight it lands on, and hosts apply a ``dora_scale``
    differently (the 2024-03 ComfyUI ignores it and applies the LoRA part alone; later releases divided by the base
    weight's norm instead of the merged one's), so a front end computes that change itself with
    :meth:`LoraWeights.update` (what training used) and hands the rest to the host. Keys of any other format, and
    DoRA layers that do not read as one, are left in the first part for the host to judge."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, suffix = key.partition(".")
        groups.setdefault(name, {})[suffix] = t
    plain: dict[str, torch.Tensor] = {}
    dora: dict[str, LoraWeights] = {}
    for name, group in groups.items():
        layer = None
        if "dora_scale" in group and set(group) <= {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}:
            with contextlib.suppress(ValueError):
                layer = from_file_group(group)
        if isinstance(layer, LoraWeights) and layer.dora:
            dora[name] = layer
        else:
            plain.update({f"{name}.{suffix}" if suffix else name: t for suffix, t in group.items()})
    return plain, dora


_PEFT_PARTS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_magnitude_vector", "lora_embedding_A",
               "lora_embedding_B"}  # fmt: skip


def _layer_names(model: nn.Module) -> list[str]:
    """Module names of the Linear/Conv2d layers of ``model`` (a peft-wrapped layer by its wrapper's name)."""
    return [
        name
        for name, m in model.named_modules()
        if (isinstance(m, (nn.Linear, nn.Conv2d)) or hasattr(m, "base_layer"))
        and not _PEFT_PARTS.intersection(name.split("."))
    ]


def module_map(model: nn.Module, prefix: str) -> dict[str, str]:
    """kohya name -> module name for every Linear/Conv2d of ``model``."""
    return {kohya_name(prefix, name): name for name in _layer_names(model)}


def ldm_module_map(unet: nn.Module) -> dict[str, str]:
    """LDM-style kohya name (``lora_unet_input_blocks_1_1_proj_in``) -> diffusers module name, for every layer of a
    diffusers SD1.x UNet (from the same key table the checkpoint reader uses)."""
    from ..model_io.convert import UNET_PREFIX as LDM_UNET
    from ..model_io.convert import unet_table

    config = getattr(unet, "config", None)
    if config is None or "down_block_types" not in config:
        return {}
    out = {}
    for name in _layer_names(unet):
        try:
            ldm = unet_table(config, [name + ".weight"]).to_ldm[name + ".weight"]
        except (KeyError, ValueError):
            continue  # a layer without an LDM name
        out[UNET_PREFIX + ldm.removeprefix(LDM_UNET).removesuffix(".weight").replace(".", "_")] = name
    return out


def resolve(
    lora: KohyaFile, unet: nn.Module | None = None, text_encoder: nn.Module | None = None, source: str = "LoRA"
) -> tuple[dict[str, LayerWeights], dict[str, LayerWeights]]:
    """Map a file's kohya names onto the modules of a diffusers UNet / CLIP text encoder.

    Returns (unet layers, text encoder layers) by module name. UNet names may be diffusers-style (kohya's) or
    LDM-style (``lora_unet_input_blocks_…``): both are mapped onto the diffusers modules. Every key must land on a
    layer of the given models; otherwise a CheckpointError lists what did not (never a silent half-load).
    """
    unet_out: dict[str, LayerWeights] = {}
    te_out: dict[str, LayerWeights] = {}
    umap = {**ldm_module_map(unet), **module_map(unet, UNET_PREFIX)} if unet is not None else {}
    tmap = module_map(text_encoder, TE_PREFIX) if text_encoder is not None else {}
    missed = []
    for key, w in lora.layers.items():
        if key in umap:
            if umap[key] in unet_out:
                raise CheckpointError(f"{source}: two LoRA layers (LDM and diffusers names) target {umap[key]}")
            unet_out[umap[key]] = w
        elif key in tmap:
            te_out[tmap[key]] = w
        elif key.startswith(TE_PREFIX) and text_encoder is None:
            continue  # the caller did not ask for the text encoder part
        else:
            missed.append(key)
    if missed:
        raise CheckpointError(
            f"{source}: {len(missed)} LoRA layers match no model layer of this SD1.5 model (is it a LoRA for "
            f"another model, e.g. SDXL?), e.g. {missed[:3]}"
        )
    return unet_out, te_out


# ---------------------------------------------------------------------------------------------------------------
# diffusers / peft format (optional second format)


def _adapter_config(weights: Mapping[str, LoraWeights], dropout: float) -> dict[str, Any]:
    """peft's ``LoraConfig`` (as a dict) for these layers, one per model part."""
    # peft matches list targets as "name or a suffix after a dot": text encoder names without "text_model." fit
    # both the transformers 4 and 5 module trees.
    weights = {n.removeprefix("text_model."): w for n, w in weights.items()}
    ranks = [w.rank for w in weights.values()]
    alphas = [float(w.alpha) for w in weights.values()]
    r = max(set(ranks), key=ranks.count)
    a = max(set(alphas), key=alphas.count)
    return {
        "r": r,
        "lora_alpha": a,
        "lora_dropout": dropout,
        "target_modules": sorted(weights),
        "rank_pattern": {re.escape(n): w.rank for n, w in weights.items() if w.rank != r},
        "alpha_pattern": {re.escape(n): float(w.alpha) for n, w in weights.items() if float(w.alpha) != a},
        "bias": "none",
        "init_lora_weights": True,
        "use_dora": any(w.dora for w in weights.values()),
        "use_rslora": False,
        "peft_type": "LORA",
    }


def save_diffusers(
    path: str | Path,
    unet: Mapping[str, LoraWeights],
    text_encoder: Mapping[str, LoraWeights] | None = None,
    *,
    dropout: float = 0.0,
    metadata: Mapping[str, str] | None = None,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> Path:
    """Write the diffusers/peft LoRA format (``pytorch_lora_weights.safetensors`` style, one file): plain LoRA or
    DoRA (``lora_magnitude_vector`` in peft's shapes); LoHa/LoKr are refused (diffusers does not load them for SD1.5)."""
    from safetensors.torch import save

    tdtype = DTYPES[dtype]
    tensors: dict[str, torch.Tensor] = {}
    adapter_md: dict[str, Any] = {}
    for prefix, weights in (("unet", unet), ("text_encoder", text_encoder or {})):
        if not weights:
            continue
        for name, w in weights.items():
            if not isinstance(w, LoraWeights):
                raise ConfigError(DIFFUSERS_TYPES)
            name = te_canonical(name) if prefix == "text_encoder" else name
            tensors[f"{prefix}.{name}.lora_A.weight"] = w.down.detach().to("cpu", tdtype).contiguous()
            tensors[f"{prefix}.{name}.lora_B.weight"] = w.up.detach().to("cpu", tdtype).contiguous()
            if w.dora_scale is not None:  # peft's magnitude: (out,) for a linear layer, (1, out, 1, 1) for a conv
                mag = w.dora_scale.detach().to("cpu", tdtype).flatten()
                tensors[f"{prefix}.{name}.lora_magnitude_vector"] = (
                    mag.reshape(1, -1, 1, 1) if w.down.dim() == 4 else mag
                ).contiguous()
        adapter_md.update({f"{prefix}.{k}": v for k, v in _adapter_config(weights, dropout).items()})
    md = {"format": "pt", "lora_adapter_metadata": json.dumps(adapter_md, sort_keys=True)}
    md.update({k: _s(v) for k, v in (metadata or {}).items()})
    blob = stable_safetensors_bytes(save(tensors, metadata=md))
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(blob)
    return path
