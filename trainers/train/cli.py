"""``python -m trainers dreambooth --config my.toml [key=value ...]`` (and ``lora``): train from the command line.

The CLI builds the same config object the ComfyUI node builds and runs it through the same
:class:`~trainers.train.session.Session` (same content key, reuse, output naming and automatic resume); it only adds a
text progress bar and Ctrl+C handling (the first Ctrl+C asks the loop to stop cleanly and save a resumable state).

Another training command plugs in with one entry in ``CONFIGS``: ``command -> (module, config class name)``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

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
    parser.add_argument("--force", action="store_true", help="train again even if this result exists already")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")


def make_session(cfg, *, force: bool = False):
    """The session the nodes would make for this config: the base model's identity from its file (and VAE)."""
    from ..fsutil import cache_dir
    from ..model_io import make_model_handle
    from .session import Session

    if not str(cfg.base_model).strip():
        raise ConfigError("option 'base_model' is not set; pass --base-model MODEL.safetensors (or a diffusers folder)")
    handle = make_model_handle(cfg.base_model, vae_path=cfg.vae_path)
    session = Session(
        cfg, model_key=handle.key, base_hash=handle.content_hash, state_root=cache_dir() / "training_state", force=force
    )
    return session, handle


def run_session(session, handle, tokenizer, callbacks, stop=None):
    """Reuse the earlier result, or plan, load the model (with its separate VAE) and train."""
    from ..model_io import load_components

    found = session.existing()
    if found is not None:
        return found
    session.plan()  # every check before the model is loaded
    callbacks.on_status(f"loading {handle.path}")
    return session.train(load_components(handle, tokenizer=tokenizer), callbacks=callbacks, stop=stop)


def run_for(command: str, args: argparse.Namespace) -> int:
    from ..distributed import check_launch, is_main
    from .events import Callbacks
    from .memory import plan_memory

    check_launch()
    cfg, memory = plan_memory(configspec.from_args(config_class(command), args))  # fits the GPU; says what changed
    if memory and is_main():
        print(memory, file=sys.stderr)
    session, handle = make_session(cfg, force=args.force)
    stop_requested = {"flag": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if stop_requested["flag"]:
            raise KeyboardInterrupt
        stop_requested["flag"] = True
        print("\nstopping after this step (Ctrl+C again to abort without saving)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        bar = TextProgress(enabled=not args.no_progress and sys.stderr.isatty(), title=command)
        shown = bar if is_main() else Callbacks()  # several processes: the main one reports
        result = run_session(session, handle, cfg.tokenizer, shown, stop=lambda: stop_requested["flag"])
    finally:
        signal.signal(signal.SIGINT, previous)
    bar.close()
    if not is_main():
        return 0 if result.state in ("reused", "finished") else 130
    if result.state == "reused":
        print(f"reused {result.path}: it was trained with this model, these images and options (--force trains again)")
        return 0
    if result.state == "finished":
        print(f"saved {result.path} ({result.steps_done} steps, {result.outcome.elapsed:.0f} s)")
        return 0
    where = f"; run the same command again to resume from {result.state_path}" if result.state_path else ""
    print(f"stopped at step {result.steps_done} of {result.total_steps}{where}")
    return 130


class TextProgress:
    """Training progress on stderr: at a terminal a tqdm bar (step/total, loss, lr, it/s, ETA) and a bar while the
    result is saved; otherwise a line every few seconds (logs, CI). Status lines are written above the bar."""

    def __init__(self, enabled: bool = True, title: str = "training"):
        self.enabled, self.title = enabled, title
        self.last_line = 0.0
        self.bar = None
        self.saving = None  # the saving bar, open while the result is written
        self.saving_path: str | None = None

    def on_progress(self, info) -> None:
        if info.phase == "validation" and info.loss_validation is not None:
            self._line(f"step {info.step}: validation loss {info.loss_validation:.5f}")
            return
        if info.phase == "saving":
            self._start_saving()
            return
        self._end_saving()
        if info.phase != "training":
            return
        if self.enabled:
            prior = f" prior {info.loss_prior:.3f}" if info.loss_prior is not None else ""
            text = f"loss {info.loss_smoothed:.4f}{prior} lr {info.lr:.1e}"
            if self.bar is None:
                from ..progress import Bar

                self.bar = Bar(self.title, info.total, unit="step", initial=max(info.step - 1, 0), enabled=True)
            self.bar.to(info.step, info.total, postfix=text)
        elif time.monotonic() - self.last_line > 5 or info.step == info.total:
            self.last_line = time.monotonic()
            eta = f"{info.eta:.0f}s" if info.eta is not None else "?"
            text = f"loss {info.loss_smoothed:.4f} lr {info.lr:.2e}"
            if info.loss_prior is not None:
                text += f" (subject {info.loss_instance:.4f}, prior {info.loss_prior:.4f})"
            print(f"step {info.step}/{info.total} {text} eta {eta}", file=sys.stderr)

    def _start_saving(self) -> None:
        if self.saving is None and self.enabled:
            from ..progress import Bar

            if self.bar is not None:
                self.bar.close()
                self.bar = None
            self.saving = Bar("saving", None, bytes_=True, enabled=True)

    def _end_saving(self) -> None:
        if self.saving is not None:
            from ..progress import finish_saving

            finish_saving(self.saving, self.saving_path)
            self.saving.close()
            self.saving, self.saving_path = None, None

    def on_sample(self, step, images, prompts) -> None:
        self._end_saving()
        self._line(f"step {step}: {len(images)} sample image(s)")

    def on_status(self, text: str) -> None:
        if self.saving is not None and text.startswith("saving ") and self.saving_path is None:
            self.saving_path = text[len("saving ") :]
            self.saving.describe(f"saving {Path(self.saving_path).name}")
            return
        self._end_saving()
        self._line(text)

    def on_evaluation(self, info) -> None:
        from .evaluation import evaluation_line

        self._line(f"step {info.step}: {evaluation_line(info)}")

    def _line(self, text: str) -> None:
        if self.enabled:
            from ..progress import write

            write(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        self._end_saving()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def add_arguments_dreambooth(parser: argparse.ArgumentParser) -> None:
    add_arguments_for("dreambooth", parser)


def run_dreambooth(args: argparse.Namespace) -> int:
    return run_for("dreambooth", args)


def add_arguments_lora(parser: argparse.ArgumentParser) -> None:
    add_arguments_for("lora", parser)


def run_lora(args: argparse.Namespace) -> int:
    return run_for("lora", args)
