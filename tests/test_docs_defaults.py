"""One source of truth for defaults: the option schema (``trainers/configspec.py`` and the configs).

The README's table of defaults is generated from it (``scripts/readme_options.py``); no two nodes disagree on a
default they share; the example workflows' widgets and notes, the node descriptions and the demo's ``--help`` quote
the schema's values; GPU memory figures are stated once, in the README, with their source.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from conftest import ROOT

EXAMPLES = ROOT / "example_workflows"
README = ROOT / "README.md"

# Inputs of the same name that mean different things on different nodes (everything else must agree).
DIFFERENT_MEANINGS = {
    "steps": "denoising steps per class image vs optimizer steps of a training run",
    "batch_size": "class images rendered at once vs subject images per training step",
    "learning_rate": "each method has its own (README: table of defaults)",
    "output_name": "each node names its own result",
    "instance_prompt": "on the training nodes an empty value means 'the dataset's prompt'",
    "ema": "which weights of a checkpoint the loader reads vs whether training keeps an EMA of its weights",
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def nodes(pack, monkeypatch):
    from likeness_pack.nodes import bridge

    monkeypatch.setattr(bridge, "filenames", lambda kind: [])  # no host: empty model lists
    return pack.NODE_CLASS_MAPPINGS


def _defaults(node) -> dict:
    spec = node.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            if len(entry) > 1 and isinstance(entry[1], dict) and "default" in entry[1]:
                out[name] = entry[1]["default"]
    return out


def test_the_readme_table_of_defaults_is_generated_from_the_schema():
    from trainers.lora.config import LoRAConfig
    from trainers.train.config import DreamBoothConfig

    readme = README.read_text()
    options = _script("readme_options")
    assert options.render() in readme, "README.md's table of defaults is stale: run scripts/readme_options.py"
    table = readme[readme.index(options.BEGIN) : readme.index(options.END)]
    (steps,) = [line for line in table.splitlines() if line.startswith("| steps |")]
    assert steps.split(" | ")[1:3] == [f"{DreamBoothConfig().steps} at batch 1", f"{LoRAConfig().steps} at batch 1"]
    (lr,) = [line for line in table.splitlines() if line.startswith("| learning rate |")]
    assert lr.split(" | ")[1].startswith(options.number(DreamBoothConfig().learning_rate))


def test_no_two_nodes_disagree_on_a_shared_default(nodes):
    from likeness_pack.trainers.train.config import DEFAULT_CLASS_PROMPT, DEFAULT_INSTANCE_PROMPT

    seen: dict[str, dict[str, object]] = {}
    for node_id, node in nodes.items():
        for name, default in _defaults(node).items():
            seen.setdefault(name, {})[node_id] = default
    shared = {name: by_node for name, by_node in seen.items() if len(by_node) > 1}
    assert "class_prompt" in shared and len(shared["class_prompt"]) >= 3
    for name, by_node in shared.items():
        if name in DIFFERENT_MEANINGS:
            continue
        assert len({json.dumps(v) for v in by_node.values()}) == 1, f"nodes disagree on {name!r}: {by_node}"
    assert set(shared["class_prompt"].values()) == {DEFAULT_CLASS_PROMPT}
    assert seen["instance_prompt"]["LikenessFaceCropDataset"] == DEFAULT_INSTANCE_PROMPT


def test_the_demo_and_its_help_use_the_schema_defaults():
    from trainers.classgen import ClassImagesConfig
    from trainers.cli import build_parser
    from trainers.lora.config import LoRAConfig
    from trainers.train.config import DEFAULT_INSTANCE_PROMPT, DreamBoothConfig

    parser = build_parser("demo")
    text = " ".join(parser.format_help().split())
    assert f"DreamBooth steps (default: 30 tiny / {DreamBoothConfig().steps} real)" in text
    assert f"LoRA steps (default: 30 tiny / {LoRAConfig().steps} real)" in text
    assert f"class images (default: 8 tiny / {ClassImagesConfig().count} real)" in text
    args = parser.parse_args([])
    assert f"a photo of {args.token} {args.subject_class} face" == DEFAULT_INSTANCE_PROMPT


def _widgets(node: dict) -> dict:
    return dict(zip(node["likeness_widgets"], node["widgets_values"], strict=False))


SCHEMA_WIDGETS = {  # node type -> (config, the options whose example values must be the schema's defaults)
    "LikenessDreamBoothTrain": ("dreambooth", ("class_prompt", "steps", "learning_rate", "batch_size", "resolution",
                                "train_text_encoder", "prior_loss_weight", "save_dtype")),
    "LikenessLoRATrain": ("lora", ("class_prompt", "steps", "learning_rate", "batch_size", "resolution",
                          "train_text_encoder", "prior_loss_weight", "save_dtype", "lora_rank", "lora_alpha",
                          "lora_layers", "lora_dropout")),
    "LikenessGenerateClassImages": ("classes", ("class_prompt", "count", "resolution", "steps")),
    "LikenessFaceCropDataset": ("crop", ("instance_prompt", "resolution")),
}  # fmt: skip


@pytest.mark.parametrize("name", ("dreambooth_face", "lora_face", "sample_trained"))
def test_the_example_workflows_quote_the_schema(name):
    """Widgets at the schema's defaults, notes as the builder writes them now (from the schema)."""
    builder = _script("build_example_workflows")
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    expected_notes = [item["text"] for column in builder.GRAPHS[name]()["columns"] for item in column
                      if item["type"] == "Note"]  # fmt: skip
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note"]
    assert sorted(notes) == sorted(expected_notes), "rebuild the examples: scripts/build_example_workflows.py"
    for node in workflow["nodes"]:
        if node["type"] not in SCHEMA_WIDGETS:
            continue
        config, options = SCHEMA_WIDGETS[node["type"]]
        values = _widgets(node)
        for option in options:
            assert values[option] == builder.D[config][option], (name, node["type"], option)
    for note in notes:
        assert "Cancel" not in note  # the node's button is Stop
        assert "after a page refresh" not in note  # a finished run refreshes the lists itself


