"""Let PyPI's CUDA-linked torchvision import on CPU torch (installed into the test host's venv only).

torchvision's compiled ops (``torchvision/_C.so``) link against CUDA libraries that a CPU-only torch does not ship,
so loading them fails; torchvision then continues without them, except that its Python side registers fake
implementations for ``torchvision::nms`` / ``torchvision::qnms`` at import, which needs the operators' schemas to
exist. This module, loaded by a ``.pth`` file at interpreter start, waits (without importing anything heavy) until
``torchvision`` is imported; then, only if the compiled ops cannot be loaded, it declares the two schemas first.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor",
)
_LIBS: list = []  # keep the torch.library.Library objects alive


def declare_schemas() -> list[str]:
    """Declare torchvision's op schemas unless its compiled ops load. Returns the names declared."""
    import os

    import torch

    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            for name in sorted(os.listdir(folder)):
                if name.startswith("_C.") and name.endswith((".so", ".pyd")):
                    try:
                        torch.ops.load_library(os.path.join(folder, name))
                        return []  # the real ops are there
                    except (OSError, RuntimeError):
                        pass
    declared = []
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        lib.define(schema)
        declared.append("torchvision::" + schema.split("(")[0])
    _LIBS.append(lib)
    return declared


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall()
            # Never break an import: if this fails, torchvision reports its own error.
            with contextlib.suppress(Exception):
                declare_schemas()
        return None  # let the normal finders import it


_FINDER = _Finder()


def install() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
