"""Class sets on disk: the options, the folder a set lives in and its key, which images are there, the manifest.

Everything here reads and writes files only (no torch, no model): a node can tell what a run would do without
loading anything. Image ``k`` of a set is ``class_{k:05d}.png``; surplus images wait in the hidden ``.spare/``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configspec import opt
from ..errors import ConfigError
from ..fsutil import atomic_path, write_json_atomic
from ..sampling import SAMPLERS
from ..train.config import DEFAULT_CLASS_PROMPT

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "likeness.class_images"
SPARE = ".spare"  # surplus images (index >= count) wait here; hidden, so dataset readers skip it
CLASS_IMAGES_SUBDIR = ("likeness", "class_images")
_NAME = "class_{:05d}.png"
_NAME_RE = re.compile(r"^class_(\d{5,})\.png$")
_SEED_MASK = (1 << 63) - 1

# What decides the pixels (the folder key). Count, batch size, folder, device and precision do not.
KEY_FIELDS = ("class_prompt", "negative_prompt", "resolution", "steps", "cfg", "sampler", "seed")


@dataclass
class ClassImagesConfig:
    """Options of a class image set (CLI flags, node inputs and tooltips come from here)."""

    class_prompt: str = opt(
        DEFAULT_CLASS_PROMPT,
        "What the class images show: your subject's class without its token, e.g. 'a photo of man face'.",
    )
    negative_prompt: str = opt("", "What the images should not show, e.g. 'blurry, lowres, text'; empty for none.")
    count: int = opt(
        200,
        "How many class images the set holds (~200 for a face). Existing ones are reused: only the missing are made.",
        min=1,
        max=100_000,
    )
    resolution: int = opt(
        512, "Side of the square images in pixels, a multiple of 8 (512 for SD1.5).", min=32, max=2048, step=8
    )
    width: int = opt(
        0,
        "Image width in pixels for class images in a non-square training bucket (e.g. 448 with height 576: the 3:4 "
        "bucket of resolution 512); 0 = resolution. A multiple of 8.",
        min=0,
        max=2048,
        step=8,
        advanced=True,
    )
    height: int = opt(
        0, "Image height in pixels (see width); 0 = resolution. A multiple of 8.", min=0, max=2048, step=8,
        advanced=True,
    )  # fmt: skip
    steps: int = opt(30, "Denoising steps per image (20-40 is plenty for DDIM / Euler a).", min=1, max=200)
    cfg: float = opt(
        7.0, "Guidance scale: how closely the images follow the prompt (1 turns guidance off).", min=1.0, max=30.0
    )
    sampler: str = opt("ddim", "Sampler: ddim (deterministic) or euler_a (Euler ancestral).", choices=SAMPLERS)
    seed: int = opt(
        0,
        "Seed of the set: image k always uses a seed made from this and k, so a set resumes and grows identically.",
        min=0,
        max=_SEED_MASK,
        widget="class_seed",  # not "seed": the page would add a "randomize after queue" control and defeat reuse
    )
    batch_size: int = opt(
        4, "Images made at once: faster on a GPU, needs more memory. Does not change the images.", min=1, max=64
    )
    output_folder: str | None = opt(
        None,
        "Folder for the class images. Empty: <output>/likeness/class_images/<settings key>/, reused by every run "
        "with the same model and settings. A relative name is inside the output folder.",
        advanced=True,
    )
    base_model: str | None = opt(
        None, "SD1.5 model to generate with: a .safetensors/.ckpt file or a diffusers folder.", node=False
    )
    vae_path: str | None = opt(None, "Optional separate VAE file to load with the model.", node=False)
    tokenizer: str | None = opt(
        None,
        "CLIP tokenizer folder (vocab.json + merges.txt), needed with a single-file model "
        "(e.g. ComfyUI's comfy/sd1_tokenizer).",
        node=False,
    )
    device: str = opt(
        "auto", "Where to generate: auto = CUDA when available.", choices=("auto", "cpu", "cuda"), node=False
    )
    precision: str = opt(
        "auto",
        "Weights precision: auto = bf16 on GPUs that have it, else fp16 on CUDA, fp32 on CPU "
        "(fp16 is refused on CPU; bf16 there gives fp32 weights).",
        choices=("auto", "fp16", "bf16", "fp32"),
        node=False,
    )

    def check(self) -> None:
        if not self.class_prompt.strip():
            raise ConfigError(
                "option 'class_prompt' is empty; describe the class without your token, e.g. 'a photo of woman face'"
            )
        for name in ("resolution", "width", "height"):
            value = getattr(self, name)
            if value % 8:
                lower = value // 8 * 8
                raise ConfigError(
                    f"option '{name}' is {value}; it must be a multiple of 8 (e.g. {lower or 8} or {lower + 8})"
                )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images: ``resolution`` squared unless width/height say otherwise."""
        return (self.width or self.resolution, self.height or self.resolution)


