"""The example workflows in the host's real editor page (headless Chromium): each file loads without errors, every
node is known to the page, and the editor's own API prompt for it (``app.graphToPrompt().output``, what the Queue
button sends) equals ``tests/workflow_api.ui_to_api`` of the file, so the end-to-end tests run what a user queues.

On the test host this is the 2024-03 editor; with ``COMFYUI_DIR`` pointing to a newer ComfyUI, its frontend.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import browser
import pytest
from workflow_api import ui_to_api

pytestmark = browser.MARKS

EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
NAMES = ("dreambooth_face", "lora_face", "sample_trained")
LOAD_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  const errors = [];
  const origError = console.error;
  console.error = (...a) => { errors.push(a.map(String).join(" ")); origError(...a); };
  try {
    await app.loadGraphData(arguments[0]);
    const missing = app.graph._nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type);
    const p = await app.graphToPrompt();
    return {output: p.output, missing, errors, count: app.graph._nodes.length};
  } finally {
    console.error = origError;
  }
})().then((v) => done(JSON.stringify({ok: v})), (e) => done(JSON.stringify({error: String(e && e.stack || e)})));
"""


@pytest.fixture(scope="module")
def driver():
    d = browser.start_chrome((1600, 1000))
    try:
        yield d
    finally:
        d.quit()


def _open_page(driver, host) -> None:
    driver.get(host.url)
    deadline = time.monotonic() + 60
    while not driver.execute_script("return !!(window.app && window.app.graph && window.LiteGraph)"):
        assert time.monotonic() < deadline, "the ComfyUI page did not load"
        time.sleep(0.2)
    driver.set_script_timeout(60)


def _with_choices(info: dict, workflow: dict) -> dict:
    """``info`` whose combos also list the example's own model-file names (files this test host does not have)."""
    info = copy.deepcopy(info)
    for node in workflow["nodes"]:
        spec = info.get(node["type"])
        if not spec:
            continue
        for section in ("required", "optional"):
            for name, s in (spec["input"].get(section) or {}).items():
                if name in ("ckpt_name", "source") and isinstance(s[0], list):
                    s[0].extend(v for v in node.get("widgets_values") or [] if isinstance(v, str) and v not in s[0])
    return info


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_in_the_editor_and_queues_what_the_converter_builds(comfy_host, driver, name):
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    _open_page(driver, comfy_host)
    got = json.loads(driver.execute_async_script(LOAD_JS, workflow))
    assert "error" not in got, got.get("error")
    page = got["ok"]
    assert page["missing"] == [] and page["count"] == len(workflow["nodes"])
    assert page["errors"] == [], page["errors"]
    editor = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in page["output"].items()}
    assert editor == ui_to_api(workflow, _with_choices(comfy_host.object_info(), workflow))


WIDGETS_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  await app.loadGraphData(arguments[0]);
  const read = () => Object.fromEntries(app.graph._nodes.filter((n) => n.type.startsWith("Likeness")).map((n) => [
    String(n.id), Object.fromEntries((n.widgets || []).filter((w) => w.serialize !== false).map((w) => [w.name, w.value]))]));
  const first = read();
  const saved = JSON.parse(JSON.stringify(app.graph.serialize()));
  await app.loadGraphData(saved);
  const p = await app.graphToPrompt();
  return {first, again: read(), saved, output: p.output};
})().then((v) => done(JSON.stringify({ok: v})), (e) => done(JSON.stringify({error: String(e && e.stack || e)})));
"""


@pytest.mark.parametrize("name", ("dreambooth_face", "lora_face"))
def test_workflows_saved_by_likeness_0_1_keep_their_values_after_inputs_changed(comfy_host, driver, name):
    """Saved before `seed` became `train_seed` (and options moved): every saved value lands on the widget of its
    name (web/js/likeness_migrate.js), new widgets keep their defaults, and a workflow saved now reloads the same."""
    from test_node_options import _layouts_v0

    old = json.loads((Path(__file__).parent / "data" / "workflows_v0" / f"{name}.json").read_text())
    _open_page(driver, comfy_host)
    got = json.loads(driver.execute_async_script(WIDGETS_JS, old))
    assert "error" not in got, got.get("error")
    page, layouts = got["ok"], _layouts_v0()
    info = comfy_host.object_info()
    for node in old["nodes"]:
        if not node["type"].startswith("Likeness"):
            continue
        now = page["first"][str(node["id"])]
        assert "seed" not in now and "control_after_generate" not in now
        for old_name, value in zip(layouts[node["type"]], node["widgets_values"], strict=False):
            if old_name == "control_after_generate":
                continue
            assert now[{"seed": "train_seed"}.get(old_name, old_name)] == value, (node["type"], old_name)
        spec = info[node["type"]]["input"]
        for new_name in set(now) - set(layouts[node["type"]]) - {"train_seed"}:
            declared = {**spec.get("required", {}), **spec.get("optional", {})}[new_name]
            assert now[new_name] == declared[1].get("default", now[new_name]), (node["type"], new_name)
        assert page["again"][str(node["id"])] == now
    trains = [n for n in page["saved"]["nodes"] if n["type"] in ("LikenessDreamBoothTrain", "LikenessLoRATrain")]
    assert trains and all("likeness_widgets" in n for n in trains)
    (train_id,) = [str(n["id"]) for n in trains]
    assert page["output"][train_id]["inputs"]["train_seed"] == 1234
