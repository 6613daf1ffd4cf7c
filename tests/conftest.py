"""Shared test fixtures.

The pack is imported the way ComfyUI imports it: the repository root as a package (here named ``likeness_pack``),
so ``nodes`` reaches ``trainers`` through relative imports. Engine tests import ``trainers`` directly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "likeness_pack"

# Keep tests on CPU and off any hub, whatever the machine has.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
# The engine's own cache (normalized model copies, the CLI's resumable states) stays out of the user's home.
os.environ.setdefault("LIKENESS_CACHE", tempfile.mkdtemp(prefix="likeness-test-cache."))


def import_pack():
    """Import the repository as the package ``likeness_pack`` (like ComfyUI's custom_nodes loader)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_for_the_session():
    """One thread from the start, so module-scoped fixtures (which pytest sets up before any function-scoped one)
    train with the same thread count as the tests that compare with them bitwise: a matmul's rounding depends on it.
    """
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def one_torch_thread():
    """2 shared cores: one intra-op thread is several times faster than two fighting ones (and deterministic)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """A cache for generated fixtures (tiny models) shared by the whole session (LIKENESS_TEST_CACHE to keep it)."""
    keep = os.environ.get("LIKENESS_TEST_CACHE")
    if keep:
        p = Path(keep)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return tmp_path_factory.mktemp("likeness-cache")


from tests.fixtures_models import comfy_tiny_checkpoint, tiny_checkpoint, tiny_components  # noqa: E402,F401
from tests.host.fixtures import _comfy_host_guard, comfy_host, comfy_host_install, pytest_runtest_makereport  # noqa: E402,F401,I001


def pytest_terminal_summary(terminalreporter):
    """Say how the disk-full tests made a disk full: a real tmpfs, or ENOSPC injected at the write call."""
    import faults

    if faults.USED:
        terminalreporter.write_line(f"disk-full tests ran on: {', '.join(sorted(faults.USED))}")
