"""EMA weights (``ema=true``): an exponential moving average of what trains, used for the result and the samples.

After every optimizer step ``n`` the hook moves its copy towards the trained weights::

    ema = decay_n * ema + (1 - decay_n) * weights,   decay_n = min(ema_decay, (1 + k) / (10 + k)),  k = n - start - 1

— diffusers' ``EMAModel`` rule (warm-up ``(1+k)/(10+k)``, so early steps are not frozen in), with ``k <= 0`` meaning a
plain copy: until ``ema_start_step`` the EMA *is* the weights. The copy is fp32, on the training device or, with
``ema_on_cpu``, in CPU memory (a full copy of what trains: 3.4 GB for SD1.5's UNet; each step then copies the
weights over, which is slower). Before the result is saved the EMA weights replace the trained ones; sample images
during training are drawn with the EMA weights, the trained ones being put back afterwards bit for bit. The EMA
travels in resumable states (``hooks.safetensors``), so a stopped and resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .hooks import Hook
from .state import StateError

log = logging.getLogger(__name__)


def ema_decay(decay: float, step: int, start_step: int) -> float:
    """The decay applied after optimizer step ``step`` (0 = copy the weights)."""
    k = step - start_step - 1
    if k <= 0:
        return 0.0
    return min(decay, (1 + k) / (10 + k))


def trained_parameters(trainer) -> dict[str, Any]:
    """``"<module>.<parameter>"`` -> every parameter the optimizer was given, in a stable order."""
    ids = {id(p) for group in trainer.groups for p in group["params"]}
    return {
        f"{prefix}.{name}": p
        for prefix, module in trainer.modules.items()
        for name, p in module.named_parameters()
        if id(p) in ids
    }


class EMAHook(Hook):
    """The EMA of the trained parameters (see the module docstring)."""

    name = "ema"

    def __init__(self, decay: float, start_step: int = 0, on_cpu: bool = False):
        self.decay, self.start_step, self.on_cpu = float(decay), int(start_step), bool(on_cpu)
        self.shadow: dict[str, Any] | None = None
        self.params: dict[str, Any] = {}
        self.backup: dict[str, Any] | None = None
        self.applied = False  # the EMA weights replaced the trained ones for good (before the save)
        self.updated_at = -1  # the step the EMA last took in (samples of a step may come before after_step)

    def start(self, trainer) -> None:
        self.params = trained_parameters(trainer)
        where = "cpu" if self.on_cpu else trainer.device
        if self.shadow is None:
            self.shadow = {k: p.detach().float().to(where, copy=True) for k, p in self.params.items()}
            self.updated_at = trainer.step
            return
        if set(self.shadow) != set(self.params):
            where = trainer.plan.resume
            raise StateError(
                where,
                f"resumable state {where}: its EMA weights do not fit this run's trained parameters; "
                "start this training afresh (force_retrain) or turn ema off",
            )
        self.shadow = {k: v.float().to(where) for k, v in self.shadow.items()}
        self.updated_at = trainer.step

    def reads_model(self, trainer) -> bool:  # noqa: ARG002 - the Hook interface
        return False  # it follows the weights; a diverged step is caught before the shadow is used or saved

    def after_step(self, trainer) -> None:
        import torch

        if self.updated_at == trainer.step:
            return
        self.updated_at = trainer.step
        d = ema_decay(self.decay, trainer.step, self.start_step)
        with torch.no_grad():
            for k, p in self.params.items():
                s = self.shadow[k]
                if d == 0.0:
                    s.copy_(p.detach())
                else:
                    s.lerp_(p.detach().to(s.device, s.dtype), 1.0 - d)

    def _put(self, source: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(source[k].to(p.device, p.dtype))

    def before_samples(self, trainer) -> None:
        if self.applied or self.shadow is None:
            return
        if trainer.step > 0:
            self.after_step(trainer)  # the samples of step n show the EMA including step n
        self.backup = {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()}
        self._put(self.shadow)

    def after_samples(self, trainer) -> None:
        if self.backup is not None:
            self._put(self.backup)
            self.backup = None

    def before_save(self, trainer) -> None:
        self._put(self.shadow)
        self.applied = True
        trainer.extra_metadata["likeness.ema"] = json.dumps({"decay": self.decay, "start_step": self.start_step})
        trainer.cb.on_status(f"saving the EMA weights (decay {self.decay:g})")

    def state(self) -> dict[str, Any]:
        return {"decay": self.decay, "start_step": self.start_step}

    def tensors(self) -> dict[str, Any]:
        return dict(self.shadow or {})

    def load(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        if tensors:
            self.shadow = dict(tensors)
