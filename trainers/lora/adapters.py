"""Adapters (LoRA, DoRA, LoHa, LoKr) on a diffusers SD1.5 UNet and a CLIP text encoder, through peft.

Which layers get an adapter is a small, explicit rule set (``layers``):

- ``attention``: the UNet attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (self and cross
  attention), and the text encoder's ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``;
- ``attention_ff``: also the transformer feed-forward (``ff.net.0.proj``, ``ff.net.2``) and the transformer
  ``proj_in`` / ``proj_out`` of the UNet, and the text encoder's ``mlp.fc1`` / ``mlp.fc2`` (kohya's standard set);
- ``all``: also the convolutions of the UNet's resnets (``conv1``, ``conv2``, ``conv_shortcut``, and their
  ``time_emb_proj``) and the down/up-samplers (kohya's "LoCon" set).

Which adapter (``kind``): ``lora`` (peft ``LoraConfig``, optionally ``use_dora``), ``loha`` (``LoHaConfig``) or
``lokr`` (``LoKrConfig``), all without CP/Tucker decomposition so that every loader reads them. The weights of a
layer are exchanged as :mod:`.weights` objects (``LoraWeights`` with the real ``alpha``, ``LohaWeights``,
``LokrWeights``). A LoKr layer whose two factors are both full has no rank: like LyCORIS, it gets ``alpha = rank``
(scale 1), which is what ComfyUI and A1111 apply to such a layer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .weights import LayerWeights, LohaWeights, LokrWeights, LoraWeights

__all__ = ["LoraWeights", "LohaWeights", "LokrWeights", "LayerWeights"]

log = logging.getLogger(__name__)

LAYER_SETS = ("attention", "attention_ff", "all")
ADAPTER = "default"

_UNET_ATTENTION = re.compile(r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_UNET_FF = re.compile(r".*\.(transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)|attentions\.\d+\.(proj_in|proj_out))$")
_UNET_CONV = re.compile(r".*\.(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.\d+\.conv)$")
_TE_ATTENTION = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$")
_TE_MLP = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.mlp\.(fc1|fc2)$")


def te_canonical(name: str) -> str:
    """A text encoder module name as files spell it (``text_model.encoder…``): transformers 5 dropped the prefix."""
    return name if name.startswith("text_model.") else "text_model." + name


def _select(model: nn.Module, patterns: Iterable[re.Pattern]) -> list[str]:
    pats = list(patterns)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(p.match(name) for p in pats):
            names.append(name)
    return names


def unet_target_names(unet: nn.Module, layers: str = "attention") -> list[str]:
    """Full module names of the UNet layers that get an adapter for a ``layers`` set."""
    if layers not in LAYER_SETS:
        raise ValueError(f"unknown LoRA layer set {layers!r}; choose one of {LAYER_SETS}")
    pats = [_UNET_ATTENTION]
    if layers in ("attention_ff", "all"):
        pats.append(_UNET_FF)
    if layers == "all":
        pats.append(_UNET_CONV)
    return _select(unet, pats)


def text_encoder_target_names(text_encoder: nn.Module, layers: str = "attention") -> list[str]:
    """Full module names of the CLIP text encoder layers that get an adapter for a ``layers`` set."""
    if layers not in LAYER_SETS:
        raise ValueError(f"unknown LoRA layer set {layers!r}; choose one of {LAYER_SETS}")
    pats = [_TE_ATTENTION] + ([_TE_MLP] if layers != "attention" else [])
    return _select(text_encoder, pats)


def _exact(name: str) -> str:
    # peft matches pattern keys as r"(.*\.)?(key)$" against full module names; an escaped full name is exact.
    return re.escape(name)


def _in_out(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels // layer.groups, layer.out_channels
    return layer.in_features, layer.out_features


def lokr_is_full(layer: nn.Module, rank: int, factor: int = -1) -> bool:
    """Whether peft gives this layer a full ``lokr_w2`` (no rank) for ``rank``: the same rule as peft and LyCORIS."""
    from peft.tuners.lokr.layer import factorization

    n_in, n_out = _in_out(layer)
    return rank >= max(factorization(n_out, factor)[1], factorization(n_in, factor)[1]) / 2


def _peft_config(kind: str, rank: int, alpha: float, target: str, ranks: dict, alphas: dict, *, dropout: float,
                 dora: bool, factor: int):  # fmt: skip
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    common = dict(target_modules=target, rank_pattern=ranks, alpha_pattern=alphas)
    if kind == "lora":
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, use_dora=dora, init_lora_weights=True,
                          bias="none", **common)  # fmt: skip
    if dropout or dora:
        raise ValueError(f"{kind} adapters have no input dropout and no DoRA (lora only)")
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, use_effective_conv2d=False, init_weights=True, **common)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, use_effective_conv2d=False, decompose_both=False,
                          decompose_factor=factor, init_weights=True, **common)  # fmt: skip
    raise ValueError(f"unknown adapter type {kind!r}; choose lora, loha or lokr")


def add_adapters(
    model: nn.Module,
    names: list[str],
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    ranks: Mapping[str, int] | None = None,
    alphas: Mapping[str, float] | None = None,
    kind: str = "lora",
    dora: bool = False,
    lokr_factor: int = -1,
) -> int:
    """Inject peft adapters of ``kind`` into ``model`` on exactly the modules ``names`` (in place); returns how many.

    ``ranks`` / ``alphas`` override the rank/alpha of single modules (files whose layers differ). New adapters start
    as peft initialises them, so the model's output is unchanged until trained (LoRA: ``up`` zero; LoHa: ``w2_b``
    zero; LoKr: ``w1`` zero; DoRA: the magnitude is the base weight's norm).
    """
    from peft import inject_adapter_in_model

    if not names:
        raise ValueError("no layers to adapt")
    ranks = {n: int(ranks.get(n, rank)) if ranks else int(rank) for n in names}
    alphas = {n: float(alphas.get(n, alpha)) if alphas else float(alpha) for n in names}
    if kind == "lokr":  # both factors full: no rank, scale 1 (LyCORIS' alpha = rank)
        for n in names:
            if lokr_is_full(model.get_submodule(n), ranks[n], lokr_factor):
                alphas[n] = float(ranks[n])
    config = _peft_config(
        kind, int(rank), float(alpha), "^(" + "|".join(map(_exact, names)) + ")$",  # a regex: peft full-matches it
        {_exact(k): v for k, v in ranks.items() if v != int(rank)},
        {_exact(k): v for k, v in alphas.items() if v != float(alpha)},
        dropout=float(dropout), dora=bool(dora), factor=int(lokr_factor),
    )  # fmt: skip
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    count = len(lora_modules(model))
    if count != len(names):
        raise RuntimeError(f"peft adapted {count} layers, expected {len(names)}")
    return count


def _slots(module: nn.Module) -> list[tuple[str, object]]:
    """(name, ParameterDict/ModuleDict entry) of every adapter tensor slot this layer holds for our adapter."""
    out = []
    for slot in dict.fromkeys(getattr(module, "adapter_layer_names", ())):  # peft lists DoRA's slot twice
        holder = getattr(module, slot, None)
        if isinstance(holder, (nn.ParameterDict, nn.ModuleDict)) and ADAPTER in holder:
            out.append((slot, holder[ADAPTER]))
    return out


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The peft adapter layers of ``model`` (any kind) by their (original) module name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer) and _slots(m)}


def layer_kind(module: nn.Module) -> str:
    """The adapter type ("lora", "loha" or "lokr") of a peft adapter layer."""
    slots = {name for name, _ in _slots(module)}
    if "lora_A" in slots:
        return "lora"
    if any(s.startswith("hada_") for s in slots):
        return "loha"
    if any(s.startswith("lokr_") for s in slots):
        return "lokr"
    raise ValueError(f"not an adapter layer we know: {type(module).__name__}")


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters of every adapter layer (LoRA: ``lora_A``, ``lora_B``, DoRA magnitude)."""
    params: list[nn.Parameter] = []
    for m in lora_modules(model).values():
        for _, entry in _slots(m):
            params += list(entry.parameters()) if isinstance(entry, nn.Module) else [entry]
    return params