def _quoted(text: str, pattern: str) -> list[str]:
    """Numbers quoted as defaults (a range like 800-1200 is advice, not a default)."""
    return [m.group(1) for m in re.finditer(pattern, text) if not re.search(r"[-–]\s*$", text[: m.start(1)])]


def test_node_descriptions_quote_the_schema(nodes):
    from likeness_pack.trainers.classgen import ClassImagesConfig

    texts = {node_id: node.DESCRIPTION for node_id, node in nodes.items()}
    assert f"by default {ClassImagesConfig().count} of '{ClassImagesConfig().class_prompt}'" in " ".join(
        texts["LikenessGenerateClassImages"].split()
    )
    for node_id, text in texts.items():
        assert "Cancel" not in text, node_id
        assert not _quoted(text, r"\b(\d+) steps\b") and not _quoted(text, r"learning rate (\S+)"), node_id


GB = re.compile(r"\b\d+(?:\.\d+)?(?:\s?[-–]\s?\d+)?\s?GB\b")
MEMORY_WORDS = re.compile(r"VRAM|GPU|memory|8-bit|works on|fits? |needs|saves", re.IGNORECASE)


def _memory_claims(text: str) -> list[str]:
    """Sentences that give a GPU memory figure (file sizes like 'fp16 = 2 GB' are not memory claims)."""
    sentences = re.split(r"(?<=[.;])\s+|\n", text)
    return [s for s in sentences if GB.search(s) and MEMORY_WORDS.search(s)]


def test_gpu_memory_figures_are_stated_once_with_their_source(nodes):
    from likeness_pack.trainers import configspec
    from likeness_pack.trainers.lora.config import LoRAConfig
    from likeness_pack.trainers.train.config import DreamBoothConfig

    readme = README.read_text()
    start = readme.index("## GPU memory")
    end = readme.index("\n## ", start + 1)
    section, rest = readme[start:end], readme[:start] + readme[end:]
    assert _memory_claims(section), "the README's GPU memory section gives the figures"
    assert "diffusers" in section and "examples/dreambooth" in section  # ... with their source
    others = {"README outside its GPU memory section": rest}
    for path in EXAMPLES.glob("*.json"):
        others[path.name] = "\n".join(
            n["widgets_values"][0] for n in json.loads(path.read_text())["nodes"] if n["type"] == "Note"
        )
    for node_id, node in nodes.items():
        spec = node.INPUT_TYPES()
        tips = [e[1].get("tooltip", "") for section in ("required", "optional")
                for e in (spec.get(section) or {}).values() if len(e) > 1 and isinstance(e[1], dict)]  # fmt: skip
        others[node_id] = "\n".join([node.DESCRIPTION, *tips])
    for cls in (DreamBoothConfig, LoRAConfig):
        others[cls.__name__] = "\n".join(s.help for s in configspec.specs(cls))
    others["trainers/train/config.py"] = (ROOT / "trainers" / "train" / "config.py").read_text()
    for path in (ROOT / "docs" / "configs").glob("*.toml"):
        others[f"docs/configs/{path.name}"] = path.read_text()
    for where, text in others.items():
        assert not _memory_claims(text), (where, _memory_claims(text))
