"""What trains and how it is saved: the one seam between the shared loop and a training method.

The loop (:mod:`.loop`) knows nothing about DreamBooth or LoRA. It asks the config for a strategy
(``config.make_strategy()``) and calls, in this order:

Every call that needs to know about the run gets a :class:`RunContext` (device, precisions, the plan, start time):
a method is told these, it never works them out (one set of device/precision rules lives in :mod:`..devices`).

1. ``prepare(components, config, ctx) -> list[ParamGroup]`` — once, before the optimizer exists. Freeze what must not
   train (``requires_grad_(False)``), add adapters if any, and return the optimizer's parameter groups. Each group is
   a dict with ``params`` (a list of tensors), ``lr`` and ``name``: ``"unet"`` or ``"text_encoder"``. The loop
   stops the ``"text_encoder"`` group after ``text_encoder_steps`` by setting ``requires_grad_(False)`` on its
   params (an optimizer skips parameters without gradients, so nothing else in them changes).
2. ``trainable_modules(components) -> dict[str, nn.Module]`` — the modules that run with gradients (keys
   ``"unet"``, ``"text_encoder"``): the loop puts them in train mode, turns on gradient checkpointing and (under
   ``accelerate launch``) wraps them for data-parallel training. Modules not returned run frozen, without graph.
3. ``state_dict_for_checkpoint(components) -> dict[str, Tensor]`` / ``load_state_dict_for_resume(components,
   state)`` — the trained tensors only, written to a resumable state (``trainable.safetensors``) and read back in
   fp32, bitwise.
4. ``save_result(components, path, metadata, config, ctx) -> Path`` — write the finished model atomically (never a
   partial file), refusing to replace an existing file unless ``config.overwrite``. ``metadata`` is a
   ``dict[str, str]`` for the safetensors header (config, hashes, steps, version).

``FullFineTune`` (DreamBooth) is below; the LoRA strategy lives in ``trainers/lora/`` and plugs in through
``LoRAConfig.make_strategy()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ..devices import Placement
    from .plan import Plan

log = logging.getLogger(__name__)

ParamGroup = dict[str, Any]  # {"name": "unet" | "text_encoder", "params": [...], "lr": float}


@dataclass
class RunContext:
    """What the loop tells a training method about the run."""

    device: Any  # the torch.device training runs on
    placement: Placement  # device type and compute precision; ``placement.frozen_dtype`` for frozen weights
    optimizer: str  # the optimizer actually used ("adamw" | "adamw8bit")
    plan: Plan  # the run's checked config, images, output and identities
    started_at: float  # wall-clock time.time() when the run started
    step: int = 0  # optimizer steps done (set before save_result)


@runtime_checkable
class Strategy(Protocol):
    """How one training method uses the shared loop (see the module docstring for the call order)."""

    name: str

    def prepare(self, components, config, ctx: RunContext) -> list[ParamGroup]: ...

    def trainable_modules(self, components) -> dict[str, torch.nn.Module]: ...

    def state_dict_for_checkpoint(self, components) -> dict[str, torch.Tensor]: ...

    def load_state_dict_for_resume(self, components, state: dict[str, torch.Tensor]) -> None: ...

    def save_result(self, components, path: Path, metadata: dict[str, str], config, ctx: RunContext) -> Path: ...


def text_encoder_lr(config) -> float:
    """The text encoder's learning rate: its own option, or the main one when that is 0 (unset)."""
    return config.text_encoder_lr or config.learning_rate


class FullFineTune:
    """DreamBooth: every UNet weight trains (and every text-encoder weight when asked); the VAE never does."""

    name = "dreambooth"

    def __init__(self) -> None:
        self.train_text_encoder = False

    def prepare(self, components, config, ctx: RunContext) -> list[ParamGroup]:
        self.train_text_encoder = bool(config.train_text_encoder)
        components.vae.requires_grad_(False)
        components.unet.requires_grad_(True)
        components.text_encoder.requires_grad_(self.train_text_encoder)
        groups: list[ParamGroup] = [
            {"name": "unet", "params": list(components.unet.parameters()), "lr": config.learning_rate}
        ]
        if self.train_text_encoder:
            params = list(components.text_encoder.parameters())
            groups.append({"name": "text_encoder", "params": params, "lr": text_encoder_lr(config)})
        return groups

    def trainable_modules(self, components) -> dict[str, torch.nn.Module]:
        modules = {"unet": components.unet}
        if self.train_text_encoder:
            modules["text_encoder"] = components.text_encoder
        return modules

    def state_dict_for_checkpoint(self, components) -> dict[str, torch.Tensor]:
        out = {f"unet.{k}": v for k, v in components.unet.state_dict().items()}
        if self.train_text_encoder:
            out.update({f"text_encoder.{k}": v for k, v in components.text_encoder.state_dict().items()})
        return out

    def load_state_dict_for_resume(self, components, state: dict[str, torch.Tensor]) -> None:
        unet = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
        components.unet.load_state_dict(unet, strict=True)
        te = {k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")}
        if self.train_text_encoder:
            components.text_encoder.load_state_dict(te, strict=True)
        elif te:
            raise ValueError("the resumable state holds text-encoder weights but train_text_encoder is off")

    def result_bytes(self, components, config) -> int:
        """The saved checkpoint's size: every UNet, VAE and text-encoder weight in ``save_dtype``."""
        per = 4 if config.save_dtype == "fp32" else 2
        modules = (components.unet, components.vae, components.text_encoder)
        return sum(p.numel() for m in modules for p in m.parameters()) * per

    def save_result(self, components, path: Path, metadata: dict[str, str], config, ctx: RunContext) -> Path:
        from ..model_io import save_single_file
        from ..model_io.export import save_diffusers_folder

        out = save_single_file(
            components, path, dtype=config.save_dtype, metadata=metadata, overwrite=bool(config.overwrite)
        )
        if getattr(config, "save_diffusers", False):
            # the weights as trained (fp32), like the folder this option has always written
            folder = Path(path).with_suffix("")
            save_diffusers_folder(components, folder, dtype="fp32", overwrite=bool(config.overwrite))
        return Path(out)
