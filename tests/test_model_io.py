"""Model I/O on the tiny model: round trips, every checkpoint variant civitai users have, export behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainers.errors import CheckpointError, ConfigError
from trainers.model_io import (
    components_to_ldm,
    host_loadable_file,
    load_components,
    load_tokenizer,
    make_model_handle,
    read_checkpoint,
    save_single_file,
)
from trainers.model_io.convert import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX

POSITION_IDS = TEXT_PREFIX + "text_model.embeddings.position_ids"


def _same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def _same_module(model, ref_state: dict, cast=None) -> None:
    state = model.state_dict()
    assert set(state) == set(ref_state)
    for k, v in state.items():
        want = ref_state[k] if cast is None else ref_state[k].to(cast).to(v.dtype)
        assert torch.equal(v, want), k


@pytest.fixture(scope="module")
def ldm(tiny_checkpoint) -> dict:
    """The tiny checkpoint's tensors (fp16, LDM layout)."""
    return load_file(tiny_checkpoint)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_round_trip_single_diffusers_single_is_bit_exact(tiny_components, tmp_path, dtype):
    first = save_single_file(tiny_components, tmp_path / f"a_{dtype}.safetensors", dtype=dtype)
    loaded = load_components(first, tokenizer=tiny_components.tokenizer)
    assert loaded.info["dtype"] == dtype
    second = save_single_file(loaded, tmp_path / f"b_{dtype}.safetensors", dtype=dtype)
    _same_tensors(load_file(first), load_file(second))


def test_round_trip_through_diffusers_folder_is_bit_exact(tiny_checkpoint, tiny_components, tmp_path):
    from trainers.model_io.export import save_diffusers_folder

    comps = load_components(tiny_checkpoint, tokenizer=tiny_components.tokenizer)
    folder = save_diffusers_folder(comps, tmp_path / "diffusers", dtype="fp32")
    again = load_components(folder)  # tokenizer taken from the folder
    assert again.info["format"] == "diffusers"
    assert (
        again.tokenizer("a photo of sks person").input_ids
        == tiny_components.tokenizer("a photo of sks person").input_ids
    )
    out = save_single_file(again, tmp_path / "back.safetensors", dtype="fp16")
    _same_tensors(load_file(tiny_checkpoint), load_file(out))


def test_an_export_removes_what_a_killed_export_of_that_folder_left_and_nothing_else(tiny_components, tmp_path):
    """A killed diffusers export leaves ``.NAME.XXXXXXXX.partial`` beside NAME. The next export of NAME removes such
    a folder once nothing in it was touched for 15 minutes and it holds only an export's files; a recent one (an
    export in progress), one holding anything else, a link, or another folder's are left alone."""
    import os
    import time

    from trainers.fsutil import STALE_AFTER_S
    from trainers.model_io.export import EXPORT_SUFFIX, save_diffusers_folder

    def staged(name: str, extra: str | None = None, age: float = STALE_AFTER_S + 60) -> Path:
        d = tmp_path / name
        (d / "unet").mkdir(parents=True)
        (d / "unet" / "config.json").write_text("{}")
        (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 100)
        (d / "model_index.json").write_text("{}")
        if extra:
            (d / extra).write_text("user data")
        old = time.time() - age
        for f in [*d.rglob("*"), d]:
            os.utime(f, (old, old))
        return d

    killed = staged(f".model.abcd1234{EXPORT_SUFFIX}")
    in_progress = staged(f".model.efgh5678{EXPORT_SUFFIX}", age=60)
    foreign = staged(f".model.ijkl9012{EXPORT_SUFFIX}", extra="notes.txt")
    other = staged(f".other.mnop3456{EXPORT_SUFFIX}")
    target = tmp_path / "elsewhere"
    staged("elsewhere")
    link = tmp_path / f".model.qrst7890{EXPORT_SUFFIX}"
    link.symlink_to(target, target_is_directory=True)
    save_diffusers_folder(tiny_components, tmp_path / "model", dtype="fp32")
    assert not killed.exists()
    assert in_progress.is_dir() and foreign.is_dir() and other.is_dir()
    assert (foreign / "notes.txt").read_text() == "user data" and (foreign / "unet" / "config.json").is_file()
    assert link.is_symlink() and (target / "unet" / "config.json").is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert sorted(leftovers) == sorted([in_progress.name, foreign.name, link.name])  # its own staging is renamed


