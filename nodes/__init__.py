"""Node registration: one table built from the node modules (each keeps its heavy imports inside functions)."""

from __future__ import annotations

import importlib
import logging

from . import bridge

log = logging.getLogger("likeness")

# Node modules, in menu order. Each defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
_MODULES = ("loaders", "faces", "classes", "training", "options", "lora", "apply", "score")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in _MODULES:
    _mod = importlib.import_module(f".{_name}", __name__)
    for _id, _cls in _mod.NODE_CLASS_MAPPINGS.items():
        if not _id.startswith("Likeness"):
            raise RuntimeError(f"node id {_id!r} must start with 'Likeness'")
        NODE_CLASS_MAPPINGS[_id] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)

bridge.register_routes()
