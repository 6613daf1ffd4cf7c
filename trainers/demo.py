"""``python -m trainers demo``: the whole Likeness pipeline, headless, through the same code the nodes use.

On embedded defaults (no arguments) it builds a tiny SD1.5-shaped model, writes it as a civitai-style single file,
writes a second tiny model that ComfyUI's own loader accepts (for trying the graphs in the page), makes a set of
sample photos from scikit-image's astronaut picture, and then runs: load/convert/export check → face crop → class
images → DreamBooth → LoRA → samples at a 768×1024 aspect (scaled down for the tiny model), with a progress bar for
every phase at a terminal. It prints where every output is. A second run reuses what is already there (dataset,
class images, trained results). With ``--checkpoint`` (a real SD1.5 file), ``--tokenizer`` and ``--photos`` it does
the real thing (use a GPU).

The tiny models have random weights: their class images and samples are colour noise, and the demo says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import progress
from .errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

TINY_RESOLUTION = 32  # training side for the tiny model (latents 16×16)
TINY_SAMPLE = (48, 64)  # 768×1024 (3:4 portrait) scaled down for the tiny model
REAL_SAMPLE = (768, 1024)
TINY_STEPS, TINY_CLASS_COUNT = 30, 8
COMFY_MODEL = "likeness-tiny-sd15.safetensors"  # in <output>/models/checkpoints/
NOISE_NOTE = (
    "the tiny models have random weights, so their class images and samples are colour noise: that is expected. "
    "With a real SD1.5 checkpoint (--checkpoint) the class images are photos of the class and the samples show "
    "your subject."
)


def real_defaults() -> dict[str, int]:
    """The real run's steps and class count: the option schema's defaults (what the nodes use)."""
    from .classgen import ClassImagesConfig
    from .configspec import spec_map
    from .lora.config import LoRAConfig
    from .train.config import DreamBoothConfig

    return {
        "steps": spec_map(DreamBoothConfig)["steps"].default,
        "lora_steps": spec_map(LoRAConfig)["steps"].default,
        "class_count": spec_map(ClassImagesConfig)["count"].default,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    real = real_defaults()
    parser.add_argument("--output", default="likeness-output", help="folder for everything the demo writes")
    parser.add_argument("--checkpoint", help="a real SD1.5 checkpoint (.safetensors/.ckpt) or diffusers folder")
    parser.add_argument("--tokenizer", help="CLIP tokenizer folder for --checkpoint (e.g. ComfyUI/comfy/sd1_tokenizer)")
    parser.add_argument("--photos", help="folder with 15+ photos of your subject (default: generated samples)")
    parser.add_argument("--token", default="sks", help="rare token that names the subject")
    parser.add_argument("--subject-class", default="woman", help="class of the subject (woman, man, person, dog...)")
    parser.add_argument(
        "--steps", type=int, help=f"DreamBooth steps (default: {TINY_STEPS} tiny / {real['steps']} real)"
    )
    parser.add_argument(
        "--lora-steps", type=int, help=f"LoRA steps (default: {TINY_STEPS} tiny / {real['lora_steps']} real)"
    )
    parser.add_argument(
        "--class-count", type=int, help=f"class images (default: {TINY_CLASS_COUNT} tiny / {real['class_count']} real)"
    )
    parser.add_argument(
        "--no-comfy-model", action="store_true", help=f"do not write the ComfyUI-loadable tiny model ({COMFY_MODEL})"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step")


@dataclass
class DemoReport:
    outputs: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def step(self, title: str, text: str, *notes: str, **outputs: Any) -> None:
        self.lines.append(f"[{len(self.lines) + 1}] {title}: {text}")
        for name, path in outputs.items():
            self.outputs[name] = str(path)
        print(self.lines[-1], flush=True)
        for note in notes:
            print(f"      {note}", flush=True)
        for name, path in outputs.items():
            print(f"      {name}: {path}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# steps


def build_tiny_model(models: Path, report: DemoReport) -> tuple[Path, Path]:
    """The embedded default model: tiny SD1.5-shaped components, saved as a civitai-style file + a tokenizer."""
    from .tiny import tiny_components, write_civitai_file

    models.mkdir(parents=True, exist_ok=True)
    comps = tiny_components(seed=0)
    ckpt = write_civitai_file(comps, models / "tiny-sd15.safetensors", dtype="fp32")
    tok_dir = models / "tokenizer"
    comps.tokenizer.save_pretrained(str(tok_dir))
    params = sum(p.numel() for m in (comps.unet, comps.vae, comps.text_encoder) for p in m.parameters())
    text = f"built a tiny SD1.5-shaped model ({params / 1e6:.2f}M parameters, random weights)"
    report.step("model", text, "note: " + NOISE_NOTE, checkpoint=ckpt)
    return ckpt, tok_dir


def write_comfy_model(models: Path, report: DemoReport) -> Path:
    """A tiny SD1.5 that ComfyUI's own loader accepts (one-level 320-channel UNet, full CLIP-L and SD VAE), in a
    ``models/checkpoints`` folder, plus an ``extra_model_paths.yaml`` entry that points a ComfyUI at it."""
    from .tiny import is_comfy_tiny, write_comfy_tiny

    dest = models / "checkpoints" / COMFY_MODEL
    if is_comfy_tiny(dest):
        state = "reused"
    else:
        progress.write(f"building the ComfyUI-loadable tiny model {dest.name} ...")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with progress.saving(dest):
            write_comfy_tiny(dest)
        state = "wrote"
    yaml = models.parent / "extra_model_paths.yaml"
    yaml.write_text(
        "# Lets a ComfyUI list the demo's model: copy this entry into ComfyUI's extra_model_paths.yaml (beside its\n"
        "# main.py) and restart ComfyUI; the model is then offered as likeness-tiny-sd15.safetensors.\n"
        f"likeness_demo:\n    base_path: {models}\n    checkpoints: checkpoints\n"
    )
    size = dest.stat().st_size / 1e6
    text = (
        f"{state} a tiny SD1.5 that ComfyUI loads ({size:.0f} MB, fp16: the full-size CLIP-L text encoder and SD VAE "
        "are most of it, the UNet is one 320-channel level)"
    )
    notes = ("to try the example workflows in ComfyUI's page with it, add extra_model_paths.yaml's entry to your "
             "ComfyUI's; it has random weights, so it draws noise, but every node runs",)  # fmt: skip
    report.step("comfyui model", text, *notes, comfyui_checkpoint=dest, extra_model_paths=yaml)
    return dest


def check_model_io(ckpt: Path, tokenizer: Any, models: Path, report: DemoReport) -> None:
    """Load the single file into diffusers components, export it back, and compare every tensor."""
    import torch
    from safetensors.torch import load_file

    from .model_io import inspect_checkpoint, load_components, save_single_file

    info = inspect_checkpoint(ckpt)
    comps = load_components(ckpt, tokenizer=tokenizer)
    again = save_single_file(comps, models / "roundtrip.safetensors", dtype="fp32", overwrite=True)
    if ckpt.suffix == ".safetensors" and ckpt.stat().st_size < 2**31:
        a, b = load_file(str(ckpt)), load_file(str(again))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        verdict = f"{len(a)} tensors, round trip {'bit-exact' if same else 'DIFFERENT'}"
        if not same:
            raise RuntimeError(f"model I/O round trip changed tensors of {ckpt}")
    else:
        verdict = "exported"
    counts = ", ".join(f"{k} {v}" for k, v in info.get("counts", {}).items())
    report.step("convert", f"{info.get('variant')} {info.get('dtype')} ({counts}); {verdict}", roundtrip=again)
    del comps


def make_sample_photos(folder: Path, report: DemoReport, n: int = 16) -> Path:
    """Sample 'photos of one person': scikit-image's astronaut picture (public domain), varied in framing, scale,
    brightness and mirroring, saved as JPEGs."""
    try:
        from skimage import data
    except ImportError as e:
        raise DatasetError("the sample photos need scikit-image (pip install scikit-image) or pass --photos") from e
    from PIL import Image, ImageEnhance

    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(data.astronaut())  # 512×512, face near (235, 115)
    big = base.resize((1024, 1024), Image.LANCZOS)
    for k in range(n):
        # a head tilt, framing, light and colour of its own: the crops (centred on the face) must not be
        # near-duplicates of one another, or the dataset check drops them
        angle = (-12, -8, -4, 0, 4, 8, 12, -10)[k % 8]
        img = big.rotate(angle, resample=Image.BICUBIC, center=(470, 230))
        w = int(760 / (1.0 + 0.05 * (k % 4)))
        cx, cy = 470 + 12 * ((k * 7) % 5 - 2), 330 + 10 * ((k * 3) % 5 - 2)
        box = (max(cx - w // 2, 0), max(cy - w // 3, 0))
        img = img.crop((box[0], box[1], min(box[0] + w, 1024), min(box[1] + int(w * 1.25), 1024)))
        img = ImageEnhance.Brightness(img).enhance(0.85 + 0.05 * (k % 5))
        img = ImageEnhance.Color(img).enhance(0.7 + 0.1 * (k % 6))
        if k >= 8:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(folder / f"photo_{k:02d}.jpg", quality=92)
    report.step("photos", f"generated {n} sample photos", photos=folder)
    return folder


def crop_faces(photos: Path, out: Path, prompt: str, resolution: int, report: DemoReport):
    from .data.crop import CropConfig, build_dataset
    from .data.crop_cli import CropProgress

    cfg = CropConfig(instance_prompt=prompt, resolution=resolution)
    bar = CropProgress(lines=False)
    try:
        outcome = build_dataset(cfg, input_folder=photos, output_root=out, progress=bar)
    finally:
        bar.close()
    if outcome.count == 0:
        raise DatasetError(f"no usable face photos in {photos}:\n{outcome.text}")
    verdict = outcome.report["summary"]["verdict"]
    report.step("face crop", f"{'reused the dataset: ' if outcome.reused else ''}{verdict}", dataset=outcome.folder)
    return outcome


def class_images(ckpt: Path, tokenizer: Any, out: Path, prompt: str, count: int, res: int, steps: int, seed: int,
                 device: str, report: DemoReport):  # fmt: skip
    from .classgen import ClassImagesConfig, generate_class_images
    from .classgen.cli import ClassProgress

    cfg = ClassImagesConfig(
        class_prompt=prompt, count=count, resolution=res, steps=steps, seed=seed, device=device, batch_size=4
    )
    bar = ClassProgress(cfg, str(ckpt), out, lines=False)
    try:
        result = generate_class_images(cfg, model=str(ckpt), tokenizer=tokenizer, output_root=out, on_image=bar)
    finally:
        bar.close()
    report.step("class images", result.summary(), class_images=result.folder)
    return result


def train(kind: str, ckpt: Path, tokenizer: Any, dataset: Path, classes: Path | None, instance_prompt: str,
          class_prompt: str, dest: Path, steps: int, res: int, seed: int, device: str, report: DemoReport):  # fmt: skip
    """Train through the same session as the CLI and the nodes (a second run reuses the result), with a bar."""
    from .train import DreamBoothConfig
    from .train.cli import TextProgress, make_session, run_session

    if kind == "lora":
        from .lora.config import LoRAConfig as Config
    else:
        Config = DreamBoothConfig
    tiny = res <= 64
    options = dict(
        base_model=str(ckpt), tokenizer=str(tokenizer) if tokenizer else None, instance_data=str(dataset),
        instance_prompt=instance_prompt, class_data=str(classes) if classes else None, class_prompt=class_prompt,
        prior_preservation=classes is not None, output=str(dest), overwrite=True, steps=steps, resolution=res,
        seed=seed, device=device, sample_prompts=[f"{instance_prompt}, portrait"], sample_steps=10 if tiny else 25,
    )  # fmt: skip
    if tiny:
        options["learning_rate"] = 1e-4 if kind == "dreambooth" else 1e-3
    session, handle = make_session(Config(**options))
    bar = TextProgress(enabled=progress.interactive(), title=kind)
    try:
        result = run_session(session, handle, tokenizer, bar)
    finally:
        bar.close()
    if result.state == "reused":
        text = "reused the result trained earlier with this model, these images and options"
    else:
        losses = result.losses
        q = max(len(losses) // 4, 1)
        first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
        text = f"{result.steps_done} steps in {result.outcome.elapsed:.1f} s, loss {first:.4f} → {last:.4f}"
    report.step(kind, text, **{kind: result.path})
    return result


def sample(model_path: Path, tokenizer: Any, prompt: str, size: tuple[int, int], seed: int, dest: Path,
           report: DemoReport, lora: Path | None = None, title: str = "samples") -> Path:  # fmt: skip
    """Sample with a trained checkpoint (or the base + a LoRA) at a portrait 3:4 size; writes a PNG."""
    import torch
    from diffusers import DDIMScheduler

    from .model_io import load_components, make_pipeline

    comps = load_components(model_path, tokenizer=tokenizer)
    if lora is not None:  # merge the LoRA file into the base weights (what a loader does at strength 1)
        from .lora.adapters import merge_into
        from .lora.kohya import read_kohya, resolve

        unet_layers, te_layers = resolve(read_kohya(lora), comps.unet, comps.text_encoder, source=str(lora))
        merge_into(comps.unet, unet_layers)
        merge_into(comps.text_encoder, te_layers)
    pipe = make_pipeline(comps, DDIMScheduler.from_config(comps.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=not progress.interactive(), desc=title, **progress.tqdm_options())
    width, height = size
    images = pipe(
        [prompt] * 2,
        width=width,
        height=height,
        num_inference_steps=20,
        guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(seed + i) for i in range(2)],
    ).images
    from PIL import Image

    sheet = Image.new("RGB", (width * len(images), height))
    for i, im in enumerate(images):
        sheet.paste(im, (i * width, 0))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)
    report.step(title, f"'{prompt}' at {width}×{height}", **{title: dest})
    return dest


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What one demo run uses: the model, its tokenizer, sizes and counts (tiny defaults or a real checkpoint)."""

    ckpt: Path
    tokenizer: Any
    res: int
    size: tuple[int, int]
    steps: int
    lora_steps: int
    count: int
    class_steps: int
    real: bool


