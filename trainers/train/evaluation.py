"""Likeness during training: probe images at fixed seeds, scored against the subject; keep the best step, stop early.

Every ``eval_every`` steps (and after the last step) :class:`EvaluationHook` renders a fixed **probe set** with the
current weights, through :mod:`..sampling` (DDIM, ``eval_steps`` steps, the samples' guidance). A run shorter than
``eval_every`` steps is not evaluated (there is nothing to choose between). The probes:

- the subject prompts ``eval_prompts`` (``{instance}`` = the instance prompt; by default the instance prompt itself
  and two context prompts), ``eval_images`` seeds each;
- the class prompt, with the same number of seeds.

A **judge** scores each probe against the subject (0-1, None when the probe shows no usable face). By default it is
face identity (:mod:`..identity`: dlib descriptors against the centroid of the instance photos); a config may bring its
own through a ``make_judge()`` method (the learning proof scores pixels). From the scores:

- **likeness**: the mean over the subject probes that were scored (None when none was);
- **bleed**: the class probes' mean similarity to the subject minus that of the base model's class probes, which are
  rendered and scored once before training (same seeds): how far "a photo of a woman" has moved towards the subject;
- **no face**: how many probes could not be scored.

**Keep the best** (``keep_best``): an evaluation is eligible when at least half of its subject probes were scored and
its bleed is at most ``bleed_limit``; the eligible one with the highest likeness is the result (a later one wins a
tie). Its trainable weights wait on the CPU (in the save precision) and are put back before saving; with
``keep_last`` the last step is saved too, as ``<name>_last``. **Early stop** (``early_stop_patience``): training ends
when that many evaluations in a row brought no new best.

The history, the baseline and the best weights are part of every resumable state, and an evaluation cut short by a
stop request runs again on resume, so a stopped and resumed run evaluates (and keeps) exactly what an uninterrupted
one does. Evaluation runs on the main process of a single-process run only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from .dataset import mix_seed
from .events import EvaluationInfo
from .hooks import Hook, eval_mode

log = logging.getLogger(__name__)

PROBE_SEED = 9000  # probe i uses seed mix_seed(sample_seed, PROBE_SEED + i)
MIN_SCORED = 0.5  # share of subject probes that must be scored for an evaluation to be eligible as the best


@dataclass(frozen=True)
class Probe:
    kind: str  # subject | class
    prompt: str
    seed: int


class Judge(Protocol):
    """Scores probe images against the subject."""

    name: str

    def prepare(self, trainer) -> str | None:
        """Get ready for a run (e.g. build the reference); a text says why there will be no evaluation."""
        ...

    def score(self, images: list) -> list[tuple[float | None, str]]:
        """Per image: (similarity 0-1, "") or (None, why there is no score)."""
        ...


class IdentityJudge:
    """Face identity (dlib) against the centroid of the run's instance photos."""

    name = "face identity (dlib)"

    def __init__(self) -> None:
        self.reference = None

    def prepare(self, trainer) -> str | None:
        from ..errors import LikenessError
        from ..identity import backend
        from ..identity.reference import build_reference

        ok, message = backend.status()
        if not ok:
            return message
        try:
            ref = build_reference([ex.path for ex in trainer.plan.instance.unique])
        except LikenessError as e:
            return str(e)
        if not ref.ready:
            return f"no usable face in the subject photos ({ref.summary()})"
        self.reference = ref
        log.info("likeness evaluation: %s", ref.summary())
        return None

    def score(self, images: list) -> list[tuple[float | None, str]]:
        from ..identity.scoring import score

        return [(s.similarity, s.reason) for s in score(images, self.reference)]


def judge_for(config) -> Judge:
    make = getattr(config, "make_judge", None)
    return make() if callable(make) else IdentityJudge()


def probe_set(config) -> list[Probe]:
    """The fixed probes of a run: subject prompts then the class prompt, ``eval_images`` seeds each."""
    prompts = [p.replace("{instance}", config.instance_prompt).strip() for p in config.eval_prompts if p.strip()]
    kinds = [("subject", p) for p in dict.fromkeys(prompts)] + [("class", config.class_prompt.strip())]
    out, i = [], 0
    for kind, prompt in kinds:
        for _ in range(config.eval_images):
            out.append(Probe(kind, prompt, mix_seed(config.sample_seed, PROBE_SEED + i)))
            i += 1
    return out


