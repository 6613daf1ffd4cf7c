"""Likeness: DreamBooth and LoRA training for Stable Diffusion 1.5, inside ComfyUI.

Kept light on purpose: node modules import torch/diffusers only when a node runs.
"""

# As a package (ComfyUI, tests) this registers the nodes. pytest also imports this file on its own (no package) when
# the checkout's folder name is not a Python identifier, e.g. "ComfyUI-Likeness": then there is nothing to register.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
