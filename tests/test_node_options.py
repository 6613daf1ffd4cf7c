"""One option schema drives the nodes: every node option of every config is an input of some node, the Training
Options node never overrides a method's own defaults, and training seeds get no randomize-after-queue widget."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT

SEED_NAMES = {"seed", "noise_seed"}  # the page adds "control after generate: randomize" to INT inputs of these names


def _inputs(node) -> dict:
    spec = node.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def _option_inputs(node, cls) -> set[str]:
    """The options of ``cls`` the node takes, by option name (input names may differ: ``train_seed`` is ``seed``)."""
    from likeness_pack.trainers import configspec

    by_input = {s.input_name: s.name for s in configspec.specs(cls)}
    return {by_input[name] for name in _inputs(node) if name in by_input}


@pytest.fixture
def nodes(pack, monkeypatch):
    from likeness_pack.nodes import bridge

    monkeypatch.setattr(bridge, "filenames", lambda kind: [])  # no host: empty model lists
    return pack.NODE_CLASS_MAPPINGS


def _configs(pack):
    from likeness_pack.trainers.classgen import ClassImagesConfig
    from likeness_pack.trainers.data.crop import CropConfig
    from likeness_pack.trainers.lora.config import LoRAConfig
    from likeness_pack.trainers.train.config import DreamBoothConfig, TrainConfig

    return {
        "LikenessDreamBoothTrain": DreamBoothConfig,
        "LikenessLoRATrain": LoRAConfig,
        "LikenessFaceCropDataset": CropConfig,
        "LikenessGenerateClassImages": ClassImagesConfig,
        "LikenessTrainingOptions": TrainConfig,
    }


def test_every_node_option_of_every_config_reaches_a_node(pack, nodes):
    from likeness_pack.trainers import configspec

    configs = _configs(pack)
    options_node = nodes["LikenessTrainingOptions"]
    shared_cls = configs.pop("LikenessTrainingOptions")  # its main options live on the training nodes
    for node_id, cls in configs.items():
        reachable = _option_inputs(nodes[node_id], cls)
        if node_id in ("LikenessDreamBoothTrain", "LikenessLoRATrain"):  # its 'options' input takes the shared ones
            assert _inputs(nodes[node_id])["options"][0] == options_node.RETURN_TYPES[0]
            reachable |= _option_inputs(options_node, shared_cls)
        wanted = {s.name for s in configspec.specs(cls) if s.node}
        assert wanted - reachable == set(), f"{node_id}: node options that reach no node"
    for node_id in ("LikenessDreamBoothTrain", "LikenessLoRATrain"):
        own = _option_inputs(nodes[node_id], configs[node_id])
        shared = _option_inputs(options_node, shared_cls)
        assert {"snr_gamma", "random_flip"} <= own | shared, node_id


def test_the_test_above_sees_a_missing_option(pack, nodes, monkeypatch):
    """Remove one declared option from the Options node: the reachability check must notice."""
    inputs = nodes["LikenessTrainingOptions"].INPUT_TYPES()
    del inputs["optional"]["snr_gamma"]
    monkeypatch.setattr(nodes["LikenessTrainingOptions"], "INPUT_TYPES", classmethod(lambda cls: inputs))
    with pytest.raises(AssertionError, match="reach no node"):
        test_every_node_option_of_every_config_reaches_a_node(pack, nodes)


def test_no_node_has_a_seed_input_the_page_would_randomize(nodes):
    for node_id, node in nodes.items():
        for name, spec in _inputs(node).items():
            assert not (name in SEED_NAMES and spec[0] == "INT"), f"{node_id}.{name}"
            assert not (isinstance(spec[1], dict) and spec[1].get("control_after_generate")), f"{node_id}.{name}"


def test_untouched_training_options_send_nothing(pack, nodes):
    """A Training Options node left at its defaults must not override a method's own defaults (LoRA's 5e-5)."""
    node = nodes["LikenessTrainingOptions"]()
    defaults = {name: spec[1].get("default", spec[0][0] if isinstance(spec[0], list) else None)
                for name, spec in _inputs(nodes["LikenessTrainingOptions"]).items()}  # fmt: skip
    (sent,) = node.build(**defaults)
    assert sent == {}
    (sent,) = node.build(**{**defaults, "text_encoder_lr": 2e-5, "optimizer": "adamw"})
    assert sent == {"text_encoder_lr": 2e-5, "optimizer": "adamw"}


def test_lora_node_keeps_its_text_encoder_lr_with_untouched_options(pack, nodes, monkeypatch, tmp_path):
    from likeness_pack.nodes import bridge, training
    from likeness_pack.trainers.handles import ModelHandle

    (tmp_path / "photos").mkdir()
    monkeypatch.setattr(bridge, "resolve_input_folder", lambda folder: tmp_path / "photos")
    monkeypatch.setattr(bridge, "torch_device", lambda: type("D", (), {"type": "cpu"})())
    monkeypatch.setattr(bridge, "sd1_tokenizer_path", lambda: str(tmp_path))
    monkeypatch.setattr(bridge, "model_dir", lambda kind: tmp_path / kind / "likeness")
    lora, db = nodes["LikenessLoRATrain"](), nodes["LikenessDreamBoothTrain"]()
    defaults = {name: spec[1].get("default", spec[0][0] if isinstance(spec[0], list) else None)
                for name, spec in _inputs(nodes["LikenessTrainingOptions"]).items()}  # fmt: skip
    (options,) = nodes["LikenessTrainingOptions"]().build(**defaults)
    model = ModelHandle(path=str(tmp_path / "m.safetensors"), variant="sd1", content_hash="0")
    inputs = {"instance_folder": "photos", "options": options}
    assert lora.build_config(model, "x", inputs).text_encoder_lr == 5e-5
    assert db.build_config(model, "x", inputs).text_encoder_lr == 0.0  # DreamBooth: the same as learning_rate
    assert training.LEGACY_INPUTS == {"seed": "train_seed"}


def test_validators_take_exactly_the_option_inputs(nodes):
    """The host passes a validator only the inputs its signature names (both the 2024 and the newer hosts)."""
    import inspect

    node = nodes["LikenessGenerateClassImages"]
    args = inspect.getfullargspec(node.VALIDATE_INPUTS).args
    assert set(args) - {"cls"} == {k for k, v in node.INPUT_TYPES()["required"].items() if k != "model"}
    good = {k: v[1].get("default", v[0][0] if isinstance(v[0], list) else None)
            for k, v in node.INPUT_TYPES()["required"].items() if k != "model"}  # fmt: skip
    assert node.VALIDATE_INPUTS(**good) is True
    assert "class_seed" in args and "seed" not in args


def _layouts_v0() -> dict:
    text = (ROOT / "web" / "js" / "likeness_migrate.js").read_text()
    block = re.search(r"const LAYOUTS_V0 = (\{.*?\});\n// END LAYOUTS_V0", text, re.S).group(1)
    return json.loads(block)


def test_the_v0_layouts_match_workflows_saved_by_likeness_0_1(nodes):
    """The migration reads pre-names workflows with LAYOUTS_V0; check the table against real saved files."""
    layouts = _layouts_v0()
    new_since_v0 = {"LikenessScore"}  # no workflow of 0.1 holds it: it is saved with its widget names
    assert set(layouts) == set(nodes) - new_since_v0
    seen = set()
    for path in sorted((ROOT / "tests" / "data" / "workflows_v0").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] in layouts:
                names, values = layouts[node["type"]], node["widgets_values"]
                assert len(values) in (len(names), len(names) + 1), (path.name, node["type"])
                seen.add(node["type"])
                if "control_after_generate" in names:
                    i = names.index("control_after_generate")
                    assert values[i] in ("fixed", "randomize", "increment", "decrement"), (path.name, values)
                    assert isinstance(values[i - 1], int)
    assert {"LikenessDreamBoothTrain", "LikenessLoRATrain", "LikenessGenerateClassImages"} <= seen
