"""Learning proof: DreamBooth (and LoRA) teach a tiny SD-shaped model a subject, and prior preservation keeps the class.

Run from the repository root::

    python -m benchmarks.learning_proof            # full run (3 seeds, 600 steps per training, LoRA too)
    python -m benchmarks.learning_proof --fast     # the settings of tests/test_learning_proof.py (one seed)
    python -m benchmarks.learning_proof --rebuild-base   # pre-train the base model again (~30 min on 2 cores)
    python -m benchmarks.learning_proof --keep-best --seeds 0 1 2   # keep-best / early stop through the evaluation
    python -m benchmarks.learning_proof --clip ...  # real SD1.5 on a GPU: CLIP-I / CLIP-T (see benchmarks/clip_proof.py)

What happens (CPU, deterministic, every model built in code):

1. The base model (``benchmarks/data/proof_base.safetensors``, built once by :mod:`benchmarks.proof_base`) knows
   one class: "a photo of a shape" gives circles, squares and triangles of several colours on grey, and its
   UNet follows words ("a photo of a red circle").
2. The subject ("a photo of sks shape") is one orange/blue checkered square (:mod:`benchmarks.proof_data`).
   Class images for prior preservation are the base model's own samples of the class prompt, as DreamBooth does.
3. The product's training loop (``trainers.train.train``, the function the ComfyUI nodes call) trains DreamBooth
   without and with prior preservation (same seed, same steps) and LoRA with prior preservation.
4. Seeded samples (diffusers ``StableDiffusionPipeline``, 25 DDIM steps, guidance 1, one generator per seed) are
   compared in pixel space (MSE on 0..1 values):

   - ``inst_subj``: instance-prompt samples to the nearest subject image (lower = more like the subject);
   - ``cls_drift``: class-prompt samples to the base model's samples from the same seeds (lower = class kept);
   - ``cls_subj``: class-prompt samples to the nearest subject image (higher = the class was not taken over).

The script prints one table and exits with status 1 when an expected direction fails (see :func:`checks`).

``--keep-best`` runs the product's likeness evaluation (``trainers.train.evaluation``) with :class:`PixelJudge`, a
pixel score standing in for face identity (the tiny model draws no faces), on a run whose learning rate overshoots:
it keeps the best step, not the last, and early stop ends it (:class:`KeepBest`, docs/learning_proof.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import proof_base as pb
from . import proof_data as pd
from . import proof_methods as pm

log = logging.getLogger(__name__)

EVAL_SEED = 10_000  # evaluation samples use seeds EVAL_SEED + i
CLASS_SEED = 20_000  # class images (prior preservation) use seeds CLASS_SEED + i


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration (the fast test uses :data:`FAST`)."""

    steps: int = 600
    learning_rate: float = 2e-4
    class_images: int = 64
    prior_weight: float = 1.0
    eval_samples: int = 24
    seeds: tuple[int, ...] = (0, 1, 2)
    subject_images: int = 5
    batch_size: int = 1
    text_encoder_lr: float | None = None  # None = learning_rate
    max_grad_norm: float = 1.0
    lora: bool = True
    lora_steps: int = 600
    lora_learning_rate: float = 2e-3
    lora_rank: int = 8
    # Adapters on every layer (LoCon): this tiny UNet keeps most of what it draws in its convolutions, and adapters
    # on the attention projections alone barely move its pictures (docs/learning_proof.md).
    lora_layers: str = "all"
    # issue 15: prior from the base model, and the face-weighted loss on random backgrounds (proof_methods.py)
    methods: bool = True
    mask_floor: float = 0.3  # the face-weighted runs' floor (the option's default)
    max_masked_fg_ratio: float = 1.05  # fg_subj face-weighted / unweighted: "at least as well", within seed noise
    variants: tuple[str, ...] = ()  # train only these (empty: all); --variants

    # expected directions and margins (see docs/learning_proof.md)
    max_fidelity_ratio_no_prior: float = 0.6  # inst_subj after / base, DreamBooth without prior
    max_fidelity_ratio_prior: float | None = 0.75  # inst_subj after / base, DreamBooth with prior (None: not checked)
    max_drift_ratio: float = 0.6  # cls_drift with prior / without
    min_takeover_ratio: float = 1.3  # cls_subj with prior / without
    max_fidelity_ratio_lora: float = 0.9  # inst_subj after / base, LoRA with prior


