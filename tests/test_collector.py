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
    assert gc.isenabled() and not collector.is_paused()
    frozen = gc.get_freeze_count()
    collector.resume()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_pause_and_resume_freeze_the_set_up_and_keep_a_programs_own_choice():
    code = """
import gc, json
from trainers import collector
out = {}
collector.pause()
out["paused_off"] = not gc.isenabled()
junk = [object() for _ in range(1000)]
collector.resume()
out["on_again"] = gc.isenabled()
out["frozen"] = gc.get_freeze_count()
gc.disable()  # a program that turned the collector off itself keeps it off
collector.pause()
collector.resume()
out["kept_off"] = not gc.isenabled()
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["paused_off"] and out["on_again"] and out["kept_off"]
    assert out["frozen"] > 1000  # the objects made before the loop are in the permanent generation


def test_a_command_line_run_trains_with_the_collector_back_on(tiny_checkpoint, tiny_components, tmp_path):
    """``python -m trainers dreambooth``: the set-up runs with the collector off, the steps with it on."""
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
seen = {{}}
train_steps, one_step = loop.Trainer.train_steps, loop.Trainer.one_step
def watch_steps(self):
    seen["set_up"] = gc.isenabled()
    train_steps(self)
def watch_step(self, *a, **k):
    seen["step"] = gc.isenabled()
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
    assert seen["set_up"] is False  # paused from the process's first line to the loop
    assert seen["step"] is True and seen["frozen"] > 100_000  # torch, diffusers & co. are frozen, not rescanned
