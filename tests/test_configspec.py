from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from trainers import configspec
from trainers.configspec import opt
from trainers.errors import ConfigError


@dataclass
class Demo:
    steps: int = opt(800, "Training steps.", min=1)
    lr: float = opt(2e-6, "Learning rate.", min=0.0, step=1e-7)
    flip: bool = opt(False, "Random horizontal flip.")
    sched: str = opt("constant", "Scheduler.", choices=("constant", "cosine"))
    prompts: list[str] = opt(["a", "b"], "Sample prompts.")
    class_dir: str | None = opt(None, "Class images folder.", advanced=True)

    def check(self) -> None:
        if self.steps > 10 and self.sched == "cosine" and self.flip:
            raise ConfigError("cosine with flip needs <= 10 steps")


def test_defaults_and_types():
    cfg = configspec.from_dict(Demo, {})
    assert cfg.steps == 800 and cfg.prompts == ["a", "b"] and cfg.class_dir is None
    cfg2 = configspec.from_dict(Demo, {"steps": "12", "flip": "yes", "prompts": "x\ny", "lr": "1e-4"})
    assert (cfg2.steps, cfg2.flip, cfg2.prompts, cfg2.lr) == (12, True, ["x", "y"], 1e-4)
    # mutable defaults are not shared between instances
    cfg.prompts.append("c")
    assert configspec.from_dict(Demo, {}).prompts == ["a", "b"]


@pytest.mark.parametrize(
    "data, words",
    [
        ({"steps": 0}, ["steps", "at least 1"]),
        ({"lr": -1}, ["lr", "at least"]),
        ({"sched": "linear"}, ["sched", "constant, cosine"]),
        ({"stpes": 3}, ["unknown option 'stpes'", "steps"]),
        ({"steps": "many"}, ["whole number"]),
        ({"steps": 20, "sched": "cosine", "flip": True}, ["cosine with flip"]),
    ],
)
def test_validation_messages(data, words):
    with pytest.raises(ConfigError) as e:
        configspec.from_dict(Demo, data, source="my.toml")
    msg = str(e.value)
    assert msg.startswith("my.toml")
    for w in words:
        assert w in msg


def test_toml_overrides_and_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('steps = 5\nsched = "cosine"\nprompts = ["p1"]\n')
    cfg = configspec.load_config(Demo, f, ["steps=7"])
    assert (cfg.steps, cfg.sched, cfg.prompts) == (7, "cosine", ["p1"])

    parser = argparse.ArgumentParser()
    configspec.add_arguments(parser, Demo)
    args = parser.parse_args(["--config", str(f), "--flip", "steps=9", "--lr", "0.5"])
    cfg = configspec.from_args(Demo, args)
    assert (cfg.steps, cfg.flip, cfg.lr, cfg.sched) == (9, True, 0.5, "cosine")


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        configspec.load_config(Demo, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        configspec.load_config(Demo, bad)


def test_hash_is_stable_and_sensitive():
    a = configspec.from_dict(Demo, {})
    b = configspec.from_dict(Demo, {"steps": 801})
    assert configspec.config_hash(a) == configspec.config_hash(configspec.from_dict(Demo, {}))
    assert configspec.config_hash(a) != configspec.config_hash(b)
    assert configspec.config_hash(a, exclude=["steps"]) == configspec.config_hash(b, exclude=["steps"])


def test_node_inputs_carry_tooltips(pack):
    from likeness_pack.nodes.inputs import comfy_inputs, config_from_inputs

    inputs = comfy_inputs(Demo)
    assert inputs["steps"][0] == "INT" and inputs["steps"][1]["min"] == 1
    assert inputs["sched"][0] == ["constant", "cosine"]
    assert inputs["flip"][0] == "BOOLEAN"
    assert inputs["prompts"][1]["multiline"] is True
    assert all(v[1]["tooltip"] for v in inputs.values())
    assert "class_dir" not in comfy_inputs(Demo, advanced=False)
    cfg = config_from_inputs(Demo, {"steps": 3, "prompts": "q\nr", "unrelated": 1}, source="node")
    assert cfg.steps == 3 and cfg.prompts == ["q", "r"]


def test_help_text_may_contain_percent():
    @dataclass
    class Pct:
        face: float = opt(0.4, "Face size as % of the crop side (40% default).")

    parser = argparse.ArgumentParser()
    configspec.add_arguments(parser, Pct)
    assert "40% default" in parser.format_help()


def test_float_widgets_keep_their_defaults(pack):
    """A frontend rounds float widgets to their step: the step must keep every default exact."""
    from likeness_pack.nodes.inputs import comfy_input, float_step
    from trainers.train.config import DreamBoothConfig

    assert float_step(0.999, 0.0) == 0.001
    assert float_step(1e-8, 0.0) == 1e-8
    assert float_step(7.5, 1.0) == 0.01
    for spec in configspec.specs(DreamBoothConfig):
        if spec.type is float and spec.node and spec.default is not None:
            typ, opts = comfy_input(spec)
            step = opts["round"]
            assert opts["step"] == step > 0
            assert abs(round(opts["default"] / step) * step - opts["default"]) <= 1e-9 * max(
                abs(opts["default"]), 1e-12
            ), spec.name
