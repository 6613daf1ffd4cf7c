"""LoRA variants (LoHa, LoKr, DoRA) and continuing a LoRA: the LyCORIS/kohya keys, our reader round trip, the update
maths loaders apply, training + exact resume for every type, the option checks, and continuing a file (ours for
0 steps reproduces it; a kohya-format one in LDM layer names trains and saves; the content key follows its bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from trainers.configspec import from_dict  # noqa: E402
from trainers.errors import CheckpointError, ConfigError  # noqa: E402
from trainers.lora import adapters as A  # noqa: E402
from trainers.lora import kohya as K  # noqa: E402
from trainers.lora.config import LoRAConfig  # noqa: E402
from trainers.lora.weights import LohaWeights, LokrWeights, LoraWeights  # noqa: E402

RANK, ALPHA = 4, 2.0
# (lora_type, dora, rank): rank 2 gives the tiny model's LoKr layers a low-rank w2, rank 4 full ones
TYPES = {"dora": ("lora", True, RANK), "loha": ("loha", False, RANK), "lokr": ("lokr", False, 2)}


def _fresh():
    from trainers.tiny import tiny_components

    return tiny_components(seed=0)


def _probe(c):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ids = c.tokenizer(["a photo of sks shape", "a shape"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        hidden = c.text_encoder(ids.input_ids)[0]
        return c.unet(x, torch.tensor([10, 500]), hidden).sample, hidden


def _random(c, kind: str, dora: bool, rank: int, layers: str = "all", factor: int = -1):
    """Adapters of one type on every ``layers`` layer of a tiny model, with random (non-zero) weights."""
    shape = dict(rank=rank, alpha=ALPHA, kind=kind, dora=dora, lokr_factor=factor)
    A.add_adapters(c.unet, A.unet_target_names(c.unet, layers), **shape)
    A.add_adapters(c.text_encoder, A.text_encoder_target_names(c.text_encoder, layers), **shape)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in A.lora_parameters(c.unet) + A.lora_parameters(c.text_encoder):
            p += torch.randn_like(p) * 0.1
    return A.get_weights(c.unet), A.get_weights(c.text_encoder)


def _tensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# ---------------------------------------------------------------------------------------------------------------
# file format and maths (no training)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_variant_files_round_trip_through_our_reader(name, tmp_path):
    """Keys and shapes as LyCORIS writes them, the real alpha, equal tensors back, and a model rebuilt from the file
    that gives bitwise the outputs of the one that wrote it."""
    kind, dora, rank = TYPES[name]
    c = _fresh()
    unet, te = _random(c, kind, dora, rank)
    path = K.save_kohya(tmp_path / f"{name}.safetensors", unet, te, dtype="fp32")
    t = _tensors(path)
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # a 32x32 linear layer
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"  # a 32x32x3x3 convolution
    if name == "dora":
        assert t[q + ".dora_scale"].shape == (32, 1) and t[conv + ".dora_scale"].shape == (32, 1, 1, 1)
        assert t[q + ".lora_down.weight"].shape == (rank, 32) and t[q + ".alpha"].item() == ALPHA
    elif name == "loha":
        assert {s: t[f"{q}.{s}"].shape for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")} == {
            "hada_w1_a": (32, rank),
            "hada_w1_b": (rank, 32),
            "hada_w2_a": (32, rank),
            "hada_w2_b": (rank, 32),
        }
        assert t[conv + ".hada_w1_b"].shape == (rank, 32 * 9)  # flattened kernel: no CP/Tucker
        assert t[q + ".alpha"].item() == ALPHA
    else:  # 32 = 4 x 8; rank 2 < 8 / 2: w2 is low rank, alpha as given
        assert t[q + ".lokr_w1"].shape == (4, 4) and t[q + ".lokr_w2_a"].shape == (8, rank)
        assert t[q + ".lokr_w2_b"].shape == (rank, 8) and t[q + ".alpha"].item() == ALPHA
        assert t[conv + ".lokr_w2_b"].shape == (rank, 8 * 9)
    assert not any(".hada_t" in k or ".lokr_t2" in k or ".lora_mid" in k for k in t)
    f = K.read_kohya(path)
    assert f.kinds == {name} and len(f.layers) == len(unet) + len(te)
    for key, w in f.layers.items():
        for suffix, value in w.file_tensors().items():
            assert torch.equal(value, t[f"{key}.{suffix}"]), (key, suffix)
    base = _fresh()
    u2, te2 = K.resolve(f, base.unet, base.text_encoder)
    A.add_adapters_from(base.unet, u2)
    A.add_adapters_from(base.text_encoder, te2)
    for mine, theirs in zip(_probe(c), _probe(base), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_the_update_a_loader_applies_gives_the_trained_outputs(name):
    """Merging each layer's update into a plain model (what ComfyUI/A1111 do with the file) equals peft's forward."""
    kind, dora, rank = TYPES[name]
    c = _fresh()
    unet, te = _random(c, kind, dora, rank)
    merged = _fresh()
    A.merge_into(merged.unet, unet)
    A.merge_into(merged.text_encoder, te)
    for mine, theirs in zip(_probe(c), _probe(merged), strict=True):
        torch.testing.assert_close(theirs, mine, atol=2e-5, rtol=1e-4)
    assert (_probe(merged)[0] - _probe(_fresh())[0]).abs().max() > 1e-3  # the adapters do change the model


def test_lokr_layers_without_a_rank_get_alpha_equal_to_rank(tmp_path):
    """Both LoKr factors full (rank 4 >= 8 / 2 on 32 = 4 x 8): no rank, scale 1 in every loader; peft's scale is
    alpha / rank, so the layer is made with alpha = rank (as LyCORIS does) and the file says so."""
    c = _fresh()
    unet, _ = _random(c, "lokr", False, 4, layers="attention")
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert unet[q].w2 is not None and unet[q].alpha == 4.0 and unet[q].scale == 1.0
    layer = A.lora_modules(c.unet)[q]
    assert layer.scaling["default"] == 1.0
    torch.testing.assert_close(layer.get_delta_weight("default"), unet[q].delta(shape=(32, 32)))
    # a factor of 2 splits 32 into 2 x 16: the rank-4 w2 is low rank again
    c2 = _fresh()
    unet2, _ = _random(c2, "lokr", False, 4, layers="attention", factor=2)
    assert unet2[q].w1.shape == (2, 2) and unet2[q].w2_b.shape == (4, 16) and unet2[q].alpha == ALPHA


def test_reader_refuses_what_it_cannot_train(tmp_path):
    from safetensors.torch import save_file

    cp = tmp_path / "cp.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(4, 2), "lora_unet_x.hada_t1": torch.zeros(2, 2, 3, 3)}, str(cp))
    with pytest.raises(CheckpointError, match="CP/Tucker"):
        K.read_kohya(cp)
    mixed = tmp_path / "mixed.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(4, 2), "lora_unet_x.lora_down.weight": torch.zeros(2, 4)},
              str(mixed))  # fmt: skip
    with pytest.raises(CheckpointError, match="a mix of"):
        K.read_kohya(mixed)
    half = tmp_path / "half.safetensors"
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(4, 2), "lora_unet_x.hada_w1_b": torch.zeros(2, 4)}, str(half))
    with pytest.raises(CheckpointError, match="lacks its hada_w2_a"):
        K.read_kohya(half)


def test_diffusers_file_of_a_unet_dora_loads_in_diffusers(tmp_path):
    """save_diffusers for DoRA (UNet only, as the config allows): diffusers' load_lora_weights reproduces peft."""
    from diffusers import StableDiffusionPipeline

    c = _fresh()
    A.add_adapters(c.unet, A.unet_target_names(c.unet, "all"), rank=RANK, alpha=ALPHA, dora=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in A.lora_parameters(c.unet):
            p += torch.randn_like(p) * 0.1
    path = K.save_diffusers(tmp_path / "d.safetensors", A.get_weights(c.unet), {}, dtype="fp32")
    base = _fresh()
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=base.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.load_lora_weights(str(path))
    torch.testing.assert_close(_probe(base)[0], _probe(c)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="LoHa or LoKr"):
        K.save_diffusers(tmp_path / "h.safetensors", {"x": LohaWeights(*[torch.zeros(2, 2)] * 4, alpha=1.0)})


# ---------------------------------------------------------------------------------------------------------------
# options


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from train_helpers import class_images, subject_images

    root = tmp_path_factory.mktemp("variants-data")
    subject_images(root / "instance", n=3)
    class_images(root / "class", n=2)
    return root


def _config(data: Path, out: Path, **kw) -> LoRAConfig:
    opts = dict(
        base_model="", instance_data=str(data / "instance"), instance_prompt="a photo of sks shape",
        class_data=str(data / "class"), class_prompt="a photo of shape", prior_preservation=True, output=str(out),
        steps=4, resolution=32, lora_rank=RANK, lora_alpha=ALPHA, lora_layers="all", train_text_encoder=True,
        learning_rate=1e-2, text_encoder_lr=1e-2, sample_prompts=[], sample_at_end=False,
        gradient_checkpointing=False, device="cpu", optimizer="adamw", save_dtype="fp32",
    )  # fmt: skip
    opts.update(kw)
    return from_dict(LoRAConfig, opts)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"lora_type": "loha", "dora": True}, "dora"),
        ({"lora_type": "lokr", "lora_dropout": 0.1}, "lora_dropout"),
        ({"lora_type": "loha", "save_diffusers": True}, "save_diffusers"),
        ({"dora": True, "save_diffusers": True}, "DoRA text-encoder"),
        ({"lora_type": "lokr", "lokr_factor": 1}, "lokr_factor"),
        ({"continue_from": "old.ckpt"}, "continue_from"),
        ({"lora_type": "lycoris"}, "lora_type"),
    ],
)
def test_config_refuses_combinations_that_would_not_load(data, tmp_path, options, words):
    with pytest.raises(ConfigError, match=words):
        _config(data, tmp_path / "x.safetensors", **options)
    _config(data, tmp_path / "x.safetensors", dora=True, save_diffusers=True, train_text_encoder=False)  # fine


