"""The README's main job (`./scripts/demo.sh` → `python -m trainers demo`) runs the whole pipeline and every output it
prints exists. Fewer steps than the default keep it quick; the code path is the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_demo_pipeline_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1", LIKENESS_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "trainers", "demo", "--output", str(out), "--steps", "3", "--lora-steps", "3"]
    proc = subprocess.run(cmd + ["--class-count", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = json.loads((out / "outputs.json").read_text())
    expected = {"checkpoint", "roundtrip", "photos", "dataset", "class_images", "dreambooth", "lora"}
    assert expected <= set(outputs)
    for name, path in outputs.items():
        assert os.path.exists(path), name
        assert path in proc.stdout  # printed for the user
    assert "round trip bit-exact" in proc.stdout
    # trained results are real files of the right kind, samples are 3:4 portraits
    from PIL import Image
    from safetensors import safe_open

    with safe_open(outputs["dreambooth"], "pt") as f:
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())  # noqa: SIM118
    with safe_open(outputs["lora"], "pt") as f:
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in f.keys())  # noqa: SIM118
    for name in ("dreambooth samples", "lora samples"):
        w, h = Image.open(outputs[name]).size
        assert h * 2 * 3 == w * 4  # two 3:4 portraits side by side
