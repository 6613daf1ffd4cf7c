"""A zoo of broken inputs (fast, no host): the crop, the checkpoint reader, the LoRA reader, the state loader and the
config loader each answer with a typed error (or a report line) that names the file or option — never a traceback."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.errors import CheckpointError, ConfigError, LikenessError


def _safetensors(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


BAD_SAFETENSORS = {
    "tiny": lambda p: p.write_bytes(b"\x01\x02\x03"),
    "huge header length": lambda p: _safetensors(p, {}, length=1 << 40),
    "header not json": lambda p: _safetensors(p, b"{not json"),
    "header a list": lambda p: _safetensors(p, [1, 2]),
    "entry without offsets": lambda p: _safetensors(p, {"w": {"dtype": "F32", "shape": [1]}}),
    "offsets not numbers": lambda p: _safetensors(p, {"w": {"dtype": "F32", "shape": [1], "data_offsets": ["a", 4]}}),
    "offsets reversed": lambda p: _safetensors(
        p, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"x" * 8
    ),
    "truncated data": lambda p: _safetensors(
        p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"x" * 4
    ),
    "entry a string": lambda p: _safetensors(p, {"w": "oops"}),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_checkpoint_reader_names_the_file_of_a_malformed_safetensors(tmp_path, case):
    from trainers.model_io import inspect_checkpoint

    path = tmp_path / "model.safetensors"
    BAD_SAFETENSORS[case](path)
    with pytest.raises(CheckpointError) as e:
        inspect_checkpoint(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_lora_reader_names_the_file_of_a_malformed_safetensors(tmp_path, case):
    from trainers.lora.kohya import read_kohya

    path = tmp_path / "lora.safetensors"
    BAD_SAFETENSORS[case](path)
    with pytest.raises(CheckpointError) as e:
        read_kohya(path)
    assert str(path) in str(e.value)


def test_lora_reader_refuses_a_checkpoint_and_a_pickle(tmp_path):
    import torch
    from safetensors.torch import save_file

    from trainers.lora.kohya import read_kohya

    save_file({"model.diffusion_model.x.weight": torch.zeros(2)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(CheckpointError, match="not kohya LoRA format"):
        read_kohya(tmp_path / "ckpt.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="lora.safetensors"):
        read_kohya(tmp_path / "lora.safetensors")


def _state(tmp_path: Path) -> Path:
    import torch

    from trainers.train.state import write_state

    info = {"kind": "dreambooth", "weights_hash": "w", "dataset_hash": "d"}
    extra = {"optimizer": {}, "lr_scheduler": {}, "rng_cpu": torch.get_rng_state()}
    return write_state(tmp_path / "states", 3, {"w": torch.zeros(2)}, extra, info)


STATE_DAMAGE = {
    "state.json not json": (lambda s: (s / "state.json").write_text("{nope"), "state.json"),
    "state.json a list": (lambda s: (s / "state.json").write_text("[]"), "state.json"),
    "negative step": (lambda s: _edit(s, step=-5), "step -5"),
    "step a string": (lambda s: _edit(s, step="3"), "step '3'"),
    "another version": (lambda s: _edit(s, version=7), "format version 7"),
    "no version": (lambda s: _edit(s, version=None), "format version None"),
    "truncated optimizer": (lambda s: (s / "optimizer.pt").write_bytes((s / "optimizer.pt").read_bytes()[:50]), "optimizer.pt"),
    "optimizer not a state": (lambda s: __import__("torch").save([1, 2], s / "optimizer.pt"), "optimizer.pt"),
    "missing tensors": (lambda s: (s / "trainable.safetensors").unlink(), "trainable.safetensors"),
    "garbage tensors": (lambda s: (s / "trainable.safetensors").write_bytes(b"garbage!" * 3), "trainable.safetensors"),
}  # fmt: skip


def _edit(state: Path, **changes) -> None:
    info = json.loads((state / "state.json").read_text())
    info.update(changes)
    (state / "state.json").write_text(json.dumps(info))


@pytest.mark.parametrize("case", sorted(STATE_DAMAGE))
def test_state_loader_names_the_state_and_the_fix(tmp_path, case):
    from trainers.train.state import StateError, read_state

    state = _state(tmp_path)
    damage, words = STATE_DAMAGE[case]
    damage(state)
    with pytest.raises(StateError) as e:
        read_state(state)
    message = str(e.value)
    assert str(state) in message and words in message and "start this training afresh" in message
    assert e.value.path == state


@pytest.mark.parametrize(
    "text, words",
    [
        ("learning_rate = nan\n", "'learning_rate' is nan"),
        ("learning_rate = inf\n", "'learning_rate' is inf"),
        ("prior_loss_weight = -inf\n", "finite number"),
        ('snr_gamma = "nan"\n', "finite number"),
        ("steps = 1.5\n", "'steps' must be a whole number"),
        ("stpes = 10\n", "Did you mean 'steps'"),
        ("steps = [\n", "cannot be parsed"),
    ],
)
def test_config_loader_refuses_non_finite_and_broken_values(tmp_path, text, words):
    from trainers.configspec import load_config
    from trainers.train.config import DreamBoothConfig

    path = tmp_path / "c.toml"
    path.write_text('instance_data = "x"\noutput = "o.safetensors"\nprior_preservation = false\n' + text)
    with pytest.raises(ConfigError) as e:
        load_config(DreamBoothConfig, path)
    assert words in str(e.value) and str(path) in str(e.value)


def test_cli_overrides_refuse_nan_and_inf():
    from trainers.configspec import load_config
    from trainers.train.config import DreamBoothConfig

    base = ["instance_data=x", "output=o.safetensors", "prior_preservation=false"]
    for bad in ("learning_rate=nan", "max_grad_norm=inf", "noise_offset=-inf"):
        with pytest.raises(ConfigError, match="finite number"):
            load_config(DreamBoothConfig, None, [*base, bad])


def test_crop_reports_each_broken_photo_on_one_line(tmp_path):
    from skimage import data

    from trainers.data.crop import CropConfig, build_dataset

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(photos / "good.png")
    Image.fromarray(data.astronaut()).save(photos / "sub" / "deep.png")
    raw = (photos / "good.png").read_bytes()
    (photos / "half.png").write_bytes(raw[: len(raw) // 3])
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "page.jpg").write_text("<html>not a photo</html>")
    (photos / "iphone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    Image.fromarray(np.asarray(data.astronaut())).save(photos / "modern.avif")
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")  # points at itself
    (photos / "sub" / "up").symlink_to(photos)  # a folder link back up: not followed
    outcome = build_dataset(
        CropConfig(resolution=128, recursive=True, duplicates="keep"),
        input_folder=photos,
        output_folder=tmp_path / "set",
    )
    by_name = {r["source"]: r for r in outcome.report["images"]}
    assert by_name["good.png"]["status"] == "kept" and by_name["sub/deep.png"]["status"] == "kept"
    assert by_name["modern.avif"]["status"] == "kept"  # this Pillow reads AVIF
    for name, words in {
        "half.png": "truncated",
        "empty.jpg": "empty file",
        "page.jpg": "not an image",
        "iphone.heic": "pillow-heif",
        "loop.jpg": "cannot be read",
    }.items():
        rep = by_name[name]
        assert rep["status"] != "kept" and words in rep["reason"], (name, rep)
        assert sum(name in line for line in outcome.text.splitlines()) == 1, name  # one line each in the report
    assert not any(s.startswith("sub/up/") for s in by_name)


def test_every_zoo_error_is_a_likeness_error():
    """The typed errors above are what front ends show as is (node error, CLI 'error: ...')."""
    from trainers.train.state import StateError

    assert issubclass(CheckpointError, LikenessError) and issubclass(ConfigError, LikenessError)
    assert issubclass(StateError, ConfigError)
