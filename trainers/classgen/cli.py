"""``python -m trainers classes --config FILE``: generate (or top up) a class set from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .store import ClassImagesConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..configspec import add_arguments as add_config_arguments

    add_config_arguments(parser, ClassImagesConfig)
    parser.add_argument(
        "--output-root",
        metavar="DIR",
        default="output",
        help="root for the automatic folder <DIR>/likeness/class_images/<key>/ (default: ./output)",
    )


def run(args: argparse.Namespace) -> int:
    from ..configspec import from_args
    from ..distributed import check_launch, is_main
    from .generate import generate_class_images

    check_launch()
    config = from_args(ClassImagesConfig, args)
    if not config.base_model:
        raise ConfigError("option 'base_model' is not set; pass --base-model MODEL.safetensors (or a diffusers folder)")

    def on_image(done: int, total: int, path: Path) -> None:
        print(f"[{done}/{total}] {path}", flush=True)

    try:
        result = generate_class_images(config, output_root=args.output_root, on_image=on_image)
    except KeyboardInterrupt:  # images saved so far stay; the next run continues
        print("stopped; run again to complete the set", flush=True)
        return 130
    if is_main():
        print(result.summary())
        print(result.folder)
    return 0
