"""LoRA adapters on a diffusers SD1.5 UNet and a CLIP text encoder, through peft.

Which layers get an adapter is a small, explicit rule set (``layers``):

- ``attention``: the UNet attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (self and cross
  attention), and the text encoder's ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``;
- ``attention_ff``: also the transformer feed-forward (``ff.net.0.proj``, ``ff.net.2``) and the transformer
  ``proj_in`` / ``proj_out`` of the UNet, and the text encoder's ``mlp.fc1`` / ``mlp.fc2`` (kohya's standard set);
- ``all``: also the convolutions of the UNet's resnets (``conv1``, ``conv2``, ``conv_shortcut``, and their
  ``time_emb_proj``) and the down/up-samplers (kohya's "LoCon" set).

A LoRA pair is kept as :class:`LoraWeights` (``down`` = peft's ``lora_A``, ``up`` = ``lora_B``, and the real
``alpha``), the one exchange format between the trainer, the file writers/readers and extraction. The update it makes
to a weight is ``alpha / rank * up @ down`` (convolutions: ``down`` has the layer's kernel, ``up`` is 1x1).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

LAYER_SETS = ("attention", "attention_ff", "all")
ADAPTER = "default"

_UNET_ATTENTION = re.compile(r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_UNET_FF = re.compile(r".*\.(transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)|attentions\.\d+\.(proj_in|proj_out))$")
_UNET_CONV = re.compile(r".*\.(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.\d+\.conv)$")
_TE_ATTENTION = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$")
_TE_MLP = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.mlp\.(fc1|fc2)$")


@dataclass
class LoraWeights:
    """One adapted layer: ``down`` (rank x in [x k x k]), ``up`` (out x rank [x 1 x 1]) and the real alpha."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full weight update ``alpha / rank * up @ down`` in the layer's weight shape."""
        up = self.up.to(dtype).flatten(1)
        down = self.down.to(dtype).flatten(1)
        out = (up @ down) * self.scale
        if self.down.dim() == 4:
            return out.reshape(self.up.shape[0], *self.down.shape[1:])
        return out


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


def add_adapters(
    model: nn.Module,
    names: list[str],
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    ranks: Mapping[str, int] | None = None,
    alphas: Mapping[str, float] | None = None,
) -> int:
    """Inject peft LoRA layers into ``model`` on exactly the modules ``names`` (in place); returns how many.

    ``ranks`` / ``alphas`` override the rank/alpha of single modules (files whose layers differ). New adapters start
    as peft initialises them: ``down`` random, ``up`` zero, so the model's output is unchanged until trained.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not names:
        raise ValueError("no layers to adapt")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules="^(" + "|".join(map(_exact, names)) + ")$",  # a regex: peft full-matches it
        rank_pattern={_exact(k): int(v) for k, v in (ranks or {}).items() if int(v) != int(rank)},
        alpha_pattern={_exact(k): float(v) for k, v in (alphas or {}).items() if float(v) != float(alpha)},
        init_lora_weights=True,
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    count = len(lora_modules(model))
    if count != len(names):
        raise RuntimeError(f"peft adapted {count} layers, expected {len(names)}")
    return count


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of ``model`` by their (original) module name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (``lora_A`` / ``lora_B`` of every LoRA layer)."""
    params = []
    for m in lora_modules(model).values():
        params += list(m.lora_A[ADAPTER].parameters()) + list(m.lora_B[ADAPTER].parameters())
    return params


def freeze_base(model: nn.Module, dtype: torch.dtype | None = None, adapter_dtype: torch.dtype = torch.float32) -> None:
    """Freeze every non-adapter parameter (optionally cast to ``dtype``); adapters trainable in ``adapter_dtype``."""
    model.requires_grad_(False)
    if dtype is not None and any(p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    for p in lora_parameters(model):
        p.data = p.data.to(adapter_dtype)
        p.requires_grad_(True)


def get_weights(model: nn.Module) -> dict[str, LoraWeights]:
    """The current adapter weights of ``model`` (detached copies on CPU, fp32), with each layer's real alpha."""
    out = {}
    for name, m in lora_modules(model).items():
        out[name] = LoraWeights(
            down=m.lora_A[ADAPTER].weight.detach().float().cpu().clone(),
            up=m.lora_B[ADAPTER].weight.detach().float().cpu().clone(),
            alpha=float(m.lora_alpha[ADAPTER]),
        )
    return out


def set_weights(model: nn.Module, weights: Mapping[str, LoraWeights]) -> None:
    """Copy adapter weights into an adapted model (names, shapes and alphas must match)."""
    mods = lora_modules(model)
    missing = sorted(set(mods) ^ set(weights))
    if missing:
        raise ValueError(f"adapter layers differ from the weights given: {missing[:5]} ...")
    with torch.no_grad():
        for name, w in weights.items():
            m = mods[name]
            a, b = m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight
            if tuple(a.shape) != tuple(w.down.shape) or tuple(b.shape) != tuple(w.up.shape):
                raise ValueError(
                    f"{name}: file shapes {tuple(w.down.shape)}/{tuple(w.up.shape)} do not fit the layer "
                    f"({tuple(a.shape)}/{tuple(b.shape)})"
                )
            a.copy_(w.down.to(a.dtype))
            b.copy_(w.up.to(b.dtype))
            if abs(float(m.lora_alpha[ADAPTER]) - float(w.alpha)) > 1e-6 * max(1.0, abs(float(w.alpha))):
                raise ValueError(f"{name}: alpha {w.alpha} differs from the layer's {m.lora_alpha[ADAPTER]}")


def add_adapters_from(model: nn.Module, weights: Mapping[str, LoraWeights], dropout: float = 0.0) -> int:
    """Inject adapters shaped like ``weights`` (rank/alpha per layer) into ``model`` and load them."""
    if not weights:
        raise ValueError("no LoRA weights to load")
    ranks = {n: w.rank for n, w in weights.items()}
    alphas = {n: float(w.alpha) for n, w in weights.items()}
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    n = add_adapters(model, list(weights), rank=rank, alpha=alpha, dropout=dropout, ranks=ranks, alphas=alphas)
    set_weights(model, weights)
    return n


def merge_into(model: nn.Module, weights: Mapping[str, LoraWeights], strength: float = 1.0) -> int:
    """Add ``strength * alpha / rank * up @ down`` to the weights of a plain (un-adapted) model, in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            layer = modules.get(name)
            if layer is None or not hasattr(layer, "weight"):
                raise ValueError(f"the model has no layer {name!r} to merge a LoRA into")
            d = w.delta()
            if tuple(d.shape) != tuple(layer.weight.shape):
                raise ValueError(f"{name}: LoRA update {tuple(d.shape)} does not fit {tuple(layer.weight.shape)}")
            layer.weight += (strength * d).to(layer.weight.dtype)
    return len(weights)


def remove_adapters(model: nn.Module) -> None:
    """Replace every peft LoRA layer by its base layer again (without merging)."""
    mods = lora_modules(model)
    for name in mods:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mods[name].get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
