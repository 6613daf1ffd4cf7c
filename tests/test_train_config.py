"""Bad training inputs are answered with clear errors before any model is touched; the dataset rules."""

from __future__ import annotations

import pytest
from PIL import Image
from train_helpers import subject_images, tiny_config

from trainers.errors import ConfigError, DatasetError
from trainers.fsutil import safe_name
from trainers.train import train
from trainers.train.dataset import Order, load_image_set

NOT_MODELS = object()  # train() must fail before it touches the components


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"steps": 0}, ["steps", "at least 1"]),
        ({"steps": -5}, ["steps", "at least 1"]),
        ({"learning_rate": -1e-4}, ["learning_rate", "at least 0"]),
        ({"resolution": 100}, ["resolution", "multiple of 8", "96"]),
        ({"prior_preservation": True, "class_data": None}, ["prior preservation needs class images", "class_data"]),
        ({"optimizer": "adamw8bit"}, ["bitsandbytes", "optimizer=adamw"]),
        ({"lr_scheduler": "linear"}, ["lr_scheduler", "constant, constant_with_warmup, cosine"]),
        ({"instance_prompt": "  "}, ["instance_prompt", "empty"]),
    ],
)
def test_bad_options_are_config_errors(tmp_path, overrides, words):
    if overrides.get("optimizer") == "adamw8bit":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes"):
            pytest.skip("bitsandbytes is installed here: the message is for machines without it")
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, **overrides)
    for w in words:
        assert w in str(e.value)


def test_bad_folders_fail_before_training(tmp_path):
    subject_images(tmp_path / "inst")
    missing = tiny_config(tmp_path, instance_data=str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="does not exist"):
        train(missing, components=NOT_MODELS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        train(tiny_config(tmp_path, instance_data=str(tmp_path / "empty")), components=NOT_MODELS)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("<html>not a photo</html>")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no readable images") as e:
        train(tiny_config(tmp_path, instance_data=str(bad)), components=NOT_MODELS)
    assert "a.jpg" in str(e.value)
    no_class = tiny_config(tmp_path, prior_preservation=True, class_data=str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="class folder .* holds no images"):
        train(no_class, components=NOT_MODELS)
    (tmp_path / "out.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="already exists"):
        train(tiny_config(tmp_path), components=NOT_MODELS)


def test_output_names_must_be_plain():
    for bad in ("../x", "a/b", "..", ".hidden", ""):
        with pytest.raises(ConfigError, match="not a plain name"):
            safe_name(bad)
    assert safe_name("my subject-1") == "my subject-1"


def test_kohya_folders_captions_and_seeded_order(tmp_path):
    root = tmp_path / "data"
    subject_images(root, n=1)
    subject_images(root / "3_sks woman", n=2)
    subject_images(root / "notes", n=1)  # not '<repeats>_<name>': ignored
    (root / "subject_0.txt").write_text("a photo of sks woman smiling\n")
    (root / "3_sks woman" / "broken.png").write_bytes(b"not png")
    s = load_image_set(root, "a photo of sks woman", 32, "instance")
    assert len(s) == 1 + 3 * 2 and len(s.unique) == 3
    assert s.examples[0].caption == "a photo of sks woman smiling"
    assert {e.caption for e in s.examples[1:]} == {"a photo of sks woman"}
    assert len(s.skipped) == 1 and "broken.png" in s.skipped[0]
    assert all(len(e.pixels) == 32 * 32 * 3 for e in s.unique)
    a, b, other = Order(7, 0, 1, True), Order(7, 0, 1, True), Order(7, 1, 1, True)
    seq = [a(k) for k in range(21)]
    assert seq == [b(k) for k in reversed(range(21))][::-1]  # a pure function of k (any call order)
    assert seq != [other(k) for k in range(21)]
    for epoch in range(3):
        assert sorted(i for i, _ in seq[epoch * 7 : epoch * 7 + 7]) == list(range(7))
    assert {f for _, f in seq} == {True, False}
    assert not any(f for _, f in (Order(7, 0, 1, False)(k) for k in range(21)))


def test_non_square_images_are_centre_cropped(tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    im = Image.new("RGB", (96, 48), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 24, 48))  # a blue strip on the left quarter is cropped away
    im.save(folder / "wide.png")
    s = load_image_set(folder, "p", 32, "instance")
    px = Image.frombytes("RGB", (32, 32), s.examples[0].pixels)
    assert px.getpixel((0, 16))[0] > 200 and px.getpixel((0, 16))[2] < 50
