"""Likeness Apply Trained Model: a training result (or a file trained earlier) as MODEL / CLIP / VAE for sampling.

A DreamBooth result is a full checkpoint: it is loaded by ComfyUI's own checkpoint loader. A LoRA result is applied
on top of the MODEL and CLIP the user connects, through ComfyUI's own LoRA patching (the same maths as core Load
LoRA), at ``strength_model`` / ``strength_clip``. Files are picked from the ``likeness/`` subfolders of the
checkpoints and loras folders, so sampling never needs the training nodes to run again.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from ..trainers.errors import ConfigError
from ..trainers.handles import TrainedResult
from . import bridge

log = logging.getLogger(__name__)

FROM_INPUT = "(from the trained input)"
KIND_OF_FOLDER = {"checkpoints": "dreambooth", "loras": "lora"}
VAE_SLOT = 2  # index of the VAE output
_MAX_HEADER = 100 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# plain helpers (files and text; no ComfyUI objects)


def disk_choices() -> list[str]:
    """Combo entries: ``checkpoints/likeness/<file>`` and ``loras/likeness/<file>`` (safetensors only)."""
    out = [FROM_INPUT]
    for folder in KIND_OF_FOLDER:
        for name in bridge.filenames(folder):
            rel = name.replace(os.sep, "/")
            if rel.startswith(f"{bridge.SUBFOLDER}/") and rel.lower().endswith(".safetensors"):
                out.append(f"{folder}/{rel}")
    return out


def resolve_choice(choice: str) -> tuple[str, str]:
    """(kind, absolute path) of a combo entry, or a clear error when the file is gone."""
    folder, _, name = choice.partition("/")
    if folder not in KIND_OF_FOLDER or not name:
        raise ConfigError(
            f"source: {choice!r} is not a trained file; pick 'checkpoints/likeness/...' or 'loras/likeness/...' or "
            f"'{FROM_INPUT}'"
        )
    try:
        path = bridge.full_path(folder, name)
    except FileNotFoundError as e:
        raise ConfigError(f"source: {e} (was it renamed or deleted? refresh the page to update the list)") from None
    return KIND_OF_FOLDER[folder], path


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (reads only the header, no tensors)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConfigError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise ConfigError(f"{path} is not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ConfigError(f"{path} is not a safetensors file (unreadable header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (meta or {}).items()}


def describe(kind: str, path: str | Path, metadata: dict[str, Any]) -> str:
    """A short, human report of a trained file: what it is, how it was trained, how to use it."""
    p = Path(path)
    lines = [f"{'DreamBooth checkpoint' if kind == 'dreambooth' else 'LoRA'}: {p.name}"]
    with_size = p.stat().st_size / 1e6 if p.is_file() else None
    if with_size is not None:
        lines.append(f"file: {p} ({with_size:.1f} MB)")
    cfg: dict[str, Any] = {}
    raw_cfg = metadata.get("likeness.config")
    if isinstance(raw_cfg, str):
        try:
            cfg = json.loads(raw_cfg)
        except ValueError:
            cfg = {}
    elif isinstance(raw_cfg, dict):
        cfg = raw_cfg
    steps = metadata.get("likeness.steps") or metadata.get("ss_steps") or cfg.get("steps")
    if steps:
        lines.append(f"steps: {steps}")
    prompt = cfg.get("instance_prompt") or metadata.get("ss_instance_prompt")
    if prompt:
        lines.append(f"instance prompt: {prompt}  (use these words in your prompt)")
    if cfg.get("class_prompt") and cfg.get("prior_preservation"):
        lines.append(f"class prompt: {cfg['class_prompt']}")
    for label, key in (("learning rate", "learning_rate"), ("resolution", "resolution")):
        if cfg.get(key) is not None:
            lines.append(f"{label}: {cfg[key]}")
    if kind == "lora":
        rank = metadata.get("ss_network_dim") or cfg.get("lora_rank")
        alpha = metadata.get("ss_network_alpha") or cfg.get("lora_alpha")
        if rank:
            lines.append(f"rank {rank}, alpha {alpha}")
    from ..trainers.train.evaluation import summary_lines

    lines += summary_lines(metadata)
    base = metadata.get("likeness.base_model_sha256") or metadata.get("ss_sd_model_hash")
    if base:
        lines.append(f"base model sha256: {str(base)[:16]}…")
    if metadata.get("likeness.version"):
        lines.append(f"trained with Likeness {metadata['likeness.version']}")
    if not (steps or prompt):
        lines.append("(no Likeness training metadata in this file)")
    return "\n".join(lines)


def outputs_used(prompt: Any, node_id: Any, slot: int) -> bool:
    """True when some node of the queued prompt takes output ``slot`` of node ``node_id`` (unknown = True)."""
    if not isinstance(prompt, dict) or node_id is None:
        return True
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == slot:
                return True
    return False


def read_lora(path: str | Path) -> dict[str, Any]:
    """A LoRA file's tensors (safetensors only: nothing is unpickled)."""
    if not str(path).lower().endswith(".safetensors"):
        raise ConfigError(f"{path}: only .safetensors LoRA files are applied (no pickle files)")
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# the node


