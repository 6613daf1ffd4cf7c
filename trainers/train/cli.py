"""``python -m trainers dreambooth --config my.toml [key=value ...]`` (and ``lora``): train from the command line.

The CLI builds the same config object the ComfyUI node builds and calls the same ``train``; it only adds a text
progress bar and Ctrl+C handling (the first Ctrl+C asks the loop to stop cleanly and save a resumable state).

Another training command plugs in with one entry in ``CONFIGS``: ``command -> (module, config class name)``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time

from .. import configspec
from ..errors import ConfigError

# command -> (module relative to the ``trainers`` package, config class)
CONFIGS: dict[str, tuple[str, str]] = {
    "dreambooth": ("..train.config", "DreamBoothConfig"),
    "lora": ("..lora.config", "LoRAConfig"),
}


def config_class(command: str) -> type:
    module, name = CONFIGS[command]
    try:
        mod = importlib.import_module(module, __package__)
    except ImportError as e:
        raise ConfigError(f"'{command}' training is not available in this install ({e})") from None
    return getattr(mod, name)


def add_arguments_for(command: str, parser: argparse.ArgumentParser) -> None:
    configspec.add_arguments(parser, config_class(command))
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")


def run_for(command: str, args: argparse.Namespace) -> int:
    from .loop import train

    cfg = configspec.from_args(config_class(command), args)
    stop_requested = {"flag": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if stop_requested["flag"]:
            raise KeyboardInterrupt
        stop_requested["flag"] = True
        print("\nstopping after this step (Ctrl+C again to abort without saving)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        bar = TextProgress(enabled=not args.no_progress and sys.stderr.isatty())
        outcome = train(cfg, callbacks=bar, stop=lambda: stop_requested["flag"])
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    if outcome.state == "finished":
        print(f"saved {outcome.path} ({outcome.steps_done} steps, {outcome.elapsed:.0f} s)")
        return 0
    where = f"; resume with resume_from={outcome.state_path}" if outcome.state_path else ""
    print(f"stopped at step {outcome.steps_done} of {outcome.total_steps}{where}")
    return 130


class TextProgress:
    """A one-line progress bar on stderr (or a log line every few seconds when not a terminal)."""

    def __init__(self, enabled: bool = True, width: int = 30):
        self.enabled, self.width = enabled, width
        self.last_line = 0.0

    def on_progress(self, info) -> None:
        frac = info.step / max(info.total, 1)
        if info.phase != "training":
            text = f"{info.phase}..."
        else:
            eta = f"{info.eta:.0f}s" if info.eta is not None else "?"
            text = f"step {info.step}/{info.total} loss {info.loss_smoothed:.4f} lr {info.lr:.2e} eta {eta}"
            if info.loss_prior is not None:
                text += f" (subject {info.loss_instance:.4f}, prior {info.loss_prior:.4f})"
        if self.enabled:
            filled = int(frac * self.width)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {text}\x1b[K")
            sys.stderr.flush()
        elif time.monotonic() - self.last_line > 5 or info.step == info.total:
            self.last_line = time.monotonic()
            print(text, file=sys.stderr)

    def on_sample(self, step, images, prompts) -> None:
        self._line(f"step {step}: {len(images)} sample image(s)")

    def on_status(self, text: str) -> None:
        self._line(text)

    def _line(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
        print(text, file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def add_arguments_dreambooth(parser: argparse.ArgumentParser) -> None:
    add_arguments_for("dreambooth", parser)


def run_dreambooth(args: argparse.Namespace) -> int:
    return run_for("dreambooth", args)


def add_arguments_lora(parser: argparse.ArgumentParser) -> None:
    add_arguments_for("lora", parser)


def run_lora(args: argparse.Namespace) -> int:
    return run_for("lora", args)
