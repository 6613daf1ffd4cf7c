"""Likeness Generate Class Images on a real ComfyUI server (see tests/host/), with the ComfyUI-loadable tiny model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.host

NODE = "LikenessGenerateClassImages"
CKPT = "likeness_tiny_classes.safetensors"


def _prompt(**inputs) -> dict:
    """LikenessLoadCheckpoint (node "1") -> LikenessGenerateClassImages (node "2"): 64 px, 2 steps."""
    values = dict(
        class_prompt="a photo of a person",
        negative_prompt="blurry",
        count=2,
        resolution=64,
        steps=2,
        cfg=5.0,
        sampler="euler_a",
        class_seed=3,
        batch_size=2,
    )
    values.update(inputs)
    return {
        "1": {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": NODE, "inputs": {"model": ["1", 3], **values}},
    }


def _report(result) -> dict:
    (report,) = result.outputs["2"]["likeness_classes"]
    return report


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".png"))


def _everything(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # a truncated file fails here
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def host(comfy_host, comfy_tiny_checkpoint):
    dest = comfy_host.checkpoints_dir / CKPT
    if not dest.exists():
        dest.symlink_to(comfy_tiny_checkpoint)
    return comfy_host


def test_node_is_registered_with_tooltips(host):
    info = host.object_info(NODE)
    assert info["category"] == "Likeness/dataset"
    assert info["display_name"] == "Likeness Generate Class Images"
    assert info["output"] == ["LIKENESS_DATASET", "IMAGE"]
    assert info["output_node"] is True
    inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert {"model", "class_prompt", "count", "resolution", "class_seed", "images"} <= set(inputs)
    for name, spec in inputs.items():
        assert len(spec) > 1 and spec[1].get("tooltip"), f"input {name} has no tooltip"


def test_generate_reuse_top_up_interrupt_and_resume(host):
    root = host.output_dir / "likeness" / "class_images"

    # 1. two images
    first = host.run(_prompt(count=2), timeout=300).check()
    report = _report(first)
    folder = Path(report["folder"])
    assert folder.parent == root and (report["generated"], report["reused"], report["count"]) == (2, 0, 2)
    assert _pngs(folder) == ["class_00000.png", "class_00001.png"]
    for name in _pngs(folder):
        assert _pixels(folder / name).shape == (64, 64, 3)
    assert [p.name for p in first.images("2")] == _pngs(folder)  # thumbnails on the page
    progress = [m for m in first.events("progress") if m.get("max") == 2]
    assert progress and progress[-1]["value"] == 2
    stamps = {n: (folder / n).stat().st_mtime_ns for n in _pngs(folder)}

    # 2. same settings (another batch size, so the host runs the node again): nothing generated, nothing rewritten
    again = host.run(_prompt(count=2, batch_size=1), timeout=300).check()
    assert (_report(again)["generated"], _report(again)["reused"], _report(again)["folder"]) == (0, 2, str(folder))
    assert {n: (folder / n).stat().st_mtime_ns for n in _pngs(folder)} == stamps
    assert json.loads((folder / "manifest.json").read_text())["generated_total"] == 2

    # 3. a higher count, cancelled mid-way: the new images made so far are complete, nothing else is left
    pid = host.submit(_prompt(count=6))
    deadline = time.monotonic() + 300
    while len(_pngs(folder)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_pngs(folder)) >= 4, "generation did not progress"
    host.interrupt()
    stopped = host.wait(pid, timeout=300)
    assert stopped.status == "interrupted", stopped
    kept = _pngs(folder)
    assert 4 <= len(kept) < 6
    assert kept == [f"class_{k:05d}.png" for k in range(len(kept))]
    assert _everything(folder) == sorted([*kept, "manifest.json"])  # no .part, no half image
    for name in kept:
        assert _pixels(folder / name).shape == (64, 64, 3)
    assert {n: (folder / n).stat().st_mtime_ns for n in stamps} == stamps  # the first two were not remade
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["count"] == len(kept)

    # 4. the next run makes only the difference
    rest = host.run(_prompt(count=6), timeout=300).check()
    assert (_report(rest)["generated"], _report(rest)["reused"], _report(rest)["count"]) == (
        6 - len(kept),
        len(kept),
        6,
    )
    assert _pngs(folder) == [f"class_{k:05d}.png" for k in range(6)]
    assert {n: (folder / n).stat().st_mtime_ns for n in stamps} == stamps

    # 5. image k is the same as in a set made in one uninterrupted run (own folder, same settings)
    one = host.run(_prompt(count=6, output_folder="classes_one_run"), timeout=300).check()
    one_folder = Path(_report(one)["folder"])
    assert one_folder == host.output_dir / "classes_one_run" and _report(one)["generated"] == 6
    for name in _pngs(folder):
        assert np.array_equal(_pixels(folder / name), _pixels(one_folder / name)), name
    assert not np.array_equal(_pixels(folder / kept[0]), _pixels(folder / kept[1]))

    # 6. an identical queue is served from the host's cache; after an image is deleted by hand it is made again
    host.run(_prompt(count=6), timeout=300).check()
    cached = host.run(_prompt(count=6), timeout=300).check()
    assert "2" in cached.events("execution_cached")[0]["nodes"]
    (folder / "class_00003.png").unlink()
    healed = host.run(_prompt(count=6), timeout=300).check()
    assert "2" not in healed.events("execution_cached")[0]["nodes"]
    assert (_report(healed)["generated"], _report(healed)["count"]) == (1, 6)
    assert _pngs(folder) == [f"class_{k:05d}.png" for k in range(6)]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"count": 0}, "count"),
        ({"class_prompt": "  "}, "'class_prompt' is empty"),
        ({"resolution": 100}, "multiple of 8"),
    ],
)
def test_bad_inputs_are_refused_before_generating(host, change, words):
    before = sorted(host.output_dir.rglob("*"))
    result = host.run(_prompt(**change), timeout=120)
    assert result.status == "rejected", result
    assert words in result.error
    assert sorted(host.output_dir.rglob("*")) == before


def test_dreambooth_trains_with_this_nodes_class_set(host):
    """Generate Class Images -> DreamBooth Train (class_images input): prior preservation runs on our folder."""
    from train_helpers import subject_images

    subject_images(host.input_dir / "classes_e2e_subject", n=2, size=64)
    options = host.defaults("LikenessTrainingOptions")
    options.update(sample_steps=2, gradient_checkpointing=False)
    train = host.defaults("LikenessDreamBoothTrain")
    train.update(
        model=["1", 3],
        output_name="classes_e2e",
        instance_prompt="a photo of sks person",
        class_prompt="ignored: the class set carries its own prompt",
        steps=1,
        resolution=64,
        learning_rate=1e-4,
        train_text_encoder=False,
        instance_folder="classes_e2e_subject",
        class_images=["2", 0],
        options=["9", 0],
    )
    graph = _prompt(count=2, class_prompt="a photo of a person, e2e")
    graph["3"] = {"class_type": "LikenessDreamBoothTrain", "inputs": train}
    graph["9"] = {"class_type": "LikenessTrainingOptions", "inputs": options}
    result = host.run(graph, timeout=600).check()
    report = _report(result)
    assert report["count"] == 2
    sidecar = host.checkpoints_dir / "likeness" / "classes_e2e.likeness.json"
    data = json.loads(sidecar.read_text())
    assert len(data["losses_prior"]) == 1  # the prior (class) loss was computed at the step
    config = json.loads(data["metadata"]["likeness.config"])
    assert config["class_prompt"] == "a photo of a person, e2e" and config["prior_preservation"] is True
    assert (host.checkpoints_dir / "likeness" / "classes_e2e.safetensors").is_file()
