// Likeness training monitor: a live loss chart, step/total, it/s, ETA, learning rate, the latest sample images,
// the likeness and bleed curves with the latest probe images (likeness_eval.js) and a Stop button on the Likeness
// training nodes (LikenessDreamBoothTrain*, LikenessLoRATrain*).
//
// Data comes from the server's `likeness.start|progress|sample|evaluation|end` events (nodes/bridge.py `send_event`) and, when
// the page is opened or reloaded mid-run, from `GET /likeness/status`. Drawing is plain canvas (no libraries, no
// network). Works with the 2024 frontend (LiteGraph + `addDOMWidget` from scripts/domWidget.js) and the current
// Vue frontend (same `addDOMWidget` API through the `scripts/*.js` shims); when a frontend has no DOM widgets the
// monitor is drawn on the graph canvas by a custom widget instead. What exists is detected at run time.
//
// For tests and other extensions each monitored node gets a read-only `node.likenessMonitor`:
// `{mode: "dom"|"canvas", state (a snapshot), element, stop(), setLogScale(on)}`. Setting
// `window.LikenessMonitorConfig = {mode: "canvas"}` before a node is created forces the canvas drawing (tests).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { EVAL_COLORS, EVAL_HEIGHT, PROBE_SIZE, applyEvaluation, drawLikenessChart, evalSummary, mergeEvaluations, probeImages } from "./likeness_eval.js";

const EXT_NAME = "Likeness.TrainingMonitor";
const NODE_PREFIXES = ["LikenessDreamBoothTrain", "LikenessLoRATrain"];
const EVENTS = ["start", "progress", "sample", "evaluation", "end"];
const WIDGET_NAME = "likeness_monitor";
const MIN_HEIGHT = 300 + EVAL_HEIGHT + PROBE_SIZE + 24; // px of node space the monitor asks for
const CHART_HEIGHT = 150; // canvas-mode chart height
const THUMB_SIZE = 64;
const MAX_THUMBS = 4;
const SMOOTHING = 0.9; // EMA factor when an event carries no loss_smoothed
const COLORS = {
  bg: "#1b1d22",
  grid: "#2f333b",
  axis: "#8a909c",
  text: "#d6d9df",
  dim: "#8a909c",
  raw: "rgba(110, 168, 254, 0.45)",
  smooth: "#ffb347",
  sample: "#7bd88f",
  stop: "#d9534f",
  validation: "#c678dd",
};

// ---------------------------------------------------------------------------------------------------------------
// run records: one per training node id (the prompt's node id), kept across redraws and node re-creation

const runs = new Map(); // node_id (string) -> run record
let latestRunId = null; // node_id of the most recently started/updated run
const monitors = new Set(); // attached monitors (one per node)

function newRun(nodeId, data = {}) {
  return {
    node_id: nodeId,
    kind: data.kind ?? null,
    name: data.name ?? null,
    status: "running",
    total: numberOr(data.total, 0),
    step: 0,
    phase: null,
    loss: null,
    lr: null,
    it_s: null,
    eta: null,
    elapsed: null,
    message: null,
    memory: typeof data.memory === "string" ? data.memory : null, // the planner's estimate and what it changed
    path: null,
    points: new Map(), // step -> {step, loss, smoothed}
    samples: [], // [{step, images: [{filename, subfolder, type, url}], prompts}]
    evals: [], // likeness evaluations (likeness_eval.js applyEvaluation)
    ema: null,
    updated: Date.now(),
  };
}

function numberOr(v, fallback) {
  return typeof v === "number" && Number.isFinite(v) ? v : fallback;
}

function runFor(nodeId, create = true) {
  const key = String(nodeId ?? "");
  let run = runs.get(key);
  if (!run && create) {
    run = newRun(key);
    runs.set(key, run);
  }
  return run;
}

function viewUrl(img) {
  const params = new URLSearchParams({
    filename: String(img.filename ?? ""),
    type: String(img.type ?? "temp"),
    subfolder: String(img.subfolder ?? ""),
  });
  return api.apiURL(`/view?${params.toString()}`);
}

