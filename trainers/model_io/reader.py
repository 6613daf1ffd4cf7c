"""Read an SD1.x checkpoint (a single file, or a diffusers folder via ``diffusers_folder``) safely into one
LDM-layout state dict.

``.safetensors`` files are memory-mapped and only the tensors that are used are read. Pickle-based files
(``.ckpt/.pt/.pth/.bin``) go through ``torch.load(weights_only=True)`` only, so a malicious pickle cannot run code.
Everything that is not a weight of the UNet, VAE or text encoder (noise-schedule buffers, ``position_ids``, EMA
bookkeeping) is dropped; EMA weights are used or ignored as asked; keys are normalized to the full LDM prefixes.
"""

from __future__ import annotations

import functools
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .convert import TEXT_MODEL, TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, diffusers_vae_to_ldm, unet_table
from .detect import detect_architecture, state_dict_dtype, unet_shape
from .diffusers_folder import folder_sources, read_folder
from .model_configs import build_unet, bundled_config

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
SAFETENSORS_SUFFIX = ".safetensors"
EMA_CHOICES = ("auto", "ema", "non_ema")
EMA_PREFIX = "model_ema."

# Buffers and bookkeeping found in LDM files that are not weights of the three components.
_IGNORED_TOP = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
}
_IGNORED_SUFFIXES = ("position_ids", "text_projection.weight")  # CLIP-L's projection is unused by SD1
_IGNORED_PREFIXES = (VAE_PREFIX + "loss.",)  # the VAE's training loss (LPIPS/discriminator) in old files


@dataclass
class Checkpoint:
    """An SD1.x model as one LDM-layout state dict (full prefixes) plus what was found on the way."""

    state_dict: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------- raw read


class _SafetensorsFile:
    """Keys of a .safetensors file, with tensors read on demand from the memory-mapped file."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self.metadata = _safetensors_header(path).get("__metadata__") or {}
        try:
            self._f = safe_open(str(path), framework="pt", device="cpu")
            self.keys = list(self._f.keys())
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable .safetensors file ({e}); re-download it") from e

    def get(self, key: str):
        return self._f.get_tensor(key)


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file, checked against the file size (catches truncated downloads)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a .safetensors file (only {size} bytes); re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path} is not a valid .safetensors file (bad header length); re-download it")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a valid .safetensors file (unreadable header); re-download it") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid .safetensors file (bad header); re-download it")
    end = max((_tensor_end(k, v, path) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {8 + n + end} bytes but the file has {size}; "
            "the download was probably interrupted, download it again"
        )
    return header


def _tensor_end(key: str, entry: Any, path: Path) -> int:
    """Where one tensor's bytes end, from its header entry; a malformed entry is a damaged file."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
        or not isinstance(entry.get("dtype"), str)
        or not isinstance(entry.get("shape"), list)
    ):
        raise CheckpointError(
            f"{path} is not a valid .safetensors file (the header entry of {key!r} is malformed); re-download it"
        )
    return offsets[1]


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside a loaded pickle: plain, or nested under 'state_dict' (possibly twice)."""
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        else:
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no tensors (a {type(obj).__name__}); it is not a model checkpoint")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


class _InertObject:
    """Stands in for the training bookkeeping old checkpoints pickle next to the weights (Lightning's
    ``ModelCheckpoint`` callback state): it is created empty and keeps nothing, so no code of theirs runs."""

    def __setstate__(self, state: Any) -> None:
        pass


_INERT_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)


def _extra_safe_globals() -> list[Any]:
    """Harmless globals that original SD .ckpt files reference besides tensors (callback stubs, numpy scalars)."""
    extra: list[Any] = [(_InertObject, name) for name in _INERT_GLOBALS]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
            extra.append((core.multiarray.scalar, name))
        extra.append((np.dtype, "numpy.dtype"))
        for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1"):
            cls = type(np.dtype(code))
            extra.append((cls, f"numpy.dtypes.{cls.__name__}"))
    except ImportError:
        pass
    return extra


def _torch_load(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # neither torch's zip container nor a pickle
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (it starts with {magic!r}, not a zip or pickle header); "
            "check that you picked the model file and that the download finished"
        )
    errors: list[str] = []
    for mmap in (True, False):
        try:
            with torch.serialization.safe_globals(_extra_safe_globals()):
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
            return _unwrap(obj, path)
        except pickle.UnpicklingError as e:
            text = str(e)
            if "Unsupported global" in text or "GLOBAL" in text:
                raise CheckpointError(
                    f"{path} contains Python objects besides weights, which are never unpickled (they could run "
                    "code). If you trust the file, convert it to .safetensors with a trusted tool and use that"
                ) from e
            errors.append(text)
        except Exception as e:  # anything else a non-checkpoint makes torch.load raise (KeyError, EOFError, ...)
            errors.append(f"{type(e).__name__}: {e}")
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint that can be read ({(errors[-1].splitlines() or [''])[0][:200]}); "
        "check that it is a model file and not truncated"
    )


def read_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """All tensors of a file (lazily for safetensors: a dict of key -> loader) + header metadata + format."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        st = _SafetensorsFile(p)
        return {k: _Lazy(st, k) for k in st.keys}, dict(st.metadata), "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return _torch_load(p), {}, "pickle"
    raise CheckpointError(
        f"{p}: unsupported file type {suffix!r}; use a .safetensors (preferred) or .ckpt/.pt/.pth/.bin checkpoint"
    )


