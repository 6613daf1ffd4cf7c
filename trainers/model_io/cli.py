"""``python -m trainers convert``: inspect an SD1.5 checkpoint, or convert it (single file <-> diffusers folder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from .reader import EMA_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a single-file checkpoint (.safetensors/.ckpt/...) or a diffusers folder")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--to-diffusers", metavar="DIR", help="write a diffusers folder")
    out.add_argument("--to-single", metavar="FILE", help="write one LDM-layout .safetensors (ComfyUI/A1111)")
    parser.add_argument("--dtype", choices=("fp16", "fp32", "bf16"), default=None, help="output dtype")
    parser.add_argument("--ema", choices=EMA_CHOICES, default="auto", help="which UNet weights of an EMA file")
    parser.add_argument("--vae", metavar="FILE", help="separate VAE file (replaces/supplies the VAE)")
    parser.add_argument("--base", metavar="FILE", help="full SD1.5 checkpoint completing a UNet-only file")
    parser.add_argument("--tokenizer", metavar="DIR", help="CLIP tokenizer folder (written into a diffusers folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _report(info: dict) -> list[str]:
    counts = info.get("counts", {})
    sources = info.get("sources", {})
    lines = [
        f"file:      {info.get('path')}",
        f"variant:   {info.get('variant')} ({info.get('format')})",
        f"dtype:     {info.get('dtype')}",
        f"EMA:       {'present' if info.get('ema_present') else 'none'}; "
        f"{'EMA' if info.get('ema_used') else 'regular'} UNet weights used",
        "tensors:   " + ", ".join(f"{k} {v}" for k, v in counts.items()),
    ]
    if any(s != info.get("path") for s in sources.values()):
        lines.append("sources:   " + ", ".join(f"{k} <- {v}" for k, v in sources.items()))
    return lines


def run(args: argparse.Namespace) -> int:
    from .components import load_components
    from .export import save_diffusers_folder, save_single_file
    from .reader import inspect_checkpoint

    src = Path(args.source)
    info = inspect_checkpoint(src, ema=args.ema, vae_path=args.vae, base_path=args.base)
    info = {k: v for k, v in info.items() if k not in ("metadata", "configs")}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print("\n".join(_report(info)))
    if not (args.to_diffusers or args.to_single):
        return 0
    from ..handles import ModelHandle

    handle = ModelHandle(str(src), "sd1", "", vae_path=args.vae, base_path=args.base, ema=args.ema)
    tokenizer = args.tokenizer or (None if (src / "tokenizer").is_dir() else False)
    comps = load_components(handle, tokenizer=tokenizer)
    if args.to_single:
        out = save_single_file(comps, args.to_single, dtype=args.dtype or "fp16", overwrite=args.overwrite)
    else:
        if args.to_diffusers and Path(args.to_diffusers).resolve() == src.resolve():
            raise ConfigError("--to-diffusers must name a new folder, not the source")
        out = save_diffusers_folder(comps, args.to_diffusers, dtype=args.dtype or "fp32", overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
