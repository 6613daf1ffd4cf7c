"""Everything checked and read before a model is touched: options, output, images, resume point, identities.

:func:`plan` runs once per run (the session passes its result on): a bad folder, an unreadable image or an output that
exists is reported before anything heavy starts. The identities computed here name a run everywhere: the dataset
hash (:func:`dataset_hash`, from file bytes, no pixels decoded) and the weights hash (the options that shape the
trained weights).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configspec import config_hash, to_dict, validate
from ..errors import ConfigError, DatasetError
from .config import RUN_OPTIONS, WEIGHTLESS_OPTIONS
from .dataset import ImageSet, Sizing, fingerprint, load_image_set, scan_folder
from .state import find_resume

INDEX_SUFFIX = ".likeness.json"


@dataclass
class Plan:
    """A validated config with its images read, output and resume locations fixed, and its dataset identity."""

    config: Any
    instance: ImageSet
    classes: ImageSet | None
    output: Path
    state_dir: Path
    resume: Path | None
    dataset_hash: str
    validation: ImageSet | None = None  # held-out photos for the validation loss (never trained on)


def output_path(config) -> Path:
    """The config's output file, checked: a ``.safetensors`` path that does not exist (unless ``overwrite``)."""
    if not str(config.output).strip():
        raise ConfigError("option 'output' is empty: give the path of the .safetensors file to write")
    output = Path(config.output).expanduser()
    if output.suffix.lower() != ".safetensors":
        raise ConfigError(f"option 'output' ({output}) must end in .safetensors")
    if output.exists() and not config.overwrite:
        raise ConfigError(f"output {output} already exists; choose another name or set overwrite=true")
    return output


def sidecar_path(result: Path) -> Path:
    """The index file beside a result (its content key and metadata; see :mod:`.session`)."""
    return result.with_name(result.stem + INDEX_SUFFIX)


def free_output_path(folder: Path, name: str) -> Path:
    """``name.safetensors``, or ``name_2.safetensors``... when taken: never overwrite an existing result."""
    path = folder / f"{name}.safetensors"
    n = 2
    while path.exists() or sidecar_path(path).exists():
        path = folder / f"{name}_{n}.safetensors"
        n += 1
    return path


def default_state_dir(config, output: Path) -> Path:
    return Path(config.state_dir).expanduser() if config.state_dir else output.with_name(output.stem + ".state")


def dataset_hash(config) -> str:
    """The identity of the run's images: the instance folder's fingerprint (and the class folder's)."""
    parts = [fingerprint(config.instance_data, "instance (subject)")]
    if uses_class_images(config):
        parts.append(fingerprint(config.class_data, "class"))
    return "-".join(p[:32] for p in parts)


def uses_class_images(config) -> bool:
    """Prior preservation from a folder of class images (not from the base model's own predictions)."""
    return bool(config.prior_preservation) and getattr(config, "prior", "class_images") == "class_images"


def plan(config, *, known_dataset_hash: str | None = None) -> Plan:
    """Validate the config and read the data; raise ConfigError/DatasetError before any heavy work."""
    validate(config, source=f"{getattr(config, 'kind', 'training')} options")
    output = output_path(config)
    sizing = Sizing.of(config)
    held = held_out(config)
    instance = load_image_set(
        config.instance_data, config.instance_prompt, config.resolution, "instance",
        sizing=sizing, masks=config.masked_loss, exclude=frozenset(held),
    )  # fmt: skip
    classes = None
    if uses_class_images(config):
        classes = load_image_set(config.class_data, config.class_prompt, config.resolution, "class", sizing=sizing)
    validation = validation_set(config, sizing, held)
    state_dir = default_state_dir(config, output)
    resume = find_resume(config.resume_from, state_dir)
    ident = known_dataset_hash or dataset_hash(config)
    return Plan(config, instance, classes, output, state_dir, resume, ident, validation)


def validation_set(config, sizing: Sizing, held: list[Path]) -> ImageSet | None:
    """The held-out photos (or the validation folder's) at their training sizes, or None without validation."""
    if held:
        others = frozenset(p for p, _ in scan_folder(config.instance_data, "instance (subject)")) - frozenset(held)
        folder = config.instance_data
    elif config.validation_folder:
        others, folder = frozenset(), config.validation_folder
    else:
        return None
    return load_image_set(
        folder, config.instance_prompt, config.resolution, "validation", sizing=sizing, exclude=others
    )


def held_out(config) -> list[Path]:
    """The photos ``validation_images`` holds out of the instance folder: spread evenly over its sorted images."""
    n = int(getattr(config, "validation_images", 0) or 0)
    if not n:
        return []
    photos = list(dict.fromkeys(p for p, _ in scan_folder(config.instance_data, "instance (subject)")))
    if n >= len(photos):
        raise DatasetError(
            f"option 'validation_images' is {n} but the instance folder has {len(photos)} photos: hold out fewer "
            "(at least one must remain for training), or give a validation_folder"
        )
    return [photos[int((i + 0.5) * len(photos) / n)] for i in range(n)]


def weights_hash(config) -> str:
    """Hash of the options that shape the trained weights (not paths, samples, checkpoint cadence or steps), and of
    the weights a run starts from when its config names some (``start_weights_hash``: a LoRA being continued), and of
    the number of processes when there are several (N processes train with N times ``batch_size``)."""
    from ..distributed import world_size

    options = config_hash(config, exclude=WEIGHTLESS_OPTIONS + ("steps",))
    start = getattr(config, "start_weights_hash", None)
    start = start() if callable(start) else ""
    world = world_size()
    extra = (f":{start}" if start else "") + (f":processes={world}" if world > 1 else "")
    return hashlib.sha256(f"{options}{extra}".encode()).hexdigest() if extra else options


def metadata_config(config) -> dict[str, Any]:
    """The options saved with a result (in its metadata and its resumable states): everything but locations."""
    return {k: v for k, v in to_dict(config).items() if k not in RUN_OPTIONS}
