#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment: .venv (override with LIKENESS_VENV).
# Installs torch==2.13.0 (with numpy) only when the venv has no torch, then the pack's requirements and the dev
# tools. Idempotent and quiet when everything is already there. torch is never imported here: imported without
# numpy it prints "Failed to initialize NumPy", which looks like a failure and is not one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LIKENESS_VENV:-$root/.venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
stamp="$venv/.likeness-setup"
want="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" | sha256sum | cut -c1-16)"
has_torch() { "$vpy" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" 2>/dev/null; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && has_torch; then
  exit 0
fi
"$vpy" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! has_torch; then
  echo "setup: installing torch==2.13.0 and numpy (a few minutes the first time)"
  "$vpy" -m pip install -q torch==2.13.0 numpy
fi
echo "setup: installing requirements"
# torch is pinned to what is installed so no requirement can swap it for another build.
tv="$("$vpy" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')"
cons="$(mktemp)"; echo "torch==$tv" > "$cons"
"$vpy" -m pip install -q -c "$cons" -r "$root/requirements.txt" -r "$root/requirements-dev.txt"
rm -f "$cons"
echo "$want" > "$stamp"
