"""Config dataclasses -> ComfyUI V1 node inputs, and node kwargs -> config. (No ComfyUI import needed.)"""

from __future__ import annotations

from typing import Any, TypeVar

from ..trainers import configspec
from ..trainers.configspec import OptionSpec

T = TypeVar("T")

_INT_MAX = 0xFFFFFFFFFFFFFFFF


def comfy_input(spec: OptionSpec, default: Any = None) -> tuple:
    """One ``INPUT_TYPES`` entry for an option, with its help text as the tooltip."""
    value = spec.default if default is None else default
    opts: dict[str, Any] = {"tooltip": spec.help}
    if spec.choices:
        return (list(spec.choices), {"default": value, **opts})
    if spec.type is bool:
        return ("BOOLEAN", {"default": bool(value), **opts})
    if spec.type is int:
        opts.update(default=int(value or 0), min=int(spec.min if spec.min is not None else 0))
        opts["max"] = int(spec.max) if spec.max is not None else _INT_MAX
        opts["step"] = int(spec.step or 1)
        return ("INT", opts)
    if spec.type is float:
        opts.update(default=float(value or 0.0), min=float(spec.min if spec.min is not None else 0.0))
        opts["max"] = float(spec.max) if spec.max is not None else 1e9
        opts["step"] = float(spec.step or 0.01)
        opts["round"] = False
        return ("FLOAT", opts)
    if spec.type is list:
        return ("STRING", {"default": "\n".join(value or []), "multiline": True, **opts})
    return ("STRING", {"default": value or "", "multiline": spec.multiline, **opts})


def comfy_inputs(cls: type, names: list[str] | None = None, advanced: bool | None = None, **defaults) -> dict:
    """Inputs for the node options of ``cls`` (all, a named subset, or only (non-)advanced ones), in order."""
    out = {}
    smap = configspec.spec_map(cls)
    chosen = names if names is not None else [s.name for s in configspec.specs(cls)]
    for name in chosen:
        spec = smap[name]
        if not spec.node or (advanced is not None and spec.advanced != advanced):
            continue
        out[name] = comfy_input(spec, defaults.get(name))
    return out


def config_from_inputs(cls: type[T], values: dict[str, Any], source: str, **fixed: Any) -> T:
    """Build a validated config from node inputs (unknown keys ignored: nodes have other inputs too)."""
    smap = configspec.spec_map(cls)
    data = {k: v for k, v in values.items() if k in smap}
    data.update(fixed)
    return configspec.from_dict(cls, data, source=source)
