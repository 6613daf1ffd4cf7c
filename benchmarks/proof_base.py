"""The learning proof's base model: a tiny SD1-shaped pipeline that knows one class, built once and committed.

Same structure as Stable Diffusion 1.x, scaled down so it trains on two CPU cores:

- ``AutoencoderKL`` (~1M parameters): 32x32 RGB ⇄ 4x8x8 latents (two 2x downsamplings; SD has three for 8x,
  but 4x8x8 latents keep enough room for the subject's texture at 32 px).
- ``CLIPTextModel``: 64 wide, 2 layers, with a hand-built BPE ``CLIPTokenizer`` whose vocabulary holds the prompt
  words as whole tokens (other words fall back to letters) and a 16-token context (:data:`MAX_TOKENS`).
- ``UNet2DConditionModel`` (32, 64) with cross-attention (16-wide heads) on the text encoder's hidden states
  (~1M parameters).
- SD's DDPM noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps, epsilon prediction).

Pre-training (not a product feature, so its own short loop lives here): the VAE first, on generic shapes and
textures; then the UNet, under a frozen text encoder (as SD's CLIP was), on class pictures captioned with what they
show ("a photo of a red circle", sometimes only "a photo of a shape"), so that its cross-attention carries words
and DreamBooth's rare token has a way in. The result is stored as one fp16
``.safetensors`` file (component state dicts under ``vae.``/``unet.``/``text_encoder.`` plus the configs and the
tokenizer in the metadata) at ``benchmarks/data/proof_base.safetensors``.
"""

from __future__ import annotations

import json
import logging
import math
import string
import time
from pathlib import Path
from typing import Any

from . import proof_data as pd

log = logging.getLogger(__name__)

BASE_PATH = Path(__file__).resolve().parent / "data" / "proof_base.safetensors"
FORMAT = "likeness-proof-base/1"
WORDS = (
    "a", "an", "the", "photo", "picture", "image", "of", "shape", "sks", "circle", "square", "triangle",
    "red", "green", "blue", "yellow", "purple", "white", "orange", "checkered",
)  # fmt: skip

# The tokenizer's context. SD1 has 77 tokens; at this size a 77-token context buries the 4-6 words of a prompt under
# padding and the UNet learns to ignore its text, so the tiny model reads 16.
MAX_TOKENS = 16
# build_base's guard (see prompt_fidelity): the share of "red circle" / "blue square" samples in the named colour.
MIN_PROMPT_FIDELITY = 0.7
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=[32, 64],
    layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=64,
    attention_head_dim=[2, 4],  # diffusers' name for the number of heads: 16-wide heads (8 heads would be 4-8 wide)
    norm_num_groups=32,
)
TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def build_vocab(words=WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary: letters (inner and word-final) plus merges that build each word whole."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            merged = parts[0] + parts[1]
            vocab.setdefault(merged, len(vocab))
            parts = [merged, *parts[2:]]
    return vocab, merges


def make_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], max_tokens: int | None = None):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m) for m in merges])
    tok.model_max_length = max_tokens or MAX_TOKENS
    return tok


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1, **TEXT_CONFIG)


def make_components(unet, vae, text_encoder, tokenizer, noise_scheduler, info: dict):
    """The product's ``Components`` (what ``trainers.train.train`` trains in place)."""
    from trainers.model_io import Components

    return Components(unet, vae, text_encoder, tokenizer, noise_scheduler, info)


def build_untrained(seed: int = 0) -> Any:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    vocab, merges = build_vocab()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = CLIPTextModel(_text_config(len(vocab)))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    info = {"vocab": vocab, "merges": merges}
    return make_components(
        unet, vae, text_encoder, make_tokenizer(vocab, merges), DDPMScheduler(**_ddpm_kwargs()), info
    )