def test_export_is_ldm_layout_with_position_ids(ldm, tiny_components):
    prefixes = {k.split(".")[0] for k in ldm}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX + "text_model.")) for k in ldm)
    assert torch.equal(ldm[POSITION_IDS], torch.arange(77).unsqueeze(0))
    assert ldm[UNET_PREFIX + "input_blocks.0.0.weight"].dtype == torch.float16
    # the VAE attention is stored as 1x1 convolutions, as in the original files
    assert ldm[VAE_PREFIX + "encoder.mid.attn_1.q.weight"].ndim == 4
    counts = {p: sum(k.startswith(p) for k in ldm) for p in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)}
    assert counts[UNET_PREFIX] == len(tiny_components.unet.state_dict())
    assert counts[VAE_PREFIX] == len(tiny_components.vae.state_dict())
    assert counts[TEXT_PREFIX] == len(tiny_components.text_encoder.state_dict()) + 1  # + position_ids


def test_loaded_weights_equal_the_originals(tiny_checkpoint, tiny_components):
    comps = load_components(tiny_checkpoint, tokenizer=tiny_components.tokenizer, dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        _same_module(getattr(comps, name), getattr(tiny_components, name).state_dict(), cast=torch.float16)
        assert not any(p.requires_grad for p in getattr(comps, name).parameters())
    assert comps.info["variant"] == "sd1"
    assert comps.info["ema_used"] is False
    assert comps.noise_scheduler.config.prediction_type == "epsilon"
    assert comps.noise_scheduler.config.num_train_timesteps == 1000


def test_fp16_dtype_requested(tiny_checkpoint, tiny_components):
    comps = load_components(tiny_checkpoint, tokenizer=tiny_components.tokenizer, dtype=torch.float16)
    assert next(comps.unet.parameters()).dtype == torch.float16
    assert next(comps.text_encoder.parameters()).dtype == torch.float16


def test_bf16_file_loads(ldm, tiny_components, tmp_path):
    path = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ldm.items()}, str(path))
    ckpt = read_checkpoint(path)
    assert ckpt.info["dtype"] == "bf16"
    comps = load_components(path, tokenizer=tiny_components.tokenizer)
    key = "conv_in.weight"
    assert torch.equal(comps.unet.state_dict()[key], ldm[UNET_PREFIX + "input_blocks.0.0.weight"].bfloat16().float())


def _ema_file(ldm: dict, path: Path, dotted: bool, only_ema: bool = False) -> dict:
    sd = {} if only_ema else dict(ldm)
    if only_ema:
        sd.update({k: v for k, v in ldm.items() if not k.startswith(UNET_PREFIX)})
    ema_weights = {}
    for k, v in ldm.items():
        if k.startswith(UNET_PREFIX):
            rest = k[len("model.") :]
            name = "model_ema." + (rest if dotted else rest.replace(".", ""))
            sd[name] = v + 1 if v.is_floating_point() else v
            ema_weights[k] = sd[name]
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    save_file(sd, str(path))
    return ema_weights


@pytest.mark.parametrize("dotted", [False, True], ids=["ldm_dotless", "dotted"])
def test_ema_both_choices(ldm, tmp_path, dotted):
    path = tmp_path / "ema.safetensors"
    ema_weights = _ema_file(ldm, path, dotted)
    key = UNET_PREFIX + "out.2.weight"

    regular = read_checkpoint(path, ema="non_ema")
    assert regular.info["ema_present"] and regular.info["ema_used"] is False
    assert torch.equal(regular.state_dict[key], ldm[key])

    ema = read_checkpoint(path, ema="ema")
    assert ema.info["ema_used"] is True
    assert torch.equal(ema.state_dict[key], ema_weights[key])
    assert set(ema.state_dict) == set(regular.state_dict)
    assert not any(k.startswith("model_ema") for k in ema.state_dict)

    auto = read_checkpoint(path)  # both present: the regular weights (what ComfyUI/A1111 use, and for fine-tuning)
    assert auto.info["ema_used"] is False


def test_ema_only_file_uses_ema_in_auto(ldm, tmp_path):
    path = tmp_path / "ema_only.safetensors"
    ema_weights = _ema_file(ldm, path, dotted=True, only_ema=True)
    ckpt = read_checkpoint(path)
    assert ckpt.info["ema_used"] is True
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    assert torch.equal(ckpt.state_dict[key], ema_weights[key])
    with pytest.raises(CheckpointError, match="only EMA"):
        read_checkpoint(path, ema="non_ema")


