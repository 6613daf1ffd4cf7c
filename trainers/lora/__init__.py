"""LoRA: peft adapters (LoRA, DoRA, LoHa, LoKr) on the SD1.5 UNet / text encoder, the kohya/LyCORIS file format,
continuing a LoRA file, extraction from a full model.

Modules here import torch/peft at module level: import them only from heavy code (never from ``nodes/`` at import).
"""
