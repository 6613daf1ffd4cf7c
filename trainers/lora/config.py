"""``LoRAConfig``: the shared training options plus the LoRA ones. No torch at import time.

Defaults for a face LoRA on SD1.5 and where they come from:

- learning rate ``1e-4`` for the UNet adapters and ``5e-5`` for the text encoder's: kohya sd-scripts' documented
  LoRA defaults (``unet_lr`` 1e-4, ``text_encoder_lr`` 5e-5) and the diffusers ``train_dreambooth_lora.py`` example
  (1e-4); the LoRA paper (Hu et al. 2021, arXiv:2106.09685) trains adapters at 1e-4 to 2e-4 too;
- rank ``16`` with alpha ``8`` (update scale alpha/rank = 0.5): kohya's convention of alpha = rank/2 (alpha below
  rank damps the update so the same lr stays stable across ranks); 16 captures a face, files stay ~9 MB (fp16);
- attention projections (``to_q/k/v/out``) as in the LoRA paper and the diffusers example; feed-forward and
  resnet convolutions are opt-in (``lora_layers``);
- text encoder adapters on (``train_text_encoder``): for faces, as for DreamBooth, it helps the new token.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configspec import opt
from ..errors import ConfigError
from ..train.config import EVAL_EVERY_HELP, TrainConfig

LAYER_SETS = ("attention", "attention_ff", "all")  # = adapters.LAYER_SETS (kept here to stay torch-free)


@dataclass
class LoRAConfig(TrainConfig):
    """LoRA: train small low-rank adapters (the base model stays frozen) and save a kohya/A1111 LoRA file."""

    learning_rate: float = opt(1e-4, "Learning rate of the LoRA adapters (1e-4 is the usual LoRA value).", min=0.0)
    # a LoRA step costs less than a DreamBooth step: rarer probes keep evaluation under 10 % (docs/benchmarks.md)
    eval_every: int = opt(500, EVAL_EVERY_HELP + " DreamBooth default 250, LoRA 500.", min=0, advanced=True)
    text_encoder_lr: float = opt(
        5e-5, "Learning rate of the text encoder adapters (0 = same as learning_rate).", min=0.0, step=1e-7,
        advanced=True,
    )  # fmt: skip
    lora_rank: int = opt(
        16, "LoRA rank (dim): capacity and file size (16 = ~9 MB with the text encoder).", min=1, max=1024
    )
    lora_alpha: float = opt(
        8.0, "LoRA alpha: the update is scaled by alpha/rank (alpha = rank/2 is the kohya habit).", min=0.0
    )
    lora_dropout: float = opt(0.0, "Dropout on the adapters' input while training (0 = off).", min=0.0, max=0.9)
    lora_layers: str = opt(
        "attention",
        "Which layers get adapters: attention projections; + feed-forward and proj_in/out; + resnet convolutions "
        "(LoCon, bigger files).",
        choices=LAYER_SETS,
    )
    save_dtype: str = opt(
        "fp16", "Weight type of the saved LoRA (fp16 loads everywhere).", choices=("fp16", "bf16", "fp32")
    )
    save_diffusers: bool = opt(
        False, "Also write the diffusers/peft format beside it (<name>.diffusers.safetensors).", advanced=True
    )
    training_comment: str = opt("", "Free text stored in the file (ss_training_comment).", advanced=True)

    kind = "lora"

    def check(self) -> None:
        super().check()
        if self.lora_alpha <= 0:
            raise ConfigError("option 'lora_alpha' must be above 0 (e.g. half the rank)")

    def make_strategy(self):
        from .strategy import LoRATrain

        return LoRATrain()
