"""The one module that talks to ComfyUI's services.

Every other Likeness node module asks this one for folders, progress bars, the interrupt flag, VRAM hand-off and
browser events, so host differences (2024 vs 2026 ComfyUI) are handled in one place and detected at run time.
Host modules (``folder_paths``, ``comfy.*``, ``server``) are imported inside functions: importing the pack stays
cheap and this module imports fine outside ComfyUI (tests install fakes in ``sys.modules``).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("likeness")

EVENT_PREFIX = "likeness."
SUBFOLDER = "likeness"  # our files live in <models>/<kind>/likeness/ and <output>/likeness/


# ---------------------------------------------------------------------------------------------------------------
# folders


def folder_paths():
    import folder_paths as fp

    return fp


def filenames(kind: str) -> list[str]:
    """Files ComfyUI lists for a model folder kind ("checkpoints", "vae", "loras", ...)."""
    try:
        return list(folder_paths().get_filename_list(kind))
    except KeyError:
        return []


def full_path(kind: str, name: str) -> str:
    """Absolute path of a listed model file, or a clear error naming the folder to put it in."""
    fp = folder_paths()
    path = fp.get_full_path(kind, name)
    if not path or not os.path.isfile(path):
        folders = ", ".join(fp.get_folder_paths(kind)) if kind in fp.folder_names_and_paths else kind
        raise FileNotFoundError(f"{kind} file '{name}' was not found; put it in one of: {folders}")
    return path


def model_dir(kind: str) -> Path:
    """The first folder ComfyUI uses for ``kind`` (where we save new models), with our ``likeness/`` subfolder."""
    fp = folder_paths()
    paths = fp.get_folder_paths(kind)
    if not paths:
        raise RuntimeError(f"ComfyUI has no '{kind}' model folder configured")
    return Path(paths[0]) / SUBFOLDER


def models_subfolder(name: str) -> Path:
    """``<ComfyUI models folder>/<name>`` (e.g. ``facedetection`` for optional detector models); may not exist."""
    return Path(folder_paths().models_dir) / name


def input_dir() -> Path:
    return Path(folder_paths().get_input_directory())


def output_dir() -> Path:
    return Path(folder_paths().get_output_directory())


def temp_dir() -> Path:
    return Path(folder_paths().get_temp_directory())


ANY_FOLDER_ENV = "LIKENESS_ALLOW_ANY_FOLDER"  # "1": typed folders may be anywhere the server can read


def allowed_roots() -> list[Path]:
    """Where typed folders may be: ComfyUI's input folder, and its output folder (datasets and class images the pack
    made). A ComfyUI started with --listen serves other people: they must not make it read the server's disk."""
    return [input_dir().resolve(), output_dir().resolve()]


def check_allowed_folder(path: Path, what: str) -> None:
    """Refuse a folder outside ComfyUI's input and output folders (after resolving links), unless opted in."""
    roots = allowed_roots()
    p = path.resolve()
    if os.environ.get(ANY_FOLDER_ENV) != "1" and not any(p == r or r in p.parents for r in roots):
        raise ValueError(
            f"{what} is outside ComfyUI's input and output folders ({roots[0]}, {roots[1]}); use a folder inside "
            f"them (type its name), or start ComfyUI with {ANY_FOLDER_ENV}=1 to allow any folder (only on a machine "
            "nobody else reaches)"
        )


def resolve_input_folder(folder: str) -> Path:
    """A user-typed folder, checked before anything walks it: a relative name is inside ComfyUI's input folder; an
    absolute path must be inside the input or output folder, unless the server sets LIKENESS_ALLOW_ANY_FOLDER=1.
    Symlinks are resolved first, so a link cannot lead out either."""
    raw = folder.strip()
    if not raw:
        raise ValueError("no folder given: type a folder name inside ComfyUI's input directory")
    p = Path(raw).expanduser()
    roots = allowed_roots()
    p = (roots[0] / p).resolve() if not p.is_absolute() else p.resolve()
    check_allowed_folder(p, f"folder '{folder}'")
    if not p.exists():
        raise FileNotFoundError(f"folder '{p}' does not exist; create it and put your photos in it")
    if not p.is_dir():
        raise NotADirectoryError(f"'{p}' is a file, not a folder; give the folder that holds your photos")
    return p


def input_folder_stamp(folder: str, *, recursive: bool = True) -> str:
    """A cheap identity of a typed input folder for ``IS_CHANGED`` (names, sizes, times; bounded walk). A folder that
    is refused gives its error instead, so the node runs and reports it."""
    from ..trainers.fsutil import folder_stamp

    if not folder or not folder.strip():
        return ""
    try:
        return folder_stamp(resolve_input_folder(folder), recursive=recursive)
    except (ValueError, OSError) as e:
        return f"error: {e}"


# ---------------------------------------------------------------------------------------------------------------
# progress, interrupt, events


