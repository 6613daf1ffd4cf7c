"""Memory at real size: the optimizer step in backward, bf16 weights with stochastic rounding, and the planner
(what it counts, how it traces a step, what it changes to fit, what an out-of-memory error says).

The planner's whole prediction against measured peak memory of a full-size SD1.5 is a benchmark
(``benchmarks/side_by_side.py``, recorded in docs/benchmarks.md); here: what is cheap and exact.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from train_helpers import fresh, subject_images, tiny_config

from trainers.errors import ConfigError
from trainers.train import train


def test_the_step_in_backward_frees_each_gradient_and_updates_like_the_step_after_it(tiny_components, tmp_path):
    from trainers.train.lowmem import LowMemoryAdamW

    subject_images(tmp_path / "inst")
    params_seen: list[int] = []
    original = LowMemoryAdamW._hook

    def watch(self, p):
        original(self, p)
        params_seen.append(sum(q.grad is not None for q in self._index))  # gradients alive right after each update

    LowMemoryAdamW._hook = watch
    try:
        fused = fresh(tiny_components)
        train(tiny_config(tmp_path / "a", steps=3, fused_backward=True, max_grad_norm=0.0), components=fused)
    finally:
        LowMemoryAdamW._hook = original
    n = sum(1 for p in fused.unet.parameters()) + sum(1 for p in fused.text_encoder.parameters())
    assert len(params_seen) == 3 * n and max(params_seen) == 0  # every weight updated once per step, none kept
    assert all(p.grad is None for p in fused.unet.parameters())
    # the same AdamW applied after backward (bf16 off, nothing fused): bitwise the same weights
    after = fresh(tiny_components)
    cfg = tiny_config(tmp_path / "b", steps=3, max_grad_norm=0.0)
    import trainers.train.optim as optim

    make = optim.make_optimizer

    def step_after_backward(config, groups, device_type):
        kw = dict(
            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, weight_decay=config.weight_decay
        )
        torch_groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in groups if g["params"]]
        return LowMemoryAdamW(torch_groups, in_backward=False, seed=config.seed, **kw)

    optim.make_optimizer = step_after_backward
    try:
        train(cfg, components=after)
    finally:
        optim.make_optimizer = make
    a, b = fused.unet.state_dict(), after.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in tiny_components.unet.state_dict().items())  # it trained


def test_low_memory_adamw_computes_torch_adamw():
    from trainers.train.lowmem import LowMemoryAdamW

    torch.manual_seed(0)
    w0 = torch.randn(64, 32)
    x, y = torch.randn(256, 32), torch.randn(256, 64)
    results = []
    for make in (
        lambda p: torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1),
        lambda p: LowMemoryAdamW([{"params": [p], "lr": 1e-2}], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                                 in_backward=False, seed=0),
    ):  # fmt: skip
        p = torch.nn.Parameter(w0.clone())
        opt = make(p)
        for _ in range(20):
            loss = (x @ p.T - y).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        results.append(p.detach())
    assert (results[0] - results[1]).abs().max() < 1e-6
    assert (results[0] - w0).abs().max() > 0.1


def test_the_update_runs_in_pieces_so_its_temporaries_stay_within_what_the_planner_counts(monkeypatch, tmp_path):
    """A weight larger than a piece is updated piece by piece: the same AdamW as torch's (fp32), and in bf16 the
    fp32 temporaries alive at once stay within the planner's bound for one piece (they were ~34 bytes a value of
    the whole weight: 1 GB for SD1.5's largest)."""
    from trainers.train import lowmem
    from trainers.train.memory import _update_bytes, sd15_shapes
    from trainers.train.memtrace import LiveBytes

    monkeypatch.setattr(lowmem, "PIECE", 1000)
    torch.manual_seed(0)
    w0, grads = torch.randn(70, 50), [torch.randn(70, 50) for _ in range(5)]  # 3500 values: 4 pieces, the last short
    out = []
    for make in (
        lambda p: torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1),
        lambda p: lowmem.LowMemoryAdamW([{"params": [p], "lr": 1e-2}], betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=0.1, in_backward=False, seed=0),
    ):  # fmt: skip
        p = torch.nn.Parameter(w0.clone())
        opt = make(p)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out.append(p.detach())
    assert (out[0] - out[1]).abs().max() < 1e-6 and (out[0] - w0).abs().max() > 0.01

    p = torch.nn.Parameter(torch.randn(200, 50).to(torch.bfloat16))  # 10 pieces
    opt = lowmem.LowMemoryAdamW([{"params": [p], "lr": 1e-3}], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                in_backward=False, seed=0)  # fmt: skip
    before = p.detach().clone()
    for _ in range(2):  # the first step makes the moments (2 bytes a value each, counted as optimizer state)
        p.grad = torch.randn_like(p)
        count = LiveBytes()
        count.ignore([p, p.grad, *[t for s in opt.state.values() for t in s.values()]])
        with count:
            opt.step()
    cfg = tiny_config(tmp_path, master_weights="bf16", mixed_precision="auto")
    bound = _update_bytes(cfg, sd15_shapes())  # the planner's bytes for one piece (of the patched size)
    assert 0.8 * bound < count.peak <= bound and count.peak < 34 * p.numel() // 8
    assert not torch.equal(p.detach(), before)


