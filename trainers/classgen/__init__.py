"""Class images for prior preservation: generated once from the user's own checkpoint, reused across runs.

A class set is a folder of ``class_00000.png``, ``class_00001.png``, ... plus a small ``manifest.json``. The folder
is keyed by everything that decides what the images look like — the model's content hash, prompt, negative prompt,
resolution, sampler, steps, CFG and seed — and *not* by the count or batch size, so:

- asking for 200 images when 150 exist generates only the 50 missing ones; asking for fewer hides the surplus in a
  hidden ``.spare/`` sub-folder (training reads exactly ``count`` images) and a later, larger request brings them
  back instead of regenerating them;
- image ``k`` starts from its own noise, seeded by :func:`image_seed` ``(seed, k)``, with its own generator for the
  sampler's noise, so it is the same image whatever the batch size and whether the set was made in one run or
  resumed after a cancel. Batches are aligned to multiples of the batch size (image ``k`` is always computed in
  batch ``k // batch_size``), so a resumed run repeats the exact computation and is bit-identical; a different batch
  size changes float rounding only (≤ 1 level in 8-bit pixels, rarely);
- every file is written to a temporary name and renamed (:func:`~trainers.fsutil.atomic_path`): a cancel or a crash
  never leaves a half image, and stale temporary files are removed on the next run.

:func:`generate_class_images` is the engine entry point (the ComfyUI node and ``python -m trainers classes`` call
it); :func:`save_image_batch` stores an image batch made elsewhere (e.g. ComfyUI's own KSampler) as a class set.
Heavy imports (torch, diffusers) happen inside functions.

The package, by job: :mod:`.store` — the options, naming, keys, folders, folder state and manifest (torch-free);
:mod:`.generate` — loading the model and rendering the missing images, storing an image batch; :mod:`.cli` — the
``classes`` command. Importing the package stays cheap (no torch).
"""

from __future__ import annotations

from .generate import generate_class_images, load_generation_components, save_image_batch
from .store import (
    CLASS_IMAGES_SUBDIR,
    KEY_FIELDS,
    MANIFEST,
    MANIFEST_FORMAT,
    SAMPLERS,
    SPARE,
    ClassImagesConfig,
    ClassImagesResult,
    ClassSetPlan,
    components_key,
    image_name,
    image_seed,
    model_key_of,
    plan_class_set,
    read_manifest,
    resolve_folder,
    set_key,
    set_settings,
)

__all__ = [
    "CLASS_IMAGES_SUBDIR",
    "KEY_FIELDS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "SAMPLERS",
    "SPARE",
    "ClassImagesConfig",
    "ClassImagesResult",
    "ClassSetPlan",
    "components_key",
    "generate_class_images",
    "image_name",
    "image_seed",
    "load_generation_components",
    "model_key_of",
    "plan_class_set",
    "read_manifest",
    "resolve_folder",
    "save_image_batch",
    "set_key",
    "set_settings",
]
