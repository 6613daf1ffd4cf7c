"""The training monitor (web/js/likeness_monitor.js) in a real ComfyUI page, driven by headless Chromium.

The page is the one the test host serves (the 2024-03 frontend, or ``COMFYUI_DIR``'s). The monitor is read through
the small read-only state each monitored node exposes (``node.likenessMonitor.state``) and checked against what is
really on screen: chart pixels, loaded thumbnail images, the Stop button's effect on the server.

Skipped only where Debian's ``chromium``/``chromium-driver`` are missing (``scripts/test.sh`` installs them when it
can). ``LIKENESS_MONITOR_SCREENSHOT=docs/monitor.png`` makes the live-run test save a screenshot of the monitor
mid-run (the one in the README).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.host,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SMOOTH_RGB = (0xFF, 0xB3, 0x47)  # COLORS.smooth in likeness_monitor.js
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


# ---------------------------------------------------------------------------------------------------------------
# the browser

CATCH_ERRORS = """
window.__pageErrors = [];
window.addEventListener("error", (e) => window.__pageErrors.push(String((e.error && e.error.stack) || e.message)));
window.addEventListener("unhandledrejection", (e) =>
  window.__pageErrors.push(String((e.reason && e.reason.stack) || e.reason)));
"""


class Page:
    """One headless Chromium tab on the ComfyUI page, with the helpers the tests need."""

    def __init__(self, driver, url: str):
        self.driver = driver
        self.url = url
        self.console: list[dict] = []

    def open(self, timeout: float = 60.0) -> None:
        # Keep the stack of every uncaught error and rejection (the console shows only one location).
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CATCH_ERRORS})
        self.driver.get(self.url)
        self.wait_js("return !!(window.app && window.app.graph && window.LiteGraph)", timeout)

    def reload(self, timeout: float = 60.0) -> None:
        self.drain_console()
        self.driver.refresh()
        self.wait_js("return !!(window.app && window.app.graph && window.LiteGraph)", timeout)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def js_async(self, body: str, *args, timeout: float = 60.0):
        """Run ``body`` (may ``await``) inside an async function; its return value comes back as JSON."""
        self.driver.set_script_timeout(timeout)
        wrapped = (
            "const done = arguments[arguments.length - 1]; const args = arguments;"
            "(async () => { " + body + " })().then((v) => done(JSON.stringify({ok: v === undefined ? null : v})),"
            " (e) => done(JSON.stringify({error: String(e && e.stack || e)})));"
        )
        out = json.loads(self.driver.execute_async_script(wrapped, *args))
        if "error" in out:
            raise AssertionError(f"page script failed: {out['error']}")
        return out["ok"]

    def wait_js(self, script: str, timeout: float, *args, what: str = ""):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or script}")
            time.sleep(0.1)

    def state(self, node_id) -> dict:
        return json.loads(
            self.js(
                "const n = app.graph.getNodeById(arguments[0]);"
                "return JSON.stringify(n && n.likenessMonitor ? n.likenessMonitor.state : null);",
                node_id,
            )
        )

    def drain_console(self) -> None:
        self.console.extend(self.driver.get_log("browser"))

    def console_errors(self) -> list[str]:
        """Console errors so far, without the expected favicon 404."""
        self.drain_console()
        return [e["message"] for e in self.console if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]

    def click_monitor_button(self, node_id, name: str) -> None:
        """A real mouse click on the monitor's ``log``/``stop`` button (a DOM button, or a box drawn on the canvas)."""
        from selenium.webdriver.common.action_chains import ActionChains

        el = self.js(
            "const m = app.graph.getNodeById(arguments[0]).likenessMonitor;"
            "return m.element ? m.element.querySelector('.likeness-monitor-' + arguments[1]) : null;",
            node_id,
            name,
        )
        if el is not None:
            el.click()
            return
        # canvas mode: the drawn button's box (node coordinates) -> page coordinates
        x, y = self.js(
            "const n = app.graph.getNodeById(arguments[0]); const b = n.likenessMonitor.state.buttons[arguments[1]];"
            "const ds = app.canvas.ds; const r = app.canvas.canvas.getBoundingClientRect();"
            "const gx = n.pos[0] + b[0] + b[2] / 2, gy = n.pos[1] + b[1] + b[3] / 2;"
            "return [(gx + ds.offset[0]) * ds.scale + r.left, (gy + ds.offset[1]) * ds.scale + r.top];",
            node_id,
            name,
        )
        actions = ActionChains(self.driver)
        actions.w3c_actions.pointer_action.move_to_location(int(x), int(y)).click()
        actions.perform()

    def page_errors(self) -> list[str]:
        """Uncaught errors and rejections in the page since it was (re)loaded, with their stacks."""
        return self.js("return window.__pageErrors || []")

    def problems_from_us(self) -> list[str]:
        """Console errors/warnings and uncaught errors that come from our extension (its URL or its name)."""
        self.drain_console()
        ours = [e["message"] for e in self.console if e["level"] != "INFO" and "likeness" in e["message"].lower()]
        return ours + [e for e in self.page_errors() if "likeness" in e.lower()]


