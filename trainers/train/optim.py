"""Optimizer and learning-rate schedule from a config."""

from __future__ import annotations

import logging
import math

from ..errors import ConfigError

log = logging.getLogger(__name__)


def resolve_optimizer(config, device_type: str) -> str:
    """``auto`` -> ``adamw8bit`` on CUDA when bitsandbytes imports, else ``adamw``."""
    if config.optimizer != "auto":
        return config.optimizer
    if device_type == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            return "adamw8bit"
        except Exception:  # noqa: BLE001 - any import problem means "not available"
            pass
    return "adamw"


def make_optimizer(config, groups: list[dict], device_type: str):
    """AdamW (PyTorch's fused kernel, on CUDA and on the CPU), bitsandbytes' 8-bit AdamW, or, with
    ``fused_backward`` / ``master_weights=bf16``, the low-memory AdamW of :mod:`.lowmem` over the strategy's
    parameter groups."""
    import torch

    kind = resolve_optimizer(config, device_type)
    torch_groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in groups if g["params"]]
    kwargs = dict(
        betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, weight_decay=config.weight_decay
    )
    if getattr(config, "fused_backward", False) or getattr(config, "master_weights", "fp32") == "bf16":
        from .lowmem import LowMemoryAdamW

        log.info("optimizer: AdamW, %s", "step in backward" if config.fused_backward else "bf16 stochastic rounding")
        return LowMemoryAdamW(torch_groups, in_backward=bool(config.fused_backward), seed=config.seed, **kwargs)
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except Exception as e:  # noqa: BLE001
            raise ConfigError(
                f"option 'optimizer' is adamw8bit but bitsandbytes cannot be imported ({e}); "
                "install it ('pip install bitsandbytes', CUDA only) or choose optimizer=adamw"
            ) from None
        log.info("optimizer: 8-bit AdamW (bitsandbytes)")
        return bnb.optim.AdamW8bit(torch_groups, **kwargs)
    fused = device_type in ("cuda", "cpu")  # one kernel for all parameters: faster, no temporaries
    log.info("optimizer: AdamW%s", " (fused)" if fused else "")
    return torch.optim.AdamW(torch_groups, fused=fused or None, **kwargs)


def lr_factor(kind: str, warmup: int, total: int):
    """The multiplier of the base learning rate at each step (a plain function of the step, nothing to save)."""

    def factor(step: int) -> float:
        if kind == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant_with_warmup":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_lr_scheduler(config, optimizer):
    import torch

    factor = lr_factor(config.lr_scheduler, config.lr_warmup_steps, config.steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
