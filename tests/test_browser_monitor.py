"""The training monitor (web/js/likeness_monitor.js) in a real ComfyUI page, driven by headless Chromium.

The page is the one the test host serves (the 2024-03 frontend, or ``COMFYUI_DIR``'s). The monitor is read through
the small read-only state each monitored node exposes (``node.likenessMonitor.state``) and checked against what is
really on screen: chart pixels, loaded thumbnail images, the Stop button's effect on the server.

Skipped only where Debian's ``chromium``/``chromium-driver`` are missing (``scripts/test.sh`` installs them when it
can). ``LIKENESS_MONITOR_SCREENSHOT=docs/monitor.png`` makes the live-run test save a screenshot of the monitor
mid-run (the one in the README). ``LIKENESS_BROWSER_URL=http://127.0.0.1:8188`` points the page at a ComfyUI you
started yourself (e.g. a current frontend) for the tests that need no training run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import browser
import pytest

from tests.host.harness import sample_prompt

pytestmark = browser.MARKS

ROOT = Path(__file__).resolve().parents[1]
SMOOTH_RGB = (0xFF, 0xB3, 0x47)  # COLORS.smooth in likeness_monitor.js


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
        self.close_dialogs()

    def close_dialogs(self) -> None:
        """Newer frontends open a templates dialog on a fresh profile: close it (Escape) so clicks reach the graph."""
        from selenium.webdriver.common.keys import Keys

        for _ in range(20):
            if not self.js("return !!document.querySelector('.p-dialog, .p-dialog-mask')"):
                return
            self.driver.find_element("tag name", "body").send_keys(Keys.ESCAPE)
            time.sleep(0.2)

    def reload(self, timeout: float = 60.0) -> None:
        self.drain_console()
        self.driver.refresh()
        self.wait_js("return !!(window.app && window.app.graph && window.LiteGraph)", timeout)
        self.close_dialogs()

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
        """Console errors/warnings and uncaught errors that come from our extension (its file or its name)."""
        self.drain_console()
        marks = ("likeness_monitor.js", "likeness_info.js", "/extensions/likeness", "Likeness.")
        ours = [e["message"] for e in self.console if e["level"] != "INFO" and any(m in e["message"] for m in marks)]
        return ours + [e for e in self.page_errors() if any(m in e for m in marks)]


@pytest.fixture(scope="module")
def chrome():
    # A sharp picture for the README when a screenshot is asked for.
    scale = 2 if os.environ.get("LIKENESS_MONITOR_SCREENSHOT") else None
    driver = browser.start_chrome((1280, 900), scale=scale, console_log=True)
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
    if not (os.environ.get("LIKENESS_BROWSER_URL") or os.environ.get("COMFYUI_DIR")):
        # The bundled 2024-03 page is otherwise clean: any error at all is a finding (the favicon 404 is expected).
        # Newer frontends log their own errors offline (update checks, templates), so there only ours count.
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


# ---------------------------------------------------------------------------------------------------------------
# real training runs queued from the page: LikenessLoadCheckpoint -> LikenessDreamBoothTrain -> PreviewImage

CKPT_NAME = "monitor_tiny_sd15.safetensors"
SUBJECT_FOLDER = "monitor_subject"


@pytest.fixture(scope="module")
def training_inputs(request):
    """The tiny ComfyUI-loadable checkpoint and a few synthetic subject photos, in the test host's folders."""
    import numpy as np
    from PIL import Image, ImageDraw

    host = request.getfixturevalue("comfy_host")
    ckpt = request.getfixturevalue("comfy_tiny_checkpoint")
    dest = host.checkpoints_dir / CKPT_NAME
    if not dest.exists():
        dest.symlink_to(ckpt)
    folder = host.input_dir / SUBJECT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        im = Image.new("RGB", (96, 96), tuple(int(v) for v in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        x, y = (int(v) for v in rng.integers(10, 50, 2))
        d.ellipse([x, y, x + 40, y + 40], fill=(230, 190, 150))
        im.save(folder / f"subject_{i}.png")
    return host


def training_prompt(host, *, steps: int, sample_every: int, name: str, seed: int = 0) -> dict:
    """An API prompt for a tiny DreamBooth run; every input the nodes declare is filled (defaults from object_info)."""

    # Options: only what differs from the defaults; the page keeps the widgets' own defaults for the rest, as for a
    # user. (A value set through a newer frontend's float widget is rounded to the widget's step: 0.999 -> 1.0.)
    options = dict(
        sample_steps=2, sample_guidance=1.0, sample_at_end=False, save_state_on_stop=False, gradient_checkpointing=False
    )
    known = host.object_info("LikenessTrainingOptions")["input"]["optional"]
    options = {k: v for k, v in options.items() if k in known}
    train = host.defaults("LikenessDreamBoothTrain")
    train.update(
        model=["1", 3],
        options=["2", 0],
        output_name=name,
        instance_folder=SUBJECT_FOLDER,
        instance_prompt="a photo of sks thing",
        steps=steps,
        sample_every=sample_every,
        resolution=64,
        batch_size=1,
        learning_rate=1e-5,
        train_text_encoder=False,
        train_seed=seed,
        force_retrain=True,
    )
    return {
        "1": {"class_type": "LikenessLoadCheckpoint", "inputs": {"ckpt_name": CKPT_NAME}},
        "2": {"class_type": "LikenessTrainingOptions", "inputs": options},
        "3": {"class_type": "LikenessDreamBoothTrain", "inputs": train},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }


FOCUS_NODE = """
// show the whole training node at the top left (it is tall: many options + the monitor)
const node = app.graph.getNodeById(args[0]);
const rect = app.canvas.canvas.getBoundingClientRect();
const t = LiteGraph.NODE_TITLE_HEIGHT;
const scale = Math.min(1, (rect.height - 40) / (node.size[1] + t));
app.canvas.ds.scale = scale;
app.canvas.ds.offset = [20 / scale - node.pos[0], 20 / scale + t - node.pos[1]];
app.graph.setDirtyCanvas(true, true);
return scale;
"""

# What the Queue button does: the graph as the page serializes it, posted with this page's client id. The widgets our
# extensions add (monitor, info) must never reach the prompt.
QUEUE_FROM_PAGE = """
const {api} = await import("/scripts/api.js");
const p = await app.graphToPrompt();
const ours = ["likeness_monitor", "likeness_info"];
if (Object.values(p.output).some((n) => Object.keys(n.inputs).some((k) => ours.includes(k))))
  throw new Error("a Likeness widget leaked into the prompt");
const res = await api.queuePrompt(0, p);
return res.prompt_id;
"""

LOAD_AND_QUEUE = (
    """
const [prompt, queue] = args;
app.loadApiJson(prompt);
const node = app.graph.getNodeById(3);
if (!node || !node.likenessMonitor) throw new Error("the training node has no monitor");
// a readable layout: loader and options on the left, training in the middle, preview on the right
app.graph.getNodeById(1).pos = [0, 0];
app.graph.getNodeById(2).pos = [0, 160];
node.pos = [420, 0];
app.graph.getNodeById(4).pos = [440 + node.size[0], 0];
if (!queue) return null;
"""
    + QUEUE_FROM_PAGE
)


def wait_state(page: Page, node_id, predicate, timeout: float, what: str, host=None, prompt_id=None) -> dict:
    """Poll the monitor's state until ``predicate``; gives up early when the prompt ended without it."""
    deadline = time.monotonic() + timeout
    st = None
    ended = None
    while time.monotonic() < deadline:
        st = page.state(node_id)
        if st and predicate(st):
            return st
        if prompt_id is not None:
            if ended is None and host.history(prompt_id) is not None:
                ended = time.monotonic()
            if ended is not None and time.monotonic() - ended > 5:
                entry = host.history(prompt_id)
                raise AssertionError(f"the prompt ended before {what}: {entry.get('status')}; monitor state: {st}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; monitor state: {st}")


def save_monitor_screenshot(page: Page, node_id, path: Path) -> None:
    """A PNG of the training node (title, options and the monitor) as it is on screen now."""
    import io

    from PIL import Image

    page.js("app.canvas.show_info = false; app.canvas.draw(true, true)")
    x, y, w, h = page.js(
        "const n = app.graph.getNodeById(arguments[0]); const ds = app.canvas.ds;"
        "const r = app.canvas.canvas.getBoundingClientRect(); const t = LiteGraph.NODE_TITLE_HEIGHT;"
        "return [(n.pos[0] + ds.offset[0]) * ds.scale + r.left, (n.pos[1] - t + ds.offset[1]) * ds.scale + r.top,"
        " n.size[0] * ds.scale, (n.size[1] + t) * ds.scale];",
        node_id,
    )
    shot = Image.open(io.BytesIO(page.driver.get_screenshot_as_png()))
    k = shot.width / page.js("return window.innerWidth")
    m = 12
    box = [int((x - m) * k), int((y - m) * k), int((x + w + m) * k), int((y + h + m) * k)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    shot.crop(box).save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)


def test_monitor_follows_a_real_training_run(page, training_inputs):
    """Queue a tiny DreamBooth run from the page: the chart, the step counter and the samples follow it live."""
    host = training_inputs
    shot = os.environ.get("LIKENESS_MONITOR_SCREENSHOT")
    # the README picture gets a longer curve; 6 steps leave room to see the counter move live
    steps, every = (20, 5) if shot else (6, 2)
    prompt = training_prompt(host, steps=steps, sample_every=every, name="monitor_live", seed=1)
    prompt_id = page.js_async(LOAD_AND_QUEUE, prompt, True)
    assert prompt_id
    # An Apply node added after queueing: its 'source' list must offer the new file once the run is over.
    apply_id, sources = page.js(
        "const n = LiteGraph.createNode('LikenessApplyTrainedModel'); n.pos = [0, 600]; app.graph.add(n);"
        "return [n.id, n.widgets.find((w) => w.name === 'source').options.values];"
    )
    assert not [v for v in sources if "monitor_live" in v], sources
    page.js_async(FOCUS_NODE, 3)
    shot_taken = False
    running_steps = set()  # what the page showed while the run was going: it must move live
    deadline = time.monotonic() + 600
    ended_at = None
    while True:
        st = page.state(3)
        if ended_at is None and host.history(prompt_id) is not None:
            ended_at = time.monotonic()  # the prompt is over: the page gets a moment for the last events
        if ended_at is not None and time.monotonic() - ended_at > 5:
            break
        if st["status"] == "running":
            running_steps.add(st["step"])
            if shot and st["samples"] >= 1 and len(st["points"]) >= 4 and st["phase"] == "training":
                save_monitor_screenshot(page, 3, ROOT / shot)  # mid-run (the last such moment is kept)
                shot_taken = True
        elif st["status"] != "idle":
            break
        assert time.monotonic() < deadline, f"the run did not end in time; monitor state: {st}"
        time.sleep(0.2)
    result = host.wait(prompt_id, timeout=120)
    assert result.status == "success", result.error
    assert shot_taken or not shot, "no mid-run moment with a sample on screen for the screenshot"
    assert st["status"] == "finished", st
    assert len({n for n in running_steps if 0 < n < steps}) >= 2, f"no live updates seen: {sorted(running_steps)}"
    assert st["step"] == st["total"] == steps
    assert len(st["points"]) >= 3 and [p["step"] for p in st["points"]] == sorted({p["step"] for p in st["points"]})
    assert all(p["loss"] > 0 for p in st["points"])
    assert st["path"] and st["path"].endswith(".safetensors")
    # the page refreshed the file lists by itself (no reload): Apply's 'source' now lists the trained file
    page.wait_js(
        "return app.graph.getNodeById(arguments[0]).widgets.find((w) => w.name === 'source')"
        ".options.values.find((v) => v.includes('monitor_live')) || null;",
        30,
        apply_id,
        what="the new file in Likeness Apply Trained Model's source list",
    )
    # the counter on screen, the chart pixels, the sample thumbnails really loaded from /view
    el = "app.graph.getNodeById(3).likenessMonitor.element"
    assert page.js(f"return {el}.querySelector('.likeness-monitor-status b').textContent") == f"{steps}/{steps}"
    assert count_color_pixels(page, f"{el}.querySelector('canvas')", SMOOTH_RGB) > 30
    assert st["thumbnails"], st
    thumbs = page.wait_js(
        f"const im = [...{el}.querySelectorAll('.likeness-monitor-thumbs img')];"
        "return im.length && im.every((i) => i.complete && i.naturalWidth > 0) ? im.map((i) => i.src) : null;",
        30,
        what="the sample thumbnails to load",
    )
    assert all("/view?" in t and "type=temp" in t for t in thumbs)
    # the files the thumbnails show are the samples the node wrote into ComfyUI's temp folder
    files = {Path(p).name for p in result.images("3")}
    assert files and any(Path(t.split("filename=")[1].split("&")[0]).name in files for t in thumbs)


def test_reload_mid_run_shows_the_history_then_stop_ends_it(page, training_inputs):
    """A page reloaded mid-run catches up from /likeness/status; its Stop button interrupts the run."""
    host = training_inputs
    prompt = training_prompt(host, steps=400, sample_every=0, name="monitor_stop", seed=2)
    prompt_id = page.js_async(LOAD_AND_QUEUE, prompt, True)
    page.js_async(FOCUS_NODE, 3)
    wait_state(page, 3, lambda s: s["status"] == "running" and len(s["points"]) >= 3, 600, "3 steps", host, prompt_id)
    time.sleep(1.5)  # the 2024 page saves the workflow to localStorage every second; reload restores it

    page.reload()
    if not page.js("const n = app.graph.getNodeById(3); return !!(n && n.likenessMonitor)"):
        page.js_async(LOAD_AND_QUEUE, prompt, False)  # a frontend that does not restore the last workflow
    st = page.state(3)
    assert st["status"] == "running", st
    steps_seen = [p["step"] for p in st["points"]]
    assert len(steps_seen) >= 3 and steps_seen[0] == 1, f"history not restored after the reload: {steps_seen}"
    status = host.get_json("/likeness/status")
    assert status["run"]["node_id"] == "3" and status["run"]["state"] == "running"

    page.js_async(FOCUS_NODE, 3)
    page.click_monitor_button(3, "stop")
    st = wait_state(page, 3, lambda s: s["status"] != "running", 120, "the run to end after Stop")
    result = host.wait(prompt_id, timeout=120)
    assert result.status == "interrupted", result
    assert st["status"] == "stopped" and st["step"] < st["total"]
    assert host.get_json("/likeness/status")["run"]["state"] == "stopped"
    stop_disabled = page.js(
        "return app.graph.getNodeById(3).likenessMonitor.element.querySelector('.likeness-monitor-stop').disabled"
    )
    assert stop_disabled


QUEUE_API_PROMPT = (
    """
const [prompt] = args;
app.loadApiJson(prompt);
"""
    + QUEUE_FROM_PAGE
)


def test_apply_node_shows_how_its_result_was_trained(page, training_inputs):
    """Likeness Apply Trained Model, queued from the page on a file trained earlier, shows the file's info text."""
    host = training_inputs
    train = training_prompt(host, steps=2, sample_every=0, name="monitor_info", seed=3)
    train["2"]["inputs"] = {**host.defaults("LikenessTrainingOptions"), **train["2"]["inputs"]}  # no page to fill them
    host.run(train, timeout=600).check()
    choice = "checkpoints/likeness/monitor_info.safetensors"
    assert choice in host.object_info("LikenessApplyTrainedModel")["input"]["required"]["source"][0]
    page.reload()  # the page learns the new file the way a user's does
    apply = {
        "class_type": "LikenessApplyTrainedModel",
        "inputs": {"source": choice, "strength_model": 1.0, "strength_clip": 1.0},
    }
    prompt_id = page.js_async(QUEUE_API_PROMPT, sample_prompt(apply, "monitor_info_sample"))
    result = host.wait(prompt_id, timeout=300)
    assert result.status == "success", result.error
    text = page.wait_js("return app.graph.getNodeById(1).likenessInfo || null;", 30, what="the Apply node's info")
    assert "monitor_info.safetensors" in text and "steps: 2" in text and "a photo of sks thing" in text, text
    shown = page.js(
        "const w = app.graph.getNodeById(1).widgets.find((w) => w.name === 'likeness_info');"
        "return w ? (w.element ? w.element.textContent : w.text) : null;"
    )
    assert shown == text
    # queued again with the info on the node: the widget stays out of the prompt, which the server accepts
    again = host.wait(page.js_async(QUEUE_FROM_PAGE), timeout=300)
    assert again.status == "success", again.error
    # on screen: the text box is laid out inside the page, with a real size
    if page.js("return !!app.graph.getNodeById(1).likenessInfoWidget.element"):
        box = page.js(
            "const r = app.graph.getNodeById(1).likenessInfoWidget.element.getBoundingClientRect();"
            "return [r.width, r.height];"
        )
        assert box[0] > 50 and box[1] > 20, box


def test_monitor_only_on_training_nodes(page):
    """The real training node types get a monitor (and keep their own widgets); other nodes do not."""
    found = page.js_async(
        """
        const out = {};
        for (const type of ["LikenessDreamBoothTrain", "LikenessLoRATrain", "LikenessLoadCheckpoint", "KSampler"]) {
          if (!LiteGraph.registered_node_types[type]) continue;
          const n = LiteGraph.createNode(type);
          app.graph.add(n);
          out[type] = {monitor: !!n.likenessMonitor, widgets: n.widgets.map((w) => w.name)};
          app.graph.remove(n);
        }
        return out;
        """
    )
    assert found["LikenessDreamBoothTrain"]["monitor"], found
    assert "steps" in found["LikenessDreamBoothTrain"]["widgets"]
    assert found["LikenessDreamBoothTrain"]["widgets"][-1] == "likeness_monitor"
    if "LikenessLoRATrain" in found:  # the LoRA node, once the pack has it
        assert found["LikenessLoRATrain"]["monitor"], found
    assert not found["LikenessLoadCheckpoint"]["monitor"] and not found["KSampler"]["monitor"]
