"""Python's cyclic garbage collector during a command-line run's set-up.

Importing torch, diffusers and transformers and building the models makes ~800 000 Python objects, and the
collector's full (oldest-generation) pass rescans every one of them each time the old generation has grown by a
quarter. Measured with ``gc.callbacks`` on the tiny model's start-up: 7 full passes, 1.0–1.4 s of a 7–9 s start-up
on a loaded machine (diffusers' scripts pay the same). A command-line process (``python -m trainers``, also under
``accelerate launch``) therefore holds back the full passes from its first line (:func:`pause`); the young
generations are still collected, so cycles that die young (exceptions and their frames, most of an import's
garbage) are freed as usual: the resident memory at the first step is the same as with the collector untouched
(measured: within 1 MB; turning the whole collector off instead left 10 MB more). When the work loop starts
(training steps, class images, crops, scores) :func:`resume` moves what the set-up made to the permanent generation
(``gc.freeze``: later full passes never rescan the libraries' objects either) and restores the thresholds.

A process that did not pause the collector (ComfyUI, a test, a program that imports the engine) is never touched:
:func:`resume` does nothing there.
"""

from __future__ import annotations

import gc

# gc's third threshold: full passes run after this many collections of the middle generation (Python's default 10)
HELD_BACK = 1 << 30

_saved: tuple[int, ...] | None = None


def pause() -> None:
    """Hold back full collections until :func:`resume` (only while the collector is on, with thresholds of its
    own kind: a program that turned it off or tuned it keeps its choice)."""
    global _saved
    if _saved is None and gc.isenabled() and len(gc.get_threshold()) == 3:
        _saved = gc.get_threshold()
        gc.set_threshold(_saved[0], _saved[1], HELD_BACK)


def resume() -> None:
    """The set-up is over: freeze what exists and restore the thresholds, if :func:`pause` changed them."""
    global _saved
    if _saved is not None:
        gc.freeze()
        gc.set_threshold(*_saved)
        _saved = None


def is_paused() -> bool:
    return _saved is not None
