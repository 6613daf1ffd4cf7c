"""Likeness: DreamBooth and LoRA training for Stable Diffusion 1.5, inside ComfyUI.

Kept light on purpose: node modules import torch/diffusers only when a node runs.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
