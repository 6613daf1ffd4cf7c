#!/usr/bin/env bash
# The main job on embedded defaults: builds the tiny model and runs the pipeline (see README). Extra arguments are
# passed to `python -m trainers demo` (e.g. --checkpoint model.safetensors --photos ./photos on a GPU machine).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
exec "${LIKENESS_VENV:-$root/.venv}/bin/python" -m trainers demo "$@"
