"""``python -m trainers convert``: inspect and convert from the command line (a real subprocess, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainers", "convert", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _main(capsys, *args) -> tuple[int, str, str]:
    """The same command in this process (the subprocess test covers the entry point once)."""
    from trainers.cli import main

    code = main(["convert", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_subprocess(tiny_checkpoint):
    res = _convert(tiny_checkpoint, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["variant"] == "sd1" and info["dtype"] == "fp16" and info["ema_used"] is False
    assert info["counts"] == {"unet": 304, "vae": 124, "text_encoder": 36}


def test_inspect_text(tiny_checkpoint, capsys):
    code, out, _ = _main(capsys, tiny_checkpoint)
    assert code == 0
    assert "variant:   sd1" in out and "fp16" in out and "unet 304" in out


def test_convert_to_diffusers_and_back(tiny_checkpoint, tiny_components, tmp_path, capsys):
    tok = tmp_path / "tok"
    tiny_components.tokenizer.save_pretrained(tok)
    folder = tmp_path / "diffusers"
    code, _, err = _main(capsys, tiny_checkpoint, "--to-diffusers", folder, "--tokenizer", tok)
    assert code == 0, err
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer").is_dir()
    back = tmp_path / "back.safetensors"
    code, out, err = _main(capsys, folder, "--to-single", back, "--dtype", "fp16")
    assert code == 0, err
    assert f"wrote {back}" in out
    a, b = load_file(tiny_checkpoint), load_file(back)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = _main(capsys, folder, "--to-single", back)
    assert code == 2 and "already exists" in err


def test_refused_file_exits_2_with_message(tmp_path, capsys):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a model")
    code, _, err = _main(capsys, bad)
    assert code == 2
    assert "notes.ckpt" in err and "not a PyTorch checkpoint" in err


def test_importing_model_io_loads_no_heavy_module():
    """Nodes may import trainers.model_io freely: torch/diffusers/transformers load only when a function runs."""
    code = (
        "import sys, trainers.model_io, trainers.model_io.cli, trainers.tiny; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