class LikenessApplyTrainedModel:
    DESCRIPTION = (
        "Turns a Likeness training result into MODEL / CLIP / VAE for a normal sampling graph (CLIP Text Encode → "
        "KSampler → VAE Decode). A DreamBooth result is a full checkpoint, loaded by ComfyUI's own loader (MODEL, CLIP "
        "and VAE inputs are not needed). A LoRA result is applied on top of the MODEL and CLIP you connect (e.g. from "
        "Load Checkpoint) at the chosen strengths, with ComfyUI's own LoRA patching; connect that checkpoint's VAE "
        "too, it is passed through. Pick 'source' to use a result trained earlier (files in "
        "models/checkpoints/likeness and models/loras/likeness) without running training again; 'info' shows how "
        "the file was trained (instance prompt, steps...)."
    )
    CATEGORY = "Likeness/loaders"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE", "info")
    OUTPUT_TOOLTIPS = (
        "The trained model (DreamBooth) or your MODEL with the LoRA applied: connect to KSampler.",
        "The trained text encoder (DreamBooth) or your CLIP with the LoRA applied: connect to CLIP Text Encode.",
        "The DreamBooth checkpoint's VAE, or the VAE input passed through (LoRA): connect to VAE Decode.",
        "How the result was trained (file, steps, instance prompt, rank...).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        strength = {"default": 1.0, "min": -20.0, "max": 20.0, "step": 0.01}
        return {
            "required": {
                "source": (
                    disk_choices(),
                    {
                        "default": FROM_INPUT,
                        "tooltip": f"'{FROM_INPUT}' uses the connected 'trained' input. Or pick a result trained "
                        "earlier: checkpoints/likeness/… (DreamBooth) or loras/likeness/… (LoRA); a picked file wins "
                        "over the input, and training nodes upstream are not needed.",
                    },
                ),
                "strength_model": (
                    "FLOAT",
                    {
                        **strength,
                        "tooltip": "LoRA only: how strongly the LoRA changes the diffusion model (1 = as trained, 0 "
                        "= the base model). Lower it (0.6-0.9) if images look overcooked.",
                    },
                ),
                "strength_clip": (
                    "FLOAT",
                    {
                        **strength,
                        "tooltip": "LoRA only: how strongly the LoRA changes the text encoder (1 = as trained).",
                    },
                ),
            },
            "optional": {
                "trained": (
                    "LIKENESS_TRAINED",
                    {
                        "tooltip": "The 'trained' output of Likeness DreamBooth Train or LoRA Train (optional when a file "
                        "is picked in 'source')."
                    },
                ),  # fmt: skip
                "model": (
                    "MODEL",
                    {
                        "tooltip": "LoRA only: the base MODEL to apply the LoRA to (e.g. from Load Checkpoint). Ignored "
                        "for a DreamBooth result."
                    },
                ),  # fmt: skip
                "clip": (
                    "CLIP",
                    {"tooltip": "LoRA only: the base CLIP to apply the LoRA to (the same checkpoint as 'model')."},
                ),
                "vae": (
                    "VAE",
                    {"tooltip": "LoRA only: the VAE to pass through to the VAE output (the base checkpoint's VAE)."},
                ),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, source=FROM_INPUT, **_):
        """Reload a picked file when it was replaced (same name, new size or time)."""
        if source == FROM_INPUT:
            return ""
        try:
            _, path = resolve_choice(source)
            st = os.stat(path)
            return f"{path}:{st.st_size}:{st.st_mtime_ns}"
        except Exception:  # noqa: BLE001 - apply() reports a missing file
            return ""

    def apply(
        self,
        source,
        strength_model,
        strength_clip,
        trained=None,
        model=None,
        clip=None,
        vae=None,
        prompt=None,
        unique_id=None,
    ):
        kind, path, metadata = self._pick(source, trained)
        if kind == "dreambooth":
            if model is not None or clip is not None:
                log.info("likeness: %s is a full checkpoint; the connected MODEL/CLIP are not used", path)
            out_model, out_clip, out_vae = bridge.load_checkpoint_for_host(path)
            info = describe(kind, path, metadata)
        else:
            out_model, out_clip, out_vae, info = self._apply_lora(
                path, metadata, model, clip, vae, strength_model, strength_clip, prompt, unique_id
            )
        return {"ui": {"text": [info]}, "result": (out_model, out_clip, out_vae, info)}

    # -- steps of apply() ---------------------------------------------------------------------------------------

    @staticmethod
    def _pick(source: str, trained: Any) -> tuple[str, str, dict[str, Any]]:
        """(kind, path, metadata) from the picked file, else from the ``trained`` input."""
        if source and source != FROM_INPUT:
            kind, path = resolve_choice(source)
        elif trained is None:
            raise ConfigError(
                "nothing to apply: connect the 'trained' output of Likeness DreamBooth Train / LoRA Train, or pick "
                "a file trained earlier in 'source'"
            )
        elif not isinstance(trained, TrainedResult) or trained.kind not in ("dreambooth", "lora"):
            raise ConfigError("trained: connect the 'trained' output of a Likeness training node")
        else:
            kind, path = trained.kind, trained.path
            if not os.path.isfile(path):
                raise ConfigError(f"trained: the file {path} no longer exists; train again or pick another file")
        if not str(path).lower().endswith(".safetensors"):
            raise ConfigError(f"{path}: only .safetensors results are loaded")
        metadata: dict[str, Any] = dict(trained.metadata) if source == FROM_INPUT and trained is not None else {}
        metadata = {**read_safetensors_metadata(path), **metadata}
        return kind, str(path), metadata

    @staticmethod
    def _apply_lora(path, metadata, model, clip, vae, strength_model, strength_clip, prompt, unique_id):
        missing = [n for n, v in (("model", model), ("clip", clip)) if v is None]
        if missing:
            raise ConfigError(
                f"{Path(path).name} is a LoRA: it is applied on top of a base model. Connect "
                f"{' and '.join(missing)} (MODEL and CLIP of Load Checkpoint / Likeness Load Checkpoint, the same "
                "SD1.5 checkpoint it was trained on or one like it), and its VAE to 'vae'"
            )
        if vae is None and outputs_used(prompt, unique_id, VAE_SLOT):
            raise ConfigError(
                "vae: a LoRA has no VAE of its own. Connect the base checkpoint's VAE to the 'vae' input (it is passed "
                "through), or take VAE Decode's VAE straight from the checkpoint loader"
            )
        lora = read_lora(path)
        new_model, new_clip, not_loaded = bridge.apply_lora_for_host(model, clip, lora, strength_model, strength_clip)
        del lora
        if not_loaded:
            log.warning("likeness: %d keys of %s were not applied: %s", len(not_loaded), path, not_loaded[:5])
        info = describe("lora", path, metadata)
        info += f"\napplied at strength model {strength_model:g}, clip {strength_clip:g}"
        if not_loaded:
            info += f"\nWARNING: {len(not_loaded)} LoRA keys did not match this model (is it an SD1.5 checkpoint?)"
        return new_model, new_clip, vae, info


NODE_CLASS_MAPPINGS = {"LikenessApplyTrainedModel": LikenessApplyTrainedModel}
NODE_DISPLAY_NAME_MAPPINGS = {"LikenessApplyTrainedModel": "Likeness Apply Trained Model"}
