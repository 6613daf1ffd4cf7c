// Likeness evaluations in the training monitor (imported by likeness_monitor.js; registers nothing by itself).
//
// The server sends `likeness.evaluation` events (nodes/monitor.py `on_evaluation`): `state` is "baseline" (the base
// model's class probes, before training), "evaluated" or "off" (message says why), with `likeness` (0-1, null when
// no probe showed a face), `bleed` (class probes vs the subject, relative to the base model), `no_face`, `probes`,
// the best so far and the probe images. This module keeps them on the run record and draws the likeness and bleed
// curves (0-1 axis, the same steps as the loss chart) with the "no face" state.

export const EVAL_COLORS = {
  likeness: "#c08cff",
  bleed: "#ff6b8b",
  threshold: "#4a5060",
  noFace: "#e0a040",
  off: "#8a909c",
};

export const EVAL_HEIGHT = 64; // px of the likeness chart
export const PROBE_SIZE = 40; // px of a probe thumbnail
export const SAME_PERSON = 0.5; // dlib's threshold on the 0-1 scale (trainers/identity/scoring.py)

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

// Record one evaluation event on a run (`run.evals`, sorted by step, one entry per step and state).
export function applyEvaluation(run, data, viewUrl) {
  if (!run.evals) run.evals = [];
  const images = (Array.isArray(data.images) ? data.images : [])
    .filter((im) => im && im.filename)
    .map((im) => ({ ...im, url: viewUrl(im) }));
  const entry = {
    step: num(data.step) ?? 0,
    state: String(data.state ?? "evaluated"),
    likeness: num(data.likeness),
    bleed: num(data.bleed),
    no_face: num(data.no_face) ?? 0,
    probes: num(data.probes) ?? 0,
    best_step: num(data.best_step),
    best_likeness: num(data.best_likeness),
    message: data.message ? String(data.message) : "",
    judge: data.judge ? String(data.judge) : "",
    scores: Array.isArray(data.scores) ? data.scores : [],
    images,
  };
  run.evals = run.evals.filter((e) => !(e.step === entry.step && e.state === entry.state));
  run.evals.push(entry);
  run.evals.sort((a, b) => a.step - b.step || (a.state === "baseline" ? -1 : 1));
  return entry;
}

export function mergeEvaluations(run, live) {
  for (const e of live?.evals ?? []) {
    if (!(run.evals ?? []).some((x) => x.step === e.step && x.state === e.state)) (run.evals ??= []).push(e);
  }
  run.evals?.sort((a, b) => a.step - b.step || (a.state === "baseline" ? -1 : 1));
}

// What the monitor says about likeness now: {state, text, latest}.
// state: "waiting" (no evaluation yet), "off", "no face" (the latest evaluation found no face in any probe),
// "measured".
export function evalSummary(run) {
  const evals = run?.evals ?? [];
  const off = evals.find((e) => e.state === "off");
  if (off) return { state: "off", text: off.message || "likeness: off", latest: off };
  const done = evals.filter((e) => e.state === "evaluated");
  const latest = done[done.length - 1];
  if (!latest) {
    const base = evals.find((e) => e.state === "baseline");
    return { state: "waiting", text: base ? "likeness: base model scored, waiting for the first evaluation" : "", latest: base };
  }
  if (latest.likeness === null) {
    return { state: "no face", text: `likeness: no face in the probe images (${latest.no_face}/${latest.probes}) at step ${latest.step}`, latest };
  }
  let text = `likeness ${latest.likeness.toFixed(3)}`;
  if (latest.bleed !== null) text += ` · bleed ${latest.bleed >= 0 ? "+" : ""}${latest.bleed.toFixed(3)}`;
  if (latest.no_face) text += ` · no face ${latest.no_face}/${latest.probes}`;
  if (latest.best_step !== null && latest.best_likeness !== null) {
    text += ` · best ${latest.best_likeness.toFixed(3)} @${latest.best_step}`;
  }
  return { state: "measured", text, latest };
}

