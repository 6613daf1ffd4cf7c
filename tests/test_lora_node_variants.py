"""Likeness LoRA Train's new inputs without a host: the LoRA types as optional inputs, and continue_lora (a combo of
models/loras .safetensors files) that becomes the config's continue_from and changes IS_CHANGED with the file."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def lora_node(pack, monkeypatch, tmp_path):
    from likeness_pack.nodes import bridge

    loras = tmp_path / "loras"
    (loras / "likeness").mkdir(parents=True)
    (loras / "likeness" / "mine.safetensors").write_bytes(b"one")
    (loras / "old.ckpt").write_bytes(b"pickle")
    listed = ["likeness/mine.safetensors", "old.ckpt"]
    monkeypatch.setattr(bridge, "filenames", lambda kind: list(listed) if kind == "loras" else [])

    def full_path(kind, name):
        if kind != "loras" or name not in listed:
            raise FileNotFoundError(f"{kind} file '{name}' was not found")
        return str(loras / name)

    monkeypatch.setattr(bridge, "full_path", full_path)
    (tmp_path / "photos").mkdir()
    monkeypatch.setattr(bridge, "resolve_input_folder", lambda folder: tmp_path / "photos")
    monkeypatch.setattr(bridge, "torch_device", lambda: type("D", (), {"type": "cpu"})())
    monkeypatch.setattr(bridge, "sd1_tokenizer_path", lambda: str(tmp_path))
    monkeypatch.setattr(bridge, "model_dir", lambda kind: tmp_path / kind / "likeness")
    return pack.NODE_CLASS_MAPPINGS["LikenessLoRATrain"], loras


def test_types_and_continue_are_optional_inputs_with_tooltips(lora_node):
    node, _ = lora_node
    types = node.INPUT_TYPES()
    optional = types["optional"]
    assert optional["lora_type"][0] == ["lora", "loha", "lokr"] and optional["lora_type"][1]["default"] == "lora"
    assert optional["dora"][0] == "BOOLEAN" and "2024-03" in optional["dora"][1]["tooltip"]
    assert optional["lokr_factor"][1]["default"] == -1
    assert optional["continue_lora"][0] == ["(none)", "likeness/mine.safetensors"]  # no pickle files offered
    assert "2024-03" in optional["continue_lora"][1]["tooltip"]
    assert not {"lora_type", "dora", "lokr_factor", "continue_lora"} & set(types["required"])  # old prompts validate


def test_continue_lora_sets_continue_from_and_is_changed_follows_the_file(lora_node):
    from likeness_pack.trainers.errors import ConfigError
    from likeness_pack.trainers.handles import ModelHandle

    node, loras = lora_node
    model = ModelHandle(path="/m.safetensors", variant="sd1", content_hash="0")
    inputs = {"instance_folder": "photos", "continue_lora": "likeness/mine.safetensors", "lora_type": "loha"}
    cfg = node().build_config(model, "x", inputs)
    assert cfg.continue_from == str(loras / "likeness" / "mine.safetensors") and cfg.lora_type == "loha"
    assert node().build_config(model, "x", {**inputs, "continue_lora": "(none)"}).continue_from is None
    with pytest.raises(ConfigError, match="continue_lora"):
        node().build_config(model, "x", {**inputs, "continue_lora": "likeness/gone.safetensors"})
    before = node.IS_CHANGED(instance_folder="", continue_lora="likeness/mine.safetensors")
    assert node.IS_CHANGED(instance_folder="", continue_lora="likeness/mine.safetensors") == before
    target = loras / "likeness" / "mine.safetensors"
    target.write_bytes(b"other bytes")
    os.utime(target, ns=(1, 1))
    assert node.IS_CHANGED(instance_folder="", continue_lora="likeness/mine.safetensors") != before
    assert node.IS_CHANGED(instance_folder="", continue_lora="likeness/gone.safetensors").endswith("missing")
