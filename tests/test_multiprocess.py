"""Several processes through ``accelerate launch`` on the CPU (gloo): data parallel, saved once, stop/resume, and
class images split between the processes.

accelerate's own CPU launcher starts one process unless MPI is installed (``--cpu --num_processes 2`` is refused by
our CLI, see ``trainers/distributed.py``), so the tests launch with ``--multi_gpu --num_processes 2`` (accelerate's
torch.distributed launcher) and ``device=cpu``: two processes, gloo, ``DistributedType.MULTI_CPU``.

What "the same as one process" means here. Two processes with ``batch_size`` 1 see global samples 2s and 2s+1 at
step s, each with its own random generator, exactly as one process with batch 1 and ``gradient_accumulation`` 2 does;
averaging two gradients (halving is exact in binary floating point) is then bitwise the accumulated gradient, so
the weights are **bitwise equal**. Against one process with ``batch_size`` 2 (one forward of both samples) the
per-sample arithmetic differs in the last bits; AdamW's first steps divide a gradient by its own magnitude, which
turns a last-bit difference of a near-zero gradient into a whole ``lr``-sized step, so that comparison runs with a
large ``adam_epsilon`` (the update is then proportional to the gradient) and holds to **1e-6 absolute** on weights of
size ~0.1 whose updates are ~1e-3.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import class_images, subject_images

from conftest import ROOT
from trainers.configspec import load_config

FP32_TOL = 1e-6  # absolute, on weights; the runs' updates are ~1e-3


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], cache: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_port()), "-m", "trainers", *args,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", LIKENESS_CACHE=str(cache))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _worker(launcher: subprocess.Popen, rank: int, timeout: float = 120):
    """The training process with ``RANK=rank`` under the launcher."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if "trainers" in child.cmdline() and child.environ().get("RANK") == str(rank):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under the launcher")


def _write_toml(tmp: Path, base: Path, tok: Path, **extra) -> Path:
    lines = {
        "base_model": f'"{base}"',
        "tokenizer": f'"{tok}"',
        "instance_data": f'"{tmp / "inst"}"',
        "class_data": f'"{tmp / "cls"}"',
        "instance_prompt": '"a photo of sks shape"',
        "class_prompt": '"a photo of shape"',
        "prior_preservation": "true",
        "resolution": "32",
        "batch_size": "1",
        "learning_rate": "10.0",
        "adam_epsilon": "1000.0",
        "weight_decay": "0.0",
        "seed": "5",
        "mixed_precision": '"fp32"',
        "device": '"cpu"',
        "optimizer": '"adamw"',
        "gradient_checkpointing": "false",
        "sample_at_end": "false",
        "save_dtype": '"fp32"',
    }
    lines.update({k: str(v) for k, v in extra.items()})
    path = tmp / "run.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
    return path


@pytest.fixture
def data(tmp_path, tiny_components):
    subject_images(tmp_path / "inst", n=4)
    class_images(tmp_path / "cls", n=4)
    tiny_components.tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path


def _one_process(cls, toml: Path, out: Path, **overrides) -> dict:
    """The same run in this process (one torch thread, like the launched processes)."""
    from trainers.train import train

    overrides = {"checkpoint_every": 0, **overrides}  # states do not change the weights
    cfg = load_config(cls, toml, [f"output={out}", *(f"{k}={v}" for k, v in overrides.items())])
    train(cfg)
    return load_file(str(out))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _saved_once(folder: Path, out: str, name: str) -> None:
    """One result file and its sidecar, and one "saved" line: the main process saved, the other did not."""
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [f"{name}.safetensors"]
    assert [p.name for p in folder.glob("*.likeness.json")] == [f"{name}.likeness.json"]
    assert out.count("saved ") == 1