function applyEvent(event, data) {
  if (!data || typeof data !== "object") return null;
  const key = String(data.node_id ?? "");
  let run;
  if (event === "start") {
    run = newRun(key, data);
    runs.set(key, run);
  } else {
    run = runFor(key);
  }
  if (event === "progress") {
    run.total = numberOr(data.total, run.total);
    run.step = numberOr(data.step, run.step);
    run.phase = data.phase ?? run.phase;
    run.lr = numberOr(data.lr, run.lr);
    run.it_s = numberOr(data.it_s, run.it_s);
    run.eta = numberOr(data.eta, run.eta);
    // elapsed only grows within a run (phase-change events may carry 0)
    const elapsed = numberOr(data.elapsed, null);
    if (elapsed !== null && (run.elapsed === null || elapsed > run.elapsed)) run.elapsed = elapsed;
    run.loss_instance = numberOr(data.loss_instance, run.loss_instance ?? null);
    run.loss_prior = numberOr(data.loss_prior, run.loss_prior ?? null);
    // validation loss (phase "validation"): its own curve, one point per evaluation
    const val = numberOr(data.loss_validation, null);
    if (val !== null) (run.validation ??= new Map()).set(run.step, { step: run.step, loss: val });
    const loss = numberOr(data.loss, null);
    if (loss !== null) {
      run.loss = loss;
      let smoothed = numberOr(data.loss_smoothed, null);
      run.ema = run.ema === null ? loss : SMOOTHING * run.ema + (1 - SMOOTHING) * loss;
      if (smoothed === null) smoothed = run.ema;
      run.points.set(run.step, { step: run.step, loss, smoothed });
    }
  } else if (event === "sample") {
    const images = (Array.isArray(data.images) ? data.images : [])
      .filter((im) => im && im.filename)
      .map((im) => ({ filename: im.filename, subfolder: im.subfolder ?? "", type: im.type ?? "temp", url: viewUrl(im) }));
    const step = numberOr(data.step, run.step);
    if (images.length && !run.samples.some((s) => s.step === step && s.images[0]?.url === images[0].url)) {
      run.samples.push({ step, images, prompts: Array.isArray(data.prompts) ? data.prompts : [] });
      if (run.samples.length > 50) run.samples.splice(0, run.samples.length - 50);
    }
  } else if (event === "evaluation") {
    applyEvaluation(run, data, viewUrl);
  } else if (event === "end") {
    const state = data.state;
    run.status = state === "stopped" || state === "error" ? state : "finished";
    run.message = data.message ?? null;
    run.path = data.path ?? null;
    if (run.status === "finished" && run.total) run.step = Math.max(run.step, run.total);
    run.eta = run.status === "finished" ? 0 : run.eta;
  }
  run.updated = Date.now();
  latestRunId = key;
  return run;
}

// Catch up with a run that started before this page was (re)loaded.
async function loadStatus() {
  let snap;
  try {
    const resp = await api.fetchApi("/likeness/status", { cache: "no-store" });
    if (!resp.ok) return;
    snap = await resp.json();
  } catch {
    return; // an older server without the route, or offline: live events still work
  }
  if (!snap || !snap.run) return;
  // Rebuild the run from the server's record, then merge what arrived live while the request was out.
  const live = runs.get(String(snap.run.node_id ?? ""));
  applyEvent("start", snap.run);
  for (const p of snap.history ?? []) applyEvent("progress", p);
  for (const s of snap.samples ?? []) applyEvent("sample", s);
  for (const e of snap.evaluations ?? []) applyEvent("evaluation", e);
  if (snap.run.state && snap.run.state !== "running") applyEvent("end", snap.run);
  else if (snap.run.last) applyEvent("progress", snap.run.last);
  const run = runFor(snap.run.node_id);
  if (live) {
    for (const p of live.points.values()) if (!run.points.has(p.step)) run.points.set(p.step, p);
    for (const smp of live.samples) {
      if (!run.samples.some((x) => x.step === smp.step && x.images[0]?.url === smp.images[0]?.url)) run.samples.push(smp);
    }
    run.samples.sort((a, b) => a.step - b.step);
    mergeEvaluations(run, live);
    if (live.step > run.step) Object.assign(run, { step: live.step, phase: live.phase, loss: live.loss, eta: live.eta });
    if (live.status !== "running") Object.assign(run, { status: live.status, message: live.message, path: live.path });
  }
  refreshAll();
}

// ---------------------------------------------------------------------------------------------------------------
// formatting

function fmtDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function fmtNum(v, digits = 3) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(digits - 1);
  return v.toPrecision(digits);
}

function statusLine(run) {
  if (!run) return "waiting for training to start";
  const label = { running: run.phase || "running", finished: "finished", stopped: "stopped", error: "error" };
  return label[run.status] ?? run.status;
}

// ---------------------------------------------------------------------------------------------------------------
// chart (shared by both modes)

function chartPoints(run) {
  if (!run) return [];
  return [...run.points.values()].sort((a, b) => a.step - b.step);
}

