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
    driver.get(comfy_host.url)
    deadline = time.monotonic() + 60
    while not driver.execute_script("return !!(window.app && window.app.graph && window.LiteGraph)"):
        assert time.monotonic() < deadline, "the ComfyUI page did not load"
        time.sleep(0.2)
    driver.set_script_timeout(60)
    got = json.loads(driver.execute_async_script(LOAD_JS, workflow))
    assert "error" not in got, got.get("error")
    page = got["ok"]
    assert page["missing"] == [] and page["count"] == len(workflow["nodes"])
    assert page["errors"] == [], page["errors"]
    editor = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in page["output"].items()}
    assert editor == ui_to_api(workflow, _with_choices(comfy_host.object_info(), workflow))
