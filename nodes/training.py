"""Training nodes: Likeness DreamBooth Train and Likeness Training Options.

The node resolves its inputs into a ``DreamBoothConfig`` and calls ``trainers.train.train``; everything else here is
ComfyUI plumbing: the content-addressed result lookup, progress bar / events / cancel, sample files, output tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..trainers import configspec
from ..trainers.errors import ConfigError, DatasetError, TrainingStopped
from ..trainers.fsutil import safe_name, write_json_atomic
from ..trainers.handles import DatasetHandle, ModelHandle, TrainedResult
from ..trainers.train.config import DreamBoothConfig, TrainConfig
from . import bridge
from .inputs import comfy_inputs

log = logging.getLogger(__name__)

OPTIONS_TYPE = "LIKENESS_TRAIN_OPTIONS"
INDEX_SUFFIX = ".likeness.json"  # sidecar beside each result: its content key and metadata
MAIN_OPTIONS = [
    "instance_prompt",
    "class_prompt",
    "steps",
    "learning_rate",
    "batch_size",
    "resolution",
    "train_text_encoder",
    "prior_loss_weight",
    "seed",
    "sample_every",
    "save_dtype",
]


# ---------------------------------------------------------------------------------------------------------------
# plain helpers (no ComfyUI objects)


def folder_stamp(folder: str) -> str:
    """Names, sizes and times of a folder's files (cheap): changes when the user edits the folder."""
    p = Path(folder)
    if not folder or not p.is_dir():
        return folder or ""
    items = sorted(f"{f.relative_to(p)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in p.rglob("*") if f.is_file())
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def result_key(model: ModelHandle, cfg: TrainConfig, fingerprints: list[str]) -> str:
    """Content key of a training result: base weights + every option that shapes the weights + the images."""
    from ..trainers.train.loop import weights_hash

    blob = json.dumps([model.key, weights_hash(cfg), cfg.steps, fingerprints], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_existing(folder: Path, key: str) -> tuple[Path, dict] | None:
    """A finished result with this key in ``folder`` (its sidecar names the file), or None."""
    if not folder.is_dir():
        return None
    for side in sorted(folder.glob(f"*{INDEX_SUFFIX}")):
        try:
            data = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        path = folder / str(data.get("file", ""))
        if data.get("key") == key and path.is_file():
            return path, data
    return None


def free_output_path(folder: Path, name: str) -> Path:
    """``name.safetensors``, or ``name_2.safetensors``... when taken: never overwrite an existing result."""
    path = folder / f"{name}.safetensors"
    n = 2
    while path.exists() or path.with_name(path.stem + INDEX_SUFFIX).exists():
        path = folder / f"{name}_{n}.safetensors"
        n += 1
    return path


def pil_to_image_tensor(images: list):
    """PIL images (same size) -> ComfyUI IMAGE: float32 [B, H, W, 3] in 0..1."""
    import numpy as np
    import torch

    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


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


class _NodeCallbacks:
    """Engine callbacks -> ComfyUI progress bar, likeness.* events and sample files in the temp folder."""

    def __init__(self, node_id: str, total: int, name: str):
        self.node_id, self.name = node_id, name
        self.bar = bridge.Progress(total, node_id=node_id)
        self.interrupt: BaseException | None = None  # the host's exception, raised after a clean stop
        self.sample_files: list[dict[str, str]] = []

    def stop(self) -> bool:
        return self.interrupt is not None or bridge.interrupted()

    def on_progress(self, info) -> None:
        bridge.send_event("progress", {"node_id": self.node_id, **info.as_event()})
        if info.phase == "training" and self.interrupt is None and not bridge.interrupted():
            try:
                self.bar.set(info.step)  # also the host's interruption point
            except Exception as e:  # noqa: BLE001 - the host's interrupt: stop cleanly at the next step
                self.interrupt = e

    def on_sample(self, step: int, images: list, prompts: list[str]) -> None:
        folder = bridge.temp_dir() / bridge.SUBFOLDER
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, im in enumerate(images):
            fname = f"train_{self.node_id}_{self.name}_{step:06d}_{i}.png"
            im.save(folder / fname)
            files.append({"filename": fname, "subfolder": bridge.SUBFOLDER, "type": "temp"})
        self.sample_files = files
        bridge.send_event("sample", {"node_id": self.node_id, "step": step, "images": files, "prompts": prompts})

    def on_status(self, text: str) -> None:
        log.info("likeness: %s", text)


# ---------------------------------------------------------------------------------------------------------------
# nodes


class LikenessTrainingOptions:
    DESCRIPTION = (
        "Advanced training options (optimizer, schedule, precision, memory savers, samples, checkpoints). Connect to "
        "the 'options' input of a Likeness training node; without it the defaults shown here are used."
    )
    CATEGORY = "Likeness/training"
    FUNCTION = "build"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("Advanced options for a Likeness training node.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": comfy_inputs(TrainConfig, advanced=True)}

    def build(self, **values):
        configspec.from_dict(TrainConfig, _options_only(values), source="Likeness Training Options", base=None)
        return (dict(values),)


def _options_only(values: dict[str, Any]) -> dict[str, Any]:
    smap = configspec.spec_map(TrainConfig)
    data = {k: v for k, v in values.items() if k in smap}
    # validation of the options alone: fill in what the training node provides
    data.update(prior_preservation=False, instance_data=".", output="x.safetensors")
    return data


class LikenessDreamBoothTrain:
    # What a subclass (e.g. the LoRA node) changes: config class, main options, result folder and kind.
    CONFIG_CLASS: type = DreamBoothConfig
    OPTION_NAMES: list[str] = MAIN_OPTIONS
    MODEL_FOLDER = "checkpoints"
    KIND = "dreambooth"
    TITLE = "Likeness DreamBooth Train"
    DESCRIPTION = (
        "DreamBooth: fine-tunes the whole SD1.5 UNet (and the text encoder) on photos of one subject, with prior "
        "preservation when class images are connected, and saves one .safetensors checkpoint in "
        "models/checkpoints/likeness/ that loads in ComfyUI, A1111 and diffusers. Shows progress, samples and the "
        "loss while it trains; Cancel stops it cleanly (a resumable state is kept: queue again to continue). "
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
        main = comfy_inputs(cls.CONFIG_CLASS, cls.OPTION_NAMES)
        main["instance_prompt"] = (
            "STRING",
            {
                "default": "",
                "tooltip": "Prompt for your photos, with a rare token and the class, e.g. 'a photo of sks woman face'. "
                "Empty = the prompt carried by the dataset, else 'a photo of sks woman face'.",
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
                "options": (OPTIONS_TYPE, {"tooltip": "Advanced options (Likeness Training Options node)."}),
                "force_retrain": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Train again even if the same result exists (saved under a new name).",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, instance_folder="", class_folder="", force_retrain=False, **_):
        if force_retrain:
            return float("nan")
        return f"{folder_stamp(instance_folder)}|{folder_stamp(class_folder)}"

    def train(self, model, output_name, unique_id=None, **inputs):
        node_id = str(unique_id or "")
        cfg, model, key, name = self.build_config(model, output_name, inputs)
        out_dir = bridge.model_dir(self.MODEL_FOLDER)
        if not inputs.get("force_retrain"):
            found = find_existing(out_dir, key)
            if found is not None:
                path, data = found
                log.info("likeness: %s was already trained with these inputs; returning it", path)
                return self._outputs(model, path, data.get("metadata", {}), data.get("losses", []), [], [])
        return self.run_training(cfg, model, key, name, out_dir, node_id, bool(inputs.get("force_retrain")))

    # -- steps of train() ----------------------------------------------------------------------------------------

    def build_config(self, model, output_name: str, inputs: dict[str, Any]):
        if not isinstance(model, ModelHandle):
            raise ConfigError("model: connect a LIKENESS_MODEL (the last output of Likeness Load Checkpoint)")
        name = safe_name(output_name)
        inst_folder, inst_prompt = dataset_source(
            inputs.get("instance_images"), inputs.get("instance_folder", ""), "instance"
        )
        if inst_folder is None:
            raise DatasetError("no subject photos: connect instance_images (Face Crop Dataset) or type instance_folder")
        cls_folder, cls_prompt = dataset_source(inputs.get("class_images"), inputs.get("class_folder", ""), "class")
        values = dict(inputs.get("options") or {})
        values.update({k: v for k, v in inputs.items() if k in self.OPTION_NAMES})
        values["instance_prompt"] = (
            (values.get("instance_prompt") or "").strip() or inst_prompt or ("a photo of sks woman face")
        )
        if cls_prompt:  # class images were made from their own prompt: train with exactly that one
            values["class_prompt"] = cls_prompt
        device = bridge.torch_device()
        state_root = bridge.output_dir() / bridge.SUBFOLDER / "training_state"
        fixed = dict(
            base_model=model.path,
            vae_path=model.vae_path,
            tokenizer=bridge.sd1_tokenizer_path(),
            instance_data=inst_folder,
            class_data=cls_folder,
            prior_preservation=cls_folder is not None,
            output=str(free_output_path(bridge.model_dir(self.MODEL_FOLDER), name)),
            device="cpu" if device.type == "cpu" else "cuda" if device.type == "cuda" else "auto",
        )
        source = self.TITLE
        data = {k: v for k, v in values.items() if k in configspec.spec_map(self.CONFIG_CLASS)}
        cfg = configspec.from_dict(self.CONFIG_CLASS, {**data, **fixed}, source=source)
        from ..trainers.train.loop import plan

        prints = [_fingerprint(inst_folder, "instance (subject)")]
        if cls_folder:
            prints.append(_fingerprint(cls_folder, "class"))
        key = result_key(model, cfg, prints)
        state_dir = state_root / f"{name}-{key[:16]}"
        cfg = configspec.from_dict(self.CONFIG_CLASS, {"state_dir": str(state_dir)}, source=source, base=cfg)
        plan(cfg)  # every check (images readable, prompts, resolution...) before anything heavy
        return cfg, model, key, name

    def run_training(self, cfg, model, key, name, out_dir: Path, node_id: str, force: bool):
        import shutil

        from ..trainers.model_io import load_components
        from ..trainers.train.loop import list_states, train

        output = Path(cfg.output)
        if output.name != f"{name}.safetensors":
            log.warning("likeness: %s.safetensors exists (other inputs); saving as %s", name, output.name)
        state_dir = Path(cfg.state_dir)
        if force:
            shutil.rmtree(state_dir, ignore_errors=True)
        resume = "latest" if list_states(state_dir) else None
        cfg = configspec.from_dict(
            self.CONFIG_CLASS,
            {"resume_from": resume},
            source=self.TITLE,
            base=cfg,
        )
        callbacks = _NodeCallbacks(node_id, cfg.steps, name)
        bridge.send_event("start", {"node_id": node_id, "kind": self.KIND, "total": cfg.steps, "name": output.stem})
        try:
            with bridge.gpu_session(f"{self.TITLE} training"):
                components = load_components(model, tokenizer=bridge.sd1_tokenizer_path())
                outcome = train(
                    cfg, components=components, callbacks=callbacks, stop=callbacks.stop, base_hash=model.content_hash
                )
                del components
        except BaseException as e:
            bridge.send_event("end", {"node_id": node_id, "state": "error", "message": str(e) or type(e).__name__})
            raise
        if outcome.state != "finished":
            bridge.send_event(
                "end", {"node_id": node_id, "state": "stopped", "message": f"stopped at step {outcome.steps_done}"}
            )
            if callbacks.interrupt is not None:
                raise callbacks.interrupt
            bridge.raise_if_interrupted()
            raise TrainingStopped(f"training stopped at step {outcome.steps_done} of {outcome.total_steps}")
        sidecar = {
            "key": key,
            "file": output.name,
            "kind": self.KIND,
            "metadata": outcome.metadata,
            "losses": outcome.losses,
            "losses_prior": outcome.losses_prior,
        }
        write_json_atomic(output.with_name(output.stem + INDEX_SUFFIX), sidecar, overwrite=True)
        shutil.rmtree(state_dir, ignore_errors=True)  # finished: the resumable states are no longer needed
        bridge.send_event("end", {"node_id": node_id, "state": "finished", "path": str(output)})
        return self._outputs(
            model,
            output,
            outcome.metadata,
            outcome.losses,
            outcome.losses_prior,
            outcome.samples,
            callbacks.sample_files,
        )

    def _outputs(self, model, path: Path, metadata, losses, prior, samples, files=None):
        from PIL import Image

        from ..trainers.train.report import loss_curve_image

        result = TrainedResult(kind=self.KIND, path=str(path), base=model, metadata=dict(metadata))
        curve = pil_to_image_tensor([loss_curve_image(list(losses), list(prior), title=f"loss: {path.name}")])
        images = pil_to_image_tensor(samples) if samples else pil_to_image_tensor([Image.new("RGB", (64, 64))])
        ui = {"images": files} if files else {}
        return {"ui": ui, "result": (result, curve, images)}


def _fingerprint(folder: str, what: str) -> str:
    """Content hash of a dataset folder's images and captions (file bytes, cached by the engine's hash cache)."""
    from ..trainers.fsutil import file_sha256
    from ..trainers.train.dataset import scan_folder

    root = Path(folder)
    h = hashlib.sha256()
    for path, repeats in scan_folder(root, what):
        h.update(f"{path.relative_to(root).as_posix()}:{repeats}:{file_sha256(path)}".encode())
        cap = path.with_suffix(".txt")
        if cap.is_file():
            h.update(b"caption:" + file_sha256(cap).encode())
    return h.hexdigest()


NODE_CLASS_MAPPINGS = {
    "LikenessDreamBoothTrain": LikenessDreamBoothTrain,
    "LikenessTrainingOptions": LikenessTrainingOptions,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LikenessDreamBoothTrain": "Likeness DreamBooth Train",
    "LikenessTrainingOptions": "Likeness Training Options",
}
