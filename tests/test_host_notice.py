"""Before the long first set-up of the ComfyUI test host (a ComfyUI and a ~1.7 GB Python environment, minutes on a
small machine) the test run says so in one line, on the terminal, past pytest's output capture."""

from __future__ import annotations

import pytest

from tests.host import harness

pytest_plugins = ["pytester"]


def test_an_empty_cache_is_announced_once_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_HOST_CACHE", str(tmp_path / "host-cache"))
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    heard: list[str] = []

    def no_download(root):
        heard.append("download")  # what would take minutes starts only after the line
        raise harness.HostSetupError("stopped before downloading")

    monkeypatch.setattr(harness, "_find_wheel", no_download)
    with pytest.raises(harness.HostSetupError):
        harness.prepare_host(announce=heard.append)
    assert heard[1:] == ["download"] and len(heard) == 2
    assert heard[0].startswith("preparing the ComfyUI test host (first run only") and str(tmp_path) in heard[0]


def test_the_line_reaches_the_terminal_while_output_is_captured(pytester):
    pytester.makepyfile(
        """
        from tests.host.fixtures import say_now

        def test_quietly(request):
            print("captured, not shown")
            say_now(request.config, "preparing the ComfyUI test host (first run only, ~3-8 min)")
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "preparing the ComfyUI test host (first run only, ~3-8 min)" in result.stdout.str()
    assert "captured, not shown" not in result.stdout.str()
