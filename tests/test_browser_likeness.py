# ruff: noqa: F811 - the page/chrome fixtures are imported from test_browser_monitor and used as arguments
"""The training monitor's likeness panel in a real ComfyUI page (headless Chromium): the likeness and bleed curves
from evaluation events, the "no face" state, probe thumbnails, the catch-up after a reload, and a real tiny training
run whose probes find no face. Helpers come from test_browser_monitor.py."""

from __future__ import annotations

import time

import browser
import pytest
from PIL import Image
from skimage import data
from test_browser_monitor import (  # noqa: F401 - fixtures
    ADD_FAKE_NODE,
    CKPT_NAME,
    FAKE_NODE,
    QUEUE_FROM_PAGE,
    chrome,
    count_color_pixels,
    page,
    training_prompt,
    wait_state,
)

from trainers.identity import backend

pytestmark = browser.MARKS

LIKENESS_RGB = (0xC0, 0x8C, 0xFF)  # EVAL_COLORS.likeness in likeness_eval.js
BLEED_RGB = (0xFF, 0x6B, 0x8B)  # EVAL_COLORS.bleed

SEND_EVALUATIONS = """
const [nodeId, total] = args;
const {api} = await import("/scripts/api.js");
const ev = (t, d) => api.dispatchEvent(new CustomEvent("likeness." + t, {detail: d}));
const id = String(nodeId);
ev("start", {node_id: id, kind: "dreambooth", total, name: "fake"});
for (let s = 1; s <= total; s++) ev("progress", {node_id: id, step: s, total, loss: 0.1, phase: "training"});
ev("evaluation", {node_id: id, step: 0, total, state: "baseline", class_similarity: 0.30, no_face: 0, probes: 1});
const curve = [[5, 0.42, 0.01], [10, 0.61, 0.03], [15, 0.72, 0.08], [20, 0.69, 0.12]];
for (const [step, likeness, bleed] of curve) {
  ev("evaluation", {node_id: id, step, total, state: "evaluated", likeness, bleed, no_face: 0, probes: 4,
                    best_step: 15, best_likeness: 0.72, judge: "face identity (dlib)", message: "",
                    scores: [{kind: "subject", prompt: "a photo of sks woman", similarity: likeness, reason: ""}],
                    images: []});
}
await new Promise((r) => setTimeout(r, 50));
return true;
"""

NO_FACE = """
const [nodeId, total] = args;
const {api} = await import("/scripts/api.js");
api.dispatchEvent(new CustomEvent("likeness.evaluation", {detail: {node_id: String(nodeId), step: 25, total,
  state: "evaluated", likeness: null, bleed: null, no_face: 4, probes: 4, message: "no face in any probe image",
  scores: [], images: []}}));
await new Promise((r) => setTimeout(r, 50));
return true;
"""


def likeness_pixels(page, node_id, mode: str, rgb) -> int:
    if mode == "dom":
        canvas = f"app.graph.getNodeById({node_id}).likenessMonitor.element.querySelector('.likeness-monitor-likeness')"
        return count_color_pixels(page, canvas, rgb)
    box = page.js(
        "const n = app.graph.getNodeById(arguments[0]); const ds = app.canvas.ds; const r = window.devicePixelRatio || 1;"
        "return [(n.pos[0] + ds.offset[0]) * ds.scale * r, (n.pos[1] + ds.offset[1]) * ds.scale * r,"
        " n.size[0] * ds.scale * r, n.size[1] * ds.scale * r];",
        node_id,
    )
    return count_color_pixels(page, "app.canvas.canvas", rgb, box)


def test_likeness_curve_and_the_no_face_state_in_both_drawing_modes(page):
    has_dom = page.js("return typeof LGraphNode.prototype.addDOMWidget === 'function'")
    for k, mode in enumerate(("dom", "canvas") if has_dom else ("canvas",)):
        node_id = page.js_async(ADD_FAKE_NODE, FAKE_NODE, mode, 950 + k)
        assert page.state(node_id)["likeness"]["state"] == "waiting"
        page.js_async(SEND_EVALUATIONS, node_id, 40)
        page.js("app.canvas.draw(true, true)")
        st = page.state(node_id)
        assert [(e["state"], e["step"]) for e in st["evaluations"]] == [("baseline", 0)] + [
            ("evaluated", s) for s in (5, 10, 15, 20)
        ]
        assert st["likeness"]["state"] == "measured"
        assert st["likeness"]["text"].startswith("likeness 0.690 · bleed +0.120 · best 0.720 @15")
        assert st["likenessDrawn"] == {"likeness": 4, "bleed": 4, "state": "measured"}
        assert likeness_pixels(page, node_id, mode, LIKENESS_RGB) > 30, f"{mode}: no likeness curve on screen"
        assert likeness_pixels(page, node_id, mode, BLEED_RGB) > 10, f"{mode}: no bleed curve on screen"
        if mode == "dom":
            shown = page.js(
                f"return app.graph.getNodeById({node_id}).likenessMonitor.element"
                ".querySelector('.likeness-monitor-eval').textContent"
            )
            assert shown == st["likeness"]["text"]
        # the latest evaluation found no face: the monitor says so
        page.js_async(NO_FACE, node_id, 40)
        page.js("app.canvas.draw(true, true)")
        st = page.state(node_id)
        assert (
            st["likeness"]["state"] == "no face"
            and "no face in the probe images (4/4) at step 25" in st["likeness"]["text"]
        )
        assert st["likenessDrawn"]["state"] == "no face" and st["likenessDrawn"]["likeness"] == 4  # the curve stays
        if mode == "dom":
            el = page.js(
                f"const e = app.graph.getNodeById({node_id}).likenessMonitor.element.querySelector('.likeness-monitor-eval');"
                "return [e.dataset.state, e.textContent];"
            )
            assert el[0] == "no face" and "no face" in el[1]
        page.js_async(  # the run ends: the next mode's fresh node must not adopt it (an API-queued run would be)
            "const {api} = await import('/scripts/api.js');"
            "api.dispatchEvent(new CustomEvent('likeness.end', {detail: {node_id: String(args[0]), state: 'stopped'}}));",
            node_id,
        )


