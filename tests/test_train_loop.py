"""The training loop on the tiny model: it learns, it trains exactly what it should, it resumes exactly."""

from __future__ import annotations

import pytest
import torch
from train_helpers import changed, class_images, fresh, state, subject_images, tiny_config

from trainers.train import Callbacks, train
from trainers.train.loop import loss_quarters


class Recorder(Callbacks):
    def __init__(self):
        self.progress, self.samples, self.status = [], [], []

    def on_progress(self, info):
        self.progress.append(info)

    def on_sample(self, step, images, prompts):
        self.samples.append((step, images, prompts))

    def on_status(self, text):
        self.status.append(text)


def test_learns_subject_with_prior_in_every_step(tiny_components, tmp_path):
    subject_images(tmp_path / "inst")
    class_images(tmp_path / "cls")
    cfg = tiny_config(
        tmp_path, steps=32, class_data=str(tmp_path / "cls"), prior_preservation=True, sample_every=16, sample_steps=3
    )
    c = fresh(tiny_components)
    unet0, vae0, te0 = state(c.unet), state(c.vae), state(c.text_encoder)
    batches, captions = [], []
    # record training forwards only (sampling runs the modules in eval mode)
    c.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]) if m.training else None)
    c.text_encoder.register_forward_pre_hook(lambda m, args: captions.append(args[0].clone()) if m.training else None)
    rec = Recorder()
    out = train(cfg, components=c, callbacks=rec)

    assert out.state == "finished" and out.steps_done == 32 and out.path.is_file()
    first, last = loss_quarters(out.losses)
    assert last < 0.7 * first, (first, last)
    assert changed(unet0, c.unet) == set(unet0)  # every UNet weight moved
    assert changed(te0, c.text_encoder)  # the text encoder trains by default
    assert changed(vae0, c.vae) == set()  # the VAE never does
    # prior preservation: one subject + one class image in every training forward, class prompt in every batch
    assert batches == [2] * 32
    class_ids = c.tokenizer(["a photo of shape"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert all(ids.shape[0] == 2 and ids[1].equal(class_ids[0]) for ids in captions)
    assert len(captions) == 32
    steps = [p for p in rec.progress if p.phase == "training"]
    assert [p.step for p in steps] == list(range(1, 33))
    assert all(p.loss_instance is not None and p.loss_prior is not None for p in steps)
    assert len(out.losses_prior) == len(out.losses_instance) == 32
    assert all(p.lr == pytest.approx(1e-3) and p.eta is not None for p in steps)
    assert [s[0] for s in rec.samples] == [16] and rec.samples[0][1][0].size == (32, 32)


def test_resume_is_bitwise_exact(tiny_components, tmp_path):
    subject_images(tmp_path / "inst")
    class_images(tmp_path / "cls")
    common = dict(
        steps=10,
        class_data=str(tmp_path / "cls"),
        prior_preservation=True,
        random_flip=True,
        gradient_accumulation=2,
        lr_scheduler="cosine",
        lr_warmup_steps=2,
        snr_gamma=5.0,
        noise_offset=0.05,
        text_encoder_steps=7,
    )
    straight = fresh(tiny_components)
    full = train(tiny_config(tmp_path / "a", **common, instance_data=str(tmp_path / "inst")), components=straight)

    class StopAt5(Recorder):
        def stop(self):
            return any(p.step >= 5 for p in self.progress if p.phase == "training")

    rec = StopAt5()
    cfg_b = tiny_config(tmp_path / "b", **common, instance_data=str(tmp_path / "inst"))
    stopped = train(cfg_b, components=fresh(tiny_components), callbacks=rec, stop=rec.stop)
    assert stopped.state == "stopped" and stopped.steps_done == 5 and stopped.path is None
    assert not (tmp_path / "b" / "out.safetensors").exists()  # no partial model
    assert stopped.state_path is not None and stopped.state_path.name == "step-000005"

    resumed_parts = fresh(tiny_components)
    cfg_c = tiny_config(tmp_path / "b", **common, instance_data=str(tmp_path / "inst"), resume_from="latest")
    resumed = train(cfg_c, components=resumed_parts)
    assert resumed.state == "finished" and resumed.steps_done == 10
    assert resumed.losses == full.losses  # the same 10 losses, the first 5 carried over from the state
    for a, b in ((straight.unet, resumed_parts.unet), (straight.text_encoder, resumed_parts.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("mode", ["off", "stop_after_3"])
def test_text_encoder_modes_change_exactly_the_right_parameters(tiny_components, tmp_path, mode):
    c = fresh(tiny_components)
    unet0, te0, vae0 = state(c.unet), state(c.text_encoder), state(c.vae)
    snapshots = {}

    class Snap(Callbacks):
        def on_progress(self, info):
            if info.phase == "training":
                snapshots[info.step] = state(c.text_encoder)

    opts = {"train_text_encoder": False} if mode == "off" else {"text_encoder_steps": 3}
    train(tiny_config(tmp_path, steps=6, **opts), components=c, callbacks=Snap())
    assert changed(unet0, c.unet) == set(unet0)
    assert changed(vae0, c.vae) == set()
    if mode == "off":
        assert changed(te0, c.text_encoder) == set()
    else:
        # trained for 3 steps (every weight that gets a gradient moved), then frozen: steps 4-6 change nothing
        assert changed(te0, c.text_encoder)
        assert changed(snapshots[3], c.text_encoder) == set()
        assert changed(snapshots[2], c.text_encoder)  # step 3 still trained it


def test_precision_switch_in_one_process_and_checkpoint_rotation(tiny_components, tmp_path):
    """accelerate's process-wide state is reset between runs (ComfyUI and pytest are long-lived processes)."""
    out = train(tiny_config(tmp_path / "a", steps=2, mixed_precision="bf16"), components=fresh(tiny_components))
    assert out.state == "finished"
    cfg = tiny_config(tmp_path / "b", steps=4, checkpoint_every=1, keep_checkpoints=2)
    out = train(cfg, components=fresh(tiny_components))
    states = sorted(p.name for p in (tmp_path / "b" / "out.state").iterdir())
    assert states == ["step-000002", "step-000003"]  # every step but the last, the last two kept
    assert out.state == "finished" and out.path.is_file()


def test_out_of_memory_is_a_clear_message(tiny_components, tmp_path, monkeypatch):
    from trainers.train.loop import OutOfMemory, Trainer

    def boom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "one_step", boom)
    with pytest.raises(OutOfMemory) as e:
        train(tiny_config(tmp_path, steps=3), components=fresh(tiny_components))
    for words in ("out of memory", "batch_size", "gradient_checkpointing", "adamw8bit", "train_text_encoder"):
        assert words in str(e.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_save_diffusers_writes_a_loadable_folder_of_the_trained_weights(tiny_components, tmp_path):
    """DreamBooth's ``save_diffusers`` also writes a diffusers folder beside the file, holding the trained model."""
    from diffusers import StableDiffusionPipeline

    comps = fresh(tiny_components)
    outcome = train(tiny_config(tmp_path, steps=2, save_diffusers=True), components=comps)
    folder = outcome.path.with_suffix("")
    assert folder.is_dir() and not list(tmp_path.glob(".out.*"))  # built aside, renamed into place
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    for name in ("unet", "text_encoder", "vae"):
        saved, trained = getattr(pipe, name).state_dict(), getattr(comps, name).state_dict()
        assert saved.keys() == trained.keys()
        assert all(saved[k].dtype == torch.float32 and saved[k].equal(trained[k]) for k in saved), name
    assert pipe.tokenizer("a photo of sks shape").input_ids == comps.tokenizer("a photo of sks shape").input_ids


def test_vae_and_frozen_text_encoder_leave_the_device_after_caching(tiny_components, tmp_path):
    """After the caches are built the VAE (and the frozen text encoder) are moved off the training device; they come
    back for samples only. On a CPU machine both are the CPU, so the moves are recorded where they happen."""
    c = fresh(tiny_components)
    moves: list[tuple[str, str, str]] = []
    phase = {"now": "setup"}

    def recording(name, module):
        original = module.to

        def to(*args, **kwargs):
            moves.append((phase["now"], name, str(args[0] if args else kwargs.get("device"))))
            return original(*args, **kwargs)

        module.to = to

    recording("vae", c.vae)
    recording("text_encoder", c.text_encoder)
    vae_calls: list[tuple[str, str]] = []
    for op in ("encode", "decode"):
        original = getattr(c.vae, op)
        setattr(c.vae, op, lambda *a, _op=op, _f=original, **k: (vae_calls.append((phase["now"], _op)), _f(*a, **k))[1])

    class Phases(Callbacks):
        def on_progress(self, info):
            phase["now"] = info.phase

    cfg = tiny_config(tmp_path, steps=4, train_text_encoder=False, sample_every=2, sample_steps=2)
    out = train(cfg, components=c, callbacks=Phases())
    assert out.state == "finished"
    training = [m for m in moves if m[0] in ("caching", "training")]
    assert ("caching", "vae", "cpu") in training and ("caching", "text_encoder", "cpu") in training
    # the VAE encodes while caching and decodes samples only: never during a training step
    assert {p for p, _ in vae_calls} <= {"setup", "caching", "sampling"}
    assert ("caching", "encode") in vae_calls and ("sampling", "decode") in vae_calls
    # samples bring both back to the training device and send them off again
    sampling = [m[1:] for m in moves if m[0] == "sampling"]
    assert sampling.count(("vae", "cpu")) >= 2 and sampling.count(("text_encoder", "cpu")) >= 2


def test_a_state_of_another_format_version_is_refused(tiny_components, tmp_path):
    import json

    from trainers.errors import ConfigError

    class StopAt2(Callbacks):
        def __init__(self):
            self.steps = 0

        def on_progress(self, info):
            if info.phase == "training":
                self.steps = info.step

    rec = StopAt2()
    cfg = tiny_config(tmp_path, steps=6)
    stopped = train(cfg, components=fresh(tiny_components), callbacks=rec, stop=lambda: rec.steps >= 2)
    state = stopped.state_path
    info = json.loads((state / "state.json").read_text())
    info["version"] = 99
    (state / "state.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError) as e:
        train(tiny_config(tmp_path, steps=6, resume_from="latest"), components=fresh(tiny_components))
    message = str(e.value)
    assert str(state) in message and "format version 99" in message and "reads version 1" in message
