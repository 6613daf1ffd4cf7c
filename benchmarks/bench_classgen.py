"""Class image generation throughput: images/s of ``trainers.classgen`` on the tiny models (CPU here, GPU if any).

    .venv/bin/python benchmarks/bench_classgen.py [--model tiny|comfy-tiny] [--count 16] [--resolution 64]
        [--steps 20] [--batch-sizes 1,4] [--threads 1] [--device auto]

Each measurement generates ``count`` images into a fresh folder with ``generate_class_images`` (the node's engine:
pipeline built from our components, prompt encoded once, per-image seeds, atomic PNG writes, manifest) from
components already in memory, so model loading is not timed. A second call on the same folder (everything reused)
is timed too. ``--base-model FILE --tokenizer DIR`` measures a real checkpoint instead (fp16 on CUDA). ``tiny`` is the diffusers-test-sized model (VAE factor 2: 64 px -> 32x32 latents); ``comfy-tiny`` is the
ComfyUI-loadable one (full-size CLIP-L text encoder and SD VAE, one-level 320-channel UNet; 64 px -> 8x8 latents),
closer to the real model's text and VAE cost. The load average is printed: on a shared machine wall times are longer
than the hardware allows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.classgen import ClassImagesConfig, generate_class_images  # noqa: E402


def build(args, device, dtype):
    if args.base_model:  # a real checkpoint (e.g. SD1.5 at 512 px on a GPU)
        from trainers.model_io import load_components

        return load_components(args.base_model, tokenizer=args.tokenizer, dtype=dtype, device=device)
    from trainers import tiny

    components = tiny.tiny_components(0) if args.model == "tiny" else tiny.comfy_tiny_components(0)
    for part in (components.unet, components.vae, components.text_encoder):
        part.to(device=device, dtype=dtype)
    return components


def measure(components, args, batch_size: int, root: Path) -> dict:
    cfg = ClassImagesConfig(
        class_prompt="a photo of woman face",
        negative_prompt="blurry, lowres",
        count=args.count,
        resolution=args.resolution,
        steps=args.steps,
        cfg=7.0,
        sampler=args.sampler,
        seed=0,
        batch_size=batch_size,
    )
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    made = generate_class_images(cfg, components=components, model_key=f"bench-{args.model}", output_root=root)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    t1 = time.perf_counter()
    again = generate_class_images(cfg, components=components, model_key=f"bench-{args.model}", output_root=root)
    reuse = time.perf_counter() - t1
    assert made.generated == args.count and again.generated == 0
    return {
        "batch_size": batch_size,
        "images": args.count,
        "wall_s": round(wall, 2),
        "images_per_s": round(args.count / wall, 3),
        "cpu_s_per_image": round(cpu / args.count, 3),
        "reuse_s": round(reuse, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "comfy-tiny"), default="tiny")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", choices=("ddim", "euler_a"), default="ddim")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--base-model", help="a real SD1.5 checkpoint instead of a tiny model")
    ap.add_argument("--tokenizer", help="CLIP tokenizer folder for --base-model (e.g. ComfyUI's comfy/sd1_tokenizer)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.base_model:
        args.model = Path(args.base_model).name
    t0 = time.perf_counter()
    components = build(args, device, dtype)
    built = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            rows.append(measure(components, args, bs, Path(tmp) / f"bs{bs}"))
    report = {
        "model": args.model,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "resolution": args.resolution,
        "steps": args.steps,
        "sampler": args.sampler,
        "cfg": 7.0,
        "build_s": round(built, 1),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "runs": rows,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
