"""Making class images: load the model (only when images are missing), render the missing ones batch by batch, and
store an image batch made elsewhere as a set.

Rendering goes through :mod:`trainers.sampling` (per-image seeds, one prompt encoding per run) and the device and
precision rules of :mod:`trainers.devices`. Heavy imports (torch, diffusers) happen inside the functions.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import ConfigError
from .store import (
    ClassImagesConfig,
    ClassImagesResult,
    ClassSetPlan,
    _arrange,
    _check_owner,
    _clean_temp,
    _indices,
    _result,
    _save_png,
    _write_manifest,
    components_key,
    image_name,
    image_seed,
    model_key_of,
    plan_class_set,
    read_manifest,
    resolve_folder,
    set_key,
)

log = logging.getLogger(__name__)

OnImage = Callable[[int, int, Path], None]


def load_generation_components(config: ClassImagesConfig, model: Any, tokenizer: Any, device, dtype):
    """The model's diffusers components, via ``model_io`` (a ``ModelHandle``, file or diffusers folder)."""
    from ..model_io import load_components

    source = model
    if isinstance(model, (str, Path)) and config.vae_path:
        from ..model_io import make_model_handle

        source = make_model_handle(str(model), vae_path=config.vae_path)
    return load_components(source, tokenizer=tokenizer, dtype=dtype, device=device)


def _open_folder(folder: Path, count: int) -> None:
    """Create the set's folder, drop unfinished files and keep exactly the images below ``count`` in it."""
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temp(folder)
    _arrange(folder, count)


def _plan(config: ClassImagesConfig, model: Any, components: Any, model_key: str | None, output_root) -> ClassSetPlan:
    """Check the options, name the weights and ready the folder: what the run has to make. With several processes
    the main one readies the folder and the others wait for it."""
    from ..configspec import validate

    validate(config)
    if components is None and not model:
        raise ConfigError("no model given: set option 'base_model' to an SD1.5 .safetensors/.ckpt file or folder")
    if model_key is None:
        model_key = model_key_of(model, config.vae_path) if components is None else components_key(components)
    plan = plan_class_set(config, model_key, output_root)
    if distributed.is_main():
        _open_folder(plan.folder, config.count)
    distributed.barrier(config.device)
    return plan


def _pipeline(config: ClassImagesConfig, model: Any, components: Any, tokenizer: Any, device: Any):
    """The sampling pipeline, loading the model first when no components were given (SDPA attention)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from .. import sampling
    from ..devices import placement

    if components is None:
        where = placement(config.device if device is None else device, config.precision)
        components = load_generation_components(
            config, model, tokenizer or config.tokenizer, distributed.local_device(where.device_type),
            where.frozen_dtype,
        )  # fmt: skip
    components.unet.set_attn_processor(AttnProcessor2_0())
    components.vae.set_attn_processor(AttnProcessor2_0())
    return sampling.make_pipeline(components, config.sampler)


def _batches(missing: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Missing indices grouped by ``k // batch_size``: image k is always computed in the same batch slot. With
    ``world`` processes, process ``rank`` makes every ``world``-th group: each image is made once, by one process."""
    groups: dict[int, list[int]] = {}
    for k in missing:
        groups.setdefault(k // batch_size, []).append(k)
    return [groups[b] for i, b in enumerate(sorted(groups)) if i % world == rank]


def _render_missing(
    pipe, config: ClassImagesConfig, plan: ClassSetPlan, on_image: OnImage | None, stop: Callable[[], bool] | None
) -> tuple[int, bool]:
    """Render and save the missing images batch by batch: ``(images made, stopped)``."""
    from .. import collector, sampling

    collector.resume()  # a command-line run paused the collector for its set-up (trainers/collector.py)
    embeds = sampling.encode_prompt(pipe, config.class_prompt, config.negative_prompt, config.cfg)
    info = {"device": str(pipe.unet.device), "dtype": str(pipe.unet.dtype).replace("torch.", "")}
    done, generated = len(plan.present), 0
    main = distributed.is_main()
    for indices in _batches(plan.missing, config.batch_size, distributed.rank(), distributed.world_size()):
        if stop is not None and stop():
            return generated, True
        try:
            images = sampling.render(
                pipe,
                embeds,
                [image_seed(config.seed, k) for k in indices],
                height=config.size[1],
                width=config.size[0],
                steps=config.steps,
                guidance=config.cfg,
                stop=stop,
                latent_dtype=pipe.unet.dtype,
            )
        except sampling.Abandoned:
            return generated, True
        paths = [plan.folder / image_name(k) for k in indices]
        for image, path in zip(images, paths, strict=True):
            _save_png(image, path)
        generated += len(paths)
        if main:  # the main process keeps the manifest; the others' images are counted in at the end
            _write_manifest(plan, {"generated": len(paths), **info})
        for path in paths:  # after the whole batch is saved: a callback that raises loses nothing
            done += 1
            if on_image is not None:
                on_image(done, config.count, path)
    return generated, False


def generate_class_images(
    config: ClassImagesConfig,
    *,
    model: Any = None,
    components: Any = None,
    model_key: str | None = None,
    tokenizer: Any = None,
    output_root: str | Path | None = None,
    on_image: OnImage | None = None,
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
    t0 = time.perf_counter()
    model = model if model is not None else config.base_model
    plan = _plan(config, model, components, model_key, output_root)
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
    pipe = _pipeline(config, model, components, tokenizer, device)
    mine, stopped = _render_missing(pipe, config, plan, on_image if distributed.is_main() else None, stop)
    generated, stopped = _gather(config, plan, mine, stopped)
    if stopped:
        log.info("class images: stopped after %d new images; the next run continues the set", generated)
    result = _result(plan, generated, stopped, t0)
    log.info("class images: %s", result.summary())
    return result


def _gather(config: ClassImagesConfig, plan: ClassSetPlan, mine: int, stopped: bool) -> tuple[int, bool]:
    """Several processes: wait for all, count every process's images into the manifest (main process). Returns the
    images made by all processes and whether any of them was stopped."""
    if distributed.world_size() == 1:
        return mine, stopped
    log.info("class images: process %d of %d made %d", distributed.rank(), distributed.world_size(), mine)
    total, stops = distributed.sum_ints([mine, int(stopped)], config.device)
    if distributed.is_main():
        _write_manifest(plan, {"generated": total - mine})
    distributed.barrier(config.device)
    return total, stops > 0


# ---------------------------------------------------------------------------------------------------------------
# an image batch made elsewhere


def save_image_batch(
    images: Sequence[Any],
    config: ClassImagesConfig,
    *,
    output_root: str | Path | None = None,
    on_image: OnImage | None = None,
) -> ClassImagesResult:
    """Store PIL images made elsewhere as the class set for ``config.class_prompt`` (count = the number of images).

    The folder is keyed by the prompt and the pixels, so saving the same batch again writes nothing.
    """
    from ..configspec import validate

    t0 = time.perf_counter()
    pil = [im.convert("RGB") for im in images]
    if not pil:
        raise ConfigError("the image batch is empty; connect the IMAGE output of a sampler/decoder")
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
    _open_folder(folder, cfg.count)
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
