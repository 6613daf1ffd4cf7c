"""Our DreamBooth/LoRA next to diffusers' own scripts, same model, images and settings, runs interleaved.

    DIFFUSERS_EXAMPLES=/path/to/diffusers/examples/dreambooth \\
        python -m benchmarks.side_by_side --model tiny --runs 6 --steps 8
    python -m benchmarks.side_by_side --model sd15 --resolution 64 --runs 1 --steps 3 --pairings unet,unet_te

``DIFFUSERS_EXAMPLES`` (or ``--diffusers``) is a folder with diffusers' ``train_dreambooth.py`` and
``train_dreambooth_lora.py`` (a checkout of github.com/huggingface/diffusers, never part of this repository). Each
run is a fresh process started through ``benchmarks/probe.py``, which measures both trainers the same way (start-up
to the first training forward, median time per step, resident memory loaded / peak; on CUDA the allocator's peak).
Runs alternate ours, theirs, ours, ... so both see the same machine load; the load average before each run is
recorded, and the first pair is a warm-up (file caches, our persistent hash cache) left out of the medians.
``--tensors`` adds one run of each trainer per pairing that counts the tensor bytes training adds over the loaded
model (the probe's ``LIKENESS_BENCH_TENSORS``): the quantity the memory planner predicts, next to its prediction,
free of what a resident-set figure adds (the allocator's retained pages, the runtime's own buffers).

The model is a randomly initialised SD1.5 written as a diffusers folder (``--model tiny``: the tiny test model;
``sd15``: the full-size one from the pack's bundled configs), so both trainers load exactly the same files. Speed and
memory are compared, never quality.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Pairing:
    """One comparison: our CLI options and diffusers' flags for the same training."""

    name: str
    ours: list[str]
    theirs: list[str]
    method: str = "dreambooth"  # or "lora"
    baseline: str = ""  # an option diffusers' script lacks: compared with the diffusers runs of this pairing


PAIRINGS = {
    "unet": Pairing("full DreamBooth, UNet", ["--no-train-text-encoder"], []),
    "unet_te": Pairing("full DreamBooth, UNet + text encoder", ["--train-text-encoder"], ["--train_text_encoder"]),
    "unet_ckpt": Pairing(
        "UNet, gradient checkpointing", ["--no-train-text-encoder", "--gradient-checkpointing"],
        ["--gradient_checkpointing"],
    ),
    "unet_te_ckpt": Pairing(
        "UNet + TE, gradient checkpointing", ["--train-text-encoder", "--gradient-checkpointing"],
        ["--train_text_encoder", "--gradient_checkpointing"],
    ),
    "unet_fused": Pairing(
        "UNet, optimizer step in backward (ours only)", ["--no-train-text-encoder", "--fused-backward",
        "--max-grad-norm", "0"], [], baseline="unet",
    ),
    "unet_te_fused": Pairing(
        "UNet + TE, optimizer step in backward (ours only)", ["--train-text-encoder", "--fused-backward",
        "--max-grad-norm", "0"], ["--train_text_encoder"], baseline="unet_te",
    ),
    "unet_bf16": Pairing(
        "UNet, bf16 weights + stochastic rounding (ours only)", ["--no-train-text-encoder", "--master-weights",
        "bf16"], [], baseline="unet",
    ),
    "unet_te_bf16": Pairing(
        "UNet + TE, bf16 weights + stochastic rounding (ours only)", ["--train-text-encoder", "--master-weights",
        "bf16"], ["--train_text_encoder"], baseline="unet_te",
    ),
    "unet_8bit": Pairing(
        "UNet, 8-bit AdamW", ["--no-train-text-encoder", "--optimizer", "adamw8bit"], ["--use_8bit_adam"],
    ),
    "lora": Pairing("LoRA r4, attention", ["--no-train-text-encoder"], [], method="lora"),
    "lora_ckpt": Pairing(
        "LoRA r4, attention, gradient checkpointing", ["--no-train-text-encoder", "--gradient-checkpointing"],
        ["--gradient_checkpointing"], method="lora",
    ),
    "unet_lowmem": Pairing(
        "UNet, checkpointing, bf16 weights + step in backward (ours only)", ["--no-train-text-encoder",
        "--gradient-checkpointing", "--master-weights", "bf16", "--fused-backward", "--max-grad-norm", "0"], [],
        baseline="unet_ckpt",
    ),
    "unet_te_lowmem": Pairing(
        "UNet + TE, checkpointing, bf16 weights + step in backward (ours only)", ["--train-text-encoder",
        "--gradient-checkpointing", "--master-weights", "bf16", "--fused-backward", "--max-grad-norm", "0"], [],
        baseline="unet_te_ckpt",
    ),
}  # fmt: skip


