// Likeness Apply Trained Model: show on the node how the applied result was trained (its 'info' text: file, steps,
// instance prompt, rank...); Likeness Score: its report. The node sends the text as `ui.text` when it runs; this draws
// it under the widgets.
//
// A DOM widget where the frontend has `addDOMWidget` (2024 and current frontends), else a widget drawn on the
// graph canvas. Never serialized: it adds nothing to the prompt or to the workflow's widget values.
// Tests read the shown text from `node.likenessInfo`.

import { app } from "../../scripts/app.js";

const NODES = ["LikenessApplyTrainedModel", "LikenessScore"]; // Likeness Score shows its report the same way
const WIDGET_NAME = "likeness_info";
const LINE_HEIGHT = 14;

function textOf(message) {
  const parts = Array.isArray(message?.text) ? message.text : message?.text != null ? [message.text] : [];
  return parts.map(String).join("\n").trim();
}

function ensureWidget(node) {
  if (node.likenessInfoWidget) return node.likenessInfoWidget;
  let widget;
  if (typeof node.addDOMWidget === "function") {
    const el = document.createElement("pre");
    el.className = "likeness-info";
    Object.assign(el.style, {
      margin: "0",
      padding: "4px 6px",
      font: "11px monospace",
      whiteSpace: "pre-wrap",
      overflow: "auto",
      color: "var(--input-text, #ddd)",
      background: "var(--comfy-input-bg, #222)",
      borderRadius: "4px",
      userSelect: "text",
    });
    const lines = () => Math.min(12, Math.max(2, (el.textContent || "").split("\n").length));
    widget = node.addDOMWidget(WIDGET_NAME, "likeness-info", el, {
      serialize: false,
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => lines() * LINE_HEIGHT + 10,
      getHeight: () => lines() * LINE_HEIGHT + 10,
    });
    if (widget) {
      widget.serialize = false;
      widget.show = (text) => {
        el.textContent = text;
      };
    }
  }
  if (!widget) {
    // Canvas fallback: a custom widget that draws the lines itself.
    widget = {
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
        const n = Math.min(12, Math.max(1, this.text.split("\n").length));
        return [width, n * LINE_HEIGHT + 8];
      },
      draw(ctx, _node, width, y) {
        ctx.save();
        ctx.fillStyle = "#bbb";
        ctx.font = "11px monospace";
        const lines = this.text.split("\n").slice(0, 12);
        lines.forEach((line, i) => ctx.fillText(line, 10, y + 12 + i * LINE_HEIGHT, width - 20));
        ctx.restore();
      },
    };
    node.widgets = node.widgets || [];
    node.widgets.push(widget);
  }
  node.likenessInfoWidget = widget;
  return widget;
}

function showInfo(node, text) {
  node.likenessInfo = text;
  if (!text) return;
  ensureWidget(node).show(text);
  const size = node.computeSize?.();
  if (size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "Likeness.ApplyInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.includes(nodeData?.name)) return;
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
