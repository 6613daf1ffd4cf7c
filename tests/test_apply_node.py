"""Likeness Apply Trained Model with small fake ``folder_paths`` / ``comfy.sd`` modules (the real host:
test_example_workflows): what is listed, what reaches the host's loaders, the errors that say what to connect."""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import import_pack

CONFIG = {"instance_prompt": "a photo of sks woman face", "steps": 7, "learning_rate": 1e-4, "resolution": 512}
META = {"likeness.kind": "lora", "likeness.steps": "7", "likeness.config": json.dumps(CONFIG), "ss_network_dim": "4"}


class FakeHost:
    def __init__(self, root: Path):
        self.dirs = {k: root / k for k in ("checkpoints", "loras", "embeddings")}
        for d in self.dirs.values():
            (d / "likeness").mkdir(parents=True, exist_ok=True)
        self.loaded: list[str] = []
        self.loras: list[tuple] = []

    def install(self, monkeypatch) -> None:
        host = self
        fp = types.ModuleType("folder_paths")
        fp.folder_names_and_paths = {k: ([str(d)], set()) for k, d in self.dirs.items()}
        fp.get_folder_paths = lambda kind: [str(self.dirs[kind])]
        fp.get_filename_list = lambda kind: sorted(
            str(p.relative_to(self.dirs[kind])) for p in self.dirs[kind].rglob("*") if p.is_file()
        )

        def get_full_path(kind, name):
            p = self.dirs[kind] / name
            return str(p) if p.is_file() else None

        fp.get_full_path = get_full_path
        sd = types.ModuleType("comfy.sd")

        def load_checkpoint_guess_config(path, output_vae=True, output_clip=True, embedding_directory=None):
            host.loaded.append(str(path))
            return ("DB_MODEL", "DB_CLIP", "DB_VAE", None)

        def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
            host.loras.append((model, clip, sorted(lora), strength_model, strength_clip))
            for key in lora:
                if key.startswith("bogus"):
                    logging.warning("lora key not loaded: %s", key)
            return (f"{model}+lora", f"{clip}+lora")

        sd.load_checkpoint_guess_config = load_checkpoint_guess_config
        sd.load_lora_for_models = load_lora_for_models
        comfy = types.ModuleType("comfy")
        comfy.sd = sd
        monkeypatch.setitem(sys.modules, "folder_paths", fp)
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        monkeypatch.setitem(sys.modules, "comfy.sd", sd)


@pytest.fixture
def host(monkeypatch, tmp_path):
    fake = FakeHost(tmp_path / "models")
    fake.install(monkeypatch)
    return fake


@pytest.fixture
def apply():
    return import_pack().nodes.apply


