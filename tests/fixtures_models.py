"""Session fixtures with tiny SD1 models (built in code, written once per session under ``cache_root``)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Bump when the tiny models or the writer change, so a kept cache (LIKENESS_TEST_CACHE) is not reused stale.
TINY_VERSION = 2


@pytest.fixture(scope="session")
def tiny_components():
    """Diffusers-test-sized SD1 components (seed 0). Shared: do not modify them in a test."""
    from trainers.tiny import tiny_components as build

    return build(seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_root, tiny_components) -> Path:
    """The tiny model as a civitai-style fp16 LDM ``.safetensors``."""
    from trainers.tiny import write_civitai_file

    path = Path(cache_root) / "models" / f"tiny-sd1-v{TINY_VERSION}.safetensors"
    if not path.is_file():
        write_civitai_file(tiny_components, path, dtype="fp16")
    return path


@pytest.fixture(scope="session")
def comfy_tiny_checkpoint(cache_root) -> Path:
    """An SD1.5 single file ComfyUI's own loader accepts (320-channel one-level UNet, CLIP-L, SD VAE), fp16: the
    file ``python -m trainers demo`` writes for the page (the same writer, so the same bytes)."""
    from trainers.tiny import write_comfy_tiny

    path = Path(cache_root) / "models" / f"comfy-tiny-sd15-v{TINY_VERSION}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_comfy_tiny(path)
    return path