class _Lazy:
    __slots__ = ("src", "key")

    def __init__(self, src: _SafetensorsFile, key: str):
        self.src, self.key = src, key

    def load(self):
        return self.src.get(self.key)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.src._f.get_slice(self.key).get_shape())

    @property
    def dtype_name(self) -> str:
        return self.src._f.get_slice(self.key).get_dtype()


def materialize(value: Any):
    return value.load() if isinstance(value, _Lazy) else value


# ------------------------------------------------------------------------------------------------- normalization


def _normalize_prefixes(raw: dict[str, Any]) -> dict[str, Any]:
    """Bring the known alternative spellings to the full LDM prefixes."""
    out: dict[str, Any] = {}
    te_legacy = TEXT_PREFIX  # cond_stage_model.transformer.<no text_model.>
    for key, value in raw.items():
        if key.startswith(te_legacy) and not key.startswith(TEXT_PREFIX + TEXT_MODEL):
            key = TEXT_PREFIX + TEXT_MODEL + key[len(te_legacy) :]
        elif key.startswith("diffusion_model."):  # a bare UNet export
            key = "model." + key
        out[key] = value
    return out


def _ema_name_candidates(model_key: str) -> tuple[str, str]:
    """The two EMA spellings of ``model.<rest>``: dots removed (original LDM) and dotted."""
    rest = model_key[len("model.") :]
    return EMA_PREFIX + rest.replace(".", ""), EMA_PREFIX + rest


def _choose_ema(sd: dict[str, Any], ema: str, path: Path) -> tuple[dict[str, Any], bool, bool]:
    """Return (state dict with model.* = the chosen UNet weights, ema_used, ema_present)."""
    ema_keys = {k for k in sd if k.startswith(EMA_PREFIX) and k not in _IGNORED_TOP}
    unet_keys = [k for k in sd if k.startswith(UNET_PREFIX)]
    if not ema_keys:
        if ema == "ema":
            raise CheckpointError(f"{path} has no EMA weights (no 'model_ema.*' keys); choose ema='auto' or 'non_ema'")
        return sd, False, False
    cleaned = {k: v for k, v in sd.items() if not k.startswith(EMA_PREFIX)}
    use_ema = ema == "ema" or (ema == "auto" and not unet_keys)
    if not use_ema:
        if not unet_keys:
            raise CheckpointError(f"{path} has only EMA UNet weights; choose ema='ema' or 'auto'")
        return cleaned, False, True
    if not unet_keys:  # EMA-only file: recover the UNet key names
        if all("." in k[len(EMA_PREFIX) :] for k in ema_keys):  # dotted form
            for k in ema_keys:
                cleaned["model." + k[len(EMA_PREFIX) :]] = sd[k]
            return cleaned, True, True
        names = _sd15_dotless_names()  # dotless form: only SD1.5's own key names can be recovered
        unknown = sorted(k for k in ema_keys if k not in names)
        if unknown:
            raise CheckpointError(
                f"{path} holds only EMA weights under names that cannot be mapped back ({unknown[0]}, ...); "
                "use a file with regular 'model.diffusion_model.*' weights"
            )
        for k in ema_keys:
            cleaned[names[k]] = sd[k]
        return cleaned, True, True
    missing = []
    for k in unet_keys:
        dotless, dotted = _ema_name_candidates(k)
        src = dotless if dotless in sd else dotted if dotted in sd else None
        if src is None:
            missing.append(k)
        else:
            cleaned[k] = sd[src]
    if missing:
        raise CheckpointError(
            f"{path}: the EMA weights are incomplete ({len(missing)} UNet tensors have no EMA copy, e.g. "
            f"{missing[0]}); choose ema='non_ema'"
        )
    return cleaned, True, True