def test_stochastic_rounding_is_unbiased_and_keeps_updates_below_bf16_resolution():
    from trainers.train.lowmem import stochastic_round_

    gen = torch.Generator().manual_seed(0)
    value = torch.full((100_000,), 1.0 + 0.3 * 2**-7)  # 30% of the way from 1.0 to the next bf16 number
    out = torch.empty(100_000, dtype=torch.bfloat16)
    stochastic_round_(out, value, gen)
    ups = (out.float() > 1.0).float().mean().item()
    assert set(out.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(ups - 0.3) < 0.01
    # 100 steps of -1e-4 on a weight of 1.0 (bf16 resolution there: 2^-7 = 0.0078): nearest rounding never moves it
    w_near, w_sr = torch.ones(4096, dtype=torch.bfloat16), torch.ones(4096, dtype=torch.bfloat16)
    for _ in range(100):
        w_near = (w_near.float() - 1e-4).to(torch.bfloat16)
        stochastic_round_(w_sr, w_sr.float() - 1e-4, gen)
    assert torch.all(w_near == 1.0)
    assert abs(w_sr.float().mean().item() - 0.99) < 0.001


def test_bf16_weights_train_in_bf16_and_resume_bitwise(tiny_components, tmp_path):
    subject_images(tmp_path / "inst")
    common = dict(steps=4, master_weights="bf16", mixed_precision="auto", instance_data=str(tmp_path / "inst"))
    straight = fresh(tiny_components)
    out = train(tiny_config(tmp_path / "a", **common), components=straight)
    assert out.state == "finished" and next(straight.unet.parameters()).dtype == torch.bfloat16
    assert not torch.equal(next(straight.unet.parameters()).float(), next(tiny_components.unet.parameters()))

    from trainers.train import Callbacks

    class StopAt2(Callbacks):
        step = 0

        def on_progress(self, info):
            self.step = info.step if info.phase == "training" else self.step

    rec = StopAt2()
    cfg = tiny_config(tmp_path / "b", **common)
    stopped = train(cfg, components=fresh(tiny_components), callbacks=rec, stop=lambda: rec.step >= 2)
    assert stopped.state == "stopped" and stopped.steps_done == 2
    resumed = fresh(tiny_components)
    train(tiny_config(tmp_path / "b", **common, resume_from="latest"), components=resumed)
    a, b = straight.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the rounding noise is seeded by (seed, step, weight)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"fused_backward": True}, "max_grad_norm=0"),
        ({"fused_backward": True, "max_grad_norm": 0.0, "gradient_accumulation": 2}, "gradient_accumulation=1"),
        ({"master_weights": "bf16", "mixed_precision": "fp32"}, "mixed_precision=bf16"),
    ],
)
def test_memory_options_that_cannot_work_together_are_refused(tmp_path, options, words):
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, **options).check()
    assert words in str(e.value)


def test_bf16_weights_are_refused_for_lora(tmp_path):
    from trainers.configspec import from_dict
    from trainers.lora.config import LoRAConfig

    cfg = from_dict(LoRAConfig, {"instance_data": str(tmp_path), "output": str(tmp_path / "x.safetensors"),
                                 "prior_preservation": False})  # fmt: skip
    with pytest.raises(ConfigError, match="full fine-tuning"):
        dataclasses.replace(cfg, master_weights="bf16").check()


# -- the planner -------------------------------------------------------------------------------------------------


