"""A stand-in for diffusers' examples/dreambooth/train_dreambooth_lora.py in the GPU suite's smoke test: the same
training steps as the ``train_dreambooth.py`` stand-in beside it (what the probe measures is the UNet's forward)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("train_dreambooth.py")), run_name="__main__")