// Draw the loss chart into the box (x, y, w, h) of ctx (units: CSS px of the current transform).
// Returns what was drawn: {points, logScale} (read by tests through the state snapshot).
function drawChart(ctx, x, y, w, h, run, logScale) {
  const pts = chartPoints(run);
  ctx.save();
  ctx.fillStyle = COLORS.bg;
  ctx.fillRect(x, y, w, h);
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "middle";
  const padL = 44;
  const padR = 8;
  const padT = 8;
  const padB = 16;
  const px = x + padL;
  const py = y + padT;
  const pw = Math.max(10, w - padL - padR);
  const ph = Math.max(10, h - padT - padB);

  const losses = [];
  for (const p of pts) {
    losses.push(p.loss);
    if (typeof p.smoothed === "number") losses.push(p.smoothed);
  }
  const valPts = [...(run?.validation?.values() ?? [])].sort((a, b) => a.step - b.step);
  for (const p of valPts) losses.push(p.loss);
  const positive = losses.filter((v) => v > 0);
  const useLog = logScale && positive.length > 0;
  let lo = useLog ? Math.min(...positive) : Math.min(...losses);
  let hi = useLog ? Math.max(...positive) : Math.max(...losses);
  if (!losses.length) {
    lo = useLog ? 0.01 : 0;
    hi = 1;
  }
  const tf = (v) => (useLog ? Math.log10(Math.max(v, lo)) : v);
  let tlo = tf(lo);
  let thi = tf(hi);
  if (thi - tlo < 1e-9) {
    const pad = useLog ? 0.1 : Math.max(Math.abs(thi) * 0.05, 1e-3);
    tlo -= pad;
    thi += pad;
  } else {
    const pad = (thi - tlo) * 0.06;
    tlo -= pad;
    thi += pad;
  }
  const lastStep = Math.max(pts.length ? pts[pts.length - 1].step : 0, valPts.length ? valPts[valPts.length - 1].step : 0);
  const xmax = Math.max(run?.total || 0, lastStep, 1);
  const sx = (s) => px + (s / xmax) * pw;
  const sy = (v) => py + ph - ((tf(v) - tlo) / (thi - tlo)) * ph;

  // grid and y labels
  ctx.strokeStyle = COLORS.grid;
  ctx.lineWidth = 1;
  ctx.fillStyle = COLORS.dim;
  ctx.textAlign = "right";
  for (let i = 0; i <= 4; i++) {
    const t = tlo + ((thi - tlo) * i) / 4;
    const gy = py + ph - (ph * i) / 4;
    ctx.beginPath();
    ctx.moveTo(px, Math.round(gy) + 0.5);
    ctx.lineTo(px + pw, Math.round(gy) + 0.5);
    ctx.stroke();
    ctx.fillText(fmtNum(useLog ? 10 ** t : t, 2), px - 4, gy);
  }
  // x labels
  ctx.textAlign = "left";
  ctx.fillText("0", px, py + ph + 9);
  ctx.textAlign = "right";
  ctx.fillText(String(xmax), px + pw, py + ph + 9);
  ctx.textAlign = "center";
  ctx.fillText(useLog ? "loss (log)" : "loss", px + pw / 2, py + ph + 9);

  // sample markers
  ctx.strokeStyle = COLORS.sample;
  for (const s of run?.samples ?? []) {
    const mx = Math.round(sx(s.step)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(mx, py + ph);
    ctx.lineTo(mx, py + ph - 6);
    ctx.stroke();
  }

  ctx.beginPath();
  ctx.rect(px, py, pw, ph);
  ctx.clip();
  const line = (key, color, width, points = pts) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let started = false;
    for (const p of points) {
      const v = p[key];
      if (typeof v !== "number" || !Number.isFinite(v)) continue;
      const X = sx(p.step);
      const Y = sy(v);
      if (started) ctx.lineTo(X, Y);
      else ctx.moveTo(X, Y);
      started = true;
    }
    ctx.stroke();
  };
  // legend
  ctx.textAlign = "right";
  ctx.fillStyle = COLORS.smooth;
  ctx.fillText("smoothed", px + pw - 4, py + 6);
  ctx.fillStyle = COLORS.raw;
  ctx.fillText("raw", px + pw - 56, py + 6);
  line("loss", COLORS.raw, 1);
  line("smoothed", COLORS.smooth, 2);
  if (valPts.length) {
    ctx.fillStyle = COLORS.validation;
    ctx.fillText("validation", px + pw - 80, py + 6);
    line("loss", COLORS.validation, 2, valPts);
    for (const p of valPts) {
      ctx.beginPath();
      ctx.arc(sx(p.step), sy(p.loss), 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
  }
  if (pts.length && pts.length < 60) {
    ctx.fillStyle = COLORS.raw;
    for (const p of pts) {
      ctx.beginPath();
      ctx.arc(sx(p.step), sy(p.loss), 2, 0, Math.PI * 2);
      ctx.fill();
    }
  }
  ctx.restore();
  return { points: pts.length, logScale: useLog, validation: valPts.length };
}

// ---------------------------------------------------------------------------------------------------------------
// the monitor attached to one node

const STYLE = `
.likeness-monitor { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; padding: 4px;
  background: ${COLORS.bg}; color: ${COLORS.text}; border-radius: 6px; font: 11px sans-serif; overflow: hidden; }
.likeness-monitor * { box-sizing: border-box; }
.likeness-monitor-head { display: flex; align-items: center; gap: 6px; min-height: 20px; }
.likeness-monitor-status { flex: 1; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.likeness-monitor-status b { color: ${COLORS.smooth}; font-weight: 600; }
.likeness-monitor button { font: 11px sans-serif; padding: 1px 8px; border-radius: 4px; cursor: pointer;
  border: 1px solid #555; background: #2b2e35; color: ${COLORS.text}; }
.likeness-monitor button:disabled { opacity: 0.45; cursor: default; }
.likeness-monitor button.likeness-monitor-stop:not(:disabled) { background: ${COLORS.stop}; border-color: ${COLORS.stop};
  color: #fff; }
.likeness-monitor button.likeness-monitor-on { border-color: ${COLORS.smooth}; color: ${COLORS.smooth}; }
.likeness-monitor-chart { flex: 1 1 0; min-height: 60px; width: 100%; display: block; }
.likeness-monitor-stats { display: grid; grid-template-columns: repeat(4, auto); gap: 0 8px; color: ${COLORS.dim}; }
.likeness-monitor-stats span b { color: ${COLORS.text}; font-weight: 500; }
.likeness-monitor-thumbs { display: flex; gap: 4px; height: ${THUMB_SIZE}px; flex: 0 0 ${THUMB_SIZE}px; }
.likeness-monitor-thumbs:empty { display: none; }
.likeness-monitor-thumbs img { height: ${THUMB_SIZE}px; width: ${THUMB_SIZE}px; object-fit: cover; border-radius: 3px;
  background: #000; cursor: pointer; }
.likeness-monitor-thumbs img.likeness-monitor-broken { visibility: hidden; }
.likeness-monitor-msg { color: ${COLORS.dim}; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.likeness-monitor-likeness { width: 100%; height: ${EVAL_HEIGHT}px; flex: 0 0 ${EVAL_HEIGHT}px; display: block;
  min-width: 0; min-height: 0; }
.likeness-monitor-eval { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: ${EVAL_COLORS.likeness};
  min-width: 0; }
.likeness-monitor-eval[data-state="no face"] { color: ${EVAL_COLORS.noFace}; }
.likeness-monitor-eval[data-state="off"], .likeness-monitor-eval[data-state="waiting"] { color: ${COLORS.dim}; }
.likeness-monitor-probes { display: flex; gap: 3px; height: ${PROBE_SIZE}px; flex: 0 0 ${PROBE_SIZE}px; min-width: 0;
  overflow: hidden; }
.likeness-monitor-probes:empty { display: none; }
.likeness-monitor-probes img { height: ${PROBE_SIZE}px; width: ${PROBE_SIZE}px; object-fit: cover; border-radius: 3px;
  background: #000; }
.likeness-monitor-msg:empty { display: none; }
`;

function ensureStyle() {
  if (document.getElementById("likeness-monitor-style")) return;
  const el = document.createElement("style");
  el.id = "likeness-monitor-style";
  el.textContent = STYLE;
  document.head.append(el);
}

function make(tag, cls, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text != null) el.textContent = text;
  return el;
}

class Monitor {
  constructor(node) {
    this.node = node;
    this.logScale = !!node.properties?.likeness_log_scale;
    this.lastDraw = { points: 0, logScale: false };
    this.thumbImages = new Map(); // url -> HTMLImageElement (canvas mode)
    this.buttons = {}; // canvas mode hit boxes
    this.mode = typeof node.addDOMWidget === "function" && window.LikenessMonitorConfig?.mode !== "canvas" ? "dom" : "canvas";
    const before = typeof node.computeSize === "function" ? node.computeSize() : null;
    if (this.mode === "dom") this.buildDom();
    else this.buildCanvasWidget();
    this.fitNode(before);
  }

  run() {
    const own = runs.get(String(this.node.id));
    if (own) return own;
    // The run of a node this graph does not have (an API-queued prompt, a group node): show it on every monitor.
    // It stays on a monitor that showed it while running, so the end result remains visible.
    const latest = latestRunId !== null ? runs.get(latestRunId) : null;
    if (latest && !graphHasNode(latest.node_id) && (latest.status === "running" || this.adopted === latest)) {
      this.adopted = latest;
      return latest;
    }
    return null;
  }

  // -- DOM mode ---------------------------------------------------------------------------------------------------
  buildDom() {
    ensureStyle();
    const root = make("div", "likeness-monitor");
    root.dataset.likenessMonitor = String(this.node.id);
    const head = make("div", "likeness-monitor-head");
    this.statusEl = make("div", "likeness-monitor-status");
    this.logBtn = make("button", "likeness-monitor-log", "log");
    this.logBtn.title = "Logarithmic loss axis";
    this.stopBtn = make("button", "likeness-monitor-stop", "Stop");
    this.stopBtn.title = "Stop training (ComfyUI's interrupt); the run ends as 'stopped'";
    head.append(this.statusEl, this.logBtn, this.stopBtn);
    this.canvas = make("canvas", "likeness-monitor-chart");
    this.statsEl = make("div", "likeness-monitor-stats");
    this.thumbsEl = make("div", "likeness-monitor-thumbs");
    this.msgEl = make("div", "likeness-monitor-msg");
    this.likenessCanvas = make("canvas", "likeness-monitor-likeness");
    this.evalEl = make("div", "likeness-monitor-eval");
    this.probesEl = make("div", "likeness-monitor-probes");
    root.append(head, this.canvas, this.likenessCanvas, this.evalEl, this.probesEl, this.statsEl, this.thumbsEl, this.msgEl);
    for (const el of [this.logBtn, this.stopBtn]) {
      el.addEventListener("pointerdown", (e) => e.stopPropagation());
    }
    this.logBtn.addEventListener("click", () => this.setLogScale(!this.logScale));
    this.stopBtn.addEventListener("click", () => this.stop());
    this.element = root;
    this.widget = this.node.addDOMWidget(WIDGET_NAME, "likeness-monitor", root, {
      serialize: false,
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => MIN_HEIGHT,
      getHeight: () => MIN_HEIGHT,
      onDraw: () => this.drawDomChart(false),
    });
    if (this.widget) this.widget.serialize = false;
    // Redraw the chart when its box changes size (frontends that position DOM widgets without calling onDraw).
    if (typeof ResizeObserver === "function") {
      this.resizeObserver = new ResizeObserver(() => this.drawDomChart(false));
      this.resizeObserver.observe(this.canvas);
    }
    this.render();
  }

  drawDomChart(force) {
    const c = this.canvas;
    if (!c || !c.isConnected) return;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    const W = Math.round(w * dpr);
    const H = Math.round(h * dpr);
    if (!force && c.width === W && c.height === H && !this.chartDirty) return;
    if (c.width !== W) c.width = W;
    if (c.height !== H) c.height = H;
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.lastDraw = drawChart(ctx, 0, 0, w, h, this.run(), this.logScale);
    this.drawDomLikeness(dpr);
    this.chartDirty = false;
  }

  drawDomLikeness(dpr) {
    const c = this.likenessCanvas;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr)) c.width = Math.round(w * dpr);
    if (c.height !== Math.round(h * dpr)) c.height = Math.round(h * dpr);
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.likenessDraw = drawLikenessChart(ctx, 0, 0, w, h, this.run(), chartXmax(this.run()), fmtNum);
  }

  renderDom(run) {
    this.element.dataset.likenessMonitor = String(this.node.id); // the id is assigned when the node joins a graph
    this.statusEl.replaceChildren();
    const b = make("b", null, run ? `${run.step}/${run.total || "?"}` : "");
    this.statusEl.append(b, document.createTextNode(` ${statusLine(run)}`));
    this.statusEl.title = run?.memory ?? ""; // hover: predicted peak memory and the settings changed to fit
    this.stopBtn.disabled = !(run && run.status === "running");
    this.logBtn.classList.toggle("likeness-monitor-on", this.logScale);
    const stats = [
      ["loss", fmtNum(run?.loss, 4)],
      ["it/s", fmtNum(run?.it_s, 3)],
      ["ETA", fmtDuration(run?.eta)],
      ["lr", fmtNum(run?.lr, 3)],
      ["elapsed", fmtDuration(run?.elapsed)],
    ];
    // prior preservation: both loss terms (without it the subject term is the loss itself)
    if (run?.loss_prior != null) {
      stats.push(["subject", fmtNum(run.loss_instance, 4)], ["prior", fmtNum(run.loss_prior, 4)]);
    }
    this.statsEl.replaceChildren(
      ...stats.map(([k, v]) => {
        const s = make("span", null, `${k} `);
        s.append(make("b", null, v));
        return s;
      }),
    );
    const latest = run?.samples?.[run.samples.length - 1];
    const urls = (latest?.images ?? []).slice(0, MAX_THUMBS).map((im) => im.url);
    const shown = [...this.thumbsEl.querySelectorAll("img")].map((im) => im.dataset.src);
    if (urls.join("\n") !== shown.join("\n")) {
      this.thumbsEl.replaceChildren(
        ...urls.map((url, i) => {
          const img = make("img");
          img.dataset.src = url;
          img.alt = `sample at step ${latest.step}`;
          img.title = latest.prompts?.[i] ? `step ${latest.step}: ${latest.prompts[i]}` : `step ${latest.step}`;
          img.addEventListener("click", () => window.open(url, "_blank"));
          img.addEventListener("load", () => this.node.setDirtyCanvas?.(true, false));
          img.addEventListener("error", () => img.classList.add("likeness-monitor-broken"));
          img.src = url;
          return img;
        }),
      );
    }
    this.msgEl.textContent = run?.message || (run?.path ? `saved: ${run.path}` : "");
    const likeness = evalSummary(run);
    this.evalEl.textContent = likeness.text;
    this.evalEl.dataset.state = likeness.state;
    const probes = probeImages(run);
    if (probes.map((p) => p.url).join("\n") !== [...this.probesEl.querySelectorAll("img")].map((i) => i.dataset.src).join("\n")) {
      this.probesEl.replaceChildren(
        ...probes.map((p) => {
          const img = make("img");
          img.dataset.src = p.url;
          img.alt = img.title = p.title;
          img.addEventListener("error", () => img.classList.add("likeness-monitor-broken"));
          img.src = p.url;
          return img;
        }),
      );
    }
    this.element.title = run?.name ? `${run.kind ?? "training"}: ${run.name}` : "";
    this.chartDirty = true;
    this.drawDomChart(true);
  }

  // -- canvas mode ------------------------------------------------------------------------------------------------
  buildCanvasWidget() {
    const monitor = this;
    this.widget = {
      name: WIDGET_NAME,
      type: "likeness-monitor",
      value: "",
      options: { serialize: false },
      serialize: false,
      computeSize(width) {
        return [width, MIN_HEIGHT];
      },
      draw(ctx, node, width, y) {
        monitor.drawCanvas(ctx, width, y);
      },
      mouse(event, pos) {
        return monitor.canvasMouse(event, pos);
      },
    };
    this.node.addCustomWidget(this.widget);
  }

  drawCanvas(ctx, width, y) {
    const run = this.run();
    const m = 8;
    const x0 = m;
    const w = width - 2 * m;
    ctx.save();
    ctx.fillStyle = COLORS.bg;
    ctx.fillRect(x0, y, w, MIN_HEIGHT - 4);
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    // header: status + buttons
    const hy = y + 12;
    const stopW = 44;
    const logW = 32;
    const stopX = x0 + w - stopW - 4;
    const logX = stopX - logW - 4;
    ctx.textAlign = "left";
    ctx.fillStyle = COLORS.smooth;
    const stepText = run ? `${run.step}/${run.total || "?"}` : "";
    ctx.fillText(stepText, x0 + 4, hy);
    ctx.fillStyle = COLORS.text;
    ctx.fillText(statusLine(run), x0 + 8 + ctx.measureText(stepText).width, hy);
    const running = !!(run && run.status === "running");
    const button = (bx, bw, label, on, fill) => {
      ctx.fillStyle = fill;
      ctx.strokeStyle = on ? COLORS.smooth : "#555";
      ctx.beginPath();
      ctx.rect(bx, hy - 8, bw, 16);
      ctx.fill();
      ctx.stroke();
      ctx.fillStyle = COLORS.text;
      ctx.textAlign = "center";
      ctx.fillText(label, bx + bw / 2, hy);
    };
    button(logX, logW, "log", this.logScale, "#2b2e35");
    button(stopX, stopW, "Stop", false, running ? COLORS.stop : "#2b2e35");
    this.buttons = { log: [logX, hy - 8, logW, 16], stop: running ? [stopX, hy - 8, stopW, 16] : null };
    // chart
    const cy = y + 24;
    this.lastDraw = drawChart(ctx, x0, cy, w, CHART_HEIGHT, run, this.logScale);
    // stats
    const sy = cy + CHART_HEIGHT + 10;
    ctx.textAlign = "left";
    ctx.fillStyle = COLORS.dim;
    const stats = `loss ${fmtNum(run?.loss, 4)}   it/s ${fmtNum(run?.it_s, 3)}   ETA ${fmtDuration(run?.eta)}   lr ${fmtNum(run?.lr, 3)}`;
    ctx.fillText(stats, x0 + 4, sy);
    // thumbnails
    const latest = run?.samples?.[run.samples.length - 1];
    let tx = x0 + 4;
    const ty = sy + 10;
    for (const im of (latest?.images ?? []).slice(0, MAX_THUMBS)) {
      const img = this.thumb(im.url);
      if (img.complete && img.naturalWidth) ctx.drawImage(img, tx, ty, THUMB_SIZE, THUMB_SIZE);
      else {
        ctx.fillStyle = "#000";
        ctx.fillRect(tx, ty, THUMB_SIZE, THUMB_SIZE);
      }
      tx += THUMB_SIZE + 4;
    }
    // likeness: chart, line, probe thumbnails
    const ly = ty + THUMB_SIZE + 6;
    this.likenessDraw = drawLikenessChart(ctx, x0, ly, w, EVAL_HEIGHT, run, chartXmax(run), fmtNum);
    const likeness = evalSummary(run);
    ctx.textAlign = "left";
    ctx.fillStyle = likeness.state === "no face" ? EVAL_COLORS.noFace : likeness.state === "measured" ? EVAL_COLORS.likeness : COLORS.dim;
    ctx.fillText(likeness.text, x0 + 4, ly + EVAL_HEIGHT + 8, w - 8);
    let px = x0 + 4;
    for (const p of probeImages(run)) {
      const img = this.thumb(p.url);
      if (img.complete && img.naturalWidth) ctx.drawImage(img, px, ly + EVAL_HEIGHT + 16, PROBE_SIZE, PROBE_SIZE);
      px += PROBE_SIZE + 3;
    }
    ctx.restore();
  }

  thumb(url) {
    let img = this.thumbImages.get(url);
    if (!img) {
      img = new Image();
      img.onload = () => this.node.setDirtyCanvas?.(true, false);
      img.src = url;
      this.thumbImages.set(url, img);
      if (this.thumbImages.size > 2 * MAX_THUMBS + 12) this.thumbImages.delete(this.thumbImages.keys().next().value);
    }
    return img;
  }

  canvasMouse(event, pos) {
    const type = event.type;
    if (type !== "pointerdown" && type !== "mousedown") return false;
    const inside = (r) => r && pos[0] >= r[0] && pos[0] <= r[0] + r[2] && pos[1] >= r[1] && pos[1] <= r[1] + r[3];
    if (inside(this.buttons.log)) {
      this.setLogScale(!this.logScale);
      return true;
    }
    if (inside(this.buttons.stop)) {
      this.stop();
      return true;
    }
    return false;
  }

  // -- shared -----------------------------------------------------------------------------------------------------
  fitNode(before) {
    // Grow the node so the monitor gets its height (the frontend does not always count a DOM widget's height).
    const node = this.node;
    if (!node.size) return;
    const w = Math.max(node.size[0], 360);
    let h;
    if (this.mode === "canvas" && typeof node.computeSize === "function") h = node.computeSize()[1];
    else h = (before ? before[1] : node.size[1]) + MIN_HEIGHT + 8;
    h = Math.max(node.size[1], h);
    if (typeof node.setSize === "function") node.setSize([w, h]);
    else node.size = [w, h];
  }

  setLogScale(on) {
    this.logScale = !!on;
    if (this.node.properties) this.node.properties.likeness_log_scale = this.logScale;
    this.render();
  }

  async stop() {
    const run = this.run();
    if (run && run.status === "running") run.phase = "stopping";
    this.render();
    try {
      await api.interrupt();
    } catch (e) {
      console.warn(`${EXT_NAME}: interrupt failed`, e);
    }
  }

  render() {
    const run = this.run();
    if (this.mode === "dom") this.renderDom(run);
    this.node.setDirtyCanvas?.(true, false);
  }

  snapshot() {
    const run = this.run();
    const pts = chartPoints(run);
    const latest = run?.samples?.[run.samples.length - 1];
    return Object.freeze({
      mode: this.mode,
      node_id: run?.node_id ?? null,
      status: run?.status ?? "idle",
      phase: run?.phase ?? null,
      step: run?.step ?? 0,
      total: run?.total ?? 0,
      loss: run?.loss ?? null,
      lr: run?.lr ?? null,
      it_s: run?.it_s ?? null,
      eta: run?.eta ?? null,
      elapsed: run?.elapsed ?? null,
      logScale: this.logScale,
      points: pts.map((p) => Object.freeze({ ...p })),
      validation: [...(run?.validation?.values() ?? [])].map((p) => Object.freeze({ ...p })),
      samples: (run?.samples ?? []).length,
      thumbnails: (latest?.images ?? []).slice(0, MAX_THUMBS).map((im) => im.url),
      drawn: Object.freeze({ ...this.lastDraw }),
      // canvas mode: the buttons' boxes in node coordinates ([x, y, w, h]; stop is null when disabled)
      buttons: this.mode === "canvas" ? Object.freeze({ ...this.buttons }) : null,
      message: run?.message ?? null,
      path: run?.path ?? null,
      evaluations: (run?.evals ?? []).map((e) => Object.freeze({ step: e.step, state: e.state, likeness: e.likeness,
        bleed: e.bleed, no_face: e.no_face, probes: e.probes, best_step: e.best_step, message: e.message })),
      likeness: Object.freeze({ ...evalSummary(run), latest: undefined }),
      likenessDrawn: Object.freeze({ ...(this.likenessDraw ?? { likeness: 0, bleed: 0, state: "waiting" }) }),
      probes: probeImages(run).map((p) => p.url),
    });
  }
}

