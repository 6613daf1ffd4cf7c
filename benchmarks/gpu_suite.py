"""The GPU suite: one command, ours next to diffusers' own scripts on a full-size SD1.5, a table for the docs.

    DIFFUSERS_EXAMPLES=/path/to/diffusers/examples/dreambooth python -m benchmarks.gpu_suite --out gpu_table.md
    python -m benchmarks.gpu_suite --smoke --out /tmp/table.md        # CPU, tiny model, 1 step (what CI runs)

On a CUDA GPU: a randomly initialised full-size SD1.5 from the pack's bundled configs (written once as a diffusers
folder both trainers load), 512 px, batch 1 and 4, bf16 mixed precision (fp16 where the GPU has no bf16), gradient
checkpointing and AdamW for both; full DreamBooth (UNet; UNet + text encoder) and LoRA (rank 4, attention) through
ours and through diffusers' ``train_dreambooth.py`` / ``train_dreambooth_lora.py`` (from a checkout named by
``DIFFUSERS_EXAMPLES`` or ``--diffusers``, never part of this repository), plus our low-memory rows (bf16 weights
with stochastic rounding and the optimizer step in backward). Each run is a fresh process measured by
``benchmarks/probe.py``: steps/s (median, first step left out), peak VRAM (``torch.cuda.max_memory_allocated``),
synchronising operations per step (each makes the host wait until the GPU's queue is empty: ``.item()``, a
blocking copy; counted with torch's sync debug mode, which does not see our loop's one wait per step, for the
previous step's losses, when the next step is queued already) and model FLOPs utilisation: the UNet's (and trained
text encoder's) forward FLOPs counted once on the meta device (``torch.utils.flop_counter``), times 3 for forward + backward of trained weights (2 for LoRA's frozen base, which
needs no weight gradients), over the step time and the GPU's dense bf16/fp16 peak (``--peak-tflops`` for a GPU not in
the table). About 7 minutes on one H100-class GPU.

``--smoke`` runs the same code on the CPU with the tiny test model for one step, ours only unless a diffusers
checkout is named, so the suite cannot rot where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import side_by_side as sbs

# dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' data sheets
PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0, "L40S": 362.0,
    "L4": 121.0, "A10G": 125.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "T4": 65.0, "V100": 125.0,
}  # fmt: skip

GPU_PAIRINGS = ("unet_ckpt", "unet_te_ckpt", "lora_ckpt", "unet_lowmem", "unet_te_lowmem")
SMOKE_PAIRINGS = ("unet", "unet_te", "lora")
GOALS = {  # the goals for the full-size model at 512 px, batch 1 (GB of torch.cuda.max_memory_allocated)
    "unet_lowmem": "<= 10 GB",
    "unet_te_lowmem": "<= 16 GB",
    "lora_ckpt": "<= 6 GB",
    "unet_ckpt": ">= 1.5x diffusers' steps/s",
    "unet_te_ckpt": ">= 1.5x diffusers' steps/s",
}


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, tflops in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def model_flops(kind: str, pairing: sbs.Pairing, batch: int, resolution: int) -> float:
    """FLOPs of one training step: trained forwards x3 (forward + backward), a frozen base x2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_train import build

    with torch.device("meta"):
        c = build(kind)
    latent = resolution // 2 ** (len(c.vae.config.block_out_channels) - 1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        x = torch.empty(batch, c.unet.config.in_channels, latent, latent, device="meta")
        hidden = torch.empty(batch, 77, c.unet.config.cross_attention_dim, device="meta")
        c.unet(x, torch.zeros(batch, dtype=torch.long, device="meta"), hidden)
    unet = counter.get_total_flops()
    te = 0
    if "--train-text-encoder" in pairing.ours:
        with FlopCounterMode(display=False) as te_counter, torch.no_grad():
            c.text_encoder(torch.zeros(batch, 77, dtype=torch.long, device="meta"))
        te = te_counter.get_total_flops()
    factor = 2 if pairing.method == "lora" else 3
    return factor * (unet + te)


