"""Class image sets (engine): validation, reuse, top-up, atomic writes, deterministic per-image seeds, image batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers import configspec
from trainers.classgen import (
    MANIFEST,
    SPARE,
    ClassImagesConfig,
    generate_class_images,
    image_name,
    image_seed,
    plan_class_set,
    save_image_batch,
)
from trainers.errors import ConfigError

KEY = "tiny-model"  # model_key for in-memory components (skips hashing the weights in most tests)


def cfg(**kw) -> ClassImagesConfig:
    base = dict(class_prompt="a photo of a dog", count=3, resolution=32, steps=2, batch_size=2, sampler="euler_a")
    base.update(kw)
    return configspec.validate(ClassImagesConfig(**base))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("class_*.png")}


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"count": 0}, "'count' is 0; it must be at least 1"),
        ({"count": -5}, "'count' is -5"),
        ({"class_prompt": "   "}, "'class_prompt' is empty"),
        ({"resolution": 100}, "'resolution' is 100; it must be a multiple of 8"),
        ({"sampler": "dpm"}, "choose one of: ddim, euler_a"),
    ],
)
def test_bad_options_are_refused_before_anything_is_loaded(tmp_path, change, words):
    data = dict(class_prompt="a photo of a dog", count=3, resolution=64)
    data.update(change)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        configspec.from_dict(ClassImagesConfig, data)
    bad = ClassImagesConfig(**data)
    # the model does not even exist: validation must come first, and nothing is written
    with pytest.raises(ConfigError, match=words.split(";")[0].replace("(", r"\(")):
        generate_class_images(bad, model=tmp_path / "missing.safetensors", output_root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_seed_is_a_stable_function_of_seed_and_index():
    assert image_seed(0, 0) == image_seed(0, 0)
    seeds = {image_seed(s, k) for s in range(3) for k in range(50)}
    assert len(seeds) == 150  # no collisions between neighbouring (seed, k)
    assert all(0 <= s < 2**63 for s in seeds)
    assert image_seed(0, 1) != image_seed(1, 0)


def test_key_ignores_count_and_batch_size_but_not_the_pixels_settings(tmp_path):
    base = plan_class_set(cfg(), KEY, tmp_path)
    assert plan_class_set(cfg(count=50, batch_size=7), KEY, tmp_path).folder == base.folder
    assert base.folder.parent == tmp_path / "likeness" / "class_images"
    for change in (
        {"class_prompt": "a photo of a cat"},
        {"negative_prompt": "blurry"},
        {"resolution": 40},
        {"steps": 3},
        {"cfg": 5.0},
        {"sampler": "ddim"},
        {"seed": 1},
    ):
        assert plan_class_set(cfg(**change), KEY, tmp_path).folder != base.folder, change
    assert plan_class_set(cfg(), "other-model", tmp_path).folder != base.folder


# --- generation, reuse, top-up ---------------------------------------------------------------------------------


def test_generate_reuse_top_up_and_shrink(tmp_path, tiny_components):
    seen = []
    r1 = generate_class_images(
        cfg(), components=tiny_components, model_key=KEY, output_root=tmp_path, on_image=lambda *a: seen.append(a)
    )
    folder = r1.folder
    assert (r1.generated, r1.reused, r1.count, r1.complete, r1.stopped) == (3, 0, 3, True, False)
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [s[2].name for s in seen] == [image_name(k) for k in range(3)]
    assert listing(folder) == sorted([MANIFEST] + [image_name(k) for k in range(3)])
    for p in r1.files:
        with Image.open(p) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["key"] == r1.key == folder.name
    assert manifest["count"] == 3 and manifest["complete"] and manifest["generated_total"] == 3
    assert manifest["settings"]["class_prompt"] == "a photo of a dog" and manifest["settings"]["model"] == KEY
    before = mtimes(folder)

    # same settings, another batch size: nothing generated, nothing rewritten
    r2 = generate_class_images(cfg(batch_size=3), components=tiny_components, model_key=KEY, output_root=tmp_path)
    assert (r2.generated, r2.reused, r2.count, r2.folder) == (0, 3, 3, folder)
    assert mtimes(folder) == before

    # raise the count: only the difference is made
    r3 = generate_class_images(cfg(count=5), components=tiny_components, model_key=KEY, output_root=tmp_path)
    assert (r3.generated, r3.reused, r3.count) == (2, 3, 5)
    after = mtimes(folder)
    assert {k: after[k] for k in before} == before
    assert json.loads((folder / MANIFEST).read_text())["generated_total"] == 5

    # lower it: the folder holds exactly `count` images (surplus waits hidden), and comes back when asked again
    r4 = generate_class_images(cfg(count=2), components=tiny_components, model_key=KEY, output_root=tmp_path)
    assert (r4.generated, r4.count) == (0, 2)
    assert sorted(p.name for p in folder.glob("*.png")) == [image_name(0), image_name(1)]
    assert sorted(p.name for p in (folder / SPARE).glob("*.png")) == [image_name(k) for k in (2, 3, 4)]
    handle = r4.dataset_handle()
    assert (handle.kind, handle.count, handle.folder, handle.prompt) == ("class", 2, str(folder), "a photo of a dog")
    r5 = generate_class_images(cfg(count=5), components=tiny_components, model_key=KEY, output_root=tmp_path)
    assert (r5.generated, r5.count) == (0, 5)
    assert mtimes(folder) == after


def test_interrupted_then_resumed_set_is_pixel_identical_to_one_run(tmp_path, tiny_components):
    one = generate_class_images(cfg(count=5), components=tiny_components, model_key=KEY, output_root=tmp_path / "one")

    # cancel while the second batch is being denoised: batch 1 is saved, batch 2 dropped whole
    calls = {"n": 0}

    def stop_in_second_batch() -> bool:
        calls["n"] += 1
        return calls["n"] > 4  # 1 poll before batch 1 + 2 steps, 1 poll before batch 2, then mid-batch

    part = generate_class_images(
        cfg(count=5),
        components=tiny_components,
        model_key=KEY,
        output_root=tmp_path / "two",
        stop=stop_in_second_batch,
    )
    assert part.stopped and (part.generated, part.count, part.complete) == (2, 2, False)
    folder = part.folder
    assert listing(folder) == sorted([MANIFEST, image_name(0), image_name(1)])  # no temp files, no half images
    manifest = json.loads((folder / MANIFEST).read_text())
    assert (manifest["count"], manifest["complete"]) == (2, False)

    # a host that cancels from its progress hook (the exception escapes after a whole batch was saved)
    class Cancelled(Exception):
        pass

    def cancel_on_fourth(done, total, path):
        if done == 4:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate_class_images(
            cfg(count=5), components=tiny_components, model_key=KEY, output_root=tmp_path / "two",
            on_image=cancel_on_fourth,
        )  # fmt: skip
    assert listing(folder) == sorted([MANIFEST] + [image_name(k) for k in range(4)])

    rest = generate_class_images(cfg(count=5), components=tiny_components, model_key=KEY, output_root=tmp_path / "two")
    assert (rest.generated, rest.reused, rest.count, rest.complete) == (1, 4, 5, True)
    for a, b in zip(one.files, rest.files, strict=True):
        assert a.name == b.name
        assert np.array_equal(pixels(a), pixels(b)), a.name
    # and the images differ from each other (per-image seeds, not one seed for all)
    assert not np.array_equal(pixels(one.files[0]), pixels(one.files[1]))


def test_batch_size_does_not_change_the_images(tmp_path, tiny_components):
    a = generate_class_images(
        cfg(count=3, batch_size=1, sampler="ddim"),
        components=tiny_components,
        model_key=KEY,
        output_root=tmp_path / "a",
    )
    b = generate_class_images(
        cfg(count=3, batch_size=3, sampler="ddim"),
        components=tiny_components,
        model_key=KEY,
        output_root=tmp_path / "b",
    )
    for pa, pb in zip(a.files, b.files, strict=True):
        diff = np.abs(pixels(pa).astype(int) - pixels(pb).astype(int))
        assert diff.max() <= 1, pa.name  # same noise per image; batched float rounding at most flips one level


def test_components_are_hashed_when_no_key_is_given(tmp_path, tiny_components):
    from trainers.classgen import components_key

    k1 = components_key(tiny_components)
    assert k1 == components_key(tiny_components) and len(k1) == 64
    r = generate_class_images(cfg(count=1, batch_size=1), components=tiny_components, output_root=tmp_path)
    assert json.loads((r.folder / MANIFEST).read_text())["settings"]["model"] == k1


def test_stale_temporary_files_are_removed(tmp_path, tiny_components):
    plan = plan_class_set(cfg(count=1), KEY, tmp_path)
    plan.folder.mkdir(parents=True)
    stale = plan.folder / f".{image_name(0)}.abc123de.part"  # what atomic_path's mkstemp leaves when killed
    stale.write_bytes(b"half a png")
    foreign = plan.folder / ".notes.part"  # not a name we make: left alone
    foreign.write_bytes(b"mine")
    r = generate_class_images(cfg(count=1), components=tiny_components, model_key=KEY, output_root=tmp_path)
    assert r.generated == 1 and not stale.exists() and foreign.exists()
    assert listing(r.folder) == sorted([".notes.part", MANIFEST, image_name(0)])


# --- user folders ----------------------------------------------------------------------------------------------


def test_user_folder_refuses_foreign_images_other_settings_and_escapes(tmp_path, tiny_components):
    own = tmp_path / "mine"
    r = generate_class_images(
        cfg(count=1, output_folder=str(own)), components=tiny_components, model_key=KEY, output_root=tmp_path
    )
    assert r.folder == own and (own / image_name(0)).is_file() and (own / MANIFEST).is_file()
    with pytest.raises(ConfigError, match="made with other settings"):
        plan_class_set(cfg(count=1, seed=5, output_folder=str(own)), KEY, tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    Image.new("RGB", (8, 8)).save(foreign / "me.jpg")
    with pytest.raises(ConfigError, match="not made by Likeness"):
        plan_class_set(cfg(output_folder=str(foreign)), KEY, tmp_path)
    with pytest.raises(ConfigError, match="outside the output folder"):
        plan_class_set(cfg(output_folder="../elsewhere"), KEY, tmp_path / "out")
    rel = plan_class_set(cfg(output_folder="dogs"), KEY, tmp_path / "out")
    assert rel.folder == (tmp_path / "out" / "dogs").resolve()


# --- an image batch made elsewhere -------------------------------------------------------------------------------


def test_save_image_batch_stores_a_comfy_image_batch(tmp_path, pack):
    import torch

    from likeness_pack.nodes.images import image_to_pil
    from likeness_pack.trainers.errors import ConfigError as PackConfigError

    g = torch.Generator().manual_seed(0)
    batch = torch.rand((3, 40, 48, 3), generator=g)
    r = save_image_batch(image_to_pil(batch), cfg(count=99), output_root=tmp_path)
    assert (r.count, r.generated, r.reused, r.requested) == (3, 0, 0, 3)
    assert listing(r.folder) == sorted([MANIFEST] + [image_name(k) for k in range(3)])
    expected = (batch[1].numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(pixels(r.files[1]), expected)
    handle = r.dataset_handle()
    assert handle.kind == "class" and handle.count == 3 and handle.prompt == "a photo of a dog"
    before = mtimes(r.folder)
    again = save_image_batch(image_to_pil(batch), cfg(), output_root=tmp_path)
    assert again.folder == r.folder and again.reused == 3 and mtimes(r.folder) == before
    other = save_image_batch(image_to_pil(batch[:2]), cfg(), output_root=tmp_path)
    assert other.folder != r.folder and other.count == 2
    with pytest.raises(PackConfigError, match="shape"):
        image_to_pil(torch.rand(4, 4))  # the node converts its IMAGE input before the engine sees it
    with pytest.raises(ConfigError, match="empty"):
        save_image_batch([], cfg(), output_root=tmp_path)


def test_class_images_in_a_portrait_bucket_keep_square_keys_stable(tmp_path, tiny_components):
    """width/height make class images for a non-square training bucket; square sets keep the keys they had."""
    from trainers.classgen import set_key, set_settings

    square = set_settings(cfg(), KEY)
    assert "width" not in square and "height" not in square  # the keys of existing square sets do not move
    assert set_key(set_settings(cfg(width=32, height=32), KEY)) == set_key(square)
    tall = plan_class_set(cfg(width=24, height=32), KEY, tmp_path)
    assert tall.folder != plan_class_set(cfg(), KEY, tmp_path).folder
    r = generate_class_images(
        cfg(count=2, width=24, height=32), components=tiny_components, model_key=KEY, output_root=tmp_path
    )
    assert [Image.open(p).size for p in sorted(r.folder.glob("class_*.png"))] == [(24, 32), (24, 32)]
    with pytest.raises(ConfigError, match="'width' is 30"):
        configspec.validate(ClassImagesConfig(class_prompt="x", width=30))
