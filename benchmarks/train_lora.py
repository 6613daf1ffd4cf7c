"""Seconds per step and peak memory: LoRA next to DreamBooth on the same model, data and loop.

    python benchmarks/train_lora.py [--steps 8] [--resolution 64] [--model comfy_tiny|tiny] [--device cpu|cuda]
                                    [--threads 1] [--only TEXT ...]

Each method runs in its own process (so peak memory is its own): the ComfyUI-sized tiny SD1.5 (320-channel UNet,
full CLIP-L text encoder, SD VAE) built in code, 3 subject images, no prior preservation (except in the two "prior"
rows: 3 class images, or the prior from the base model), batch 1, AdamW, fp32 on
CPU (the compute precision on CUDA), latents cached, no samples. Seconds/step is the median over the steps after the
first, wall clock and process CPU time (the CPU time is what to compare on a shared machine). Peak memory: process peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA), and its growth over the
loaded model. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "dreambooth (UNet + TE)": ("dreambooth", {"train_text_encoder": True}),
    "dreambooth (UNet only)": ("dreambooth", {"train_text_encoder": False}),
    "lora r16 attention + TE": ("lora", {"lora_rank": 16, "lora_alpha": 8, "train_text_encoder": True}),
    "lora r16 attention": ("lora", {"lora_rank": 16, "lora_alpha": 8, "train_text_encoder": False}),
    "lora r16 all layers + TE": (
        "lora",
        {"lora_rank": 16, "lora_alpha": 8, "lora_layers": "all", "train_text_encoder": True},
    ),
    # prior preservation, issue 15: class images vs the base model's prediction (one more forward, adapters off)
    "lora r16 attention + TE, prior from class images": (
        "lora",
        {"lora_rank": 16, "lora_alpha": 8, "train_text_encoder": True, "prior_preservation": True},
    ),
    "lora r16 attention, prior from class images": (
        "lora",
        {"lora_rank": 16, "lora_alpha": 8, "train_text_encoder": False, "prior_preservation": True},
    ),
    "lora r16 attention, prior from the base model": (
        "lora",
        {
            "lora_rank": 16,
            "lora_alpha": 8,
            "train_text_encoder": False,
            "prior_preservation": True,
            "prior": "base_model",
        },
    ),
    "lora r16 attention + TE, prior from the base model": (
        "lora",
        {
            "lora_rank": 16,
            "lora_alpha": 8,
            "train_text_encoder": True,
            "prior_preservation": True,
            "prior": "base_model",
        },
    ),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _images(folder: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def run_one(label: str, steps: int, resolution: int, model: str, device: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from trainers.configspec import from_dict
    from trainers.lora.config import LoRAConfig
    from trainers.tiny import comfy_tiny_components, tiny_components
    from trainers.train import Callbacks, DreamBoothConfig, train

    kind, extra = METHODS[label]
    tmp = Path(tempfile.mkdtemp(prefix="likeness-bench-"))
    _images(tmp / "inst", 3, resolution)
    _images(tmp / "cls", 3, resolution)
    components = (comfy_tiny_components if model == "comfy_tiny" else tiny_components)(seed=0)
    rss_model = _rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    opts = dict(
        instance_data=str(tmp / "inst"),
        instance_prompt="a photo of sks shape",
        prior_preservation=False,
        output=str(tmp / "out.safetensors"),
        steps=steps,
        resolution=resolution,
        device=device,
        optimizer="adamw",
        gradient_checkpointing=False,
        sample_prompts=[],
        learning_rate=1e-4,
    )
    opts.update(extra)
    if opts["prior_preservation"] and opts.get("prior", "class_images") == "class_images":
        opts["class_data"] = str(tmp / "cls")
    cfg = from_dict(LoRAConfig if kind == "lora" else DreamBoothConfig, opts)
    stamps: list[float] = []
    cpu: list[float] = []

    class Timer(Callbacks):
        def on_progress(self, info):
            if info.phase == "training":
                stamps.append(time.perf_counter())
                cpu.append(time.process_time())

    t0 = time.perf_counter()
    outcome = train(cfg, components=components, callbacks=Timer())
    total = time.perf_counter() - t0
    per_step = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    cpu_step = [b - a for a, b in zip(cpu, cpu[1:], strict=False)]
    trainable = 0
    for module in (components.unet, components.text_encoder):
        trainable += sum(p.numel() for n, p in module.named_parameters() if kind == "dreambooth" or "lora_" in n)
    if kind == "dreambooth" and not extra.get("train_text_encoder"):
        trainable = sum(p.numel() for p in components.unet.parameters())
    out = {
        "label": label,
        "s_per_step": statistics.median(per_step) if per_step else float("nan"),
        "cpu_s_per_step": statistics.median(cpu_step) if cpu_step else float("nan"),
        "total_s": total,
        "peak_mb": _rss_mb(),
        "model_mb": rss_model,
        "trainable_m": trainable / 1e6,
        "file_mb": Path(outcome.path).stat().st_size / 1e6 if outcome.path else 0.0,
    }
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["model_mb"] = 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--model", choices=("comfy_tiny", "tiny"), default="comfy_tiny")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared CPU)")
    ap.add_argument("--only", nargs="+", metavar="TEXT", help="run only the methods whose label contains TEXT")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.resolution, args.model, args.device, args.threads)))
        return 0
    rows = []
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    for label in [m for m in METHODS if not args.only or any(t in m for t in args.only)]:
        cmd = [sys.executable, __file__, "--one", label, "--steps", str(args.steps), "--resolution",
               str(args.resolution), "--model", args.model, "--device", args.device, "--threads", str(args.threads)]  # fmt: skip
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"done: {label}", file=sys.stderr)
    mem = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB (model loaded)"
    print(f"| method | trainable M params | s/step | CPU s/step | {mem} | result file MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        loaded = f" ({r['model_mb']:.0f})" if args.device == "cpu" else ""
        print(
            f"| {r['label']} | {r['trainable_m']:.2f} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} "
            f"| {r['peak_mb']:.0f}{loaded} "
            f"| {r['file_mb']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
