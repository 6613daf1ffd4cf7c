"""The cyclic garbage collector is paused for a command-line run's set-up and back on (the set-up frozen) when the
training loop starts; a process that did not pause it (ComfyUI, this test process) is never touched."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from train_helpers import subject_images

from conftest import ROOT
from trainers import collector

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


def test_resume_does_nothing_where_the_collector_was_not_paused():
    assert not collector.is_paused()
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    collector.resume()
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == frozen and gc.isenabled()


def test_pause_holds_back_full_passes_only_and_resume_freezes_the_set_up():
    code = """
import gc, json, weakref
from trainers import collector
out = {"before": gc.get_threshold()}
collector.pause()
out["held"] = gc.get_threshold()
class Node:
    pass
node = Node()
node.me = node  # a cycle that dies young
gone = weakref.ref(node)
del node
junk = [[i] for i in range(200_000)]  # enough allocations for the young collections to run
out["young_cycle_freed"] = gone() is None
collector.resume()
out["after"] = gc.get_threshold()
out["frozen"] = gc.get_freeze_count()
gc.disable()  # a program that turned the collector off itself keeps it off
collector.pause()
out["not_paused_when_off"] = not collector.is_paused()
collector.resume()
out["kept_off"] = not gc.isenabled()
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["held"][:2] == out["before"][:2] and out["held"][2] == collector.HELD_BACK
    assert out["young_cycle_freed"]
    assert out["after"] == out["before"] and out["frozen"] > 200_000  # the set-up's objects: never rescanned
    assert out["not_paused_when_off"] and out["kept_off"]


def test_a_command_line_run_trains_with_the_collector_back_on(tiny_checkpoint, tiny_components, tmp_path):
    """``python -m trainers dreambooth``: the set-up runs with the full passes held back, the steps with the
    collector as it was and the set-up frozen."""
    tok_dir = tmp_path / "tokenizer"
    tiny_components.tokenizer.save_pretrained(tok_dir)
    subject_images(tmp_path / "inst")
    args = [
        "dreambooth", f"base_model={tiny_checkpoint}", f"tokenizer={tok_dir}", f"instance_data={tmp_path / 'inst'}",
        "prior_preservation=false", "resolution=32", "steps=2", "mixed_precision=fp32", "gradient_checkpointing=false",
        "sample_at_end=false", f"output={tmp_path / 'out.safetensors'}",
    ]  # fmt: skip
    code = f"""
import gc, json, runpy, sys
from trainers.train import loop
seen = {{"start": gc.get_threshold()}}
train_steps, one_step = loop.Trainer.train_steps, loop.Trainer.one_step
def watch_steps(self):
    seen["set_up"] = gc.get_threshold()
    train_steps(self)
def watch_step(self, *a, **k):
    seen["step"] = gc.get_threshold()
    seen["frozen"] = gc.get_freeze_count()
    return one_step(self, *a, **k)
loop.Trainer.train_steps, loop.Trainer.one_step = watch_steps, watch_step
sys.argv = ["trainers", *{args!r}]
try:
    runpy.run_module("trainers", run_name="__main__", alter_sys=True)
except SystemExit as e:
    seen["code"] = e.code
print(json.dumps(seen))
"""
    run = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and (tmp_path / "out.safetensors").is_file()
    assert seen["set_up"][2] == collector.HELD_BACK  # held back from the process's first line to the loop
    assert seen["step"] == seen["start"] and seen["frozen"] > 100_000  # torch, diffusers & co. frozen
