"""Likeness Generate Class Images: the prior-preservation set, made from the user's own checkpoint and reused.

The node turns its inputs into a :class:`ClassImagesConfig` and calls ``trainers.classgen``: it checks the class
folder first (no model is loaded when the set is already there), generates only the missing images inside
``bridge.gpu_session`` with a per-image progress bar and Cancel, or stores a connected IMAGE batch as the set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..trainers.classgen import ClassImagesConfig
from ..trainers.errors import ConfigError
from . import bridge
from .images import files_to_image, image_to_pil
from .inputs import comfy_inputs, config_from_inputs, node_specs, validator

log = logging.getLogger("likeness")

TITLE = "Generate Class Images"
PREVIEW_COUNT = 4
REMEMBERED = 256  # (node, settings) pairs whose model is remembered for IS_CHANGED

# ComfyUI 2025+ calls IS_CHANGED with no linked inputs at all (the 2024 host passes the model when the loader's output
# is cached), so the model key of a node's last run with the same settings is remembered here, in the process the
# host's cache lives in.
_last_model_key: dict[tuple[str, str], str] = {}


def _remember_key(unique_id: Any, values: dict[str, Any]) -> tuple[str, str]:
    settings = {k: v for k, v in values.items() if k not in ("model", "images", "unique_id")}
    return str(unique_id), json.dumps(settings, sort_keys=True, default=str)


def _classgen():
    from ..trainers import classgen

    return classgen


def _config(values: dict[str, Any]):
    config = config_from_inputs(ClassImagesConfig, values, TITLE)
    folder = (config.output_folder or "").strip()
    if folder and Path(folder).expanduser().is_absolute():
        try:  # a server started with --listen must not write wherever a request says
            bridge.check_allowed_folder(Path(folder), "option 'output_folder'")
        except ValueError as e:
            raise ConfigError(f"{TITLE}: {e}") from None
    return config


def _remember(unique_id: Any, values: dict[str, Any], model_key: str) -> None:
    key = _remember_key(unique_id, values)
    _last_model_key.pop(key, None)
    _last_model_key[key] = model_key
    while len(_last_model_key) > REMEMBERED:
        _last_model_key.pop(next(iter(_last_model_key)))


def _ui_images(files: list[Path]) -> list[dict[str, str]]:
    """The first images as the page's output thumbnails (only when they are inside ComfyUI's output folder)."""
    try:
        root = bridge.output_dir().resolve()
    except Exception:  # noqa: BLE001 - thumbnails are a nicety
        return []
    out = []
    for p in files[:PREVIEW_COUNT]:
        p = p.resolve()
        if root not in p.parents:
            return []
        out.append({"filename": p.name, "subfolder": p.parent.relative_to(root).as_posix(), "type": "output"})
    return out


def _device_option(device: Any) -> str:
    """The host's torch device as the engine's ``device`` option (as the training nodes do): a device the engine
    does not drive (e.g. ``mps``) becomes ``auto``."""
    kind = getattr(device, "type", str(device))
    return kind if kind in ("cpu", "cuda") else "auto"


class LikenessGenerateClassImages:
    DESCRIPTION = (
        f"Makes the class images for prior preservation (by default {ClassImagesConfig().count} of "
        f"'{ClassImagesConfig().class_prompt}') with your own "
        "checkpoint, so DreamBooth/LoRA training keeps what the class looks like while it learns your subject. "
        "The set is saved under output/likeness/class_images/ in a folder named after the model and the settings "
        "and reused: queuing again makes nothing, a higher count makes only the missing images, and a cancelled "
        "run continues where it stopped (image k is always the same image). Connect an IMAGE batch to use images "
        "made by any other graph as the class set instead."
    )
    RETURN_TYPES = ("LIKENESS_DATASET", "IMAGE")
    RETURN_NAMES = ("class_dataset", "preview")
    OUTPUT_TOOLTIPS = (
        "The class image set (folder, class prompt, count) for the class input of the DreamBooth / LoRA nodes.",
        f"The first {PREVIEW_COUNT} class images, for a Preview Image node.",
    )
    FUNCTION = "generate"
    CATEGORY = "Likeness/dataset"
    OUTPUT_NODE = True  # pre-generating the set is a useful step on its own

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        cfg_cls = ClassImagesConfig
        required = {
            "model": (
                "LIKENESS_MODEL",
                {"tooltip": "The checkpoint to generate with (from Likeness Load Checkpoint): the one you train."},
            ),
            **comfy_inputs(cfg_cls, advanced=False),
        }
        optional = {
            "images": (
                "IMAGE",
                {
                    "tooltip": "Optional: an IMAGE batch made by any graph (e.g. KSampler with your favourite "
                    "sampler) to save as the class set instead of generating; count, steps and sampler are then "
                    "not used."
                },
            ),
            **comfy_inputs(cfg_cls, advanced=True),
        }
        return {"required": required, "optional": optional, "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def IS_CHANGED(cls, model: Any = None, images: Any = None, **values: Any) -> str:
        """Which images of the set are on disk: re-run when some went missing (deleted by hand), not otherwise.

        Cheap (a folder listing, no model). The 2024 host passes ``model`` when the loader's output is cached; newer
        hosts pass no linked input, and the model of this node's last run with these settings is used.
        """
        if images is not None:
            return ""
        try:
            cg = _classgen()
            if hasattr(model, "content_hash"):
                model_key = cg.model_key_of(model)
            else:
                model_key = _last_model_key.get(_remember_key(values.get("unique_id"), values))
                if model_key is None:
                    return ""  # not run in this process yet: the host runs it anyway
            plan = cg.plan_class_set(_config(values), model_key, bridge.output_dir())
        except Exception as e:  # noqa: BLE001 - generate() reports bad settings with a proper message
            return f"error: {e}"
        return f"{plan.key}:{plan.count}:{len(plan.missing)}:{','.join(map(str, plan.missing[:50]))}"

    # bad settings are refused when the prompt is queued, before anything runs (linked inputs: when it runs)
    VALIDATE_INPUTS = validator(
        ClassImagesConfig, [s.input_name for s in node_specs(ClassImagesConfig, advanced=False)], TITLE
    )

    def generate(self, model: Any, images: Any = None, unique_id: str | None = None, **values: Any):
        cg = _classgen()
        config = _config(values)  # validated: bad settings fail here, before any work
        output_root = bridge.output_dir()
        if images is not None:
            result = cg.save_image_batch(image_to_pil(images), config, output_root=output_root)
        else:
            if not hasattr(model, "content_hash"):
                from ..trainers.errors import ConfigError

                raise ConfigError(f"{TITLE}: connect 'model' to the likeness_model output of Likeness Load Checkpoint")
            model_key = cg.model_key_of(model)
            _remember(unique_id, values, model_key)
            plan = cg.plan_class_set(config, model_key, output_root)
            if plan.complete:
                result = cg.generate_class_images(config, model=model, output_root=output_root)
            else:
                result = self._generate(cg, config, model, plan, output_root, unique_id)
        handle = result.dataset_handle()
        preview = files_to_image(result.files, PREVIEW_COUNT)
        ui = {
            "images": _ui_images(result.files),
            "likeness_classes": [
                {
                    "folder": str(result.folder),
                    "key": result.key,
                    "count": result.count,
                    "generated": result.generated,
                    "reused": result.reused,
                    "summary": result.summary(),
                }
            ],
        }
        return {"ui": ui, "result": (handle, preview)}

    @staticmethod
    def _generate(cg, config, model, plan, output_root: Path, unique_id: str | None):
        bar = bridge.Progress(config.count, node_id=unique_id)
        bar.set(len(plan.present))
        with bridge.gpu_session("class images"):
            result = cg.generate_class_images(
                config,
                model=model,
                tokenizer=bridge.sd1_tokenizer_path(),
                output_root=output_root,
                device=_device_option(bridge.torch_device()),
                on_image=lambda done, total, path: bar.set(done),  # also the host's Cancel point
                stop=bridge.interrupted,
            )
        if result.stopped:
            bridge.raise_if_interrupted()  # ends the prompt as "interrupted"; the saved images stay
        return result


NODE_CLASS_MAPPINGS: dict[str, type] = {"LikenessGenerateClassImages": LikenessGenerateClassImages}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"LikenessGenerateClassImages": "Likeness Generate Class Images"}
