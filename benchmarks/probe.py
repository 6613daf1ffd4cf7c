"""Run one training script in this process with the same instruments for ours and for diffusers' scripts.

``python benchmarks/probe.py OUT.json STEPS (--module trainers | --script PATH) -- ARGS...``

Both trainers are measured the same way, from the outside, without changing their code:

- every UNet forward with gradients enabled is a training micro-step (``UNet2DConditionModel.forward`` is wrapped;
  with gradient checkpointing the recomputation runs inside the blocks, not through the top-level forward);
- start-up = from the moment the parent started this process (``LIKENESS_BENCH_T0``, wall clock) to the first
  training forward: interpreter, imports, model loading, data, caches, optimizer set-up;
- time per step = the median interval between successive training forwards, the first step left out when there are
  more (the run is stopped at the start of forward ``STEPS + 1``, so the last interval holds the last optimizer
  step);
- memory: resident set size when the first training forward starts (model loaded, ready to train: the UNet's
  memory-mapped weights are read in first, :func:`_page_in`) and the peak resident set size (``VmHWM``) when forward
  ``STEPS + 1`` starts, i.e. the peak of N whole steps; on CUDA also ``torch.cuda.max_memory_allocated`` at the
  same two points;
- on CUDA, synchronising operations per step after the first (``syncs_per_step``: each makes the host wait until
  the GPU's queue is empty): from the second training forward on, ``torch.cuda.set_sync_debug_mode("warn")``
  flags every one (``.item()``, a blocking copy, ...) and each flag is counted (and not printed);
- with ``LIKENESS_BENCH_TENSORS=1``, also the peak bytes of the tensors made from the first training forward on
  (:func:`count_new_tensors`): the quantity the memory planner predicts, measured on the real run; every op then
  goes through a Python counter, so such a run's times are not comparable (marked ``counted``);
- at forward ``STEPS + 1`` the result is written and the process ends at once (nothing is saved: saving is not
  what is compared).

The target runs with one torch thread unless ``LIKENESS_BENCH_THREADS`` says otherwise. When ``torchvision`` is not
installed, ``benchmarks/compat/transforms.py`` provides the transforms diffusers' DreamBooth scripts use (PIL
based, like torchvision's own on PIL images), for their runs only (:func:`run_script`).
"""

from __future__ import annotations

