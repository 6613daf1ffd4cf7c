"""Resumable training states: ``<state folder>/step-NNNNNN/`` with the trained tensors, the optimizer and the RNGs.

A state is written to ``.step-NNNNNN.part/`` and renamed when complete, so a kill during a save never leaves a state
that looks whole. ``state.json`` carries a format version (:data:`STATE_VERSION`), checked on load: a state of
another version, or a damaged one, is refused with a message naming the state and the fix.

What may be deleted is decided by names this module generates, never by what a file says: only
``step-NNNNNN`` / ``.step-NNNNNN.part`` folders directly inside the state folder, and inside them only the three
files a state consists of. Anything else in those folders is left alone (and keeps the folder).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILES = ("trainable.safetensors", "hooks.safetensors", "optimizer.pt", "state.json")
_STATE_RE = re.compile(r"^step-(\d{6,})$")
_PART_RE = re.compile(r"^\.step-(\d{6,})\.part$")


class StateError(ConfigError):
    """A resumable state that cannot be used (damaged, another version, other options). ``path`` names it."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


def state_name(step: int) -> str:
    return f"step-{step:06d}"


def list_states(state_dir: Path) -> list[Path]:
    """The states in ``state_dir`` (our folder names, with a state.json), oldest first."""
    if not state_dir.is_dir():
        return []
    found = [p for p in state_dir.iterdir() if _STATE_RE.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STATE_RE.match(p.name).group(1)))


def find_resume(resume_from: str | None, state_dir: Path) -> Path | None:
    """The state to resume: ``latest`` (the newest in ``state_dir``), a state folder, or None."""
    if not resume_from:
        return None
    if resume_from == "latest":
        states = list_states(state_dir)
        if not states:
            raise ConfigError(f"resume_from=latest but {state_dir} holds no resumable state (step-NNNNNN folders)")
        return states[-1]
    p = Path(resume_from).expanduser()
    if not (p / "state.json").is_file():
        raise ConfigError(f"resume_from: {p} is not a resumable state (a folder with state.json)")
    return p


# ---------------------------------------------------------------------------------------------------------------
# writing


def write_state(
    root: Path,
    step: int,
    tensors: dict[str, Any],
    extra: dict[str, Any],
    info: dict[str, Any],
    hook_tensors: dict[str, Any] | None = None,
) -> Path:
    """Write one state atomically (temporary folder, then rename) and return its folder."""
    import torch

    from ..fsutil import save_safetensors

    root.mkdir(parents=True, exist_ok=True)
    final = root / state_name(step)
    tmp = root / f".{state_name(step)}.part"
    _remove_own(tmp)
    tmp.mkdir()
    try:
        save_safetensors(tensors, tmp / "trainable.safetensors")
        if hook_tensors:
            save_safetensors(hook_tensors, tmp / "hooks.safetensors")
        torch.save(extra, tmp / "optimizer.pt")
        data = {"version": STATE_VERSION, **info, "step": int(step)}
        (tmp / "state.json").write_text(json.dumps(data, indent=1, default=str))
        if final.exists():
            _remove_own(final)
        os.replace(tmp, final)
    except BaseException:
        _remove_own(tmp)
        raise
    return final


def prune_states(root: Path, keep: int) -> None:
    """Keep only the newest ``keep`` states."""
    for old in list_states(root)[:-keep] if keep > 0 else list_states(root):
        _remove_own(old)


def remove_states(root: Path) -> None:
    """Remove every state and unfinished state in ``root`` (and ``root`` itself when nothing else is in it)."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if _STATE_RE.match(p.name) or _PART_RE.match(p.name):
            _remove_own(p)
    with contextlib.suppress(OSError):
        root.rmdir()


def clean_partials(root: Path) -> list[Path]:
    """Remove the unfinished ``.step-NNNNNN.part`` folders a killed save left; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if _PART_RE.match(p.name):
                _remove_own(p)
                removed.append(p)
    return removed


def set_aside(path: Path) -> Path:
    """Rename a state that cannot be used to ``<name>.unusable-<time>`` (never deleted), so the next run starts
    afresh; returns the new name."""
    target = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(path, target)
    return target


def _remove_own(folder: Path) -> None:
    """Delete a state folder's own files, then the folder if nothing else is in it. Nothing else is touched."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for name in STATE_FILES:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except OSError:
        log.warning("kept %s: it holds files that are not part of a training state", folder)


# ---------------------------------------------------------------------------------------------------------------
# reading


@dataclass
class SavedState:
    path: Path
    info: dict[str, Any]
    tensors: dict[str, Any]
    extra: dict[str, Any]
    hook_tensors: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.info["step"])


def _fix(path: Path) -> str:
    return f"delete or move the folder {path} to start this training afresh"


def read_info(path: Path) -> dict[str, Any]:
    """``state.json`` of a state, checked: its version, kind and step."""
    try:
        info = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StateError(path, f"resumable state {path} is damaged (state.json: {e}); {_fix(path)}") from None
    if not isinstance(info, dict):
        raise StateError(path, f"resumable state {path} is damaged (state.json is not a table); {_fix(path)}")
    version = info.get("version")
    if version != STATE_VERSION:
        raise StateError(
            path,
            f"resumable state {path} has format version {version!r}; this Likeness reads version {STATE_VERSION} "
            f"(it was written by Likeness {info.get('likeness_version', '?')}): {_fix(path)}, or resume it with the "
            "version that wrote it",
        )
    step = info.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise StateError(path, f"resumable state {path} is damaged (step {step!r} is not a step count); {_fix(path)}")
    return info


def check_compatible(info: dict[str, Any], path: Path, *, kind: str, weights: str, dataset: str, steps: int) -> None:
    """Refuse a state made by another method, with other options or images, or beyond the run's last step."""
    if info.get("kind") != kind:
        raise StateError(path, f"resume_from: {path} is a {info.get('kind')} state, not {kind}")
    if info.get("weights_hash") != weights:
        raise StateError(
            path,
            f"resume_from: {path} was trained with other options (learning rate, data, model...); "
            "only steps, sample, checkpoint and output options may change when resuming",
        )
    if info.get("dataset_hash") != dataset:
        raise StateError(path, f"resume_from: {path} was trained on other images; resume with the same folders")
    if info["step"] > steps:
        raise StateError(path, f"resume_from: {path} is at step {info['step']}, beyond steps={steps}")


def read_state(path: Path, info: dict[str, Any] | None = None) -> SavedState:
    """A whole state: checked ``state.json``, the trained tensors and the optimizer/scheduler/RNG states."""
    import torch
    from safetensors.torch import load_file

    info = info if info is not None else read_info(path)
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise StateError(
            path, f"resumable state {path} is damaged (trainable.safetensors: {e}); {_fix(path)}"
        ) from None
    try:
        extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: EOFError, RuntimeError, UnpicklingError...
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise StateError(path, f"resumable state {path} is damaged (optimizer.pt: {first}); {_fix(path)}") from None
    if not isinstance(extra, dict) or not {"optimizer", "lr_scheduler", "rng_cpu"} <= set(extra):
        raise StateError(path, f"resumable state {path} is damaged (optimizer.pt is incomplete); {_fix(path)}")
    hook_tensors = {}
    if (path / "hooks.safetensors").is_file():
        try:
            hook_tensors = load_file(str(path / "hooks.safetensors"))
        except Exception as e:  # noqa: BLE001
            raise StateError(
                path, f"resumable state {path} is damaged (hooks.safetensors: {e}); {_fix(path)}"
            ) from None
    return SavedState(path, info, tensors, extra, hook_tensors)