# ---------------------------------------------------------------------------------------------------------------
# naming, keys, folders


def image_name(k: int) -> str:
    return _NAME.format(k)


def image_seed(seed: int, k: int) -> int:
    """The seed of image ``k`` of a set: a 63-bit hash of ``(seed, k)``, stable across runs and platforms."""
    digest = hashlib.sha256(f"likeness.class:{int(seed)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _SEED_MASK


def set_settings(config: ClassImagesConfig, model_key: str) -> dict[str, Any]:
    """What the images of a set depend on (stored in the manifest and hashed into the key)."""
    data = {name: getattr(config, name) for name in KEY_FIELDS}
    data["class_prompt"] = data["class_prompt"].strip()
    data["negative_prompt"] = data["negative_prompt"].strip()
    data["cfg"] = float(data["cfg"])
    data["model"] = model_key
    width, height = config.size
    if (width, height) != (config.resolution, config.resolution):  # square sets keep the keys they always had
        data["width"], data["height"] = width, height
    return data


def set_key(settings: dict[str, Any]) -> str:
    """``<prompt slug>-<12 hex>``: readable, and unique to the settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(blob).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "_", str(settings.get("class_prompt", "")).lower()).strip("_")[:40] or "class"
    return f"{slug}-{digest}"


def model_key_of(model: Any, vae_path: str | Path | None = None) -> str:
    """Identity of the weights (a hash of ``ModelHandle.key``); a file or folder gets the key its handle would have,
    so the CLI and the node share class sets for the same model."""
    from ..handles import ModelHandle

    if not isinstance(model, ModelHandle):
        p = Path(str(model))
        if not p.exists():
            raise ConfigError(f"model {p} does not exist; give an SD1.5 .safetensors/.ckpt file or a diffusers folder")
        from ..fsutil import content_sha256

        model = ModelHandle(str(p), "sd1", content_sha256(p), vae_path=str(vae_path) if vae_path else None)
    return hashlib.sha256(model.key.encode()).hexdigest()


def components_key(components: Any) -> str:
    """Content hash of in-memory weights (UNet, VAE, text encoder), for components that did not come from a file."""
    import torch

    h = hashlib.sha256()
    for part in ("unet", "vae", "text_encoder"):
        module = getattr(components, part)
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{part}.{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def resolve_folder(config: ClassImagesConfig, key: str, output_root: str | Path | None) -> Path:
    """The set's folder: the user's folder, or ``<output_root>/likeness/class_images/<key>``."""
    root = Path(output_root) if output_root is not None else Path.cwd() / "output"
    if not config.output_folder or not config.output_folder.strip():
        return root.joinpath(*CLASS_IMAGES_SUBDIR, key)
    user = Path(config.output_folder.strip()).expanduser()
    if user.is_absolute():
        return user
    resolved = (root / user).resolve()
    if root.resolve() not in resolved.parents:
        raise ConfigError(
            f"option 'output_folder' {config.output_folder!r} points outside the output folder {root}; "
            "use a plain name (e.g. 'woman_class') or an absolute path"
        )
    return resolved


# ---------------------------------------------------------------------------------------------------------------
# the state of a folder


@dataclass
class ClassSetPlan:
    """What a run will do: which images exist and which are missing (computed without loading any model)."""

    folder: Path
    key: str
    settings: dict[str, Any]
    count: int
    present: list[int]  # indices < count found (in the folder or in .spare/)
    missing: list[int]  # indices < count to generate

    @property
    def complete(self) -> bool:
        return not self.missing


def _indices(folder: Path) -> set[int]:
    if not folder.is_dir():
        return set()
    out = set()
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            out.add(int(m.group(1)))
    return out


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); delete it or choose another output folder") from None
    return data if isinstance(data, dict) else None


def _check_owner(folder: Path, key: str) -> None:
    """A folder holds one set: refuse to mix images made with other settings (or not made by us)."""
    manifest = read_manifest(folder)
    if manifest is not None:
        if manifest.get("key") != key:
            old = manifest.get("settings", {})
            raise ConfigError(
                f"folder {folder} holds class images made with other settings "
                f"(prompt {old.get('class_prompt')!r}, resolution {old.get('resolution')}, seed {old.get('seed')}); "
                "choose another output folder, or leave it empty to use the automatic one"
            )
        return
    if folder.is_dir():
        from ..data.images import list_images

        foreign = list_images(folder)
        if foreign:
            raise ConfigError(
                f"folder {folder} already holds {len(foreign)} images not made by Likeness (e.g. {foreign[0].name}); "
                "choose an empty folder for the class images"
            )


_PART_RE = re.compile(r"^\.class_\d{5,}\.png\.[A-Za-z0-9_]{8}\.part$")  # atomic_path's name for an image


def _clean_temp(folder: Path) -> None:
    """Remove temporary files a killed process may have left (``.class_00012.png.xxxxxxxx.part``: our own names)."""
    for d in (folder, folder / SPARE):
        if d.is_dir():
            for p in d.iterdir():
                if _PART_RE.match(p.name) and p.is_file() and not p.is_symlink():
                    with contextlib.suppress(OSError):
                        p.unlink()
                        log.info("removed an unfinished file %s", p)


def _arrange(folder: Path, count: int) -> None:
    """Move surplus images (index >= count) to ``.spare/`` and bring back spare ones below ``count``."""
    spare = folder / SPARE
    for k in sorted(_indices(folder)):
        if k >= count:
            spare.mkdir(exist_ok=True)
            (folder / image_name(k)).replace(spare / image_name(k))
    for k in sorted(_indices(spare)):
        if k < count:
            target = folder / image_name(k)
            if target.exists():
                (spare / image_name(k)).unlink()
            else:
                (spare / image_name(k)).replace(target)


def plan_class_set(
    config: ClassImagesConfig, model_key: str, output_root: str | Path | None = None, *, key: str | None = None
) -> ClassSetPlan:
    """Which images of the set exist and which must be made. Reads the folder only; changes nothing."""
    settings = set_settings(config, model_key)
    key = key or set_key(settings)
    folder = resolve_folder(config, key, output_root)
    if config.output_folder:
        _check_owner(folder, key)
    have = _indices(folder) | _indices(folder / SPARE)
    present = sorted(k for k in have if k < config.count)
    missing = [k for k in range(config.count) if k not in have]
    return ClassSetPlan(folder=folder, key=key, settings=settings, count=config.count, present=present, missing=missing)


def _write_manifest(plan: ClassSetPlan, extra: dict[str, Any]) -> None:
    old = read_manifest(plan.folder) or {}
    present = sorted(k for k in _indices(plan.folder) if k < plan.count)
    data = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "key": plan.key,
        "settings": plan.settings,
        "seed_rule": "image k: sha256('likeness.class:<seed>:<k>')[:8] little-endian & (2^63-1)",
        "count": len(present),
        "requested": plan.count,
        "complete": len(present) == plan.count,
        "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generated_total": int(old.get("generated_total", 0)) + int(extra.pop("generated", 0)),
        **extra,
    }
    write_json_atomic(plan.folder / MANIFEST, data)


# ---------------------------------------------------------------------------------------------------------------
# results


@dataclass
class ClassImagesResult:
    folder: Path
    key: str
    prompt: str
    requested: int
    generated: int  # made by this run
    reused: int  # already there
    stopped: bool  # the stop flag ended the run early
    files: list[Path] = field(default_factory=list)  # the set's images present now, in index order
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def complete(self) -> bool:
        return self.count == self.requested

    def summary(self) -> str:
        state = "complete" if self.complete else ("stopped" if self.stopped else "incomplete")
        return (
            f"{self.count}/{self.requested} class images ({state}): {self.generated} generated, {self.reused} reused "
            f"in {self.seconds:.1f} s; folder {self.folder}"
        )

    def dataset_handle(self):
        """The ``LIKENESS_DATASET`` value for a trainer: the folder holds exactly ``count`` images."""
        from ..handles import DatasetHandle

        return DatasetHandle(
            folder=str(self.folder),
            prompt=self.prompt,
            count=self.count,
            kind="class",
            report=self.summary(),
        )


def _result(plan: ClassSetPlan, generated: int, stopped: bool, t0: float) -> ClassImagesResult:
    files = [plan.folder / image_name(k) for k in sorted(_indices(plan.folder)) if k < plan.count]
    return ClassImagesResult(
        folder=plan.folder,
        key=plan.key,
        prompt=plan.settings["class_prompt"],
        requested=plan.count,
        generated=generated,
        reused=len(plan.present),
        stopped=stopped,
        files=files,
        seconds=time.perf_counter() - t0,
    )


def _save_png(image, dest: Path) -> None:
    """Write a PIL image as ``dest`` through a temporary file (never half an image); a full disk is one line."""
    try:
        with atomic_path(dest, overwrite=True) as tmp:
            image.save(tmp, format="PNG")
            tmp.chmod(0o644)  # the temporary file is private; the image is an ordinary output file
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise ConfigError(
                f"disk full in {dest.parent}: class image {dest.name} could not be written; the images made so far "
                "are kept: free some space and run again to continue the set"
            ) from None
        raise ConfigError(f"cannot write class image {dest} ({e.strerror or e}); check the folder") from None
