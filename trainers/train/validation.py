"""Validation loss: the diffusion loss on held-out photos at fixed timesteps with fixed noise, every K steps.

Unlike the training loss (new noise and timesteps every step), this curve compares like with like, so it shows
over-fitting: it falls while the model learns the subject and turns up once it memorises the training photos
(kohya sd-scripts' validation loss, 2025; OneTrainer, SimpleTuner and ai-toolkit have the same idea).

- The photos are ``validation_images`` held out of the instance folder (spread evenly over its sorted files; never
  trained on) or a ``validation_folder`` (see :func:`~.plan.held_out`).
- Each photo is encoded once (the VAE posterior's mean, no sampling); at each of :data:`TIMESTEPS` the noise is
  drawn from a generator seeded with ``(seed, photo, timestep)``, so every evaluation sees the same noisy latents.
- The loss is the plain MSE to the target (no face weighting, no Min-SNR), averaged over photos and timesteps, with
  the trained modules in eval mode and no gradients. It runs at step 0 and every ``validation_every`` steps (and at
  the last step), reaches front ends as a ``phase="validation"`` progress report with ``loss_validation``, and the
  curve ``[[step, loss], ...]`` is kept in resumable states and in the result's ``likeness.validation_loss``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .dataset import mix_seed
from .hooks import Hook, eval_mode

log = logging.getLogger(__name__)

TIMESTEPS = 5  # fixed timesteps per photo, spread evenly: 100, 300, 500, 700, 900 of SD's 1000
_SALT = 11


def fixed_timesteps(num_train_timesteps: int, n: int = TIMESTEPS) -> list[int]:
    return [int((j + 0.5) * num_train_timesteps / n) for j in range(n)]


class ValidationHook(Hook):
    """The validation-loss curve (see the module docstring)."""

    name = "validation"

    def __init__(self, every: int):
        self.every = max(1, int(every))
        self.curve: list[list[float]] = []
        self.items: list[tuple[Any, str]] = []  # (scaled latent mean on the CPU, caption) per photo
        self.hidden: dict[str, Any] = {}

    def start(self, trainer) -> None:
        import torch

        images = trainer.plan.validation
        with trainer.parts_on_device(), torch.no_grad():
            for example in images.unique:
                mean = trainer.encode_image(example, False).chunk(2, dim=1)[0]
                self.items.append(((mean * trainer.scaling).cpu(), example.caption))
            if not trainer.te_training:
                for caption in sorted({c for _, c in self.items}):
                    self.hidden[caption] = trainer.c.text_encoder(trainer.tokenize([caption]), return_dict=False)[0]
        trainer.cb.on_status(f"validation loss on {len(self.items)} held-out photo(s) every {self.every} steps")
        if trainer.step == 0 and not self.curve:
            self.evaluate(trainer)

    def after_step(self, trainer) -> None:
        if self.reads_model(trainer):
            self.evaluate(trainer)

    def reads_model(self, trainer) -> bool:
        return trainer.step % self.every == 0 or trainer.step == trainer.cfg.steps

    def evaluate(self, trainer) -> float:
        with eval_mode(trainer):
            loss = self.loss(trainer)
        self.curve.append([trainer.step, loss])
        trainer.extra_metadata["likeness.validation_loss"] = json.dumps(self.curve)
        info = trainer.phase_info("validation")
        info.loss_validation = loss
        trainer.cb.on_progress(info)
        return loss

    def loss(self, trainer) -> float:
        import torch

        from .objective import noisy_latents_and_target

        cfg, sched = trainer.cfg, trainer.c.noise_scheduler
        steps = fixed_timesteps(trainer.num_timesteps)
        total = 0.0
        with torch.no_grad(), trainer.accel.autocast():
            for i, (mean, caption) in enumerate(self.items):
                gens = [torch.Generator().manual_seed(mix_seed(cfg.seed, _SALT, i, j)) for j in range(len(steps))]
                noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(trainer.device)
                latents = mean.to(trainer.device).expand(len(steps), -1, -1, -1)
                t = torch.tensor(steps, device=trainer.device)
                noisy, target = noisy_latents_and_target(sched, latents, noise, t)
                hidden = self.hidden.get(caption)
                if hidden is None:
                    hidden = trainer.c.text_encoder(trainer.tokenize([caption]), return_dict=False)[0]
                pred = trainer.c.unet(noisy, t, hidden.expand(len(steps), -1, -1), return_dict=False)[0]
                total += float((pred.float() - target.float()).pow(2).mean())
        return total / max(1, len(self.items))

    def state(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        self.curve = [list(p) for p in state.get("curve", [])]
