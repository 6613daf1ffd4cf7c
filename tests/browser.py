"""Headless Chromium for the browser tests: where the browser and its driver are, the skip marks, one launcher.

Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs them when it can); Selenium is given
the driver's path so it never tries to download one.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)

# pytestmark of every browser test module: they all drive the test host's page.
MARKS = [
    pytest.mark.browser,
    pytest.mark.host,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def start_chrome(window: tuple[int, int] = (1280, 900), *, scale: float | None = None, console_log: bool = False):
    """A new headless Chromium driven by Selenium. ``console_log`` keeps the page's console for ``get_log``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={window[0]},{window[1]}"):
        opts.add_argument(flag)
    if scale:
        opts.add_argument(f"--force-device-scale-factor={scale}")
    if console_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
