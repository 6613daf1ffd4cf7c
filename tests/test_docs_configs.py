"""The example config files in docs/configs are valid for the commands the README names."""

from __future__ import annotations

import pytest

from conftest import ROOT
from trainers import configspec
from trainers.classgen import ClassImagesConfig
from trainers.lora.config import LoRAConfig
from trainers.train import DreamBoothConfig


@pytest.mark.parametrize(
    "name, cls",
    [
        ("dreambooth_face.toml", DreamBoothConfig),
        ("lora_face.toml", LoRAConfig),
        ("class_images.toml", ClassImagesConfig),
    ],
)
def test_example_config_is_valid(name, cls):
    path = ROOT / "docs" / "configs" / name
    cfg = configspec.load_config(cls, path)
    data = configspec.read_config_file(path)
    for key, value in data.items():  # every value in the file reached the config unchanged
        assert getattr(cfg, key) == value, key
    assert f"docs/configs/{name}" in (ROOT / "README.md").read_text()
