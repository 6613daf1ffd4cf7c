"""AdamW for the two memory options of full fine-tuning: the optimizer step fused into backward, and bf16 weights
updated with stochastic rounding. Imported only when one of them is on (torch at import time).

- ``fused_backward``: each parameter gets a hook that runs when its gradient is complete (PyTorch's
  ``register_post_accumulate_grad_hook``); the hook applies that parameter's AdamW update and frees the gradient, so
  the gradients of the whole model never exist together (-4 bytes per fp32 weight at the peak). The loop's
  ``optimizer.step()`` then has nothing left to do. Global gradient-norm clipping cannot work this way (the norm is
  known only once every gradient exists) and neither can gradient accumulation or several processes (the hook would
  see one micro-batch's, one process's gradient); the config refuses those combinations.
- ``master_weights=bf16``: the trained weights live in bf16 (so do their gradients and the AdamW moments); each
  update is computed in fp32 and written back with **stochastic rounding** (round up with probability equal to the
  fraction cut off), so the many updates smaller than bf16's resolution still move the weights on average instead
  of being rounded away. 8 bytes per weight instead of 16. The rounding noise is drawn from a generator seeded with
  ``(seed, step, parameter index)``: a resumed run rounds exactly as an uninterrupted one.

The update is AdamW exactly as ``torch.optim.AdamW`` computes it (decoupled weight decay, bias-corrected moments).
"""

from __future__ import annotations

import hashlib

import torch

PIECE = 1 << 20  # values per piece of one weight's update (see LowMemoryAdamW.update)


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stochastic_round_(dest: torch.Tensor, value: torch.Tensor, generator: torch.Generator) -> None:
    """Write fp32 ``value`` into bf16 ``dest``, rounding each element up or down with probabilities that make the
    result unbiased: random low 16 bits are added to the fp32 bit pattern, then cut off."""
    bits = value.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    rounded = ((bits + noise) & -65536).view(torch.float32)
    dest.copy_(rounded)


class LowMemoryAdamW(torch.optim.Optimizer):
    """AdamW with ``in_backward`` (updates applied by gradient hooks) and bf16 parameters (stochastic rounding)."""

    def __init__(self, groups, *, betas, eps: float, weight_decay: float, in_backward: bool, seed: int):
        super().__init__(groups, {"lr": 1e-3, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.in_backward, self.seed = in_backward, seed
        self._index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        self._group = {p: g for g in self.param_groups for p in g["params"]}
        self._generators: dict[torch.device, torch.Generator] = {}
        if in_backward:
            for p in self._index:
                p.register_post_accumulate_grad_hook(self._hook)

    def _hook(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self.update(p, self._group[p])
            p.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the Optimizer interface
        """Apply the updates of every parameter with a gradient (nothing left to do when ``in_backward``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, group)
        return None

    @torch.no_grad()
    def update(self, p: torch.Tensor, group: dict) -> None:
        """One AdamW update of ``p`` from ``p.grad``, computed in fp32, written back in ``p``'s dtype.

        The update runs over pieces of at most :data:`PIECE` values, so its fp32 temporaries (gradient, moments,
        denominator, new weights, rounding noise: ~34 bytes a value for bf16 weights) exist for one piece at a
        time, not for the largest weight (29.5 M values in SD1.5's UNet: ~1 GB measured when it was whole)."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["step"] += 1
        step = int(state["step"].item())
        gen = None if p.dtype == torch.float32 else self._generator(p.device, step, self._index[p])
        if not (p.is_contiguous() and p.grad.is_contiguous()):
            self._update_piece(p, p.grad, state["exp_avg"], state["exp_avg_sq"], group, step, gen)
            return
        flat = [t.view(-1) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
        for start in range(0, p.numel(), PIECE):
            self._update_piece(*(t[start : start + PIECE] for t in flat), group, step, gen)

    @staticmethod
    def _update_piece(p, grad, exp_avg, exp_avg_sq, group: dict, step: int, gen) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        grad = grad.float()
        m = exp_avg.float().lerp_(grad, 1 - beta1)
        v = exp_avg_sq.float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
        weights = p.float().mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        if gen is None:  # fp32: the float() views above were the tensors themselves, updated in place
            return
        for dest, value in ((p, weights), (exp_avg, m), (exp_avg_sq, v)):
            stochastic_round_(dest, value, gen)

    def _generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen.manual_seed(_seed(self.seed, 5, step, index))
