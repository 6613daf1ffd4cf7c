"""LoRA nodes: Likeness LoRA Train (the DreamBooth node's plumbing with LoRA options) and Likeness Extract LoRA.

Both save kohya/A1111-format files under ``models/loras/likeness/`` that ComfyUI's core LoraLoader, A1111/Forge and
diffusers load. Heavy modules (torch, peft) are imported inside functions.
"""

from __future__ import annotations

import logging
import os

from ..trainers import configspec
from ..trainers.errors import ConfigError
from ..trainers.fsutil import safe_name
from ..trainers.handles import TrainedResult
from ..trainers.lora.config import DORA_HOSTS, LAYER_SETS, LoRAConfig
from . import bridge
from .training import LikenessDreamBoothTrain

log = logging.getLogger(__name__)


CONTINUE_INPUT = "continue_lora"
NO_LORA = "(none)"


def lora_choices() -> list[str]:
    """Combo entries for ``continue_lora``: "(none)" and every .safetensors file ComfyUI lists under models/loras."""
    names = [n.replace(os.sep, "/") for n in bridge.filenames("loras") if n.lower().endswith(".safetensors")]
    return [NO_LORA, *sorted(names)]


class LikenessLoRATrain(LikenessDreamBoothTrain):
    CONFIG_CLASS = LoRAConfig
    MODEL_FOLDER = "loras"
    KIND = "lora"
    TITLE = "Likeness LoRA Train"
    DESCRIPTION = (
        "LoRA: trains small adapters on the SD1.5 UNet attention (and the text encoder) from photos of one subject, "
        "with prior preservation when class images are connected; the base model stays frozen. lora_type picks LoRA, "
        "LoHa or LoKr (dora adds DoRA to a LoRA); continue_lora starts from an existing LoRA file instead (its type "
        "and rank are kept). Saves a kohya/LyCORIS-format file (a few MB) in models/loras/likeness/ that ComfyUI's "
        "Load LoRA and A1111/Forge load on any SD1.5 checkpoint (diffusers too for LoRA). Progress, samples, loss and "
        "Stop work as in DreamBooth Train; the same model, images and options return the earlier result without "
        "training again."
    )
    OUTPUT_TOOLTIPS = (
        "The trained LoRA (connect to Likeness Apply Trained Model, or load the file with Load LoRA).",
        "Loss per step (raw, smoothed, prior term).",
        "The last sample images, one per sample prompt.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        types = super().INPUT_TYPES()
        types["optional"][CONTINUE_INPUT] = (
            lora_choices(),
            {
                "default": NO_LORA,
                "tooltip": "Continue training this LoRA file (from models/loras: ours, kohya's or LyCORIS'; LDM or "
                "diffusers layer names). Its type, rank, alpha and layers are kept (lora_type, dora, lora_rank, "
                "lora_alpha and lora_layers are not used); the result is saved under output_name, the file itself "
                "is never replaced. DoRA files: " + DORA_HOSTS + ".",
            },
        )
        return types

    @classmethod
    def IS_CHANGED(cls, instance_folder="", class_folder="", force_retrain=False, **inputs):
        stamp = super().IS_CHANGED(instance_folder, class_folder, force_retrain)
        try:
            path = continue_path(inputs.get(CONTINUE_INPUT))
            if path is None or stamp != stamp:  # no file, or nan: trains again anyway
                return stamp
            st = os.stat(path)
        except (ConfigError, OSError):
            return f"{stamp}|missing"  # the node reports it when it runs
        return f"{stamp}|{path}|{st.st_size}|{st.st_mtime_ns}"

    def build_config(self, model, output_name, inputs):
        cfg = super().build_config(model, output_name, inputs)
        path = continue_path(inputs.get(CONTINUE_INPUT))
        if path is None:
            return cfg
        return configspec.from_dict(LoRAConfig, {"continue_from": path}, source=self.TITLE, base=cfg)


def continue_path(choice) -> str | None:
    """The absolute path of the ``continue_lora`` choice (None for "(none)"), or a clear error when it is gone."""
    if not choice or choice == NO_LORA:
        return None
    try:
        return bridge.full_path("loras", str(choice))
    except FileNotFoundError as e:
        raise ConfigError(f"{CONTINUE_INPUT}: {e} (renamed or deleted? refresh the page to update the list)") from None


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