def _ddpm_kwargs() -> dict[str, Any]:
    return {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")}


def encode_prompt(parts, prompts: list[str]):
    tok = parts.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    ids = ids.input_ids
    return parts.text_encoder(ids)[0]


# ---------------------------------------------------------------------------------------------------------------
# pre-training


def pretrain_vae(vae, steps: int, seed: int, batch: int = 16, lr: float = 1e-3) -> None:
    """Reconstruction (MSE) + a small KL term, on shapes and textures; never on the subject."""
    import torch

    rng = __import__("numpy").random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        x = pd.to_tensor([pd.texture_image(rng) if rng.random() < 0.5 else pd.class_image(rng) for _ in range(batch)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            log.info("vae step %d/%d loss %.4f (%.0fs)", step + 1, steps, loss.item(), time.time() - t0)
    vae.eval()


def latent_scale(vae, seed: int, n: int = 512) -> float:
    """SD-style ``scaling_factor``: 1 / std of the latents of class images (so diffusion sees ~unit variance)."""
    import torch

    with torch.no_grad():
        z = vae.encode(pd.to_tensor(pd.class_images(n, seed))).latent_dist.mean
    return float(1.0 / z.std())


def pretrain_denoiser(
    parts, steps: int, seed: int, batch: int = 32, lr: float = 1e-3, pool: int = 4096, te_lr: float | None = None
):
    """The UNet learns the class (epsilon-prediction loss) under captions that say what each picture shows.

    The text encoder stays frozen, as SD's CLIP did: trained here on a handful of captions it collapses (every
    prompt gives nearly the same hidden states), and a UNet pre-trained on one generic caption learns to ignore its
    text; either way DreamBooth's rare token would have no way in. Captions naming colour and kind
    (:data:`proof_data.CAPTIONS`) make reading the text pay off, so the UNet's cross-attention carries words.

    ``te_lr`` trains the text encoder too, at that learning rate (an experiment, not the build: such a base follows
    its known words best but ignores an unknown one like ``sks``; see docs/learning_proof.md).
    """
    import numpy as np
    import torch

    vae, unet, te = parts.vae, parts.unet, parts.text_encoder
    scale = vae.config.scaling_factor
    rng = np.random.default_rng(seed)
    items = [pd.described_class_image(rng) for _ in range(pool)]
    with torch.no_grad():
        dists = [
            vae.encode(pd.to_tensor([it[0] for it in items[i : i + 256]])).latent_dist for i in range(0, pool, 256)
        ]
        mean = torch.cat([d.mean for d in dists])
        std = torch.cat([d.std for d in dists])
    gen = torch.Generator().manual_seed(seed)
    sched = parts.noise_scheduler
    te.requires_grad_(te_lr is not None)
    te.train(te_lr is not None)
    cache: dict[str, Any] = {}

    def embed(captions: list[str]):
        if te_lr is not None:
            return encode_prompt(parts, captions)
        for c in captions:
            if c not in cache:
                with torch.no_grad():
                    cache[c] = encode_prompt(parts, [c])[0]
        return torch.stack([cache[c] for c in captions])

    groups = [{"params": list(unet.parameters()), "lr": lr}]
    if te_lr is not None:
        groups.append({"params": list(te.parameters()), "lr": te_lr})
    params = [q for g in groups for q in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    warm = max(1, steps // 20)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * s / steps))
    )
    unet.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, mean.shape[0], (batch,), generator=gen)
        lat = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        noisy = sched.add_noise(lat, noise, t)
        cond = embed([pd.class_caption(items[int(i)][1], items[int(i)][2], rng) for i in idx])
        pred = unet(noisy, t, cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        if step % 25 == 0 or step == steps - 1:
            log.info("denoiser step %d/%d loss %.4f (%.0fs)", step + 1, steps, loss.item(), time.time() - t0)
    unet.eval()
    te.eval()
    te.requires_grad_(True)


# The guard's prompts and the colour channel that must dominate their pictures.
GUARD_PROMPTS = (("a photo of a red circle", 0), ("a photo of a blue square", 2))


def prompt_fidelity(parts, seeds=range(8)) -> float:
    """Share of samples that show the colour their prompt names: for "a photo of a red circle" and "a photo of a
    blue square" (same seeds), the named channel must be the strongest over the picture's non-grey pixels. A base
    that ignores its text draws whatever colour the start noise leads to (~1/3); one that follows it scores ~1."""
    import numpy as np

    hits = []
    for prompt, channel in GUARD_PROMPTS:
        for img in pd.to_unit_array(sample(parts, prompt, list(seeds))):
            fg = np.abs(img - 0.5).max(axis=-1) > 0.15
            hits.append(bool(fg.any()) and int(img[fg].mean(axis=0).argmax()) == channel)
    return sum(hits) / len(hits)


def build_base(path: Path = BASE_PATH, *, seed: int = 0, vae_steps: int = 2000, denoiser_steps: int = 8000) -> Any:
    """Pre-train the whole base from scratch and save it (fp16) to ``path`` (~30 min on one core).

    The VAE first, then the UNet under a frozen text encoder and captions that say what each picture shows (see
    :func:`pretrain_denoiser`). Refuses to save a base whose samples do not follow the words (:func:`prompt_fidelity`
    below :data:`MIN_PROMPT_FIDELITY`): DreamBooth's rare token could not be learned on it.
    """
    import torch

    torch.manual_seed(seed)
    parts = build_untrained(seed)
    t0 = time.time()
    pretrain_vae(parts.vae, vae_steps, seed)
    parts.vae.register_to_config(scaling_factor=latent_scale(parts.vae, seed + 7))
    log.info("vae scaling_factor %.4f", parts.vae.config.scaling_factor)
    pretrain_denoiser(parts, denoiser_steps, seed + 1)
    fidelity = prompt_fidelity(parts)
    log.info("prompt fidelity %.2f (at least %.2f needed)", fidelity, MIN_PROMPT_FIDELITY)
    if fidelity < MIN_PROMPT_FIDELITY:
        raise RuntimeError(
            f"the pre-trained base ignores its prompts (prompt fidelity {fidelity:.2f} < {MIN_PROMPT_FIDELITY}: "
            f"its 'red circle' / 'blue square' samples are not red / blue): {path} was left as it was; train the "
            "denoiser longer (denoiser_steps)"
        )
    parts.info.update(
        seed=seed,
        vae_steps=vae_steps,
        denoiser_steps=denoiser_steps,
        prompt_fidelity=fidelity,
        seconds=round(time.time() - t0),
    )
    save_base(parts, path)
    return load_base(path)


def save_base(parts, path: Path = BASE_PATH) -> Path:
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name in ("vae", "unet", "text_encoder"):
        for k, v in getattr(parts, name).state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().to(torch.float16).contiguous()
    meta = {
        "format": FORMAT,
        "vae_config": json.dumps(dict(parts.vae.config)),
        "unet_config": json.dumps(dict(parts.unet.config)),
        "text_encoder_config": json.dumps(parts.text_encoder.config.to_diff_dict()),
        "scheduler_config": json.dumps(SCHEDULER_CONFIG),
        "vocab": json.dumps(parts.info["vocab"]),
        "merges": json.dumps(parts.info["merges"]),
        "max_tokens": str(parts.tokenizer.model_max_length),
        "build": json.dumps({k: v for k, v in parts.info.items() if k not in ("vocab", "merges")}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    log.info("saved base model to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def load_base(path: Path = BASE_PATH) -> Any:
    """Load the committed base in float32 on CPU (fresh modules every call: training mutates them)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors import safe_open
    from transformers import CLIPTextModel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; build it with `python -m benchmarks.learning_proof --rebuild-base`"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a learning-proof base ({meta.get('format')!r})")
        tensors = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}  # noqa: SIM118

    def sub(prefix: str) -> dict:
        return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    vocab = json.loads(meta["vocab"])
    merges = [tuple(m) for m in json.loads(meta["merges"])]
    vae_cfg = {k: v for k, v in json.loads(meta["vae_config"]).items() if not k.startswith("_")}
    unet_cfg = {k: v for k, v in json.loads(meta["unet_config"]).items() if not k.startswith("_")}
    vae = AutoencoderKL.from_config(vae_cfg)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    text_encoder = CLIPTextModel(_text_config(len(vocab)))
    vae.load_state_dict(sub("vae"))
    unet.load_state_dict(sub("unet"))
    text_encoder.load_state_dict(sub("text_encoder"), strict=False)
    for m in (vae, unet, text_encoder):
        m.eval()
    info = {"vocab": vocab, "merges": merges, **json.loads(meta["build"]), "path": str(path)}
    tokenizer = make_tokenizer(vocab, merges, int(meta.get("max_tokens", 77)))
    return make_components(unet, vae, text_encoder, tokenizer, DDPMScheduler(**_ddpm_kwargs()), info)


def pipeline(parts):
    """A diffusers ``StableDiffusionPipeline`` over the parts, with SD's DDIM sampler (no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(parts, prompt: str, seeds: list[int], steps: int = 25, batch: int = 12):
    """One image per seed (each its own generator, so a seed gives the same start noise in every model)."""
    import torch

    pipe = pipeline(parts)
    out = []
    for i in range(0, len(seeds), batch):
        chunk = seeds[i : i + batch]
        gens = [torch.Generator().manual_seed(s) for s in chunk]
        with torch.no_grad():
            res = pipe(
                [prompt] * len(chunk),
                height=pd.SIZE,
                width=pd.SIZE,
                num_inference_steps=steps,
                guidance_scale=1.0,
                generator=gens,
                output_type="pil",
            )
        out.extend(res.images)
    return out


if __name__ == "__main__":  # python -m benchmarks.proof_base [out.safetensors] (quick manual rebuild)
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    build_base(Path(sys.argv[1]) if len(sys.argv) > 1 else BASE_PATH)
