"""One-off check on a full-size SD1.5 (random fp16 weights, 1.07B parameters, ~2.1 GB file; peak RSS ~4.5 GB):

1. ``save_single_file`` writes the original LDM layout (1131 tensors: 686 UNet, 248 VAE, 197 text encoder with
   ``position_ids``);
2. import -> export is bit-exact for every tensor at full size;
3. diffusers' ``StableDiffusionPipeline.from_single_file(path, config=<our bundled configs/sd15>)`` reads our file
   offline and gets the same UNet, VAE and text-encoder weights.

    .venv/bin/python benchmarks/sd15_full_size_check.py [--dir DIR]

Too heavy for the test suite (which checks the same layout on the meta device); run it by hand after changing the
key tables or the bundled configs. Prints one line per check and the timings.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def _random_sd15(seed: int = 0):
    import torch

    from trainers.model_io.components import Components, make_noise_scheduler
    from trainers.model_io.model_configs import build_text_encoder, build_unet, build_vae, bundled_config

    gen = torch.Generator().manual_seed(seed)
    models = []
    for build, name in ((build_unet, "unet"), (build_vae, "vae"), (build_text_encoder, "text_encoder")):
        model = build(bundled_config(name)).to(torch.float16).to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02, generator=gen)
        models.append(model)
    return Components(*models, None, make_noise_scheduler())


def _compare_files(a: Path, b: Path) -> tuple[int, list[str]]:
    import torch
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        ka, kb = set(fa.keys()), set(fb.keys())
        diff = sorted(ka ^ kb)
        for k in sorted(ka & kb):
            x, y = fa.get_tensor(k), fb.get_tensor(k)
            if x.dtype != y.dtype or not torch.equal(x, y):
                diff.append(k)
    return len(ka), diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="working folder (default: a temporary one; needs ~5 GB)")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="likeness-sd15-"))
    work.mkdir(parents=True, exist_ok=True)

    import torch
    from safetensors import safe_open

    from trainers.model_io import load_components, save_single_file
    from trainers.model_io.components import ldm_tables
    from trainers.model_io.convert import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
    from trainers.model_io.model_configs import CONFIG_DIR
    from trainers.tiny import tiny_tokenizer

    ok = True
    t0 = time.perf_counter()
    comps = _random_sd15()
    first = save_single_file(comps, work / "a.safetensors", dtype="fp16", overwrite=True)
    comps = None
    gc.collect()
    with safe_open(str(first), framework="pt") as f:
        keys = list(f.keys())
    counts = {p: sum(k.startswith(p) for k in keys) for p in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)}
    want = {UNET_PREFIX: 686, VAE_PREFIX: 248, TEXT_PREFIX: 197}
    print(
        f"[{'ok' if counts == want else 'FAIL'}] layout: {len(keys)} tensors {counts} ({first.stat().st_size / 1e9:.2f} GB)"
    )
    ok &= counts == want
    t1 = time.perf_counter()

    tok = tiny_tokenizer()
    loaded = load_components(first, tokenizer=tok, dtype=torch.float16)
    second = save_single_file(loaded, work / "b.safetensors", dtype="fp16", overwrite=True)
    loaded = None
    gc.collect()
    n, diff = _compare_files(first, second)
    print(f"[{'ok' if not diff else 'FAIL'}] round trip: {n} tensors, {len(diff)} differ {diff[:3]}")
    ok &= not diff
    t2 = time.perf_counter()

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(first),
        config=str(CONFIG_DIR),
        tokenizer=tok,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=torch.float16,
        local_files_only=True,
    )
    tables = ldm_tables(pipe)
    bad = []
    with safe_open(str(first), framework="pt") as f:
        for name, table in tables.items():
            state = getattr(pipe, name).state_dict()
            for key, ldm_key in table.to_ldm.items():
                want_t = f.get_tensor(ldm_key)
                got = state[key]
                if got.shape != want_t.shape:
                    got = got.reshape(want_t.shape)
                if not torch.equal(got, want_t):
                    bad.append(key)
    print(
        f"[{'ok' if not bad else 'FAIL'}] diffusers from_single_file(config=configs/sd15): {len(bad)} differ {bad[:3]}"
    )
    ok &= not bad
    t3 = time.perf_counter()
    print(
        f"times: write {t1 - t0:.0f}s, import+export+compare {t2 - t1:.0f}s, diffusers {t3 - t2:.0f}s; peak RSS {_rss_gb():.1f} GB"
    )
    if not args.dir:
        for p in (first, second):
            p.unlink()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
