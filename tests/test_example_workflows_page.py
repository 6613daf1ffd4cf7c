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


# ---------------------------------------------------------------------------------------------------------------
# what the examples look like: canvas text geometry and the info box, on the frontend the host serves

# Every fillText of a draw of each node, in graph coordinates: [{type, rect: [x, y, w, h] incl. title, texts}].
TEXTS_JS = """
const canvas = app.canvas, proto = CanvasRenderingContext2D.prototype, fillText = proto.fillText;
const title = LiteGraph.NODE_TITLE_HEIGHT, nodes = [];
let current = null;
proto.fillText = function (text, x, y, maxWidth) {
  if (current && String(text).trim()) {
    const m = this.getTransform();
    let w = this.measureText(String(text)).width;
    if (maxWidth !== undefined && maxWidth < w) w = maxWidth;
    const x0 = this.textAlign === "right" || this.textAlign === "end" ? x - w : this.textAlign === "center" ? x - w / 2 : x;
    const k = (window.devicePixelRatio || 1) * canvas.ds.scale;
    current.texts.push({t: String(text), x0: (m.a * x0 + m.c * y + m.e) / k - canvas.ds.offset[0],
                        x1: (m.a * (x0 + w) + m.c * y + m.e) / k - canvas.ds.offset[0],
                        y: (m.b * x0 + m.d * y + m.f) / k - canvas.ds.offset[1]});
  }
  return fillText.apply(this, arguments);
};
try {
  canvas.ds.scale = 1;
  for (const node of app.graph._nodes) {
    const rect = [node.pos[0], node.pos[1] - title, node.size[0], node.size[1] + title];
    current = {type: node.type, id: node.id, rect, texts: []};
    canvas.ds.offset = [60 - node.pos[0], 80 - node.pos[1]];  // the node in view, drawn alone at 1:1
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    const mid = (t) => (t.x0 + t.x1) / 2;
    current.texts = current.texts.filter((t) => t.y >= rect[1] - 2 && t.y <= rect[1] + rect[3] + 2
      && mid(t) >= rect[0] && mid(t) <= rect[0] + rect[2]);  // its own texts, not a neighbour's
    nodes.push(current);
  }
} finally {
  proto.fillText = fillText;
}
return nodes;
"""


def _overlaps(node: dict) -> list[str]:
    """Texts of one row of a node whose boxes overlap, or that stick out of the node."""
    found = []
    rows: dict[int, list[dict]] = {}
    for t in node["texts"]:
        rows.setdefault(round(t["y"] / 3), []).append(t)
    x0, x1 = node["rect"][0], node["rect"][0] + node["rect"][2]
    for texts in rows.values():
        texts.sort(key=lambda t: t["x0"])
        for a, b in zip(texts, texts[1:], strict=False):
            if a["x1"] > b["x0"] + 0.5:
                found.append(f"{node['type']}: {a['t']!r} runs into {b['t']!r} ({a['x1'] - b['x0']:.0f} px)")
        found += [f"{node['type']}: {t['t']!r} sticks out of the node" for t in texts
                  if t["x0"] < x0 - 0.5 or t["x1"] > x1 + 0.5]  # fmt: skip
    return found


@pytest.mark.parametrize("name", NAMES)
def test_no_label_overlaps_its_value_at_the_saved_node_widths(comfy_host, driver, name):
    """Every text the canvas draws for a node (title, slot names, widget labels and values), measured as drawn."""
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    _open_page(driver, comfy_host)
    got = json.loads(driver.execute_async_script(LOAD_JS, workflow))
    assert "error" not in got, got.get("error")
    nodes = driver.execute_script(TEXTS_JS)
    assert len(nodes) == len(workflow["nodes"])
    (loader,) = [n for n in nodes if n["type"] in ("LikenessLoadCheckpoint", "CheckpointLoaderSimple")]
    assert any(t["t"] == "ckpt_name" or t["t"].startswith("ckpt") for t in loader["texts"])  # the texts are seen
    problems = [p for node in nodes for p in _overlaps(node)]
    assert problems == [], problems


INFO_JS = """
const [text] = args;
const node = app.graph._nodes.find((n) => n.type === "LikenessApplyTrainedModel");
const before = [...node.size];
node.onExecuted({text: [text]});
const canvas = app.canvas;
canvas.ds.scale = 1;
canvas.ds.offset = [60 - node.pos[0], 80 - node.pos[1]];
canvas.setDirty(true, true);
canvas.draw(true, true);
await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
await new Promise((r) => setTimeout(r, 300));  // newer frontends place DOM widgets on a later frame
canvas.draw(true, true);
await new Promise((r) => setTimeout(r, 300));
const el = node.likenessInfoWidget.element;
const box = el.getBoundingClientRect(), c = canvas.canvas.getBoundingClientRect(), ds = canvas.ds;
const title = LiteGraph.NODE_TITLE_HEIGHT;
const screen = (n) => [(n.pos[0] + ds.offset[0]) * ds.scale + c.left, (n.pos[1] - title + ds.offset[1]) * ds.scale + c.top,
                       n.size[0] * ds.scale, (n.size[1] + title) * ds.scale];
return {before, after: [...node.size], box: [box.left, box.top, box.width, box.height], node: screen(node),
        shown: el.textContent, scrolls: el.scrollHeight > el.clientHeight + 1, visible: box.width > 0 && box.height > 0,
        others: app.graph._nodes.filter((n) => n !== node).map((n) => ({type: n.type, title: n.title, rect: screen(n)}))};
"""


def _inside(inner, outer) -> bool:
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return x >= ox - 0.5 and y >= oy - 0.5 and x + w <= ox + ow + 0.5 and y + h <= oy + oh + 0.5


def _meet(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize("name", NAMES)
def test_the_info_box_stays_inside_its_node(comfy_host, driver, name):
    """A long info text (more lines than the box shows) scrolls inside the box: the node does not grow, the box stays
    inside the node and off its neighbours (the prompt node below it in the examples)."""
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    _open_page(driver, comfy_host)
    got = json.loads(driver.execute_async_script(LOAD_JS, workflow))
    assert "error" not in got, got.get("error")
    text = "\n".join(f"line {i}: steps 1000, instance prompt 'a photo of sks woman face', rank 16, alpha 8, a long "
                     "line that wraps" for i in range(20))  # fmt: skip
    driver.set_script_timeout(60)
    info = json.loads(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const args = arguments;"
            "(async () => {" + INFO_JS + "})().then((v) => done(JSON.stringify(v)), (e) => done(JSON.stringify({error: String(e)})));",
            text,
        )
    )  # fmt: skip
    assert "error" not in info, info.get("error")
    assert info["visible"] and info["shown"] == text and info["scrolls"]
    assert info["after"] == info["before"], "showing a text must not resize the node"
    assert _inside(info["box"], info["node"]), (info["box"], info["node"])
    covered = [o["title"] or o["type"] for o in info["others"] if _meet(info["box"], o["rect"])]
    assert covered == []
