"""LoRA: adapters, the kohya/A1111 file (keys, alpha, metadata, hashes), the LoRA strategy in the shared loop.

One short training run (module fixture) on the tiny model feeds most checks: base weights unchanged, the file
read back, diffusers ``load_lora_weights`` reproducing the trained model, exact resume.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from trainers.configspec import from_dict  # noqa: E402
from trainers.errors import CheckpointError, ConfigError  # noqa: E402
from trainers.lora import adapters as A  # noqa: E402
from trainers.lora import kohya as K  # noqa: E402
from trainers.lora.config import LoRAConfig  # noqa: E402

RANK, ALPHA = 4, 2.0  # alpha != rank on purpose: every check below also checks the alpha/rank scale


def _images(folder: Path, n: int, seed: int, size: int = 40) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora-data")
    inst = _images(root / "instance", 3, 0)
    (inst / "img0.txt").write_text("a photo of sks shape, red, square")
    _images(root / "class", 2, 1)
    return root


def _config(data: Path, out: Path, **kw) -> LoRAConfig:
    opts = dict(
        base_model="",
        instance_data=str(data / "instance"),
        instance_prompt="a photo of sks shape",
        class_data=str(data / "class"),
        class_prompt="a photo of shape",
        prior_preservation=True,
        output=str(out),
        steps=4,
        resolution=32,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        lora_layers="all",
        train_text_encoder=True,
        learning_rate=1e-2,
        text_encoder_lr=1e-2,
        sample_prompts=[],
        gradient_checkpointing=False,
        device="cpu",
        optimizer="adamw",
        save_dtype="fp32",
        save_diffusers=True,
        training_comment="test run",
    )
    opts.update(kw)
    return from_dict(LoRAConfig, opts)


def _fresh():
    from trainers.tiny import tiny_components

    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 4-step LoRA run (UNet all layers + text encoder, rank 4, alpha 2, prior preservation) on a fresh tiny model."""
    from trainers.train import train

    out = tmp_path_factory.mktemp("lora-out") / "subject.safetensors"
    cfg = _config(data, out)
    c = _fresh()
    outcome = train(cfg, components=c)
    assert outcome.state == "finished" and outcome.path == out
    return cfg, c, outcome


