"""The face-identity backend: dlib and the three model files it runs, found and loaded once per process.

- **dlib** comes from the ``dlib-bin`` wheel (prebuilt; Linux x86_64/aarch64, Windows x64, macOS, Python 3.10–3.13)
  or any other dlib build;
- its models come from the ``face_recognition_models`` package (files inside the package, nothing is downloaded):
  ``shape_predictor_5_face_landmarks.dat`` (5-point landmarks, for alignment) and
  ``dlib_face_recognition_resnet_model_v1.dat`` (the 128-number face descriptor). The face detector is dlib's
  built-in HOG detector (no file). The package's 68-point model is never used (its training data is not licensed
  for commercial use). ``LIKENESS_FACE_MODELS=/folder`` points at a folder holding the two files instead.

Nothing here is imported at module load: :func:`load` imports dlib the first time a face is measured, and
:func:`status` says whether that will work, and if not, exactly what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IdentityUnavailable

log = logging.getLogger(__name__)

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MODELS_ENV = "LIKENESS_FACE_MODELS"
INSTALL = "pip install dlib-bin face_recognition_models"
INSTALL_HINT = (
    f"install the face-identity backend with ComfyUI's Python: '{INSTALL}' (prebuilt wheels for Linux x86_64/aarch64, "
    "Windows x64 and macOS, Python 3.10-3.13), then restart"
)


@dataclass(frozen=True)
class Models:
    """The loaded backend: dlib's detector, the 5-point landmark predictor and the face descriptor network."""

    dlib: Any
    detector: Any
    landmarks: Any
    descriptor: Any
    tag: str  # identity of the models (dlib version, file sizes): part of every cache key


_LOCK = threading.Lock()
_MODELS: Models | None = None


def model_folder() -> Path | None:
    """Where the two model files are: ``LIKENESS_FACE_MODELS``, else inside ``face_recognition_models``.

    The package is located without importing it (its ``__init__`` needs ``pkg_resources``, which new setuptools
    no longer ship)."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _problem() -> str | None:
    """Why the backend cannot load, or None when it can (cheap: no model is read)."""
    try:
        dlib = importlib.import_module("dlib")
    except Exception as e:  # noqa: BLE001 - a broken build raises more than ImportError
        return f"dlib is not installed ({type(e).__name__}: {e})"
    if not hasattr(dlib, "face_recognition_model_v1"):
        return f"this dlib ({getattr(dlib, '__version__', '?')}) has no face recognition model support"
    folder = model_folder()
    if folder is None:
        return "the face_recognition_models package (dlib's model files) is not installed"
    missing = [n for n in (LANDMARKS_FILE, DESCRIPTOR_FILE) if not (folder / n).is_file()]
    if missing:
        return f"{', '.join(missing)} not found in {folder}"
    return None


def status() -> tuple[bool, str]:
    """``(True, "dlib 20.0.1, models in ...")`` or ``(False, "<what is missing>; install ...")``."""
    if _MODELS is not None:
        return True, describe(_MODELS)
    problem = _problem()
    if problem:
        return False, f"face identity is off: {problem}; {INSTALL_HINT}"
    return True, f"dlib ready, models in {model_folder()}"


def available() -> bool:
    return status()[0]


def describe(models: Models) -> str:
    return f"dlib {getattr(models.dlib, '__version__', '?')} (HOG detector, 5-point alignment, ResNet descriptor)"


def load() -> Models:
    """The backend, loaded once per process; raises :class:`IdentityUnavailable` naming what to install."""
    global _MODELS
    with _LOCK:
        if _MODELS is None:
            problem = _problem()
            if problem:
                raise IdentityUnavailable(f"face identity is not available: {problem}; {INSTALL_HINT}")
            _MODELS = _load()
        return _MODELS


def _load() -> Models:
    dlib = importlib.import_module("dlib")
    folder = model_folder()
    assert folder is not None
    sizes = [(folder / n).stat().st_size for n in (LANDMARKS_FILE, DESCRIPTOR_FILE)]
    try:
        landmarks = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
        descriptor = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_FILE))
    except RuntimeError as e:
        raise IdentityUnavailable(
            f"dlib could not read its model files in {folder} ({e}); reinstall them: "
            "'pip install --force-reinstall face_recognition_models'"
        ) from None
    tag = f"dlib{getattr(dlib, '__version__', '?')}-lm{sizes[0]}-rn{sizes[1]}"
    log.info("face identity: dlib %s, models from %s", getattr(dlib, "__version__", "?"), folder)
    return Models(dlib, dlib.get_frontal_face_detector(), landmarks, descriptor, tag)


def reset() -> None:
    """Forget the loaded backend (tests that simulate it missing)."""
    global _MODELS
    with _LOCK:
        _MODELS = None