class Progress:
    """ComfyUI's progress bar for one node (the green bar and the ``progress`` WS message).

    ``update_absolute`` is also an interruption point on every host: if the user pressed Cancel, it raises the host's
    interrupt exception.
    """

    def __init__(self, total: int, node_id: str | None = None):
        import comfy.utils

        self.total = max(int(total), 1)
        kwargs = {}
        if node_id is not None and "node_id" in inspect.signature(comfy.utils.ProgressBar.__init__).parameters:
            kwargs["node_id"] = node_id
        self._bar = comfy.utils.ProgressBar(self.total, **kwargs)

    def set(self, value: int, preview: Any = None) -> None:
        self._bar.update_absolute(min(int(value), self.total), self.total, preview)


def interrupted() -> bool:
    """True once the user pressed Cancel (or ``POST /interrupt``); does not clear the flag."""
    import comfy.model_management as mm

    return bool(mm.processing_interrupted())


def raise_if_interrupted() -> None:
    """Let the host end the prompt as 'interrupted' (clears the flag, raises the host's exception)."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


# Monitor state: what GET /likeness/status returns, so a page opened mid-run catches up.
_STATE_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"run": None, "history": [], "samples": [], "evaluations": []}
_HISTORY_MAX = 5000


def _record(event: str, data: dict[str, Any]) -> None:
    with _STATE_LOCK:
        if event == "start":
            _STATE.update(run=dict(data, state="running"), history=[], samples=[], evaluations=[])
        elif event == "progress" and _STATE["run"] is not None:
            _STATE["history"].append(data)
            del _STATE["history"][:-_HISTORY_MAX]
            _STATE["run"].update(last=data)
        elif event == "sample" and _STATE["run"] is not None:
            _STATE["samples"].append(data)
            del _STATE["samples"][:-50]
        elif event == "evaluation" and _STATE["run"] is not None:
            evaluations = _STATE.setdefault("evaluations", [])
            evaluations.append(data)
            del evaluations[:-200]
        elif event == "end" and _STATE["run"] is not None:
            _STATE["run"].update(data, state=data.get("state", "finished"))


def _json_safe(value: Any) -> Any:
    """A JSON-ready copy of an event payload: NaN/inf (a diverging loss) become None, tuples lists, tensors and
    numpy scalars plain numbers, paths strings. The copy also keeps the recorded history independent of the caller."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item):
        with contextlib.suppress(Exception):
            return _json_safe(item())
    return str(value)


def status_snapshot() -> dict[str, Any]:
    with _STATE_LOCK:
        run = dict(_STATE["run"]) if _STATE["run"] else None
        return {
            "run": run,
            "history": list(_STATE["history"]),
            "samples": list(_STATE["samples"]),
            "evaluations": list(_STATE.get("evaluations", [])),
        }


def send_event(event: str, data: dict[str, Any]) -> None:
    """Record ``data`` for /likeness/status and send ``likeness.<event>`` to every open page."""
    data = _json_safe(data)
    _record(event, data)
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(EVENT_PREFIX + event, data)
    except Exception as e:  # noqa: BLE001 - the page missing an event must never break training
        log.debug("likeness: could not send %s: %s", event, e)


def register_routes() -> bool:
    """Add ``GET /likeness/status`` to the host's web server (once). Returns False outside ComfyUI."""
    try:
        from aiohttp import web
        from server import PromptServer
    except Exception:  # noqa: BLE001
        return False
    routes = PromptServer.instance.routes
    if getattr(register_routes, "_done", False):
        return True

    @routes.get("/likeness/status")
    async def _status(request):  # noqa: ARG001
        return web.json_response(status_snapshot())

    register_routes._done = True  # type: ignore[attr-defined]
    return True


# ---------------------------------------------------------------------------------------------------------------
# devices and memory


def torch_device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def unload_host_models() -> None:
    """Free VRAM held by ComfyUI's loaded models before we train or generate."""
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()


def release_memory() -> None:
    """Give memory back after our work (also after errors and cancels)."""
    gc.collect()
    try:
        import comfy.model_management as mm

        mm.soft_empty_cache()
    except Exception:  # noqa: BLE001
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