function chartXmax(run) {
  const pts = chartPoints(run);
  const evals = run?.evals ?? [];
  return Math.max(run?.total || 0, pts.length ? pts[pts.length - 1].step : 0, evals.length ? evals[evals.length - 1].step : 0, 1);
}

function graphHasNode(nodeId) {
  const graph = app.graph;
  if (!graph || nodeId == null || nodeId === "") return false;
  return !!graph.getNodeById?.(Number.isNaN(Number(nodeId)) ? nodeId : Number(nodeId));
}

function refreshAll() {
  for (const m of monitors) m.render();
  app.graph?.setDirtyCanvas?.(true, false);
}

function isTrainingNode(name) {
  return typeof name === "string" && NODE_PREFIXES.some((p) => name.startsWith(p));
}

function attach(node) {
  if (node.likenessMonitor) return;
  let monitor;
  try {
    monitor = new Monitor(node);
  } catch (e) {
    console.warn(`${EXT_NAME}: could not add the monitor to node ${node.id}`, e);
    return;
  }
  monitors.add(monitor);
  Object.defineProperty(node, "likenessMonitor", {
    configurable: true,
    enumerable: false,
    value: Object.freeze({
      get mode() {
        return monitor.mode;
      },
      get state() {
        return monitor.snapshot();
      },
      get element() {
        return monitor.element ?? null;
      },
      stop: () => monitor.stop(),
      setLogScale: (on) => monitor.setLogScale(on),
    }),
  });
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    monitors.delete(monitor);
    monitor.resizeObserver?.disconnect();
    return onRemoved?.apply(this, arguments);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// registration

// A finished run wrote a new file: refresh the file lists of every node (what ComfyUI's Refresh button does), so
// that Likeness Apply Trained Model's 'source' lists it without a page reload. Frontends without the call skip it.
function refreshFileLists() {
  try {
    const done = app.refreshComboInNodes?.();
    done?.catch?.((err) => console.warn("[Likeness] could not refresh the file lists", err));
  } catch (err) {
    console.warn("[Likeness] could not refresh the file lists", err);
  }
}

let listening = false;
function listen() {
  if (listening) return;
  listening = true;
  for (const ev of EVENTS) {
    api.addEventListener(`likeness.${ev}`, (e) => {
      const run = applyEvent(ev, e.detail);
      if (run) refreshAll();
      if (ev === "end" && run?.status === "finished") refreshFileLists();
    });
  }
  // A run whose node failed or was interrupted before it could send "end".
  const close = (state) => (e) => {
    const run = runs.get(String(e.detail?.node_id ?? ""));
    if (run && run.status === "running") {
      run.status = state;
      run.message = state === "error" ? (e.detail?.exception_message ?? run.message) : run.message;
      refreshAll();
    }
  };
  api.addEventListener("execution_error", close("error"));
  api.addEventListener("execution_interrupted", close("stopped"));
}

app.registerExtension({
  name: EXT_NAME,
  init() {
    listen(); // early: the page must know our event names before the first message arrives
  },
  async setup() {
    listen();
    await loadStatus();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isTrainingNode(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      attach(this);
      return r;
    };
  },
});
