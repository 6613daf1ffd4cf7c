"""Continuing a LoRA: the file a LoRA run starts from (``continue_from``), read and mapped onto the model.

Any kohya/LyCORIS-format file our reader takes can be continued: ours, kohya's, LyCORIS' LoHa/LoKr/DoRA, with
diffusers-style (kohya) or LDM-style (``lora_unet_input_blocks_…``) UNet layer names; the latter are converted, and
the result is saved in kohya's diffusers-style names like every Likeness LoRA. The file decides the adapter type,
the rank and alpha of each layer and which layers there are; the run's own ``lora_*`` options are not used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from . import adapters
from .kohya import read_kohya, resolve
from .weights import LayerWeights, LokrWeights

log = logging.getLogger(__name__)


@dataclass
class StartLoRA:
    """The LoRA a run continues: its layers by module name, and the shape they share."""

    path: Path
    unet: dict[str, LayerWeights]
    text_encoder: dict[str, LayerWeights]
    kind: str  # lora | loha | lokr
    dora: bool
    rank: int
    alpha: float
    lokr_factor: int
    metadata: dict[str, str]


def _factor(metadata: dict[str, str]) -> int:
    """The LoKr factor the file was made with (its ``ss_network_args``), else the automatic one (-1)."""
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
        return int(args.get("factor", -1)) if isinstance(args, dict) else -1
    except (TypeError, ValueError):
        return -1


def _rank_alpha(layers: dict[str, LayerWeights]) -> tuple[int, float]:
    """The most common rank and alpha of the file's layers (LoKr layers without a rank do not count)."""
    ranked = [w for w in layers.values() if not (isinstance(w, LokrWeights) and not w.decomposed)]
    pool = ranked or list(layers.values())
    ranks = [int(w.rank or w.alpha) for w in pool]
    alphas = [float(w.alpha) for w in pool]
    return max(set(ranks), key=ranks.count), max(set(alphas), key=alphas.count)


def read_start(path: str | Path, unet: nn.Module, text_encoder: nn.Module) -> StartLoRA:
    """Read ``path`` and map its layers onto ``unet`` / ``text_encoder``; CheckpointError names the file."""
    p = Path(path)
    source = f"continue_from {p}"
    f = read_kohya(p)
    unet_w, te_w = resolve(f, unet, text_encoder, source=source)
    if not unet_w:
        raise CheckpointError(f"{source}: the file has no UNet layers; continue a LoRA trained on the UNet")
    try:
        kind, dora = adapters.shape_of({**unet_w, **te_w})
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    rank, alpha = _rank_alpha({**unet_w, **te_w})
    factor = _factor(f.metadata) if kind == "lokr" else -1
    log.info(
        "continuing %s: %s%s, rank %d, alpha %g, %d UNet + %d text encoder layers",
        p.name, kind, " (DoRA)" if dora else "", rank, alpha, len(unet_w), len(te_w),
    )  # fmt: skip
    return StartLoRA(p, unet_w, te_w, kind, dora, rank, alpha, factor, dict(f.metadata))


def add_start(model: nn.Module, layers: dict[str, LayerWeights], start: StartLoRA, dropout: float) -> int:
    """Adapters on ``model`` exactly as the file has them, loaded; a layout peft cannot rebuild is a clear error."""
    try:
        return adapters.add_adapters_from(model, layers, dropout=dropout, lokr_factor=start.lokr_factor)
    except ValueError as e:
        raise CheckpointError(f"continue_from {start.path}: its layers cannot be rebuilt for training ({e})") from None


def layer_set_of(unet: nn.Module, names: list[str]) -> str:
    """The smallest of our layer sets that holds ``names`` ("custom" when none does)."""
    wanted = set(names)
    for layers in adapters.LAYER_SETS:
        if wanted <= set(adapters.unet_target_names(unet, layers)):
            return layers
    return "custom"