def test_the_meta_trace_is_the_step_on_real_tensors(tiny_components):
    """The planner's trace (meta device) counts what the same step holds on real CPU tensors, to the byte."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trainers.train.memtrace import LiveBytes, StepShape, step_peak_bytes

    for checkpointing, grads in ((False, "keep"), (True, "free")):
        config = json.dumps(dict(tiny_components.unet.config), default=list)
        meta = step_peak_bytes(StepShape(config, None, 2, 16, checkpointing, "sdpa", "fp32", grads))
        unet = copy.deepcopy(tiny_components.unet)
        unet.set_attn_processor(AttnProcessor2_0())
        unet.train()
        unet.requires_grad_(True)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        if grads == "free":
            for p in unet.parameters():
                p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        count = LiveBytes()
        count.ignore([*unet.parameters(), *unet.buffers()])
        with count:
            latents = torch.randn(2, 4, 16, 16)  # the step as the trace runs it
            timesteps, hidden = torch.zeros(2, dtype=torch.long), torch.randn(2, 77, 32)
            pred = unet(latents, timesteps, hidden, return_dict=False)[0]
            loss = (pred.float() - latents.float()).pow(2).mean()
            loss.backward()
            del pred, loss, hidden
        assert count.peak == meta
    assert meta < step_peak_bytes(StepShape(config, None, 2, 16, False, "sdpa", "fp32", "keep"))


def test_sd15_weights_and_optimizer_are_counted_from_its_real_shapes(tmp_path):
    from trainers.train.memory import estimate, sd15_shapes

    shapes = sd15_shapes()  # the bundled configs, on the meta device
    assert (shapes.unet, shapes.te, shapes.vae) == (859_520_964, 123_060_480, 83_653_863)
    assert shapes.lora_params("unet", "attention", 1) == 199_296  # rank 1 on the 128 attention projections
    cfg = tiny_config(tmp_path, train_text_encoder=True, resolution=64, mixed_precision="fp32", sample_at_end=False)
    est = estimate(cfg, shapes, "cuda")
    trained = shapes.unet + shapes.te
    assert est.optimizer == 8 * trained  # two fp32 AdamW moments
    assert est.weights == 4 * trained  # VAE offloaded after caching, the text encoder trains
    assert est.step >= est.gradients == 4 * trained
    assert est.ema == 0  # no EMA unless asked
    assert estimate(dataclasses.replace(cfg, ema=True), shapes, "cuda").ema == 4 * trained
    assert estimate(dataclasses.replace(cfg, ema=True, ema_on_cpu=True), shapes, "cuda").ema == 0  # not on the GPU
    eight = estimate(dataclasses.replace(cfg, optimizer="adamw8bit"), shapes, "cuda")
    assert est.optimizer - eight.optimizer == pytest.approx(5.99 * trained, rel=1e-3)  # 5.9e9 bytes: "saves ~5.9 GB"


@pytest.fixture
def tiny_shapes(tiny_components):
    from trainers.train.memory import shapes_of

    return shapes_of(tiny_components.unet, tiny_components.vae, tiny_components.text_encoder)


def test_fit_turns_on_the_cheapest_savings_first_and_only_what_is_needed(tmp_path, tiny_shapes, monkeypatch):
    from trainers.train import memory

    monkeypatch.setattr(memory, "_bf16_ok", lambda device_type: True)
    monkeypatch.setattr(memory, "_has_bitsandbytes", lambda: False)
    cfg = tiny_config(tmp_path, gradient_checkpointing=False, batch_size=4, mixed_precision="fp32", sample_at_end=False)
    full = memory.estimate(cfg, tiny_shapes, "cuda").total
    assert memory.fit(cfg, full, tiny_shapes, "cuda").changes == []  # fits: nothing changes
    first = memory.fit(cfg, full - 1, tiny_shapes, "cuda")
    assert first.changes == ["gradient_checkpointing off -> on"] and first.fits
    assert first.config.gradient_checkpointing and first.config.batch_size == 4
    tight = memory.fit(cfg, first.estimate.total - 1, tiny_shapes, "cuda")
    assert tight.changes[:3] == [
        "batch_size 4 -> 2",
        "gradient_accumulation 1 -> 2",
        "gradient_checkpointing off -> on",
    ]
    assert tight.config.batch_size * tight.config.gradient_accumulation == 4
    totals = [memory.estimate(memory.fit(cfg, t, tiny_shapes, "cuda").config, tiny_shapes, "cuda").total
              for t in (full, full - 1, first.estimate.total - 1)]  # fmt: skip
    assert totals == sorted(totals, reverse=True)
    hopeless = memory.fit(cfg, 1, tiny_shapes, "cuda")
    assert not hopeless.fits and "train_text_encoder on -> off" in hopeless.changes and "use LoRA" in hopeless.message()


def test_out_of_memory_names_the_cheapest_change_that_fits(tiny_components, tmp_path, monkeypatch):
    from trainers.train import memory
    from trainers.train.loop import OutOfMemory, Trainer

    subject_images(tmp_path / "inst")
    cfg = tiny_config(tmp_path, steps=3, gradient_checkpointing=False)
    shapes = memory.shapes_of(tiny_components.unet, tiny_components.vae, tiny_components.text_encoder)
    needed = memory.estimate(cfg, shapes, "cpu").total
    monkeypatch.setattr(memory, "available_bytes", lambda device_type, device=None: needed - 1)

    def boom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "one_step", boom)
    with pytest.raises(OutOfMemory) as e:
        train(cfg, components=fresh(tiny_components))
    assert "The cheapest change that fits" in str(e.value) and "gradient_checkpointing off -> on" in str(e.value)


def test_before_a_gpu_run_the_planner_changes_the_config_and_says_what(tmp_path, tiny_shapes, monkeypatch):
    from trainers.train import memory

    monkeypatch.setattr("trainers.devices.resolve_device", lambda name="auto": "cuda")
    monkeypatch.setattr(memory, "_bf16_ok", lambda device_type: True)
    cfg = tiny_config(tmp_path, device="auto", gradient_checkpointing=False, mixed_precision="bf16")
    need = memory.estimate(cfg, tiny_shapes, "cuda").total
    monkeypatch.setattr(memory, "available_bytes", lambda device_type, device=None: need - 1)
    changed, line = memory.plan_memory(cfg, tiny_shapes)
    assert changed.gradient_checkpointing and not cfg.gradient_checkpointing  # a new config; the input is untouched
    assert line.startswith("memory: predicted peak") and "changed to fit: gradient_checkpointing off -> on" in line
    kept, line = memory.plan_memory(dataclasses.replace(cfg, fit_memory=False), tiny_shapes)
    assert not kept.gradient_checkpointing and "changed" not in line
    monkeypatch.setattr("trainers.devices.resolve_device", lambda name="auto": "cpu")
    assert memory.plan_memory(cfg, tiny_shapes) == (cfg, None)  # nothing to plan on the CPU


def test_the_planner_predicts_the_tensor_bytes_a_real_run_adds(tmp_path):
    """The planner against a real run of the CLI on the tiny model (``benchmarks/side_by_side.py --tensors``: the
    probe counts every tensor storage made from the first training forward on, the planner's own quantity): full
    fine-tuning with the text encoder, LoRA, and the optimizer step in backward, each within 3 %."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    runs = tmp_path / "runs.json"
    cmd = [
        sys.executable, "-m", "benchmarks.side_by_side", "--model", "tiny", "--ours-only", "--runs", "0", "--tensors",
        "--steps", "2", "--pairings", "unet_te,lora,unet_fused", "--work", str(tmp_path / "work"), "--json", str(runs),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(runs.read_text())
    assert len(results) == 3 and all(r["counted"] and r["who"] == "ours" for r in results)
    for r in results:
        assert r["tensor_growth_mb"] == pytest.approx(r["predicted_growth_mb"], rel=0.03), r["pairing"]
    assert "| ours / planner |" in done.stdout


def test_freed_cpu_memory_goes_back_to_the_system_after_each_step(tiny_components, tmp_path, monkeypatch):
    """glibc keeps freed heap pages (a CPU run's gradients, freed every step, came back 420 MB fatter at full size);
    the loop trims once a step on the CPU. In a fresh process whose heap holds 1 MB blocks (as training's gradients
    do once glibc's mmap threshold has grown), 200 MB freed between kept blocks stay resident until the trim."""
    import ctypes.util
    import subprocess
    import sys

    from conftest import ROOT

    if not sys.platform.startswith("linux") or "libc" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("malloc_trim is glibc's (Linux)")
    code = """
import ctypes, torch
from benchmarks.probe import rss_kb
from trainers.devices import release_freed_host_memory
ctypes.CDLL("libc.so.6").mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks below 64 MB come from the heap
blocks = [torch.ones(1 << 18) for _ in range(400)]  # 1 MB each
before = rss_kb("VmRSS")
del blocks[::2]  # every other one: holes between kept blocks, so the heap's top cannot simply shrink
freed = rss_kb("VmRSS")
release_freed_host_memory()
print(before, freed, rss_kb("VmRSS"))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    before, freed, after = (int(x) for x in out.split())
    assert before - freed < 50 * 1024  # freed, but still resident
    assert freed - after > 150 * 1024  # given back

    from trainers.train import loop

    calls = []
    monkeypatch.setattr(loop, "release_freed_host_memory", lambda: calls.append(1))
    subject_images(tmp_path / "inst")
    train(tiny_config(tmp_path / "small", steps=3), components=fresh(tiny_components))
    assert calls == []  # the tiny model's gradients are a few MB: nothing worth a trim (~1 ms a step)
    monkeypatch.setattr(loop, "TRIM_GRADIENT_BYTES", 1 << 20)
    train(tiny_config(tmp_path / "big", steps=3), components=fresh(tiny_components))
    assert len(calls) == 3  # once a step on the CPU when the gradients are big enough
