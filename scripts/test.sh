#!/usr/bin/env bash
# The test suite, as CI runs it: sets up the venv, then pytest (the real-ComfyUI host is prepared by the fixtures,
# cached under ~/.cache/likeness). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
# Chromium for the browser tests (tests/test_browser_monitor.py; skipped without it): installed when missing and
# possible (root with apt-get), quietly.
if { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; } \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing chromium and chromium-driver for the browser tests (apt-get, as root)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver; } >/dev/null 2>&1 || echo "test: could not install chromium; browser tests will be skipped"
fi
vpy="${LIKENESS_VENV:-$root/.venv}/bin/python"
"$vpy" -m ruff check .
"$vpy" -m ruff format --check .
exec "$vpy" -m pytest "$@"
