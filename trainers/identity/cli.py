"""``python -m trainers score --reference DIR IMAGE_OR_DIR... [--json] [--preview DIR]``: rank pictures by likeness.

The reference is a folder of photos of the subject (a Face Crop dataset, or the photos themselves); each picture (or
every picture in a folder) gets the faces found, its similarity to the subject (0-1, 0.5 = dlib's same-person
threshold) and the raw descriptor distance, or why it has no score. Output is a table, or JSON with ``--json``;
``--preview DIR`` also writes each picture with its face boxes and scores drawn. Results are in the order given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DatasetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, metavar="DIR", help="folder of photos of the subject")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="pictures to score, or folders of them")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--preview", metavar="DIR", help="write each picture with its face boxes and scores here")


def picture_files(items: list[str]) -> list[Path]:
    """The pictures named: files as given, folders as their images (sorted), in the order given."""
    from ..data.images import list_images

    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out += list_images(p)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p} does not exist; give picture files or folders of pictures to score")
    if not out:
        raise DatasetError(f"no pictures found in {', '.join(items)}")
    return out


def score_files(paths: list[Path], reference) -> list:
    """Score picture files against a reference (faces cached by file content); unreadable files get a reason."""
    from .. import collector
    from .reference import faces_of
    from .scoring import ImageScore, score_faces

    collector.resume()  # a command-line run paused the collector for its set-up (trainers/collector.py)
    out = []
    for i, path in enumerate(paths):
        try:
            faces = faces_of(path, reference.tag)
        except DatasetError as e:
            out.append(ImageScore(i, path.name, 0, None, None, reason=f"unreadable ({e})"))
            continue
        out.append(score_faces(faces, reference.centroid, index=i, name=str(path)))
    return out


def load_reference(folder: str):
    from .backend import load
    from .reference import build_reference

    load()  # a missing backend is one clear line (what to install) before any photo is read
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DatasetError(f"reference {root} is not a folder; give the folder of photos of the subject")
    ref = build_reference([root])
    if not ref.ready:
        raise DatasetError(f"reference {root}: no photo with a usable face ({ref.summary()})")
    return ref


def run(args: argparse.Namespace) -> int:
    from .scoring import DISTANCE_SCALE, SAME_PERSON, draw_scores, format_table

    ref = load_reference(args.reference)
    paths = picture_files(args.images)
    results = score_files(paths, ref)
    if args.preview:
        write_previews(Path(args.preview), paths, results, draw_scores)
    if args.json:
        data = {
            "reference": {"folder": args.reference, "photos": len(ref.photos), "used": len(ref.used),
                          "skipped": [{"name": p.name, "reason": p.reason} for p in ref.photos if not p.used]},
            "same_person": SAME_PERSON,
            "mapping": f"similarity = clamp(1 - distance / {DISTANCE_SCALE}, 0, 1)",
            "images": [r.as_dict() for r in results],
        }  # fmt: skip
        print(json.dumps(data, indent=2))
    else:
        print(format_table(results, ref))
    return 0


def write_previews(folder: Path, paths: list[Path], results: list, draw) -> None:
    from ..data.images import load_rgb
    from ..fsutil import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    for i, (path, result) in enumerate(zip(paths, results, strict=True)):
        if result.reason.startswith("unreadable"):
            continue
        with atomic_path(folder / f"{i + 1:04d}_{path.stem}.png", overwrite=True) as tmp:
            draw(load_rgb(path), result).save(tmp, format="PNG")
