"""Model I/O timings and peak memory on the ComfyUI-loadable tiny SD1.5 (full-size CLIP-L text encoder and SD VAE,
one-level 320-channel UNet: 232M parameters, 465 MB in fp16).

    .venv/bin/python benchmarks/model_io.py [--keep DIR]

Each step runs once, in order, in this process; peak RSS is the process maximum after the step. Prints a Markdown
table (append it to docs/benchmarks.md with the machine's load noted).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="folder for the files (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="likeness-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LIKENESS_CACHE"] = str(work / "cache")

    rows: list[tuple[str, float, float]] = []

    def step(name, fn):
        t = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t, _rss_mb()))
        return out

    import torch

    from trainers.model_io import (
        host_loadable_file,
        inspect_checkpoint,
        load_components,
        make_model_handle,
        save_single_file,
    )
    from trainers.tiny import comfy_tiny_components

    comps = step("build comfy-tiny (random init, fp32)", comfy_tiny_components)
    path = step(
        "save_single_file fp16 (465 MB)", lambda: save_single_file(comps, work / "a.safetensors", overwrite=True)
    )
    tok = comps.tokenizer
    comps = None  # free it
    step("inspect_checkpoint (header only)", lambda: inspect_checkpoint(path))
    step("make_model_handle (incl. sha256)", lambda: make_model_handle(path))
    loaded = step("load_components fp32", lambda: load_components(path, tokenizer=tok))
    step("save_single_file fp16 again", lambda: save_single_file(loaded, work / "b.safetensors", overwrite=True))
    loaded = None
    ckpt = work / "a.ckpt"
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(path)}, ckpt)
    step("host_loadable_file(.ckpt) -> cached safetensors", lambda: host_loadable_file(make_model_handle(ckpt)))

    print("| step | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, sec, rss in rows:
        print(f"| {name} | {sec:.1f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