FULL = Settings()
# The test's run: one seed, fewer class images and evaluation samples, no LoRA; the same training and margins.
FAST = Settings(class_images=32, eval_samples=12, seeds=(0,), lora=False, methods=False)


# ---------------------------------------------------------------------------------------------------------------
# configs: the product's own, with the resolution floor lowered for 32-px pictures


def proof_configs():
    """``DreamBoothConfig`` / ``LoRAConfig`` subclasses that only allow a 32-px resolution (SD1.5's floor is 64)."""
    from trainers.configspec import opt
    from trainers.lora.config import LoRAConfig
    from trainers.train import DreamBoothConfig

    res = opt(pd.SIZE, "Training image side in pixels (the proof's tiny model works at 32).", min=8)

    @dataclass
    class ProofDreamBooth(DreamBoothConfig):
        resolution: int = res

    @dataclass
    class ProofLoRA(LoRAConfig):
        resolution: int = res

    return ProofDreamBooth, ProofLoRA


# ---------------------------------------------------------------------------------------------------------------
# data


def write_images(folder: Path, images: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:04d}.png")
    return folder


def prepare_data(root: Path, base_path: Path, settings: Settings) -> dict[str, Any]:
    """Subject folder, class folder (the base model's own class samples) and the base's evaluation samples."""
    subject = pd.subject_images(settings.subject_images)
    write_images(root / "instance", subject)
    base = pb.load_base(base_path)
    class_imgs = pb.sample(base, pd.CLASS_PROMPT, [CLASS_SEED + i for i in range(settings.class_images)])
    write_images(root / "class", class_imgs)
    data = {"subject": pd.to_unit_array(subject), "base": evaluate(base, settings)}
    if settings.methods:
        data["bg"] = pm.write_background_set(root / "instance_bg", settings.subject_images)
    return data


# ---------------------------------------------------------------------------------------------------------------
# metrics


def nearest_mse(samples, refs) -> float:
    """Mean over samples of the MSE to the closest reference image."""
    d = ((samples[:, None] - refs[None]) ** 2).mean(axis=(2, 3, 4))
    return float(d.min(axis=1).mean())


def paired_mse(a, b) -> float:
    return float(((a - b) ** 2).mean())


def evaluate(parts, settings: Settings) -> dict[str, Any]:
    """Instance- and class-prompt samples from the evaluation seeds, as 0..1 arrays."""
    seeds = [EVAL_SEED + i for i in range(settings.eval_samples)]
    return {
        "inst": pd.to_unit_array(pb.sample(parts, pd.INSTANCE_PROMPT, seeds)),
        "cls": pd.to_unit_array(pb.sample(parts, pd.CLASS_PROMPT, seeds)),
    }


def metrics(samples: dict[str, Any], subject, base_samples: dict[str, Any]) -> dict[str, float]:
    return {
        "inst_subj": nearest_mse(samples["inst"], subject),
        "cls_drift": paired_mse(samples["cls"], base_samples["cls"]),
        "cls_subj": nearest_mse(samples["cls"], subject),
    }


# ---------------------------------------------------------------------------------------------------------------
# training through the product's loop


@dataclass
class Run:
    name: str
    seed: int
    metrics: dict[str, float]
    seconds: float
    final_loss: float | None = None
    samples: dict[str, Any] = field(default_factory=dict, repr=False)