def test_two_processes_dreambooth_stop_resume_and_equal_to_one(data, tiny_checkpoint):
    from trainers.train import DreamBoothConfig

    steps = 16
    toml = _write_toml(data, tiny_checkpoint, data / "tok", steps=steps, checkpoint_every=1, keep_checkpoints=2)
    out_dir = data / "out"
    args = ["dreambooth", "--config", str(toml), f"output={out_dir / 'db.safetensors'}", "--no-progress"]
    cache = data / "cache"

    # stop: Ctrl+C reaches only process 1; both stop at the same step and one state is written
    first = _launch(args, cache)
    states = cache / "training_state"
    deadline = time.monotonic() + 300
    while not list(states.glob("*/step-000002")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    _worker(first, 1).send_signal(signal.SIGINT)
    code, out, err = _finish(first)
    assert code != 0 and "stopped at step" in out, err[-3000:]
    stopped_at = int(out.split("stopped at step ")[1].split()[0])
    assert 2 <= stopped_at < steps
    assert not out_dir.exists() or not list(out_dir.glob("*.safetensors"))

    # resume: the same command continues from the state and saves once
    code, out, err = _finish(_launch(args, cache))
    assert code == 0, err[-3000:]
    assert f"at step {stopped_at}" in err.split("resumed from")[1].splitlines()[0]
    _saved_once(out_dir, out, "db")
    two = load_file(str(out_dir / "db.safetensors"))

    # one process, same global batch and data order: bitwise with accumulation, 1e-6 with one batch of 2
    accum = _one_process(DreamBoothConfig, toml, data / "accum.safetensors", gradient_accumulation=2)
    assert _max_diff(two, accum) == 0.0
    batch2 = _one_process(DreamBoothConfig, toml, data / "b2.safetensors", batch_size=2)
    base = load_file(str(tiny_checkpoint))
    moved = _max_diff({k: batch2[k] for k in base}, {k: base[k] for k in base})
    assert moved > 100 * FP32_TOL  # it trained
    assert _max_diff(two, batch2) <= FP32_TOL
    # one process with batch 1 is a different run (half the global batch): the content key tells them apart
    assert _max_diff(two, _one_process(DreamBoothConfig, toml, data / "b1.safetensors")) > 100 * FP32_TOL


def test_two_processes_lora_equal_to_one(data, tiny_checkpoint):
    from trainers.lora.config import LoRAConfig

    toml = _write_toml(data, tiny_checkpoint, data / "tok", steps=4, lora_rank=4, lora_alpha=4.0, save_dtype='"fp32"')
    out_dir = data / "out"
    args = ["lora", "--config", str(toml), f"output={out_dir / 'lo.safetensors'}", "--no-progress"]
    code, out, err = _finish(_launch(args, data / "cache"))
    assert code == 0, err[-3000:]
    _saved_once(out_dir, out, "lo")
    two = load_file(str(out_dir / "lo.safetensors"))
    accum = _one_process(LoRAConfig, toml, data / "accum.safetensors", gradient_accumulation=2)
    assert _max_diff(two, accum) == 0.0
    batch2 = _one_process(LoRAConfig, toml, data / "b2.safetensors", batch_size=2)
    assert _max_diff(two, batch2) <= FP32_TOL
    up = [k for k in two if "lora_up" in k]
    assert up and max(two[k].abs().max().item() for k in up) > 100 * FP32_TOL  # it trained (up starts at zero)


def test_two_processes_class_images_each_index_once_and_resume(tmp_path, tiny_checkpoint, tiny_components):
    from trainers.classgen import ClassImagesConfig, generate_class_images
    from trainers.classgen.store import read_manifest

    tok = tmp_path / "tok"
    tiny_components.tokenizer.save_pretrained(tok)
    common = dict(class_prompt="a photo of shape", resolution=32, steps=2, cfg=1.0, seed=3, batch_size=1)
    root = tmp_path / "output"
    # three images made by one process first: the two processes only make the missing ones
    first = generate_class_images(
        ClassImagesConfig(count=3, **common), model=str(tiny_checkpoint), tokenizer=str(tok), output_root=root,
        device="cpu",
    )  # fmt: skip
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.files}
    args = [
        "classes", "-v", f"--base-model={tiny_checkpoint}", f"--tokenizer={tok}", "--count=9", "--device=cpu",
        f"--output-root={root}", *(f"{k}={v}" for k, v in common.items()),
    ]  # fmt: skip
    code, out, err = _finish(_launch(args, tmp_path / "cache"))
    assert code == 0, err[-3000:]
    assert out.count("9/9 class images (complete): 6 generated, 3 reused") == 1  # one summary, from the main process
    manifest = read_manifest(first.folder)
    # 9 images present and 9 writes in all (3 + 6): no index written twice, none missing
    assert sorted(p.name for p in first.folder.glob("class_*.png")) == [f"class_{k:05d}.png" for k in range(9)]
    assert manifest["generated_total"] == 9 and manifest["complete"]
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.files} == before  # kept, not redone
    made = sorted(int(line.split()[-1]) for line in err.splitlines() if "class images: process" in line)
    assert made == [3, 3]  # each process made its share (batch groups 3,5,7 and 4,6,8)
    # the images are those one process would have made
    ref = generate_class_images(
        ClassImagesConfig(count=9, output_folder=str(tmp_path / "ref"), **common), model=str(tiny_checkpoint),
        tokenizer=str(tok), output_root=root, device="cpu",
    )  # fmt: skip
    from PIL import Image

    for k in range(9):
        a = Image.open(first.folder / f"class_{k:05d}.png").tobytes()
        assert a == Image.open(ref.folder / f"class_{k:05d}.png").tobytes(), k
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(
    "env, words",
    [
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, "started only one process"),
        ({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2", "RANK": "0"}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2", "RANK": "0"}, "DeepSpeed"),
    ],
)
def test_launches_that_would_train_otherwise_than_asked_are_refused(monkeypatch, env, words):
    """accelerate's CPU launcher without MPI starts one process for --num_processes 2 (half the global batch,
    silently); FSDP/DeepSpeed would shard what the data-parallel loop expects whole."""
    from trainers.distributed import check_launch, rank, world_size
    from trainers.errors import ConfigError

    for name in (
        "WORLD_SIZE",
        "RANK",
        "MASTER_ADDR",
        "ACCELERATE_USE_CPU",
        "ACCELERATE_USE_FSDP",
        "ACCELERATE_USE_DEEPSPEED",
    ):
        monkeypatch.delenv(name, raising=False)
    check_launch()  # a plain single process is fine
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=words):
        check_launch()
    assert (world_size(), rank()) == ((2, 0) if "WORLD_SIZE" in env else (1, 0))
