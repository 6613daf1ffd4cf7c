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
from ..errors import ConfigError
from .config import RUN_OPTIONS, WEIGHTLESS_OPTIONS
from .dataset import ImageSet, fingerprint, load_image_set
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
    if config.prior_preservation:
        parts.append(fingerprint(config.class_data, "class"))
    return "-".join(p[:32] for p in parts)


def plan(config, *, known_dataset_hash: str | None = None) -> Plan:
    """Validate the config and read the data; raise ConfigError/DatasetError before any heavy work."""
    validate(config, source=f"{getattr(config, 'kind', 'training')} options")
    output = output_path(config)
    instance = load_image_set(config.instance_data, config.instance_prompt, config.resolution, "instance")
    classes = None
    if config.prior_preservation:
        classes = load_image_set(config.class_data, config.class_prompt, config.resolution, "class")
    state_dir = default_state_dir(config, output)
    resume = find_resume(config.resume_from, state_dir)
    ident = known_dataset_hash or dataset_hash(config)
    return Plan(config, instance, classes, output, state_dir, resume, ident)


def weights_hash(config) -> str:
    """Hash of the options that shape the trained weights (not paths, samples, checkpoint cadence or steps), and of
    the number of processes when there are several (N processes train with N times ``batch_size``)."""
    from ..distributed import world_size

    h = config_hash(config, exclude=WEIGHTLESS_OPTIONS + ("steps",))
    world = world_size()
    return h if world == 1 else hashlib.sha256(f"{h}:processes={world}".encode()).hexdigest()


def metadata_config(config) -> dict[str, Any]:
    """The options saved with a result (in its metadata and its resumable states): everything but locations."""
    return {k: v for k, v in to_dict(config).items() if k not in RUN_OPTIONS}
