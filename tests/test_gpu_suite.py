"""The one-command GPU suite (``benchmarks/gpu_suite.py``) runs on the CPU in its smoke mode (tiny model, one step),
ours and a diffusers script side by side through the same probe, and writes its table: it cannot rot where no GPU
is at hand. (The GPU table itself is recorded in docs/benchmarks.md when a GPU was lent.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_suite_smoke_mode_runs_both_trainers_and_writes_the_table(tmp_path):
    scripts = os.environ.get("DIFFUSERS_EXAMPLES") or str(ROOT / "tests" / "data" / "diffusers_standin")
    out, runs = tmp_path / "table.md", tmp_path / "runs.json"
    cmd = [
        sys.executable, "-m", "benchmarks.gpu_suite", "--smoke", "--pairings", "unet,lora", "--diffusers", scripts,
        "--out", str(out), "--json", str(runs), "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(runs.read_text())
    assert sorted((r["pairing"], r["who"]) for r in results) == [
        ("LoRA r4, attention", "ours"), ("LoRA r4, attention", "theirs"),
        ("full DreamBooth, UNet", "ours"), ("full DreamBooth, UNet", "theirs"),
    ]  # fmt: skip
    assert all(r["step_s"] > 0 and r["rss_peak_mb"] > r["rss_loaded_mb"] > 0 and r["steps"] == 1 for r in results)
    rows = [
        line.split("|")
        for line in out.read_text().splitlines()
        if line.startswith("| full") or line.startswith("| LoRA")
    ]
    assert len(rows) == 2
    for row in rows:
        ours, theirs, ratio = (float(row[i]) for i in (3, 4, 5))
        assert ours > 0 and theirs > 0 and abs(ratio - ours / theirs) < 0.02


def test_the_probe_counts_each_synchronising_cuda_operation_and_prints_none():
    """The GPU suite's "syncs/step" columns: torch's sync debug mode warns at every synchronising CUDA
    operation; the probe counts those warnings (every one, not once per line) and lets other warnings through.
    Here torch's warning is raised by hand (no GPU), with the text torch uses."""
    import warnings

    from benchmarks.probe import count_syncs

    class FakeCuda:
        mode = None

        def set_sync_debug_mode(self, mode):
            self.mode = mode

    class FakeTorch:
        cuda = FakeCuda()

    fake = FakeTorch()
    shown = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, *a, **k: shown.append(str(msg))
        seen = count_syncs(fake)
        assert fake.cuda.mode == "warn"
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert len(seen) == 3 and shown == ["something else"]
