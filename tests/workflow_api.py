"""Turn a UI-format workflow (what ComfyUI's editor saves) into an API-format prompt, checked against /object_info.

The editor stores each node's widget values as a list in input order (required, then optional) and adds a hidden
"control_after_generate" value after seed widgets. Linked inputs come from the ``links`` table. UI-only nodes (notes,
primitives are not used in our examples) are dropped. Anything the host does not know is an error, so a workflow
that needs another node pack fails here instead of in a user's ComfyUI.
"""

from __future__ import annotations

from typing import Any

UI_ONLY_TYPES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = {"seed", "noise_seed"}
MODE_ALWAYS = 0
# Widgets a frontend extension adds to a node, after the node's own: the 2024 editor saves their values at the end of
# ``widgets_values`` (newer editors skip widgets marked ``serialize: false``); the API prompt never has them.
# The Likeness training monitor (web/js/likeness_monitor.js) adds one DOM widget to each training node, the info box
# (web/js/likeness_info.js) one to Apply Trained Model.
FRONTEND_WIDGETS = {"LikenessDreamBoothTrain": 1, "LikenessLoRATrain": 1, "LikenessApplyTrainedModel": 1}


class WorkflowError(ValueError):
    pass


def _input_specs(info: dict) -> list[tuple[str, Any, dict]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, typ, opts))
    return out


def _is_widget(typ: Any, opts: dict) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(typ, list) or typ in WIDGET_TYPES


def _has_control(name: str, typ: Any, opts: dict) -> bool:
    if opts.get("control_after_generate"):
        return True
    return typ == "INT" and name in SEED_NAMES


def node_types(workflow: dict) -> set[str]:
    return {n["type"] for n in workflow["nodes"]}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt for ``workflow``; raises WorkflowError for unknown node types or malformed widget lists."""
    links = {}
    for link in workflow.get("links", []):
        link_id, from_node, from_slot, to_node, to_slot = link[:5]
        links[link_id] = (str(from_node), int(from_slot))
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in UI_ONLY_TYPES or node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            continue
        if ntype not in object_info:
            raise WorkflowError(f"node {node['id']} has type {ntype!r}, which this ComfyUI does not know")
        linked = {inp["name"]: inp.get("link") for inp in node.get("inputs", []) if inp.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        pos = 0
        for name, typ, opts in _input_specs(object_info[ntype]):
            if _is_widget(typ, opts):
                if pos >= len(values):
                    raise WorkflowError(f"node {node['id']} ({ntype}): no widget value for input {name!r}")
                value = values[pos]
                pos += 1
                if _has_control(name, typ, opts):
                    pos += 1  # the editor's control_after_generate value
                if name not in linked:
                    if isinstance(typ, list) and value not in typ:
                        raise WorkflowError(f"node {node['id']} ({ntype}): {value!r} is not a choice of {name!r}")
                    inputs[name] = value
            if name in linked:
                if linked[name] not in links:
                    raise WorkflowError(f"node {node['id']} ({ntype}): input {name!r} uses a missing link")
                inputs[name] = list(links[linked[name]])
            elif name not in inputs and name in (object_info[ntype]["input"].get("required") or {}):
                raise WorkflowError(f"node {node['id']} ({ntype}): required input {name!r} is not connected")
        if pos != len(values) and not (0 < len(values) - pos <= FRONTEND_WIDGETS.get(ntype, 0)):
            raise WorkflowError(f"node {node['id']} ({ntype}): {len(values)} widget values, {pos} expected")
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs}
    for nid, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt:
                raise WorkflowError(f"node {nid} input {name!r} comes from node {value[0]}, which does not run")
    return prompt
