"""The monitor's validation-loss curve (issue 15) in a real ComfyUI page: ``phase="validation"`` progress events with
``loss_validation`` become their own curve, drawn on screen beside the training loss."""

from __future__ import annotations

import browser
from test_browser_monitor import ADD_FAKE_NODE, FAKE_NODE, chrome, count_color_pixels, page  # noqa: F401

pytestmark = browser.MARKS

VALIDATION_RGB = (0xC6, 0x78, 0xDD)  # COLORS.validation in likeness_monitor.js

SEND = """
const [nodeId, total] = args;
const {api} = await import("/scripts/api.js");
const ev = (t, d) => api.dispatchEvent(new CustomEvent("likeness." + t, {detail: d}));
const id = String(nodeId);
ev("start", {node_id: id, kind: "lora", total, name: "fake"});
ev("progress", {node_id: id, step: 0, total, phase: "validation", loss_validation: 0.30});
for (let s = 1; s <= total; s++) {
  ev("progress", {node_id: id, step: s, total, loss: 0.25 * Math.exp(-s / 10), lr: 1e-4, phase: "training"});
  if (s % 10 === 0) ev("progress", {node_id: id, step: s, total, phase: "validation",
                                    loss_validation: 0.3 - 0.01 * s + 0.0004 * s * s});
}
await new Promise((r) => setTimeout(r, 50));
return true;
"""


def test_validation_points_draw_their_own_curve(page):  # noqa: F811
    has_dom = page.js("return typeof LGraphNode.prototype.addDOMWidget === 'function'")
    mode = "dom" if has_dom else "canvas"
    node_id = page.js_async(ADD_FAKE_NODE, FAKE_NODE, mode, 950)
    page.js_async(SEND, node_id, 40)
    page.js("app.canvas.draw(true, true)")
    st = page.state(node_id)
    assert [p["step"] for p in st["validation"]] == [0, 10, 20, 30, 40]
    assert st["validation"][0]["loss"] == 0.30
    assert [p["step"] for p in st["points"]] == list(range(1, 41))  # validation points are not training points
    assert st["drawn"]["validation"] == 5
    if mode == "dom":
        canvas = f"app.graph.getNodeById({node_id}).likenessMonitor.element.querySelector('canvas')"
        assert count_color_pixels(page, canvas, VALIDATION_RGB, tol=30) > 20
