"""Speed and memory of the training loop (``trainers.train.train``), DreamBooth strategy.

    python -m benchmarks.bench_train                      # tiny model, CPU: seconds/step and peak RSS
    python -m benchmarks.bench_train --model sd15 --steps 20 --resolution 512   # real-size SD1.5 (random init), GPU

``--model sd15`` builds a randomly initialised full-size SD1.5 (UNet 860M, CLIP-L, SD VAE) from the pack's bundled
configs: right for speed and memory, meaningless for quality. On CUDA it reports ``torch.cuda.max_memory_allocated``.
Each configuration trains in a fresh copy of the model; the first 2 steps (warm-up) are left out of seconds/step.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, n: int, size: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def build(model: str):
    if model == "tiny":
        from trainers.tiny import tiny_components

        return tiny_components(seed=0)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainers.model_io.components import Components, make_noise_scheduler
    from trainers.model_io.model_configs import bundled_config
    from trainers.tiny import tiny_tokenizer

    unet = UNet2DConditionModel.from_config(bundled_config("unet"))
    vae = AutoencoderKL.from_config(bundled_config("vae"))
    te_cfg = {k: v for k, v in bundled_config("text_encoder").items() if k not in ("architectures", "model_type")}
    te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    return Components(unet, vae, te, tiny_tokenizer(), make_noise_scheduler(), {"source": "random sd15"})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(base, root: Path, args, **options) -> dict:
    import torch

    from trainers.configspec import from_dict
    from trainers.train import Callbacks, DreamBoothConfig, train

    times: list[float] = []

    class Timer(Callbacks):
        def on_progress(self, info):
            if info.phase == "training":
                times.append(time.perf_counter())

    cfg = from_dict(
        DreamBoothConfig,
        dict(
            instance_data=str(root / "inst"),
            class_data=str(root / "cls"),
            prior_preservation=True,
            output=str(root / f"out_{len(list(root.glob('out_*')))}.safetensors"),
            resolution=args.resolution,
            steps=args.steps,
            sample_at_end=False,
            **options,
        ),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    components = copy.deepcopy(base)
    t0 = time.perf_counter()
    train(cfg, components=components, callbacks=Timer())
    total = time.perf_counter() - t0
    steady = times[2:] if len(times) > 3 else times
    per_step = (steady[-1] - steady[0]) / max(len(steady) - 1, 1)
    out = {"s_per_step": per_step, "total_s": total, "peak_rss_mb": peak_rss_mb()}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=None, help="default: 32 (tiny) / 512 (sd15)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.resolution = args.resolution or (32 if args.model == "tiny" else 512)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = build(args.model)
    variants = [
        ("fp32, TE trained, AdamW", dict(mixed_precision="fp32", optimizer="adamw", gradient_checkpointing=False)),
        ("fp32, TE frozen (cached embeddings)", dict(mixed_precision="fp32", optimizer="adamw",
                                                     gradient_checkpointing=False, train_text_encoder=False)),
        ("fp32, TE trained, gradient checkpointing", dict(mixed_precision="fp32", optimizer="adamw")),
    ]  # fmt: skip
    if device == "cuda":
        variants += [
            ("bf16, TE trained, checkpointing, AdamW", dict(mixed_precision="bf16", optimizer="adamw")),
            ("fp16, TE trained, checkpointing, 8-bit AdamW", dict(mixed_precision="fp16", optimizer="auto")),
            ("fp16, TE frozen, checkpointing, 8-bit AdamW", dict(mixed_precision="fp16", optimizer="auto",
                                                                 train_text_encoder=False)),
        ]  # fmt: skip
    print(f"model={args.model} device={device} resolution={args.resolution} steps={args.steps} "
          f"threads={torch.get_num_threads()} (batch 1 subject + 1 class image per step)")  # fmt: skip
    print("| configuration | s/step | total s | peak RSS MB | peak CUDA MB |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root / "inst", 4, args.resolution, 0)
        make_images(root / "cls", 4, args.resolution, 1)
        for name, options in variants:
            try:
                r = measure(base, root, args, device=device, **options)
            except Exception as e:  # noqa: BLE001 - e.g. bitsandbytes missing: report and go on
                print(f"| {name} | failed: {e} | | | |")
                continue
            cuda = f"{r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "-"
            print(f"| {name} | {r['s_per_step']:.3f} | {r['total_s']:.1f} | {r['peak_rss_mb']:.0f} | {cuda} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
