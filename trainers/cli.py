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
    "classes": (".classgen.cli", "generate (or top up) a prior-preservation class image set"),
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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log lines too: -v what is done (info), -vv debug"
    )
    mod = importlib.import_module(module, __package__)
    add = getattr(mod, f"add_arguments_{command}", None) or mod.add_arguments
    add(parser)
    return parser


# Notices that look like failures but are not, dropped from the CLI's output: transformers 5 says this once when
# diffusers' pipeline module imports CLIP's image processor, which only a safety checker uses (Likeness never loads
# one), so a missing torchvision changes nothing here.
KNOWN_NOTICES = (("transformers.utils.import_utils", "requires torchvision (not installed)"),)


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def setup_logging(verbosity: int = 0) -> None:
    """Warnings and errors only by default (each command prints what it did itself, once), written above the progress
    bars; ``-v`` adds the engine's info lines, ``-vv`` debug. A program that set up logging keeps its handlers."""
    from .progress import LogHandler

    for name, text in KNOWN_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in logger.filters):
            logger.addFilter(_DropNotice(text))
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(LogHandler())
        root.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])
    elif verbosity:
        root.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)


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
    setup_logging(args.verbose)
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
