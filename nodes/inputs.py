"""Config dataclasses -> ComfyUI V1 node inputs, and node kwargs -> config. (No ComfyUI import needed.)"""

from __future__ import annotations

from typing import Any, TypeVar

from ..trainers import configspec
from ..trainers.configspec import OptionSpec

T = TypeVar("T")

_INT_MAX = 0xFFFFFFFFFFFFFFFF


def float_step(*values: float, coarsest: float = 0.01) -> float:
    """The widget step for a float option: the finest power of ten that represents each value, at most ``coarsest``."""
    step = coarsest
    for v in values:
        v = abs(float(v))
        if v == 0.0:
            continue
        for decimals in range(0, 13):
            if abs(round(v, decimals) - v) <= 1e-12 * v:
                step = min(step, 10.0**-decimals)
                break
        else:
            step = min(step, 1e-12)
    return step


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
        # Frontends round a float widget to its step (newer ones even with round=False), so the step must be fine
        # enough for the default and the minimum: 0.999 needs 0.001, 1e-8 needs 1e-8.
        step = float(spec.step) if spec.step else float_step(opts["default"], opts["min"])
        opts["step"] = step
        opts["round"] = step
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
