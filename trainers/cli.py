"""``python -m trainers <command> ...``: the command-line front end.

Each command lives in its own module with two functions, ``add_arguments(parser)`` and ``run(args) -> int``; this
file only lists them, so commands stay independent and importing the CLI stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import LikenessError

# command -> (module relative to this package, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (".demo", "run the whole pipeline on embedded defaults (tiny model, sample photos)"),
    "convert": (".model_io.cli", "inspect / convert an SD1.5 checkpoint (single file <-> diffusers)"),
    "crop": (".data.crop_cli", "face-crop a folder of photos into a training dataset"),
    "classes": (".classgen", "generate (or top up) a prior-preservation class image set"),
    "dreambooth": (".train.cli", "DreamBooth fine-tuning of the whole UNet (and text encoder)"),
    "lora": (".train.cli", "LoRA training on the same engine"),
    "score": (".identity.cli", "likeness: score pictures against photos of the subject (face identity)"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<12}{help_text}" for name, (_, help_text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="python -m trainers",
        description="Likeness: SD1.5 DreamBooth/LoRA tools",
        epilog=f"commands:\n{lines}\n\n'python -m trainers COMMAND --help' shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one command (only that command's module is imported)."""
    module, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"python -m trainers {command}", description=help_text)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    mod = importlib.import_module(module, __package__)
    add = getattr(mod, f"add_arguments_{command}", None) or mod.add_arguments
    add(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top = _top_parser()
        if argv and argv[0] not in ("-h", "--help"):
            top.print_usage(sys.stderr)
            print(f"error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        top.print_help()
        return 0 if argv else 2
    command = argv[0]
    args = build_parser(command).parse_args(argv[1:])
    args.command = command
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    mod = importlib.import_module(COMMANDS[command][0], __package__)
    run = getattr(mod, f"run_{command}", None) or mod.run
    try:
        return int(run(args) or 0)
    except LikenessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