def _probe(c, seed: int = 0, grad: bool = False):
    """UNet output and text-encoder hidden states on fixed inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ids = c.tokenizer(["a photo of sks shape", "a shape"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.set_grad_enabled(grad):
        hidden = c.text_encoder(ids.input_ids)[0]
        y = c.unet(x, torch.tensor([10, 500]), hidden).sample
    return y, hidden


# ---------------------------------------------------------------------------------------------------------------
# adapters and the file format (no training)


def test_layer_sets_pick_the_named_projections():
    c = _fresh()
    att = A.unet_target_names(c.unet, "attention")
    ff = A.unet_target_names(c.unet, "attention_ff")
    full = A.unet_target_names(c.unet, "all")
    assert att and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in att)
    assert len(att) % 8 == 0  # attn1 + attn2, four projections each
    assert set(att) < set(ff) < set(full)
    assert any(n.endswith("ff.net.0.proj") for n in ff) and any(n.endswith("proj_in") for n in ff)
    assert any(n.endswith("resnets.0.conv1") for n in full) and any("downsamplers" in n for n in full)
    te = A.text_encoder_target_names(c.text_encoder, "attention")
    assert len(te) == 4 * c.text_encoder.config.num_hidden_layers
    assert len(A.text_encoder_target_names(c.text_encoder, "all")) == 6 * c.text_encoder.config.num_hidden_layers


def _random_lora(c, layers="all", rank=RANK, alpha=ALPHA, seed=0):
    torch.manual_seed(seed)
    A.add_adapters(c.unet, A.unet_target_names(c.unet, layers), rank=rank, alpha=alpha)
    A.add_adapters(c.text_encoder, A.text_encoder_target_names(c.text_encoder, layers), rank=rank, alpha=alpha)
    for p in A.lora_parameters(c.unet) + A.lora_parameters(c.text_encoder):
        torch.nn.init.normal_(p, std=0.1)
    return A.get_weights(c.unet), A.get_weights(c.text_encoder)


def test_kohya_keys_shapes_alpha_and_dtype(tmp_path):
    c = _fresh()
    unet, te = _random_lora(c)
    path = K.save_kohya(tmp_path / "x.safetensors", unet, te)  # default fp16
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())  # noqa: SIM118
        t = {k: f.get_tensor(k) for k in keys}
    assert len(keys) == 3 * (len(unet) + len(te))
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {q + ".lora_down.weight", q + ".lora_up.weight", q + ".alpha"} <= keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2.alpha" in keys
    assert not any(k.startswith(("lora_te1_", "unet.", "text_encoder.")) for k in keys)
    assert t[q + ".lora_down.weight"].dtype == torch.float16
    assert t[q + ".alpha"].item() == ALPHA  # the real alpha, not the rank
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert t[conv + ".lora_down.weight"].shape == (RANK, 32, 3, 3)  # the layer's kernel
    assert t[conv + ".lora_up.weight"].shape == (32, RANK, 1, 1)  # 1x1
    # read back: names resolve onto the modules, values equal (within fp16)
    f = K.read_kohya(path)
    u2, te2 = K.resolve(f, _fresh().unet, _fresh().text_encoder)
    assert set(u2) == set(unet) and set(te2) == set(te)
    for name, w in unet.items():
        assert u2[name].alpha == ALPHA
        torch.testing.assert_close(u2[name].down.float(), w.down, atol=1e-3, rtol=1e-3)


def test_kohya_hash_and_metadata_header(tmp_path):
    c = _fresh()
    unet, te = _random_lora(c, "attention")
    facts = K.TrainingFacts(
        rank=RANK, alpha=ALPHA, output_name="me", base_model_name="base.safetensors", steps=7, resolution=512,
        tag_frequency=K.tag_frequency({"10_me": ["me, smiling", "me"]}), training_comment="hello",
    )  # fmt: skip
    path = K.save_kohya(tmp_path / "m.safetensors", unet, te, metadata=K.training_metadata(facts))
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])["__metadata__"]
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "2.0"
    assert header["ss_network_module"] == "networks.lora" and header["ss_base_model_version"] == "sd_v1"
    assert header["ss_steps"] == "7" and header["ss_resolution"] == "(512, 512)"
    assert json.loads(header["ss_tag_frequency"]) == {"10_me": {"me": 2, "smiling": 1}}
    assert header["ss_training_comment"] == "hello" and header["ss_output_name"] == "me"
    # A1111 identifies a LoRA by sha256 of the data after the header: precomputed value must match the file.
    import hashlib

    assert header["sshs_model_hash"] == hashlib.sha256(blob[8 + n :]).hexdigest()


def test_alpha_scales_the_update(tmp_path):
    """Same matrices, alpha doubled -> the merged weight change doubles (strength = alpha/rank)."""
    c = _fresh()
    unet, _ = _random_lora(c, "attention")
    doubled = {k: A.LoraWeights(w.down, w.up, w.alpha * 2) for k, w in unet.items()}
    K.save_kohya(tmp_path / "a.safetensors", unet, dtype="fp32")
    K.save_kohya(tmp_path / "b.safetensors", doubled, dtype="fp32")
    deltas = []
    for name in ("a", "b"):
        model = _fresh().unet
        before = {k: v.clone() for k, v in model.state_dict().items()}
        u, _ = K.resolve(K.read_kohya(tmp_path / f"{name}.safetensors"), model)
        A.merge_into(model, u)
        deltas.append({k: v - before[k] for k, v in model.state_dict().items()})
    changed = [k for k, v in deltas[0].items() if v.abs().max() > 0]
    assert len(changed) == len(unet)
    for k in changed:
        torch.testing.assert_close(deltas[1][k], 2 * deltas[0][k], atol=1e-6, rtol=1e-5)
    # and the size of the change is alpha/rank * up@down
    some = next(iter(unet))
    want = (unet[some].up @ unet[some].down) * ALPHA / RANK
    torch.testing.assert_close(deltas[0][some + ".weight"], want, atol=1e-6, rtol=1e-5)


def test_reader_refuses_foreign_keys(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(CheckpointError, match="not kohya LoRA format"):
        K.read_kohya(bad)
    odd = tmp_path / "odd.safetensors"
    save_file({"lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(4, 2)}, str(odd))  # fmt: skip
    with pytest.raises(CheckpointError, match="match no model layer"):
        K.resolve(K.read_kohya(odd), _fresh().unet)
    with pytest.raises(CheckpointError, match="does not exist"):
        K.read_kohya(tmp_path / "missing.safetensors")


def test_file_size_on_real_sd15_shapes_rank4():
    """Rank 4 on the real SD1.5 UNet/CLIP-L (built on the meta device): a few MB, serialized with its header."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainers.model_io.model_configs import bundled_config

    tcfg = {k: v for k, v in bundled_config("text_encoder").items() if k not in ("architectures", "model_type")}
    sizes = {}
    for layers in ("attention", "attention_ff"):
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(bundled_config("unet"))
            te = CLIPTextModel(CLIPTextConfig(**tcfg))
        nu = A.add_adapters(unet, A.unet_target_names(unet, layers), rank=4, alpha=4)
        nt = A.add_adapters(te, A.text_encoder_target_names(te, layers), rank=4, alpha=4)
        assert (
            nu == {"attention": 128, "attention_ff": 192}[layers]
            and nt == {"attention": 48, "attention_ff": 72}[layers]
        )
        shapes = {}
        for prefix, model in ((K.UNET_PREFIX, unet), (K.TE_PREFIX, te)):
            for name, m in A.lora_modules(model).items():
                key = K.kohya_name(prefix, name)
                shapes[key + ".lora_down.weight"] = tuple(m.lora_A["default"].weight.shape)
                shapes[key + ".lora_up.weight"] = tuple(m.lora_B["default"].weight.shape)
        tensors = {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}
        tensors.update(
            {k.replace(".lora_down.weight", ".alpha"): torch.tensor(4.0) for k in shapes if k.endswith("_down.weight")}
        )
        assert len(tensors) == 3 * (nu + nt)
        sizes[layers] = len(save(tensors)) / 1e6
    print("rank-4 SD1.5 LoRA file sizes (MB):", sizes)
    # attention-only UNet + text encoder: 1.09 M parameters -> 2.18 MB of fp16 + header
    assert 2.1 < sizes["attention"] < 2.4, sizes
    # kohya's usual set (+ ff, proj_in/out, text MLP): 2.36 M parameters -> 4.72 MB + header
    assert 4.6 < sizes["attention_ff"] < 5.0, sizes


