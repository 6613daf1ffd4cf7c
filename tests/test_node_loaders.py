"""Likeness Load Checkpoint with small fake ``folder_paths`` / ``comfy.sd`` modules (the real host: test_host_loader).

The fake host loader opens what it is given with safetensors, so these tests also prove that the host only ever
receives a real SD1 ``.safetensors`` file.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import import_pack


class FakeHost:
    def __init__(self, root: Path):
        self.dirs = {k: root / k for k in ("checkpoints", "vae", "embeddings")}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.loaded: list[str] = []
        self.loaded_keys: list[list[str]] = []
        self.vaes: list[dict] = []

    def folder_paths(self) -> types.ModuleType:
        fp = types.ModuleType("folder_paths")
        fp.folder_names_and_paths = {k: ([str(d)], set()) for k, d in self.dirs.items()}
        fp.get_filename_list = lambda kind: sorted(os.listdir(self.dirs[kind]))
        fp.get_folder_paths = lambda kind: [str(self.dirs[kind])]

        def get_full_path(kind, name):
            p = self.dirs[kind] / name
            return str(p) if p.is_file() else None

        fp.get_full_path = get_full_path
        return fp

    def comfy_sd(self) -> types.ModuleType:
        host = self
        sd = types.ModuleType("comfy.sd")

        def load_checkpoint_guess_config(
            ckpt_path, output_vae=True, output_clip=True, output_clipvision=False, embedding_directory=None
        ):
            from safetensors import safe_open

            assert str(ckpt_path).endswith(".safetensors")
            with safe_open(ckpt_path, "pt") as f:  # fails on anything but a real safetensors file
                keys = list(f.keys())
            assert any(k.startswith("model.diffusion_model.") for k in keys)
            assert embedding_directory == [str(host.dirs["embeddings"])]
            host.loaded.append(str(ckpt_path))
            host.loaded_keys.append(keys)
            return ("MODEL", "CLIP", "VAE", None)

        class VAE:
            def __init__(self, sd=None, device=None, config=None, dtype=None):
                host.vaes.append(sd)

        sd.load_checkpoint_guess_config = load_checkpoint_guess_config
        sd.VAE = VAE
        return sd


def _fake_host(monkeypatch, tmp_path) -> FakeHost:
    fake = FakeHost(tmp_path / "models")
    comfy = types.ModuleType("comfy")
    comfy.sd = fake.comfy_sd()
    monkeypatch.setitem(sys.modules, "folder_paths", fake.folder_paths())
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.sd", comfy.sd)
    monkeypatch.setenv("LIKENESS_CACHE", str(tmp_path / "cache"))
    return fake


@pytest.fixture
def host(monkeypatch, tmp_path):
    """The fake host, which (unlike ComfyUI) loads the small test model: the node's own shape check is off."""
    monkeypatch.setattr(import_pack().nodes.loaders, "check_host_can_load", lambda handle: None)
    return _fake_host(monkeypatch, tmp_path)


@pytest.fixture
def strict_host(monkeypatch, tmp_path):
    """The fake host with the node's check of what ComfyUI's loader can load left on."""
    return _fake_host(monkeypatch, tmp_path)


@pytest.fixture
def loaders():
    return import_pack().nodes.loaders


def _node(loaders):
    return loaders.LikenessLoadCheckpoint()


def test_node_declaration(host, loaders, tiny_checkpoint):
    (host.dirs["checkpoints"] / "a.safetensors").symlink_to(tiny_checkpoint)
    (host.dirs["vae"] / "v.safetensors").write_bytes(b"")
    cls = loaders.LikenessLoadCheckpoint
    inputs = cls.INPUT_TYPES()
    assert inputs["required"]["ckpt_name"][0] == ["a.safetensors"]
    assert inputs["optional"]["vae_name"][0] == [loaders.VAE_OWN, "v.safetensors"]
    assert inputs["optional"]["ema"][0] == ["auto", "ema", "non_ema"]
    for section in inputs.values():
        for name, spec in section.items():
            assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert cls.CATEGORY == "Likeness/loaders" and cls.DESCRIPTION
    assert cls.RETURN_TYPES == ("MODEL", "CLIP", "VAE", "LIKENESS_MODEL")
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert loaders.NODE_DISPLAY_NAME_MAPPINGS["LikenessLoadCheckpoint"] == "Likeness Load Checkpoint"
    from trainers.model_io.reader import EMA_CHOICES

    assert tuple(loaders.EMA_CHOICES) == tuple(EMA_CHOICES)


def test_plain_safetensors_goes_to_the_host_as_is(host, loaders, tiny_checkpoint):
    from likeness_pack.trainers.handles import ModelHandle
    from trainers.fsutil import file_sha256

    dest = host.dirs["checkpoints"] / "tiny.safetensors"
    shutil.copyfile(tiny_checkpoint, dest)
    model, clip, vae, handle = _node(loaders).load("tiny.safetensors")
    assert (model, clip, vae) == ("MODEL", "CLIP", "VAE")
    assert host.loaded == [str(dest)]  # the file itself: no copy
    assert isinstance(handle, ModelHandle)
    assert handle.variant == "sd1" and handle.ema == "auto" and handle.vae_path is None
    assert handle.content_hash == file_sha256(tiny_checkpoint)
    # a description, not weights
    assert all(isinstance(getattr(handle, f), str | type(None)) for f in ("path", "variant", "content_hash"))
    assert "state_dict" not in handle.info


