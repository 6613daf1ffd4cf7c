"""Prior preservation from the base model (``prior="base_model"``): no class images, the base model is the target.

Each step's subject latents are noised once; the batch then holds them twice: under the subject's captions (target:
the noise, as usual) and under the class prompt, whose target is what the **frozen base model** predicts for the
class prompt on the same noisy latents at the same timesteps. The class half of the loss thus keeps the trained
model's idea of the class where the base had it, on exactly the pictures training is changing (ai-toolkit's
"differential output preservation", OneTrainer's prior-prediction concepts). Nothing is generated beforehand.

Where the base prediction comes from:

- **adapters** (LoRA and the other peft tuners): the trained UNet itself with its adapters switched off for that
  one pass, so it costs one more forward pass without gradients and no memory;
- **full fine-tuning** (DreamBooth): a frozen copy of the UNet, made before the first step, in the frozen-weight
  precision (fp16/bf16 on a GPU: ~1.7 GB for SD1.5's UNet).

The base model's class-prompt embedding is computed once, at setup, with the text encoder as it was (its adapters
off), so a trained text encoder does not move the target either.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

log = logging.getLogger(__name__)


def tuner_layers(module) -> list[Any]:
    """The peft tuner layers (LoRA, LoHa, LoKr, ...) inside ``module``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_off(module, layers: list[Any] | None = None):
    """Run ``module`` as the base model: every peft adapter disabled, then enabled again exactly as it was
    (peft's ``enable_adapters`` also sets ``requires_grad``, so the flags are put back as they were). ``layers``:
    the module's tuner layers when the caller already listed them."""
    layers = tuner_layers(module) if layers is None else layers
    flags = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in flags:
            p.requires_grad_(flag)


class BasePrior:
    """The class half of every batch: the subject latents again, the class prompt, the base model's prediction."""

    def __init__(self, unet, copied: bool, class_hidden, class_prompt: str):
        self.unet, self.copied = unet, copied
        self.layers = [] if copied else tuner_layers(unet)  # listed once: the pass runs every step
        self.class_hidden = class_hidden  # (1, tokens, width): the base text encoder's class-prompt embedding
        self.class_prompt = class_prompt

    @classmethod
    def build(cls, trainer) -> BasePrior:
        """Made in ``Trainer.setup`` after the strategy prepared the model and before any resumable state is loaded:
        the weights are still the base's there (adapters are switched off anyway)."""
        import torch

        c, cfg = trainer.c, trainer.cfg
        training = c.text_encoder.training
        c.text_encoder.eval()
        with torch.no_grad(), adapters_off(c.text_encoder), trainer.accel.autocast():
            hidden = c.text_encoder(trainer.tokenize([cfg.class_prompt]), return_dict=False)[0].detach()
        c.text_encoder.train(training)
        if tuner_layers(c.unet):
            return cls(c.unet, False, hidden, cfg.class_prompt)
        frozen = copy.deepcopy(c.unet).requires_grad_(False).eval()
        frozen.to(trainer.device, dtype=trainer.ctx.placement.frozen_dtype)
        log.info("prior from the base model: a frozen copy of the UNet (%.2f GB)", _gb(frozen))
        return cls(frozen, True, hidden, cfg.class_prompt)

    def captions(self, n: int) -> list[str]:
        """The class prompt for the ``n`` repeated subject latents."""
        return [self.class_prompt] * n

    def extend(self, noisy, timesteps, target):
        """The batch doubled: the subject half as it is, the class half with the base model's prediction as target."""
        import torch

        n = noisy.shape[0]
        hidden = self.class_hidden.to(noisy.device).expand(n, -1, -1)
        with torch.no_grad(), contextlib.nullcontext() if self.copied else adapters_off(self.unet, self.layers):
            dtype = next(self.unet.parameters()).dtype if self.copied else noisy.dtype
            base = self.unet(noisy.to(dtype), timesteps, hidden.to(dtype), return_dict=False)[0]
        base = base.to(target.dtype).detach()
        return torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]), torch.cat([target, base])


def _gb(module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 1e9
