"""Python's cyclic garbage collector during a command-line run's set-up.

Importing torch, diffusers and transformers and building the models makes ~800 000 Python objects, and the cyclic
collector scans every one of them again each time the heap has grown by a quarter: ~0.5 s of the tiny model's
~5.5 s start-up, measured (diffusers' scripts pay it as well). Reference counting frees almost all of a set-up's
garbage; the collector only finds cycles. So a command-line process (``python -m trainers``, also under
``accelerate launch``) pauses it from its first line (:func:`pause`), and the work loop (training steps, class
images) calls :func:`resume`: the objects made so far move to the permanent generation (``gc.freeze``), which later
collections never rescan, and the collector is on again for the loop.

What that costs: cycles that became garbage during the set-up are never freed. Measured on a tiny-model run at the
first training step: 22 000 unreachable objects (a few MB of dicts and functions), no tensor storage among them.

A process that did not pause the collector (ComfyUI, a test, a program that imports the engine) is never touched:
:func:`resume` does nothing there.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn the collector off until :func:`resume` (only if it is on: a program that turned it off keeps that)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """The set-up is over: freeze what exists and turn the collector back on, if :func:`pause` turned it off."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def is_paused() -> bool:
    return _paused
