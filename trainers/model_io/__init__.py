"""SD1.x model I/O: read civitai single files safely, detect the architecture, convert LDM <-> diffusers with the
pack's own SD1.5 configs, export one LDM-layout ``.safetensors``. Imports torch/diffusers: import it lazily from
node modules."""

from .components import Components, components_to_ldm, load_components, make_noise_scheduler, make_pipeline
from .detect import detect_architecture
from .export import host_loadable_file, make_model_handle, save_single_file
from .reader import Checkpoint, inspect_checkpoint, read_checkpoint
from .tokenizer import load_tokenizer

__all__ = [
    "Checkpoint",
    "Components",
    "components_to_ldm",
    "detect_architecture",
    "host_loadable_file",
    "inspect_checkpoint",
    "load_components",
    "load_tokenizer",
    "make_model_handle",
    "make_noise_scheduler",
    "make_pipeline",
    "read_checkpoint",
    "save_single_file",
]