@dataclass
class Setup:
    root: Path
    model: Path
    images: Path
    resolution: int
    steps: int
    batch: int
    device: str
    precision: str
    diffusers: Path | None
    results: list[dict] = field(default_factory=list)


def write_model(kind: str, folder: Path) -> Path:
    """A randomly initialised SD1.5 (tiny or full size) as a diffusers folder with its tokenizer."""
    from benchmarks.bench_train import build
    from trainers.model_io.export import save_diffusers_folder

    if not (folder / "model_index.json").is_file():
        save_diffusers_folder(build(kind), folder, dtype="fp32", overwrite=True)
    return folder


def write_images(folder: Path, n: int, size: int) -> Path:
    from benchmarks.bench_train import make_images

    return make_images(folder, n, size, 0)


def our_args(s: Setup, p: Pairing, out: Path) -> list[str]:
    bf16_weights = "--master-weights" in p.ours and p.ours[p.ours.index("--master-weights") + 1] == "bf16"
    precision = "bf16" if bf16_weights else s.precision  # bf16 weights compute in bf16
    return [
        p.method, f"--base-model={s.model}", f"--instance-data={s.images}", "--instance-prompt=a photo of sks shape",
        "--no-prior-preservation", f"--resolution={s.resolution}", f"--steps={s.steps + 1}",
        f"--batch-size={s.batch}", f"--mixed-precision={precision}", f"--device={s.device}", "--optimizer=adamw",
        "--no-gradient-checkpointing", "--no-sample-at-end", "--seed=0", f"--output={out}", "--no-progress",
        "--force", *(["--learning-rate=2e-6"] if p.method == "dreambooth" else ["--lora-rank=4", "--lora-alpha=4"]),
        *p.ours,
    ]  # fmt: skip


def their_args(s: Setup, p: Pairing, out: Path) -> list[str]:
    mp = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[s.precision]
    return [
        f"--pretrained_model_name_or_path={s.model}", f"--instance_data_dir={s.images}",
        "--instance_prompt=a photo of sks shape", f"--resolution={s.resolution}", f"--train_batch_size={s.batch}",
        f"--max_train_steps={s.steps + 1}", "--lr_scheduler=constant", "--lr_warmup_steps=0", f"--output_dir={out}",
        f"--mixed_precision={mp}", "--seed=0", "--report_to=tensorboard", f"--logging_dir={out / 'logs'}",
        *(["--learning_rate=2e-6"] if p.method == "dreambooth" else ["--learning_rate=1e-4", "--rank=4"]),
        *p.theirs,
    ]  # fmt: skip


def warm_hash_cache(s: Setup) -> None:
    """Hash the model and compile the pack once before the runs, as any earlier run would have (our CLI keeps model
    hashes on disk), so the first measured start-up is not the one-off hashing of a new file."""
    code = "import sys; from trainers.model_io import make_model_handle; make_model_handle(sys.argv[1])"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIKENESS_CACHE=str(s.root / "cache"), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code, str(s.model)], env=env, cwd=ROOT, check=True, capture_output=True)
    # Python caches compiled modules as any earlier run would have (unless PYTHONDONTWRITEBYTECODE is set, as on
    # some CI machines; the installed packages both trainers import come compiled by pip). diffusers' scripts are
    # compiled on every run, as Python does for any script it is given.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "trainers")], check=True, capture_output=True)


