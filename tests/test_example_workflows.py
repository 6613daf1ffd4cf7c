"""The example workflows (example_workflows/*.json, UI format as the editor saves it) run end to end on a real ComfyUI.

Each file is loaded as a user would get it, its widget values are set to test sizes (the tiny ComfyUI-loadable
checkpoint, 64 px crops, 48×64 latents — 3:4 like 768×1024 —, 2 training steps, 2 class images), structure and
links untouched, then ``tests/workflow_api.ui_to_api`` turns it into the API prompt (checked against the host's
``/object_info``) and the host runs it. Likeness Apply Trained Model is checked against the base model: DreamBooth
output differs, a LoRA at strength 0 gives the base image exactly and at 1 a different one, with no "lora key not
loaded" line in the server log; picking the same results from disk gives the same images.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from workflow_api import _has_control, _input_specs, _is_widget, node_types, ui_to_api

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_workflows"
NAMES = ("dreambooth_face", "lora_face", "sample_trained")
BASE = "likeness_examples_base.safetensors"
PHOTOS = "examples_photos"
UI_ONLY = {"Note", "MarkdownNote"}
FROM_INPUT = "(from the trained input)"

# test-size values by node type (widget name -> value); everything else stays as in the example
TEST_VALUES = {
    "LikenessLoadCheckpoint": {"ckpt_name": BASE},
    "CheckpointLoaderSimple": {"ckpt_name": BASE},
    "LikenessFaceCropDataset": {"folder": PHOTOS, "resolution": 64},
    "LikenessGenerateClassImages": {"count": 2, "resolution": 64, "steps": 2, "batch_size": 2},
    "LikenessDreamBoothTrain": {"steps": 2, "resolution": 64, "learning_rate": 5e-4, "train_text_encoder": False,
                                "sample_every": 0},
    "LikenessLoRATrain": {"steps": 2, "resolution": 64, "learning_rate": 1e-2, "lora_rank": 4, "lora_alpha": 4.0,
                          "sample_every": 0},
    "EmptyLatentImage": {"width": 48, "height": 64},
    "KSampler": {"steps": 2},
}  # fmt: skip


def load(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def widget_index(node: dict, name: str, info: dict) -> int:
    """Position of widget ``name`` in the node's saved ``widgets_values`` (the editor's order)."""
    pos = 0
    for input_name, typ, opts in _input_specs(info[node["type"]]):
        if not _is_widget(typ, opts):
            continue
        if input_name == name:
            return pos
        pos += 2 if _has_control(input_name, typ, opts) else 1
    raise KeyError(f"{node['type']} has no widget {name!r}")


def set_widgets(workflow: dict, info: dict, node_type: str, **values) -> dict:
    for node in workflow["nodes"]:
        if node["type"] == node_type:
            for name, value in values.items():
                node["widgets_values"][widget_index(node, name, info)] = value
    return workflow


def sized(name: str, info: dict, prefix: str, **extra: dict) -> dict:
    wf = copy.deepcopy(load(name))
    for node_type, values in {**TEST_VALUES, **extra}.items():
        set_widgets(wf, info, node_type, **values)
    set_widgets(wf, info, "SaveImage", filename_prefix=prefix)
    return wf


def node_id(workflow: dict, node_type: str) -> str:
    (nid,) = [str(n["id"]) for n in workflow["nodes"] if n["type"] == node_type]
    return nid


def pixels(result, save_id: str) -> np.ndarray:
    (path,) = result.images(save_id)
    assert path.is_file(), path
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def base_prompt(prompt: dict, loader_id: str, apply_id: str) -> dict:
    """The same sampling graph with the Apply node's outputs replaced by the base loader's (pruned to what runs)."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == apply_id:
                node["inputs"][name] = [loader_id, value[1]]
    keep: set[str] = set()
    todo = [nid for nid, n in p.items() if n["class_type"] == "SaveImage"]
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep.add(nid)
        todo += [v[0] for v in p[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {nid: n for nid, n in p.items() if nid in keep}


def lora_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "lora key not loaded" in ln or "NOT LOADED" in ln]


class _Quiet:
    def step(self, *args, **kwargs) -> None:
        pass


@pytest.fixture(scope="module")
def host(comfy_host, comfy_tiny_checkpoint):
    from trainers.demo import make_sample_photos

    dest = comfy_host.checkpoints_dir / BASE
    if not dest.exists():
        dest.symlink_to(comfy_tiny_checkpoint)
    folder = comfy_host.input_dir / PHOTOS
    if not folder.is_dir():
        make_sample_photos(folder, _Quiet(), n=4)
    return comfy_host


@pytest.fixture(scope="module")
def info(host) -> dict:
    return host.object_info()


@pytest.fixture(scope="module")
def dreambooth(host, info):
    wf = sized("dreambooth_face", info, "ex_db")
    prompt = ui_to_api(wf, info)
    result = host.run(prompt, timeout=1200).check()
    return wf, prompt, result


@pytest.fixture(scope="module")
def lora(host, info):
    """The LoRA example at strength 1 and at 0 (training runs once: the second prompt reuses it), plus the base."""
    offset = len(host.log_text())
    runs = {}
    for strength in (1.0, 0.0):
        wf = sized("lora_face", info, f"ex_lora_{strength:g}")
        set_widgets(wf, info, "LikenessApplyTrainedModel", strength_model=strength, strength_clip=strength)
        prompt = ui_to_api(wf, info)
        runs[strength] = (wf, prompt, host.run(prompt, timeout=1200).check())
    wf, prompt, _ = runs[1.0]
    base = base_prompt(prompt, node_id(wf, "LikenessLoadCheckpoint"), node_id(wf, "LikenessApplyTrainedModel"))
    base[node_id(wf, "SaveImage")]["inputs"]["filename_prefix"] = "ex_lora_base"
    runs["base"] = (wf, base, host.run(base, timeout=600).check())
    return runs, host.log_text()[offset:]


def test_examples_are_editor_files_with_only_core_and_likeness_nodes(host, info):
    for name in NAMES:
        wf = load(name)
        assert {"last_node_id", "last_link_id", "nodes", "links", "version"} <= set(wf), name
        types = node_types(wf)
        unknown = {t for t in types - UI_ONLY if t not in info}
        assert not unknown, f"{name}: node types this ComfyUI does not have: {unknown}"
        assert all(t.startswith("Likeness") or t in UI_ONLY or info[t]["category"].split("/")[0] != "Likeness"
                   for t in types)  # fmt: skip
        assert "Note" in types and sum(n["type"] == "Note" for n in wf["nodes"]) >= 2, f"{name}: notes explain it"
        for node in wf["nodes"]:
            if node["type"] in ("LikenessDreamBoothTrain", "LikenessLoRATrain"):
                # the training seed has no "control after generate" value: queueing again never retrains
                i = widget_index(node, "train_seed", info)
                assert node["widgets_values"][i] == 1234 and "control_after_generate" not in node["likeness_widgets"]
        thumb = EXAMPLES / f"{name}.jpg"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 200
        # converts against this host (model files swapped for the test ones, no file picked in source)
        ui_to_api(sized(name, info, "x", LikenessApplyTrainedModel={"source": FROM_INPUT}), info)
    db = load("dreambooth_face")
    texts = [n["widgets_values"][0] for n in db["nodes"] if n["type"] == "CLIPTextEncode"]
    assert any("a photo of sks woman face" in t for t in texts)
    latent = next(n for n in db["nodes"] if n["type"] == "EmptyLatentImage")
    assert latent["widgets_values"][:2] == [768, 1024]


def test_apply_node_is_registered_with_tooltips(host):
    spec = host.object_info("LikenessApplyTrainedModel")
    assert spec["category"] == "Likeness/loaders"
    assert spec["output"] == ["MODEL", "CLIP", "VAE", "STRING"]
    assert spec["description"]
    for section in ("required", "optional"):
        for name, s in spec["input"][section].items():
            assert s[1].get("tooltip"), f"{name} has no tooltip"
    assert spec["input"]["required"]["source"][0][0] == FROM_INPUT


def test_dreambooth_example_runs_and_differs_from_the_base(host, dreambooth):
    wf, prompt, result = dreambooth
    save = node_id(wf, "SaveImage")
    trained = pixels(result, save)
    assert trained.shape == (64, 48, 3)
    saved = list((host.checkpoints_dir / "likeness").glob("likeness_dreambooth*.safetensors"))
    assert saved, "the DreamBooth checkpoint is saved in models/checkpoints/likeness/"
    base = base_prompt(prompt, node_id(wf, "LikenessLoadCheckpoint"), node_id(wf, "LikenessApplyTrainedModel"))
    base[save]["inputs"]["filename_prefix"] = "ex_db_base"
    assert not any(n["class_type"].endswith("Train") for n in base.values())
    base_px = pixels(host.run(base, timeout=600).check(), save)
    assert np.abs(trained - base_px).max() > 0, "the trained model samples the same image as the base"
    info_text = result.outputs[node_id(wf, "LikenessApplyTrainedModel")]["text"][0]
    assert "DreamBooth checkpoint" in info_text and "steps: 2" in info_text


def test_lora_example_strength_zero_is_the_base_and_one_differs(lora):
    runs, log = lora
    save = node_id(runs[1.0][0], "SaveImage")
    one, zero, base = (pixels(runs[k][2], save) for k in (1.0, 0.0, "base"))
    assert np.array_equal(zero, base), "strength 0 must give exactly the base model's image"
    assert np.abs(one - base).max() > 0, "strength 1 must change the image"
    assert not lora_lines(log), lora_lines(log)
    text = runs[1.0][2].outputs[node_id(runs[1.0][0], "LikenessApplyTrainedModel")]["text"][0]
    assert text.startswith("LoRA:") and "applied at strength model 1" in text


def test_sample_trained_picks_results_from_disk(host, info, dreambooth, lora):
    runs, _ = lora
    save_db, save_lora = node_id(dreambooth[0], "SaveImage"), node_id(runs[1.0][0], "SaveImage")
    lora_file = runs[1.0][2].outputs[node_id(runs[1.0][0], "LikenessApplyTrainedModel")]["text"][0]
    lora_name = lora_file.splitlines()[0].split(": ", 1)[1]
    db_name = dreambooth[2].outputs[node_id(dreambooth[0], "LikenessApplyTrainedModel")]["text"][0]
    db_name = db_name.splitlines()[0].split(": ", 1)[1]
    info = host.object_info()  # the source list now includes the files trained above
    choices = info["LikenessApplyTrainedModel"]["input"]["required"]["source"][0]
    assert f"loras/likeness/{lora_name}" in choices and f"checkpoints/likeness/{db_name}" in choices
    offset = len(host.log_text())
    for source, reference in ((f"loras/likeness/{lora_name}", pixels(runs[1.0][2], save_lora)),
                              (f"checkpoints/likeness/{db_name}", pixels(dreambooth[2], save_db))):  # fmt: skip
        wf = sized("sample_trained", info, "ex_pick")
        set_widgets(wf, info, "LikenessApplyTrainedModel", source=source, strength_model=1.0, strength_clip=1.0)
        result = host.run(ui_to_api(wf, info), timeout=600).check()
        got = pixels(result, node_id(wf, "SaveImage"))
        assert np.array_equal(got, reference), f"{source} picked from disk samples differently than after training"
        text = result.outputs[node_id(wf, "LikenessApplyTrainedModel")]["text"][0]
        assert "instance prompt: a photo of sks woman face" in text and "steps: 2" in text
    assert not lora_lines(host.log_text()[offset:])


def test_lora_without_model_and_clip_says_what_to_connect(host, info, lora):
    runs, _ = lora
    text = runs[1.0][2].outputs[node_id(runs[1.0][0], "LikenessApplyTrainedModel")]["text"][0]
    name = text.splitlines()[0].split(": ", 1)[1]
    info = host.object_info()  # with the trained files in the source list
    wf = sized("sample_trained", info, "ex_err")
    set_widgets(wf, info, "LikenessApplyTrainedModel", source=f"loras/likeness/{name}")
    prompt = ui_to_api(wf, info)
    apply_id = node_id(wf, "LikenessApplyTrainedModel")
    for name_ in ("model", "clip"):
        del prompt[apply_id]["inputs"][name_]
    result = host.run(prompt, timeout=300)
    assert result.status == "error"
    assert "is a LoRA" in result.error and "Connect model and clip" in result.error


@pytest.mark.skipif(
    not os.environ.get("COMFYUI_DIR"),
    reason="/api/workflow_templates exists only on newer ComfyUI (2025+); set COMFYUI_DIR to such a checkout "
    "(the bundled 2024-03 host answers 404)",
)
def test_newer_host_lists_the_examples_as_templates(host):
    templates = host.get_json("/api/workflow_templates")
    assert set(NAMES) <= set(templates.get("likeness", [])), templates
