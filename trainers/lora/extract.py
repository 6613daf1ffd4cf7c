"""Extract a LoRA from a fully fine-tuned model: per layer, the best rank-r approximation of ``W_tuned - W_base``.

For a layer's weight change ``D`` (convolutions flattened to ``out x (in*k*k)``), the truncated SVD
``D ~ U_r diag(S_r) Vh_r`` is the closest rank-r matrix (Eckart-Young). We store ``up = U_r diag(S_r)``,
``down = Vh_r`` and ``alpha = r`` (scale 1), so a loader's ``alpha / rank * up @ down`` is exactly that
approximation. Layers that did not change (e.g. a text encoder that was not trained) are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import adapters
from .adapters import LoraWeights
from .config import LAYER_SETS
from .kohya import TrainingFacts, base_model_hashes, save_kohya, training_metadata

log = logging.getLogger(__name__)

__all__ = ["LAYER_SETS", "extract_layer", "extract_lora", "extract_lora_files"]


def extract_layer(delta: torch.Tensor, rank: int) -> tuple[LoraWeights, float]:
    """Rank-``rank`` LoRA of one weight change, and the share of its energy (squared norm) that it keeps.

    The rank is lowered to the change's numerical rank when that is smaller (smaller file, same update).
    """
    d = delta.detach().float()
    flat = d.flatten(1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    significant = int((s > s[0] * 1e-5).sum()) if s.numel() else 0  # numerically zero directions add nothing
    r = max(1, min(rank, significant))
    up = u[:, :r] * s[:r]
    down = vh[:r]
    total = float(s.square().sum())
    kept = float(s[:r].square().sum()) / total if total > 0 else 1.0
    if d.dim() == 4:
        down = down.reshape(r, *d.shape[1:])
        up = up.reshape(d.shape[0], r, 1, 1)
    return LoraWeights(down=down.contiguous(), up=up.contiguous(), alpha=float(r)), kept


def extract_lora(
    base: nn.Module, tuned: nn.Module, names: list[str], rank: int, min_change: float = 1e-7
) -> tuple[dict[str, LoraWeights], dict[str, float]]:
    """LoRA layers for the modules ``names`` of two models of the same shape; unchanged layers are skipped."""
    bmods, tmods = dict(base.named_modules()), dict(tuned.named_modules())
    out: dict[str, LoraWeights] = {}
    kept: dict[str, float] = {}
    for name in names:
        wb, wt = bmods[name].weight, tmods[name].weight
        if wb.shape != wt.shape:
            raise ValueError(f"{name}: the models differ in shape ({tuple(wb.shape)} vs {tuple(wt.shape)})")
        delta = wt.detach().float() - wb.detach().float()
        if float(delta.abs().max()) <= min_change:
            continue
        out[name], kept[name] = extract_layer(delta, rank)
    return out, kept


def extract_lora_files(
    base: Any,
    tuned_path: str | Path,
    out_path: str | Path,
    *,
    rank: int = 32,
    layers: str = "attention_ff",
    text_encoder: bool = True,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> dict[str, str]:
    """Load a base model (``ModelHandle`` or path) and a fine-tuned file, extract, save a kohya LoRA.

    Returns the file's metadata. Both models are loaded in fp16 (the differences are taken per layer in fp32).
    """
    from ..errors import CheckpointError
    from ..handles import ModelHandle
    from ..model_io import load_components

    if rank < 1:
        raise ValueError("rank must be at least 1")
    if layers not in LAYER_SETS:
        raise ValueError(f"unknown layer set {layers!r}; choose one of {LAYER_SETS}")
    base_path = Path(base.path if isinstance(base, ModelHandle) else base)
    b = load_components(base, tokenizer=False, dtype=torch.float16)
    t = load_components(str(tuned_path), tokenizer=False, dtype=torch.float16)
    unet, kept = extract_lora(b.unet, t.unet, adapters.unet_target_names(b.unet, layers), rank)
    te: dict[str, LoraWeights] = {}
    if text_encoder:
        te, kept_te = extract_lora(
            b.text_encoder, t.text_encoder, adapters.text_encoder_target_names(b.text_encoder, layers), rank
        )
        kept.update({"te:" + k: v for k, v in kept_te.items()})
    del b, t
    if not unet and not te:
        raise CheckpointError(f"{tuned_path} does not differ from its base model {base_path}: nothing to extract")
    legacy, full = ("", "")
    if base_path.is_file():
        legacy, full = base_model_hashes(base_path)
    facts = TrainingFacts(
        rank=rank,
        alpha=float(rank),
        layers=layers,
        train_text_encoder=bool(te),
        output_name=Path(out_path).stem,
        base_model_path=str(base_path),
        base_model_name=base_path.name,
        base_model_hash=legacy,
        base_model_sha256=full,
        training_comment=f"extracted (rank {rank}, SVD) from {Path(tuned_path).name} minus {base_path.name}",
        extra={
            "likeness.kind": "lora_extract",
            "likeness.extract_source": Path(tuned_path).name,
            "likeness.extract_energy": json.dumps(_summary(kept)),
        },
    )
    md = training_metadata(facts)
    save_kohya(out_path, unet, te, metadata=md, dtype=dtype, overwrite=overwrite)
    log.info("extracted %d UNet + %d text encoder layers at rank %d -> %s", len(unet), len(te), rank, out_path)
    return md


def _summary(kept: Mapping[str, float]) -> dict[str, float]:
    vals = list(kept.values())
    if not vals:
        return {}
    return {"layers": len(vals), "mean": round(sum(vals) / len(vals), 4), "min": round(min(vals), 4)}
