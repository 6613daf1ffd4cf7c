"""Images from a model's components: the one sampling path for training samples, class images and evaluation probes.

Every image has its own seed: its start noise is drawn from a CPU generator seeded with it (the same image on any
device and in any batch), and the same generator drives the sampler's own noise (Euler ancestral). The pipeline
shares the components' modules (no copy, no safety checker). Heavy imports happen inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError

SAMPLERS = ("ddim", "euler_a")


class Abandoned(Exception):
    """Raised inside the pipeline's step callback when the stop flag is set: the batch is dropped unfinished."""


def make_scheduler(noise_scheduler: Any, sampler: str = "ddim"):
    """A DDIM or Euler-ancestral sampler on the model's own training noise schedule (SD1.5's conventions)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    cfg = dict(noise_scheduler.config)
    common = {
        "num_train_timesteps": cfg.get("num_train_timesteps", 1000),
        "beta_start": cfg.get("beta_start", 0.00085),
        "beta_end": cfg.get("beta_end", 0.012),
        "beta_schedule": cfg.get("beta_schedule", "scaled_linear"),
        "prediction_type": cfg.get("prediction_type", "epsilon"),
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    if sampler == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler(**common)
    raise ConfigError(f"option 'sampler' is {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def make_pipeline(components: Any, sampler: str = "ddim"):
    """A ``StableDiffusionPipeline`` over the components' own modules with the chosen sampler."""
    from .model_io import make_pipeline as pipeline_of

    return pipeline_of(components, make_scheduler(components.noise_scheduler, sampler))


def encode_prompt(pipe: Any, prompt: str, negative: str = "", guidance: float = 7.5) -> tuple[Any, Any]:
    """``(prompt_embeds, negative_embeds or None)`` of one prompt, to share between many images."""
    import torch

    with torch.no_grad():
        positive, neg = pipe.encode_prompt(
            prompt.strip(),
            pipe.unet.device,
            1,
            guidance > 1.0,
            negative_prompt=negative.strip() if guidance > 1.0 and negative.strip() else None,
        )
    return positive, neg


def render(
    pipe: Any,
    embeds: tuple[Any, Any],
    seeds: Sequence[int],
    *,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    stop: Callable[[], bool] | None = None,
    latent_dtype: Any = None,
) -> list:
    """One PIL image per seed from one prompt's embeddings. Raises :class:`Abandoned` when ``stop()`` turns true."""
    import torch

    unet = pipe.unet
    factor = pipe.vae_scale_factor
    gens, noise = [], []
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(int(seed))
        noise.append(torch.randn((1, unet.config.in_channels, height // factor, width // factor), generator=g))
        gens.append(g)
    latents = torch.cat(noise).to(device=unet.device, dtype=latent_dtype or torch.float32)
    positive, negative = embeds
    n = len(seeds)

    def on_step(_pipe, _i, _t, kwargs):
        if stop is not None and stop():
            raise Abandoned
        return kwargs

    with torch.no_grad():
        out = pipe(
            prompt_embeds=positive.expand(n, -1, -1),
            negative_prompt_embeds=negative.expand(n, -1, -1) if negative is not None else None,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            eta=0.0,
            latents=latents,
            generator=gens,
            output_type="pil",
            callback_on_step_end=on_step,
        )
    return list(out.images)