@pytest.fixture(scope="module")
def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(chrome, request):
    """The ComfyUI page of the test host (or of ``LIKENESS_BROWSER_URL``: a ComfyUI you started, e.g. a newer one)."""
    url = os.environ.get("LIKENESS_BROWSER_URL") or request.getfixturevalue("comfy_host").url
    p = Page(chrome, url)
    p.open()
    yield p
    assert not p.problems_from_us(), f"errors from the Likeness extension: {p.problems_from_us()}"
    if not os.environ.get("LIKENESS_BROWSER_URL"):
        # The test host's page is otherwise clean: any error at all is a finding (the favicon 404 is expected).
        assert not p.console_errors(), f"browser console errors: {p.console_errors()}"
        assert not p.page_errors(), f"uncaught errors in the page: {p.page_errors()}"


# ---------------------------------------------------------------------------------------------------------------
# pixels


def count_color_pixels(page: Page, js_canvas_expr: str, rgb, box=None, tol: int = 40) -> int:
    """Pixels of ``rgb`` (± tol per channel) in a canvas (optionally in box = [x, y, w, h] canvas pixels)."""
    return page.js(
        f"const c = {js_canvas_expr}; const [r0, g0, b0] = arguments[0]; const tol = arguments[2];"
        "const b = arguments[1] || [0, 0, c.width, c.height];"
        "const x = Math.max(0, Math.floor(b[0])), y = Math.max(0, Math.floor(b[1]));"
        "const w = Math.min(c.width - x, Math.ceil(b[2])), h = Math.min(c.height - y, Math.ceil(b[3]));"
        "if (w <= 0 || h <= 0) return 0;"
        "const d = c.getContext('2d').getImageData(x, y, w, h).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) {"
        "  if (Math.abs(d[i] - r0) <= tol && Math.abs(d[i + 1] - g0) <= tol && Math.abs(d[i + 2] - b0) <= tol) n++; }"
        "return n;",
        list(rgb),
        box,
        tol,
    )


# ---------------------------------------------------------------------------------------------------------------
# the monitor without training: fake node type + fake events (both drawing modes, status catch-up)

FAKE_NODE = {
    "name": "LikenessDreamBoothTrainMonitorTest",
    "display_name": "Monitor test node",
    "category": "Likeness/test",
    "description": "",
    "input": {"required": {"steps": ["INT", {"default": 10, "min": 1, "max": 100}]}},
    "output": [],
    "output_name": [],
    "output_is_list": [],
    "output_node": True,
}

ADD_FAKE_NODE = """
const [def, mode, id] = args;
window.LikenessMonitorConfig = mode ? {mode} : undefined;
if (!LiteGraph.registered_node_types[def.name]) await app.registerNodeDef(def.name, def);
app.graph.clear();
const node = LiteGraph.createNode(def.name);
node.id = id;  // a fresh id: run records are kept per node id
node.pos = [80, 60];
app.graph.add(node);
window.LikenessMonitorConfig = undefined;
app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
app.graph.setDirtyCanvas(true, true);
return node.id;
"""

