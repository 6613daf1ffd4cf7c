"""Likeness Face Crop Dataset: a folder of photos (or an IMAGE batch) -> a square face-crop training set + report.

The node resolves folders through the bridge, builds a :class:`CropConfig` from its inputs and calls
``trainers.data.crop.build_dataset``; everything else (detection, cropping, report) lives in ``trainers/data``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import bridge

log = logging.getLogger("likeness")

DEFAULT_FOLDER = "likeness_photos"
PREVIEW_MAX = 64  # crops in the preview batch (a float32 IMAGE of 512x512 crops is 3 MB each)


def _crop():
    from ..trainers.data import crop

    return crop


def _input_folder(folder: str) -> Path:
    from ..trainers.errors import DatasetError

    try:
        return bridge.resolve_input_folder(folder)
    except (ValueError, OSError) as e:
        raise DatasetError(f"Face Crop Dataset: {e}") from None


def _yunet_model() -> str | None:
    from ..trainers.data.faces import YUNET_FOLDER, find_yunet_model

    try:
        path = find_yunet_model(bridge.models_subfolder(YUNET_FOLDER))
    except Exception as e:  # noqa: BLE001 - an odd models folder only means: no YuNet
        log.debug("likeness: no YuNet model folder: %s", e)
        return None
    return str(path) if path else None


def _preview(paths: list[Path]):
    """The crops as a ComfyUI IMAGE batch: float32 [B, H, W, 3] in 0..1."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))


class LikenessFaceCropDataset:
    DESCRIPTION = (
        "Finds the face in each photo of a folder (or an IMAGE batch), cuts a square around it and resizes it to the "
        "training resolution. Writes numbered PNGs with captions and a report (skipped files and why, small or "
        "blurry faces, several faces, near-duplicates) under output/likeness/datasets/."
    )
    RETURN_TYPES = ("LIKENESS_DATASET", "IMAGE", "STRING")
    RETURN_NAMES = ("dataset", "preview", "report")
    OUTPUT_TOOLTIPS = (
        "The dataset (folder, instance prompt, image count) for the DreamBooth / LoRA training nodes.",
        f"The crops (the first {PREVIEW_MAX}), for a Preview Image node.",
        "What happened to every photo, with a verdict.",
    )
    FUNCTION = "build"
    CATEGORY = "Likeness/dataset"
    OUTPUT_NODE = True  # the report is worth seeing even before training is connected

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from .inputs import comfy_inputs

        cfg_cls = _crop().CropConfig
        required = {
            "folder": (
                "STRING",
                {
                    "default": DEFAULT_FOLDER,
                    "tooltip": "Folder of photos inside ComfyUI's input directory (or an absolute path). Ignored "
                    "when an IMAGE batch is connected.",
                },
            ),
            **comfy_inputs(cfg_cls, advanced=False),
        }
        optional = {
            "images": ("IMAGE", {"tooltip": "Photos as an IMAGE batch instead of a folder."}),
            **comfy_inputs(cfg_cls, advanced=True),
        }
        return {"required": required, "optional": optional, "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def IS_CHANGED(cls, folder: str = "", images: Any = None, **kwargs: Any) -> str:
        """Re-run when the photos in the folder change (names, sizes, times), not only when inputs change."""
        if images is not None:
            return ""
        return bridge.input_folder_stamp(folder, recursive=bool(kwargs.get("recursive")))

    def build(self, folder: str, images: Any = None, unique_id: str | None = None, **options: Any):
        from ..trainers.errors import DatasetError
        from ..trainers.handles import DatasetHandle
        from .inputs import config_from_inputs

        crop = _crop()
        fixed: dict[str, Any] = {}
        if options.get("detector", "auto") in ("auto", "yunet"):
            fixed["detector_model"] = _yunet_model()
        cfg = config_from_inputs(crop.CropConfig, options, "Face Crop Dataset", **fixed)
        source: dict[str, Any]
        if images is not None:
            source = {"images": list(images.detach().cpu().float().numpy())}  # a copy: inputs stay untouched
        else:
            source = {"input_folder": _input_folder(folder)}

        bar: list[bridge.Progress] = []

        def progress(done: int, total: int, rep: Any) -> None:
            if not bar:
                bar.append(bridge.Progress(total, node_id=unique_id))
            bar[0].set(done)  # also where a Cancel stops the run (partial files are removed)

        outcome = crop.build_dataset(cfg, output_root=bridge.output_dir(), progress=progress, **source)
        if not outcome.count:
            raise DatasetError(f"Face Crop Dataset: no image could be used.\n{outcome.text}")
        handle = DatasetHandle(
            folder=str(outcome.folder),
            prompt=cfg.instance_prompt.strip(),
            count=outcome.count,
            kind="instance",
            report=outcome.text,
        )
        return {
            "ui": {"text": [outcome.text]},
            "result": (handle, _preview(outcome.images[:PREVIEW_MAX]), outcome.text),
        }


NODE_CLASS_MAPPINGS: dict[str, type] = {"LikenessFaceCropDataset": LikenessFaceCropDataset}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"LikenessFaceCropDataset": "Likeness Face Crop Dataset"}