import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_kb(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in kB (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Probe:
    """Counts training forwards and takes the measurements (see the module docstring)."""

    def __init__(self, out: Path, steps: int):
        self.out, self.steps = out, steps
        self.t0 = float(os.environ.get("LIKENESS_BENCH_T0", time.time()))
        self.stamps: list[float] = []
        self.first: dict[str, float] = {}
        self.tensors = None  # LiveBytes counting the tensors made from the first training forward on
        self.syncs: list[int] | None = None  # CUDA: synchronising operations from the second training forward on

    def on_forward(self, unet) -> None:
        import torch

        if not torch.is_grad_enabled():
            return
        now = time.time()
        self.stamps.append(now)
        if len(self.stamps) == 1:
            _page_in(unet)
            self.first = {"rss_mb": rss_kb("VmRSS") / 1024, "cuda_mb": _cuda_mb(torch, "memory_allocated")}
            if os.environ.get("LIKENESS_BENCH_TENSORS") == "1":
                self.tensors = count_new_tensors()
        if len(self.stamps) == 2 and torch.cuda.is_available():
            self.syncs = count_syncs(torch)
        if len(self.stamps) == self.steps + 1:
            self.finish(torch)

    def finish(self, torch) -> None:
        if self.syncs is not None:
            torch.cuda.set_sync_debug_mode(0)
        intervals = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        steady = intervals[1:] or intervals  # the first step warms up (allocations, kernels); kept for 1-step runs
        result = {
            "startup_s": self.stamps[0] - self.t0,
            "step_s": statistics.median(steady),
            "step_s_all": intervals,
            "rss_loaded_mb": self.first["rss_mb"],
            "rss_peak_mb": rss_kb("VmHWM") / 1024,
            "cuda_loaded_mb": self.first["cuda_mb"],
            "cuda_peak_mb": _cuda_mb(torch, "max_memory_allocated"),
            "threads": torch.get_num_threads(),
            "steps": self.steps,
        }
        if self.syncs is not None:
            result["syncs_per_step"] = len(self.syncs) / max(1, self.steps - 1)
        if self.tensors is not None:
            result["tensor_growth_mb"] = self.tensors.peak / 2**20
            result["counted"] = True  # every op went through the counter: this run's times are not comparable
        self.out.write_text(json.dumps(result, indent=1))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def count_new_tensors():
    """From now on, count the bytes of every tensor storage made (``trainers.train.memtrace.LiveBytes``, the
    counter the memory planner's trace uses), alive at once at the peak: what training adds in tensors
    (gradients, optimizer states, activations, temporaries) without the allocator's retention and the runtime's own
    buffers that a resident-set figure includes. Tensors that exist already (weights, caches) are not new."""
    import gc

    import torch

    from trainers.train.memtrace import LiveBytes

    count = LiveBytes()
    # gc.get_objects() leaves out the permanent generation, where our CLI froze its set-up (trainers/collector.py):
    # thaw it for the look (and freeze again: only the counted run, whose times are not used, is affected)
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    count.ignore([t for t in gc.get_objects() if isinstance(t, torch.Tensor) and not t.is_meta])
    if frozen:
        gc.freeze()
    count.__enter__()  # left on until the process ends (the result is written at forward STEPS + 1)
    return count


def count_syncs(torch) -> list[int]:
    """From now on, count the synchronising CUDA operations (torch's sync debug mode warns at each; those warnings
    are counted here instead of printed). Returns the list that grows by one per operation."""
    import warnings

    seen: list[int] = []
    message = "called a synchronizing CUDA operation"
    show = warnings.showwarning

    def counted(msg, category, filename, lineno, file=None, line=None):
        if message in str(msg):
            seen.append(1)
            return
        show(msg, category, filename, lineno, file, line)

    warnings.filterwarnings("always", message=f".*{message}.*")
    warnings.showwarning = counted
    torch.cuda.set_sync_debug_mode("warn")
    return seen


def _page_in(module) -> None:
    """Read one value per memory page of every weight of ``module``. diffusers and transformers load safetensors
    weights memory-mapped: a weight is resident only once something reads it, and the UNet's are first read by this
    very forward. Reading them here (they would be read a moment later anyway) makes "loaded" mean what it says;
    it changes no peak. The VAE and text encoder have been used before the first UNet forward by both trainers."""
    import torch

    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.device.type == "cpu" and t.numel():
                step = max(1, 4096 // t.element_size())
                t.detach().reshape(-1)[::step].sum()


def _cuda_mb(torch, what: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return getattr(torch.cuda, what)() / 2**20


def install(probe: Probe) -> None:
    """Wrap the UNet's forward once diffusers is importable (imports are part of the start-up being measured, so
    the wrapper is installed lazily, on diffusers' first import)."""
    import importlib.abc
    import importlib.machinery

    def patch(module) -> None:
        cls = module.UNet2DConditionModel
        forward = cls.forward

        def counted(self, *args, **kwargs):
            probe.on_forward(self)
            return forward(self, *args, **kwargs)

        cls.forward = counted

    name = "diffusers.models.unets.unet_2d_condition"

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            loader = spec.loader
            original = loader.exec_module

            def exec_module(module):
                original(module)
                patch(module)

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def run_script(path: str) -> None:
    """Run a script as ``__main__``. When torchvision is not installed, its ``from torchvision import transforms``
    line imports ``benchmarks/compat/transforms.py`` instead (only that line, only in this script: libraries that
    probe for an installed torchvision still find none)."""
    import importlib.util

    source = Path(path).read_text(encoding="utf-8")
    line = "from torchvision import transforms"
    if importlib.util.find_spec("torchvision") is None and line in source:
        source = source.replace(line, "from benchmarks.compat import transforms", 1)
    sys.path.insert(0, str(Path(path).parent))
    exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path})  # noqa: S102


def main(argv: list[str]) -> None:
    out, steps, kind, target, *rest = argv
    args = rest[1:] if rest and rest[0] == "--" else rest
    threads = int(os.environ.get("LIKENESS_BENCH_THREADS", "1"))
    probe = Probe(Path(out), int(steps))
    install(probe)
    import torch

    torch.set_num_threads(threads)
    if kind == "--module":
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *args]
        run_script(target)
    raise SystemExit(f"the run ended after {len(probe.stamps)} training forwards; {int(steps) + 1} were needed")


if __name__ == "__main__":
    main(sys.argv[1:])