// The latest evaluation's probe images (for thumbnails): [{url, title}].
export function probeImages(run, max = 6) {
  const { latest } = evalSummary(run);
  if (!latest) return [];
  return latest.images.slice(0, max).map((im, i) => {
    const s = latest.scores[i] ?? {};
    const score = typeof s.similarity === "number" ? s.similarity.toFixed(2) : s.reason || "no score";
    return { url: im.url, title: `step ${latest.step}, ${s.kind ?? "probe"}: ${s.prompt ?? ""} (${score})` };
  });
}

// Draw the likeness (and bleed) curves into (x, y, w, h) of ctx over steps 0..xmax (the loss chart's axis).
// Returns what was drawn: {likeness: n points, bleed: n points, state}.
export function drawLikenessChart(ctx, x, y, w, h, run, xmax, fmt) {
  const evals = (run?.evals ?? []).filter((e) => e.state === "evaluated");
  const summary = evalSummary(run);
  ctx.save();
  ctx.fillStyle = "#1b1d22";
  ctx.fillRect(x, y, w, h);
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "middle";
  const padL = 44;
  const padR = 8;
  const padT = 6;
  const padB = 6;
  const px = x + padL;
  const py = y + padT;
  const pw = Math.max(10, w - padL - padR);
  const ph = Math.max(10, h - padT - padB);
  const sx = (s) => px + (s / Math.max(xmax, 1)) * pw;
  const sy = (v) => py + ph - Math.max(0, Math.min(1, v)) * ph;
  // axis: 0, the same-person line, 1
  ctx.strokeStyle = EVAL_COLORS.threshold;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(px, Math.round(sy(SAME_PERSON)) + 0.5);
  ctx.lineTo(px + pw, Math.round(sy(SAME_PERSON)) + 0.5);
  ctx.stroke();
  ctx.fillStyle = EVAL_COLORS.off;
  ctx.textAlign = "right";
  for (const v of [0, SAME_PERSON, 1]) ctx.fillText(fmt ? fmt(v, 2) : String(v), px - 4, sy(v));
  const drawn = { likeness: 0, bleed: 0, state: summary.state };
  const series = (key, color, map) => {
    const pts = evals.filter((e) => e[key] !== null);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach((e, i) => (i ? ctx.lineTo(sx(e.step), sy(map(e[key]))) : ctx.moveTo(sx(e.step), sy(map(e[key])))));
    ctx.stroke();
    for (const e of pts) {
      ctx.beginPath();
      ctx.arc(sx(e.step), sy(map(e[key])), 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
    return pts.length;
  };
  drawn.likeness = series("likeness", EVAL_COLORS.likeness, (v) => v);
  // bleed is drawn around the middle line: 0 bleed = 0.5 on this axis would mislead; draw it from 0 up instead
  drawn.bleed = series("bleed", EVAL_COLORS.bleed, (v) => Math.max(0, v));
  // probes without a face: orange ticks at the bottom
  ctx.fillStyle = EVAL_COLORS.noFace;
  for (const e of evals) if (e.likeness === null) ctx.fillRect(sx(e.step) - 2, py + ph - 8, 4, 8);
  // legend / state
  ctx.textAlign = "left";
  if (summary.state === "off" || summary.state === "no face") {
    ctx.fillStyle = summary.state === "off" ? EVAL_COLORS.off : EVAL_COLORS.noFace;
    ctx.fillText(summary.state === "off" ? "likeness: off" : "no face", px + 4, py + 8);
  } else {
    ctx.fillStyle = EVAL_COLORS.likeness;
    ctx.fillText("likeness", px + 4, py + 8);
    ctx.fillStyle = EVAL_COLORS.bleed;
    ctx.fillText("bleed", px + 56, py + 8);
  }
  ctx.restore();
  return drawn;
}
