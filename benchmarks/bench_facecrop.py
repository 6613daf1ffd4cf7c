"""Face Crop Dataset throughput: images/s for 1024x1024 JPEG photos on CPU (goal: >= 20/s on 2 cores).

    .venv/bin/python benchmarks/bench_facecrop.py [--count 48] [--workers 0] [--resolution 512]

The photos are made from scikit-image's astronaut (one face each: random zoom, shift and mirror, so every crop
differs), written as 1024x1024 JPEGs (quality 90). The whole pipeline is timed: decode, detect (Haar), crop,
LANCZOS resize, sharpness, hash, PNG + caption writing, report. A second pass times each stage on one thread.
The load average is printed: on a shared machine, wall time is longer than CPU time says it should be.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.data.crop import CropBox, CropConfig, build_dataset, cut_square, dhash, face_crop_box, sharpness  # noqa: E402
from trainers.data.faces import HaarDetector, choose_face  # noqa: E402
from trainers.data.images import read_image  # noqa: E402


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    from skimage import data

    rng = np.random.default_rng(seed)
    base = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)
    paths = []
    for i in range(count):
        # A random window of the (upscaled) photo that keeps the face (about x 356..540, y 138..322) inside.
        side = int(1024 / rng.uniform(1.0, 1.5))
        x = int(rng.integers(max(0, 600 - side), min(300, 1024 - side) + 1))
        y = int(rng.integers(max(0, 400 - side), min(80, 1024 - side) + 1))
        img = base.resize((1024, 1024), Image.Resampling.BICUBIC, box=(x, y, x + side, y + side))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = folder / f"photo_{i:03d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def stage_times(paths: list[Path], resolution: int) -> dict[str, float]:
    """Milliseconds per image for each stage, one thread."""
    det = HaarDetector()
    t = dict.fromkeys(("decode", "detect", "crop+resize", "measure", "write png"), 0.0)
    out = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    for i, p in enumerate(paths):
        t0 = time.process_time()
        img = read_image(p).image
        t1 = time.process_time()
        faces = det.detect(np.asarray(img))
        t2 = time.process_time()
        face = choose_face(faces, *img.size)
        box = face_crop_box(face, *img.size, 0.7) if face else CropBox(0, 0, min(img.size))
        crop = cut_square(img, box, resolution)
        t3 = time.process_time()
        sharpness(np.asarray(crop.convert("L")))
        dhash(crop)
        t4 = time.process_time()
        crop.save(out / f"{i}.png", compress_level=1)
        t5 = time.process_time()
        for k, a, b in (
            ("decode", t0, t1),
            ("detect", t1, t2),
            ("crop+resize", t2, t3),
            ("measure", t3, t4),
            ("write png", t4, t5),
        ):
            t[k] += (b - a) * 1000 / len(paths)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core (at most 4)")
    ap.add_argument("--resolution", type=int, default=512)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-facecrop-") as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        paths = make_photos(photos, args.count)
        cfg = CropConfig(resolution=args.resolution, workers=args.workers, duplicates="keep")
        load0 = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        outcome = build_dataset(cfg, input_folder=photos, output_folder=Path(tmp) / "dataset")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        load1 = os.getloadavg()[0]
        kept = outcome.count
        print(f"cores: {os.cpu_count()}  workers: {args.workers or min(4, os.cpu_count() or 1)}")
        print(f"load average before/after: {load0:.1f} / {load1:.1f}")
        print(f"{args.count} photos 1024x1024 -> {kept} crops {args.resolution}x{args.resolution}")
        print(f"wall: {wall:.2f} s  -> {args.count / wall:.1f} images/s")
        print(f"process CPU: {cpu:.2f} s -> {1000 * cpu / args.count:.0f} ms CPU per image")
        stages = stage_times(paths[: min(16, len(paths))], args.resolution)
        print("per stage, one thread (CPU ms/image): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
