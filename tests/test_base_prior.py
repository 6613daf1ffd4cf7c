"""Prior preservation from the base model (issue 15): no class images; the class target is the frozen base model's
prediction for the class prompt on the same noisy latents (LoRA: adapters off for that pass; DreamBooth: a copy)."""

from __future__ import annotations

import pytest
import torch
from train_helpers import fresh, subject_images, tiny_config

from trainers.configspec import from_dict
from trainers.errors import ConfigError
from trainers.lora.config import LoRAConfig
from trainers.train import Callbacks, train
from trainers.train import base_prior as bp
from trainers.train.plan import plan

CLASS_PROMPT = "a photo of shape"


@pytest.fixture
def extend_calls(monkeypatch):
    """(noisy subject latents, timesteps, the batch's targets) of every step's base-prior pass."""
    calls = []
    real = bp.BasePrior.extend

    def spy(self, noisy, timesteps, target):
        out = real(self, noisy, timesteps, target)
        trainable = all(p.requires_grad for n, p in self.unet.named_parameters() if "lora_" in n)
        calls.append((noisy.detach().clone(), timesteps.clone(), out[2].detach().clone(), out[0], out[1], trainable))
        return out

    monkeypatch.setattr(bp.BasePrior, "extend", spy)
    return calls


def _base_prediction(components, noisy, timesteps):
    tok = components.tokenizer
    ids = tok([CLASS_PROMPT], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = components.text_encoder(ids, return_dict=False)[0]
        return components.unet(noisy, timesteps, hidden.expand(noisy.shape[0], -1, -1), return_dict=False)[0]


class Steps(Callbacks):
    def __init__(self):
        self.progress = []

    def on_progress(self, info):
        if info.phase == "training":
            self.progress.append(info)


def _check_targets(calls, base):
    assert len(calls) == 3
    for noisy, timesteps, targets, doubled, both_t, trainable in calls:
        assert trainable  # the adapters come back trainable after the pass without them
        n = noisy.shape[0]
        assert torch.equal(doubled[:n], doubled[n:]) and torch.equal(both_t[:n], both_t[n:])  # the same noisy latents
        expected = _base_prediction(base, noisy, timesteps)
        # steps 2 and 3: the model has trained, the target is still the untouched base model's prediction
        assert torch.allclose(targets[n:], expected, atol=1e-5)


def test_dreambooth_prior_from_a_frozen_copy_of_the_base_unet(tiny_components, tmp_path, extend_calls):
    subject_images(tmp_path / "inst")
    cfg = tiny_config(tmp_path, steps=3, prior_preservation=True, prior="base_model", class_prompt=CLASS_PROMPT)
    assert plan(cfg).classes is None and cfg.class_data is None  # no class images asked for, none read
    c, rec = fresh(tiny_components), Steps()
    captions = []
    c.text_encoder.register_forward_pre_hook(lambda m, a: captions.append(a[0].clone()) if m.training else None)
    out = train(cfg, components=c, callbacks=rec)
    assert out.state == "finished" and len(out.losses_prior) == 3
    assert all(p.loss_prior is not None for p in rec.progress)
    _check_targets(extend_calls, tiny_components)
    cls_ids = c.tokenizer([CLASS_PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    assert all(ids.shape[0] == 2 and ids[1].equal(cls_ids) for ids in captions)  # subject, then the class prompt
    assert not any(p.name.startswith("class") for p in tmp_path.rglob("*.png"))  # no class image was made


def test_lora_prior_from_the_same_unet_with_its_adapters_off(tiny_components, tmp_path, extend_calls):
    subject_images(tmp_path / "inst")
    data = dict(
        instance_data=str(tmp_path / "inst"),
        instance_prompt="a photo of sks shape",
        class_prompt=CLASS_PROMPT,
        prior_preservation=True,
        prior="base_model",
        output=str(tmp_path / "lora.safetensors"),
        steps=3,
        resolution=32,
        lora_rank=4,
        lora_alpha=4.0,
        learning_rate=1e-2,
        device="cpu",
        mixed_precision="fp32",
        optimizer="adamw",
        gradient_checkpointing=False,
        sample_at_end=False,
    )
    c = fresh(tiny_components)
    out = train(from_dict(LoRAConfig, data), components=c)
    assert out.state == "finished" and len(out.losses_prior) == 3
    _check_targets(extend_calls, tiny_components)
    # the adapters are back on and trained (lora_B starts at zero)
    layers = bp.tuner_layers(c.unet)
    assert layers and all(not layer.disable_adapters for layer in layers)
    assert any(p.abs().sum() > 0 for layer in layers for n, p in layer.named_parameters() if "lora_B" in n)


def test_class_images_mode_still_needs_class_images():
    with pytest.raises(ConfigError, match="prior=base_model"):
        from_dict(LoRAConfig, dict(instance_data=".", output="x.safetensors", prior_preservation=True))
