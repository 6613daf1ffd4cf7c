"""Write SD1.x components as one LDM-layout ``.safetensors`` (what ComfyUI, A1111 and civitai use); handles.

The export applies the same key tables as the import in the other direction, so import -> export reproduces every
tensor of the original file bit for bit (at the same dtype).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, OutputExists
from ..fsutil import atomic_path, cache_dir, file_sha256, save_safetensors, tree_sha256
from ..handles import ModelHandle
from .components import Components, components_to_ldm
from .convert import TEXT_MODEL, TEXT_PREFIX
from .model_configs import CONFIG_METADATA_KEY, bundled_config
from .reader import inspect_checkpoint, read_checkpoint

log = logging.getLogger(__name__)

DTYPES = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}
POSITION_IDS_KEY = TEXT_PREFIX + TEXT_MODEL + "embeddings.position_ids"


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def _check_metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"safetensors metadata must map strings to strings; not so for {bad[:3]}")
    return meta


def write_ldm_file(
    state_dict: dict[str, Any], path: str | Path, *, metadata: dict[str, str] | None = None, overwrite: bool = False
) -> Path:
    """Atomically write an LDM state dict (adds the text encoder's ``position_ids`` the original files carry)."""
    import torch

    sd = dict(state_dict)
    pos_key = TEXT_PREFIX + TEXT_MODEL + "embeddings.position_embedding.weight"
    if pos_key in sd and POSITION_IDS_KEY not in sd:
        sd[POSITION_IDS_KEY] = torch.arange(sd[pos_key].shape[0], dtype=torch.int64).unsqueeze(0)
    sd = {k: v.contiguous() for k, v in sd.items()}
    dest = Path(path)
    try:
        with atomic_path(dest, overwrite=overwrite) as tmp:
            save_safetensors(sd, tmp, metadata=_check_metadata(metadata))
    except FileExistsError as e:
        raise OutputExists(f"{dest} already exists; choose another name or allow overwriting") from e
    return dest


def _stable_config(config: Any) -> dict[str, Any]:
    """A diffusers model config as a dict that serializes the same every time: diffusers records the options left at
    their defaults (``_use_default_values``) from a set, whose order changes from one process to the next."""
    out = dict(config)
    if isinstance(out.get("_use_default_values"), (list, tuple, set)):
        out["_use_default_values"] = sorted(out["_use_default_values"])
    return out


def save_single_file(
    components: Components,
    path: str | Path,
    *,
    dtype: str = "fp16",
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save UNet + VAE + text encoder as one LDM-layout ``.safetensors`` in ``dtype`` ("fp16", "fp32", "bf16").

    ``metadata`` (str -> str) goes into the safetensors header beside the model configs. The write is atomic; an
    existing file is an error unless ``overwrite``.
    """
    meta = _check_metadata(metadata)
    if Path(path).suffix.lower() != ".safetensors":
        raise ConfigError(f"{path}: a single-file checkpoint is written as .safetensors; change the file name")
    sd = components_to_ldm(components, dtype=_torch_dtype(dtype))
    configs = {
        "unet": _stable_config(components.unet.config),
        "vae": _stable_config(components.vae.config),
        "text_encoder": {
            k: v
            for k, v in components.text_encoder.config.to_dict().items()
            if isinstance(v, (int, float, str, bool, type(None), list))
        },
    }
    meta.setdefault("format", "pt")
    meta[CONFIG_METADATA_KEY] = json.dumps(configs, default=str, sort_keys=True)
    out = write_ldm_file(sd, path, metadata=meta, overwrite=overwrite)
    log.info("wrote %s (%d tensors, %s)", out, len(sd) + 1, dtype)
    return out


# ---------------------------------------------------------------------------------------------------- handles


def content_hash(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        files = [q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")]
        return tree_sha256(files, root=p)
    return file_sha256(p)


def make_model_handle(
    path: str | Path, *, vae_path: str | Path | None = None, base_path: str | Path | None = None, ema: str = "auto"
) -> ModelHandle:
    """Check a checkpoint (SD1.x, readable, complete with the given VAE/base) and describe it; loads no weights
    beyond what a pickle file needs to be read."""
    p = Path(path)
    info = inspect_checkpoint(p, ema=ema, vae_path=vae_path, base_path=base_path)
    return ModelHandle(
        path=str(p.resolve()),
        variant=info["variant"],
        content_hash=content_hash(p),
        vae_path=str(Path(vae_path).resolve()) if vae_path else None,
        base_path=str(Path(base_path).resolve()) if base_path else None,
        ema=ema,
        info=info,
    )


def host_loadable_file(handle: ModelHandle) -> str:
    """A ``.safetensors`` path ComfyUI's own loader can read safely for this handle.

    The original file when it is a plain SD1 ``.safetensors`` that needs no change; otherwise (a ``.ckpt``, a
    diffusers folder, EMA weights chosen, a separate VAE or base) a normalized copy, cached by content.
    """
    p = Path(handle.path)
    info = handle.info or {}
    plain = (
        p.is_file()
        and p.suffix.lower() == ".safetensors"
        and not handle.vae_path
        and not handle.base_path
        and not info.get("ema_used", False)
        and not info.get("needs_normalizing", False)
    )
    if plain:
        return str(p)
    digest = hashlib.sha256(handle.key.encode()).hexdigest()[:24]
    dest = cache_dir() / "host_files" / f"{digest}.safetensors"
    if dest.is_file():
        return str(dest)
    ckpt = read_checkpoint(p, ema=handle.ema, vae_path=handle.vae_path, base_path=handle.base_path)
    meta = {"likeness.source": p.name, "likeness.ema_used": str(ckpt.info.get("ema_used"))}
    try:
        write_ldm_file(ckpt.state_dict, dest, metadata=meta, overwrite=True)
    except OSError as e:
        raise CheckpointError(f"could not write a host copy of {p} to {dest}: {e}") from e
    log.info("normalized %s for ComfyUI's loader: %s", p, dest)
    return str(dest)


def save_diffusers_folder(
    components: Components, folder: str | Path, *, dtype: str = "fp32", overwrite: bool = False
) -> Path:
    """Write the components as a diffusers folder (unet/, vae/, text_encoder/, tokenizer/ when there is one,
    scheduler/, model_index.json); built beside ``folder`` and renamed into place."""
    import shutil
    import tempfile

    dest = Path(folder)
    if dest.exists() and not overwrite:
        raise OutputExists(f"{dest} already exists; choose another folder or allow overwriting")
    if dest.exists() and not _is_diffusers_export(dest):
        raise OutputExists(
            f"{dest} exists and is not a diffusers folder written by Likeness (it holds other files): it is not "
            "replaced; move it away or choose another output name"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_exports(dest):  # what a killed export of this folder left beside it
        _remove_export(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=EXPORT_SUFFIX, dir=dest.parent))
    torch_dtype = _torch_dtype(dtype)
    try:
        for name in ("unet", "vae", "text_encoder"):
            model = getattr(components, name)
            original = next(model.parameters()).dtype
            model.to(torch_dtype)
            try:
                model.save_pretrained(tmp / name, safe_serialization=True)
            finally:
                model.to(original)
        index = bundled_config("model_index")
        if components.tokenizer is not None:
            components.tokenizer.save_pretrained(tmp / "tokenizer")
        else:
            index["tokenizer"] = [None, None]
            log.warning("no tokenizer given: %s gets none (pass one to make the folder complete)", dest)
        components.noise_scheduler.save_pretrained(tmp / "scheduler")
        index["scheduler"] = ["diffusers", type(components.noise_scheduler).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        if dest.exists():  # checked above: only the parts a diffusers export consists of
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


_DIFFUSERS_PARTS = {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"}
EXPORT_SUFFIX = ".partial"  # a folder being built: .NAME.XXXXXXXX.partial beside NAME (mkdtemp's 8 characters)


def stale_exports(dest: Path) -> list[Path]:
    """Unfinished exports of ``dest`` left beside it by a killed run: our own name pattern, a real folder holding
    only what an export writes (:func:`_export_files`), nothing in it touched for ``STALE_AFTER_S`` (so an export
    in progress, even a slow one, is never hit)."""
    import re
    import time

    from ..fsutil import STALE_AFTER_S

    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.[A-Za-z0-9_]{{8}}{re.escape(EXPORT_SUFFIX)}$")
    out = []
    if not dest.parent.is_dir():
        return out
    for p in dest.parent.iterdir():
        if not pattern.match(p.name) or p.is_symlink() or not p.is_dir():
            continue
        files = _export_files(p)
        with contextlib.suppress(OSError):
            newest = max([p.stat().st_mtime, *(f.stat().st_mtime for f in files or [])])
            if files is not None and time.time() - newest >= STALE_AFTER_S:
                out.append(p)
    return out


def _export_files(folder: Path) -> list[Path] | None:
    """The files of an export's staging folder, or None when it holds anything an export does not write: names
    other than a diffusers folder's parts, links, folders inside the parts."""
    files = []
    try:
        for part in folder.iterdir():
            if part.name not in _DIFFUSERS_PARTS or part.is_symlink():
                return None
            if part.is_file():
                files.append(part)
                continue
            for f in part.iterdir():
                if f.is_symlink() or not f.is_file():
                    return None
                files.append(f)
    except OSError:
        return None
    return files


def _remove_export(folder: Path) -> None:
    """Delete a stale export's files, then its folders (left in place if anything else appeared meanwhile)."""
    for f in _export_files(folder) or []:
        with contextlib.suppress(OSError):
            f.unlink()
    parts: list[Path] = []
    with contextlib.suppress(OSError):
        parts = [q for q in folder.iterdir() if q.is_dir() and not q.is_symlink()]
    for part in [*parts, folder]:
        with contextlib.suppress(OSError):
            part.rmdir()


def _is_diffusers_export(folder: Path) -> bool:
    """A folder we may replace: a real folder holding a ``model_index.json`` and only a diffusers export's parts."""
    if folder.is_symlink() or not folder.is_dir() or not (folder / "model_index.json").is_file():
        return False
    return {p.name for p in folder.iterdir()} <= _DIFFUSERS_PARTS