@functools.lru_cache(maxsize=1)
def _sd15_dotless_names() -> dict[str, str]:
    """{dotless EMA name: 'model.diffusion_model.*' key} for SD1.5's UNet."""
    cfg = bundled_config("unet")
    table = unet_table(cfg, build_unet(cfg).state_dict().keys())
    return {_ema_name_candidates(k)[0]: k for k in table.ldm_keys()}


def _split(sd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {"unet": {}, "vae": {}, "text_encoder": {}, "other": {}}
    for k, v in sd.items():
        if k.startswith(UNET_PREFIX):
            parts["unet"][k] = v
        elif k.startswith(VAE_PREFIX):
            parts["vae"][k] = v
        elif k.startswith(TEXT_PREFIX):
            parts["text_encoder"][k] = v
        else:
            parts["other"][k] = v
    return parts


def _is_ignored(key: str) -> bool:
    return key in _IGNORED_TOP or key.endswith(_IGNORED_SUFFIXES) or key.startswith(_IGNORED_PREFIXES)


def read_vae_file(path: Path) -> dict[str, Any]:
    """A separate VAE file: LDM keys with or without 'first_stage_model.', or diffusers AutoencoderKL keys."""
    raw, _, _ = read_raw(path)
    raw = {k: v for k, v in raw.items() if not _is_ignored(k) and not k.startswith(("model_ema.", "loss."))}
    if any(k.startswith(VAE_PREFIX) for k in raw):
        vae = {k: v for k, v in raw.items() if k.startswith(VAE_PREFIX)}
    elif any(k.startswith("encoder.down.") for k in raw):
        vae = {VAE_PREFIX + k: v for k, v in raw.items() if k.startswith(("encoder.", "decoder.", "quant_conv."))}
        vae.update({VAE_PREFIX + k: v for k, v in raw.items() if k.startswith("post_quant_conv.")})
    elif any(k.startswith("encoder.down_blocks.") for k in raw):
        vae = diffusers_vae_to_ldm({k: materialize(v) for k, v in raw.items()}, path)
    else:
        raise CheckpointError(f"VAE file {path} holds no VAE weights (no encoder/decoder keys); pick a VAE file")
    return {k: materialize(v) for k, v in vae.items()}


# ------------------------------------------------------------------------------------------------ read steps


@dataclass
class _Read:
    """A checkpoint on its way through ``read_checkpoint``: its tensors by component and what was found so far."""

    path: Path
    parts: dict[str, dict[str, Any]]  # "unet", "vae", "text_encoder", "other" -> LDM keys -> tensors (or _Lazy)
    sources: dict[str, str]  # component -> the file it comes from
    fmt: str
    metadata: dict[str, str] = field(default_factory=dict)
    ema_used: bool = False
    ema_present: bool = False
    renamed: bool = True  # keys were respelled (the file is not in the canonical LDM layout)
    info: dict[str, Any] = field(default_factory=dict)


def _read_folder(p: Path, load: bool = True) -> _Read:
    """A diffusers folder, converted to LDM keys (float32; meta tensors when not ``load``)."""
    sd, info = read_folder(p, load)
    return _Read(p, _split(sd), folder_sources(p), "diffusers", info=info)


def _read_file(p: Path, ema: str) -> _Read:
    """A single file: read, keys brought to the full LDM prefixes, the asked-for UNet weights (EMA or not) chosen."""
    raw, metadata, fmt = read_raw(p)
    sd = _normalize_prefixes(raw)
    renamed = set(sd) != set(raw)
    sd, ema_used, ema_present = _choose_ema(sd, ema, p)
    parts = _split(sd)
    sources = {name: str(p) for name in ("unet", "vae", "text_encoder") if parts[name]}
    return _Read(p, parts, sources, fmt, metadata, ema_used, ema_present, renamed)


def _check_architecture(read: _Read, check: bool) -> None:
    """Refuse what is not SD1 (``check``: naming what the file is: SDXL, LoRA, ...) and a file without a UNet."""
    parts = read.parts
    if check:
        detect_architecture({**parts["unet"], **parts["vae"], **parts["text_encoder"], **parts["other"]}, read.path)
    if not parts["unet"]:
        found = sorted(k for part in parts.values() for k in part)[:3]
        raise CheckpointError(
            f"{read.path} has no SD UNet ('model.diffusion_model.*' keys); found e.g. {found}. "
            "It is not an SD1.x checkpoint (a LoRA, embedding or VAE file?)"
        )


def _drop_ignored(read: _Read) -> None:
    """Forget the keys outside the three components (logged) and the buffers of the VAE and text encoder."""
    dropped = [k for k in read.parts["other"] if not _is_ignored(k) and not k.startswith(EMA_PREFIX)]
    if dropped:
        log.info(
            "%s: ignoring %d keys outside the UNet/VAE/text encoder (e.g. %s)", read.path, len(dropped), dropped[0]
        )
    for part in ("vae", "text_encoder"):
        read.parts[part] = {k: v for k, v in read.parts[part].items() if not _is_ignored(k)}


def _replace_vae(read: _Read, vae_path: str | Path) -> None:
    """Take the VAE from a separate file (replacing the checkpoint's, or supplying a missing one)."""
    read.parts["vae"] = read_vae_file(Path(vae_path))
    read.sources["vae"] = str(vae_path)


def _complete_from_base(read: _Read, base_path: str | Path, check: bool, load: bool) -> None:
    """Take a missing VAE and/or text encoder from a full checkpoint."""
    base = read_checkpoint(base_path, ema="auto", check=check, load=load)
    bparts = _split(base.state_dict)
    for part in ("vae", "text_encoder"):
        if not read.parts[part]:
            read.parts[part] = bparts[part]
            read.sources[part] = str(base_path)


def _require_complete(read: _Read) -> None:
    """A UNet without a VAE or text encoder is an error saying what to supply."""
    missing = [name for name in ("vae", "text_encoder") if not read.parts[name]]
    if not missing:
        return
    names = {"vae": "VAE", "text_encoder": "text encoder"}
    hints = []
    if "vae" in missing:
        hints.append("a VAE file (vae_path, or the loader's VAE input)")
    hints.append("a full SD1.5 checkpoint to take the missing parts from (base_path)")
    raise CheckpointError(
        f"{read.path} holds a UNet but no {' and no '.join(names[m] for m in missing)}. Supply "
        + " or ".join(hints)
        + ", e.g. v1-5-pruned-emaonly.safetensors"
    )


def _info(read: _Read, out: dict[str, Any]) -> dict[str, Any]:
    """What ``read_checkpoint`` reports about the checkpoint it returns (``out``)."""
    p = str(read.path)
    sources = read.sources
    return {
        **read.info,
        "variant": "sd1",
        "format": read.fmt,
        "ema_present": read.ema_present,
        "ema_used": read.ema_used,
        "dtype": state_dict_dtype(out),
        "sources": sources,
        "metadata": read.metadata,
        "path": p,
        "needs_normalizing": read.renamed or sources.get("vae") != p or sources.get("text_encoder") != p,
        "counts": {name: len(read.parts[name]) for name in ("unet", "vae", "text_encoder")},
        "unet_shape": unet_shape(read.parts["unet"]),
    }


# ------------------------------------------------------------------------------------------------------ public


def read_checkpoint(
    path: str | Path,
    *,
    ema: str = "auto",
    vae_path: str | Path | None = None,
    base_path: str | Path | None = None,
    check: bool = True,
    load: bool = True,
) -> Checkpoint:
    """Read an SD1.x checkpoint into one LDM-layout state dict.

    ``ema``: "auto" (the regular weights when the file has both, the EMA weights when it has only those), "ema" or
    "non_ema". ``vae_path`` replaces (or supplies) the VAE, ``base_path`` supplies whatever the file lacks (a
    UNet-only file). A diffusers folder is accepted too. ``info`` reports variant, ema_used, dtype and sources.
    """
    if ema not in EMA_CHOICES:
        raise CheckpointError(f"ema={ema!r} is not one of {', '.join(EMA_CHOICES)}")
    p = Path(path)
    read = _read_folder(p, load) if p.is_dir() else _read_file(p, ema)
    _check_architecture(read, check)
    _drop_ignored(read)
    if vae_path:
        _replace_vae(read, vae_path)
    if base_path and (not read.parts["vae"] or not read.parts["text_encoder"]):
        _complete_from_base(read, base_path, check, load)
    _require_complete(read)
    out = {**read.parts["unet"], **read.parts["vae"], **read.parts["text_encoder"]}
    if load:
        out = {k: materialize(v) for k, v in out.items()}
    return Checkpoint(out, _info(read, out))


def inspect_checkpoint(path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """What ``read_checkpoint`` would report, without reading the tensors of a .safetensors file."""
    return read_checkpoint(path, load=False, **kwargs).info
