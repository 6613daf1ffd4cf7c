"""One typed config drives everything: CLI flags, config files, ComfyUI node inputs, tooltips and validation.

A config is a dataclass whose fields are declared with :func:`opt`::

    @dataclass
    class CropConfig:
        resolution: int = opt(512, "Side of the square crops, in pixels.", min=64, max=2048, step=8)
        detector: str = opt("haar", "Face detector.", choices=("haar", "yunet"))

        def check(self) -> None:           # optional cross-field validation
            if self.resolution % 8:
                raise ConfigError("resolution must be a multiple of 8")

The same metadata (help text, bounds, choices) becomes an ``argparse`` flag (:func:`add_arguments`), a ComfyUI input
with a tooltip (``nodes/inputs.py``), and the checks of :func:`validate`. Config files are TOML (or JSON) with the
field names as keys; ``key=value`` overrides are accepted on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_META_KEY = "likeness"


def opt(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    choices: Iterable[str] | None = None,
    multiline: bool = False,
    advanced: bool = False,
    cli: bool = True,
    node: bool = True,
    widget: str | None = None,
) -> Any:
    """Declare a config field with its help text (tooltip), bounds and where it appears.

    Where an option appears on the ComfyUI nodes is decided here and nowhere else: a node option (``node=True``) is a
    **main input** of its node unless it is ``advanced``; advanced options of the shared training config are inputs
    of the Training Options node, the other advanced options optional inputs of their own node. ``node=False`` /
    ``cli=False`` hide an option from that front end (e.g. a path the node fills in itself). ``widget`` renames the
    node input (``seed`` inputs get a "randomize after queue" control on the page, which would retrain every time).
    """
    meta = {
        _META_KEY: {
            "help": help,
            "min": min,
            "max": max,
            "step": step,
            "choices": tuple(choices) if choices is not None else None,
            "multiline": multiline,
            "advanced": advanced,
            "cli": cli,
            "node": node,
            "widget": widget,
        }
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """Everything a front end needs to know about one option."""

    name: str
    type: type  # int, float, bool, str or list (of str)
    optional: bool  # None is allowed
    default: Any
    help: str
    min: float | None
    max: float | None
    step: float | None
    choices: tuple[str, ...] | None
    multiline: bool
    advanced: bool
    cli: bool
    node: bool
    widget: str | None  # the node input's name when it is not the option's own

    @property
    def input_name(self) -> str:
        """The name of this option's ComfyUI node input."""
        return self.widget or self.name


def _resolve_type(annotation: Any) -> tuple[type, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported option type {annotation!r}")
        base, _ = _resolve_type(args[0])
        return base, True
    if origin in (list, tuple):
        return list, False
    if annotation in (int, float, bool, str):
        return annotation, False
    raise TypeError(f"unsupported option type {annotation!r}")


def specs(cls: type) -> list[OptionSpec]:
    """The options of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META_KEY)
        if meta is None:
            continue
        typ, optional = _resolve_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(OptionSpec(name=f.name, type=typ, optional=optional or default is None, default=default, **meta))
    return out


def spec_map(cls: type) -> dict[str, OptionSpec]:
    return {s.name: s for s in specs(cls)}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(spec: OptionSpec, value: Any, source: str = "config") -> Any:
    """Turn a value from a file, a flag or a widget into the option's type, or raise ConfigError."""
    where = f"{source}: option '{spec.name}'"
    if value is None or (spec.optional and isinstance(value, str) and value.strip() == ""):
        if spec.optional:
            return None
        raise ConfigError(f"{where} needs a value ({spec.help})")
    try:
        if spec.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            s = str(value).strip().lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
            raise ValueError
        if spec.type is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        if spec.type is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{where} is {value!r}; it must be a finite number ({spec.help})")
            return number
        if spec.type is list:
            if isinstance(value, str):
                sep = "\n" if "\n" in value else None
                items = value.split(sep) if sep else [value]
                return [s.strip() for s in items if s.strip()]
            return [str(v) for v in value]
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "a whole number", float: "a number", list: "a list", str: "text"}
        raise ConfigError(f"{where} must be {kind[spec.type]}, got {value!r}") from None


def validate(cfg: T, source: str = "config") -> T:
    """Check bounds and choices of every option, then the config's own ``check()`` (cross-field rules)."""
    for spec in specs(type(cfg)):
        value = getattr(cfg, spec.name)
        where = f"{source}: option '{spec.name}'"
        if value is None:
            if not spec.optional:
                raise ConfigError(f"{where} needs a value ({spec.help})")
            continue
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{where} is {value!r}; choose one of: {', '.join(spec.choices)}")
        if spec.type is float and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ConfigError(f"{where} is {value!r}; it must be a finite number ({spec.help})")
        if spec.type in (int, float):
            if spec.min is not None and value < spec.min:
                raise ConfigError(f"{where} is {value}; it must be at least {spec.min}")
            if spec.max is not None and value > spec.max:
                raise ConfigError(f"{where} is {value}; it must be at most {spec.max}")
    check = getattr(cfg, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    return cfg


def _unknown(name: str, known: Iterable[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else f" Known options: {', '.join(sorted(known))}."
    return ConfigError(f"{source}: unknown option '{name}'.{hint}")


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config", base: T | None = None) -> T:
    """Build and validate a config from plain data (file contents, node inputs). Unknown keys are errors."""
    smap = spec_map(cls)
    values = {} if base is None else to_dict(base)
    for key, value in data.items():
        key = key.replace("-", "_")
        if key not in smap:
            raise _unknown(key, smap, source)
        values[key] = coerce(smap[key], value, source)
    try:
        cfg = cls(**values)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"{source}: {e}") from None
    return validate(cfg, source)


def parse_overrides(pairs: Iterable[str], source: str = "command line") -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{source}: override '{pair}' must look like key=value (e.g. steps=1000)")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict (a ``[section]`` matching nothing is an error later)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass the path of a .toml file (see README: CLI)")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text.decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - any parse error becomes a clear message
        raise ConfigError(f"config file {p} cannot be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a table of options")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    data: dict[str, Any] = read_config_file(path) if path else {}
    data.update(parse_overrides(overrides))
    return from_dict(cls, data, source=str(path) if path else "options")


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def config_hash(cfg: Any, exclude: Iterable[str] = ()) -> str:
    """A stable hash of a config's values (for content-addressed results)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in set(exclude)}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# argparse


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE``, ``key=value`` overrides and one ``--flag`` per CLI option of ``cls``."""
    parser.add_argument("--config", metavar="FILE", help="TOML/JSON file with options (flags override it)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra option overrides")
    group = parser.add_argument_group("options")
    for spec in specs(cls):
        if not spec.cli:
            continue
        flag = "--" + spec.name.replace("_", "-")
        default_txt = "" if spec.default in (None, "", []) else f" (default: {spec.default})"
        help_text = (spec.help + default_txt).replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"dest": spec.name, "default": None, "help": help_text}
        if spec.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.type is list:
            kwargs["nargs"] = "+"
        else:
            kwargs["metavar"] = spec.type.__name__.upper() if not spec.choices else None
            if spec.choices:
                kwargs["choices"] = spec.choices
        group.add_argument(flag, **kwargs)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Config file, then ``key=value`` overrides, then explicit flags (highest priority)."""
    data: dict[str, Any] = read_config_file(args.config) if getattr(args, "config", None) else {}
    data.update(parse_overrides(getattr(args, "overrides", []) or []))
    for spec in specs(cls):
        value = getattr(args, spec.name, None)
        if spec.cli and value is not None:
            data[spec.name] = value
    return from_dict(cls, data, source=args.config or "command line")
