"""The UI → API workflow converter the example-workflow tests rely on."""

from __future__ import annotations

import pytest
from workflow_api import WorkflowError, ui_to_api

INFO = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"]]}}},
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {"default": 0}],
                "steps": ["INT", {"default": 20}],
                "positive": ["CONDITIONING"],
                "name": ["STRING", {"forceInput": True}],
            },
            "optional": {"denoise": ["FLOAT", {"default": 1.0}]},
        }
    },
}

WORKFLOW = {
    "nodes": [
        {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["b.safetensors"], "mode": 0},
        {
            "id": 3,
            "type": "KSampler",
            "mode": 0,
            "inputs": [
                {"name": "model", "type": "MODEL", "link": 1},
                {"name": "positive", "type": "CONDITIONING", "link": 2},
                {"name": "name", "type": "STRING", "link": 3},
            ],
            "widgets_values": [42, "fixed", 7, 0.5],
        },
        {"id": 9, "type": "Note", "widgets_values": ["explains things"], "mode": 0},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 4, 1, 3, 1, "CONDITIONING"], [3, 4, 2, 3, 2, "STRING"]],
}


def test_converts_widgets_links_and_seed_control():
    prompt = ui_to_api(WORKFLOW, INFO)
    assert set(prompt) == {"4", "3"}  # the note is UI-only
    assert prompt["4"] == {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}}
    assert prompt["3"]["inputs"] == {
        "model": ["4", 0],
        "seed": 42,
        "steps": 7,
        "positive": ["4", 1],
        "name": ["4", 2],
        "denoise": 0.5,
    }


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda w: w["nodes"][0].update(type="SomePackNode"), "does not know"),
        (lambda w: w["nodes"][0].update(widgets_values=["zzz.safetensors"]), "not a choice"),
        (lambda w: w["nodes"][1].update(widgets_values=[42, "fixed", 7]), "no widget value"),
        (lambda w: w["nodes"][1].update(widgets_values=[42, "fixed", 7, 0.5, 1]), "widget values"),
        (lambda w: w["nodes"][1]["inputs"].pop(0), "not connected"),
    ],
)
def test_rejects_broken_workflows(mutate, words):
    import copy

    wf = copy.deepcopy(WORKFLOW)
    mutate(wf)
    with pytest.raises(WorkflowError, match=words):
        ui_to_api(wf, INFO)


def test_frontend_widget_values_of_the_training_monitor_are_skipped():
    """The 2024 editor saves the monitor DOM widget's value after a training node's own widgets."""
    info = {"LikenessLoRATrain": {"input": {"required": {"steps": ["INT", {"default": 1}]}}}}
    wf = {"nodes": [{"id": 1, "type": "LikenessLoRATrain", "mode": 0, "widgets_values": [5, ""]}], "links": []}
    assert ui_to_api(wf, info) == {"1": {"class_type": "LikenessLoRATrain", "inputs": {"steps": 5}}}
    wf["nodes"][0]["widgets_values"] = [5, "", ""]
    with pytest.raises(WorkflowError, match="widget values"):
        ui_to_api(wf, info)