def test_cli_has_a_flag_for_every_new_option():
    import argparse

    from trainers.configspec import add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser, LoRAConfig)
    args = parser.parse_args(["--lora-type", "lokr", "--lokr-factor", "4", "--no-dora", "--continue-from",
                              "x.safetensors", "instance_data=.", "prior_preservation=false", "output=o.safetensors"])  # fmt: skip
    cfg = from_args(LoRAConfig, args)
    assert (cfg.lora_type, cfg.lokr_factor, cfg.dora, cfg.continue_from) == ("lokr", 4, False, "x.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# training every type in the shared loop


def _train(cfg, stop=None):
    from trainers.train import Callbacks, train

    steps: list[int] = []

    class Count(Callbacks):
        def on_progress(self, info):
            if info.phase == "training":
                steps.append(info.step)

    return train(cfg, components=_fresh(), callbacks=Count(), stop=(lambda: stop(steps)) if stop else None)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 4-step run of each type (UNet all layers + text encoder, prior preservation) on a fresh tiny model."""
    out = {}
    for name, (kind, dora, rank) in TYPES.items():
        path = tmp_path_factory.mktemp(f"variant-{name}") / f"{name}.safetensors"
        cfg = _config(data, path, lora_type=kind, dora=dora, lora_rank=rank)
        outcome = _train(cfg)
        assert outcome.state == "finished" and outcome.path == path
        out[name] = (cfg, outcome)
    return out


@pytest.mark.parametrize("name", sorted(TYPES))
def test_each_type_trains_and_saves_its_lycoris_file(trained, name):
    cfg, outcome = trained[name]
    f = K.read_kohya(outcome.path)
    assert f.kinds == {name}
    c = _fresh()
    assert len(f.unet_layers) == len(A.unet_target_names(c.unet, "all"))
    assert len(f.text_encoder_layers) == len(A.text_encoder_target_names(c.text_encoder, "all"))
    # every type starts with a zero update (LoRA/DoRA: up = 0; LoHa: w2_b = 0; LoKr: w1 = 0)
    assert any(w.delta().abs().max() > 0 for w in f.layers.values()), "training changed no layer"
    md = f.metadata
    args = json.loads(md["ss_network_args"])
    assert md["ss_network_module"] == "lycoris.kohya" and args["algo"] == TYPES[name][0]
    assert md["ss_network_dim"] == str(TYPES[name][2]) and md["ss_network_alpha"] == str(ALPHA)
    assert json.loads(md["likeness.config"])["lora_type"] == TYPES[name][0]
    if name == "dora":
        assert args["dora_wd"] == "True" and args["wd_on_output"] == "True"
        scales = [w.dora_scale for w in f.layers.values()]
        assert all(s is not None for s in scales)
    if name == "lokr":
        assert args["factor"] == "-1"


@pytest.mark.parametrize("name", sorted(TYPES))
def test_stop_then_resume_matches_uninterrupted_for_every_type(trained, data, tmp_path, name):
    cfg_full, full = trained[name]
    kind, dora, rank = TYPES[name]
    out = tmp_path / "r.safetensors"
    cfg = _config(data, out, lora_type=kind, dora=dora, lora_rank=rank)
    first = _train(cfg, stop=lambda steps: len(steps) >= 2)
    assert first.state == "stopped" and first.steps_done == 2 and not out.exists()
    second = _train(_config(data, out, lora_type=kind, dora=dora, lora_rank=rank, resume_from="latest"))
    assert second.state == "finished" and second.steps_done == 4
    got, want = _tensors(out), _tensors(full.path)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


# ---------------------------------------------------------------------------------------------------------------
# continuing a LoRA


def _continue_ctx(cfg):
    from trainers.devices import placement
    from trainers.train.plan import plan
    from trainers.train.strategy import RunContext

    return RunContext(torch.device("cpu"), placement("cpu", "fp32"), "adamw", plan(cfg), 0.0)


@pytest.mark.parametrize("name", ["lora", *sorted(TYPES)])
def test_continuing_our_lora_for_zero_steps_reproduces_it(trained, data, tmp_path, name):
    """prepare from the file, then save at once: every tensor of the new file equals the old one (fp16, the
    default save type, and fp32); options that the file decides (type, rank, alpha, layers) are ignored."""
    from trainers.lora.strategy import LoRATrain

    if name == "lora":
        c = _fresh()
        unet, te = _random(c, "lora", False, RANK)
        source = K.save_kohya(tmp_path / "plain.safetensors", unet, te, dtype="fp16")
    else:
        source = trained[name][1].path
    for dtype in ("fp16", "fp32"):
        src = source
        if dtype == "fp16" and name != "lora":  # the trained files are fp32: make an fp16 copy too
            f = K.read_kohya(source)
            src = K.save_kohya(tmp_path / f"{name}16.safetensors", *K.resolve(f, _fresh().unet, _fresh().text_encoder))
        cfg = _config(data, tmp_path / f"again-{dtype}.safetensors", continue_from=str(src), save_dtype=dtype,
                      lora_type="loha" if name != "loha" else "lokr", lora_rank=8, lora_alpha=1.0,
                      lora_layers="attention")  # fmt: skip
        s, c = LoRATrain(), _fresh()
        groups = s.prepare(c, cfg, _continue_ctx(cfg))
        assert {g["name"] for g in groups} == {"unet", "text_encoder"}
        ctx = _continue_ctx(cfg)
        out = s.save_result(c, Path(cfg.output), {}, cfg, ctx)
        got, want = _tensors(out), _tensors(src)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (dtype, k)
        md = K.read_kohya(out).metadata
        rank = TYPES[name][2] if name in TYPES else RANK
        assert md["likeness.continued_from"] == src.name and md["ss_network_dim"] == str(rank)


def test_continuing_in_the_loop_with_lr_zero_gives_the_same_file(trained, data, tmp_path):
    """The whole run (session key, loop, save) continuing a LoHa file at learning rate 0 saves the same tensors."""
    source = trained["loha"][1].path
    cfg = _config(data, tmp_path / "lr0.safetensors", continue_from=str(source), steps=1, learning_rate=0.0,
                  text_encoder_lr=0.0)  # fmt: skip
    outcome = _train(cfg)
    assert outcome.state == "finished"
    got, want = _tensors(outcome.path), _tensors(source)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


_LDM_ATTENTION = {  # the tiny UNet's attention blocks, diffusers name -> LDM name (input/middle/output blocks)
    "down_blocks.0.attentions.0": "input_blocks.1.1",
    "down_blocks.0.attentions.1": "input_blocks.2.1",
    "mid_block.attentions.0": "middle_block.1",
    "up_blocks.1.attentions.0": "output_blocks.3.1",
    "up_blocks.1.attentions.1": "output_blocks.4.1",
    "up_blocks.1.attentions.2": "output_blocks.5.1",
}


def _ldm_name(module: str) -> str:
    for diffusers, ldm in _LDM_ATTENTION.items():
        if module.startswith(diffusers + "."):
            return "lora_unet_" + (ldm + module[len(diffusers) :]).replace(".", "_")
    raise AssertionError(module)


def test_continuing_a_kohya_lora_with_ldm_names_trains_and_saves(data, tmp_path):
    """A kohya-format LoRA written here in LDM layer names (lora_unet_input_blocks_1_1_…, text encoder too):
    continued for 2 steps with the text encoder frozen, it trains, saves in diffusers-style kohya names, keeps the
    text-encoder layers exactly and records where it started."""
    from safetensors.torch import save_file

    c = _fresh()
    unet, te = _random(c, "lora", False, RANK, layers="attention")
    tensors = {}
    for name, w in unet.items():
        key = _ldm_name(name)
        tensors.update({f"{key}.lora_down.weight": w.down.half(), f"{key}.lora_up.weight": w.up.half(),
                        f"{key}.alpha": torch.tensor(ALPHA)})  # fmt: skip
    te_keys = K.to_state_dict({}, te, dtype="fp16")
    tensors.update(te_keys)
    source = tmp_path / "kohya_ldm.safetensors"
    save_file(tensors, str(source), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4"})
    assert any(k.startswith("lora_unet_input_blocks_1_1_") for k in tensors)
    cfg = _config(data, tmp_path / "continued.safetensors", continue_from=str(source), steps=2,
                  train_text_encoder=False)  # fmt: skip
    outcome = _train(cfg)
    assert outcome.state == "finished"
    f = K.read_kohya(outcome.path)
    assert set(f.unet_layers) == {K.kohya_name(K.UNET_PREFIX, n) for n in unet}  # diffusers-style names now
    changed = [n for n in unet if not torch.equal(f.unet_layers[K.kohya_name(K.UNET_PREFIX, n)].up, unet[n].up)]
    assert changed, "continuing did not train"
    out = _tensors(outcome.path)
    for k, v in te_keys.items():
        assert torch.equal(out[k].to(v.dtype), v), k  # the frozen text-encoder layers as they were
    assert f.metadata["likeness.continued_from"] == source.name and f.metadata["ss_network_train_unet_only"] == "True"


def test_the_content_key_follows_the_starting_files_bytes(trained, data, tmp_path):
    """Same bytes under another name: same key (the result is found again); other bytes at the same path: a new
    key; no file: another key than any continued run."""
    import shutil

    from trainers.train.session import Session

    def key(**kw):
        cfg = _config(data, tmp_path / "k.safetensors", **kw)
        return Session(cfg, model_key="m", state_root=tmp_path / "states").key

    a = trained["loha"][1].path
    copy = tmp_path / "copy.safetensors"
    shutil.copy(a, copy)
    plain = key()
    assert key(continue_from=str(a)) == key(continue_from=str(copy)) != plain
    shutil.copy(trained["lokr"][1].path, copy)
    assert key(continue_from=str(copy)) != key(continue_from=str(a))
    with pytest.raises(ConfigError, match="continue_from"):
        key(continue_from=str(tmp_path / "gone.safetensors"))


def test_weights_classes_describe_themselves():
    w = LoraWeights(torch.ones(2, 3), torch.ones(4, 2), 1.0)
    assert (w.kind, w.rank, w.scale, w.dora) == ("lora", 2, 0.5, False)
    k = LokrWeights(torch.ones(2, 2), 3.0, w2_a=torch.ones(2, 1), w2_b=torch.ones(1, 2))
    assert (k.rank, k.scale, k.delta().shape) == (1, 3.0, (4, 4))
    with pytest.raises(ValueError, match="either lokr_w2"):
        LokrWeights(torch.ones(2, 2), 1.0)


def test_split_dora_takes_out_the_dora_layers_and_leaves_everything_else_as_it_was():
    """What the Apply node computes itself (kohya DoRA layers, as ``LoraWeights``) and what it hands to the host
    unchanged: plain LoRA and LoHa layers, keys of other formats, a DoRA layer that does not read as one."""
    from trainers.lora.kohya import split_dora

    g = torch.Generator().manual_seed(0)
    t = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    dora = {"lora_unet_a.lora_down.weight": t(2, 8), "lora_unet_a.lora_up.weight": t(6, 2),
            "lora_unet_a.alpha": torch.tensor(1.0), "lora_unet_a.dora_scale": t(6, 1)}  # fmt: skip
    rest = {
        "lora_unet_b.lora_down.weight": t(2, 8), "lora_unet_b.lora_up.weight": t(6, 2),  # plain LoRA
        "lora_te_c.hada_w1_a": t(6, 2), "lora_te_c.hada_w1_b": t(2, 8), "lora_te_c.hada_w2_a": t(6, 2),
        "lora_te_c.hada_w2_b": t(2, 8),  # LoHa
        "unet.down_blocks.0.attn.to_q.lora_A.weight": t(2, 8),  # another format: the host's to judge
        "lora_unet_d.lora_down.weight": t(2, 8), "lora_unet_d.lora_up.weight": t(6, 2),
        "lora_unet_d.dora_scale": t(5, 1),  # a magnitude for the wrong number of channels
    }  # fmt: skip
    plain, layers = split_dora({**dora, **rest})
    assert set(layers) == {"lora_unet_a"} and set(plain) == set(rest)
    assert all(plain[k] is v for k, v in rest.items())
    base = t(6, 8)
    merged = base + dora["lora_unet_a.lora_up.weight"] @ dora["lora_unet_a.lora_down.weight"] * 0.5
    want = merged * dora["lora_unet_a.dora_scale"] / merged.norm(dim=1, keepdim=True) - base
    torch.testing.assert_close(layers["lora_unet_a"].update(base), want)
