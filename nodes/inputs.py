"""Config dataclasses -> ComfyUI V1 node inputs, and node inputs -> config. (No ComfyUI import needed.)

Which options a node shows is decided by the option's own declaration (:func:`trainers.configspec.opt`): a node
option is a main input unless it is ``advanced``; ``widget`` renames its input. Nothing here lists options by name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from ..trainers import configspec
from ..trainers.configspec import OptionSpec
from ..trainers.errors import ConfigError

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


def node_specs(cls: type, *, advanced: bool | None = None, besides: type | None = None) -> list[OptionSpec]:
    """The node options of ``cls`` in declaration order: all, or only the main (``advanced=False``) or advanced ones;
    ``besides`` leaves out the options ``cls`` shares with that (base) config class."""
    shared = set(configspec.spec_map(besides)) if besides is not None else set()
    return [
        s
        for s in configspec.specs(cls)
        if s.node and s.name not in shared and (advanced is None or s.advanced == advanced)
    ]


def comfy_inputs(
    cls: type, *, advanced: bool | None = None, besides: type | None = None, **defaults: Any
) -> dict[str, tuple]:
    """``INPUT_TYPES`` entries (keyed by input name) for the node options :func:`node_specs` selects."""
    return {
        s.input_name: comfy_input(s, defaults.get(s.name)) for s in node_specs(cls, advanced=advanced, besides=besides)
    }


def options_from_inputs(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Node inputs -> option values of ``cls``, by option name (inputs that are not options are left out)."""
    by_input = {s.input_name: s.name for s in configspec.specs(cls) if s.node}
    return {by_input[k]: v for k, v in values.items() if k in by_input}


def config_from_inputs(cls: type[T], values: dict[str, Any], source: str, **fixed: Any) -> T:
    """Build a validated config from node inputs (inputs that are not options are ignored); ``fixed`` wins."""
    data = options_from_inputs(cls, values)
    data.update(fixed)
    return configspec.from_dict(cls, data, source=source)


def changed_options(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The inputs whose value differs from the option's declared default (by option name): what a user changed."""
    smap = configspec.spec_map(cls)
    out = {}
    for name, value in options_from_inputs(cls, values).items():
        default = smap[name].default
        if smap[name].type is list and isinstance(value, str):
            default = "\n".join(default or [])
        if _same(value, default):
            continue
        out[name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-15)
    return a == b


def validator(cls: type, inputs: Iterable[str], source: str, **fill: Any):
    """A ``VALIDATE_INPUTS`` classmethod for the option inputs ``inputs`` of a node built on config ``cls``.

    Its parameters are exactly those input names (the host passes only the inputs a validator names, on every host
    version); an input fed by a link arrives as None (its value is not known yet) and is checked when the node runs.
    ``fill`` gives values (by input name) for what is not known yet, so the config can be built.
    """
    names = list(inputs)

    def VALIDATE_INPUTS(cls_, **values: Any):  # noqa: N802 - ComfyUI's name
        known = {**fill, **{k: v for k, v in values.items() if v is not None}}
        try:
            config_from_inputs(cls, known, source)
        except ConfigError as e:
            return str(e)
        return True

    params = [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in names]
    VALIDATE_INPUTS.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return classmethod(VALIDATE_INPUTS)


def legacy_inputs(prompt: Any, unique_id: Any, inputs: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """Values a saved API prompt gives under an input's old name (``renamed``: old -> new), when the new one is
    absent. ``prompt`` is the node's hidden ``PROMPT`` input (the host drops inputs a node does not declare)."""
    node = prompt.get(str(unique_id)) if isinstance(prompt, dict) else None
    raw = node.get("inputs", {}) if isinstance(node, dict) else {}
    return {new: raw[old] for old, new in renamed.items() if old in raw and new not in inputs}
