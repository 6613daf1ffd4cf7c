"""The diffusion training objective: noise the latents, pick the target, weight and split the loss.

Plain functions on tensors, in the order of one step (read top to bottom):

1. :func:`draw_noise` — Gaussian noise (plus optional *offset noise*) and uniform timesteps from a seeded generator;
2. :func:`noisy_latents_and_target` — forward diffusion with the scheduler's ``add_noise``; the target is the
   noise (``epsilon``) or the velocity (``v_prediction``), whichever the model was trained to predict;
3. :func:`mask_weights` — optional face-weighted loss: a per-pixel weight in latent space from a soft face mask,
   ``floor`` outside the face and 1 on it, normalised to mean 1 per image so the loss scale does not change;
4. :func:`diffusion_loss` — per-sample MSE (per-pixel weighted when masks are given), optional Min-SNR-γ weights
   (Hang et al. 2023, arXiv:2303.09556), then the DreamBooth split: the first half of the batch are subject images,
   the second half class images (or, with the prior from the base model, the subject images under the class
   prompt, whose target is the frozen base model's prediction), and ``loss = subject + prior_weight * class``
   (Ruiz et al. 2023, eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class LossParts:
    total: torch.Tensor  # what backward() sees
    instance: torch.Tensor  # subject-image loss (unweighted by the prior weight), detached
    prior: torch.Tensor | None  # class-image loss (detached), None without prior preservation

    def prior_or_zero(self) -> torch.Tensor:
        return self.prior if self.prior is not None else self.instance.new_zeros(())


def draw_noise(latents: torch.Tensor, num_timesteps: int, generator, noise_offset: float = 0.0):
    """Noise shaped like ``latents`` and one timestep per sample, drawn on the CPU (device independent).

    ``generator`` is one ``torch.Generator`` for the whole batch, or one per sample: then sample ``i`` draws only from
    ``generator[i]``, so a sample gets the same noise whichever process, micro-batch or batch slot it lands in (what
    makes several processes train like one with the same global batch).
    """
    import torch

    from ..devices import to_device

    gens = generator if isinstance(generator, (list, tuple)) else None
    if gens is None:
        noise, timesteps = _draw(latents.shape, num_timesteps, generator, noise_offset)
    else:
        parts = [_draw((1, *latents.shape[1:]), num_timesteps, g, noise_offset) for g in gens]
        noise, timesteps = torch.cat([n for n, _ in parts]), torch.cat([t for _, t in parts])
    return to_device(noise, latents.device).to(latents.dtype), to_device(timesteps, latents.device)


def _draw(shape, num_timesteps: int, generator, noise_offset: float):
    import torch

    b, c = shape[:2]
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        # Offset noise (Guttenberg 2023): a per-channel constant shift lets the model change overall brightness.
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), generator=generator, dtype=torch.float32)
    return noise, torch.randint(0, num_timesteps, (b,), generator=generator)


def noisy_latents_and_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """``x_t`` and the regression target for the scheduler's prediction type."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"prediction type {kind!r} is not supported for training (epsilon or v_prediction)")
    return noisy, target


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ: weight each sample by min(SNR, γ)/SNR (epsilon) or min(SNR, γ)/(SNR+1) (v-prediction)."""
    import torch

    s = snr(scheduler, timesteps)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped / s


def mask_weights(masks: torch.Tensor, latent_hw: tuple[int, int], floor: float) -> torch.Tensor:
    """Per-pixel loss weights in latent space from soft masks ``(B, 1, H, W)`` in [0, 1] (pixel space).

    Each mask is averaged down to the latent grid (area interpolation), mapped to ``floor + (1 - floor) * mask``
    (so the face weighs 1 and the rest of the picture ``floor``) and divided by its mean: a weighted MSE then has
    the same scale as the plain one, and the gradient outside the mask is ``floor`` times the gradient on it.
    Returns ``(B, 1, h, w)`` float32.
    """
    import torch.nn.functional as F

    small = F.interpolate(masks.float(), size=latent_hw, mode="area").clamp(0.0, 1.0)
    w = floor + (1.0 - floor) * small
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


def diffusion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    n_instance: int,
    prior_weight: float = 1.0,
    weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> LossParts:
    """MSE per sample (optionally weighted per sample, and per pixel by ``pixel_weights`` of shape ``(B, 1, h, w)``
    broadcast over channels), split into the subject half and the class half of the batch."""
    err = (pred.float() - target.float()).pow(2)
    if pixel_weights is not None:
        err = err * pixel_weights.to(err.device, err.dtype)
    per_sample = err.mean(dim=tuple(range(1, pred.ndim)))
    if weights is not None:
        per_sample = per_sample * weights
    inst = per_sample[:n_instance].mean()
    if per_sample.shape[0] == n_instance:
        return LossParts(total=inst, instance=inst.detach(), prior=None)
    prior = per_sample[n_instance:].mean()
    return LossParts(total=inst + prior_weight * prior, instance=inst.detach(), prior=prior.detach())
