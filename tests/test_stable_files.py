"""Identical weights give identical files: safetensors keeps header metadata in a hash map whose order changes from
one write to the next, so every writer of the pack puts it in sorted order (``fsutil.stable_header``). Content keys
(class-image sets, training results) hash the base model's bytes, so an unstable header would make every rewrite
of the same model look like a new one."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

META = {f"likeness.note_{i:02d}": f'value {i} "quoted" é\n' for i in range(12)}


def _header(path) -> dict:
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])


def test_saving_the_same_components_twice_gives_byte_identical_files(tiny_components, tmp_path):
    from trainers.model_io import save_single_file
    from trainers.tiny import write_civitai_file

    a = save_single_file(tiny_components, tmp_path / "a.safetensors", dtype="fp16", metadata=META)
    b = save_single_file(tiny_components, tmp_path / "b.safetensors", dtype="fp16", metadata=META)
    assert a.read_bytes() == b.read_bytes()
    meta = _header(a)["__metadata__"]
    assert list(meta) == sorted(meta) and {k: meta[k] for k in META} == META
    c = write_civitai_file(tiny_components, tmp_path / "c.safetensors")
    d = write_civitai_file(tiny_components, tmp_path / "d.safetensors")
    assert c.read_bytes() == d.read_bytes()


WRITE = """
import sys
from trainers.tiny import tiny_components, write_civitai_file
write_civitai_file(tiny_components(seed=0), sys.argv[1], dtype="fp32")
"""


def test_the_same_model_written_by_another_process_is_byte_identical(tmp_path):
    """Across processes too: diffusers records its configs' default-valued options from a set, whose order
    follows Python's per-process string hashing (the other process gets another PYTHONHASHSEED)."""
    from conftest import ROOT
    from trainers.tiny import tiny_components, write_civitai_file

    here = write_civitai_file(tiny_components(seed=0), tmp_path / "here.safetensors", dtype="fp32")
    there = tmp_path / "there.safetensors"
    seed = str(1 + hash("likeness") % 1000)  # never this process's own hashing
    env = dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", WRITE, str(there)], cwd=ROOT, env=env, check=True, timeout=300)
    assert here.read_bytes() == there.read_bytes()


def test_a_lora_written_twice_is_byte_identical(tmp_path):
    import torch

    from trainers.lora.adapters import LoraWeights
    from trainers.lora.kohya import save_kohya

    torch.manual_seed(0)
    layer = {"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": LoraWeights(
        down=torch.randn(4, 32), up=torch.randn(32, 4), alpha=2.0)}  # fmt: skip
    a = save_kohya(tmp_path / "a.safetensors", layer, metadata={f"ss_{k}": "x" for k in "abcdefghij"})
    b = save_kohya(tmp_path / "b.safetensors", layer, metadata={f"ss_{k}": "x" for k in "abcdefghij"})
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("value", ["plain", 'with "quotes" and \\ slash', "line\nbreak\ttab", "ünïcode ✓ 𝄞"])
def test_stable_header_keeps_the_header_valid(tmp_path, value):
    import torch
    from safetensors import safe_open

    from trainers.fsutil import save_safetensors

    meta = {f"k{i}": f"{value} {i}" for i in range(9)}
    path = tmp_path / "x.safetensors"
    save_safetensors({"w": torch.arange(6.0).reshape(2, 3)}, path, metadata=meta)
    assert list(_header(path)["__metadata__"]) == sorted(meta)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("w"), torch.arange(6.0).reshape(2, 3))
