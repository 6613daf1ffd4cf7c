"""Class images for prior preservation: generated once from the user's own checkpoint, reused across runs.

A class set is a folder of ``class_00000.png``, ``class_00001.png``, ... plus a small ``manifest.json``. The folder
is keyed by everything that decides what the images look like — the model's content hash, prompt, negative prompt,
resolution, sampler, steps, CFG and seed — and *not* by the count or batch size, so:

- asking for 200 images when 150 exist generates only the 50 missing ones; asking for fewer hides the surplus in a
  hidden ``.spare/`` sub-folder (training reads exactly ``count`` images) and a later, larger request brings them
  back instead of regenerating them;
- image ``k`` starts from its own noise, seeded by :func:`image_seed` ``(seed, k)``, with its own generator for the
  sampler's noise, so it is the same image whatever the batch size and whether the set was made in one run or
  resumed after a cancel. Batches are aligned to multiples of the batch size (image ``k`` is always computed in
  batch ``k // batch_size``), so a resumed run repeats the exact computation and is bit-identical; a different batch
  size changes float rounding only (≤ 1 level in 8-bit pixels, rarely);
- every file is written to a temporary name and renamed (:func:`~trainers.fsutil.atomic_path`): a cancel or a crash
  never leaves a half image, and stale temporary files are removed on the next run.

:func:`generate_class_images` is the engine entry point (the ComfyUI node and ``python -m trainers classes`` call
it); :func:`save_image_batch` stores an image batch made elsewhere (e.g. ComfyUI's own KSampler) as a class set.
Heavy imports (torch, diffusers) happen inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configspec import opt
from .errors import ConfigError
from .fsutil import atomic_path, write_json_atomic
from .train.config import DEFAULT_CLASS_PROMPT

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "euler_a")
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
        "Weights precision: auto = fp16 on CUDA, fp32 on CPU.",
        choices=("auto", "fp16", "bf16", "fp32"),
        node=False,
    )

    def check(self) -> None:
        if not self.class_prompt.strip():
            raise ConfigError(
                "option 'class_prompt' is empty; describe the class without your token, e.g. 'a photo of woman face'"
            )
        if self.resolution % 8:
            lower = self.resolution // 8 * 8
            raise ConfigError(
                f"option 'resolution' is {self.resolution}; it must be a multiple of 8 (e.g. {lower} or {lower + 8})"
            )


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
    from .handles import ModelHandle

    if not isinstance(model, ModelHandle):
        p = Path(str(model))
        if not p.exists():
            raise ConfigError(f"model {p} does not exist; give an SD1.5 .safetensors/.ckpt file or a diffusers folder")
        from .fsutil import content_sha256

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
        from .data.images import list_images

        foreign = list_images(folder)
        if foreign:
            raise ConfigError(
                f"folder {folder} already holds {len(foreign)} images not made by Likeness (e.g. {foreign[0].name}); "
                "choose an empty folder for the class images"
            )


def _clean_temp(folder: Path) -> None:
    """Remove temporary files a killed process may have left (``.class_00012.png.xxxx.part``)."""
    for d in (folder, folder / SPARE):
        if d.is_dir():
            for p in d.glob(".*.part"):
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
        from .handles import DatasetHandle

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


# ---------------------------------------------------------------------------------------------------------------
# generation


class _Abandon(Exception):
    """Raised inside the pipeline's step callback when the stop flag is set: the batch is dropped unsaved."""


