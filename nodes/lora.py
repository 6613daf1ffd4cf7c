"""LoRA nodes: Likeness LoRA Train (the DreamBooth node's plumbing with LoRA options) and Likeness Extract LoRA.

Both save kohya/A1111-format files under ``models/loras/likeness/`` that ComfyUI's core LoraLoader, A1111/Forge and
diffusers load. Heavy modules (torch, peft) are imported inside functions.
"""

from __future__ import annotations

import logging

from ..trainers.errors import ConfigError
from ..trainers.fsutil import safe_name
from ..trainers.handles import TrainedResult
from ..trainers.lora.config import LAYER_SETS, LoRAConfig
from . import bridge
from .training import LikenessDreamBoothTrain

log = logging.getLogger(__name__)


class LikenessLoRATrain(LikenessDreamBoothTrain):
    CONFIG_CLASS = LoRAConfig
    MODEL_FOLDER = "loras"
    KIND = "lora"
    TITLE = "Likeness LoRA Train"
    DESCRIPTION = (
        "LoRA: trains small low-rank adapters on the SD1.5 UNet attention (and the text encoder) from photos of one "
        "subject, with prior preservation when class images are connected; the base model stays frozen. Saves a "
        "kohya/A1111-format LoRA (a few MB) in models/loras/likeness/ that ComfyUI's Load LoRA, A1111/Forge and "
        "diffusers load on any SD1.5 checkpoint. Progress, samples, loss and Stop work as in DreamBooth Train; the "
        "same model, images and options return the earlier result without training again."
    )
    OUTPUT_TOOLTIPS = (
        "The trained LoRA (connect to Likeness Apply Trained Model, or load the file with Load LoRA).",
        "Loss per step (raw, smoothed, prior term).",
        "The last sample images, one per sample prompt.",
    )


class LikenessExtractLoRA:
    DESCRIPTION = (
        "Extract a LoRA from a DreamBooth result: the difference between the trained checkpoint and its base model, "
        "reduced to rank r per layer (SVD). Gives a small, portable file that applies the training to any SD1.5 "
        "checkpoint. Saved in models/loras/likeness/."
    )
    CATEGORY = "Likeness/training"
    FUNCTION = "extract"
    OUTPUT_NODE = True  # it saves a file: runs even when nothing is connected to its output
    RETURN_TYPES = ("LIKENESS_TRAINED",)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The extracted LoRA (its file is in models/loras/likeness/).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "trained": ("LIKENESS_TRAINED", {"tooltip": "A DreamBooth result (Likeness DreamBooth Train)."}),
                "rank": ("INT", {"default": 32, "min": 1, "max": 512, "tooltip": "Rank of the LoRA (file size)."}),
                "layers": (
                    list(LAYER_SETS),
                    {"default": "attention_ff", "tooltip": "Which layers to extract (as in LoRA Train)."},
                ),
                "text_encoder": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Also extract the text encoder's change (if it was trained)."},
                ),
                "output_name": (
                    "STRING",
                    {"default": "likeness_extracted", "tooltip": "File name for the LoRA (no folders)."},
                ),
            }
        }

    def extract(self, trained, rank, layers, text_encoder, output_name):
        from ..trainers.lora.extract import extract_lora_files

        if not isinstance(trained, TrainedResult) or trained.kind != "dreambooth" or trained.base is None:
            raise ConfigError("trained: connect the 'trained' output of Likeness DreamBooth Train (a full model)")
        from ..trainers.train.session import free_output_path

        path = free_output_path(bridge.model_dir("loras"), safe_name(output_name))
        with bridge.gpu_session("LoRA extraction"):
            info = extract_lora_files(
                trained.base, trained.path, path, rank=int(rank), layers=layers, text_encoder=bool(text_encoder)
            )
        return (TrainedResult(kind="lora", path=str(path), base=trained.base, metadata=info),)


NODE_CLASS_MAPPINGS = {
    "LikenessLoRATrain": LikenessLoRATrain,
    "LikenessExtractLoRA": LikenessExtractLoRA,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LikenessLoRATrain": "Likeness LoRA Train",
    "LikenessExtractLoRA": "Likeness Extract LoRA",
}