def test_ckpt_reaches_the_host_only_as_a_safetensors_copy(host, loaders, tiny_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(tiny_checkpoint))
    torch.save({"state_dict": sd, "global_step": 1}, host.dirs["checkpoints"] / "old.ckpt")
    *_, handle = _node(loaders).load("old.ckpt")
    (given,) = host.loaded
    assert given.endswith(".safetensors") and Path(given).is_relative_to(tmp_path / "cache")
    assert handle.path.endswith("old.ckpt")


def _evil_ckpt(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import torch

    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "evil": Payload()}, path)


def test_malicious_ckpt_never_runs_and_never_reaches_the_host(host, loaders, tmp_path):
    from likeness_pack.trainers.errors import CheckpointError  # the class the pack's nodes raise

    marker = tmp_path / "pwned"
    _evil_ckpt(host.dirs["checkpoints"] / "evil.ckpt", marker)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="never unpickled"):
        _node(loaders).load("evil.ckpt")
    assert not marker.exists()
    assert host.loaded == []


def test_refused_architecture_never_reaches_the_host(host, loaders):
    import torch
    from safetensors.torch import save_file

    from likeness_pack.trainers.errors import CheckpointError  # the class the pack's nodes raise

    save_file(
        {
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 2),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
        },
        str(host.dirs["checkpoints"] / "xl.safetensors"),
    )
    with pytest.raises(CheckpointError, match="SDXL"):
        _node(loaders).load("xl.safetensors")
    assert host.loaded == []


def test_separate_vae_is_given_as_a_state_dict(host, loaders, tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    shutil.copyfile(tiny_checkpoint, host.dirs["checkpoints"] / "tiny.safetensors")
    sd = load_file(str(tiny_checkpoint))
    vae_sd = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(vae_sd, str(host.dirs["vae"] / "my_vae.safetensors"))
    node = _node(loaders)
    *_, own = node.load("tiny.safetensors")
    _, _, vae, handle = node.load("tiny.safetensors", vae_name="my_vae.safetensors")
    (given,) = host.vaes
    assert set(given) == set(vae_sd) and not any(k.startswith("first_stage_model.") for k in given)
    assert handle.vae_path == str((host.dirs["vae"] / "my_vae.safetensors").resolve())
    assert handle.key != own.key and handle.content_hash == own.content_hash
    assert handle.info["sources"]["vae"].endswith("my_vae.safetensors")


def test_file_without_vae_gets_the_chosen_vae_baked_into_the_host_copy(host, loaders, tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from likeness_pack.trainers.errors import CheckpointError

    sd = load_file(str(tiny_checkpoint))
    vae_sd = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file({k: v for k, v in sd.items() if k not in vae_sd}, str(host.dirs["checkpoints"] / "novae.safetensors"))
    save_file(vae_sd, str(host.dirs["vae"] / "v.safetensors"))
    node = _node(loaders)
    with pytest.raises(CheckpointError, match="VAE"):
        node.load("novae.safetensors")
    assert host.loaded == []
    *_, handle = node.load("novae.safetensors", vae_name="v.safetensors")
    (given,) = host.loaded
    assert Path(given).is_relative_to(tmp_path / "cache")
    assert set(vae_sd) <= set(host.loaded_keys[0])
    assert host.vaes == []  # the host's VAE came from the copy
    assert handle.vae_path.endswith("v.safetensors")


def test_is_changed_follows_the_file(host, loaders, tiny_checkpoint):
    dest = host.dirs["checkpoints"] / "tiny.safetensors"
    shutil.copyfile(tiny_checkpoint, dest)
    cls = loaders.LikenessLoadCheckpoint
    first = cls.IS_CHANGED("tiny.safetensors")
    assert first == cls.IS_CHANGED("tiny.safetensors")
    assert first != cls.IS_CHANGED("tiny.safetensors", ema="ema")
    os.utime(dest, ns=(1, 1))
    assert first != cls.IS_CHANGED("tiny.safetensors")
    assert cls.IS_CHANGED("missing.safetensors") == ""


def test_bridge_refuses_to_give_the_host_a_pickle(host, pack):
    with pytest.raises(ValueError, match="only .safetensors"):
        pack.nodes.bridge.load_checkpoint_for_host("/x/model.ckpt")


def test_a_model_comfyui_cannot_load_is_refused_with_a_clear_message(strict_host, loaders, tiny_checkpoint):
    """The small test model (and the demo's model before it wrote a ComfyUI-loadable one) is SD1-shaped with 32
    channels: ComfyUI's loader would fail with "'NoneType' object has no attribute ...". The node says why first."""
    from likeness_pack.trainers.errors import CheckpointError

    shutil.copyfile(tiny_checkpoint, strict_host.dirs["checkpoints"] / "tiny-sd15.safetensors")
    with pytest.raises(CheckpointError) as e:
        _node(loaders).load("tiny-sd15.safetensors")
    text = str(e.value)
    assert "tiny-sd15.safetensors" in text and "model_channels 32 and context 32" in text
    assert "model_channels 320 and context 768" in text and "likeness-tiny-sd15.safetensors" in text
    assert strict_host.loaded == []  # never passed on


def test_the_comfyui_sd15_shape_passes_the_check(strict_host, loaders):
    from likeness_pack.trainers.handles import ModelHandle

    ok = ModelHandle("m.safetensors", "sd1", "0", info={"unet_shape": {"model_channels": 320, "context_dim": 768}})
    loaders.check_host_can_load(ok)