def train_variant(variant: str, root: Path, base_path: Path, settings: Settings, seed: int) -> tuple[Any, float, Any]:
    """Train one variant ("db", "db_prior", "lora_prior") from a fresh copy of the base; return the trained parts."""
    from trainers.train import train

    ProofDreamBooth, ProofLoRA = proof_configs()
    prior = variant in ("db_prior", "lora_prior")  # class images (the base-model prior needs none)
    common = dict(
        base_model=str(base_path),
        instance_data=str(root / "instance"),
        instance_prompt=pd.INSTANCE_PROMPT,
        class_data=str(root / "class") if prior else None,
        class_prompt=pd.CLASS_PROMPT,
        prior_preservation=prior,
        prior_loss_weight=settings.prior_weight,
        output=str(root / "out" / f"{variant}_{seed}.safetensors"),
        overwrite=True,
        batch_size=settings.batch_size,
        max_grad_norm=settings.max_grad_norm,
        seed=seed,
        train_text_encoder=True,
        gradient_checkpointing=False,
        device="cpu",
        mixed_precision="fp32",
        optimizer="adamw",
        sample_every=0,
        sample_prompts=[],
        eval_every=0,  # these runs measure the final weights themselves (keep-best has its own run below)
    )
    if variant in pm.LABELS:
        common.update(pm.train_options(variant, root))
    if variant.startswith("lora"):
        cfg = ProofLoRA(
            steps=settings.lora_steps,
            learning_rate=settings.lora_learning_rate,
            text_encoder_lr=settings.lora_learning_rate,
            lora_rank=settings.lora_rank,
            lora_alpha=float(settings.lora_rank),
            lora_layers=settings.lora_layers,
            **common,
        )
    else:
        if variant in pm.LABELS:
            common.update(mask_floor=settings.mask_floor)
        cfg = ProofDreamBooth(
            steps=settings.steps,
            learning_rate=settings.learning_rate,
            **({"text_encoder_lr": settings.text_encoder_lr} if settings.text_encoder_lr else {}),
            **common,
        )
    parts = pb.load_base(base_path)
    t0 = time.perf_counter()
    outcome = train(cfg, components=parts)
    return parts, time.perf_counter() - t0, outcome


def run_benchmark(settings: Settings, base_path: Path = pb.BASE_PATH, workdir: Path | None = None) -> dict[str, Any]:
    """Every variant for every seed. Returns the base metrics, the runs and the per-variant means."""
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="likeness-proof-") as tmp:
        root = Path(workdir or tmp)
        t0 = time.perf_counter()
        data = prepare_data(root, base_path, settings)
        base_metrics = metrics(data["base"], data["subject"], data["base"])
        log.info("base: %s (data %.0fs)", _fmt(base_metrics), time.perf_counter() - t0)
        variants = ["db", "db_prior"] + (["lora_prior"] if settings.lora else [])
        if settings.methods:
            variants += [v for v in pm.LABELS if settings.lora or v not in pm.LORA_VARIANTS]
        if settings.variants:
            variants = [v for v in variants if v in settings.variants]
        runs: list[Run] = []
        for seed in settings.seeds:
            for variant in variants:
                parts, seconds, outcome = train_variant(variant, root, base_path, settings, seed)
                samples = evaluate(parts, settings)
                m = metrics(samples, data["subject"], data["base"])
                if variant in pm.BG_VARIANTS:
                    m.update(pm.background_metrics(samples["inst"], data["subject"], data["bg"]))
                loss = outcome.losses[-1] if outcome.losses else None
                runs.append(Run(variant, seed, m, seconds, loss, samples))
                log.info("%s seed %d: %s (%.0fs training)", variant, seed, _fmt(m), seconds)
    out = {"settings": settings, "base": base_metrics, "runs": runs, "means": means(runs)}
    if settings.methods:
        out["base_bg"] = pm.background_metrics(data["base"]["inst"], data["subject"], data["bg"])
    return out


def means(runs: list[Run]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.name for r in runs):
        rs = [r for r in runs if r.name == name]
        out[name] = {k: sum(r.metrics[k] for r in rs) / len(rs) for k in rs[0].metrics}
        out[name]["seconds"] = sum(r.seconds for r in rs) / len(rs)
    return out


