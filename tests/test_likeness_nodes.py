"""The Likeness pieces of the nodes with a small fake ComfyUI: the Likeness Score node, the monitor's evaluation
events, Apply Trained Model's likeness lines, and the pack without the identity backend. The real host runs the
Score node and training runs in test_host_likeness.py."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from trainers.identity import SAME_PERSON, backend

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "tests" / "data" / "faces"
requires_backend = pytest.mark.skipif(not backend.available(), reason=backend.status()[1])


class FakeServer:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.sent.append((event, data))


@pytest.fixture
def host(tmp_path, monkeypatch):
    """folder_paths (input/output/temp) and a PromptServer that records events."""
    dirs = {name: tmp_path / name for name in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir()
    fp = types.ModuleType("folder_paths")
    fp.get_input_directory = lambda: str(dirs["input"])
    fp.get_output_directory = lambda: str(dirs["output"])
    fp.get_temp_directory = lambda: str(dirs["temp"])
    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    progress: list[int] = []

    class ProgressBar:  # the 2024 host's signature: no node_id
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            progress.append(value)

    utils.ProgressBar = ProgressBar
    comfy.utils = utils
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", utils)
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=FakeServer())
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    monkeypatch.setitem(sys.modules, "server", server)
    return types.SimpleNamespace(**dirs, sent=server.PromptServer.instance.sent, progress=progress)


def batch(images: list[Image.Image], side: int = 512):
    arrays = [np.asarray(im.convert("RGB").resize((side, side)), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def reference_photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(3):
        astronaut().crop((90 + 12 * i, 10, 410 + 12 * i, 330)).save(folder / f"me_{i}.jpg")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Likeness Score


@requires_backend
def test_score_node_scores_a_batch_in_order_against_a_folder(pack, host):
    node = pack.NODE_CLASS_MAPPINGS["LikenessScore"]
    assert node.CATEGORY == "Likeness/eval" and node.OUTPUT_IS_LIST == (True, False, False)
    reference_photos(host.input / "me")
    images = batch([astronaut(), Image.open(FACES / "hopper.jpg"), Image.fromarray(data.chelsea())])
    before = images.clone()
    out = node().score(images, reference_folder="me")
    scores, report, preview = out["result"]
    assert len(scores) == 3 and scores[0] > SAME_PERSON > scores[1] >= 0 and scores[2] == -1.0
    assert preview.shape == images.shape and not torch.equal(preview, images)  # boxes and scores drawn
    assert torch.equal(images, before)  # the input is never changed
    lines = report.splitlines()
    assert "3 of 3 photos with a usable face" in report and "no face" in lines[-2] and "1 of 3" not in report
    assert out["ui"]["text"] == [report] and out["ui"]["likeness_scores"] == scores
    assert host.progress == [1, 2, 3]  # one progress step per picture (where Cancel can stop a long batch)


@requires_backend
def test_score_node_takes_a_dataset_and_refuses_folders_outside_input(pack, host, tmp_path):
    from likeness_pack.trainers.errors import DatasetError
    from likeness_pack.trainers.handles import DatasetHandle

    node = pack.NODE_CLASS_MAPPINGS["LikenessScore"]()
    folder = reference_photos(host.output / "likeness" / "datasets" / "abc")
    handle = DatasetHandle(folder=str(folder), prompt="a photo of sks woman", count=3)
    scores = node.score(batch([astronaut()]), reference=handle)["result"][0]
    assert scores[0] > SAME_PERSON
    outside = reference_photos(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="outside ComfyUI's input and output folders"):
        node.score(batch([astronaut()]), reference_folder=str(outside))
    with pytest.raises(DatasetError, match="connect 'reference'"):
        node.score(batch([astronaut()]))


# ---------------------------------------------------------------------------------------------------------------
# the monitor and Apply's info


def test_monitor_sends_evaluations_with_their_probe_images_and_keeps_them_for_the_status(pack, host, monkeypatch):
    from likeness_pack.nodes import bridge
    from likeness_pack.nodes.monitor import TrainingMonitor
    from likeness_pack.trainers.train.events import EvaluationInfo

    monkeypatch.setattr(bridge, "_STATE", {"run": None, "history": [], "samples": [], "evaluations": []})
    bridge.send_event("start", {"node_id": "5", "total": 10})
    mon = TrainingMonitor.__new__(TrainingMonitor)  # no progress bar needed here
    mon.node_id, mon.name = "5", "me"
    probes = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(2)]
    info = EvaluationInfo(4, 10, "evaluated", likeness=None, no_face=2, probes=2, message="no face in any probe image",
                          scores=[{"kind": "subject", "similarity": None, "reason": "no face"}] * 2, images=probes)  # fmt: skip
    mon.on_evaluation(info)
    event, payload = host.sent[-1]
    assert event == "likeness.evaluation" and payload["node_id"] == "5" and payload["no_face"] == 2
    assert payload["likeness"] is None and payload["message"] == "no face in any probe image"
    files = [host.temp / f["subfolder"] / f["filename"] for f in payload["images"]]
    assert len(files) == 2 and all(f.is_file() for f in files)
    assert bridge.status_snapshot()["evaluations"] == [payload]


def test_apply_info_shows_the_likeness_of_the_kept_step(pack, tmp_path):
    from likeness_pack.nodes.apply import describe

    history = [{"step": 250, "likeness": 0.61}, {"step": 500, "likeness": 0.74}, {"step": 750, "likeness": 0.70}]
    meta = {
        "likeness.steps": "750",
        "likeness.evaluation": json.dumps(
            {
                "judge": "face identity (dlib)",
                "history": history,
                "kept_step": 500,
                "last_step": 750,
                "best": {"step": 500, "likeness": 0.74, "bleed": 0.02},
                "bleed_limit": 0.15,
            }
        ),  # fmt: skip
    }
    text = describe("dreambooth", tmp_path / "me.safetensors", meta)
    assert "likeness: 0.740 at step 500 (the best of 3 evaluations)" in text
    assert "kept step 500 of 750" in text and "step 750): 0.700" in text and "bleed +0.020" in text
    off = describe("lora", tmp_path / "me.safetensors", {"likeness.evaluation": json.dumps({"off": "dlib missing"})})
    assert "likeness: not measured (dlib missing)" in off


# ---------------------------------------------------------------------------------------------------------------
# without the backend


def test_the_pack_imports_and_the_score_node_says_what_to_install_without_dlib(tmp_path):
    code = (
        "import sys, json, importlib.util, pathlib\n"
        "sys.modules['dlib'] = None  # 'import dlib' fails, as on a platform without a wheel\n"
        "root = pathlib.Path('.').resolve()\n"
        "spec = importlib.util.spec_from_file_location('likeness_pack', root / '__init__.py',"
        " submodule_search_locations=[str(root)])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['likeness_pack'] = m; spec.loader.exec_module(m)\n"
        "node = m.NODE_CLASS_MAPPINGS['LikenessScore']\n"
        "tip = node.INPUT_TYPES()['optional']['reference_folder'][1]['tooltip']\n"
        "from likeness_pack.trainers.errors import IdentityUnavailable\n"
        "try:\n"
        "    node().score(None, reference_folder='x'); err = ''\n"
        "except IdentityUnavailable as e:\n"
        "    err = str(e)\n"
        "print(json.dumps({'nodes': sorted(m.NODE_CLASS_MAPPINGS), 'tip': tip, 'error': err}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "LikenessScore" in result["nodes"] and "LikenessDreamBoothTrain" in result["nodes"]
    assert "NOT AVAILABLE HERE" in result["tip"] and "pip install dlib-bin face_recognition_models" in result["tip"]
    assert result["error"].startswith("face identity is not available: dlib is not installed")
    assert "pip install dlib-bin face_recognition_models" in result["error"]


def test_cli_and_face_crop_without_dlib(tmp_path, monkeypatch, capsys):
    from trainers.cli import main
    from trainers.data.crop import CropConfig, build_dataset

    monkeypatch.setitem(sys.modules, "dlib", None)
    backend.reset()
    try:
        photos = reference_photos(tmp_path / "photos")
        assert main(["score", "--reference", str(photos), str(photos)]) == 2
        err = capsys.readouterr().err
        assert "dlib is not installed" in err and "pip install dlib-bin face_recognition_models" in err
        out = build_dataset(CropConfig(duplicates="keep"), input_folder=photos, output_root=tmp_path / "out")
        assert out.count == 3 and out.report["identity"]["available"] is False
        assert "Identity check: skipped (face identity is off: dlib is not installed" in out.text
    finally:
        monkeypatch.undo()
        backend.reset()