def test_ema_requested_but_absent(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="no EMA weights"):
        read_checkpoint(tiny_checkpoint, ema="ema")


def test_nested_state_dict_ckpt(ldm, tiny_components, tmp_path):
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": dict(ldm), "global_step": 470000, "epoch": 3}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.info["format"] == "pickle"
    _same_tensors({k: v for k, v in ldm.items() if k != POSITION_IDS}, ckpt.state_dict)
    comps = load_components(path, tokenizer=tiny_components.tokenizer)
    assert comps.info["variant"] == "sd1"


def test_keys_without_text_model_and_extra_buffers(ldm, tmp_path):
    sd = {}
    for k, v in ldm.items():
        sd[k.replace(TEXT_PREFIX + "text_model.", TEXT_PREFIX)] = v
    sd["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    sd["betas"] = torch.linspace(0, 1, 1000)
    sd[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(77.0).unsqueeze(0)  # a float (broken) copy
    sd[TEXT_PREFIX + "text_projection.weight"] = torch.eye(32)  # other tools keep CLIP's unused projection
    sd["cond_stage_model.logit_scale"] = torch.tensor(4.6)
    sd[VAE_PREFIX + "loss.logvar"] = torch.zeros(())  # the VAE's training loss state in old files
    path = tmp_path / "no_text_model.safetensors"
    save_file(sd, str(path))
    ckpt = read_checkpoint(path)
    _same_tensors({k: v for k, v in ldm.items() if k != POSITION_IDS}, ckpt.state_dict)


def _write_unet_only(ldm: dict, tmp_path: Path) -> tuple[Path, Path]:
    unet_only = tmp_path / "unet_only.safetensors"
    save_file({k: v for k, v in ldm.items() if k.startswith(UNET_PREFIX)}, str(unet_only))
    vae = tmp_path / "vae.safetensors"  # a standalone VAE file: LDM keys without the prefix
    save_file({k[len(VAE_PREFIX) :]: v for k, v in ldm.items() if k.startswith(VAE_PREFIX)}, str(vae))
    return unet_only, vae


def test_unet_only_needs_completion(ldm, tmp_path):
    unet_only, vae = _write_unet_only(ldm, tmp_path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(unet_only)
    msg = str(err.value)
    assert "unet_only.safetensors" in msg and "VAE" in msg and "text encoder" in msg and "base_path" in msg
    with pytest.raises(CheckpointError, match="no text encoder"):
        read_checkpoint(unet_only, vae_path=vae)


def test_unet_only_with_vae_and_base(ldm, tiny_checkpoint, tiny_components, tmp_path):
    unet_only, vae = _write_unet_only(ldm, tmp_path)
    ckpt = read_checkpoint(unet_only, vae_path=vae, base_path=tiny_checkpoint)
    assert ckpt.info["sources"] == {"unet": str(unet_only), "vae": str(vae), "text_encoder": str(tiny_checkpoint)}
    _same_tensors({k: v for k, v in ldm.items() if k != POSITION_IDS}, ckpt.state_dict)
    handle = make_model_handle(unet_only, vae_path=vae, base_path=tiny_checkpoint)
    comps = load_components(handle, tokenizer=tiny_components.tokenizer)
    _same_module(comps.vae, tiny_components.vae.state_dict(), cast=torch.float16)
    # base alone completes both parts
    assert set(read_checkpoint(unet_only, base_path=tiny_checkpoint).state_dict) == set(ckpt.state_dict)


def test_separate_vae_in_diffusers_layout_replaces_the_files_vae(tiny_checkpoint, tiny_components, tmp_path):
    from trainers.tiny import tiny_components as build

    other = build(seed=1).vae
    vae_file = tmp_path / "diffusers_vae.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(vae_file))
    comps = load_components(make_model_handle(tiny_checkpoint, vae_path=vae_file), tokenizer=tiny_components.tokenizer)
    _same_module(comps.vae, other.state_dict())
    assert comps.info["sources"]["vae"] == str(vae_file)


def test_diffusers_folder_source(tiny_components, tmp_path):
    folder = tmp_path / "pipe"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "noise_scheduler"):
        sub = "scheduler" if name == "noise_scheduler" else name
        getattr(tiny_components, name).save_pretrained(folder / sub)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    # folders written by transformers < 5 keep the 'text_model.' level in the text encoder's keys
    te_file = folder / "text_encoder" / "model.safetensors"
    legacy = {"text_model." + k: v for k, v in load_file(te_file).items()}
    save_file(legacy, str(te_file), metadata={"format": "pt"})
    comps = load_components(folder)
    for name in ("unet", "vae", "text_encoder"):
        _same_module(getattr(comps, name), getattr(tiny_components, name).state_dict())
    assert comps.tokenizer.model_max_length == 77
    ckpt = read_checkpoint(folder)
    assert ckpt.info["format"] == "diffusers"
    assert set(ckpt.state_dict) == set(components_to_ldm(tiny_components))
    handle = make_model_handle(folder)
    assert len(handle.content_hash) == 64


def _pipeline_folder(components, folder: Path) -> Path:
    for name in ("unet", "vae", "text_encoder", "tokenizer", "noise_scheduler"):
        getattr(components, name).save_pretrained(folder / ("scheduler" if name == "noise_scheduler" else name))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def _refuse_from_pretrained(monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    def refused(*args, **kwargs):
        raise AssertionError("from_pretrained was called for a plain folder")

    for cls in (UNet2DConditionModel, AutoencoderKL, CLIPTextModel):
        monkeypatch.setattr(cls, "from_pretrained", refused)


def test_plain_folder_loads_without_from_pretrained_the_same_modules(tiny_components, tmp_path, monkeypatch):
    """One safetensors file per module: read directly into modules built from the folder's configs (no
    ``from_pretrained`` set-up), the same weights, dtype cast, and the same text encoder outputs as
    ``from_pretrained`` gives; a saved ``position_ids`` buffer is accepted."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = _pipeline_folder(tiny_components, tmp_path / "pipe")
    te_file = folder / "text_encoder" / "model.safetensors"
    with_buffer = {**load_file(te_file), "text_model.embeddings.position_ids": torch.arange(77)[None]}
    save_file(with_buffer, str(te_file), metadata={"format": "pt"})
    reference_te = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    reference_unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    _refuse_from_pretrained(monkeypatch)
    comps = load_components(folder)
    for name in ("unet", "vae", "text_encoder"):
        _same_module(getattr(comps, name), getattr(tiny_components, name).state_dict())
        module = getattr(comps, name)
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    assert public(comps.unet.config) == public(reference_unet.config)
    ids = comps.tokenizer(["a photo of sks shape"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(comps.text_encoder(ids)[0], reference_te(ids)[0])
    half = load_components(folder, dtype=torch.float16)
    _same_module(half.unet, tiny_components.unet.state_dict(), cast=torch.float16)
    assert half.text_encoder.dtype == torch.float16 and half.vae.dtype == torch.float16


def test_other_folder_layouts_go_through_from_pretrained(tiny_components, tmp_path, monkeypatch):
    """A layout that is not one plain file per module (here a UNet saved in shards, a VAE with the attention names
    of old diffusers folders) loads through ``from_pretrained``, which converts it; weights that do not fit the
    folder's config.json are an error naming the file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = _pipeline_folder(tiny_components, tmp_path / "pipe")
    for q in (folder / "unet").glob("*.safetensors"):
        q.unlink()
    tiny_components.unet.save_pretrained(folder / "unet", max_shard_size="20KB")
    assert len(list((folder / "unet").glob("*.safetensors"))) > 1
    calls = []
    real = UNet2DConditionModel.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        calls.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(counted))
    comps = load_components(folder)
    assert calls and Path(calls[0]) == folder / "unet"
    _same_module(comps.unet, tiny_components.unet.state_dict())

    plain = _pipeline_folder(tiny_components, tmp_path / "old_vae")
    vae_file = plain / "vae" / "diffusion_pytorch_model.safetensors"
    old_names = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    renamed = {}
    for key, tensor in load_file(vae_file).items():
        for new, old in old_names.items():
            key = key.replace("attentions.0." + new, "attentions.0." + old)
        renamed[key] = tensor
    save_file(renamed, str(vae_file), metadata={"format": "pt"})
    vae_calls = []
    real_vae = AutoencoderKL.from_pretrained.__func__
    monkeypatch.setattr(
        AutoencoderKL,
        "from_pretrained",
        classmethod(lambda cls, *a, **k: vae_calls.append(a) or real_vae(cls, *a, **k)),
    )
    _same_module(load_components(plain).vae, tiny_components.vae.state_dict())
    assert vae_calls

    bad = _pipeline_folder(tiny_components, tmp_path / "bad")
    config = json.loads((bad / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = config["cross_attention_dim"] * 2
    (bad / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unet.diffusion_pytorch_model\.safetensors.*config\.json"):
        load_components(bad)


def test_single_file_without_tokenizer_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ConfigError, match="tokenizer"):
        load_components(tiny_checkpoint)


def test_load_tokenizer_from_folder(tiny_components, tmp_path):
    tiny_components.tokenizer.save_pretrained(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.model_max_length == 77
    ids = tok("a photo of sks person", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and max(ids) < tiny_components.text_encoder.config.vocab_size
    with pytest.raises(ConfigError, match="no CLIP tokenizer"):
        load_tokenizer(tmp_path)


def test_save_never_overwrites_and_writes_metadata(tiny_components, tmp_path):
    path = tmp_path / "out.safetensors"
    save_single_file(tiny_components, path, dtype="fp32", metadata={"likeness.steps": "400", "note": "x"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["likeness.steps"] == "400" and meta["note"] == "x"
    before = path.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already exists"):
        save_single_file(tiny_components, path)
    assert path.stat().st_mtime_ns == before
    save_single_file(tiny_components, path, dtype="fp16", overwrite=True)
    assert load_file(path)[UNET_PREFIX + "out.2.weight"].dtype == torch.float16
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    with pytest.raises(ConfigError, match="strings"):
        save_single_file(tiny_components, tmp_path / "m.safetensors", metadata={"steps": 400})


def test_model_handle_and_host_file(tiny_checkpoint, ldm, tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_CACHE", str(tmp_path / "cache"))
    handle = make_model_handle(tiny_checkpoint)
    assert handle.variant == "sd1" and handle.ema == "auto" and len(handle.content_hash) == 64
    assert host_loadable_file(handle) == str(tiny_checkpoint.resolve())  # plain safetensors: used as is

    ckpt_path = tmp_path / "model.ckpt"
    torch.save({"state_dict": dict(ldm)}, ckpt_path)
    host = host_loadable_file(make_model_handle(ckpt_path))
    assert host.endswith(".safetensors") and Path(host).parent == tmp_path / "cache" / "host_files"
    _same_tensors(ldm, load_file(host))
    assert host_loadable_file(make_model_handle(ckpt_path)) == host  # content-addressed, cached

    ema_path = tmp_path / "ema.safetensors"
    ema_weights = _ema_file(ldm, ema_path, dotted=False)
    host_ema = load_file(host_loadable_file(make_model_handle(ema_path, ema="ema")))
    key = UNET_PREFIX + "out.0.weight"
    assert torch.equal(host_ema[key], ema_weights[key])
    assert not any(k.startswith("model_ema") for k in host_ema)


def test_diffusers_from_single_file_reads_our_export(tiny_components, tmp_path):
    """diffusers' own single-file loader (offline, local config) gets the same weights from our file."""
    from diffusers import StableDiffusionPipeline

    from trainers.model_io.export import save_diffusers_folder

    config_dir = save_diffusers_folder(tiny_components, tmp_path / "config", dtype="fp32")
    path = save_single_file(tiny_components, tmp_path / "ours.safetensors", dtype="fp32")
    pipe = StableDiffusionPipeline.from_single_file(
        str(path),
        config=str(config_dir),
        tokenizer=tiny_components.tokenizer,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    _same_module(pipe.unet, tiny_components.unet.state_dict())
    _same_module(pipe.vae, tiny_components.vae.state_dict())
    te_state = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    assert set(te_state) == set(tiny_components.text_encoder.state_dict())
    for k, v in tiny_components.text_encoder.state_dict().items():
        assert torch.equal(te_state[k], v), k


def test_ema_only_dotless_names(ldm, tmp_path):
    """Dotless EMA names are mapped back through SD1.5's key names (the tiny UNet's names are a subset)."""
    path = tmp_path / "ema_only_dotless.safetensors"
    ema_weights = _ema_file(ldm, path, dotted=False, only_ema=True)
    ckpt = read_checkpoint(path)
    assert ckpt.info["ema_used"] is True
    for k, v in ema_weights.items():
        assert torch.equal(ckpt.state_dict[k], v), k
    bad = load_file(path)
    bad["model_ema.diffusion_modelnot_a_layer0weight"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="cannot be mapped back"):
        read_checkpoint(tmp_path / "bad.safetensors")
