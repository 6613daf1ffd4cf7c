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
    bar = ClassProgress(config, config.base_model, args.output_root)
    try:
        result = generate_class_images(config, output_root=args.output_root, on_image=bar)
    except KeyboardInterrupt:  # images saved so far stay; the next run continues
        print("stopped; run again to complete the set", flush=True)
        return 130
    finally:
        bar.close()
    if is_main():
        print(result.summary())
        print(result.folder)
    return 0


class ClassProgress:
    """``on_image`` for a class set: a bar at a terminal (open at once when images are missing, so loading the model
    is not a silence), else one line per image on stdout (``lines``)."""

    def __init__(self, config: ClassImagesConfig, model, output_root, lines: bool = True) -> None:
        from ..progress import Bar, interactive

        self.bar: Bar | None = None
        self.lines = lines
        if interactive():
            from .store import model_key_of, plan_class_set

            plan = plan_class_set(config, model_key_of(model, config.vae_path), output_root)
            if plan.missing:  # a complete set is reused at once: no bar
                self.bar = Bar("class images", config.count, unit="image", initial=len(plan.present))

    def __call__(self, done: int, total: int, path: Path) -> None:
        if self.bar is not None:
            self.bar.to(done, total)
        elif self.lines:
            print(f"[{done}/{total}] {path}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
