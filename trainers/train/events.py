"""What a front end sees of a training run: progress reports, the callbacks it implements, the outcome.

The engine never prints and never imports a front end. It calls :class:`Callbacks` (progress, samples, status,
likeness evaluations) and polls a ``stop()`` callable every step; the ComfyUI nodes turn these into a progress bar
and ``likeness.*`` browser events, the CLI into a terminal bar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ProgressInfo:
    """One progress report (also the payload of the ``likeness.progress`` browser event)."""

    step: int
    total: int
    phase: str  # caching | training | validation | sampling | saving
    loss: float | None = None
    loss_smoothed: float | None = None
    lr: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    it_s: float | None = None
    loss_instance: float | None = None
    loss_prior: float | None = None
    loss_validation: float | None = None  # phase "validation": the held-out photos' loss at this step

    def as_event(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class EvaluationInfo:
    """One likeness evaluation (also the payload of the ``likeness.evaluation`` browser event, without the images).

    ``state`` is ``baseline`` (the base model's class probes, before training), ``evaluated``, or ``off`` (``message``
    says why: no identity backend, no face in the subject photos). ``likeness`` is the mean similarity (0-1) of the
    subject probes that show a face (None when none does); ``bleed`` is how much closer to the subject the class
    probes came than the base model's (None before the baseline exists or without a face).
    """

    step: int
    total: int
    state: str  # baseline | evaluated | off
    likeness: float | None = None
    bleed: float | None = None
    class_similarity: float | None = None
    no_face: int = 0
    probes: int = 0
    best_step: int | None = None
    best_likeness: float | None = None
    judge: str = ""
    message: str = ""
    scores: list[dict[str, Any]] = field(default_factory=list)  # per probe: kind, prompt, seed, similarity, reason
    images: list = field(default_factory=list, repr=False)  # the probe images (PIL), in ``scores`` order

    def as_event(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "images"}


class Callbacks:
    """What a front end hears during training. Subclass and override what you need (all no-ops here)."""

    def on_progress(self, info: ProgressInfo) -> None:
        pass

    def on_sample(self, step: int, images: list, prompts: list[str]) -> None:
        pass

    def on_status(self, text: str) -> None:
        pass

    def on_evaluation(self, info: EvaluationInfo) -> None:
        pass


@dataclass
class TrainOutcome:
    state: str  # "finished" | "stopped"
    steps_done: int
    total_steps: int
    path: Path | None  # the saved result (None when stopped)
    state_path: Path | None  # the last resumable state written (if any)
    losses: list[float] = field(default_factory=list)  # one per optimizer step, from step 1 (resumed runs included)
    losses_instance: list[float] = field(default_factory=list)
    losses_prior: list[float] = field(default_factory=list)
    samples: list = field(default_factory=list)  # last sample images (PIL)
    sample_prompts: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
