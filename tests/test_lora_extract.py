"""Likeness Extract LoRA: a rank-r LoRA from the difference between a fine-tuned model and its base (SVD)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from trainers.errors import CheckpointError  # noqa: E402
from trainers.lora import adapters as A  # noqa: E402
from trainers.lora import kohya as K  # noqa: E402
from trainers.lora.extract import extract_layer, extract_lora_files  # noqa: E402


def _fresh():
    from trainers.tiny import tiny_components

    return tiny_components(seed=0)


def test_svd_of_a_low_rank_change_is_exact():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(16, 2, generator=g) @ torch.randn(2, 24, generator=g)
    w, kept = extract_layer(delta, 4)
    assert w.rank == 2 and w.alpha == 2.0 and kept == pytest.approx(1.0)  # capped at the true rank
    torch.testing.assert_close(w.delta(), delta, atol=1e-5, rtol=1e-5)
    conv = torch.randn(8, 4, 3, 3, generator=g)
    w, kept = extract_layer(conv, 3)
    assert w.down.shape == (3, 4, 3, 3) and w.up.shape == (8, 3, 1, 1) and 0 < kept < 1
    # the best rank-3 approximation: its error is the energy of the dropped singular values
    s = torch.linalg.svdvals(conv.flatten(1))
    err = (w.delta() - conv).flatten(1).norm()
    assert float(err) == pytest.approx(float(s[3:].norm()), rel=1e-4)


def test_extract_from_files_reproduces_a_low_rank_fine_tune(tmp_path):
    """Base + a rank-2 change on the attention (UNet and text encoder) -> extracted rank-4 LoRA == that change."""
    from trainers.tiny import write_civitai_file

    base = _fresh()
    base_file = write_civitai_file(base, tmp_path / "base.safetensors", dtype="fp16")
    tuned = _fresh()
    g = torch.Generator().manual_seed(1)
    changed = A.unet_target_names(tuned.unet, "attention") + [
        "te:" + n for n in A.text_encoder_target_names(tuned.text_encoder, "attention")
    ]
    mods = dict(tuned.unet.named_modules()) | {"te:" + n: m for n, m in tuned.text_encoder.named_modules()}
    with torch.no_grad():
        for name in changed:
            w = mods[name].weight
            w += 0.05 * (torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g))
    tuned_file = write_civitai_file(tuned, tmp_path / "tuned.safetensors", dtype="fp16")
    out = tmp_path / "x.safetensors"
    md = extract_lora_files(str(base_file), tuned_file, out, rank=4, layers="attention_ff", dtype="fp32")
    assert md["ss_network_dim"] == "4" and md["likeness.kind"] == "lora_extract"
    f = K.read_kohya(out)
    target = _fresh()
    unet, te = K.resolve(f, target.unet, target.text_encoder)
    # only the changed layers were extracted (ff/proj did not change); rank 4 keeps the rank-2 change (fp16
    # rounding of the files adds a little full-rank noise on top)
    assert set(unet) == set(A.unet_target_names(target.unet, "attention"))
    assert len(te) == len(A.text_encoder_target_names(target.text_encoder, "attention"))
    assert all(w.rank <= 4 and w.alpha == w.rank for w in unet.values())
    assert json.loads(md["likeness.extract_energy"])["min"] > 0.99
    A.merge_into(target.unet, unet)
    A.merge_into(target.text_encoder, te)
    # within the fp16 rounding of the two files
    for a, b in ((target.unet, tuned.unet), (target.text_encoder, tuned.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        worst = max(float((sa[k] - sb[k]).abs().max()) for k in sb)
        assert worst < 2e-3
    with pytest.raises(CheckpointError, match="does not differ"):
        extract_lora_files(str(base_file), base_file, tmp_path / "none.safetensors", rank=4)
