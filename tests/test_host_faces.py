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
    assert names == ["0001.png", "0001.txt", "0002.png", "0002.txt", "report.json"]
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