def pick_device_dtype(device: Any = "auto", precision: str = "auto"):
    """(torch device, dtype): fp16 (or the asked bf16) on CUDA, always fp32 on CPU."""
    import torch

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("option 'device' is 'cuda' but no CUDA GPU is available; use device=auto or cpu")
    if dev.type == "cpu":
        if precision in ("fp16", "bf16"):
            log.warning("precision %s is not used on CPU; generating in fp32", precision)
        return dev, torch.float32
    table = {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    return dev, table[precision]


def make_scheduler(noise_scheduler: Any, sampler: str):
    """A DDIM or Euler-ancestral sampler on the model's own training noise schedule (SD1.5's conventions)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    cfg = dict(noise_scheduler.config)
    common = {
        "num_train_timesteps": cfg.get("num_train_timesteps", 1000),
        "beta_start": cfg.get("beta_start", 0.00085),
        "beta_end": cfg.get("beta_end", 0.012),
        "beta_schedule": cfg.get("beta_schedule", "scaled_linear"),
        "prediction_type": cfg.get("prediction_type", "epsilon"),
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }
    if sampler == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler(**common)
    raise ConfigError(f"option 'sampler' is {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def build_pipeline(components: Any, sampler: str):
    """A pipeline sharing our components' modules (no copy, no safety checker), with SDPA attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from .model_io import make_pipeline

    components.unet.set_attn_processor(AttnProcessor2_0())
    components.vae.set_attn_processor(AttnProcessor2_0())
    return make_pipeline(components, make_scheduler(components.noise_scheduler, sampler))


def _batches(missing: Sequence[int], batch_size: int) -> list[list[int]]:
    """Missing indices grouped by ``k // batch_size``: image k is always computed in the same batch slot."""
    groups: dict[int, list[int]] = {}
    for k in missing:
        groups.setdefault(k // batch_size, []).append(k)
    return [groups[b] for b in sorted(groups)]


def encode_prompts(pipe, config: ClassImagesConfig):
    """``(prompt_embeds, negative_embeds or None)`` for one image: encoded once per run, shared by every batch."""
    import torch

    with torch.inference_mode():
        positive, negative = pipe.encode_prompt(
            config.class_prompt.strip(),
            pipe.unet.device,
            1,
            config.cfg > 1.0,
            negative_prompt=config.negative_prompt.strip() if config.cfg > 1.0 else None,
        )
    return positive, negative


def render_batch(
    pipe,
    config: ClassImagesConfig,
    indices: Sequence[int],
    stop: Callable[[], bool] | None = None,
    embeds: tuple[Any, Any] | None = None,
):
    """PIL images for set indices ``indices``; each has its own start noise and sampler generator."""
    import torch

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    side = config.resolution // pipe.vae_scale_factor  # 8 for SD1.5
    gens, noise = [], []
    for k in indices:
        g = torch.Generator("cpu").manual_seed(image_seed(config.seed, k))
        noise.append(torch.randn((1, unet.config.in_channels, side, side), generator=g, dtype=torch.float32))
        gens.append(g)
    latents = torch.cat(noise).to(device=device, dtype=dtype)
    positive, negative = embeds if embeds is not None else encode_prompts(pipe, config)
    n = len(indices)

    def on_step(_pipe, _i, _t, kwargs):
        if stop is not None and stop():
            raise _Abandon
        return kwargs

    with torch.inference_mode():
        out = pipe(
            prompt_embeds=positive.expand(n, -1, -1),
            negative_prompt_embeds=negative.expand(n, -1, -1) if negative is not None else None,
            height=config.resolution,
            width=config.resolution,
            num_inference_steps=config.steps,
            guidance_scale=config.cfg,
            eta=0.0,
            latents=latents,
            generator=gens,
            output_type="pil",
            callback_on_step_end=on_step,
        )
    return out.images


def _save_png(image, dest: Path) -> None:
    with atomic_path(dest, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
        tmp.chmod(0o644)  # the temporary file is private; the image is an ordinary output file


def load_generation_components(config: ClassImagesConfig, model: Any, tokenizer: Any, device, dtype):
    """The model's diffusers components, via ``model_io`` (a ``ModelHandle``, file or diffusers folder)."""
    from .model_io import load_components

    source = model
    if isinstance(model, (str, Path)) and config.vae_path:
        from .model_io import make_model_handle

        source = make_model_handle(str(model), vae_path=config.vae_path)
    return load_components(source, tokenizer=tokenizer, dtype=dtype, device=device)


def generate_class_images(
    config: ClassImagesConfig,
    *,
    model: Any = None,
    components: Any = None,
    model_key: str | None = None,
    tokenizer: Any = None,
    output_root: str | Path | None = None,
    on_image: Callable[[int, int, Path], None] | None = None,
    stop: Callable[[], bool] | None = None,
    device: Any = None,
) -> ClassImagesResult:
    """Make (or top up) the class set described by ``config`` and return what is there now.

    ``model`` is a ``ModelHandle``, a model file or a diffusers folder (default ``config.base_model``); or pass
    already loaded ``components`` (``unet, vae, text_encoder, tokenizer, noise_scheduler``), with ``model_key`` to
    name their weights (else their tensors are hashed). Nothing is loaded when the set is already complete.
    ``on_image(done, total, path)`` is called after each image is saved (``done`` counts reused ones too, ``total``
    is ``config.count``); ``stop()`` is polled between batches and at every denoising step, and ends the run with
    the images saved so far (``result.stopped``). A batch cut short is dropped, never half saved. ``device``
    (e.g. the host's torch device) overrides ``config.device``.
    """
    from .configspec import validate

    t0 = time.perf_counter()
    validate(config)
    model = model if model is not None else config.base_model
    if components is None and not model:
        raise ConfigError("no model given: set option 'base_model' to an SD1.5 .safetensors/.ckpt file or folder")
    if model_key is None:
        model_key = model_key_of(model, config.vae_path) if components is None else components_key(components)
    plan = plan_class_set(config, model_key, output_root)
    plan.folder.mkdir(parents=True, exist_ok=True)
    _clean_temp(plan.folder)
    _arrange(plan.folder, config.count)
    done = len(plan.present)
    if plan.complete:
        log.info("class images: all %d already in %s; nothing to generate", config.count, plan.folder)
        if (read_manifest(plan.folder) or {}).get("requested") != config.count:
            _write_manifest(plan, {})
        return _result(plan, 0, False, t0)

    log.info(
        "class images: %d of %d exist in %s; generating %d",
        len(plan.present),
        config.count,
        plan.folder,
        len(plan.missing),
    )
    if components is None:
        device, dtype = pick_device_dtype(config.device if device is None else device, config.precision)
        components = load_generation_components(config, model, tokenizer or config.tokenizer, device, dtype)
    pipe = build_pipeline(components, config.sampler)
    embeds = encode_prompts(pipe, config)
    generated, stopped = 0, False
    info = {"device": str(pipe.unet.device), "dtype": str(pipe.unet.dtype).replace("torch.", "")}
    for indices in _batches(plan.missing, config.batch_size):
        if stop is not None and stop():
            stopped = True
            break
        try:
            images = render_batch(pipe, config, indices, stop, embeds)
        except _Abandon:
            stopped = True
            break
        paths = []
        for k, image in zip(indices, images, strict=True):
            path = plan.folder / image_name(k)
            _save_png(image, path)
            paths.append(path)
        generated += len(paths)
        _write_manifest(plan, {"generated": len(paths), **info})
        for path in paths:  # after the whole batch is saved: a callback that raises loses nothing
            done += 1
            if on_image is not None:
                on_image(done, config.count, path)
    if stopped:
        log.info("class images: stopped after %d new images; the next run continues the set", generated)
    result = _result(plan, generated, stopped, t0)
    log.info("class images: %s", result.summary())
    return result


# ---------------------------------------------------------------------------------------------------------------
# an image batch made elsewhere


def _to_pil_list(images: Any) -> list:
    """A ComfyUI ``IMAGE`` (float tensor ``B,H,W,C`` in 0..1), a list of PIL images or of such tensors."""
    from PIL import Image

    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, (list, tuple)):
        out = []
        for item in images:
            out.extend(_to_pil_list(item))
        return out
    import numpy as np

    arr = (
        images.detach().to("cpu").float().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    )
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ConfigError(f"the image batch has shape {tuple(arr.shape)}; connect an IMAGE (batch, height, width, 3)")
    arr = arr[..., :3] if arr.shape[-1] != 1 else np.repeat(arr, 3, axis=-1)
    pixels = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return [Image.fromarray(p, mode="RGB") for p in pixels]


def save_image_batch(
    images: Any,
    config: ClassImagesConfig,
    *,
    output_root: str | Path | None = None,
    on_image: Callable[[int, int, Path], None] | None = None,
) -> ClassImagesResult:
    """Store images made elsewhere as the class set for ``config.class_prompt`` (count = the batch size).

    The folder is keyed by the prompt and the pixels, so saving the same batch again writes nothing.
    """
    from .configspec import validate

    t0 = time.perf_counter()
    pil = _to_pil_list(images)
    if not pil:
        raise ConfigError("the image batch is empty; connect the IMAGE output of a sampler/decoder")
    from dataclasses import replace

    validate(config)
    h = hashlib.sha256()
    for im in pil:
        h.update(f"{im.size}".encode() + im.tobytes())
    cfg = replace(config, count=len(pil))
    settings = {"class_prompt": cfg.class_prompt.strip(), "source": "image batch", "pixels": h.hexdigest()}
    key = set_key(settings)
    folder = resolve_folder(cfg, key, output_root)
    if cfg.output_folder:
        _check_owner(folder, key)
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temp(folder)
    _arrange(folder, cfg.count)
    have = _indices(folder)
    plan = ClassSetPlan(folder=folder, key=key, settings=settings, count=cfg.count, present=sorted(have), missing=[])
    written = 0
    for k, im in enumerate(pil):
        path = folder / image_name(k)
        if k not in have:
            _save_png(im, path)
            written += 1
        if on_image is not None:
            on_image(k + 1, len(pil), path)
    _write_manifest(plan, {"generated": 0, "saved_from_batch": written})
    result = _result(plan, 0, False, t0)
    result.reused = len(pil) - written
    log.info("class images from an image batch: %d saved, %d already there, folder %s", written, result.reused, folder)
    return result


def load_preview(files: Sequence[Path], limit: int = 4):
    """The first ``limit`` images as a ComfyUI ``IMAGE`` tensor (``N,H,W,3`` float 0..1), resized to the first."""
    import numpy as np
    import torch
    from PIL import Image

    chosen = list(files)[:limit]
    if not chosen:
        return torch.zeros((1, 64, 64, 3), dtype=torch.float32)
    arrays, size = [], None
    for p in chosen:
        with Image.open(p) as im:
            im = im.convert("RGB")
            size = size or im.size
            if im.size != size:
                im = im.resize(size, Image.Resampling.LANCZOS)
            arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))


# ---------------------------------------------------------------------------------------------------------------
# CLI: python -m trainers classes --config FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .configspec import add_arguments as add_config_arguments

    add_config_arguments(parser, ClassImagesConfig)
    parser.add_argument(
        "--output-root",
        metavar="DIR",
        default="output",
        help="root for the automatic folder <DIR>/likeness/class_images/<key>/ (default: ./output)",
    )


def run(args: argparse.Namespace) -> int:
    from .configspec import from_args

    config = from_args(ClassImagesConfig, args)
    if not config.base_model:
        raise ConfigError("option 'base_model' is not set; pass --base-model MODEL.safetensors (or a diffusers folder)")

    def on_image(done: int, total: int, path: Path) -> None:
        print(f"[{done}/{total}] {path}", flush=True)

    try:
        result = generate_class_images(config, output_root=args.output_root, on_image=on_image)
    except KeyboardInterrupt:  # images saved so far stay; the next run continues
        print("stopped; run again to complete the set", flush=True)
        return 130
    print(result.summary())
    print(result.folder)
    return 0