@contextlib.contextmanager
def gpu_session(name: str) -> Iterator[None]:
    """Around any heavy work: unload the host's models first, give all memory back afterwards, whatever happens.

    Also leaves ComfyUI's ``inference_mode`` so autograd works and tensors made inside are normal tensors.
    """
    import torch

    unload_host_models()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        release_memory()
        log.info("likeness: %s finished in %.1f s, memory released", name, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------------
# host assets


def sd1_tokenizer_path() -> str:
    """The SD1 CLIP tokenizer that ships inside ComfyUI (``comfy/sd1_tokenizer``); use model_max_length=77."""
    import comfy

    # ``comfy`` is a namespace package on some hosts (no __init__.py, ``__file__`` is None): use its __path__.
    roots = [Path(p) for p in getattr(comfy, "__path__", [])] or [Path(comfy.__file__).parent]
    for root in roots:
        path = root.resolve() / "sd1_tokenizer"
        if (path / "vocab.json").is_file():
            return str(path)
    raise FileNotFoundError(f"ComfyUI's SD1 tokenizer was not found in {', '.join(map(str, roots))}")


# ---------------------------------------------------------------------------------------------------------------
# the host's own model objects (MODEL / CLIP / VAE)

_VAE_PREFIX = "first_stage_model."


def load_checkpoint_for_host(path: str | Path) -> tuple[Any, Any, Any]:
    """MODEL, CLIP and VAE from ComfyUI's own checkpoint loader, so they sample like any core-loaded model.

    Only ``.safetensors`` paths are accepted: older hosts (2024) unpickle every other format without
    ``weights_only``, so a ``.ckpt`` must reach the host as a vetted safetensors copy
    (``trainers.model_io.host_loadable_file``).
    """
    p = str(path)
    if not p.lower().endswith(".safetensors"):
        raise ValueError(
            f"refusing to give {p} to ComfyUI's loader: only .safetensors files are passed to the host "
            "(older ComfyUI versions unpickle other formats unsafely)"
        )
    import comfy.sd

    loader = comfy.sd.load_checkpoint_guess_config
    kwargs: dict[str, Any] = {"output_vae": True, "output_clip": True}
    if "embedding_directory" in inspect.signature(loader).parameters:
        with contextlib.suppress(Exception):  # embeddings are optional
            kwargs["embedding_directory"] = folder_paths().get_folder_paths("embeddings")
    out = loader(p, **kwargs)
    model, clip, vae = out[0], out[1], out[2]
    if model is None:
        raise RuntimeError(f"ComfyUI could not load a model from {p}")
    return model, clip, vae


def vae_from_state_dict(sd: dict[str, Any]) -> Any:
    """A host VAE from an LDM-layout VAE state dict (keys with or without ``first_stage_model.``)."""
    import comfy.sd

    plain = {k[len(_VAE_PREFIX) :] if k.startswith(_VAE_PREFIX) else k: v for k, v in sd.items()}
    vae = comfy.sd.VAE(sd=plain)
    check = getattr(vae, "throw_exception_if_invalid", None)  # newer hosts: a VAE with unknown keys
    if callable(check):
        check()
    return vae


class _LoraKeyLog(logging.Handler):
    """Collects the host's "lora key not loaded" / "NOT LOADED" warnings while a LoRA is applied."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            msg = record.getMessage()
            for marker in ("lora key not loaded", "NOT LOADED"):
                if msg.startswith(marker):
                    self.keys.append(msg[len(marker) :].lstrip(": ").strip())


def apply_lora_for_host(
    model: Any, clip: Any, lora_sd: dict[str, Any], strength_model: float, strength_clip: float
) -> tuple[Any, Any, list[str]]:
    """Patch a host MODEL/CLIP with a LoRA state dict through ComfyUI's own LoRA code (what core LoraLoader does).

    DoRA layers are the exception: their change is computed here from the host's own base weight, as training
    computed it (``LoraWeights.update``), and added as a plain weight difference at the given strength, because
    hosts disagree on ``dora_scale`` (the 2024-03 release ignores it and applies the LoRA part alone; releases to
    0.3.64 at least normalise by the base weight's norm). Returns the patched clones and the LoRA keys that did not
    land (the host's "lora key not loaded" lines, and DoRA layers no weight of this model answers to); the inputs
    are never modified. ``clip`` may be None (model only).
    """
    import comfy.sd

    from ..trainers.lora.kohya import split_dora

    plain, dora = split_dora(lora_sd)
    catcher = _LoraKeyLog()
    root = logging.getLogger()
    root.addHandler(catcher)
    try:
        new_model, new_clip = comfy.sd.load_lora_for_models(
            model, clip, plain, float(strength_model), float(strength_clip)
        )
    finally:
        root.removeHandler(catcher)
    lost = catcher.keys
    if dora:
        lost += _add_dora_differences(new_model, new_clip, dora, float(strength_model), float(strength_clip))
    return new_model, new_clip, lost


def _add_dora_differences(model: Any, clip: Any, layers: dict[str, Any], strength_model: float, strength_clip: float):
    """Add each DoRA layer's full change to the patched clones as a "diff" patch (every host since 2023 has
    that patch type); returns the layers no weight answers to (named like the host's own "not loaded" lines)."""
    import comfy.lora

    targets = []  # (patcher, its weights by name, kohya name -> weight name, strength)
    if model is not None:
        targets.append(
            (model, model.model_state_dict(), comfy.lora.model_lora_keys_unet(model.model, {}), strength_model)
        )
    if clip is not None:
        keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
        targets.append((clip, clip.patcher.model_state_dict(), keys, strength_clip))
    lost = []
    for name, layer in layers.items():
        for patcher, weights, keys, strength in targets:
            key = keys.get(name)
            if isinstance(key, str) and key in weights:
                base = weights[key]
                change = layer.update(base.detach().float().cpu()).to(base.dtype)
                patcher.add_patches({key: (change,)}, strength)
                break
        else:
            lost.append(f"{name}.dora_scale")
    return lost
