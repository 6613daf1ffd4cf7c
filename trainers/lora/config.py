"""``LoRAConfig``: the shared training options plus the LoRA ones. No torch at import time.

Defaults for a face LoRA on SD1.5 and where they come from:

- learning rate ``1e-4`` for the UNet adapters and ``5e-5`` for the text encoder's: kohya sd-scripts' documented
  LoRA defaults (``unet_lr`` 1e-4, ``text_encoder_lr`` 5e-5) and the diffusers ``train_dreambooth_lora.py`` example
  (1e-4); the LoRA paper (Hu et al. 2021, arXiv:2106.09685) trains adapters at 1e-4 to 2e-4 too;
- rank ``16`` with alpha ``8`` (update scale alpha/rank = 0.5): kohya's convention of alpha = rank/2 (alpha below
  rank damps the update so the same lr stays stable across ranks); 16 captures a face, files stay ~9 MB (fp16);
- attention projections (``to_q/k/v/out``) as in the LoRA paper and the diffusers example; feed-forward and
  resnet convolutions are opt-in (``lora_layers``);
- text encoder adapters on (``train_text_encoder``): for faces, as for DreamBooth, it helps the new token;
- adapter type ``lora`` (the one every loader applies the same way); ``loha`` / ``lokr`` are the LyCORIS types
  (Yeh et al., arXiv:2309.14859: LoHa from FedPara, arXiv:2108.06098; LoKr from KronA, arXiv:2212.10650),
  ``dora`` the weight-decomposed LoRA (Liu et al. 2024, arXiv:2402.09353), all trained through peft;
  ``lokr_factor`` -1 is peft's and LyCORIS' default (each dimension split as near its square root as possible);
- ``continue_from``: an existing LoRA file (ours, kohya's or LyCORIS', diffusers- or LDM-style layer names) is the
  start; its type, rank, alpha and layers win over the options here (ComfyUI's Train LoRA, kohya's
  ``network_weights`` and ai-toolkit continue a LoRA the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configspec import opt
from ..errors import ConfigError
from ..train.config import EVAL_EVERY_HELP, TrainConfig

LAYER_SETS = ("attention", "attention_ff", "all")  # = adapters.LAYER_SETS (kept here to stay torch-free)
LORA_TYPES = ("lora", "loha", "lokr")  # = weights.KINDS
DORA_HOSTS = (
    "ComfyUI applies it from 2025-04 on (output-axis DoRA; up to 0.3.64 at least normalised by the base weight, "
    "close to but not exactly as trained; its 2024-03 release ignores the dora_scale keys, 'lora key not loaded', "
    "and applies the LoRA part alone), Forge from 2025-05; A1111 applies DoRA on the input axis only, so there the "
    "file is not applied as trained"
)


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
    lora_type: str = opt(
        "lora",
        "Adapter type: lora (LoRA/LoCon, loads everywhere), loha (LyCORIS LoHa: Hadamard product of two low-rank "
        "pairs, more capacity per parameter) or lokr (LyCORIS LoKr: Kronecker product, the smallest files). All "
        "three load in ComfyUI's Load LoRA (also its 2024-03 release) and A1111/Forge.",
        choices=LORA_TYPES,
        advanced=True,
    )
    dora: bool = opt(
        False,
        "DoRA (lora_type lora only): also train a magnitude per output channel (Liu et al. 2024). " + DORA_HOSTS + ".",
        advanced=True,
    )
    lokr_factor: int = opt(
        -1,
        "LoKr only: split each layer dimension into factor x rest for the Kronecker product (-1 = as near the square "
        "root as possible, peft's and LyCORIS' default; a larger factor gives larger files).",
        min=-1,
        max=4096,
        advanced=True,
    )
    continue_from: str | None = opt(
        None,
        "Continue training an existing LoRA file (.safetensors: ours, kohya's or LyCORIS'; LDM- or diffusers-style "
        "layer names). Its type, rank, alpha and layers are used (lora_type, dora, lora_rank, lora_alpha and "
        "lora_layers are then ignored); its text-encoder layers train only with train_text_encoder.",
        node=False,
        advanced=True,
    )
    save_dtype: str = opt(
        "fp16", "Weight type of the saved LoRA (fp16 loads everywhere).", choices=("fp16", "bf16", "fp32")
    )
    save_diffusers: bool = opt(
        False,
        "Also write the diffusers/peft format beside it (<name>.diffusers.safetensors): plain LoRA, or DoRA on the "
        "UNet only (what diffusers' load_lora_weights applies correctly).",
        advanced=True,
    )
    training_comment: str = opt("", "Free text stored in the file (ss_training_comment).", advanced=True)

    kind = "lora"

    def check(self) -> None:
        super().check()
        if self.lora_alpha <= 0:
            raise ConfigError("option 'lora_alpha' must be above 0 (e.g. half the rank)")
        if self.lokr_factor in (0, 1):
            raise ConfigError("option 'lokr_factor' must be -1 (automatic) or at least 2")
        if self.continue_from is not None and not str(self.continue_from).lower().endswith(".safetensors"):
            raise ConfigError(
                f"option 'continue_from' ({self.continue_from}) must be a .safetensors LoRA file (no pickle files)"
            )
        if self.continue_from is None:
            check_shape(self.lora_type, self.dora, self)

    def start_weights_hash(self) -> str:
        """The content hash of the LoRA this run continues ('' when it starts afresh): part of the weights hash, so
        the result key and resumable states change with the starting file's bytes, not its name."""
        if self.continue_from is None:
            return ""
        from ..fsutil import file_sha256

        try:
            return file_sha256(self.continue_from)
        except OSError as e:
            raise ConfigError(
                f"option 'continue_from': cannot read {self.continue_from} ({e.strerror or e}); pick an existing LoRA"
            ) from None

    def make_strategy(self):
        from .strategy import LoRATrain

        return LoRATrain()


def check_shape(lora_type: str, dora: bool, config) -> None:
    """The adapter type against the other options (also used for the type a continued file has)."""
    lycoris = lora_type != "lora"
    if dora and lycoris:
        raise ConfigError(f"option 'dora' works with lora_type=lora only (peft has no DoRA for {lora_type})")
    if lycoris and config.lora_dropout:
        raise ConfigError(
            f"option 'lora_dropout' works with lora_type=lora only (peft's {lora_type} has no input dropout); set it 0"
        )
    if config.save_diffusers and lycoris:
        raise ConfigError(
            f"option 'save_diffusers': diffusers' load_lora_weights does not read {lora_type} files for SD1.5; turn "
            "save_diffusers off (the kohya-format file loads in ComfyUI and A1111/Forge)"
        )
    if config.save_diffusers and dora and config.train_text_encoder:
        raise ConfigError(
            "option 'save_diffusers': diffusers' load_lora_weights does not apply DoRA text-encoder layers correctly "
            "(measured with diffusers 0.42); set train_text_encoder=false or turn save_diffusers off"
        )