def freeze_base(model: nn.Module, dtype: torch.dtype | None = None, adapter_dtype: torch.dtype = torch.float32) -> None:
    """Freeze every non-adapter parameter (optionally cast to ``dtype``); adapters trainable in ``adapter_dtype``
    with their values kept exactly (they do not pass through ``dtype``)."""
    params = lora_parameters(model)
    kept = [p.detach().to(adapter_dtype, copy=True) for p in params]
    model.requires_grad_(False)
    if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    for p, value in zip(params, kept, strict=True):
        p.data = value
        p.requires_grad_(True)


def _t(p: torch.Tensor) -> torch.Tensor:
    return p.detach().float().cpu().clone()


def _tensor(entry) -> torch.Tensor:
    return entry.weight if isinstance(entry, nn.Module) else entry


def _layer_weights(m: nn.Module) -> LayerWeights:
    slots = {name: _tensor(entry) for name, entry in _slots(m)}
    kind = layer_kind(m)
    if kind == "lora":
        up = slots["lora_B"]
        dora = slots.get("lora_magnitude_vector")
        if dora is not None:  # peft: (out,) or (1, out, 1, 1); files: (out, 1[, 1, 1])
            dora = _t(dora).reshape(up.shape[0], *[1] * (m.get_base_layer().weight.dim() - 1))
        return LoraWeights(_t(slots["lora_A"]), _t(up), float(m.lora_alpha[ADAPTER]), dora)
    if kind == "loha":
        w = [_t(slots[s]) for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
        return LohaWeights(*w, alpha=float(m.alpha[ADAPTER]))
    get = {k: _t(v) for k, v in slots.items()}
    return LokrWeights(get["lokr_w1"], float(m.alpha[ADAPTER]), get.get("lokr_w2"), get.get("lokr_w2_a"),
                       get.get("lokr_w2_b"))  # fmt: skip


def get_weights(model: nn.Module) -> dict[str, LayerWeights]:
    """The current adapter weights of ``model`` (detached copies on CPU, fp32), with each layer's real alpha."""
    return {name: _layer_weights(m) for name, m in lora_modules(model).items()}


def _slot_values(w: LayerWeights) -> dict[str, torch.Tensor]:
    """The weights as peft slot name -> tensor."""
    if isinstance(w, LoraWeights):
        out = {"lora_A": w.down, "lora_B": w.up}
        if w.dora_scale is not None:
            out["lora_magnitude_vector"] = w.dora_scale
        return out
    if isinstance(w, LohaWeights):
        return {"hada_w1_a": w.w1_a, "hada_w1_b": w.w1_b, "hada_w2_a": w.w2_a, "hada_w2_b": w.w2_b}
    named = {"lokr_w1": w.w1, "lokr_w2": w.w2, "lokr_w2_a": w.w2_a, "lokr_w2_b": w.w2_b}
    return {k: v for k, v in named.items() if v is not None}


def _alpha_of(m: nn.Module) -> float:
    return float(m.lora_alpha[ADAPTER] if hasattr(m, "lora_alpha") else m.alpha[ADAPTER])


def _set_layer(name: str, m: nn.Module, w: LayerWeights) -> None:
    slots = {slot: _tensor(entry) for slot, entry in _slots(m)}
    values = _slot_values(w)
    if layer_kind(m) != w.kind or set(slots) != set(values):
        raise ValueError(
            f"{name}: the file's {w.kind} weights ({sorted(values)}) do not fit the layer ({sorted(slots)})"
        )
    for slot, value in values.items():
        target = slots[slot]
        same = value.numel() == target.numel() if slot == "lora_magnitude_vector" else value.shape == target.shape
        if not same:
            raise ValueError(f"{name}: {slot} {tuple(value.shape)} does not fit the layer's {tuple(target.shape)}")
        target.copy_(value.reshape(target.shape).to(target.dtype))
    full_lokr = isinstance(w, LokrWeights) and not w.decomposed  # no rank: scale 1 whatever the alpha
    if not full_lokr and abs(_alpha_of(m) - float(w.alpha)) > 1e-6 * max(1.0, abs(float(w.alpha))):
        raise ValueError(f"{name}: alpha {w.alpha} differs from the layer's {_alpha_of(m)}")


def set_weights(model: nn.Module, weights: Mapping[str, LayerWeights]) -> None:
    """Copy adapter weights into an adapted model (names, kinds, shapes and alphas must match)."""
    mods = lora_modules(model)
    missing = sorted(set(mods) ^ set(weights))
    if missing:
        raise ValueError(f"adapter layers differ from the weights given: {missing[:5]} ...")
    with torch.no_grad():
        for name, w in weights.items():
            _set_layer(name, mods[name], w)


def _most_common(values: list):
    return max(set(values), key=values.count)


def shape_of(weights: Mapping[str, LayerWeights]) -> tuple[str, bool]:
    """(kind, dora) shared by every layer of ``weights``; ValueError for an empty or mixed set."""
    kinds = {(w.kind, bool(w.dora)) for w in weights.values()}
    if len(kinds) != 1:
        raise ValueError(f"the layers mix adapter types ({sorted(kinds)}); one type per file can be trained")
    return kinds.pop()


def _file_rank(name: str, layer: nn.Module, w: LayerWeights, factor: int) -> tuple[int, float]:
    """The peft rank and alpha that rebuild a file's layer ``w`` on ``layer``."""
    if not isinstance(w, LokrWeights) or w.decomposed:
        return int(w.rank), float(w.alpha)
    # a full LoKr layer: any rank peft treats as full; the file's alpha when it is one (our files: alpha = rank)
    n_w2 = max(int(w.w2.shape[0]), int(w.w2.shape[1]))
    rank = int(w.alpha) if float(w.alpha).is_integer() and lokr_is_full(layer, int(w.alpha), factor) else n_w2
    return rank, float(rank)


def add_adapters_from(
    model: nn.Module, weights: Mapping[str, LayerWeights], dropout: float = 0.0, lokr_factor: int = -1
) -> int:
    """Inject adapters shaped like ``weights`` (type, rank, alpha per layer) into ``model`` and load them."""
    if not weights:
        raise ValueError("no LoRA weights to load")
    kind, dora = shape_of(weights)
    ranks, alphas = {}, {}
    for n, w in weights.items():
        ranks[n], alphas[n] = _file_rank(n, model.get_submodule(n), w, lokr_factor)
    n = add_adapters(
        model, list(weights), rank=_most_common(list(ranks.values())), alpha=_most_common(list(alphas.values())),
        dropout=dropout, ranks=ranks, alphas=alphas, kind=kind, dora=dora, lokr_factor=lokr_factor,
    )  # fmt: skip
    set_weights(model, weights)
    return n


def merge_into(model: nn.Module, weights: Mapping[str, LayerWeights], strength: float = 1.0) -> int:
    """Add ``strength`` x each layer's update to the weights of a plain (un-adapted) model, in place (LoRA:
    ``alpha / rank * up @ down``; DoRA: the magnitude-rescaled weight minus the base)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            layer = modules.get(name)
            if layer is None or not hasattr(layer, "weight"):
                raise ValueError(f"the model has no layer {name!r} to merge a LoRA into")
            try:
                d = w.update(layer.weight)
            except RuntimeError as e:  # a reshape that does not fit
                raise ValueError(f"{name}: the LoRA update does not fit {tuple(layer.weight.shape)} ({e})") from None
            if tuple(d.shape) != tuple(layer.weight.shape):
                raise ValueError(f"{name}: LoRA update {tuple(d.shape)} does not fit {tuple(layer.weight.shape)}")
            layer.weight += (strength * d).to(layer.weight.dtype)
    return len(weights)


def remove_adapters(model: nn.Module) -> None:
    """Replace every peft adapter layer by its base layer again (without merging)."""
    mods = lora_modules(model)
    for name in mods:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mods[name].get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
