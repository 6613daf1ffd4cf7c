"""A stand-in for diffusers' examples/dreambooth/train_dreambooth.py in the GPU suite's smoke test (CI has no
diffusers checkout): it takes the same flags the suite passes, loads the UNet of the model folder and runs training
steps through ``UNet2DConditionModel.forward``, which is what ``benchmarks/probe.py`` measures. With
``DIFFUSERS_EXAMPLES`` set, the test runs diffusers' real scripts instead."""

import argparse

import torch
from diffusers import UNet2DConditionModel

parser = argparse.ArgumentParser()
for flag in ("--pretrained_model_name_or_path", "--max_train_steps", "--train_batch_size", "--resolution"):
    parser.add_argument(flag)
args, _ = parser.parse_known_args()
unet = UNet2DConditionModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6)
batch, side = int(args.train_batch_size), int(args.resolution) // 2
for _ in range(int(args.max_train_steps)):
    x = torch.randn(batch, 4, side, side)
    hidden = torch.randn(batch, 77, unet.config.cross_attention_dim)
    unet(x, torch.zeros(batch, dtype=torch.long), hidden).sample.pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
