"""The issue-15 options on the nodes: new inputs are optional (saved API prompts keep validating), the prior from
the base model needs no class images, a validation folder is resolved like the other folders."""

from __future__ import annotations

import pytest

NEW_SHARED = {
    "masked_loss", "mask_floor", "ema", "ema_decay", "ema_start_step", "ema_on_cpu", "buckets", "bucket_step",
    "max_upscale", "validation_images", "validation_every",
}  # fmt: skip


@pytest.fixture
def setup(pack, monkeypatch, tmp_path):
    from likeness_pack.nodes import bridge

    for name in ("photos", "classes", "held"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(bridge, "filenames", lambda kind: [])
    monkeypatch.setattr(bridge, "resolve_input_folder", lambda folder: tmp_path / folder)
    monkeypatch.setattr(bridge, "torch_device", lambda: type("D", (), {"type": "cpu"})())
    monkeypatch.setattr(bridge, "sd1_tokenizer_path", lambda: str(tmp_path))
    monkeypatch.setattr(bridge, "model_dir", lambda kind: tmp_path / kind / "likeness")
    return pack.NODE_CLASS_MAPPINGS, tmp_path


def test_new_inputs_are_optional_or_on_the_options_node(setup):
    nodes, _ = setup
    for node_id in ("LikenessDreamBoothTrain", "LikenessLoRATrain"):
        spec = nodes[node_id].INPUT_TYPES()
        assert "prior" in spec["optional"] and "prior" not in spec["required"]
        assert spec["optional"]["prior"][0] == ["class_images", "base_model"]
        assert "validation_folder" in spec["optional"]
    options = nodes["LikenessTrainingOptions"].INPUT_TYPES()["optional"]
    assert set(options) >= NEW_SHARED
    crop = nodes["LikenessFaceCropDataset"].INPUT_TYPES()
    assert {"shape", "masks"} <= set(crop["optional"])
    classes = nodes["LikenessGenerateClassImages"].INPUT_TYPES()
    assert {"width", "height"} <= set(classes.get("optional", {}))


def test_the_prior_from_the_base_model_needs_no_class_images(setup):
    from likeness_pack.trainers.handles import ModelHandle

    nodes, tmp_path = setup
    model = ModelHandle(path=str(tmp_path / "m.safetensors"), variant="sd1", content_hash="0")
    for node_id in ("LikenessDreamBoothTrain", "LikenessLoRATrain"):
        node = nodes[node_id]()
        cfg = node.build_config(model, "x", {"instance_folder": "photos", "prior": "base_model"})
        assert cfg.prior_preservation and cfg.prior == "base_model" and cfg.class_data is None
        # connected class images are not read in that mode
        cfg = node.build_config(
            model, "x", {"instance_folder": "photos", "class_folder": "classes", "prior": "base_model"}
        )
        assert cfg.prior_preservation and cfg.class_data is None
        # today's mode: prior preservation only with class images
        cfg = node.build_config(model, "x", {"instance_folder": "photos"})
        assert not cfg.prior_preservation and cfg.prior == "class_images"
        cfg = node.build_config(model, "x", {"instance_folder": "photos", "validation_folder": "held"})
        assert cfg.validation_folder == str(tmp_path / "held")


def test_each_new_option_is_in_the_readme_table_with_its_source(pack):
    import re

    from conftest import ROOT
    from likeness_pack.trainers import configspec
    from likeness_pack.trainers.classgen import ClassImagesConfig
    from likeness_pack.trainers.data.crop import CropConfig
    from likeness_pack.trainers.train.config import TrainConfig

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Training methods: options and where they come from", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-z_]+)`", cells[0]):
                rows[name] = cells
    wanted = {
        TrainConfig: NEW_SHARED | {"prior", "validation_folder"},
        CropConfig: {"shape", "masks"},
        ClassImagesConfig: {"width", "height"},
    }
    for cls, names in wanted.items():
        declared = configspec.spec_map(cls)
        for name in names:
            assert name in declared, name
            assert name in rows, f"{name} is not in the README's methods table"
            assert len(rows[name][2]) > 20, f"{name}: no source given"
