"""What gradient checkpointing costs per step for the full-size SD1.5 UNet, measured, next to what it saves.

    python -m benchmarks.checkpointing_cost --resolution 512 --reps 3     # CPU or CUDA

A randomly initialised full-size UNet (the pack's bundled config), batch 1 at the given resolution, one forward and
backward per rep (no optimizer: its cost does not depend on checkpointing), with and without checkpointing,
interleaved; the median of the reps after a warm-up of each. Also prints the model FLOPs of the forward (counted on
the meta device) and the traced activation memory of both (``trainers/train/memtrace.py``), so the time it costs
sits next to the memory it saves. fp32 on the CPU; bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def unet_and_inputs(resolution: int, device: str):
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trainers.model_io.model_configs import bundled_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(bundled_config("unet")).to(device)
    unet.set_attn_processor(AttnProcessor2_0())
    unet.train()
    side = resolution // 8
    x = torch.randn(1, 4, side, side, device=device)
    t = torch.tensor([500], device=device)
    hidden = torch.randn(1, 77, 768, device=device)
    return unet, (x, t, hidden)


def one_step(unet, inputs, device: str) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        out = unet(*inputs, return_dict=False)[0]
    out.float().pow(2).mean().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    unet.zero_grad(set_to_none=True)
    return elapsed


def forward_flops(resolution: int) -> float:
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from trainers.model_io.model_configs import bundled_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(bundled_config("unet"))
        side = resolution // 8
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(torch.empty(1, 4, side, side), torch.zeros(1, dtype=torch.long), torch.empty(1, 77, 768))
    return counter.get_total_flops()


def traced_activations(resolution: int, checkpointing: bool) -> int:
    from trainers.model_io.model_configs import bundled_config
    from trainers.train.memtrace import StepShape, step_peak_bytes

    shape = StepShape(
        json.dumps(bundled_config("unet")), None, 1, resolution // 8, checkpointing, "sdpa", "fp32", "free"
    )
    return step_peak_bytes(shape)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet, inputs = unet_and_inputs(args.resolution, device)
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.reps + 1):
        for on in (False, True):
            (unet.enable_gradient_checkpointing if on else unet.disable_gradient_checkpointing)()
            took = one_step(unet, inputs, device)
            if rep:  # the first of each is a warm-up
                times[on].append(took)
            print(f"rep {rep} checkpointing={on}: {took:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    plain, ckpt = statistics.median(times[False]), statistics.median(times[True])
    flops = forward_flops(args.resolution)
    print(
        f"\n{device}, {torch.get_num_threads()} threads, {args.resolution} px, batch 1, forward {flops / 1e12:.2f} TFLOP"
    )
    print("| gradient checkpointing | s per forward+backward | activations (traced, fp32) |")
    print("|---|---:|---:|")
    for on, value in ((False, plain), (True, ckpt)):
        act = traced_activations(args.resolution, on) / 2**30
        print(f"| {'on' if on else 'off'} | {value:.2f} | {act:.2f} GB |")
    print(
        f"\ncheckpointing costs {100 * (ckpt / plain - 1):+.0f}% per step (one more forward: +33% if backward = 2x forward)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