# ---------------------------------------------------------------------------------------------------------------
# the strategy in the shared loop


def test_config_rejects_bad_lora_options(data, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(ConfigError, match="lora_rank"):
        _config(data, out, lora_rank=0)
    with pytest.raises(ConfigError, match="lora_alpha"):
        _config(data, out, lora_alpha=0)
    with pytest.raises(ConfigError, match="lora_layers"):
        _config(data, out, lora_layers="everything")
    with pytest.raises(ConfigError, match="lora_dropout"):
        _config(data, out, lora_dropout=1.5)
    assert LoRAConfig().learning_rate == 1e-4  # the LoRA default, not DreamBooth's


def test_bad_data_fails_before_any_model_is_touched(data, tmp_path):
    from trainers.errors import DatasetError
    from trainers.train import train

    class Exploding:
        def __getattr__(self, name):
            raise AssertionError(f"model touched ({name}) before the inputs were checked")

    cfg = _config(data, tmp_path / "x.safetensors", instance_data=str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="does not exist"):
        train(cfg, components=Exploding())
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"x")
    with pytest.raises(ConfigError, match="already exists"):
        train(_config(data, existing), components=Exploding())
    assert existing.read_bytes() == b"x"


def test_only_adapters_get_gradients(data, tmp_path):
    from trainers.devices import placement
    from trainers.lora.strategy import LoRATrain
    from trainers.train.plan import plan
    from trainers.train.strategy import RunContext

    c = _fresh()
    s = LoRATrain()
    cfg = _config(data, tmp_path / "x.safetensors")
    ctx = RunContext(torch.device("cpu"), placement("cpu", "fp32"), "adamw", plan(cfg), 0.0)
    groups = s.prepare(c, cfg, ctx)
    trainable = {id(p) for g in groups for p in g["params"]}
    named = list(c.unet.named_parameters()) + list(c.text_encoder.named_parameters())
    assert trainable == {id(p) for n, p in named if p.requires_grad}
    assert all(".lora_A." in n or ".lora_B." in n for n, p in named if p.requires_grad)
    assert not any(p.requires_grad for p in c.vae.parameters())
    y, hidden = _probe(c, grad=True)
    (y.square().mean() + hidden.square().mean()).backward()
    with_grad = [n for n, p in named if p.grad is not None]
    assert with_grad and all(".lora_A." in n or ".lora_B." in n for n in with_grad)
    assert all(p.dtype == torch.float32 for g in groups for p in g["params"])