def rows_for(setup: sbs.Setup, key: str, batch: int, peak: float | None, kind: str) -> list[str]:
    p = sbs.PAIRINGS[key]
    ours = [r for r in setup.results if r["pairing"] == p.name and r["who"] == "ours" and r["batch"] == batch]
    base = sbs.PAIRINGS[p.baseline].name if p.baseline else p.name
    theirs = [r for r in setup.results if r["pairing"] == base and r["who"] == "theirs" and r["batch"] == batch]
    flops = model_flops(kind, p, batch, setup.resolution)
    mem = "cuda_peak_mb" if setup.device == "cuda" else "rss_peak_mb"

    def cells(rows):
        if not rows:
            return ["-", "-", "-", "-"]
        step = sbs.median(rows, "step_s")
        mfu = f"{100 * flops / step / peak:.0f}%" if peak and step else "-"
        syncs = sbs.median(rows, "syncs_per_step")  # CUDA runs only
        wait = f"{syncs:.1f}" if syncs is not None else "-"
        return [f"{1 / step:.2f}", f"{sbs.median(rows, mem) / 1024:.1f}", mfu, wait]

    a, b = cells(ours), cells(theirs)
    speed = f"{float(a[0]) / float(b[0]):.2f}" if a[0] != "-" and b[0] != "-" else "-"
    return [
        f"| {p.name} | {batch} | {a[0]} | {b[0]} | {speed} | {a[1]} | {b[1]} | {a[2]} | {b[2]} | {a[3]} | {b[3]} "
        f"| {GOALS.get(key, '')} |"
    ]


def table(setup: sbs.Setup, keys, batches, peak: float | None, kind: str, device_name: str) -> str:
    unit = "peak VRAM GB" if setup.device == "cuda" else "peak RSS GB"
    lines = [
        f"{device_name}, {kind} SD1.5 (random init), {setup.resolution} px, {setup.precision}, "
        f"{setup.steps} steps per run, {time.strftime('%Y-%m-%d')}",
        "",
        f"| configuration | batch | steps/s ours | steps/s diffusers | ratio | {unit} ours | diffusers | MFU ours "
        "| diffusers | syncs/step ours | diffusers | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in keys:
        for batch in batches:
            lines += rows_for(setup, key, batch, peak, kind)
    return "\n".join(lines)


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, 1 step: checks the suite itself")
    ap.add_argument("--diffusers", type=Path, default=os.environ.get("DIFFUSERS_EXAMPLES"))
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write every run's measurements here")
    ap.add_argument("--work", type=Path, default=None, help="keep the model and runs here")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per run (default 6; smoke 1)")
    ap.add_argument("--batches", default=None, help="comma-separated (default 1,4; smoke 1)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    ap.add_argument("--pairings", default=None, help=f"comma-separated (default {','.join(GPU_PAIRINGS)})")
    return ap.parse_args(argv)


def run(args, root: Path) -> str:
    import torch

    smoke = args.smoke
    cuda = torch.cuda.is_available() and not smoke
    if not smoke and not cuda:
        raise SystemExit("no CUDA GPU here: run with --smoke on the CPU, or on a GPU machine")
    kind = "tiny" if smoke else "sd15"
    precision = "fp32" if not cuda else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    diffusers = args.diffusers if args.diffusers and (Path(args.diffusers) / "train_dreambooth.py").is_file() else None
    if not smoke and diffusers is None:
        raise SystemExit("set DIFFUSERS_EXAMPLES (or --diffusers) to diffusers' examples/dreambooth folder")
    resolution = 32 if smoke else 512
    steps = args.steps or (1 if smoke else 6)
    batches = [int(b) for b in (args.batches or ("1" if smoke else "1,4")).split(",")]
    keys = args.pairings.split(",") if args.pairings else (SMOKE_PAIRINGS if smoke else GPU_PAIRINGS)
    model = sbs.write_model(kind, root / f"model-{kind}")
    images = sbs.write_images(root / f"images-{resolution}", 4, resolution)
    device_name = torch.cuda.get_device_name() if cuda else "CPU (smoke)"
    setup = None
    for batch in batches:
        setup_b = sbs.Setup(
            root, model, images, resolution, steps, batch, "cuda" if cuda else "cpu", precision, diffusers
        )
        for key in keys:
            p = sbs.PAIRINGS[key]
            for who in ("ours", "theirs") if diffusers and not p.baseline else ("ours",):
                r = sbs.run_probe(setup_b, who, p, batch)
                r["batch"] = batch
                print(f"  {p.name} batch {batch} [{who}] {r['step_s']:.3f} s/step", file=sys.stderr, flush=True)
        if setup is None:
            setup = setup_b
        else:
            setup.results += setup_b.results
    out = table(setup, keys, batches, peak_flops(device_name, args.peak_tflops) if cuda else None, kind, device_name)
    if args.json:
        args.json.write_text(json.dumps(setup.results, indent=1))
    return out


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        text = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="likeness-gpu-suite.") as tmp:
            text = run(args, Path(tmp))
    text += f"\n\nWhole suite: {time.perf_counter() - t0:.0f} s."
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
