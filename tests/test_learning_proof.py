"""The learning proof (issue #9): the product's training loop teaches a tiny model a subject, and prior preservation
keeps the class. Uses the committed base model ``benchmarks/data/proof_base.safetensors`` (never rebuilt here).

The fast run (``learning_proof.FAST``) is the full benchmark's training on one seed: text encoder trained, 600 steps
at lr 2e-4, 32 class images, prior weight 1, 12 evaluation samples, and the full run's margins (docs/learning_proof.md).
Everything is seeded and runs on CPU in fp32, so the numbers are the same on every run.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import learning_proof as lp
from benchmarks import proof_base as pb
from benchmarks import proof_data as pd
from tests.host.fixtures import say_now


def test_procedural_data_is_seeded_and_the_subject_is_an_orange_blue_checker():
    a, b = pd.class_images(4, seed=3), pd.class_images(4, seed=3)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert np.asarray(pd.class_images(1, seed=4)[0]).tobytes() != np.asarray(a[0]).tobytes()
    subject = pd.to_unit_array(pd.subject_images(5))
    assert subject.shape == (5, 32, 32, 3)
    # Every subject picture holds both checker colours in 8-px cells; no class picture holds that pair.
    for img in pd.subject_images(5):
        colours = {tuple(c) for c in np.asarray(img).reshape(-1, 3)}
        assert set(pd.SUBJECT_COLOURS) <= colours
        assert len(colours) == 3  # orange, blue, grey background


def test_tokenizer_keeps_the_prompt_words_whole():
    tok = pb.make_tokenizer(*pb.build_vocab())
    tokens = tok.convert_ids_to_tokens(tok(pd.INSTANCE_PROMPT).input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "sks</w>", "shape</w>", "<|endoftext|>"]
    assert tok.model_max_length == pb.MAX_TOKENS == 16


def test_committed_base_draws_the_class_not_noise():
    base = pb.load_base()
    assert pb.BASE_PATH.stat().st_size < 6_000_000
    imgs = pd.to_unit_array(pb.sample(base, pd.CLASS_PROMPT, [lp.EVAL_SEED + i for i in range(6)]))
    grey = np.abs(imgs - 0.5).max(axis=-1) < 0.1
    corners = grey[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() > 0.6, "class samples should mostly sit on the grey background"
    fg = 1.0 - grey.mean(axis=(1, 2))
    # Each sample shows something on the grey (not a blank), never fills the frame (not noise), a shape on average.
    assert (fg > 0.02).all() and (fg < 0.9).all() and 0.1 < fg.mean() < 0.7, f"foreground fractions {fg}"


def test_committed_base_follows_its_prompts():
    """The guard build_base applies: "red circle" samples are red, "blue square" samples blue (same seeds)."""
    base = pb.load_base()
    assert base.tokenizer.model_max_length == pb.MAX_TOKENS
    assert pb.prompt_fidelity(base) >= pb.MIN_PROMPT_FIDELITY


def test_build_base_refuses_a_base_that_ignores_its_prompts(tmp_path, monkeypatch):
    """An (almost) untrained denoiser does not follow words: nothing is written, and the error says what to do."""
    monkeypatch.setattr(pb, "latent_scale", lambda vae, seed, n=512: 1.0)
    target = tmp_path / "base.safetensors"
    with pytest.raises(RuntimeError, match="ignores its prompts.*denoiser_steps"):
        pb.build_base(target, vae_steps=1, denoiser_steps=1)
    assert not target.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_dreambooth_learns_the_subject_and_prior_preservation_keeps_the_class(request):
    say_now(request.config, "learning proof: two 600-step training runs on CPU (12-14 min on 2 busy cores)")
    result = lp.run_benchmark(lp.FAST)
    print(lp.table(result))
    failed = [text for text, ok in lp.checks(result) if not ok]
    assert not failed, "\n".join(failed)
    # Same seed and steps for both runs, through the product's loop: both trained the whole way.
    assert {r.name for r in result["runs"]} == {"db", "db_prior"}


def test_clip_towers_load_from_single_files(tmp_path):
    """The --clip path's loaders, on tiny random CLIP towers in ComfyUI's (Hugging Face) key layout."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from benchmarks import clip_proof as cp

    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1, patch_size=8,
            image_size=32, projection_dim=16, hidden_act="quick_gelu",
        )
    ).eval()  # fmt: skip
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(pb.build_vocab()[0]), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=1, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    ).eval()  # fmt: skip
    save_file({k: v.contiguous() for k, v in vision.state_dict().items()}, str(tmp_path / "v.safetensors"))
    save_file({k: v.contiguous() for k, v in text.state_dict().items()}, str(tmp_path / "t.safetensors"))
    v2 = cp.load_clip_vision(tmp_path / "v.safetensors")
    t2 = cp.load_clip_text(tmp_path / "t.safetensors", eos_token_id=1)
    assert v2.config.image_size == 32 and v2.config.projection_dim == 16 and v2.config.num_hidden_layers == 2
    imgs = pd.subject_images(2) + pd.class_images(2, seed=0)
    e1 = cp.image_embeddings(vision, imgs)
    assert torch.allclose(e1, cp.image_embeddings(v2, imgs), atol=1e-6)
    assert torch.allclose(e1.norm(dim=-1), torch.ones(4), atol=1e-5)
    tok = pb.make_tokenizer(*pb.build_vocab())
    prompts = [pd.CLASS_PROMPT, "a photo of a red circle"]
    assert torch.allclose(cp.text_embeddings(text, tok, prompts), cp.text_embeddings(t2, tok, prompts), atol=1e-6)
    with pytest.raises(ValueError, match="clip_vision"):
        cp.vision_config_from_state_dict({"foo": torch.zeros(1)})
    p = cp.Prompts("a photo of sks woman face", "a photo of woman face", "sks")
    assert p.contexts((" on a beach",)) == [
        ("a photo of sks woman face on a beach", "a photo of woman face on a beach")
    ]