@pytest.fixture(scope="module")
def face_inputs(request):
    """The tiny checkpoint and real face photos (scikit-image's astronaut, NASA, public domain) in the host's input."""
    if not backend.available():
        pytest.skip(backend.status()[1])
    host = request.getfixturevalue("comfy_host")
    ckpt = request.getfixturevalue("comfy_tiny_checkpoint")
    dest = host.checkpoints_dir / CKPT_NAME
    if not dest.exists():
        dest.symlink_to(ckpt)
    folder = host.input_dir / "monitor_faces"
    folder.mkdir(parents=True, exist_ok=True)
    a = Image.fromarray(data.astronaut())
    for i in range(3):
        a.crop((90 + 12 * i, 10, 410 + 12 * i, 330)).resize((160, 160)).save(folder / f"me_{i}.png")
    return host


# Node ids of our own (2x): the page's /likeness/status keeps the last run, and test_browser_monitor's runs use 1-4.
IDS = {"1": "21", "2": "22", "3": "23", "4": "24"}
TRAIN = int(IDS["3"])
LOAD = """
const [prompt, queue] = args;
app.loadApiJson(prompt);
if (!app.graph.getNodeById(23)?.likenessMonitor) throw new Error("the training node has no monitor");
if (!queue) return null;
"""


def renumbered(prompt: dict) -> dict:
    def link(v):
        return [IDS[v[0]], v[1]] if isinstance(v, list) and len(v) == 2 and v[0] in IDS else v

    return {IDS[k]: {**n, "inputs": {i: link(v) for i, v in n["inputs"].items()}} for k, n in prompt.items()}


def test_a_real_run_shows_no_face_and_its_probes_and_survives_a_reload(page, face_inputs):
    host = face_inputs
    prompt = training_prompt(host, steps=4, sample_every=0, name="monitor_likeness", seed=4)
    prompt["3"]["inputs"]["instance_folder"] = "monitor_faces"
    prompt["2"]["inputs"].update(eval_every=2, eval_steps=2)
    prompt = renumbered(prompt)
    prompt_id = page.js_async(LOAD + QUEUE_FROM_PAGE, prompt, True)
    st = wait_state(
        page, TRAIN, lambda s: s["status"] == "finished" and len(s["evaluations"]) >= 3, 600, "the run's evaluations",
        host, prompt_id,
    )  # fmt: skip
    assert host.wait(prompt_id, timeout=120).status == "success"
    assert [(e["state"], e["step"]) for e in st["evaluations"]] == [("baseline", 0), ("evaluated", 2), ("evaluated", 4)]
    assert st["likeness"]["state"] == "no face" and all(e["no_face"] == 4 for e in st["evaluations"][1:])
    assert len(st["probes"]) == 4 and all("/view?" in u and "type=temp" in u for u in st["probes"])
    el = f"app.graph.getNodeById({TRAIN}).likenessMonitor.element"
    if page.js(f"return !!{el}"):
        page.wait_js(
            f"const im = [...{el}.querySelectorAll('.likeness-monitor-probes img')];"
            "return im.length === 4 && im.every((i) => i.complete && i.naturalWidth > 0);",
            30,
            what="the probe thumbnails to load",
        )
    time.sleep(1.5)  # the 2024 page saves the workflow to localStorage every second; reload restores it
    page.reload()
    if not page.js(f"const n = app.graph.getNodeById({TRAIN}); return !!(n && n.likenessMonitor)"):
        page.js_async(LOAD, prompt, False)
    st = page.state(TRAIN)
    assert [e["step"] for e in st["evaluations"]] == [0, 2, 4] and st["likeness"]["state"] == "no face"