def render_probes(components, probes: list[Probe], config, *, stop=None, autocast=None) -> list | None:
    """The probe images (in ``probes`` order) from the components' current weights: DDIM, ``eval_steps`` steps, the
    samples' guidance, one fixed seed per probe. None when ``stop()`` turned true on the way."""
    from ..sampling import Abandoned, encode_prompt, make_pipeline, render

    pipe = make_pipeline(components, "ddim")
    images: list = []
    for (_, prompt), group in itertools.groupby(probes, key=lambda p: (p.kind, p.prompt)):
        seeds = [p.seed for p in group]
        try:
            with autocast() if autocast else contextlib.nullcontext():
                embeds = encode_prompt(pipe, prompt, "", config.sample_guidance)
                images += render(
                    pipe, embeds, seeds, height=config.resolution, width=config.resolution, steps=config.eval_steps,
                    guidance=config.sample_guidance, stop=stop,
                )  # fmt: skip
        except Abandoned:
            return None
    return images


def summarise(probes: list[Probe], scores: list[tuple[float | None, str]], base_class: float | None) -> dict:
    """One evaluation's numbers from its probes' scores (see the module docstring)."""
    rows = [
        {"kind": p.kind, "prompt": p.prompt, "seed": p.seed, "similarity": None if s is None else round(s, 4),
         "reason": why}
        for p, (s, why) in zip(probes, scores, strict=True)
    ]  # fmt: skip
    subject = [r["similarity"] for r in rows if r["kind"] == "subject" and r["similarity"] is not None]
    klass = [r["similarity"] for r in rows if r["kind"] == "class" and r["similarity"] is not None]
    class_sim = _mean(klass)
    return {
        "likeness": _mean(subject),
        "scored": len(subject),
        "subject_probes": sum(r["kind"] == "subject" for r in rows),
        "class_similarity": class_sim,
        "bleed": None if class_sim is None or base_class is None else round(class_sim - base_class, 4),
        "no_face": sum(r["similarity"] is None for r in rows),
        "scores": rows,
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


# ---------------------------------------------------------------------------------------------------------------
# the hook


class EvaluationHook(Hook):
    """Probe, score, keep the best, stop early (see the module docstring)."""

    name = "evaluation"

    def __init__(self, config, judge: Judge | None = None):
        self.cfg = config
        self.judge = judge or judge_for(config)
        self.probes = probe_set(config)
        self.off: str | None = None  # why there is no evaluation in this run
        self.history: list[dict[str, Any]] = []  # one summary per evaluation (without the probe images)
        self.baseline: dict[str, Any] | None = None  # the base model's class probes
        self.best: dict[str, Any] | None = None  # {"step", "likeness"} of the best eligible evaluation
        self.best_weights: dict[str, Any] = {}  # its trainable tensors, on the CPU
        self.pending: int | None = None  # an evaluation cut short by a stop request (runs again on resume)
        self.since_best = 0  # evaluations in a row without a new best

    # -- the seam ----------------------------------------------------------------------------------------------

    def start(self, trainer) -> None:
        if trainer.world > 1:
            self.off = "evaluation runs in single-process training only"
        else:
            self.off = self.judge.prepare(trainer)
        if self.off:
            self._announce_off(trainer)
            return
        if self.baseline is None and trainer.step == 0:
            self._baseline(trainer)
        elif self.baseline is None:  # resumed from a state made while evaluation was off: no base model to compare
            self.baseline = {"step": trainer.step, "class_similarity": None}
        if self.pending is not None and self.pending == trainer.step:
            self.evaluate(trainer)

    def after_step(self, trainer) -> None:
        if self.reads_model(trainer):
            self.evaluate(trainer)

    def reads_model(self, trainer) -> bool:
        if self.off or self.baseline is None:
            return False
        return trainer.step % self.cfg.eval_every == 0 or trainer.step == self.cfg.steps

    def stop_reason(self, trainer) -> str | None:
        patience = self.cfg.early_stop_patience
        if self.off or not patience or self.best is None or self.since_best < patience:
            return None
        if trainer.step >= self.cfg.steps:
            return None  # the run ends here anyway
        return (
            f"likeness has not improved for {self.since_best} evaluations (best {self.best['likeness']:.3f} at step "
            f"{self.best['step']})"
        )

    def before_save(self, trainer) -> None:
        if self.off:
            trainer.extra_metadata["likeness.evaluation"] = json.dumps({"judge": self.judge.name, "off": self.off})
            return
        kept = self.kept_step(trainer.step)
        if kept != trainer.step:
            if self.cfg.keep_last:
                self._save_last(trainer)
            trainer.strategy.load_state_dict_for_resume(trainer.c, self.best_weights)
            trainer.cb.on_status(self._kept_text(trainer.step))
        trainer.extra_metadata.update(self.metadata(trainer.step))

    def state(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "baseline": self.baseline,
            "best": self.best,
            "pending": self.pending,
            "since_best": self.since_best,
        }

    def tensors(self) -> dict[str, Any]:
        return dict(self.best_weights)

    def load(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self.history = list(state.get("history") or [])
        self.baseline = state.get("baseline")
        self.best = state.get("best")
        self.pending = state.get("pending")
        self.since_best = int(state.get("since_best") or 0)
        self.best_weights = dict(tensors)

    # -- evaluating --------------------------------------------------------------------------------------------

    def _baseline(self, trainer) -> None:
        klass = [p for p in self.probes if p.kind == "class"]
        images = self.render(trainer, klass)
        if images is None:
            return  # stopped: the run ends before training, the next one starts afresh
        numbers = summarise(klass, self.judge.score(images), None)
        self.baseline = {"step": trainer.step, "class_similarity": numbers["class_similarity"], **numbers}
        info = self._info(trainer, "baseline", numbers, images, klass)
        info.message = "base model's class probes, scored before training (for bleed)"
        self._emit(trainer, info)

    def evaluate(self, trainer) -> None:
        from .hooks import sampling_weights

        with sampling_weights(trainer):  # with EMA on, the EMA weights are judged and kept (they are the result)
            images = self.render(trainer, self.probes)
            snapshot = self._snapshot(trainer) if images is not None and self.cfg.keep_best else None
        if images is None:
            self.pending = trainer.step
            return
        self.pending = None
        numbers = summarise(self.probes, self.judge.score(images), self.baseline.get("class_similarity"))
        record = {"step": trainer.step, **{k: v for k, v in numbers.items() if k != "scores"}}
        record["eligible"] = self._eligible(numbers)
        if record["eligible"] and (self.best is None or numbers["likeness"] >= self.best["likeness"]):
            self.best = {"step": trainer.step, "likeness": numbers["likeness"], "bleed": numbers["bleed"]}
            self.since_best = 0
            if snapshot is not None:
                self.best_weights = snapshot
        elif numbers["likeness"] is not None:
            self.since_best += 1
        self.history.append(record)
        self._emit(trainer, self._info(trainer, "evaluated", numbers, images, self.probes))

    def _eligible(self, numbers: dict[str, Any]) -> bool:
        if numbers["likeness"] is None or numbers["scored"] < MIN_SCORED * numbers["subject_probes"]:
            return False
        return numbers["bleed"] is None or numbers["bleed"] <= self.cfg.bleed_limit

    def render(self, trainer, probes: list[Probe]) -> list | None:
        """The probe images from the current weights (None when a stop request cut the rendering short)."""
        trainer.cb.on_progress(trainer.phase_info("evaluating"))
        with _sampling_mode(trainer):
            return render_probes(trainer.c, probes, trainer.cfg, stop=trainer.stop, autocast=trainer.accel.autocast)

    def _snapshot(self, trainer) -> dict[str, Any]:
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(getattr(self.cfg, "save_dtype", ""), torch.float32)
        out = {}
        for k, v in trainer.strategy.state_dict_for_checkpoint(trainer.c).items():
            t = v.detach().to("cpu")
            out[k] = (t.to(dtype) if t.is_floating_point() else t).clone()
        return out

    # -- results -----------------------------------------------------------------------------------------------

    def kept_step(self, last_step: int) -> int:
        """The step whose weights are the result: the best one (keep_best), else the last."""
        if self.cfg.keep_best and self.best is not None and self.best_weights:
            return int(self.best["step"])
        return last_step

    def metadata(self, last_step: int) -> dict[str, str]:
        """What the result records: the history, the baseline, the best and the kept step."""
        data = {
            "judge": self.judge.name,
            "history": self.history,
            "base_class_similarity": (self.baseline or {}).get("class_similarity"),
            "best": self.best,
            "kept_step": self.kept_step(last_step),
            "last_step": last_step,
            "bleed_limit": self.cfg.bleed_limit,
        }
        return {
            "likeness.evaluation": json.dumps(data, sort_keys=True),
            "likeness.kept_step": str(data["kept_step"]),
        }

    def _kept_text(self, last_step: int) -> str:
        b = self.best
        return (
            f"keeping step {b['step']} (likeness {b['likeness']:.3f}, the best of {len(self.history)} evaluations) "
            f"instead of step {last_step}"
        )

    def _save_last(self, trainer) -> None:
        from .plan import free_output_path

        out = trainer.plan.output
        path = free_output_path(out.parent, f"{out.stem}_last")
        meta = {**trainer.metadata(), **self.metadata(trainer.step), "likeness.kept_step": str(trainer.step)}
        trainer.strategy.save_result(trainer.c, path, meta, self.cfg, trainer.ctx)
        trainer.cb.on_status(f"saved the last step ({trainer.step}) as {path.name}")

    def _info(self, trainer, state: str, numbers: dict, images: list, probes: list[Probe]) -> EvaluationInfo:
        best = self.best or {}
        return EvaluationInfo(
            step=trainer.step, total=self.cfg.steps, state=state, likeness=numbers["likeness"],
            bleed=numbers["bleed"], class_similarity=numbers["class_similarity"], no_face=numbers["no_face"],
            probes=len(probes), best_step=best.get("step"), best_likeness=best.get("likeness"),
            judge=self.judge.name, message=_message(numbers), scores=numbers["scores"], images=images,
        )  # fmt: skip

    def _announce_off(self, trainer) -> None:
        text = f"likeness evaluation is off: {self.off}"
        trainer.cb.on_status(text)
        self._emit(trainer, EvaluationInfo(trainer.step, self.cfg.steps, "off", judge=self.judge.name, message=text))

    @staticmethod
    def _emit(trainer, info: EvaluationInfo) -> None:
        notify = getattr(trainer.cb, "on_evaluation", None)  # front ends written before evaluations existed
        if callable(notify):
            notify(info)


def _message(numbers: dict[str, Any]) -> str:
    if numbers["no_face"] == len(numbers["scores"]):
        return "no face in any probe image"
    if numbers["no_face"]:
        return f"{numbers['no_face']} of {len(numbers['scores'])} probe images without a usable face"
    return ""


def evaluation_line(info: EvaluationInfo) -> str:
    """One line for logs and terminals: likeness, bleed, no-face count, best so far."""
    if info.state == "off":
        return info.message
    parts = []
    if info.state == "baseline":
        similar = f": similarity {info.class_similarity:.3f}" if info.class_similarity is not None else ""
        parts.append(f"base model's class probes{similar}")
    else:
        parts.append(f"likeness {info.likeness:.3f}" if info.likeness is not None else "likeness -")
    if info.bleed is not None:
        parts.append(f"bleed {info.bleed:+.3f}")
    parts.append(f"no face {info.no_face}/{info.probes}")
    if info.best_step is not None:
        parts.append(f"best {info.best_likeness:.3f} at step {info.best_step}")
    note = info.message if info.message and info.state != "baseline" else ""
    return ", ".join(parts) + (f" ({note})" if note else "")


def summary_lines(metadata: dict[str, Any]) -> list[str]:
    """What a result's ``likeness.evaluation`` metadata says, for people (Apply Trained Model's info)."""
    raw = metadata.get("likeness.evaluation")
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    if data.get("off"):
        return [f"likeness: not measured ({data['off']})"]
    history = [h for h in data.get("history") or [] if isinstance(h, dict)]
    best, kept, last = data.get("best"), data.get("kept_step"), data.get("last_step")
    if not isinstance(best, dict):
        return [f"likeness: not measured (no face in the probe images of {len(history)} evaluations)"]
    lines = [
        f"likeness: {best.get('likeness', 0):.3f} at step {best.get('step')} (the best of {len(history)} evaluations)"
    ]
    if kept is not None and kept != last:
        lines.append(f"kept step {kept} of {last} (keep_best)")
    final = history[-1] if history else {}
    if final.get("likeness") is not None and final.get("step") != best.get("step"):
        lines.append(f"likeness at the last evaluation (step {final['step']}): {final['likeness']:.3f}")
    if best.get("bleed") is not None:
        lines.append(f"bleed {best['bleed']:+.3f} (limit {data.get('bleed_limit', 0):.2f}), judge: {data.get('judge')}")
    return lines


@contextlib.contextmanager
def _sampling_mode(trainer):
    """Trained modules in eval mode and the offloaded parts on the device while probes render (as samples do)."""
    with eval_mode(trainer), trainer.parts_on_device():
        yield
