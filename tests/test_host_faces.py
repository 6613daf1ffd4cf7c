"""Likeness Face Crop Dataset in a real ComfyUI: a folder of photos in the host's input directory -> dataset,
preview (through the core PreviewImage node) and a report that lists every skipped file (also in /history)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

pytestmark = pytest.mark.host

ASTRONAUT = data.astronaut()


def _photo_folder(root: Path) -> dict[str, str]:
    """Photos for the run; returns the files that must be skipped, with a word of their reason."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    Image.fromarray(ASTRONAUT).save(root / "01_astronaut.jpg", quality=92)
    Image.fromarray(ASTRONAUT[:, ::-1]).resize((640, 640)).save(root / "02_mirrored.png")
    Image.fromarray(ASTRONAUT).convert("CMYK").save(root / "03_cmyk.JPG", quality=90)
    Image.fromarray(data.coffee()).resize((300, 200)).save(root / "04_coffee.png")
    (root / "05_empty.jpg").write_bytes(b"")
    (root / "06_notes.jpeg").write_text("not a photo")
    blob = (root / "01_astronaut.jpg").read_bytes()
    (root / "07_truncated.jpg").write_bytes(blob[: len(blob) // 3])
    return {
        "03_cmyk.JPG": "near-duplicate",
        "04_coffee.png": "no face found",
        "05_empty.jpg": "empty file",
        "06_notes.jpeg": "not an image",
        "07_truncated.jpg": "truncated",
    }


def test_face_crop_node_runs_in_comfyui(comfy_host):
    info = comfy_host.object_info("LikenessFaceCropDataset")
    assert info["category"] == "Likeness/dataset"
    assert info["output"] == ["LIKENESS_DATASET", "IMAGE", "STRING"]

    skipped = _photo_folder(Path(comfy_host.input_dir) / "likeness_test_faces")
    prompt = {
        "1": {
            "class_type": "LikenessFaceCropDataset",
            "inputs": {
                "folder": "likeness_test_faces",
                "instance_prompt": "photo of zwx person",
                "resolution": 256,
                "margin": 0.7,
                "no_face": "skip",
                "detector": "auto",
            },
        },
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }
    result = comfy_host.run(prompt, timeout=240).check()

    # The report STRING, as the node's ui text in /history: every skipped file with its reason.
    (report,) = result.outputs["1"]["text"]
    for name, why in skipped.items():
        line = next((ln for ln in report.splitlines() if ln.strip().startswith(f"- {name}: ")), None)
        assert line is not None and why in line, (name, report)
    assert "Face crop: 2 of 7 photos kept" in report and "Verdict: " in report

    # The dataset it describes is on disk under the host's output folder.
    folder = Path(re.search(r"Dataset folder: (.+)", report).group(1))
    assert folder.parent == Path(comfy_host.output_dir) / "likeness" / "datasets"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["0001.mask.png", "0001.png", "0001.txt", "0002.mask.png", "0002.png", "0002.txt", "report.json"]
    assert (folder / "0001.txt").read_text() == "photo of zwx person\n"
    assert json.loads((folder / "report.json").read_text())["summary"]["kept"] == 2

    # The preview output went through the core PreviewImage node: two 256x256 crops that match the dataset.
    previews = result.images("2")
    assert len(previews) == 2
    for shown, saved in zip(sorted(previews), ["0001.png", "0002.png"], strict=True):
        a = np.asarray(Image.open(shown).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(folder / saved).convert("RGB"), dtype=np.int16)
        assert a.shape == (256, 256, 3) and np.abs(a - b).max() <= 1

    # A progress bar, one step per photo.
    steps = [m["value"] for m in result.events("progress") if str(m.get("node")) == "1"]
    assert steps and steps[-1] == 7 and steps == sorted(steps)

    # Running again with the same photos reuses the dataset (cached by ComfyUI or by our content key): no copy.
    before = sorted(p.name for p in folder.parent.iterdir())
    comfy_host.run(prompt, timeout=120).check()
    assert sorted(p.name for p in folder.parent.iterdir()) == before
    assert sorted(p.name for p in folder.iterdir()) == names


def _upload(host, name: str, blob: bytes, *, kind: str, subfolder: str) -> int:
    """POST /upload/image as any web page can (the 2024 host accepts it from any origin)."""
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    parts = []
    for field, value in (("type", kind), ("subfolder", subfolder), ("overwrite", "true")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + blob
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(host.url + "/upload/image", data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


def test_a_crafted_report_uploaded_over_http_deletes_nothing_outside_the_dataset(comfy_host, tmp_path):
    """The attack of the adversarial pass: upload a report.json naming files outside the dataset folder (absolute
    and ../) into the output folder, queue the crop again: it runs, and those files are still there."""
    import os

    photos = Path(comfy_host.input_dir) / "likeness_attack"
    if photos.exists():
        shutil.rmtree(photos)
    photos.mkdir(parents=True)
    Image.fromarray(ASTRONAUT).save(photos / "me.jpg", quality=92)
    crop = {"folder": "likeness_attack", "instance_prompt": "photo of zwx person", "resolution": 128, "margin": 0.7,
            "no_face": "skip", "detector": "auto"}  # fmt: skip
    first = comfy_host.run({"1": {"class_type": "LikenessFaceCropDataset", "inputs": crop}}, timeout=240).check()
    folder = Path(re.search(r"Dataset folder: (.+)", first.outputs["1"]["text"][0]).group(1))
    victims = [tmp_path / "victim.txt", Path(comfy_host.input_dir) / "precious.txt"]
    for v in victims:
        v.write_text("precious")
    crafted = {
        "format": "likeness-facecrop",
        "key": "someone-else",
        "images": [
            {"status": "kept", "output": str(victims[0])},
            {"status": "kept", "output": os.path.relpath(victims[1], folder)},
        ],
        "summary": {"kept": 2},
    }
    subfolder = folder.relative_to(Path(comfy_host.output_dir)).as_posix()
    assert _upload(comfy_host, "report.json", json.dumps(crafted).encode(), kind="output", subfolder=subfolder) == 200
    assert json.loads((folder / "report.json").read_text())["key"] == "someone-else"
    again = comfy_host.run({"11": {"class_type": "LikenessFaceCropDataset", "inputs": crop}}, timeout=240).check()
    assert "1 of 1 photos kept" in again.outputs["11"]["text"][0]
    assert all(v.read_text() == "precious" for v in victims)
    assert json.loads((folder / "report.json").read_text())["key"] != "someone-else"
