"""Likeness DreamBooth Train (LoRA Train subclasses it; its advanced options come from ``options.py``).

The node turns its ComfyUI inputs into a config, hands it to ``trainers.train.session.Session`` — which owns the
run: content key, reuse, output name, resumable states — and turns the result into ComfyUI outputs. What is here is
plumbing only: inputs, the progress bar and ``likeness.*`` events, Cancel, sample files, output tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..trainers import configspec
from ..trainers.errors import ConfigError, DatasetError, TrainingStopped
from ..trainers.fsutil import safe_name
from ..trainers.handles import DatasetHandle, ModelHandle, TrainedResult
from ..trainers.train.config import DEFAULT_INSTANCE_PROMPT, DreamBoothConfig, TrainConfig
from ..trainers.train.memory import plan_memory
from . import bridge
from .inputs import comfy_inputs, legacy_inputs, options_from_inputs
from .method_inputs import method_folders, optional_inputs
from .monitor import TrainingMonitor
from .options import OPTIONS_TYPE

log = logging.getLogger(__name__)

SEED_INPUT = "train_seed"  # the option "seed"; an input named "seed" gets the page's randomize control
LEGACY_INPUTS = {"seed": SEED_INPUT}  # inputs of saved API prompts from before the rename


def dataset_source(handle: DatasetHandle | None, folder: str, what: str) -> tuple[str | None, str]:
    """(folder, prompt carried by the dataset) from a LIKENESS_DATASET input or a typed folder."""
    if handle is not None:
        return handle.folder, handle.prompt
    if folder and folder.strip():
        try:
            return str(bridge.resolve_input_folder(folder)), ""
        except (ValueError, OSError) as e:
            raise DatasetError(f"{what} folder: {e}") from None
    return None, ""


# ---------------------------------------------------------------------------------------------------------------
# nodes


class LikenessDreamBoothTrain:
    # What a subclass (the LoRA node) changes: config class, result folder, kind and texts.
    CONFIG_CLASS: type = DreamBoothConfig
    MODEL_FOLDER = "checkpoints"
    KIND = "dreambooth"
    TITLE = "Likeness DreamBooth Train"
    DESCRIPTION = (
        "DreamBooth: fine-tunes the whole SD1.5 UNet (and the text encoder) on photos of one subject, with prior "
        "preservation when class images are connected, and saves one .safetensors checkpoint in "
        "models/checkpoints/likeness/ that loads in ComfyUI, A1111 and diffusers. Shows progress, samples and the "
        "loss while it trains; its Stop button ends the run cleanly (a resumable state is kept: queue again to "
        "continue). "
        "The same model, images and options return the earlier result without training again."
    )
    CATEGORY = "Likeness/training"
    FUNCTION = "train"
    OUTPUT_NODE = True  # training is the point: it runs (and shows its samples) even with nothing connected
    RETURN_TYPES = ("LIKENESS_TRAINED", "IMAGE", "IMAGE")
    RETURN_NAMES = ("trained", "loss_curve", "samples")
    OUTPUT_TOOLTIPS = (
        "The trained checkpoint (connect to Likeness Apply Trained Model).",
        "Loss per step (raw, smoothed, prior term).",
        "The last sample images, one per sample prompt.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        main = comfy_inputs(cls.CONFIG_CLASS, advanced=False)
        seed = main.pop(SEED_INPUT)  # optional: saved API prompts that still say "seed" keep validating
        later = optional_inputs(main)  # prior, validation folder: optional, so saved API prompts keep validating
        main["instance_prompt"] = (
            "STRING",
            {
                "default": "",
                "tooltip": "Prompt for your photos, with a rare token and the class, e.g. 'a photo of sks woman face'. "
                f"Empty = the prompt carried by the dataset, else '{DEFAULT_INSTANCE_PROMPT}'.",
            },
        )
        return {
            "required": {
                "model": ("LIKENESS_MODEL", {"tooltip": "The base model (from Likeness Load Checkpoint)."}),
                "output_name": (
                    "STRING",
                    {"default": f"likeness_{cls.KIND}", "tooltip": "File name for the result (no folders)."},
                ),
                **main,
            },
            "optional": {
                "instance_images": ("LIKENESS_DATASET", {"tooltip": "Photos of the subject (Face Crop Dataset)."}),
                "instance_folder": (
                    "STRING",
                    {"default": "", "tooltip": "Or a folder of subject photos (inside ComfyUI's input folder)."},
                ),
                "class_images": (
                    "LIKENESS_DATASET",
                    {"tooltip": "Class images (Generate Class Images); prior preservation is off without them."},
                ),
                "class_folder": ("STRING", {"default": "", "tooltip": "Or a folder of class images."}),
                **later,
                "options": (OPTIONS_TYPE, {"tooltip": "Advanced options (Likeness Training Options node)."}),
                "force_retrain": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Train again even if the same result exists (saved under a new name).",
                    },
                ),
                SEED_INPUT: seed,
                # this method's own advanced options (the shared ones are on Likeness Training Options)
                **comfy_inputs(cls.CONFIG_CLASS, advanced=True, besides=TrainConfig),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def IS_CHANGED(cls, instance_folder="", class_folder="", force_retrain=False, validation_folder="", **_):
        if force_retrain:
            return float("nan")
        folders = (instance_folder, class_folder, validation_folder or None)  # no validation folder: the old stamp
        return "|".join(bridge.input_folder_stamp(f) for f in folders if f is not None)

    def train(self, model, output_name, unique_id=None, prompt=None, **inputs):
        from ..trainers.train.session import Session

        inputs.update(legacy_inputs(prompt, unique_id, inputs, LEGACY_INPUTS))
        force = bool(inputs.get("force_retrain"))
        cfg, memory = plan_memory(self.build_config(model, output_name, inputs))  # fits the GPU; says what changed
        session = Session(
            cfg,
            model_key=model.key,
            base_hash=model.content_hash,
            state_root=bridge.output_dir() / bridge.SUBFOLDER / "training_state",
            force=force,
        )
        result, files = session.existing(), []
        if result is None:
            session.plan()  # every check (images readable, prompts, output...) before anything heavy
            result, files = self.run_training(session, model, str(unique_id or ""), memory)
        return self._outputs(model, result, files)

    # -- steps of train() ----------------------------------------------------------------------------------------

    def build_config(self, model, output_name: str, inputs: dict[str, Any]):
        """ComfyUI inputs -> the method's config (options from the Options node, then this node's own)."""
        if not isinstance(model, ModelHandle):
            raise ConfigError("model: connect a LIKENESS_MODEL (the last output of Likeness Load Checkpoint)")
        name = safe_name(output_name)
        inst_folder, inst_prompt = dataset_source(
            inputs.get("instance_images"), inputs.get("instance_folder", ""), "instance"
        )
        if inst_folder is None:
            raise DatasetError("no subject photos: connect instance_images (Face Crop Dataset) or type instance_folder")
        cls_folder, cls_prompt = dataset_source(inputs.get("class_images"), inputs.get("class_folder", ""), "class")
        values = {**dict(inputs.get("options") or {}), **options_from_inputs(self.CONFIG_CLASS, inputs)}
        values["instance_prompt"] = (
            (values.get("instance_prompt") or "").strip() or inst_prompt or DEFAULT_INSTANCE_PROMPT
        )
        if cls_prompt:  # class images were made from their own prompt: train with exactly that one
            values["class_prompt"] = cls_prompt
        device = bridge.torch_device()
        fixed = dict(
            base_model=model.path,
            vae_path=model.vae_path,
            tokenizer=bridge.sd1_tokenizer_path(),
            instance_data=inst_folder,
            **method_folders(values, cls_folder, inputs, dataset_source),
            output=str(bridge.model_dir(self.MODEL_FOLDER) / f"{name}.safetensors"),
            device="cpu" if device.type == "cpu" else "cuda" if device.type == "cuda" else "auto",
        )
        return configspec.from_dict(self.CONFIG_CLASS, {**values, **fixed}, source=self.TITLE)

    def run_training(self, session, model, node_id: str, memory: str | None = None):
        from ..trainers.model_io import load_components

        cfg = session.plan().config
        name = Path(cfg.output).stem
        callbacks = TrainingMonitor(node_id, cfg.steps, name)
        start = {"node_id": node_id, "kind": self.KIND, "total": cfg.steps, "name": name, "memory": memory}
        bridge.send_event("start", start)
        if memory:
            callbacks.on_status(memory)
        try:
            with bridge.gpu_session(f"{self.TITLE} training"):
                components = load_components(model, tokenizer=bridge.sd1_tokenizer_path())
                result = session.train(components, callbacks=callbacks, stop=callbacks.stop)
                del components
        except BaseException as e:
            bridge.send_event("end", {"node_id": node_id, "state": "error", "message": str(e) or type(e).__name__})
            raise
        if result.state != "finished":
            bridge.send_event(
                "end", {"node_id": node_id, "state": "stopped", "message": f"stopped at step {result.steps_done}"}
            )
            if callbacks.interrupt is not None:
                raise callbacks.interrupt
            bridge.raise_if_interrupted()
            raise TrainingStopped(f"training stopped at step {result.steps_done} of {result.total_steps}")
        bridge.send_event("end", {"node_id": node_id, "state": "finished", "path": str(result.path)})
        return result, callbacks.sample_files

    def _outputs(self, model, result, files: list[dict[str, str]]):
        from ..trainers.train.report import loss_curve_image
        from .images import blank_image, pil_to_image

        path = Path(result.path)
        trained = TrainedResult(kind=self.KIND, path=str(path), base=model, metadata=dict(result.metadata))
        curve = pil_to_image([loss_curve_image(result.losses, result.losses_prior, title=f"loss: {path.name}")])
        images = pil_to_image(result.samples) if result.samples else blank_image()
        return {"ui": {"images": files} if files else {}, "result": (trained, curve, images)}


NODE_CLASS_MAPPINGS = {"LikenessDreamBoothTrain": LikenessDreamBoothTrain}
NODE_DISPLAY_NAME_MAPPINGS = {"LikenessDreamBoothTrain": "Likeness DreamBooth Train"}
