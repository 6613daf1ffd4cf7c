"""Likeness on a real ComfyUI server (see tests/host/): the Likeness Score node on a folder reference and an IMAGE
batch built by core nodes (one score per picture, in order), and DreamBooth / LoRA runs that emit likeness
evaluations (the tiny model draws no face: the events say so, and the runs finish)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from skimage import data
from train_helpers import training_graph, training_inputs

from conftest import ROOT
from trainers.identity import SAME_PERSON, backend

pytestmark = [pytest.mark.host, pytest.mark.skipif(not backend.available(), reason=backend.status()[1])]

BASE = "likeness_lk_base.safetensors"
RES = 64
FACES = "lk_faces"


@pytest.fixture(scope="module")
def setup(comfy_host, comfy_tiny_checkpoint):
    host = training_inputs(comfy_host, comfy_tiny_checkpoint, BASE, "lk", RES)
    faces = host.input_dir / FACES
    faces.mkdir(exist_ok=True)
    astronaut = Image.fromarray(data.astronaut())
    for i in range(3):  # the subject: Eileen Collins (NASA, public domain), three crops
        astronaut.crop((90 + 12 * i, 10, 410 + 12 * i, 330)).save(faces / f"me_{i}.png")
    astronaut.save(host.input_dir / "lk_astronaut.png")
    Image.open(ROOT / "tests" / "data" / "faces" / "hopper.jpg").save(host.input_dir / "lk_hopper.png")
    Image.fromarray(data.chelsea()).save(host.input_dir / "lk_cat.png")
    return host


def test_score_node_scores_an_image_batch_against_a_folder_in_order(setup):
    host = setup
    info = host.object_info("LikenessScore")
    assert info["category"] == "Likeness/eval" and info["output"] == ["FLOAT", "STRING", "IMAGE"]
    assert info["output_is_list"] == [True, False, False]
    load = lambda name: {"class_type": "LoadImage", "inputs": {"image": name}}  # noqa: E731
    prompt = {
        "1": load("lk_astronaut.png"),
        "2": load("lk_hopper.png"),
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": load("lk_cat.png"),
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},
        "6": {"class_type": "LikenessScore", "inputs": {"images": ["5", 0], "reference_folder": FACES}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
    }
    result = host.run(prompt, timeout=300).check()
    ui = result.outputs["6"]
    scores = ui["likeness_scores"]
    assert len(scores) == 3 and scores[0] > SAME_PERSON > scores[1] >= 0 and scores[2] == -1.0, scores
    (report,) = ui["text"]
    rows = [ln for ln in report.splitlines() if re.match(r"\s*\d+\s+image \d", ln)]
    assert [r.split()[1:3] for r in rows] == [["image", "1"], ["image", "2"], ["image", "3"]]
    assert "no face" in rows[2] and "same person" in rows[0] and "probably someone else" in rows[1]
    assert len(result.images("7")) == 3  # the preview is a valid IMAGE batch for core nodes


@pytest.mark.parametrize("node", ["LikenessDreamBoothTrain", "LikenessLoRATrain"])
def test_training_runs_emit_likeness_evaluations_and_say_no_face(setup, node):
    host = setup
    widgets = dict(resolution=RES, learning_rate=1e-4, train_text_encoder=False, instance_folder=FACES, steps=4)
    if node == "LikenessLoRATrain":
        widgets.update(learning_rate=1e-3, lora_rank=4, lora_alpha=2.0)
    options = dict(eval_every=2, eval_steps=2)
    graph = training_graph(host, node, BASE, "lk", options=options, output_name=f"lk_{node[8:12].lower()}", **widgets)
    result = host.run(graph, timeout=900).check()
    evaluations = [d for d in result.events("likeness.evaluation") if str(d.get("node_id")) == "2"]
    assert [(e["state"], e["step"]) for e in evaluations] == [("baseline", 0), ("evaluated", 2), ("evaluated", 4)]
    for e in evaluations[1:]:
        assert e["likeness"] is None and e["bleed"] is None and e["no_face"] == e["probes"] == 4
        assert e["message"] == "no face in any probe image" and e["judge"] == "face identity (dlib)"
        assert len(e["images"]) == 4 and all(im["type"] == "temp" for im in e["images"])
        assert {s["kind"] for s in e["scores"]} == {"subject", "class"}
    # the page can catch up: /likeness/status keeps the evaluations of the run
    status = host.get_json("/likeness/status")
    assert [e["step"] for e in status["evaluations"]] == [0, 2, 4]
    # the result records them
    (end,) = [d for d in result.events("likeness.end") if str(d.get("node_id")) == "2"]
    assert end["state"] == "finished"
    meta = read_metadata(end["path"])
    history = json.loads(meta["likeness.evaluation"])["history"]
    assert [h["step"] for h in history] == [2, 4] and meta["likeness.kept_step"] == "4"
    result_file = Path(end["path"])
    sidecar = json.loads(result_file.with_name(result_file.stem + ".likeness.json").read_text())
    assert sidecar["metadata"]["likeness.evaluation"] == meta["likeness.evaluation"]


def read_metadata(path: str) -> dict:
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})