def make_plan(args: argparse.Namespace, models: Path, report: DemoReport) -> Plan:
    if args.checkpoint is None:
        ckpt, tokenizer = build_tiny_model(models, report)
        steps, count = args.steps or TINY_STEPS, args.class_count or TINY_CLASS_COUNT
        return Plan(
            ckpt, tokenizer, TINY_RESOLUTION, TINY_SAMPLE, steps, args.lora_steps or TINY_STEPS, count, 4, False
        )
    ckpt = Path(args.checkpoint)
    if args.tokenizer is None and not ckpt.is_dir():
        raise ConfigError(
            "--checkpoint is a single file: also pass --tokenizer (e.g. ComfyUI/comfy/sd1_tokenizer or the "
            "'tokenizer' folder of a diffusers SD1.5 model)"
        )
    real = real_defaults()
    steps, lora_steps = args.steps or real["steps"], args.lora_steps or real["lora_steps"]
    count = args.class_count or real["class_count"]
    return Plan(ckpt, args.tokenizer, 512, REAL_SAMPLE, steps, lora_steps, count, 30, True)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = DemoReport()
    t0 = time.perf_counter()
    instance_prompt = f"a photo of {args.token} {args.subject_class} face"
    class_prompt = f"a photo of {args.subject_class} face"
    models = out / "models"
    plan = make_plan(args, models, report)
    ckpt, tokenizer, res = plan.ckpt, plan.tokenizer, plan.res
    check_model_io(ckpt, tokenizer, models, report)
    if not plan.real and not args.no_comfy_model:
        write_comfy_model(models, report)

    photos = Path(args.photos) if args.photos else make_sample_photos(out / "photos", report)
    crops = crop_faces(photos, out, instance_prompt, res if plan.real else max(res, 64), report)
    classes = class_images(ckpt, tokenizer, out, class_prompt, plan.count, res, plan.class_steps, args.seed,
                           args.device, report)  # fmt: skip
    db = train("dreambooth", ckpt, tokenizer, crops.folder, classes.folder, instance_prompt, class_prompt,
               out / "dreambooth.safetensors", plan.steps, res, args.seed, args.device, report)  # fmt: skip
    lora = train("lora", ckpt, tokenizer, crops.folder, classes.folder, instance_prompt, class_prompt,
                 out / "lora.safetensors", plan.lora_steps, res, args.seed, args.device, report)  # fmt: skip

    prompt = f"{instance_prompt}, portrait"
    sample(db.path, tokenizer, prompt, plan.size, args.seed, out / "samples" / "dreambooth.png", report,
           title="dreambooth samples")  # fmt: skip
    sample(ckpt, tokenizer, prompt, plan.size, args.seed, out / "samples" / "lora.png", report, lora=lora.path,
           title="lora samples")  # fmt: skip

    summary = out / "outputs.json"
    summary.write_text(json.dumps(report.outputs, indent=2))
    print(f"\ndone in {time.perf_counter() - t0:.0f} s; every output is listed in {summary}")
    for name, path in report.outputs.items():
        print(f"  {name:<20} {path}")
    if not plan.real:
        print(f"\nWhat to expect: {NOISE_NOTE}")
    return 0
