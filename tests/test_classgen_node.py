"""Generate Class Images node without a host: inputs and tooltips, queue-time validation, the CLI."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def node(pack):
    from likeness_pack.nodes.classes import LikenessGenerateClassImages

    return LikenessGenerateClassImages


GOOD = dict(
    class_prompt="a photo of woman face",
    negative_prompt="",
    count=10,
    resolution=64,
    steps=2,
    cfg=7.0,
    sampler="ddim",
    class_seed=0,
    batch_size=2,
)


def test_inputs_outputs_and_tooltips(pack, node):
    assert pack.NODE_CLASS_MAPPINGS["LikenessGenerateClassImages"] is node
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["LikenessGenerateClassImages"] == "Likeness Generate Class Images"
    spec = node.INPUT_TYPES()
    req, opt = spec["required"], spec["optional"]
    assert list(req) == ["model", *GOOD]
    assert req["model"][0] == "LIKENESS_MODEL" and opt["images"][0] == "IMAGE"
    assert "output_folder" in opt and "seed" not in req  # 'seed' would get a randomize-after-queue widget
    assert req["count"][1]["default"] == 200 and req["count"][1]["min"] == 1
    assert req["sampler"][0] == ["ddim", "euler_a"]
    assert req["class_prompt"][1]["default"].strip()
    for name, value in {**req, **opt}.items():
        assert value[1].get("tooltip"), name
    assert node.RETURN_TYPES == ("LIKENESS_DATASET", "IMAGE") and len(node.OUTPUT_TOOLTIPS) == 2
    assert node.CATEGORY == "Likeness/dataset" and node.DESCRIPTION


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"count": 0}, "'count' is 0"),
        ({"class_prompt": "  "}, "'class_prompt' is empty"),
        ({"resolution": 100}, "multiple of 8"),
        ({"sampler": "heun"}, "choose one of"),
    ],
)
def test_validate_inputs_names_the_option(node, change, words):
    assert node.VALIDATE_INPUTS(**GOOD) is True
    answer = node.VALIDATE_INPUTS(**{**GOOD, **change})
    assert isinstance(answer, str) and words in answer and "Generate Class Images" in answer


def test_validate_inputs_leaves_linked_inputs_for_later(node):
    assert node.VALIDATE_INPUTS(**{**GOOD, "class_prompt": None, "count": None}) is True


def test_generate_refuses_bad_settings_before_touching_the_model(pack, node):
    from likeness_pack.trainers.errors import ConfigError as PackConfigError

    with pytest.raises(PackConfigError, match="'count' is 0"):
        node().generate(model=object(), **{**GOOD, "count": 0})


def test_preview_is_the_first_images_at_the_first_ones_size(pack, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from likeness_pack.nodes.classes import PREVIEW_COUNT
    from likeness_pack.nodes.images import files_to_image

    rng = np.random.default_rng(0)
    files = []
    for k, size in enumerate([(40, 32), (24, 24), (40, 32), (64, 48), (40, 32)]):
        files.append(tmp_path / f"class_{k:05d}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(files[-1])
    preview = files_to_image(files, PREVIEW_COUNT)
    assert preview.dtype == torch.float32 and tuple(preview.shape) == (PREVIEW_COUNT, 32, 40, 3)
    for p, got in zip(files[:PREVIEW_COUNT], preview, strict=True):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (40, 32):
                im = im.resize((40, 32), Image.Resampling.LANCZOS)
            assert np.array_equal(got.numpy(), np.asarray(im, dtype=np.float32) / 255.0), p.name
    empty = files_to_image([], PREVIEW_COUNT)
    assert tuple(empty.shape) == (1, 64, 64, 3) and empty.dtype == torch.float32 and not empty.any()


def test_cli_generates_and_reuses(tmp_path, tiny_checkpoint, capsys):
    import torch

    from trainers.cli import main
    from trainers.tiny import tiny_tokenizer

    tok = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(tok)
    config = tmp_path / "classes.toml"
    config.write_text(
        f'base_model = "{tiny_checkpoint}"\ntokenizer = "{tok}"\nclass_prompt = "a photo of a dog"\n'
        "count = 2\nresolution = 32\nsteps = 2\nbatch_size = 2\n"
    )
    out = tmp_path / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["classes", "--config", str(config), "--output-root", str(out)]) == 0
        first = capsys.readouterr().out
        assert "[2/2]" in first and "2 generated, 0 reused" in first
        (folder,) = (out / "likeness" / "class_images").iterdir()
        assert sorted(p.name for p in folder.glob("*.png")) == ["class_00000.png", "class_00001.png"]
        assert json.loads((folder / "manifest.json").read_text())["settings"]["class_prompt"] == "a photo of a dog"
        # a flag overrides the file: one more image, the first two reused
        assert main(["classes", "--config", str(config), "--output-root", str(out), "--count", "3"]) == 0
        assert "1 generated, 2 reused" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    # bad option from the command line: a clear error, exit status 2
    assert main(["classes", "--config", str(config), "--output-root", str(out), "resolution=100"]) == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_is_changed_without_linked_inputs_follows_the_set_of_the_nodes_last_run(pack, node, tmp_path, monkeypatch):
    """ComfyUI 2025+ calls IS_CHANGED with every linked input missing (None) and the hidden unique id: the model of
    this node's last run with the same settings decides which set is looked at, so an image deleted by hand makes
    the node run again and an untouched set keeps it cached."""
    from likeness_pack.nodes import bridge, classes

    monkeypatch.setattr(bridge, "output_dir", lambda: tmp_path)
    monkeypatch.setattr(classes, "_last_model_key", {})
    settings = {**GOOD, "count": 3}

    def ask(uid="7", **change):
        return node.IS_CHANGED(model=None, images=None, unique_id=uid, **{**settings, **change})

    assert ask() == ""  # not run in this process yet: the host runs it anyway
    key = "ab" * 32
    classes._remember("7", settings, key)
    folder = classes._classgen().plan_class_set(classes._config(settings), key, tmp_path).folder
    folder.mkdir(parents=True)
    for k in range(3):
        (folder / f"class_{k:05d}.png").write_bytes(b"png")
    full = ask()
    assert full.endswith(":3:0:") and ask() == full  # nothing missing: the same answer, the host's cache serves it
    (folder / "class_00001.png").unlink()
    assert ask().endswith(":3:1:1")  # image 1 missing: a new answer, the node runs and makes it again
    assert ask(uid="8") == "" and ask(count=4) == ""  # another node, other settings: not remembered
