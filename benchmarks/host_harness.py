"""How long the real-ComfyUI test host takes: preparing it, starting it, and one sampling prompt through
Likeness Load Checkpoint on the ComfyUI-loadable tiny SD1.5 checkpoint.

    .venv/bin/python benchmarks/host_harness.py            # uses the normal cache (LIKENESS_HOST_CACHE)
    .venv/bin/python benchmarks/host_harness.py --fresh    # prepares into an empty cache, without pip's cache

Prints a Markdown table (append it to docs/benchmarks.md with the machine's load noted).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.host import harness  # noqa: E402


def _graph(ckpt_name: str, prefix: str, seed: int = 1) -> dict:
    loader = {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": ckpt_name}}
    return harness.sample_prompt(loader, prefix, seed=seed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fresh", action="store_true", help="prepare into an empty cache with pip's cache disabled")
    args = p.parse_args()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="likeness-host-bench.") as td:
        if args.fresh:
            os.environ["LIKENESS_HOST_CACHE"] = str(Path(td) / "cache")
            os.environ["PIP_NO_CACHE_DIR"] = "1"
        t0 = time.perf_counter()
        install = harness.prepare_host()
        rows.append(
            (
                "prepare host (" + ("fresh cache, no pip cache" if args.fresh else "cached") + ")",
                time.perf_counter() - t0,
            )
        )

        from trainers.tiny import comfy_tiny_components, write_civitai_file

        t0 = time.perf_counter()
        ckpt = write_civitai_file(comfy_tiny_components(seed=0), Path(td) / "tiny.safetensors", dtype="fp16")
        rows.append(("build + write the ComfyUI-loadable tiny checkpoint (fp16)", time.perf_counter() - t0))

        with harness.ComfyHost(install, Path(td) / "host") as host:
            rows.append(("start ComfyUI until /object_info answers", host.start_seconds))
            (host.checkpoints_dir / "tiny.safetensors").symlink_to(ckpt)
            first = host.run(_graph("tiny.safetensors", "bench_a"), timeout=600).check()
            rows.append(
                ("prompt: Likeness Load Checkpoint -> KSampler 64x64 2 steps -> SaveImage (first)", first.seconds)
            )
            again = host.run(_graph("tiny.safetensors", "bench_b", seed=2), timeout=600).check()
            rows.append(("same prompt, new seed (loader output cached by ComfyUI)", again.seconds))
            t0 = time.perf_counter()
        rows.append(("stop the server", time.perf_counter() - t0))
    load = os.getloadavg()[0]
    print(f"| step ({install.label}, {os.cpu_count()} cores, load avg {load:.1f}) | seconds |")
    print("|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
