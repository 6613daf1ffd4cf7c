"""pytest fixtures for tests against a real ComfyUI (marker ``host``), exposed through ``tests/conftest.py``.

- ``comfy_host`` (session): a started ``harness.ComfyHost`` — one server for every host test. See
  ``harness.ComfyHost`` for its API (``run``, ``submit``, ``wait``, ``interrupt``, ``object_info``, ``log_text``,
  ``ws_messages``, ``wait_for_message``, ``add_model``, folders ``checkpoints_dir``, ``loras_dir``, ``vae_dir``,
  ``input_dir``, ``output_dir``, ``temp_dir``, ``likeness_cache``).
- ``comfy_host_install`` (session): the prepared ``HostInstall`` (tree + python), for tests that start their own.

After each test that used ``comfy_host`` the server is left idle (pending prompts dropped, a running one
interrupted), and restarted if a test killed it; a failing host test gets the server log of its run in the report.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest

from .harness import ComfyHost, HostInstall, HostSetupError, prepare_host

__all__ = ["comfy_host", "comfy_host_install", "_comfy_host_guard", "pytest_runtest_makereport"]

_LOG_OFFSET = "_likeness_host_log_offset"


def say_now(config, text: str) -> None:
    """A line on the terminal at once, past pytest's output capture (a long silence gets a word first)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(text)
        else:
            print(text, file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def comfy_host_install(request) -> HostInstall:
    try:
        return prepare_host(announce=lambda text: say_now(request.config, text))
    except HostSetupError as e:
        pytest.fail(f"could not prepare the ComfyUI test host: {e}", pytrace=False)


@pytest.fixture(scope="session")
def comfy_host(comfy_host_install, tmp_path_factory):
    host = ComfyHost(comfy_host_install, tmp_path_factory.mktemp("comfy-host", numbered=True))
    try:
        host.start(timeout=float(os.environ.get("LIKENESS_HOST_START_TIMEOUT", "240")))
    except HostSetupError as e:
        host.stop()
        pytest.fail(str(e), pytrace=False)
    yield host
    host.stop()


@pytest.fixture(autouse=True)
def _comfy_host_guard(request):
    """For tests using ``comfy_host``: a live server before, an idle one after."""
    if "comfy_host" not in request.fixturenames:
        yield
        return
    host: ComfyHost = request.getfixturevalue("comfy_host")
    if not host.running:
        host.restart()
    setattr(request.node, _LOG_OFFSET, len(host.log_text()))
    request.node._likeness_host = host
    yield
    if host.running and not host.drain(timeout=120):
        host.restart()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    host = getattr(item, "_likeness_host", None)
    if host is None or report.when != "call" or not report.failed:
        return
    text = host.log_text()[getattr(item, _LOG_OFFSET, 0) :]
    if len(text) > 20000:
        text = "...\n" + text[-20000:]
    report.sections.append(("ComfyUI server log during this test", text or "(empty)"))