SEND_FAKE_EVENTS = """
const [nodeId, total, upto] = args;
const {api} = await import("/scripts/api.js");
const ev = (t, d) => api.dispatchEvent(new CustomEvent("likeness." + t, {detail: d}));
const id = String(nodeId);
ev("start", {node_id: id, kind: "dreambooth", total, name: "fake"});
for (let s = 1; s <= upto; s++) {
  const loss = 0.2 * Math.exp(-s / 8) + 0.02 * ((s * 7919) % 13) / 13;
  ev("progress", {node_id: id, step: s, total, loss, loss_smoothed: null, lr: 2e-6, elapsed: s * 0.5,
                  eta: (total - s) * 0.5, it_s: 2.0, phase: "training"});
}
await new Promise((r) => setTimeout(r, 50));
return true;
"""


def test_monitor_draws_fake_events_in_dom_and_canvas_modes(page):
    """Both drawing paths render events: the DOM widget (frontends with addDOMWidget) and the canvas fallback."""
    has_dom = page.js("return typeof LGraphNode.prototype.addDOMWidget === 'function'")
    for k, mode in enumerate(("dom", "canvas") if has_dom else ("canvas",)):
        node_id = page.js_async(ADD_FAKE_NODE, FAKE_NODE, mode, 900 + k)
        st = page.state(node_id)
        assert st["mode"] == mode
        assert st["status"] == "idle" and st["points"] == []
        page.js_async(SEND_FAKE_EVENTS, node_id, 40, 12)
        page.js("app.canvas.draw(true, true)")
        st = page.state(node_id)
        assert st["status"] == "running" and st["step"] == 12 and st["total"] == 40
        assert [p["step"] for p in st["points"]] == list(range(1, 13))
        # no loss_smoothed in these events: the monitor smooths itself (an EMA lags behind a falling loss)
        assert st["points"][-1]["smoothed"] > st["points"][-1]["loss"]
        assert st["drawn"]["points"] == 12
        if mode == "dom":
            smooth_px = count_color_pixels(
                page, f"app.graph.getNodeById({node_id}).likenessMonitor.element.querySelector('canvas')", SMOOTH_RGB
            )
        else:
            # the chart is on the graph canvas, inside the node's box
            box = page.js(
                "const n = app.graph.getNodeById(arguments[0]); const ds = app.canvas.ds;"
                "const r = window.devicePixelRatio || 1;"
                "return [(n.pos[0] + ds.offset[0]) * ds.scale * r, (n.pos[1] + ds.offset[1]) * ds.scale * r,"
                " n.size[0] * ds.scale * r, n.size[1] * ds.scale * r];",
                node_id,
            )
            smooth_px = count_color_pixels(page, "app.canvas.canvas", SMOOTH_RGB, box)
        assert smooth_px > 30, f"{mode}: the smoothed loss line is not on screen ({smooth_px} px)"
        # the log-scale toggle, clicked like a user: redraws on a log axis
        page.click_monitor_button(node_id, "log")
        page.js("app.canvas.draw(true, true)")
        st = page.state(node_id)
        assert st["logScale"] and st["drawn"]["logScale"]
        page.js_async(
            "const {api} = await import('/scripts/api.js');"
            "api.dispatchEvent(new CustomEvent('likeness.end', {detail: {node_id: String(args[0]), state: 'stopped'}}));",
            node_id,
        )
        st = page.state(node_id)
        assert st["status"] == "stopped"
        if mode == "dom":  # nothing to stop once the run ended
            assert page.js(
                "return arguments[0].likenessMonitor.element.querySelector('.likeness-monitor-stop').disabled".replace(
                    "arguments[0]", f"app.graph.getNodeById({node_id})"
                )
            )
