"""Learning-proof variants for the issue-15 training methods (run by ``python -m benchmarks.learning_proof``).

- ``db_base_prior``: DreamBooth with ``prior="base_model"``: no class images exist for it; the class target is the
  frozen base model's prediction. Judged like class images: ``cls_drift`` < 0.6 x the no-prior run's.
- ``lora`` / ``lora_base_prior``: LoRA (the proof's LoRA settings) without prior and with ``prior="base_model"``
  (the adapters switched off for the class target's pass; no class images). Judged like DreamBooth's:
  ``cls_drift`` with the base-model prior < 0.6 x the no-prior LoRA run's.
- ``db_bg`` / ``db_bg_masked``: DreamBooth without prior on the subject standing on a new random background in every
  picture (:func:`~benchmarks.proof_data.subject_on_backgrounds`), with masks beside the pictures, trained with the
  face-weighted loss off and on (``mask_floor`` 0.3, the default). Measured on the instance samples:

  - ``fg_subj``: MSE on the subject square only, to the nearest clean subject picture (lower = the subject is
    reached; the face-weighted run must reach it at least as well: within ``max_masked_fg_ratio`` = 5 %, about the
    seed-to-seed spread of ``inst_subj``);
  - ``bg_train``: MSE outside that square, to the nearest training picture (lower = the samples' background has
    drifted towards the training backgrounds; the face-weighted run must stay further away).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import proof_data as pd

BG_VARIANTS = ("db_bg", "db_bg_masked")
LORA_VARIANTS = ("lora", "lora_base_prior")  # trained only when the proof's LoRA row is on
BASE_PRIOR_PAIRS = (("", "db", "db_base_prior"), ("LoRA, ", *LORA_VARIANTS))  # (label, without prior, base prior)
LABELS = {
    "db_base_prior": "DreamBooth + prior from the base model",
    "lora": "LoRA, no prior",
    "lora_base_prior": "LoRA + prior from the base model",
    "db_bg": "DreamBooth, random backgrounds, unweighted loss",
    "db_bg_masked": "DreamBooth, random backgrounds, face-weighted loss",
}


def write_background_set(folder: Path, n: int) -> dict[str, Any]:
    """The subject-on-backgrounds pictures and their masks (``0000.png`` + ``0000.mask.png``); returns the arrays
    the metrics need: the training pictures and the subject masks (0..1)."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = pd.subject_on_backgrounds(n)
    for i, (img, mask) in enumerate(pairs):
        img.save(folder / f"{i:04d}.png")
        mask.save(folder / f"{i:04d}.mask.png")
    train = pd.to_unit_array([img for img, _ in pairs])
    masks = np.stack([np.asarray(m, dtype=np.float64) / 255.0 for _, m in pairs])[..., None]
    return {"train": train, "masks": masks}


def background_metrics(samples, subject, bg: dict[str, Any]) -> dict[str, float]:
    """``fg_subj`` and ``bg_train`` (see the module docstring) of instance samples ``(N, H, W, 3)`` in 0..1."""
    masks, train = bg["masks"], bg["train"]  # masks (R, H, W, 1) of the clean subject pictures ``subject`` (R, ...)
    area_fg = masks.sum(axis=(1, 2, 3)) * 3
    area_bg = (1 - masks).sum(axis=(1, 2, 3)) * 3
    fg = (((samples[:, None] - subject[None]) ** 2) * masks[None]).sum(axis=(2, 3, 4)) / area_fg[None]
    nearest = fg.argmin(axis=1)
    outside = 1 - masks[nearest]  # (N, H, W, 1): the background of each sample's nearest subject place
    d = (((samples[:, None] - train[None]) ** 2) * outside[:, None]).sum(axis=(2, 3, 4)) / area_bg[nearest][:, None]
    return {"fg_subj": float(fg.min(axis=1).mean()), "bg_train": float(d.min(axis=1).mean())}


def train_options(variant: str, root: Path) -> dict[str, Any]:
    """What a method variant changes in the proof's DreamBooth (or LoRA) config."""
    if variant == "lora":
        return {}
    if variant in ("db_base_prior", "lora_base_prior"):
        return {"prior_preservation": True, "prior": "base_model", "class_data": None}
    if variant in BG_VARIANTS:
        return {"instance_data": str(root / "instance_bg"), "masked_loss": variant == "db_bg_masked"}
    raise ValueError(variant)


def checks(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """The methods' expected directions, per seed."""
    s = result["settings"]
    out = []
    for seed in s.seeds:
        by = {r.name: r for r in result["runs"] if r.seed == seed}
        for label, without, with_base in BASE_PRIOR_PAIRS:
            if without in by and with_base in by:
                plain, base = by[without].metrics, by[with_base].metrics
                out.append(
                    (
                        f"seed {seed}: {label}prior from the base model: cls_drift {base['cls_drift']:.4f} "
                        f"< {s.max_drift_ratio} x without prior {plain['cls_drift']:.4f}",
                        base["cls_drift"] < s.max_drift_ratio * plain["cls_drift"],
                    )
                )
        if all(v in by for v in BG_VARIANTS):
            plain, masked = by["db_bg"].metrics, by["db_bg_masked"].metrics
            out += [
                (
                    f"seed {seed}: face-weighted loss reaches the subject at least as well: fg_subj "
                    f"{masked['fg_subj']:.4f} <= {s.max_masked_fg_ratio} x unweighted {plain['fg_subj']:.4f}",
                    masked["fg_subj"] <= s.max_masked_fg_ratio * plain["fg_subj"],
                ),
                (
                    f"seed {seed}: face-weighted loss copies the backgrounds less: bg_train "
                    f"{masked['bg_train']:.4f} > unweighted {plain['bg_train']:.4f}",
                    masked["bg_train"] > plain["bg_train"],
                ),
            ]
    return out


def table(result: dict[str, Any]) -> str:
    """The background variants' own metrics (mean over seeds), with the base model's for reference."""
    runs = [r for r in result["runs"] if r.name in BG_VARIANTS]
    if not runs:
        return ""
    base = result["base_bg"]
    lines = [
        "| model | fg_subj ↓ | bg_train ↑ | inst_subj ↓ |",
        "|---|---|---|---|",
        f"| base model (before) | {base['fg_subj']:.4f} | {base['bg_train']:.4f} | {result['base']['inst_subj']:.4f} |",
    ]
    for name in BG_VARIANTS:
        rs = [r.metrics for r in runs if r.name == name]
        cells = []
        for key in ("fg_subj", "bg_train", "inst_subj"):
            vals = [m[key] for m in rs]
            mean = sum(vals) / len(vals)
            cells.append(f"{mean:.4f}" if len(vals) == 1 else f"{mean:.4f} ({min(vals):.3f}–{max(vals):.3f})")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
