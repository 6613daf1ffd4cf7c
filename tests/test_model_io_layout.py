"""The real SD1.5 shapes, built on the meta device (no memory): our LDM layout equals the original one exactly.

References: the key list recorded from ComfyUI's own LDM modules (``tests/data/sd15_ldm_keys.txt``) and diffusers'
own single-file converters, which must map our exported keys to the same diffusers weights our table does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.model_io.components import Components, components_from_ldm, components_to_ldm
from trainers.model_io.convert import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from trainers.model_io.detect import detect_architecture
from trainers.model_io.model_configs import (
    CONFIG_DIR,
    build_text_encoder,
    build_unet,
    build_vae,
    bundled_config,
    infer_unet_config,
    infer_vae_config,
)

REFERENCE = Path(__file__).parent / "data" / "sd15_ldm_keys.txt"


@pytest.fixture(scope="module")
def sd15() -> Components:
    return Components(
        build_unet(bundled_config("unet")),
        build_vae(bundled_config("vae")),
        build_text_encoder(bundled_config("text_encoder")),
        None,
        None,
    )


@pytest.fixture(scope="module")
def sd15_ldm(sd15) -> dict:
    sd = components_to_ldm(sd15)
    assert all(t.device.type == "meta" for t in sd.values())
    return sd


def _reference() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in REFERENCE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ")
            out[key] = tuple(int(x) for x in shape.split(","))
    return out


def test_key_counts(sd15_ldm):
    counts = {p: sum(k.startswith(p) for k in sd15_ldm) for p in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)}
    assert counts == {UNET_PREFIX: 686, VAE_PREFIX: 248, TEXT_PREFIX: 196}


def test_keys_and_shapes_equal_the_original_ldm_layout(sd15_ldm):
    ref = _reference()
    assert len(ref) == 1130
    ours = {k: tuple(v.shape) for k, v in sd15_ldm.items()}
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k for k in ours if ours[k] != ref[k]} == set()


def test_written_file_layout_adds_position_ids(sd15_ldm, tmp_path, monkeypatch):
    """What ``write_ldm_file`` would write for SD1.5 (checked without writing 2 GB: save_file is intercepted)."""
    import safetensors.torch

    from trainers.model_io import export

    seen = {}
    monkeypatch.setattr(safetensors.torch, "save_file", lambda sd, path, metadata=None: seen.update(sd))
    export.write_ldm_file(
        {k: torch.empty(0) for k in sd15_ldm} | _position_embedding(sd15_ldm), tmp_path / "x.safetensors"
    )
    assert len(seen) == 1131
    assert seen[TEXT_PREFIX + "text_model.embeddings.position_ids"].tolist() == [list(range(77))]


def _position_embedding(sd15_ldm) -> dict:
    key = TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"
    return {key: torch.empty(sd15_ldm[key].shape[0], 1)}


def test_import_infers_the_bundled_configs(sd15_ldm):
    unet_cfg = infer_unet_config(sd15_ldm)
    for key, value in bundled_config("unet").items():
        if not key.startswith("_"):
            assert unet_cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    vae_cfg = infer_vae_config(sd15_ldm)
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels"):
        assert vae_cfg[key] == bundled_config("vae")[key], key
    assert detect_architecture(sd15_ldm, "sd15") == "sd1"


def test_meta_round_trip_keys(sd15_ldm):
    unet, vae, te, configs = components_from_ldm(sd15_ldm, path="sd15 (meta)")
    assert configs["text_encoder"]["num_attention_heads"] == 12
    again = components_to_ldm(Components(unet, vae, te, None, None))
    assert {k: tuple(v.shape) for k, v in again.items()} == {k: tuple(v.shape) for k, v in sd15_ldm.items()}


def test_diffusers_converters_agree_with_our_table(sd15, sd15_ldm):
    """diffusers' own LDM converters put every tensor of our export where our table says (same object)."""
    from diffusers.loaders import single_file_utils as sfu

    assert sfu.infer_diffusers_model_type(sd15_ldm) == "v1"
    unet = sfu.convert_ldm_unet_checkpoint(dict(sd15_ldm), dict(sd15.unet.config))
    vae = sfu.convert_ldm_vae_checkpoint(dict(sd15_ldm), dict(sd15.vae.config))
    clip = sfu.convert_ldm_clip_checkpoint(dict(sd15_ldm))
    from trainers.model_io.components import ldm_tables

    tables = ldm_tables(sd15)
    assert set(unet) == set(tables["unet"].to_ldm)
    for key, ldm_key in tables["unet"].to_ldm.items():
        assert unet[key] is sd15_ldm[ldm_key], key
    assert set(vae) == set(tables["vae"].to_ldm)
    for key, ldm_key in tables["vae"].to_ldm.items():
        if key in tables["vae"].conv1x1:  # diffusers reshapes these 1x1 convolutions to linear weights
            assert vae[key].shape == sd15_ldm[ldm_key].shape[:2], key
        else:
            assert vae[key] is sd15_ldm[ldm_key], key
    clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
    assert set(clip) == set(tables["text_encoder"].to_ldm)
    for key, ldm_key in tables["text_encoder"].to_ldm.items():
        assert clip[key] is sd15_ldm[ldm_key], key


def test_bundled_configs_are_a_diffusers_pipeline_config():
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(str(CONFIG_DIR))
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        assert list((CONFIG_DIR / sub).glob("*config.json")), sub
    from diffusers import PNDMScheduler, UNet2DConditionModel

    assert UNet2DConditionModel.load_config(str(CONFIG_DIR), subfolder="unet")["cross_attention_dim"] == 768
    sched = PNDMScheduler.from_pretrained(str(CONFIG_DIR), subfolder="scheduler")
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.prediction_type == "epsilon"


def test_comfy_tiny_checkpoint_has_sd15_shapes(comfy_tiny_checkpoint):
    """The host-test model: what ComfyUI needs to call it SD1.5 (320 channels, context 768), real VAE and CLIP-L."""
    from safetensors import safe_open

    from trainers.model_io import inspect_checkpoint

    info = inspect_checkpoint(comfy_tiny_checkpoint)
    assert info["variant"] == "sd1" and info["dtype"] == "fp16"
    with safe_open(str(comfy_tiny_checkpoint), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    assert shapes[UNET_PREFIX + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert shapes[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert not any(k.startswith(UNET_PREFIX + "input_blocks.2.") for k in shapes)  # one level, one res block
    ref = _reference()
    for prefix in (VAE_PREFIX, TEXT_PREFIX):  # VAE and text encoder: exactly SD1.5's
        ours = {k: v for k, v in shapes.items() if k.startswith(prefix) and not k.endswith("position_ids")}
        assert ours == {k: v for k, v in ref.items() if k.startswith(prefix)}


def test_sd15_ema_only_file_with_dotless_names(sd15_ldm):
    """Original SD1.x EMA names drop every dot ('model_ema.diffusion_modelinput_blocks00weight'); an EMA-only file
    with SD1.5's UNet gets its key names back."""
    from trainers.model_io.reader import _choose_ema

    unet = {k: v for k, v in sd15_ldm.items() if k.startswith(UNET_PREFIX)}
    ema_only = {"model_ema." + k[len("model.") :].replace(".", ""): v for k, v in unet.items()}
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema_only
    ema_only["model_ema.num_updates"] = torch.tensor(1)
    out, used, present = _choose_ema(ema_only, "auto", "ema_only.ckpt")
    assert used and present
    assert {k: v for k, v in out.items() if k.startswith(UNET_PREFIX)} == unet
