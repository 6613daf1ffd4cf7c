// Likeness Apply Trained Model: show on the node how the applied result was trained (its 'info' text: file, steps,
// instance prompt, rank...); Likeness Score: its report. The node sends the text as `ui.text` when it runs; this shows
// it under the widgets.
//
// The box is made with the node, at a fixed height (INFO_LINES lines), so a saved layout already has room for it
// and showing a text never grows the node over its neighbours: a longer text scrolls inside the box. A DOM widget
// where the frontend has `addDOMWidget` (2024 and current frontends), else a widget drawn on the graph canvas.
// Never serialized into the prompt. Tests read the shown text from `node.likenessInfo`.

import { app } from "../../scripts/app.js";

const NODES = ["LikenessApplyTrainedModel", "LikenessScore"]; // Likeness Score shows its report the same way
const WIDGET_NAME = "likeness_info";
const LINE_HEIGHT = 14;
const INFO_LINES = 5;
const BOX_HEIGHT = INFO_LINES * LINE_HEIGHT + 8 + 20; // the text, its padding, and the 2024 frontend's 10 px margins
const PLACEHOLDERS = {
  LikenessApplyTrainedModel: "(after a run: how the applied model was trained)",
  LikenessScore: "(after a run: the score of each image)",
};
const placeholder = (node) => PLACEHOLDERS[node?.comfyClass ?? node?.type] ?? "";

function textOf(message) {
  const parts = Array.isArray(message?.text) ? message.text : message?.text != null ? [message.text] : [];
  return parts.map(String).join("\n").trim();
}

function domWidget(node) {
  const el = document.createElement("pre");
  el.className = "likeness-info";
  el.textContent = placeholder(node);
  Object.assign(el.style, {
    margin: "0",
    padding: "4px 6px",
    boxSizing: "border-box", // the padding stays inside the width the frontend gives the box
    font: "11px monospace",
    lineHeight: `${LINE_HEIGHT}px`,
    whiteSpace: "pre-wrap",
    overflow: "auto",
    color: "var(--input-text, #ddd)",
    opacity: "0.6",
    background: "var(--comfy-input-bg, #222)",
    borderRadius: "4px",
    userSelect: "text",
  });
  const widget = node.addDOMWidget(WIDGET_NAME, "likeness-info", el, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => BOX_HEIGHT,
    getMaxHeight: () => BOX_HEIGHT,
    getHeight: () => BOX_HEIGHT,
  });
  if (!widget) return null;
  widget.serialize = false;
  widget.show = (text) => {
    el.textContent = text;
    el.style.opacity = "1";
    el.scrollTop = 0;
  };
  return widget;
}

function canvasWidget(node) {
  // A custom widget that draws the first lines itself (a frontend without DOM widgets).
  const widget = {
    type: "likeness-info",
    name: WIDGET_NAME,
    value: "",
    options: { serialize: false },
    serialize: false,
    text: "",
    show(text) {
      this.text = text;
    },
    computeSize(width) {
      return [width, BOX_HEIGHT];
    },
    draw(ctx, _node, width, y) {
      ctx.save();
      ctx.fillStyle = "#bbb";
      ctx.font = "11px monospace";
      const lines = (this.text || placeholder(_node)).split("\n").slice(0, INFO_LINES);
      lines.forEach((line, i) => ctx.fillText(line, 10, y + 12 + i * LINE_HEIGHT, width - 20));
      ctx.restore();
    },
  };
  node.widgets = node.widgets || [];
  node.widgets.push(widget);
  return widget;
}

function ensureWidget(node) {
  if (!node.likenessInfoWidget) {
    node.likenessInfoWidget = (typeof node.addDOMWidget === "function" && domWidget(node)) || canvasWidget(node);
  }
  return node.likenessInfoWidget;
}

function showInfo(node, text) {
  node.likenessInfo = text;
  if (!text) return;
  ensureWidget(node).show(text);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "Likeness.ApplyInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.includes(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      try {
        ensureWidget(this); // with the node, so its size (and a saved layout) has room for the box
      } catch (err) {
        console.warn("[Likeness] could not add the trained model's info box", err);
      }
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      try {
        showInfo(this, textOf(message));
      } catch (err) {
        console.warn("[Likeness] could not show the node's info text", err);
      }
      return r;
    };
  },
});
