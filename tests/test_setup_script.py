"""``scripts/setup.sh`` on a fresh clone (what ``demo.sh`` and ``test.sh`` run first) prints nothing that looks like a
failure: torch imported before numpy is installed says "Failed to initialize NumPy".

A real first setup downloads torch, so the script runs here against a stand-in Python: ``-m venv`` and ``-m pip``
are recorded (pip "installs" a stand-in torch, and numpy with the requirements or when asked), everything else runs
on this Python with no site-packages but the stand-in ones. The stand-in torch says what the real one says when it
is imported without numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

FAKE_PYTHON = r"""#!/usr/bin/env bash
state="__STATE__"
site="$state/site"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $*" >> "$state/log"
  for arg in "$@"; do
    case "$arg" in
      torch==*) mkdir -p "$site/torch" "$site/torch-2.13.0.dist-info"
        cp "$state/torch_init.py" "$site/torch/__init__.py"
        printf 'Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n' > "$site/torch-2.13.0.dist-info/METADATA" ;;
      numpy|*requirements.txt) mkdir -p "$site/numpy" && : > "$site/numpy/__init__.py" ;;  # diffusers needs numpy
    esac
  done
  exit 0
fi
echo "python $*" >> "$state/log"
PYTHONPATH="$site" exec "__REAL__" -S "$@"
"""

FAKE_TORCH = """import warnings

try:
    import numpy  # noqa: F401
except ImportError as e:  # what torch does, word for word
    warnings.warn(f"Failed to initialize NumPy: {e} (Triggered internally at torch/csrc/utils/tensor_numpy.cpp:84.)")
__version__ = "2.13.0+cpu"
"""


def _setup(tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=str(tmp_path / "python3"), LIKENESS_VENV=str(tmp_path / "venv"))
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_fresh_setup_prints_no_numpy_failure_and_installs_numpy_with_torch(tmp_path):
    (tmp_path / "torch_init.py").write_text(FAKE_TORCH)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON.replace("__STATE__", str(tmp_path)).replace("__REAL__", sys.executable))
    fake.chmod(0o755)
    first = _setup(tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "Failed to initialize NumPy" not in out and "Traceback" not in out, out
    log = (tmp_path / "log").read_text().splitlines()
    (torch_install,) = [line for line in log if "torch==2.13.0" in line and "install" in line]
    assert "numpy" in torch_install.split()  # numpy comes with torch, before anything can import torch
    assert any("requirements.txt" in line for line in log) and (tmp_path / "venv" / ".likeness-setup").is_file()
    # the stand-in is faithful: imported without numpy, it prints the warning this test looks for
    (tmp_path / "no_numpy" / "torch").mkdir(parents=True)
    (tmp_path / "no_numpy" / "torch" / "__init__.py").write_text(FAKE_TORCH)
    bare = subprocess.run(
        [sys.executable, "-S", "-c", "import torch"], env=dict(os.environ, PYTHONPATH=str(tmp_path / "no_numpy")),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Failed to initialize NumPy" in bare.stderr
    # run again: nothing to do, nothing printed
    again = _setup(tmp_path)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
