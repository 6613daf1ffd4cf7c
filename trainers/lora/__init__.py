"""LoRA: peft adapters on the SD1.5 UNet / text encoder, the kohya/A1111 file format, extraction from a full model.

Modules here import torch/peft at module level: import them only from heavy code (never from ``nodes/`` at import).
"""
