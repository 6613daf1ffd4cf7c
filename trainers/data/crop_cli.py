"""``python -m trainers crop --input photos/ --output dataset/``: face-crop a folder of photos into a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..configspec import add_arguments as add_config_arguments
from ..configspec import from_args
from ..progress import Bar
from .crop import CropConfig, build_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="FOLDER", help="folder with the subject's photos")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", metavar="FOLDER", help="dataset folder to write (new, empty or an earlier dataset)")
    out.add_argument(
        "--output-root",
        metavar="FOLDER",
        help="write to FOLDER/likeness/datasets/<key>/ (a folder named by the photos and options; reused on re-runs)",
    )
    parser.add_argument("--json", action="store_true", help="print report.json instead of the text report")
    add_config_arguments(parser, CropConfig)


class CropProgress:
    """``build_dataset``'s progress callback: a bar at a terminal, else one line per photo on stderr (``lines``)."""

    def __init__(self, lines: bool = True) -> None:
        self.bar: Bar | None = None
        self.skipped = 0
        self.lines = lines

    def __call__(self, done: int, n: int, rep) -> None:
        self.skipped += not rep.output
        if self.bar is None:
            self.bar = Bar("face crop", n, unit="photo")
        if self.bar.enabled:
            self.bar.to(done, postfix=f"{self.skipped} skipped" if self.skipped else None)
        elif self.lines:
            state = rep.output or f"skipped ({rep.reason})"
            print(f"[{done}/{n}] {rep.source}: {state}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    cfg = from_args(CropConfig, args)
    progress = CropProgress()
    try:
        outcome = build_dataset(
            cfg,
            input_folder=Path(args.input),
            output_folder=Path(args.output) if args.output else None,
            output_root=Path(args.output_root) if args.output_root else None,
            progress=progress,
        )
    finally:
        progress.close()
    if args.json:
        import json

        print(json.dumps(outcome.report, indent=2))
    else:
        if outcome.reused:
            print(f"(reused the dataset already made from these photos and options: {outcome.folder})")
        print(outcome.text)
    return 0 if outcome.count else 1
