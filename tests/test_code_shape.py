"""The shape the code keeps so a newcomer can read it: short functions, thin node modules, the training step in one
place."""

from __future__ import annotations

import ast

from conftest import ROOT

MAX_FUNCTION_LINES = 60


def _functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path.relative_to(ROOT).as_posix(), node


def test_no_function_over_60_lines_in_the_engine_or_the_nodes():
    long = [
        f"{path}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for folder in ("trainers", "nodes")
        for path, fn in _functions(folder)
        if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_training_node_module_stays_thin():
    lines = (ROOT / "nodes" / "training.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 220, f"nodes/training.py has {lines} lines: the run belongs to trainers/train/session.py"


def test_one_step_is_the_one_training_step():
    """``Trainer.one_step`` runs forward, loss, backward and the optimizer step; no other engine function steps an
    optimizer."""
    stepping = [
        f"{path}:{fn.name}"
        for path, fn in _functions("trainers")
        if any(
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "step"
            and isinstance(n.func.value, ast.Attribute)
            and n.func.value.attr == "optimizer"
            for n in ast.walk(fn)
        )
    ]
    assert stepping == ["trainers/train/loop.py:one_step"]
