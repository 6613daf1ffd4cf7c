"""Model I/O on the tiny model: single file <-> diffusers components, bit-exact round trips."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from trainers.model_io import load_components, save_single_file


def _same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_round_trip_bit_exact(tiny_components, tmp_path, dtype):
    first = save_single_file(tiny_components, tmp_path / f"a_{dtype}.safetensors", dtype=dtype)
    loaded = load_components(first, tokenizer=tiny_components.tokenizer)
    second = save_single_file(loaded, tmp_path / f"b_{dtype}.safetensors", dtype=dtype)
    _same_tensors(load_file(first), load_file(second))
    assert loaded.info["dtype"] == dtype


def test_fixture_checkpoints_load(tiny_checkpoint, tiny_components):
    comps = load_components(tiny_checkpoint, tokenizer=tiny_components.tokenizer)
    assert comps.info["variant"] == "sd1"
    ref = tiny_components.unet.state_dict()
    for k, v in comps.unet.state_dict().items():
        assert torch.equal(v, ref[k].half().float()), k
