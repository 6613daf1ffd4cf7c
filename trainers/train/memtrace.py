"""How much memory one training step's forward and backward hold at their peak, found by running the step on the
meta device (shapes only: no weights, no arithmetic, well under a second even for the full-size SD1.5 UNet).

:func:`step_peak_bytes` builds the UNet (and the text encoder, when it trains) from their configs on the meta
device, runs one forward and backward the way the loop does and counts the bytes of every tensor storage alive at
each moment (a dispatch mode sees every tensor made, a weak reference sees it go): activations kept for backward,
gradients as they are accumulated, and temporaries. Parameters are not counted (the planner adds weights, gradients
and optimizer states itself, :mod:`.memory`).

On the meta device PyTorch's ``scaled_dot_product_attention`` picks its plain (math) path, which stores the whole
attention matrix; the memory-efficient kernels used on GPUs and CPUs keep only the output and a log-sum-exp per
query, so while tracing, SDPA calls the CPU flash-attention operator, whose autograd saves exactly that.
"""

from __future__ import annotations

import contextlib
import functools
import json
import weakref
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepShape:
    """What the activation memory of one micro-step depends on."""

    unet_config: str  # JSON of the UNet's config
    te_config: str | None  # JSON of the text encoder's config when it trains (None: frozen, its output cached)
    batch: int  # samples per micro-step (subject + class images)
    latent: int  # latent side (resolution // VAE factor)
    checkpointing: bool
    attention: str  # "sdpa" | "plain"
    dtype: str  # activation dtype: "fp32" | "bf16" | "fp16"
    grads: str  # "keep" (gradients stay until the optimizer step) | "free" (freed as applied) | "none" (frozen base)


class LiveBytes:
    """A dispatch mode counting the bytes of live tensor storages made inside it, and their peak."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        counter = self
        self.live = self.peak = 0
        self.seen = WeakIdKeyDictionary()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.track(out)
                return out

        self.mode = Mode()

    def track(self, out: Any) -> None:
        import torch

        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            if st in self.seen:
                continue
            size = st.nbytes()
            self.seen[st] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(st, self.release, size)

    def ignore(self, tensors) -> None:
        """Tensors made outside (weights): views of them are not new memory."""
        for t in tensors:
            self.seen[t.untyped_storage()] = 0

    def release(self, size: int) -> None:
        self.live -= size

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


@contextlib.contextmanager
def _efficient_attention():
    """``F.scaled_dot_product_attention`` as the memory-efficient kernels store it (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return op(q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _meta_models(shape: StepShape):
    """The UNet (and the trained text encoder) on the meta device, in the activation dtype."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[shape.dtype]
    with torch.device("meta"):
        unet = cast_quietly(UNet2DConditionModel.from_config(json.loads(shape.unet_config)), dtype)
        te = None
        if shape.te_config is not None:
            from transformers import CLIPTextConfig, CLIPTextModel

            te = CLIPTextModel(CLIPTextConfig(**json.loads(shape.te_config))).to(dtype)
    unet.set_attn_processor(AttnProcessor2_0() if shape.attention == "sdpa" else AttnProcessor())
    for module in (unet, te):
        if module is None:
            continue
        module.train()
        module.requires_grad_(shape.grads != "none")
        if shape.checkpointing:
            _checkpointing(module)
        if shape.grads == "free":
            for p in module.parameters():
                p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    return unet, te


def cast_quietly(model, dtype):
    """``model.to(dtype)`` without diffusers' warning about modules kept in fp32 (a meta model has none to keep)."""
    import logging

    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return model.to(dtype)
    finally:
        logger.setLevel(level)


def _checkpointing(module) -> None:
    """Gradient checkpointing on a diffusers or a transformers model (renamed in transformers 5)."""
    for name in ("enable_gradient_checkpointing", "activation_checkpointing_enable", "gradient_checkpointing_enable"):
        if hasattr(module, name):
            getattr(module, name)()
            return


@functools.lru_cache(maxsize=64)
def step_peak_bytes(shape: StepShape) -> int:
    """Peak bytes of the tensors one forward + backward of ``shape`` holds (activations, gradients, temporaries)."""
    import torch

    unet, te = _meta_models(shape)
    cfg = unet.config
    dtype = next(unet.parameters()).dtype
    count = LiveBytes()
    for module in (unet, te):
        if module is not None:
            count.ignore([*module.parameters(), *module.buffers()])
    with count, _efficient_attention():
        latents = torch.empty(shape.batch, cfg.in_channels, shape.latent, shape.latent, device="meta", dtype=dtype)
        timesteps = torch.zeros(shape.batch, dtype=torch.long, device="meta")
        if te is not None:
            ids = torch.zeros(shape.batch, te.config.max_position_embeddings, dtype=torch.long, device="meta")
            hidden = te(ids, return_dict=False)[0]
        else:
            hidden = torch.empty(shape.batch, 77, cfg.cross_attention_dim, device="meta", dtype=dtype)
        if shape.grads == "none":
            latents.requires_grad_(True)  # a frozen base still carries gradients back to adapters
        pred = unet(latents, timesteps, hidden, return_dict=False)[0]
        loss = (pred.float() - latents.float()).pow(2).mean()
        loss.backward()
        del pred, loss, hidden
    return count.peak


@functools.lru_cache(maxsize=16)
def decode_peak_bytes(vae_config: str, latent: int, dtype: str) -> int:
    """Peak bytes of decoding one ``latent`` x ``latent`` image with the VAE (inference, no gradients)."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.models.attention_processor import AttnProcessor2_0

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    with torch.device("meta"):
        vae = cast_quietly(AutoencoderKL.from_config(json.loads(vae_config)), torch_dtype)
    vae.set_attn_processor(AttnProcessor2_0())
    count = LiveBytes()
    count.ignore([*vae.parameters(), *vae.buffers()])
    channels = vae.config.latent_channels
    with torch.no_grad(), count, _efficient_attention():
        z = torch.empty(1, channels, latent, latent, device="meta", dtype=torch_dtype)
        vae.decode(z, return_dict=False)
    return count.peak