def _lora(path: Path, extra: dict | None = None) -> Path:
    tensors = {"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4)}
    tensors.update(extra or {})
    save_file(tensors, str(path), metadata=META)
    return path


def _run(apply, **kw):
    kw.setdefault("source", apply.FROM_INPUT)
    kw.setdefault("strength_model", 1.0)
    kw.setdefault("strength_clip", 1.0)
    return apply.LikenessApplyTrainedModel().apply(**kw)


def test_declaration_and_choices(host, apply):
    _lora(host.dirs["loras"] / "likeness" / "me.safetensors")
    _lora(host.dirs["loras"] / "other.safetensors")  # not ours: not listed
    (host.dirs["loras"] / "likeness" / "notes.txt").write_text("x")
    (host.dirs["checkpoints"] / "likeness" / "db.safetensors").write_bytes(b"")
    cls = apply.LikenessApplyTrainedModel
    spec = cls.INPUT_TYPES()
    assert spec["required"]["source"][0] == [
        apply.FROM_INPUT,
        "checkpoints/likeness/db.safetensors",
        "loras/likeness/me.safetensors",
    ]
    for section in ("required", "optional"):
        for name, s in spec[section].items():
            assert s[1].get("tooltip"), name
    assert cls.CATEGORY == "Likeness/loaders" and cls.DESCRIPTION
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == 4


def test_dreambooth_result_loads_through_the_host_loader(host, apply):
    from likeness_pack.trainers.handles import TrainedResult

    path = host.dirs["checkpoints"] / "likeness" / "db.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"likeness.steps": "3"})
    trained = TrainedResult(kind="dreambooth", path=str(path), metadata={"likeness.config": json.dumps(CONFIG)})
    out = _run(apply, trained=trained, model="BASE", clip="BASE_CLIP")  # model/clip are ignored for a checkpoint
    assert out["result"][:3] == ("DB_MODEL", "DB_CLIP", "DB_VAE") and host.loaded == [str(path)]
    info = out["result"][3]
    assert out["ui"]["text"] == [info]
    assert info.startswith("DreamBooth checkpoint: db.safetensors") and "steps: 3" in info
    assert "instance prompt: a photo of sks woman face" in info


def test_lora_picked_from_disk_is_patched_by_the_host_with_its_metadata_shown(host, apply, caplog):
    _lora(host.dirs["loras"] / "likeness" / "me.safetensors", {"bogus_key": torch.zeros(1)})
    out = _run(apply, source="loras/likeness/me.safetensors", strength_model=0.5, strength_clip=0.25,
               model="M", clip="C", vae="V")  # fmt: skip
    assert out["result"][:3] == ("M+lora", "C+lora", "V")
    (call,) = host.loras
    assert call[:2] == ("M", "C") and call[3:] == (0.5, 0.25) and "lora_unet_x.lora_up.weight" in call[2]
    info = out["result"][3]
    assert info.startswith("LoRA: me.safetensors") and "steps: 7" in info and "rank 4" in info
    assert "strength model 0.5, clip 0.25" in info and "1 LoRA keys did not match" in info
    assert not host.loaded


def test_errors_say_what_to_connect(host, apply):
    from likeness_pack.trainers.errors import ConfigError
    from likeness_pack.trainers.handles import TrainedResult

    lora = _lora(host.dirs["loras"] / "likeness" / "me.safetensors")
    with pytest.raises(ConfigError, match="nothing to apply: connect the 'trained' output"):
        _run(apply)
    with pytest.raises(ConfigError, match=r"is a LoRA: .*Connect model and clip"):
        _run(apply, source="loras/likeness/me.safetensors")
    with pytest.raises(ConfigError, match="Connect clip"):
        _run(apply, trained=TrainedResult(kind="lora", path=str(lora)), model="M")
    # no VAE: an error only when the VAE output is used in the queued prompt
    used = {"9": {"class_type": "VAEDecode", "inputs": {"vae": ["5", 2]}}}
    with pytest.raises(ConfigError, match="vae: a LoRA has no VAE"):
        _run(apply, trained=TrainedResult(kind="lora", path=str(lora)), model="M", clip="C", prompt=used, unique_id="5")
    unused = {"9": {"class_type": "KSampler", "inputs": {"model": ["5", 0]}}}
    out = _run(apply, trained=TrainedResult(kind="lora", path=str(lora)), model="M", clip="C", prompt=unused,
               unique_id="5")  # fmt: skip
    assert out["result"][2] is None
    with pytest.raises(ConfigError, match="no longer exists"):
        _run(apply, trained=TrainedResult(kind="lora", path=str(lora.with_name("gone.safetensors"))), model="M")
    with pytest.raises(ConfigError, match="was it renamed or deleted"):
        _run(apply, source="loras/likeness/gone.safetensors", model="M", clip="C")


def test_is_changed_follows_the_picked_file(host, apply):
    path = _lora(host.dirs["loras"] / "likeness" / "me.safetensors")
    cls = apply.LikenessApplyTrainedModel
    assert cls.IS_CHANGED(source=apply.FROM_INPUT) == ""
    before = cls.IS_CHANGED(source="loras/likeness/me.safetensors")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cls.IS_CHANGED(source="loras/likeness/me.safetensors") != before
