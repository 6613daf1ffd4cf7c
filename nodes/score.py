"""Likeness Score: how much each picture of an IMAGE batch looks like the subject (face identity, offline).

The reference is a ``LIKENESS_DATASET`` (Face Crop Dataset) or a folder of photos inside ComfyUI's input folder. The
scoring itself is ``trainers.identity``; here: inputs, the reference folder check, IMAGE -> pictures, outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import bridge

log = logging.getLogger(__name__)

NO_SCORE = -1.0  # the FLOAT given for a picture without a score (no face, several faces, face too small)


def _identity():
    from ..trainers import identity

    return identity


def reference_path(reference: Any, folder: str) -> Path:
    """The photos to compare with: the connected dataset's folder, else the typed folder (inside input/)."""
    from ..trainers.errors import DatasetError
    from ..trainers.handles import DatasetHandle

    if reference is not None:
        if not isinstance(reference, DatasetHandle):
            raise DatasetError("reference: connect a LIKENESS_DATASET (the dataset output of Face Crop Dataset)")
        return Path(reference.folder)
    if not (folder or "").strip():
        raise DatasetError(
            "Likeness Score needs the subject's photos: connect 'reference' (Face Crop Dataset) or type "
            "'reference_folder' (a folder inside ComfyUI's input folder)"
        )
    try:
        return bridge.resolve_input_folder(folder)
    except (ValueError, OSError) as e:
        raise DatasetError(f"reference_folder: {e}") from None


def _needs() -> str:
    """What the reference inputs' tooltips add: the install line, and why it is off when it is."""
    ok, message = _identity().status()
    install = f"Face identity needs dlib: '{_identity().INSTALL}' with ComfyUI's Python."
    return install if ok else f"NOT AVAILABLE HERE: {message}."


class LikenessScore:
    DESCRIPTION = (
        "Scores how much each picture of an IMAGE batch looks like the subject, by face identity (dlib, offline): "
        "similarity 0-1 per picture (0.5 = dlib's same-person threshold; -1 when a picture has no score: no face, "
        "several faces, or a face too small), a text report, and a preview with each face's box and score. Compare "
        "generations of any model, LoRA or IP-Adapter workflow with the photos in a Face Crop dataset or a folder. "
        "Needs 'pip install dlib-bin face_recognition_models'."
    )
    CATEGORY = "Likeness/eval"
    FUNCTION = "score"
    OUTPUT_NODE = True  # the report and previews are worth seeing with nothing connected
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("scores", "report", "preview")
    OUTPUT_IS_LIST = (True, False, False)
    OUTPUT_TOOLTIPS = (
        f"One similarity per picture, in batch order (0-1; {NO_SCORE:g} = no score, the report says why).",
        "A table: faces found, similarity, distance and a note per picture, then the mean and the best.",
        "The pictures with every face's box and score drawn (green: same person, red: someone else).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        needs = _needs()
        return {
            "required": {"images": ("IMAGE", {"tooltip": "The pictures to score (any batch)."})},
            "optional": {
                "reference": (
                    "LIKENESS_DATASET",
                    {"tooltip": f"The subject's photos (Face Crop Dataset's output). {needs}"},
                ),
                "reference_folder": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": f"Or a folder of the subject's photos inside ComfyUI's input folder. {needs}",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, reference_folder: str = "", **_):
        return bridge.input_folder_stamp(reference_folder)

    def score(self, images, reference=None, reference_folder: str = "", unique_id=None):
        from ..trainers.identity.backend import load
        from ..trainers.identity.cli import load_reference
        from ..trainers.identity.faces import analyse
        from ..trainers.identity.scoring import draw_scores, format_table, score_faces
        from .images import image_to_pil, pil_to_image

        load()  # a missing backend: one line saying what to install
        folder = reference_path(reference, reference_folder)
        ref = load_reference(str(folder))
        pictures = image_to_pil(images)
        bar = bridge.Progress(len(pictures), node_id=unique_id)
        results = []
        for i, picture in enumerate(pictures):
            results.append(score_faces(analyse(picture), ref.centroid, index=i, name=f"image {i + 1}"))
            bar.set(i + 1)  # also where Cancel stops a long batch
        report = f"reference folder: {folder}\n{format_table(results, ref)}"
        previews = [draw_scores(p, r) for p, r in zip(pictures, results, strict=True)]
        values = [NO_SCORE if r.similarity is None else round(r.similarity, 4) for r in results]
        log.info("likeness score: %s", report.splitlines()[-1])
        # the scores also go to the page (and the API's history) beside the report
        return {"ui": {"text": [report], "likeness_scores": values}, "result": (values, report, pil_to_image(previews))}


NODE_CLASS_MAPPINGS = {"LikenessScore": LikenessScore}
NODE_DISPLAY_NAME_MAPPINGS = {"LikenessScore": "Likeness Score"}
