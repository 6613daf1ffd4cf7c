"""EMA weights (issue 15): the result is the EMA, samples use it without disturbing training, resume is exact."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_helpers import fresh, tiny_config

from trainers.configspec import from_dict, to_dict
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


def lora_file_tensors(c, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA file's tensors (kohya layout, fp32) for recorded ``weights`` put into the adapted components ``c``."""
    from trainers.lora import adapters as A
    from trainers.lora import kohya as K

    with torch.no_grad():
        for part in ("unet", "text_encoder"):
            for k, p in getattr(c, part).named_parameters():
                p.copy_(weights[f"{part}.{k}"])
    return K.to_state_dict(A.get_weights(c.unet), A.get_weights(c.text_encoder), "fp32")


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


LORA = dict(lora_rank=4, lora_alpha=4.0, learning_rate=1e-2, text_encoder_lr=1e-2, save_dtype="fp32")


def lora_config(folder: Path, cls=None, **overrides):
    from trainers.lora.config import LoRAConfig

    base = to_dict(tiny_config(folder, ema=True, ema_decay=DECAY, ema_start_step=START))
    return from_dict(cls or LoRAConfig, {**base, **LORA, **overrides})


def test_a_lora_result_is_the_ema_of_its_adapters(tiny_components, tmp_path):
    c = fresh(tiny_components)
    rec = Snapshots(c)
    out = train(lora_config(tmp_path, steps=5), components=c, callbacks=rec)
    assert out.state == "finished" and len(rec.steps) == 5
    saved = load_file(str(out.path))
    assert same_tensors(saved, lora_file_tensors(c, expected_ema(rec.steps)))
    assert not same_tensors(saved, lora_file_tensors(c, rec.steps[-1]), atol=1e-4)  # not the last step's adapters
    assert out.metadata["likeness.ema"] == '{"decay": 0.8, "start_step": 1}'


class CurveJudge:
    """Subject probes score ``curve[step]``; the class probes (the last ``n_class`` images) a constant."""

    name = "curve"

    def __init__(self, curve: dict[int, float], n_class: int):
        self.curve, self.n_class = curve, n_class

    def prepare(self, trainer):
        self.trainer = trainer

    def score(self, images):
        subject = [(self.curve.get(self.trainer.step), "") for _ in images[: -self.n_class]]
        return subject + [(0.3, "") for _ in images[-self.n_class :]]


def test_keep_best_with_ema_keeps_the_ema_weights_of_the_kept_step(tiny_components, tmp_path):
    from trainers.lora.config import LoRAConfig

    @dataclass
    class Judged(LoRAConfig):
        def make_judge(self):
            return CurveJudge({2: 0.5, 4: 0.9, 6: 0.6}, self.eval_images)

    c = fresh(tiny_components)
    rec = Snapshots(c)
    cfg = lora_config(tmp_path, Judged, steps=6, eval_every=2, eval_steps=2, keep_last=True)
    out = train(cfg, components=c, callbacks=rec)
    assert out.metadata["likeness.kept_step"] == "4" and len(rec.steps) == 6
    kept = load_file(str(out.path))
    assert same_tensors(kept, lora_file_tensors(c, expected_ema(rec.steps[:4])))  # judged and kept: the EMA
    assert not same_tensors(kept, lora_file_tensors(c, rec.steps[3]), atol=1e-4)  # not step 4's raw adapters
    last = load_file(str(out.path.with_name(f"{out.path.stem}_last.safetensors")))
    assert same_tensors(last, lora_file_tensors(c, expected_ema(rec.steps)))  # the last step saved as its EMA too


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