def run_probe(s: Setup, who: str, p: Pairing, index: int, counted: bool = False) -> dict:
    """One run in a fresh process; returns the probe's measurements plus the load average. ``counted``: the probe
    also counts the tensor bytes training adds (``LIKENESS_BENCH_TENSORS``; that run's times are not used)."""
    key = next(k for k, q in PAIRINGS.items() if q is p)
    out = s.root / f"run_{key}_{who}_{'counted' if counted else index}"
    result_file = out.with_suffix(".json")
    result_file.unlink(missing_ok=True)
    if who == "ours":
        target = ["--module", "trainers", "--", *our_args(s, p, out / "out.safetensors")]
    else:
        script = "train_dreambooth.py" if p.method == "dreambooth" else "train_dreambooth_lora.py"
        target = ["--script", str(s.diffusers / script), "--", *their_args(s, p, out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.update(LIKENESS_CACHE=str(s.root / "cache"), TOKENIZERS_PARALLELISM="false")
    env.pop("ACCELERATE_USE_CPU", None)
    env["LIKENESS_BENCH_T0"] = repr(time.time())
    env.pop("LIKENESS_BENCH_TENSORS", None)
    if counted:
        env["LIKENESS_BENCH_TENSORS"] = "1"
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, str(HERE / "probe.py"), str(result_file), str(s.steps), *target],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text(proc.stdout + proc.stderr)
    if not result_file.is_file():
        raise RuntimeError(f"{who} run of {p.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(result_file.read_text())
    data.update(who=who, pairing=p.name, run=index, load=load)
    s.results.append(data)
    return data


def predicted_growth_mb(s: Setup, p: Pairing, kind: str) -> float:
    """The planner's predicted peak over the loaded model for our run of ``p`` (what the CPU measurement is)."""
    from trainers import configspec
    from trainers.cli import build_parser
    from trainers.train.cli import config_class
    from trainers.train.memory import estimate, sd15_shapes, shapes_of

    args = our_args(s, p, s.root / "predict.safetensors")
    cfg = configspec.from_args(config_class(p.method), build_parser(p.method).parse_args(args[1:]))
    if kind == "sd15":
        shapes = sd15_shapes()
    else:
        from trainers.tiny import tiny_components

        c = tiny_components(0)
        shapes = shapes_of(c.unet, c.vae, c.text_encoder)
    return estimate(cfg, shapes, s.device).growth / 2**20


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def table(s: Setup, pairings: list[Pairing], warmup: int) -> str:
    """Markdown: medians of ours and theirs per pairing, and ours/theirs ratios."""
    mem = "cuda_peak_mb" if s.device == "cuda" else "rss_peak_mb"
    lines = [
        "| pairing | s/step ours | s/step diffusers | ratio | start-up s ours | diffusers | ratio "
        f"| peak {'CUDA' if s.device == 'cuda' else 'RSS'} MB ours | diffusers | ratio | growth MB ours | diffusers "
        "| planner's growth MB | measured / planner |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    loaded = "cuda_loaded_mb" if s.device == "cuda" else "rss_loaded_mb"
    for p in pairings:
        rows = [r for r in s.results if r["run"] >= warmup and not r.get("counted")]
        ours = [r for r in rows if r["who"] == "ours" and r["pairing"] == p.name]
        theirs_name = PAIRINGS[p.baseline].name if p.baseline else p.name
        theirs = [r for r in rows if r["who"] == "theirs" and r["pairing"] == theirs_name]
        cells = []
        for key in ("step_s", "startup_s", mem):
            a, b = median(ours, key), median(theirs, key)
            ratio = f"{a / b:.2f}" if a and b else "-"
            cells += [_fmt(a), _fmt(b), ratio]
        for group in (ours, theirs):
            growth = [r[mem] - r[loaded] for r in group if r.get(mem) is not None and r.get(loaded) is not None]
            cells.append(_fmt(statistics.median(growth)) if growth else "-")
        predicted = [r["predicted_growth_mb"] for r in ours if r.get("predicted_growth_mb")]
        measured = cells[-2]
        if predicted and measured != "-":
            cells += [_fmt(predicted[0]), f"{float(measured) / predicted[0]:.2f}"]
        else:
            cells += ["-", "-"]
        lines.append(f"| {p.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tensor_table(s: Setup, pairings: list[Pairing]) -> str:
    """Markdown: the tensor bytes training adds over the loaded model (the counted runs) against the planner."""
    lines = [
        "| pairing | tensor growth MB ours | diffusers | ratio | planner's growth MB | ours / planner |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in pairings:
        theirs_name = PAIRINGS[p.baseline].name if p.baseline else p.name
        found = {}
        for who, name in (("ours", p.name), ("theirs", theirs_name)):
            rows = [r for r in s.results if r.get("counted") and r["who"] == who and r["pairing"] == name]
            found[who] = rows[0] if rows else {}
        a, b = found["ours"].get("tensor_growth_mb"), found["theirs"].get("tensor_growth_mb")
        planned = found["ours"].get("predicted_growth_mb")
        cells = [_fmt(a), _fmt(b), f"{a / b:.2f}" if a and b else "-", _fmt(planned)]
        cells.append(f"{a / planned:.3f}" if a and planned else "-")
        lines.append(f"| {p.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.3f}" if x < 1 else f"{x:.2f}"


def wait_for_memory(gb: float, timeout: float = 1800) -> None:
    """Wait until the machine has ``gb`` GB available (a shared machine: never push others out of memory)."""
    from trainers.train.memory import available_bytes

    deadline = time.monotonic() + timeout
    while gb and available_bytes("cpu") < gb * 2**30:
        if time.monotonic() > deadline:
            raise SystemExit(f"less than {gb} GB available for {timeout:.0f} s; not starting the next run")
        time.sleep(10)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--resolution", type=int, default=None, help="default: 32 (tiny), 64 (sd15)")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per run (one more is started)")
    ap.add_argument("--runs", type=int, default=6, help="runs of each trainer per pairing (the first is a warm-up)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--pairings", default="unet,unet_te", help=f"comma-separated: {', '.join(PAIRINGS)}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--diffusers", type=Path, default=os.environ.get("DIFFUSERS_EXAMPLES"))
    ap.add_argument("--work", type=Path, default=None, help="keep the model and runs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's measurements here")
    ap.add_argument("--ours-only", action="store_true", help="do not run diffusers' scripts")
    ap.add_argument("--min-free-gb", type=float, default=0, help="wait for this much available RAM before each run")
    ap.add_argument(
        "--tensors", action="store_true",
        help="after the timed runs, one more run of each trainer per pairing that counts the tensor bytes training "
        "adds (what the planner predicts; slow: every op goes through a counter)",
    )  # fmt: skip
    return ap.parse_args(argv)


def run(args: argparse.Namespace, root: Path) -> Setup:
    resolution = args.resolution or (32 if args.model == "tiny" else 64)
    diffusers = None if args.ours_only else args.diffusers
    if not args.ours_only and (diffusers is None or not (Path(diffusers) / "train_dreambooth.py").is_file()):
        raise SystemExit("set DIFFUSERS_EXAMPLES (or --diffusers) to diffusers' examples/dreambooth folder")
    s = Setup(
        root=root, model=write_model(args.model, root / f"model-{args.model}"),
        images=write_images(root / f"images-{resolution}", 4, resolution), resolution=resolution, steps=args.steps,
        batch=args.batch, device=args.device, precision=args.precision, diffusers=Path(diffusers) if diffusers else None,
    )  # fmt: skip
    pairings = [PAIRINGS[name] for name in args.pairings.split(",")]
    warm_hash_cache(s)
    print(f"# {args.model} {resolution}px batch {args.batch} {args.device} {args.precision}, {args.steps} steps/run, "
          f"{args.runs} runs each (first left out), load before: {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    predictions: dict[str, float] = {}
    rounds = [(i, False) for i in range(args.runs)] + ([(args.runs, True)] if args.tensors else [])
    for i, counted in rounds:
        for p in pairings:
            for who in ("ours", "theirs") if s.diffusers and not p.baseline else ("ours",):
                wait_for_memory(args.min_free_gb)
                r = run_probe(s, who, p, i, counted=counted)
                if who == "ours" and s.device == "cpu":
                    if p.name not in predictions:
                        predictions[p.name] = predicted_growth_mb(s, p, args.model)
                    r["predicted_growth_mb"] = predictions[p.name]
                what = f"tensors {r['tensor_growth_mb']:.1f} MB" if counted else f"step {_fmt(r['step_s'])} s"
                print(f"  {p.name} [{who} #{'counted' if counted else i}] {what}, start-up {_fmt(r['startup_s'])} s, "
                      f"peak RSS {r['rss_peak_mb']:.0f} MB (loaded {r['rss_loaded_mb']:.0f}), load {r['load']:.1f}",
                      flush=True)  # fmt: skip
    print(table(s, pairings, warmup=1 if args.runs > 1 else 0))
    if args.tensors:
        print()
        print(tensor_table(s, pairings))
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        s = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="likeness-sbs.") as tmp:
            s = run(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(s.results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
