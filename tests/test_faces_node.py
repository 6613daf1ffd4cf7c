"""The Likeness Face Crop Dataset node with a small fake ComfyUI (``folder_paths``, ``comfy.utils``) in
``sys.modules``: inputs, outputs, folder rules, progress, IMAGE batches. The real host runs it in test_host_faces.py."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

ASTRONAUT = data.astronaut()


class FakeHost:
    def __init__(self, root):
        self.input = root / "input"
        self.output = root / "output"
        self.models = root / "models"
        for d in (self.input, self.output, self.models):
            d.mkdir()
        self.progress: list[tuple[int, int]] = []

    def install(self, monkeypatch):
        fp = types.ModuleType("folder_paths")
        fp.get_input_directory = lambda: str(self.input)
        fp.get_output_directory = lambda: str(self.output)
        fp.models_dir = str(self.models)
        comfy = types.ModuleType("comfy")
        utils = types.ModuleType("comfy.utils")
        host = self

        class ProgressBar:  # the 2024 host's signature: no node_id
            def __init__(self, total):
                self.total = total

            def update_absolute(self, value, total=None, preview=None):
                host.progress.append((value, total))

        utils.ProgressBar = ProgressBar
        comfy.utils = utils
        monkeypatch.setitem(sys.modules, "folder_paths", fp)
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        monkeypatch.setitem(sys.modules, "comfy.utils", utils)


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = FakeHost(tmp_path)
    h.install(monkeypatch)
    return h


@pytest.fixture
def node(pack):
    return pack.NODE_CLASS_MAPPINGS["LikenessFaceCropDataset"]


@pytest.fixture
def DatasetError(pack):  # noqa: N802 - the pack's own class (the pack imports trainers as likeness_pack.trainers)
    return sys.modules[f"{pack.__name__}.trainers.errors"].DatasetError


def _inputs(**kw):
    base = {
        "instance_prompt": "photo of zwx person",
        "resolution": 256,
        "margin": 0.7,
        "no_face": "skip",
        "detector": "auto",
    }
    base.update(kw)
    return base


def _photos(folder):
    folder.mkdir(parents=True)
    Image.fromarray(ASTRONAUT).save(folder / "a.jpg", quality=92)
    Image.fromarray(ASTRONAUT[:, ::-1]).resize((600, 600)).save(folder / "b.png")
    Image.fromarray(data.coffee()).resize((300, 200)).save(folder / "coffee.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")


def test_node_declares_its_interface(node):
    from likeness_pack.nodes.faces import LikenessFaceCropDataset

    assert node is LikenessFaceCropDataset
    assert node.CATEGORY == "Likeness/dataset"
    assert node.RETURN_TYPES == ("LIKENESS_DATASET", "IMAGE", "STRING")
    spec = node.INPUT_TYPES()
    assert list(spec["required"]) == ["folder", "instance_prompt", "resolution", "margin", "no_face", "detector"]
    assert spec["optional"]["images"][0] == "IMAGE"
    assert spec["required"]["resolution"][1]["step"] == 8
    for section in ("required", "optional"):
        for name, (_, opts) in spec[section].items():
            assert opts.get("tooltip"), name


def test_node_builds_a_dataset_from_an_input_folder(node, host):
    _photos(host.input / "me")
    out = node().build(folder="me", unique_id="7", **_inputs())
    handle, preview, report = out["result"]
    assert out["ui"] == {"text": [report]}
    assert handle.count == 2 and handle.prompt == "photo of zwx person" and handle.kind == "instance"
    assert handle.folder.startswith(str(host.output / "likeness" / "datasets"))
    assert handle.report == report
    assert isinstance(preview, torch.Tensor) and preview.shape == (2, 256, 256, 3) and preview.dtype == torch.float32
    assert float(preview.min()) >= 0.0 and float(preview.max()) <= 1.0 and float(preview.std()) > 0.05
    # every skipped file is in the report, with its reason
    assert "coffee.png: no face found" in report and "broken.jpg: " in report
    # one progress step per photo, ending at the total
    assert host.progress[-1] == (4, 4) and [v for v, _ in host.progress] == [1, 2, 3, 4]


def test_node_accepts_an_image_batch_and_leaves_it_untouched(node, host):
    batch = torch.from_numpy(np.stack([ASTRONAUT, ASTRONAUT[:, ::-1].copy()]).astype(np.float32) / 255.0)
    before = batch.clone()
    handle, preview, report = node().build(folder="", images=batch, **_inputs(resolution=128))["result"]
    assert handle.count == 2 and preview.shape == (2, 128, 128, 3)
    assert torch.equal(batch, before)
    assert "batch[0]" in report


def test_node_folder_rules(node, host, tmp_path, DatasetError, monkeypatch):  # noqa: N803
    with pytest.raises(DatasetError, match="outside ComfyUI's input and output folders"):
        node().build(folder="../elsewhere", **_inputs())
    with pytest.raises(DatasetError, match="does not exist"):
        node().build(folder="nobody", **_inputs())
    outside = tmp_path / "abs_photos"
    _photos(outside)
    # an absolute path elsewhere is refused (a server with --listen serves others), and so is a link leading there
    with pytest.raises(DatasetError, match="LIKENESS_ALLOW_ANY_FOLDER=1"):
        node().build(folder=str(outside), **_inputs())
    (host.input / "sneaky").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside ComfyUI's input and output folders"):
        node().build(folder="sneaky", **_inputs())
    inside = host.input / "abs_inside"
    _photos(inside)
    assert node().build(folder=str(inside), **_inputs())["result"][0].count == 2  # absolute inside input/ is fine
    monkeypatch.setenv("LIKENESS_ALLOW_ANY_FOLDER", "1")  # the documented opt-in
    handle, _, _ = node().build(folder=str(outside), **_inputs())["result"]
    assert handle.count == 2


def test_node_without_usable_photos_fails_with_the_report(node, host, DatasetError):  # noqa: N803
    d = host.input / "cups"
    d.mkdir()
    Image.fromarray(data.coffee()).resize((300, 200)).save(d / "coffee.png")
    with pytest.raises(DatasetError, match=r"no image could be used(.|\n)*coffee.png: no face found"):
        node().build(folder="cups", **_inputs())


def test_node_finds_a_yunet_model_in_the_models_folder(node, host):
    _photos(host.input / "me")
    (host.models / "facedetection").mkdir()
    (host.models / "facedetection" / "face_detection_yunet_2023mar.onnx").write_bytes(b"not an onnx file")
    _, _, report = node().build(folder="me", **_inputs(detector="auto"))["result"]
    # It was found and tried; this file does not load, so Haar ran and the report says which detector that was.
    assert "detector haar (frontal + profile); YuNet model face_detection_yunet_2023mar.onnx did not load" in report
    with pytest.raises(Exception, match="cannot be loaded"):
        node().build(folder="me", **_inputs(detector="yunet"))


def test_is_changed_follows_the_folder_contents(node, host):
    _photos(host.input / "me")
    first = node.IS_CHANGED(folder="me")
    assert node.IS_CHANGED(folder="me") == first
    Image.fromarray(ASTRONAUT).save(host.input / "me" / "new.png")
    assert node.IS_CHANGED(folder="me") != first
