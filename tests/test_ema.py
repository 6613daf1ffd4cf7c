"""EMA weights (issue 15): the result is the EMA, samples use it without disturbing training, resume is exact."""

from __future__ import annotations

import torch
from train_helpers import fresh, tiny_config

from trainers.train import Callbacks, train

DECAY, START = 0.8, 1


class Snapshots(Callbacks):
    """The trained weights after every optimizer step, and the weights the UNet samples with."""

    def __init__(self, components):
        self.c = components
        self.steps: list[dict[str, torch.Tensor]] = []
        self.sampled_with: list[torch.Tensor] = []
        components.unet.register_forward_pre_hook(self._sampling)

    def _sampling(self, module, args):
        if not module.training:
            self.sampled_with.append(module.conv_in.weight.detach().clone())

    def on_progress(self, info):
        if info.phase == "training":
            named = {f"unet.{k}": v for k, v in self.c.unet.named_parameters()}
            named.update({f"text_encoder.{k}": v for k, v in self.c.text_encoder.named_parameters()})
            self.steps.append({k: v.detach().clone() for k, v in named.items()})


def expected_ema(steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """diffusers' EMAModel rule, written out: copy until the start step, then decay min(DECAY, (1+k)/(10+k))."""
    ema: dict[str, torch.Tensor] = {}
    for n, weights in enumerate(steps, start=1):
        k = n - START - 1
        decay = 0.0 if k <= 0 else min(DECAY, (1 + k) / (10 + k))
        ema = {name: w.clone() if decay == 0.0 else ema[name] * decay + w * (1 - decay) for name, w in weights.items()}
    return ema


def test_the_saved_result_is_the_ema_and_samples_use_it_without_disturbing_training(tiny_components, tmp_path):
    from diffusers import StableDiffusionPipeline

    def run(name, **extra):
        c = fresh(tiny_components)
        rec = Snapshots(c)
        cfg = tiny_config(
            tmp_path / name, steps=6, ema=True, ema_decay=DECAY, ema_start_step=START, save_diffusers=True, **extra
        )
        return train(cfg, components=c, callbacks=rec), rec

    out, rec = run("a", sample_every=3, sample_steps=2)
    ema = expected_ema(rec.steps)
    pipe = StableDiffusionPipeline.from_pretrained(out.path.with_suffix(""), safety_checker=None, local_files_only=True)
    for part in ("unet", "text_encoder"):
        for k, v in getattr(pipe, part).named_parameters():
            assert torch.allclose(v, ema[f"{part}.{k}"], rtol=0, atol=1e-6), k
    last = rec.steps[-1]
    assert not torch.allclose(ema["unet.conv_in.weight"], last["unet.conv_in.weight"])  # the EMA is not the weights
    assert out.metadata["likeness.ema"] == '{"decay": 0.8, "start_step": 1}'

    # samples at step 3 were drawn with the EMA of steps 1..3; afterwards training went on from its own weights
    assert torch.allclose(rec.sampled_with[0], expected_ema(rec.steps[:3])["unet.conv_in.weight"], atol=1e-6)
    _, quiet = run("b", sample_every=0)
    assert len(quiet.steps) == len(rec.steps) == 6
    assert all(torch.equal(a[k], b[k]) for a, b in zip(quiet.steps, rec.steps, strict=True) for k in a)


def test_a_stopped_and_resumed_ema_run_equals_an_uninterrupted_one_bitwise(tiny_components, tmp_path):
    common = dict(steps=8, ema=True, ema_decay=DECAY, ema_start_step=START, ema_on_cpu=True, lr_scheduler="cosine")
    straight = fresh(tiny_components)
    full = train(tiny_config(tmp_path / "a", **common), components=straight)

    class StopAt4(Callbacks):
        step = 0

        def on_progress(self, info):
            if info.phase == "training":
                self.step = info.step

    rec = StopAt4()
    inst = str(tmp_path / "a" / "inst")
    stopped = train(
        tiny_config(tmp_path / "b", **common, instance_data=inst),
        components=fresh(tiny_components),
        callbacks=rec,
        stop=lambda: rec.step >= 4,
    )
    assert stopped.state == "stopped" and stopped.steps_done == 4
    resumed_parts = fresh(tiny_components)
    resumed = train(
        tiny_config(tmp_path / "b", **common, instance_data=inst, resume_from="latest"), components=resumed_parts
    )
    assert resumed.state == "finished" and resumed.losses == full.losses
    for a, b in ((straight.unet, resumed_parts.unet), (straight.text_encoder, resumed_parts.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
