"""The README's main job (`./scripts/demo.sh` → `python -m trainers demo`), run the way a newcomer runs it: in a
terminal. Its output is read through a pseudo-terminal, so the progress bars are drawn as a person sees them.

The first run must show a bar for every phase a person waits through (face crop, class images, each training,
each save, each set of samples), no traceback and no notice that looks like a failure, each message once, and say
that the tiny models draw noise; every output it prints exists. The second run reuses what the first made (the
model files are byte-stable, so the content keys hold). Fewer steps than the default keep it quick; the code path
is the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BARS = ("face crop", "class images", "dreambooth", "saving dreambooth.safetensors", "lora", "saving lora.safetensors",
        "dreambooth samples", "lora samples", "saving likeness-tiny-sd15.safetensors")  # fmt: skip
ALARMING = ("Traceback", "Failed to initialize NumPy", "requires torchvision", "WARNING", "Warning:", "error")


def run_in_terminal(
    cmd: list[str], env: dict[str, str], size: tuple[int, int] | None, timeout: float
) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as stdin/stdout/stderr (``size`` = columns, rows; None: a terminal that
    reports 0×0, as some CI runners do); returns the exit status and everything it wrote, control codes removed."""
    master, slave = pty.openpty()
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise AssertionError(f"the demo took more than {timeout:.0f} s")
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def screen_lines(text: str) -> list[str]:
    """What stays on screen: each line as last drawn (a bar redraws its line after a carriage return)."""
    return [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]


def test_demo_in_a_terminal_shows_every_phase_and_reuses_on_a_second_run(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1", LIKENESS_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "trainers", "demo", "--output", str(out), "--steps", "3", "--lora-steps", "3",
           "--class-count", "2"]  # fmt: skip
    code, first = run_in_terminal(cmd, env, (120, 40), timeout=900)
    assert code == 0, first[-4000:]
    shown = screen_lines(first)
    for name in BARS:  # a bar for each phase, drawn to its end
        assert any(re.match(rf"{re.escape(name)}: 100%\|.*\|", line) for line in shown), (name, first[-4000:])
    for word in ALARMING:
        assert word not in first, (word, first[-4000:])
    steps = [line for line in shown if re.match(r"\[\d+\] ", line)]
    assert len(steps) == len(set(steps)) == 10 and sum("16 usable images" in line for line in shown) == 1
    assert "[5] face crop: 16 usable images: enough for DreamBooth (15+)" in shown  # its own photos pass its check
    assert "colour noise: that is expected" in first  # what the tiny models draw is said
    outputs = json.loads((out / "outputs.json").read_text())
    for name, path in outputs.items():
        assert os.path.exists(path), name
        assert path in first  # printed for the user
    assert "round trip bit-exact" in first
    yaml = (out / "extra_model_paths.yaml").read_text()
    assert f"base_path: {out / 'models'}" in yaml and "checkpoints: checkpoints" in yaml
    assert os.path.getsize(outputs["comfyui_checkpoint"]) > 400e6  # full CLIP-L + SD VAE, fp16 (~465 MB)
    _check_results(outputs)

    # the same demo again (a terminal that reports no size): everything found again, nothing made twice
    code, again = run_in_terminal(cmd, env, None, timeout=900)
    assert code == 0, again[-4000:]
    shown = screen_lines(again)
    assert any(
        re.match(r"\[\d+\] class images: 2/2 class images \(complete\): 0 generated, 2 reused", s) for s in shown
    )
    for kind in ("dreambooth", "lora"):
        assert any(re.match(rf"\[\d+\] {kind}: reused the result", s) for s in shown), (kind, again[-3000:])
    assert any("face crop: reused the dataset" in s for s in shown)
    assert any("comfyui model: reused" in s for s in shown)
    assert any(re.match(r"dreambooth samples: 100%\|.*\|", s) for s in shown)  # bars drawn at a 0×0 terminal too
    for word in ALARMING:
        assert word not in again, (word, again[-3000:])


def _check_results(outputs: dict[str, str]) -> None:
    """Trained results are real files of the right kind; samples are 3:4 portraits."""
    from PIL import Image
    from safetensors import safe_open

    with safe_open(outputs["dreambooth"], "pt") as f:
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())  # noqa: SIM118
    with safe_open(outputs["lora"], "pt") as f:
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in f.keys())  # noqa: SIM118
    for name in ("dreambooth samples", "lora samples"):
        w, h = Image.open(outputs[name]).size
        assert h * 2 * 3 == w * 4  # two 3:4 portraits side by side
