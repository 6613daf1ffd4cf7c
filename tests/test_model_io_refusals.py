"""Files Likeness must refuse, each with an error naming the file and what was found; pickles never execute."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainers.errors import CheckpointError
from trainers.model_io import detect_architecture, load_components, make_model_handle, read_checkpoint
from trainers.model_io.convert import TEXT_PREFIX, UNET_PREFIX


@pytest.fixture(scope="module")
def ldm(tiny_checkpoint) -> dict:
    return load_file(tiny_checkpoint)


def _write(sd: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _refused(path: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert path.name in msg, msg
    for w in words:
        assert w in msg, msg
    with pytest.raises(CheckpointError):  # the handle (what the loader node builds) refuses it too
        make_model_handle(path)
    return msg


def test_tiny_is_sd1(ldm):
    assert detect_architecture(ldm, "tiny") == "sd1"


def test_sdxl_shaped_refused(ldm, tmp_path):
    sd = {k: v for k, v in ldm.items() if not k.startswith(TEXT_PREFIX)}
    for k, v in ldm.items():
        if k.startswith(TEXT_PREFIX):
            sd["conditioner.embedders.0.transformer." + k[len(TEXT_PREFIX) :]] = v
    sd[UNET_PREFIX + "label_emb.0.0.weight"] = torch.zeros(128, 2816)
    _refused(_write(sd, tmp_path / "xl.safetensors"), "SDXL")
    # context 2048 alone (UNet-only SDXL export) is recognised too
    ctx = {
        k: (torch.zeros(v.shape[0], 2048) if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) else v)
        for k, v in ldm.items()
    }
    _refused(_write(ctx, tmp_path / "xl_ctx.safetensors"), "SDXL", "2048")


def test_sd2_shaped_refused(ldm, tmp_path):
    sd = {}
    for k, v in ldm.items():
        if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            v = torch.zeros(v.shape[0], 1024)
        if k.endswith(("proj_in.weight", "proj_out.weight")) and k.startswith(UNET_PREFIX):
            v = v.reshape(v.shape[0], v.shape[1])  # SD2 uses linear projections
        if k.startswith(TEXT_PREFIX):
            k = "cond_stage_model.model." + k.split("text_model.", 1)[1]
        sd[k] = v
    msg = _refused(_write(sd, tmp_path / "sd21.safetensors"), "2.x")
    assert "1024" in msg


def test_inpainting_refused(ldm, tmp_path):
    sd = dict(ldm)
    w = sd[UNET_PREFIX + "input_blocks.0.0.weight"]
    sd[UNET_PREFIX + "input_blocks.0.0.weight"] = torch.zeros(w.shape[0], 9, *w.shape[2:], dtype=w.dtype)
    _refused(_write(sd, tmp_path / "inpaint.safetensors"), "inpainting", "9 channels")


@pytest.mark.parametrize(
    "key, what",
    [("joint_blocks.0.x_block.attn.qkv.weight", "Stable Diffusion 3"), ("double_blocks.0.img_mod.lin.weight", "Flux")],
)
def test_sd3_and_flux_refused(tmp_path, key, what):
    path = _write({"model.diffusion_model." + key: torch.zeros(4, 4)}, tmp_path / "big.safetensors")
    _refused(path, what)


def test_lora_and_vae_files_are_not_checkpoints(tmp_path):
    lora = _write(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, tmp_path / "l.safetensors"
    )
    _refused(lora, "LoRA")
    vae = _write({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "v.safetensors")
    _refused(vae, "UNet")


def test_truncated_safetensors(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "truncated")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(data[:5])
    _refused(tiny)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    _refused(garbage)


@pytest.mark.parametrize("text", ["This is not a model, it is a text file someone renamed.\n" * 20, "hello\n" * 20, ""])
def test_text_file_renamed_ckpt(tmp_path, text):
    path = tmp_path / "readme.ckpt"
    path.write_text(text)
    _refused(path, "not a PyTorch checkpoint")


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["zip", "raw"])
def test_malicious_pickle_never_runs(tmp_path, container):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    obj = {"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "payload": _Payload(marker)}
    if container == "zip":
        torch.save(obj, path)  # torch's own zip container with a poisoned data.pkl
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))  # a legacy bare pickle
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert path.name in str(err.value)
    with pytest.raises(CheckpointError):
        load_components(path, tokenizer=False)
    assert not marker.exists(), "the pickle payload ran"


def test_unsupported_suffix_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    other = tmp_path / "model.gguf"
    other.write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        read_checkpoint(other)


def test_diffusers_sdxl_folder_refused(tiny_components, tmp_path):
    import json

    folder = tmp_path / "xl"
    tiny_components.unet.save_pretrained(folder / "unet")
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = 2048
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="SDXL"):
        load_components(folder, tokenizer=False)


def test_lightning_checkpoint_with_callbacks_loads_without_running_code(ldm, tmp_path, monkeypatch):
    """Original SD .ckpt files pickle Lightning's ModelCheckpoint (and numpy scalars) beside the weights."""
    import sys
    import types

    import numpy as np

    marker = tmp_path / "RAN"

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = np.float64(0.25)
            self.monitor = "val/loss"

        def __setstate__(self, state):  # would run on a normal unpickle
            open(marker, "w").close()
            self.__dict__.update(state)

    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    path = tmp_path / "sd-v1-x.ckpt"
    torch.save(
        {"state_dict": dict(ldm), "global_step": 840000, "callbacks": {"ModelCheckpoint": ModelCheckpoint()}}, path
    )
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    ckpt = read_checkpoint(path)
    assert len(ckpt.state_dict) == len(ldm) - 1  # all but position_ids
    assert not marker.exists()