# ---------------------------------------------------------------------------------------------------------------
# keep the best, stop early: the product's evaluation seam with a pixel judge


SUBJECT_MSE_SCALE = 0.2  # pixel score 0 at this MSE to the nearest subject image (the base model is at ~0.105)


class PixelJudge:
    """The proof's subject score for the training loop's evaluation (``trainers.train.evaluation``): a probe's MSE to
    the nearest subject image, as ``1 - mse / SUBJECT_MSE_SCALE`` clamped to 0-1. The tiny model draws no faces, so
    this stands in for face identity; every probe gets a score."""

    name = "pixels (learning proof)"

    def __init__(self, subject) -> None:
        self.subject = subject  # (N, H, W, 3) in 0..1

    def prepare(self, trainer) -> str | None:
        return None

    def score(self, images: list) -> list[tuple[float | None, str]]:
        samples = pd.to_unit_array(images)
        mse = ((samples[:, None] - self.subject[None]) ** 2).mean(axis=(2, 3, 4)).min(axis=1)
        return [(float(min(1.0, max(0.0, 1.0 - m / SUBJECT_MSE_SCALE))), "") for m in mse]


@dataclass(frozen=True)
class KeepBest:
    """The keep-best / early-stop run: DreamBooth without prior at 5x the proof's learning rate, which learns the
    subject quickly and then drifts away from it (docs/learning_proof.md)."""

    steps: int = 500
    learning_rate: float = 1e-3
    eval_every: int = 50
    eval_images: int = 4
    eval_steps: int = 12
    patience: int = 3
    subject_images: int = 5
    seed: int = 0


def keep_best_config(root: Path, base_path: Path, kb: KeepBest):
    """The product's DreamBooth config (proof resolution) whose judge is :class:`PixelJudge`."""
    ProofDreamBooth, _ = proof_configs()
    subject = pd.to_unit_array(pd.subject_images(kb.subject_images))

    @dataclass
    class PixelJudged(ProofDreamBooth):
        def make_judge(self):
            return PixelJudge(subject)

    return PixelJudged(
        base_model=str(base_path), instance_data=str(root / "instance"), instance_prompt=pd.INSTANCE_PROMPT,
        class_prompt=pd.CLASS_PROMPT, prior_preservation=False, output=str(root / "out" / f"keep_best_{kb.seed}.safetensors"),
        overwrite=True, steps=kb.steps, learning_rate=kb.learning_rate, seed=kb.seed, train_text_encoder=True,
        gradient_checkpointing=False, device="cpu", mixed_precision="fp32", optimizer="adamw", sample_every=0,
        sample_at_end=False, sample_guidance=1.0, save_dtype="fp32", eval_every=kb.eval_every,
        eval_prompts=["{instance}"], eval_images=kb.eval_images, eval_steps=kb.eval_steps,
        early_stop_patience=kb.patience, bleed_limit=1.0,
    )  # fmt: skip


def run_keep_best(kb: KeepBest = KeepBest(), base_path: Path = pb.BASE_PATH, workdir: Path | None = None) -> dict:
    """Train with evaluation on; returns the outcome, its evaluation record, the trained parts and the config."""
    import json

    from trainers.train import Callbacks, train

    status: list[str] = []

    class Status(Callbacks):
        def on_status(self, text: str) -> None:
            status.append(text)

    with tempfile.TemporaryDirectory(prefix="likeness-keep-best-") as tmp:
        root = Path(workdir or tmp)
        write_images(root / "instance", pd.subject_images(kb.subject_images))
        cfg = keep_best_config(root, base_path, kb)
        parts = pb.load_base(base_path)
        outcome = train(cfg, components=parts, callbacks=Status())
    record = json.loads(outcome.metadata["likeness.evaluation"])
    return {"outcome": outcome, "evaluation": record, "parts": parts, "config": cfg, "status": status}


