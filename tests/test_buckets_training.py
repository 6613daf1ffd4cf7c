"""Aspect buckets through the loop (issue 15): a 3:4 dataset trains at 3:4 latents, a batch holds one bucket, class
images follow the subject's bucket, nothing is enlarged past the limit, and a stopped run resumes exactly."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from train_helpers import class_images, fresh, tiny_config

from trainers.train import Callbacks, train
from trainers.train.plan import plan

BUCKETS = dict(bucket_step=8)  # the tiny model works at 32 px: 3:4 is 24 x 32 there


def _photos(folder, sizes, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        a = np.full((h, w, 3), 128, np.uint8)
        a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / f"p{i}.png")
    return folder


def _shapes(components):
    seen = []
    components.unet.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)) if m.training else None)
    return seen


def test_a_portrait_dataset_trains_at_3_4_latents_with_class_images_in_the_same_bucket(tiny_components, tmp_path):
    _photos(tmp_path / "inst", [(48, 64)] * 3)  # 3:4 photos
    class_images(tmp_path / "cls")  # square class images
    cfg = tiny_config(
        tmp_path, steps=3, class_data=str(tmp_path / "cls"), prior_preservation=True, sample_every=2, sample_steps=1,
        **BUCKETS,
    )  # fmt: skip
    the_plan = plan(cfg)
    assert {e.bucket for e in the_plan.instance.examples} == {(24, 32)}
    c = fresh(tiny_components)
    seen = _shapes(c)
    samples = []

    class Samples(Callbacks):
        def on_sample(self, step, images, prompts):
            samples.extend(images)

    out = train(cfg, components=c, callbacks=Samples())
    assert out.state == "finished"
    assert seen == [(2, 4, 16, 12)] * 3  # subject + class image, both 24 x 32 px -> 12 x 16 latents
    assert samples and samples[0].size == (24, 32)  # samples at the dataset's bucket

    square = tiny_config(tmp_path / "sq", steps=1, buckets=False, instance_data=str(tmp_path / "inst"))
    c2 = fresh(tiny_components)
    seen2 = _shapes(c2)
    train(square, components=c2)
    assert seen2 == [(1, 4, 16, 16)]  # buckets off: centre-cropped squares, as before


def test_a_batch_holds_one_bucket_and_nothing_is_enlarged_past_the_limit(tiny_components, tmp_path):
    sizes = [(32, 32), (32, 32), (48, 64), (48, 64), (12, 16)]
    _photos(tmp_path / "inst", sizes)
    cfg = tiny_config(tmp_path, steps=6, batch_size=2, max_upscale=1.5, **BUCKETS)
    examples = plan(cfg).instance.examples
    for (w, h), e in zip(sizes, examples, strict=True):
        assert max(e.width / w, e.height / h) <= 1.5 + 1e-9, (w, h, e.bucket)
    assert examples[4].bucket == (16, 24)  # a 12 x 16 photo: 24 x 32 would mean 2x, so a smaller bucket
    c = fresh(tiny_components)
    seen = _shapes(c)
    train(cfg, components=c)
    assert len(seen) == 6 and {s[0] for s in seen} == {2}  # every batch full, one shape per batch
    assert {s[2:] for s in seen} >= {(16, 16), (16, 12)}  # both big buckets were trained


def test_resume_is_exact_with_buckets(tiny_components, tmp_path):
    _photos(tmp_path / "inst", [(32, 32), (48, 64), (48, 64), (64, 48), (32, 32)])
    class_images(tmp_path / "cls")
    common = dict(
        steps=8, batch_size=2, class_data=str(tmp_path / "cls"), prior_preservation=True, random_flip=True,
        instance_data=str(tmp_path / "inst"), **BUCKETS,
    )  # fmt: skip
    straight = fresh(tiny_components)
    full = train(tiny_config(tmp_path / "a", **common), components=straight)

    class StopAt3(Callbacks):
        step = 0

        def on_progress(self, info):
            if info.phase == "training":
                self.step = info.step

    rec = StopAt3()
    cfg = tiny_config(tmp_path / "b", **common)
    stopped = train(cfg, components=fresh(tiny_components), callbacks=rec, stop=lambda: rec.step >= 3)
    assert stopped.state == "stopped" and stopped.steps_done == 3
    resumed_parts = fresh(tiny_components)
    resumed = train(tiny_config(tmp_path / "b", **common, resume_from="latest"), components=resumed_parts)
    assert resumed.losses == full.losses
    sa, sb = straight.unet.state_dict(), resumed_parts.unet.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_class_images_of_the_subjects_bucket_are_used_as_they_are(tmp_path):
    """A class set holding square and 3:4 images (Generate Class Images with width/height): a 3:4 subject batch takes
    the 3:4 class images unchanged, a square batch the square ones; no class image is resized then."""
    from trainers.train.batches import BatchPlan

    _photos(tmp_path / "inst", [(32, 32), (24, 32), (24, 32), (32, 32)])
    _photos(tmp_path / "cls", [(32, 32)] * 3 + [(24, 32)] * 3, seed=1)
    cfg = tiny_config(
        tmp_path, steps=1, class_data=str(tmp_path / "cls"), prior_preservation=True, batch_size=2, **BUCKETS
    )
    the_plan = plan(cfg)
    batches = BatchPlan(the_plan.instance, the_plan.classes, cfg.seed, False, 2)
    originals = {id(e) for e in the_plan.classes.examples}
    for j in range(12):
        picks = batches(j)
        assert len({e.bucket for _, e, _ in picks}) == 1
        assert all(id(e) in originals for kind, e, _ in picks if kind == "class")
    assert not batches.refits
