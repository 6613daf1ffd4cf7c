"""The training nodes' inputs for the issue-15 methods: the ``prior`` mode and a validation folder.

Kept beside ``training.py`` (which stays thin): main options added after 0.1 become *optional* inputs, so API prompts
saved before them keep validating; ``prior="base_model"`` trains without class images (the base model's own
prediction is the class target), so connected class images are not read then.
"""

from __future__ import annotations

from typing import Any

OPTIONAL_MAIN = ("prior",)  # main options added after 0.1: optional inputs

VALIDATION_FOLDER = (
    "STRING",
    {
        "default": "",
        "tooltip": "Optional folder of held-out subject photos (inside ComfyUI's input folder) for a validation loss "
        "curve; or hold photos out with validation_images (Training Options).",
    },
)


def optional_inputs(main: dict[str, Any]) -> dict[str, Any]:
    """Take the later main options out of ``main`` (in place) and return them with the validation folder input."""
    return {**{name: main.pop(name) for name in OPTIONAL_MAIN}, "validation_folder": VALIDATION_FOLDER}


def method_folders(values: dict[str, Any], cls_folder: str | None, inputs: dict[str, Any], source) -> dict[str, Any]:
    """``class_data``, ``prior_preservation`` and ``validation_folder`` for the config (``source`` resolves a typed
    folder like the node's other folders)."""
    base_prior = values.get("prior") == "base_model"
    val_folder, _ = source(None, inputs.get("validation_folder", ""), "validation")
    return {
        "class_data": None if base_prior else cls_folder,
        "prior_preservation": base_prior or cls_folder is not None,
        "validation_folder": val_folder,
    }
