"""Likeness score costs: CPU time to score one 512-px picture and to build a 16-photo reference, and the figure the
evaluation-cost arithmetic needs (how many probe denoising steps one training step is worth).

    python -m benchmarks.bench_likeness                 # identity timings (dlib, CPU)
    python -m benchmarks.bench_likeness --unet-ratio    # + a full-size SD1.5 UNet (random weights): one training
                                                        #   step vs one probe denoising step, on this machine

Pictures are scikit-image's astronaut (NASA, public domain) at 512x512 and 16 variants of it (crops, mirror, colour,
rotation; all resized to 512x512). Results go to docs/benchmarks.md ("Likeness score").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn, repeat: int) -> dict[str, float]:
    """Median wall and process CPU seconds of ``fn()`` over ``repeat`` calls."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}


def pictures(n: int):
    from PIL import Image, ImageEnhance, ImageOps
    from skimage import data

    a = Image.fromarray(data.astronaut())
    out = []
    for i in range(n):
        im = a.crop((8 * (i % 5), 4 * (i % 4), 512 - 8 * ((i + 2) % 5), 512 - 4 * ((i + 1) % 4)))
        im = ImageOps.mirror(im) if i % 2 else im
        im = ImageEnhance.Color(im).enhance(0.6 + 0.05 * i).rotate((i % 7) - 3)
        out.append(im.resize((512, 512)))
    return out


def identity_costs(repeat: int = 5) -> dict[str, object]:
    import tempfile

    from trainers.identity import backend
    from trainers.identity.faces import analyse
    from trainers.identity.reference import build_reference

    t0 = time.perf_counter()
    models = backend.load()
    load_s = time.perf_counter() - t0
    one = pictures(1)[0]
    analyse(one)  # warm-up
    stages = _stage_costs(models, one, repeat)
    score_one = _timed(lambda: analyse(one), repeat)
    sixteen = pictures(16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, im in enumerate(sixteen):
            im.save(folder / f"{i:02d}.png")
        cold = _timed(lambda: build_reference([folder], cache=False), 1)
        build_reference([folder])  # fills the content cache
        warm = _timed(lambda: build_reference([folder]), 3)
    return {"backend": backend.describe(models), "load_s": round(load_s, 2), "score_512": score_one,
            "stages_512_ms": stages, "reference_16_cold": cold, "reference_16_cached": warm}  # fmt: skip


def _stage_costs(models, picture, repeat: int) -> dict[str, float]:
    import numpy as np

    rgb = np.ascontiguousarray(np.asarray(picture))
    rects, _, _ = models.detector.run(rgb, 0, 0.0)
    shape = models.landmarks(rgb, rects[0])
    detect = _timed(lambda: models.detector.run(rgb, 0, 0.0), repeat)["cpu_s"]
    marks = _timed(lambda: models.landmarks(rgb, rects[0]), repeat)["cpu_s"]
    describe = _timed(lambda: models.descriptor.compute_face_descriptor(rgb, shape, 0, 0.25), repeat)["cpu_s"]
    return {
        "detect": round(detect * 1e3, 1),
        "landmarks": round(marks * 1e3, 2),
        "descriptor": round(describe * 1e3, 1),
    }


def unet_ratio(latent: int = 32, repeat: int = 2) -> dict[str, float]:
    """A full-size SD1.5 UNet (random weights, fp32, CPU): one DreamBooth training step's UNet work (subject + class
    image, gradient checkpointing, forward + backward) vs one probe denoising step (cond + uncond, no grad)."""
    import torch

    from trainers.model_io.model_configs import build_unet, bundled_config

    gen = torch.Generator().manual_seed(0)
    unet = build_unet(bundled_config("unet")).to_empty(device="cpu")  # built on the meta device
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=gen)
    unet.enable_gradient_checkpointing()
    x = torch.randn(2, 4, latent, latent)
    t = torch.tensor([500, 500])
    ctx = torch.randn(2, 77, 768)

    def train_step():
        unet.train()
        unet.zero_grad(set_to_none=True)
        out = unet(x, t, encoder_hidden_states=ctx).sample
        out.float().pow(2).mean().backward()

    def probe_step():
        unet.eval()
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)

    probe_step(), train_step()  # warm-up
    probe = _timed(probe_step, repeat)["wall_s"]
    train = _timed(train_step, repeat)["wall_s"]
    unet.zero_grad(set_to_none=True)  # the gradients go before the VAE is built
    decode = vae_decode_cost(latent, repeat)
    return {"latent": latent, "probe_step_s": probe, "train_step_s": train, "ratio": round(train / probe, 2),
            "vae_decode_s": decode, "decode_in_probe_steps": round(decode / probe, 2)}  # fmt: skip


def vae_decode_cost(latent: int, repeat: int) -> float:
    """Wall seconds of the full-size SD VAE decoding one probe's latents (random weights, fp32, CPU)."""
    import torch

    from trainers.model_io.model_configs import build_vae, bundled_config

    gen = torch.Generator().manual_seed(1)
    vae = build_vae(bundled_config("vae")).to_empty(device="cpu")
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0, 0.02, generator=gen)
    z = torch.randn(1, 4, latent, latent)

    def decode():
        with torch.no_grad():
            vae.decode(z)

    decode()
    return _timed(decode, repeat)["wall_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_likeness", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--unet-ratio", action="store_true", help="also time a full-size SD1.5 UNet (needs ~8 GB)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = {"identity": identity_costs(args.repeat), "loadavg": os.getloadavg()}
    if args.unet_ratio:
        result["unet"] = unet_ratio()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
