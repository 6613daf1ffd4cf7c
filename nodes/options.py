"""Likeness Training Options: the advanced options shared by every training method, for a training node's 'options'
input. Only what the user changed is sent, so a method's own defaults (LoRA's text-encoder learning rate) stay."""

from __future__ import annotations

from ..trainers import configspec
from ..trainers.train.config import TrainConfig
from .inputs import changed_options, comfy_inputs

OPTIONS_TYPE = "LIKENESS_TRAIN_OPTIONS"


class LikenessTrainingOptions:
    DESCRIPTION = (
        "Advanced training options (optimizer, schedule, precision, memory savers, samples, checkpoints). Connect to "
        "the 'options' input of a Likeness training node. Only the options you change here are sent: the others "
        "keep the training node's own defaults (LoRA and DreamBooth differ, e.g. in the text encoder's learning "
        "rate)."
    )
    CATEGORY = "Likeness/training"
    FUNCTION = "build"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("The options you changed, for a Likeness training node.",)

    @classmethod
    def INPUT_TYPES(cls):
        # optional: a prompt saved before an option was added still validates (the option keeps its default)
        return {"required": {}, "optional": comfy_inputs(TrainConfig, advanced=True)}

    def build(self, **values):
        changed = changed_options(TrainConfig, values)
        # check the options alone: fill in what the training node provides
        probe = dict(changed, prior_preservation=False, instance_data=".", output="x.safetensors")
        configspec.from_dict(TrainConfig, probe, source="Likeness Training Options")
        return (changed,)


NODE_CLASS_MAPPINGS = {"LikenessTrainingOptions": LikenessTrainingOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"LikenessTrainingOptions": "Likeness Training Options"}
