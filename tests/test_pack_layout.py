"""The architecture rules that keep the pack safe for users' ComfyUI installs."""

from __future__ import annotations

import json
import subprocess
import sys

import tomllib

from conftest import ROOT

COMFY_MODULES = ("comfy", "folder_paths", "server", "nodes", "execution", "comfy_extras", "comfy_api")


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_trainers_never_imports_comfyui():
    code = (
        "import json, sys, pkgutil, importlib\n"
        "import trainers\n"
        "names = [m.name for m in pkgutil.walk_packages(trainers.__path__, 'trainers.')]\n"
        "for n in names: importlib.import_module(n)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {COMFY_MODULES!r})\n"
        "print(json.dumps({'modules': names, 'bad': bad}))\n"
    )
    result = _run(code)
    assert len(result["modules"]) >= 4  # every trainers module was imported
    assert result["bad"] == []


def test_pack_import_is_light_and_fast():
    code = (
        "import importlib.util, json, sys, time, pathlib\n"
        "root = pathlib.Path('.').resolve()\n"
        "t0 = time.perf_counter()\n"
        "spec = importlib.util.spec_from_file_location('likeness_pack', root / '__init__.py',"
        " submodule_search_locations=[str(root)])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['likeness_pack'] = m; spec.loader.exec_module(m)\n"
        "dt = time.perf_counter() - t0\n"
        "heavy = sorted(x for x in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate', 'cv2') "
        "if x in sys.modules)\n"
        "print(json.dumps({'seconds': dt, 'heavy': heavy, 'nodes': sorted(m.NODE_CLASS_MAPPINGS),"
        " 'web': m.WEB_DIRECTORY}))\n"
    )
    result = _run(code)
    assert result["heavy"] == []
    assert result["seconds"] < 0.5, result
    assert all(n.startswith("Likeness") for n in result["nodes"])
    assert (ROOT / result["web"]).is_dir()


def test_requirements_protect_users_comfyui():
    reqs = [ln.split("#")[0].strip().lower() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    for r in reqs:
        name = r.replace(">", "=").replace("<", "=").split("=")[0].strip()
        assert name not in {"torch", "torchvision", "torchaudio"}, r
        if name == "numpy":
            assert "==" not in r and "<" not in r, r
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "likeness"
    assert meta["project"]["urls"]["Repository"]
    assert {"PublisherId", "DisplayName", "requires-comfyui"} <= set(meta["tool"]["comfy"])
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert "./scripts/test.sh" in readme and "./scripts/demo.sh" in readme