def test_base_weights_bitwise_unchanged(trained):
    _, c, outcome = trained
    fresh = _fresh()
    for model, ref in ((c.unet, fresh.unet), (c.text_encoder, fresh.text_encoder), (c.vae, fresh.vae)):
        ref_sd = ref.state_dict()
        seen = 0
        for k, v in model.state_dict().items():
            if ".lora_" in k:
                continue
            key = k.replace(".base_layer.", ".")
            assert torch.equal(v, ref_sd[key]), k
            seen += 1
        assert seen == len(ref_sd)
    assert outcome.losses and all(loss == loss for loss in outcome.losses)


def test_saved_file_and_metadata(trained):
    cfg, c, outcome = trained
    f = K.read_kohya(outcome.path)
    unet, te = K.resolve(f, _fresh().unet, _fresh().text_encoder)
    assert set(unet) == set(A.unet_target_names(_fresh().unet, "all"))
    assert set(te) == set(A.text_encoder_target_names(_fresh().text_encoder, "all"))
    trained_w = A.get_weights(c.unet)
    for name, w in unet.items():
        assert w.alpha == ALPHA and w.rank == RANK
        assert torch.equal(w.down, trained_w[name].down) and torch.equal(w.up, trained_w[name].up)  # fp32 file
    assert any(w.up.abs().max() > 0 for w in unet.values())  # it trained
    md = f.metadata
    assert md["ss_steps"] == "4" and md["ss_network_alpha"] == "2.0" and md["ss_network_dim"] == "4"
    assert md["ss_output_name"] == "subject" and md["ss_training_comment"] == "test run"
    assert md["ss_num_train_images"] == "3" and md["ss_num_reg_images"] == "2"
    tags = json.loads(md["ss_tag_frequency"])["instance"]
    assert tags == {"a photo of sks shape": 3, "red": 1, "square": 1}
    assert md["likeness.kind"] == "lora" and json.loads(md["likeness.config"])["lora_rank"] == RANK
    assert json.loads(md["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}


def _pipeline(c):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.noise_scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def test_diffusers_load_lora_weights_reproduces_trained_model(trained, tmp_path):
    """diffusers' own kohya loader on a fresh base gives the trained model's UNet/TE outputs (alpha != rank)."""
    cfg, c, outcome = trained
    y_trained, h_trained = _probe(c)
    base = _fresh()
    y_base, _ = _probe(base)
    assert (y_trained - y_base).abs().max() > 1e-3  # the LoRA changes the output
    pipe = _pipeline(base)
    pipe.load_lora_weights(str(outcome.path))  # fp32 kohya file
    y, h = _probe(base)
    torch.testing.assert_close(h, h_trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_trained, atol=1e-5, rtol=1e-5)
    # the same weights saved in fp16 (the default): within fp16 rounding of the adapter matrices
    unet_w, te_w = A.get_weights(c.unet), A.get_weights(c.text_encoder)
    half = K.save_kohya(tmp_path / "half.safetensors", unet_w, te_w, dtype="fp16")
    base16 = _fresh()
    _pipeline(base16).load_lora_weights(str(half))
    y16, _ = _probe(base16)
    assert (y16 - y_trained).abs().max() < 1e-3 * max(1.0, float(y_trained.abs().max()))
    # the optional diffusers/peft file loads too
    from trainers.lora.strategy import diffusers_path

    dpath = diffusers_path(outcome.path)
    assert dpath.is_file()
    based = _fresh()
    _pipeline(based).load_lora_weights(str(dpath))
    yd, hd = _probe(based)
    torch.testing.assert_close(yd, y_trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hd, h_trained, atol=1e-5, rtol=1e-5)


def test_peft_reload_with_our_reader_is_exact(trained):
    _, c, outcome = trained
    base = _fresh()
    unet, te = K.resolve(K.read_kohya(outcome.path), base.unet, base.text_encoder)
    A.add_adapters_from(base.unet, unet)
    A.add_adapters_from(base.text_encoder, te)
    y, h = _probe(base)
    y_trained, h_trained = _probe(c)
    assert torch.equal(h, h_trained) and torch.equal(y, y_trained)


def test_stop_then_resume_matches_uninterrupted(trained, data, tmp_path):
    """Stop after 2 steps (state saved), resume to 4: adapter weights bitwise equal to the uninterrupted run."""
    from trainers.train import Callbacks, train

    _, c_full, _ = trained
    out = tmp_path / "r.safetensors"
    steps = []

    class Count(Callbacks):
        def on_progress(self, info):
            if info.phase == "training":
                steps.append(info.step)

    first = train(_config(data, out, save_diffusers=False), components=_fresh(), callbacks=Count(),
                  stop=lambda: len(steps) >= 2)  # fmt: skip
    assert first.state == "stopped" and first.steps_done == 2 and first.path is None and not out.exists()
    assert first.state_path is not None and (first.state_path / "trainable.safetensors").is_file()
    second = train(_config(data, out, save_diffusers=False, resume_from="latest"), components=_fresh())
    assert second.state == "finished" and second.steps_done == 4
    got = K.read_kohya(out).layers
    want = {K.kohya_name(K.UNET_PREFIX, n): w for n, w in A.get_weights(c_full.unet).items()}
    want.update({K.kohya_name(K.TE_PREFIX, n): w for n, w in A.get_weights(c_full.text_encoder).items()})
    assert set(got) == set(want)
    for k, w in want.items():
        assert torch.equal(got[k].down, w.down) and torch.equal(got[k].up, w.up), k
    # a state of other LoRA options is refused before training
    with pytest.raises(ConfigError, match="other options"):
        train(_config(data, tmp_path / "r2.safetensors", lora_rank=8, resume_from=str(first.state_path)),
              components=_fresh())  # fmt: skip


def test_cli_trains_a_lora_from_a_config_file(data, tmp_path, tiny_checkpoint):
    """``python -m trainers lora --config file.toml``: a kohya LoRA with the base model's hashes in its header."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from trainers.tiny import tiny_tokenizer

    tok = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(str(tok))
    out = tmp_path / "cli.safetensors"
    cfg = tmp_path / "lora.toml"
    cfg.write_text(
        "\n".join([
            f'base_model = "{tiny_checkpoint}"',
            f'tokenizer = "{tok}"',
            f'instance_data = "{data / "instance"}"',
            'instance_prompt = "a photo of sks shape"',
            "prior_preservation = false",
            "steps = 2",
            "resolution = 32",
            "lora_rank = 2",
            "lora_alpha = 1.0",
            "sample_prompts = []",
            "gradient_checkpointing = false",
            'device = "cpu"',
        ])
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, "-m", "trainers", "lora", "--config", str(cfg), f"output={out}", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    f = K.read_kohya(out)
    assert f.metadata["ss_network_dim"] == "2" and f.metadata["ss_network_alpha"] == "1.0"
    legacy, full = K.base_model_hashes(tiny_checkpoint)
    assert f.metadata["ss_sd_model_hash"] == legacy and f.metadata["ss_new_sd_model_hash"] == full
    assert f.metadata["ss_sd_model_name"] == Path(tiny_checkpoint).name
    assert all(w.down.dtype == torch.float16 for w in f.layers.values())  # fp16 by default
    # bad options are refused with the option named, before training
    bad = subprocess.run(
        [sys.executable, "-m", "trainers", "lora", "--config", str(cfg), f"output={tmp_path / 'b.safetensors'}",
         "lora_layers=everything"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "lora_layers" in bad.stderr