@pytest.mark.slow
def test_keep_best_keeps_an_earlier_step_and_early_stop_ends_the_run():
    """The product's evaluation seam in a real CPU run, with the proof's pixel judge: at 5x the proof's learning rate
    DreamBooth learns the subject and then drifts from it; the run keeps its best step (not the last) and stops once
    ``patience`` evaluations in a row bring nothing new. The weights put back are exactly the ones that were measured.
    """
    from trainers.train.evaluation import probe_set, render_probes

    kb = lp.KeepBest()
    result = lp.run_keep_best(kb)
    out, ev = result["outcome"], result["evaluation"]
    history = ev["history"]
    print("\n" + lp.keep_best_table(result))
    # early stop: finished (and saved) before its steps, after `patience` evaluations without a new best
    assert out.state == "finished" and out.path is not None
    assert out.steps_done < out.total_steps == kb.steps
    assert any(
        s.startswith(f"training ends at step {out.steps_done}: likeness has not improved") for s in result["status"]
    )
    best = max(history, key=lambda h: h["likeness"])
    after = [h for h in history if h["step"] > best["step"]]
    assert len(after) == kb.patience and all(h["likeness"] < best["likeness"] for h in after)
    # keep-best: the result is the best step's weights, not the last step's
    assert ev["kept_step"] == best["step"] < out.steps_done and out.metadata["likeness.kept_step"] == str(best["step"])
    assert best["likeness"] > history[0]["likeness"]  # it did learn the subject before drifting
    # the components now hold the kept weights: the same probes score exactly what the best evaluation measured
    cfg = result["config"]
    probes = [p for p in probe_set(cfg) if p.kind == "subject"]
    images = render_probes(result["parts"], probes, cfg)
    scores = cfg.make_judge().score(images)
    assert sum(s for s, _ in scores) / len(scores) == pytest.approx(best["likeness"], abs=1e-4)


def test_methods_variants_data_and_metrics(tmp_path):
    """The issue-15 variants of the proof (numbers: docs/learning_proof.md): the subject on changing backgrounds with
    masks the product reads, the background metrics, and the prior from the base model asking for no class images."""
    from benchmarks import proof_methods as pm
    from trainers.train.plan import plan

    pairs = pd.subject_on_backgrounds(5)
    clean = pd.subject_images(5)
    for (img, mask), ref in zip(pairs, clean, strict=True):
        m = np.asarray(mask) > 0
        assert (np.asarray(img)[m] == np.asarray(ref)[m]).all()  # the same subject at the same place
    backgrounds = {np.asarray(img)[~(np.asarray(mask) > 0)].tobytes() for img, mask in pairs}
    assert len(backgrounds) == 5  # a new background in every picture
    assert [np.asarray(a).tobytes() for a, _ in pd.subject_on_backgrounds(5)] == [
        np.asarray(a).tobytes() for a, _ in pairs
    ]

    bg = pm.write_background_set(tmp_path / "instance_bg", 5)
    subject = pd.to_unit_array(clean)
    same = pm.background_metrics(bg["train"], subject, bg)
    assert same["fg_subj"] == 0.0 and same["bg_train"] == 0.0  # the training pictures themselves
    plain = pm.background_metrics(subject, subject, bg)
    assert plain["fg_subj"] == 0.0 and plain["bg_train"] > 0.05  # the subject on grey: far from the backgrounds

    ProofDreamBooth, ProofLoRA = lp.proof_configs()
    opts = dict(
        instance_prompt=pd.INSTANCE_PROMPT, class_prompt=pd.CLASS_PROMPT, output=str(tmp_path / "o.safetensors")
    )
    masked = ProofDreamBooth(**opts, prior_preservation=False, **pm.train_options("db_bg_masked", tmp_path))
    assert all(e.mask is not None for e in plan(masked).instance.examples)
    base_prior = ProofDreamBooth(
        **opts, instance_data=str(tmp_path / "instance_bg"), **pm.train_options("db_base_prior", tmp_path)
    )
    assert base_prior.prior_preservation and plan(base_prior).classes is None
    lora_prior = ProofLoRA(
        **opts, instance_data=str(tmp_path / "instance_bg"), **pm.train_options("lora_base_prior", tmp_path)
    )
    assert lora_prior.prior == "base_model" and plan(lora_prior).classes is None  # LoRA's row: no class images either
