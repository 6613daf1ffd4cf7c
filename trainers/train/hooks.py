"""Hooks: work that runs beside the training steps without living in the loop (evaluation, EMA, validation, ...).

The loop calls every hook of a run at fixed points, in order:

1. ``start(trainer)`` — once, after setup and after a resumable state was loaded (``trainer.step`` is where the run
   starts);
2. ``after_step(trainer)`` — after each optimizer step (``trainer.step`` counts it). On a GPU the loop reads a
   step's losses during the next step (``Trainer.settle``); a hook whose ``reads_model(trainer)`` is true for this
   step (the default) gets it checked first (finite, reported), one that only follows the weights (the EMA) says
   False and costs the GPU no wait;
3. ``stop_reason(trainer)`` — after each step: a text ends training early (e.g. early stopping) and the run is then
   finished and saved as usual; ``None`` goes on;
4. ``before_save(trainer)`` — before the result is written: a hook may put other weights in place (the best
   checkpoint, EMA weights) and adds its metadata to ``trainer.extra_metadata``;
5. ``before_samples(trainer)`` / ``after_samples(trainer)`` — around every set of sample images (the EMA puts its
   weights in place for them and the trained ones back afterwards, exactly).

A hook that keeps state across a stop and a resume returns it from ``state()`` (JSON data, saved in ``state.json``)
and ``tensors()`` (saved in ``hooks.safetensors``), and gets it back in ``load(state, tensors)`` before ``start``.
Hooks for a config come from :func:`hooks_for`.
"""

from __future__ import annotations

import contextlib
from typing import Any


class Hook:
    """A no-op hook; subclasses override what they need."""

    name = "hook"

    def start(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def reads_model(self, trainer) -> bool:  # noqa: ARG002 - the Hook interface
        """Whether ``after_step`` of this step evaluates, shows or saves the model (then its step is checked first)."""
        return True

    def stop_reason(self, trainer) -> str | None:
        return None

    def before_save(self, trainer) -> None:
        pass

    def before_samples(self, trainer) -> None:
        pass

    def after_samples(self, trainer) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, Any]:
        return {}

    def load(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        pass


def hooks_for(config) -> list[Hook]:
    """The hooks a config asks for, in the order they run."""
    hooks: list[Hook] = []
    if getattr(config, "ema", False):
        from .ema import EMAHook

        hooks.append(EMAHook(config.ema_decay, config.ema_start_step, config.ema_on_cpu))
    if getattr(config, "validation_images", 0) or getattr(config, "validation_folder", None):
        from .validation import ValidationHook

        hooks.append(ValidationHook(config.validation_every))
    every = getattr(config, "eval_every", 0)
    if every and config.steps >= every:  # a run shorter than one interval has nothing to choose between
        from .evaluation import EvaluationHook

        hooks.append(EvaluationHook(config))
    return hooks


@contextlib.contextmanager
def sampling_weights(trainer):
    """The weights the hooks want samples drawn with (EMA), for the duration of the block."""
    for hook in trainer.hooks:
        hook.before_samples(trainer)
    try:
        yield
    finally:
        for hook in reversed(trainer.hooks):
            hook.after_samples(trainer)


@contextlib.contextmanager
def eval_mode(trainer):
    """The trained modules in eval mode for a while (dropout off), then back to training (a frozen text encoder
    stays in eval mode): what hooks that render or measure between steps run under."""
    for module in trainer.modules.values():
        module.eval()
    try:
        yield
    finally:
        for module in trainer.modules.values():
            module.train()
        if not trainer.te_training:
            trainer.c.text_encoder.eval()