def keep_best_table(result: dict) -> str:
    """The evaluation history as a Markdown table, the kept step marked."""
    ev = result["evaluation"]
    lines = ["| step | likeness | class similarity | kept |", "|---|---|---|---|"]
    for h in ev["history"]:
        mark = "**kept**" if h["step"] == ev["kept_step"] else ""
        lines.append(f"| {h['step']} | {h['likeness']:.4f} | {h['class_similarity']:.4f} | {mark} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# expected directions


def checks(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """The directions the method must show, per seed (every seed must pass): ``[(description, passed), ...]``."""
    s: Settings = result["settings"]
    base = result["base"]
    out = []
    for seed in s.seeds:
        by = {r.name: r.metrics for r in result["runs"] if r.seed == seed}
        if "lora_prior" in by:
            lo = by["lora_prior"]
            out.append(
                (
                    f"seed {seed}: subject fidelity, LoRA + prior: inst_subj {lo['inst_subj']:.4f} "
                    f"< {s.max_fidelity_ratio_lora} x base {base['inst_subj']:.4f}",
                    lo["inst_subj"] < s.max_fidelity_ratio_lora * base["inst_subj"],
                )
            )
        if "db" not in by or "db_prior" not in by:  # --variants left them out
            continue
        db, dbp = by["db"], by["db_prior"]
        out += [
            (
                f"seed {seed}: subject fidelity, DreamBooth no prior: inst_subj {db['inst_subj']:.4f} "
                f"< {s.max_fidelity_ratio_no_prior} x base {base['inst_subj']:.4f}",
                db["inst_subj"] < s.max_fidelity_ratio_no_prior * base["inst_subj"],
            ),
            (
                f"seed {seed}: prior drift: cls_drift with prior {dbp['cls_drift']:.4f} "
                f"< {s.max_drift_ratio} x without {db['cls_drift']:.4f}",
                dbp["cls_drift"] < s.max_drift_ratio * db["cls_drift"],
            ),
            (
                f"seed {seed}: class not taken over: cls_subj with prior {dbp['cls_subj']:.4f} "
                f"> {s.min_takeover_ratio} x without {db['cls_subj']:.4f}",
                dbp["cls_subj"] > s.min_takeover_ratio * db["cls_subj"],
            ),
        ]
        if s.max_fidelity_ratio_prior is not None:
            out.append(
                (
                    f"seed {seed}: subject fidelity, DreamBooth + prior: inst_subj {dbp['inst_subj']:.4f} "
                    f"< {s.max_fidelity_ratio_prior} x base {base['inst_subj']:.4f}",
                    dbp["inst_subj"] < s.max_fidelity_ratio_prior * base["inst_subj"],
                )
            )
    return out + pm.checks(result)


# ---------------------------------------------------------------------------------------------------------------
# report

LABELS = {
    "base": "base model (before)",
    "db": "DreamBooth, no prior",
    "db_prior": "DreamBooth + prior",
    "lora_prior": "LoRA + prior",
    **pm.LABELS,
}


def _fmt(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items())


def table(result: dict[str, Any]) -> str:
    """A Markdown table: base, then each variant (mean over seeds, with the per-seed range)."""
    base = result["base"]
    lines = [
        "| model | inst_subj ↓ | inst_subj / base | cls_drift ↓ | cls_subj ↑ | train s |",
        "|---|---|---|---|---|---|",
        f"| {LABELS['base']} | {base['inst_subj']:.4f} | 1.00 | 0 | {base['cls_subj']:.4f} | |",
    ]
    for name, m in result["means"].items():
        rs = [r.metrics for r in result["runs"] if r.name == name]

        def cell(key: str, rs=rs, m=m) -> str:
            if len(rs) == 1:
                return f"{m[key]:.4f}"
            lo, hi = min(r[key] for r in rs), max(r[key] for r in rs)
            return f"{m[key]:.4f} ({lo:.3f}–{hi:.3f})"

        ratio = m["inst_subj"] / base["inst_subj"]
        lines.append(
            f"| {LABELS.get(name, name)} | {cell('inst_subj')} | {ratio:.2f} | {cell('cls_drift')} | "
            f"{cell('cls_subj')} | {m['seconds']:.0f} |"
        )
    return "\n".join(lines)


def save_grid(result: dict[str, Any], path: Path, per_row: int = 8) -> None:
    """One PNG: rows of instance and class samples (base, then each variant of the first seed)."""
    import numpy as np
    from PIL import Image

    seed = result["settings"].seeds[0]
    rows = []
    for r in [r for r in result["runs"] if r.seed == seed]:
        for key in ("inst", "cls"):
            rows.append(np.concatenate(list(r.samples[key][:per_row]), axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray((grid * 255).round().astype("uint8")).resize((grid.shape[1] * 2, grid.shape[0] * 2)).save(path)


def settings_from_args(args) -> Settings:
    """The run's :class:`Settings`: FULL or FAST, then the command line's overrides."""
    settings = FAST if args.fast else FULL
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    if args.steps:
        settings = dataclasses.replace(settings, steps=args.steps, lora_steps=args.steps)
    for item in args.set:
        key, value = item.split("=", 1)
        kind = type(getattr(settings, key))
        settings = dataclasses.replace(
            settings, **{key: kind(value) if getattr(settings, key) is not None else float(value)}
        )
    if args.no_lora:
        settings = dataclasses.replace(settings, lora=False)
    if args.variants:
        settings = dataclasses.replace(settings, variants=tuple(args.variants))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning_proof", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--fast",
        action="store_true",
        help="one seed, fewer class images and samples, no LoRA (the settings of the test)",
    )
    parser.add_argument("--rebuild-base", action="store_true", help="pre-train the base model again and save it")
    parser.add_argument("--base", type=Path, default=pb.BASE_PATH, help="base model file (default: the committed one)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: 0 1 2, or 0 with --fast)")
    parser.add_argument("--steps", type=int, help="training steps for DreamBooth and LoRA")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA rows")
    parser.add_argument(
        "--variants", nargs="+", default=[], help="train only these variants (e.g. lora lora_base_prior)"
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override Settings fields")
    parser.add_argument("--grid", type=Path, help="also save a PNG of the samples of the first seed")
    parser.add_argument(
        "--keep-best", action="store_true", help="only the keep-best / early-stop run (evaluation with a pixel judge)"
    )
    parser.add_argument(
        "--clip",
        action="store_true",
        help="real SD1.5 on a GPU: CLIP-I / CLIP-T (options: python -m benchmarks.clip_proof --help)",
    )
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.clip:
        from . import clip_proof

        return clip_proof.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.rebuild_base:
        pb.build_base(args.base)
    if args.keep_best:
        return keep_best_main(args)
    settings = settings_from_args(args)
    result = run_benchmark(settings, args.base)
    print(table(result))
    extra = pm.table(result)
    if extra:
        print("\nRandom backgrounds (instance samples):\n" + extra)
    if args.grid:
        save_grid(result, args.grid)
    failed = False
    for text, ok in checks(result):
        print(("PASS  " if ok else "FAIL  ") + text)
        failed |= not ok
    return 1 if failed else 0


def keep_best_main(args) -> int:
    """``--keep-best``: the run per seed, its history and what was kept and why."""
    failed = False
    for seed in args.seeds or [0]:
        result = run_keep_best(KeepBest(seed=seed), args.base)
        out, ev = result["outcome"], result["evaluation"]
        print(f"seed {seed}: {out.steps_done} of {out.total_steps} steps; kept step {ev['kept_step']}")
        print(keep_best_table(result))
        for line in result["status"]:
            if line.startswith(("training ends", "keeping step")):
                print(f"  {line}")
        early = "early stop" if out.steps_done < out.total_steps else "no early stop (the best came late)"
        print(f"  {early}")
        failed |= not ev["kept_step"] < out.steps_done  # keep-best must have kept an earlier step
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
