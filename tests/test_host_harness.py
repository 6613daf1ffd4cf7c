"""The real-ComfyUI harness itself: preparation helpers, the server, the client, interrupt handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host import harness


def test_host_requirements_drop_only_torch_and_torchaudio(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "torch\ntorchsde\ntorchvision\ntorchaudio\ntorch>=2.1 ; sys_platform == 'linux'\n# comment\n\n"
        "transformers>=4.25.1\n"
    )
    assert harness._host_requirements(tmp_path) == ["torchsde", "torchvision", "transformers>=4.25.1"]


def test_result_images_map_to_output_and_temp(tmp_path):
    result = harness.RunResult(
        "p",
        "success",
        outputs={
            "9": {"images": [{"filename": "a.png", "subfolder": "x", "type": "output"}]},
            "3": {"images": [{"filename": "b.png", "subfolder": "", "type": "temp"}]},
        },
        output_dir=tmp_path / "out",
        temp_dir=tmp_path / "tmp",
    )
    assert result.images("9") == [tmp_path / "out" / "x" / "a.png"]
    assert sorted(result.images()) == sorted([tmp_path / "out" / "x" / "a.png", tmp_path / "tmp" / "b.png"])
    with pytest.raises(AssertionError, match="status 'error'"):
        harness.RunResult("p", "error", error="boom").check()


def test_setup_lock_excludes_a_second_process(tmp_path):
    """Two processes preparing the same host: the second waits (here: gives up after a short timeout)."""
    lock = tmp_path / ".venv.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, time; f = open({str(lock)!r}, 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(harness.HostSetupError, match="timed out waiting"), harness._file_lock(lock, timeout=1.0):
            pass
    finally:
        holder.kill()
        holder.wait()
    with harness._file_lock(lock, timeout=5.0):  # free again once the holder is gone
        pass


def test_add_model_links_into_the_model_folders(tmp_path):
    install = harness.HostInstall(tmp_path / "comfy", Path(sys.executable), "test")
    host = harness.ComfyHost(install, tmp_path / "work")
    (host.models_dir / "loras").mkdir(parents=True)
    src = tmp_path / "a.safetensors"
    src.write_bytes(b"x")
    assert host.add_model("loras", src) == "a.safetensors"
    assert host.add_model("loras", src) == "a.safetensors"  # idempotent
    assert (host.loras_dir / "a.safetensors").resolve() == src
    assert host.add_model("loras", src, name="b.safetensors") == "b.safetensors"
    other = tmp_path / "c.safetensors"
    other.write_bytes(b"y")
    with pytest.raises(FileExistsError):
        host.add_model("loras", other, name="a.safetensors")
    with pytest.raises(ValueError, match="no model folder"):
        host.add_model("nope", src)


def _image_prompt(prefix: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


@pytest.mark.host
def test_server_runs_a_prompt_and_reports_it(comfy_host):
    assert comfy_host.running and comfy_host.url.startswith("http://127.0.0.1:")
    log = comfy_host.log_text()
    ours = [line for line in log.splitlines() if "custom_nodes/likeness" in line]
    assert ours and not any("IMPORT FAILED" in line for line in ours), ours
    assert "SaveImage" in comfy_host.object_info()

    result = comfy_host.run(_image_prompt("harness_selftest"), timeout=60).check()
    (image,) = result.images("2")
    assert image.is_file() and image.parent == comfy_host.output_dir
    types = [m["type"] for m in result.messages]
    assert types[0] == "execution_start" and "executing" in types
    assert all(m["data"].get("prompt_id") in (None, result.prompt_id) for m in result.messages)


@pytest.mark.host
def test_rejected_prompt_is_reported_not_raised(comfy_host):
    bad = _image_prompt("x")
    bad["2"]["inputs"]["images"] = ["7", 0]  # a link to a node that does not exist
    result = comfy_host.run(bad, timeout=30)
    assert result.status == "rejected" and result.error
    with pytest.raises(harness.PromptRejected):
        comfy_host.submit({"1": {"class_type": "NoSuchLikenessNode", "inputs": {}}})
    # the server is still healthy afterwards
    comfy_host.run(_image_prompt("after_reject"), timeout=60).check()


@pytest.mark.host
def test_interrupt_ends_a_running_prompt(comfy_host, comfy_tiny_checkpoint):
    """A long KSampler run is interrupted after its first progress message; the next prompt runs normally."""
    name = comfy_host.add_model("checkpoints", comfy_tiny_checkpoint, "harness_interrupt.safetensors")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "seed": 1,
                "steps": 2000,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },  # fmt: skip
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "harness_interrupt"}},
    }
    start = len(comfy_host.ws_messages)
    prompt_id = comfy_host.submit(prompt)
    first = comfy_host.wait_for_message(
        lambda m: m["type"] == "progress" and m["data"].get("prompt_id", prompt_id) == prompt_id, 120, since=start
    )
    assert first is not None, "no progress message from KSampler"
    comfy_host.interrupt()
    result = comfy_host.wait(prompt_id, timeout=60)
    assert result.status == "interrupted", result
    steps = [m["value"] for m in result.events("progress")]
    assert steps and max(steps) < 2000
    comfy_host.run(_image_prompt("after_interrupt"), timeout=60).check()


@pytest.mark.host
def test_host_venv_imports_torchvision_and_is_stamped(comfy_host_install):
    """The shim lets PyPI's torchvision (CUDA-linked) import on CPU torch; a second prepare installs nothing."""
    code = "import json, torch, torchvision.ops; print(json.dumps([torch.__version__, torch.cuda.is_available()]))"
    out = subprocess.run(
        [str(comfy_host_install.python), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=harness._clean_env(),
    )
    assert out.returncode == 0, out.stderr
    version, cuda = json.loads(out.stdout.strip().splitlines()[-1])
    assert version.startswith(harness._torch_version()) and cuda is False
    assert harness.prepare_host().setup_seconds == 0.0  # stamped: nothing re-installed
