"""Likeness training engine: a plain Python library (never imports ComfyUI).

Model I/O (SD1.5 single file <-> diffusers), datasets and face crops, class-image generation, one training loop for
DreamBooth and LoRA, LoRA formats and a CLI (``python -m trainers ...``). Front ends (the ComfyUI nodes, the CLI)
talk to it through typed configs, callbacks and a stop flag.

Heavy modules (torch, diffusers, transformers, peft) are imported inside the submodules that need them, so importing
this package is cheap.
"""

__version__ = "0.1.0"
