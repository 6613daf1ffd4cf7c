"""Tiny SD1-shaped models built in code (tests and the demo); random weights from a fixed seed, no downloads.

- ``tiny_components``: diffusers-test-sized (UNet channels (32, 64), CLIP width 32, a small VAE): fast unit tests.
- ``comfy_tiny_components``: the smallest model ComfyUI's loader accepts as SD1.5: a one-level UNet with 320 channels
  and context 768, a full-shape CLIP-L text encoder and a full-shape SD VAE (the 2024-03 host builds its VAE from a
  fixed config).
- ``tiny_tokenizer``: a byte-level CLIP BPE tokenizer with a few hundred tokens, built without files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .model_io.components import Components, make_noise_scheduler

_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
_MERGES = [("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>"), ("s", "k"), ("sk", "s</w>"), ("o", "f</w>")]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (the GPT-2/CLIP convention)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def tiny_tokenizer():
    """A CLIPTokenizer (model_max_length 77) with byte tokens, their word-final forms and a few merges."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + [a + b for a, b in _MERGES] + list(_SPECIAL):
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=77)


def _text_config(tokenizer, **overrides: Any):
    from transformers import CLIPTextConfig

    cfg = {
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }
    return CLIPTextConfig(**cfg)


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def _freeze(*models) -> None:
    for m in models:
        m.eval()
        m.requires_grad_(False)


def tiny_components(seed: int = 0) -> Components:
    """A diffusers-test-sized SD1-shaped model (~2M parameters); same seed -> same weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tok = tiny_tokenizer()
    _seeded(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )
    te = CLIPTextModel(
        _text_config(
            tok, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000
        )
    )
    _freeze(unet, vae, te)
    info = {"variant": "sd1", "source": "tiny", "seed": seed, "ema_used": False, "dtype": "fp32"}
    return Components(unet, vae, te, tok, make_noise_scheduler(), info)


def comfy_tiny_components(seed: int = 0) -> Components:
    """The smallest SD1.5 ComfyUI detects and samples: UNet model_channels 320, one level, one res block, context
    768; full-shape CLIP-L text encoder; full-shape SD VAE."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .model_io.model_configs import bundled_config

    tok = tiny_tokenizer()
    _seeded(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320,),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL.from_config(bundled_config("vae"))
    te_cfg = {k: v for k, v in bundled_config("text_encoder").items() if k not in ("architectures", "model_type")}
    te_cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    te = CLIPTextModel(_text_config(tok, **te_cfg))
    _freeze(unet, vae, te)
    info = {"variant": "sd1", "source": "comfy_tiny", "seed": seed, "ema_used": False, "dtype": "fp32"}
    return Components(unet, vae, te, tok, make_noise_scheduler(), info)


def write_civitai_file(
    components: Components, path: str | Path, *, dtype: str = "fp16", metadata: dict[str, str] | None = None
) -> Path:
    """Write ``components`` the way civitai files look: LDM layout, one ``.safetensors``, no Likeness metadata
    beyond the model configs and ``metadata`` (overwrites). The same components give the same bytes."""
    from .model_io.export import save_single_file

    return save_single_file(components, path, dtype=dtype, metadata=metadata, overwrite=True)


COMFY_TINY_MARK = {"likeness.tiny_model": "comfy_tiny", "likeness.tiny_seed": "0", "likeness.tiny_version": "1"}
"""Header metadata of the ComfyUI-loadable tiny model the demo writes (random weights: it draws noise)."""


def is_comfy_tiny(path: str | Path) -> bool:
    """Whether ``path`` is the demo's ComfyUI-loadable tiny model as :func:`write_comfy_tiny` writes it now."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file() or p.is_symlink():
        return False
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable: not ours, written again
        return False
    return all(meta.get(k) == v for k, v in COMFY_TINY_MARK.items())


def write_comfy_tiny(path: str | Path) -> Path:
    """The ComfyUI-loadable tiny SD1.5 (:func:`comfy_tiny_components`, seed 0) as an fp16 single file (~465 MB: the
    full-size CLIP-L text encoder and SD VAE are most of it)."""
    return write_civitai_file(comfy_tiny_components(seed=0), path, dtype="fp16", metadata=COMFY_TINY_MARK)
