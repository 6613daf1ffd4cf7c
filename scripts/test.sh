#!/usr/bin/env bash
# The test suite, as CI runs it: sets up the venv, then pytest (the real-ComfyUI host is prepared by the fixtures,
# cached under ~/.cache/likeness). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
vpy="${LIKENESS_VENV:-$root/.venv}/bin/python"
"$vpy" -m ruff check .
"$vpy" -m ruff format --check .
exec "$vpy" -m pytest "$@"
