"""The learning proof on real weights (GPU): CLIP-I, CLIP-T and prior drift for DreamBooth / LoRA on SD1.5.

The tiny CPU proof (:mod:`benchmarks.learning_proof`) measures pixels. With a real SD1.5 checkpoint, real photos of a
subject and a CLIP model, this script measures what the DreamBooth paper (Ruiz et al. 2023, sec. 4.1) measures:

- **CLIP-I** (subject fidelity, higher is better): mean cosine similarity between the CLIP image embeddings of the
  instance-prompt samples and of the real subject photos;
- **CLIP-T** (prompt fidelity, higher is better): mean cosine similarity between the CLIP image embedding of each
  sample of a prompt such as "a photo of sks woman face on a beach" and the CLIP text embedding of that prompt
  without the rare token;
- **PRES-style prior drift** (lower is better): 1 - cosine similarity between class-prompt samples after training and
  the base model's samples from the same seeds; and **class→subject** similarity (CLIP-I of class-prompt samples,
  lower is better: the class was not taken over by the subject).

Training runs through the product's loop (``trainers.train.train``), with the node defaults unless flags say
otherwise; class images come from ``trainers.classgen`` (the Generate Class Images node's engine). Run on a GPU::

    python -m benchmarks.learning_proof --clip \\
        --comfyui /path/to/ComfyUI --base-model v1-5-pruned-emaonly.safetensors \\
        --instance-data photos/ --instance-prompt "a photo of sks woman face" --class-prompt "a photo of woman face" \\
        --clip-vision clip_vision_l.safetensors --clip-text clip_l.safetensors --out proof_out/

The image tower comes from ComfyUI's ``models/clip_vision`` (Hugging Face key layout: ``vision_model.*`` and
``visual_projection.weight``; ViT-L/14 or ViT-H/14 files as used by IP-Adapter). CLIP-T needs the *matching* text
tower with its ``text_projection``: for a ViT-L/14 image tower, ComfyUI's ``models/clip/clip_l.safetensors`` (SD1.5's
own text encoder is the same network but its checkpoints drop ``text_projection``). Without it, CLIP-T is skipped
and the report says why.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CONTEXTS = (
    "",
    " on a beach",
    " in the snow",
    " in a city street at night",
    " wearing a red hat",
    " in a watercolor painting",
)


# ---------------------------------------------------------------------------------------------------------------
# CLIP towers from single files


def _load_state_dict(path: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _count_layers(sd: dict[str, Any], prefix: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def vision_config_from_state_dict(sd: dict[str, Any]):
    """A ``CLIPVisionConfig`` read off the tensor shapes (ViT-B/L/H/G all work)."""
    from transformers import CLIPVisionConfig

    if "vision_model.embeddings.class_embedding" not in sd:
        raise ValueError(
            "not a CLIP vision model in Hugging Face layout (no 'vision_model.embeddings.class_embedding'); "
            "use a ComfyUI models/clip_vision file such as CLIP-ViT-L-14 / CLIP-ViT-H-14"
        )
    hidden = sd["vision_model.embeddings.class_embedding"].shape[0]
    patch = sd["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = _count_layers(sd, "vision_model.encoder.layers.")
    inter = sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    proj = sd["visual_projection.weight"].shape[0] if "visual_projection.weight" in sd else hidden
    openai_l = hidden == 1024 and layers == 24 and patch == 14  # OpenAI's ViT-L/14 uses quick_gelu, OpenCLIP gelu
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        patch_size=patch,
        image_size=int(round(math.sqrt(positions - 1))) * patch,
        projection_dim=proj,
        hidden_act="quick_gelu" if openai_l or hidden <= 768 else "gelu",
    )


def text_config_from_state_dict(sd: dict[str, Any], eos_token_id: int = 2):
    """A ``CLIPTextConfig`` read off the shapes. ``eos_token_id=2`` is OpenAI CLIP's: pool at the highest token id."""
    from transformers import CLIPTextConfig

    hidden = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    return CLIPTextConfig(
        vocab_size=sd["text_model.embeddings.token_embedding.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count_layers(sd, "text_model.encoder.layers."),
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        projection_dim=sd["text_projection.weight"].shape[0],
        hidden_act="quick_gelu",
        eos_token_id=eos_token_id,
    )


def load_clip_vision(path: str | Path, device: str = "cpu", dtype=None):
    """``CLIPVisionModelWithProjection`` from a ComfyUI ``models/clip_vision`` file."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    sd = _load_state_dict(path)
    model = CLIPVisionModelWithProjection(vision_config_from_state_dict(sd))
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"{path}: CLIP vision weights missing: {missing[:5]}")
    if unexpected:
        log.info("%s: ignoring %d tensors that are not the vision tower", path, len(unexpected))
    return model.to(device, dtype or torch.float32).eval()


def load_clip_text(path: str | Path, device: str = "cpu", dtype=None, eos_token_id: int = 2):
    """``CLIPTextModelWithProjection`` from a file holding ``text_model.*`` and ``text_projection.weight``."""
    import torch
    from transformers import CLIPTextModelWithProjection

    sd = _load_state_dict(path)
    sd = {k.removeprefix("cond_stage_model.transformer."): v for k, v in sd.items()}
    if "text_projection.weight" not in sd or "text_model.embeddings.token_embedding.weight" not in sd:
        raise ValueError(
            f"{path} has no CLIP text tower with 'text_projection.weight'; CLIP-T needs e.g. ComfyUI's "
            "models/clip/clip_l.safetensors"
        )
    model = CLIPTextModelWithProjection(text_config_from_state_dict(sd, eos_token_id))
    sd = {k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection.")) and "position_ids" not in k}
    model.load_state_dict(sd, strict=True)
    return model.to(device, dtype or torch.float32).eval()


def preprocess(images: list, size: int):
    """CLIP's preprocessing: shorter side to ``size`` (bicubic), centre crop, normalise. Returns (N, 3, size, size)."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = (np.asarray(im, dtype=np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(
            CLIP_STD, np.float32
        )
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out)


def image_embeddings(model, images: list, batch: int = 16):
    """L2-normalised projected image embeddings (N, D)."""
    import torch

    p = next(model.parameters())
    size = model.config.image_size
    chunks = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            px = preprocess(images[i : i + batch], size).to(p.device, p.dtype)
            chunks.append(model(pixel_values=px).image_embeds.float())
    e = torch.cat(chunks)
    return e / e.norm(dim=-1, keepdim=True)


def text_embeddings(model, tokenizer, prompts: list[str]):
    import torch

    p = next(model.parameters())
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        e = model(input_ids=ids.to(p.device)).text_embeds.float()
    return e / e.norm(dim=-1, keepdim=True)


def mean_pairwise_cosine(a, b) -> float:
    """Mean cosine similarity over all pairs of two sets of normalised embeddings."""
    return float((a @ b.T).mean())


# ---------------------------------------------------------------------------------------------------------------
# the benchmark


@dataclass
class Prompts:
    instance: str
    cls: str
    token: str

    def contexts(self, contexts=DEFAULT_CONTEXTS) -> list[tuple[str, str]]:
        """(prompt for the model, the same without the rare token for CLIP-T)."""
        plain = re.sub(rf"\b{re.escape(self.token)}\s*", "", self.instance).strip()
        return [(self.instance + c, plain + c) for c in contexts]


def sample(components, prompts: list[str], seeds: list[int], args) -> list:
    """One image per (prompt, seed): DDIM, the same start noise for every model."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    c = components
    pipe = StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=DDIMScheduler.from_config(c.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for prompt in prompts:
        for s in seeds:
            g = torch.Generator(args.device).manual_seed(s)
            images += pipe(
                prompt,
                height=args.resolution,
                width=args.resolution,
                num_inference_steps=args.sample_steps,
                guidance_scale=args.guidance,
                generator=g,
            ).images
    return images


def load_base(args):
    import torch

    from trainers.model_io import load_components

    dtype = torch.float16 if args.device == "cuda" else torch.float32
    return load_components(args.base_model, tokenizer=args.tokenizer, dtype=dtype, device=args.device)


def evaluate(components, args, prompts: Prompts, clip: dict[str, Any], subject_emb) -> dict[str, Any]:
    seeds = list(range(args.seed, args.seed + args.samples))
    inst = sample(components, [prompts.instance], seeds, args)
    cls = sample(components, [prompts.cls], seeds, args)
    out: dict[str, Any] = {"cls_images": cls}
    out["clip_i"] = mean_pairwise_cosine(image_embeddings(clip["vision"], inst), subject_emb)
    cls_emb = image_embeddings(clip["vision"], cls)
    out["cls_emb"] = cls_emb
    out["cls_subject"] = mean_pairwise_cosine(cls_emb, subject_emb)
    if clip.get("text") is not None:
        scores = []
        for prompt, plain in prompts.contexts():
            imgs = sample(components, [prompt], seeds[: max(1, args.samples // 2)], args)
            t = text_embeddings(clip["text"], components.tokenizer, [plain])
            scores.append(float((image_embeddings(clip["vision"], imgs) @ t.T).mean()))
        out["clip_t"] = sum(scores) / len(scores)
    return out


def train_variant(variant: str, args, class_dir: Path | None, out_dir: Path):
    """Train one variant with the product's loop and return the trained components."""
    from trainers.lora.config import LoRAConfig
    from trainers.train import DreamBoothConfig, train

    prior = variant.endswith("prior")
    common = dict(
        base_model=str(args.base_model),
        tokenizer=str(args.tokenizer) if args.tokenizer else None,
        instance_data=str(args.instance_data),
        instance_prompt=args.instance_prompt,
        class_data=str(class_dir) if prior else None,
        class_prompt=args.class_prompt,
        prior_preservation=prior,
        output=str(out_dir / f"{variant}.safetensors"),
        overwrite=True,
        resolution=args.resolution,
        seed=args.seed,
        sample_prompts=[],
    )
    if variant.startswith("lora"):
        cfg = LoRAConfig(steps=args.lora_steps or 1500, **common)
    else:
        cfg = DreamBoothConfig(steps=args.steps, **common)
    components = load_base(args)
    t0 = time.perf_counter()
    train(cfg, components=components)
    return components, time.perf_counter() - t0


def make_class_images(args, out_dir: Path) -> Path:
    from trainers.classgen import ClassImagesConfig, generate_class_images

    if args.class_data:
        return Path(args.class_data)
    cfg = ClassImagesConfig(
        class_prompt=args.class_prompt,
        count=args.class_images,
        resolution=args.resolution,
        base_model=str(args.base_model),
        tokenizer=str(args.tokenizer) if args.tokenizer else None,
        output_folder=str(out_dir / "class_images"),
    )
    return Path(generate_class_images(cfg).folder)


def run(args) -> dict[str, Any]:
    from PIL import Image

    from trainers.data.images import list_images

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip: dict[str, Any] = {"vision": load_clip_vision(args.clip_vision, args.device)}
    clip_t_note = ""
    if args.clip_text:
        text = load_clip_text(args.clip_text, args.device)
        if text.config.projection_dim != clip["vision"].config.projection_dim:
            clip_t_note = "CLIP-T skipped: the text and image towers are not one CLIP model (projection sizes differ)"
        else:
            clip["text"] = text
    else:
        clip_t_note = "CLIP-T skipped: pass --clip-text (a CLIP text tower with text_projection, e.g. clip_l)"
    subject = [Image.open(p) for p in list_images(Path(args.instance_data))]
    subject_emb = image_embeddings(clip["vision"], subject)
    prompts = Prompts(args.instance_prompt, args.class_prompt, args.token)
    class_dir = make_class_images(args, out_dir)

    rows: dict[str, dict[str, Any]] = {}
    base = evaluate(load_base(args), args, prompts, clip, subject_emb)
    rows["base"] = base
    for variant in args.variants:
        components, seconds = train_variant(variant, args, class_dir, out_dir)
        r = evaluate(components, args, prompts, clip, subject_emb)
        r["seconds"] = seconds
        r["drift"] = 1.0 - float((r["cls_emb"] * base["cls_emb"]).sum(dim=-1).mean())
        rows[variant] = r
        del components
    report = {
        name: {k: v for k, v in r.items() if isinstance(v, (int, float))} for name, r in rows.items()
    }  # fmt: skip
    report["note"] = clip_t_note
    (out_dir / "clip_proof.json").write_text(json.dumps(report, indent=1))
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        "| model | CLIP-I ↑ | CLIP-T ↑ | class drift ↓ | class→subject ↓ | train s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report.items():
        if name == "note":
            continue

        def f(key: str, r=r) -> str:
            return f"{r[key]:.3f}" if key in r else "–"

        lines.append(
            f"| {name} | {f('clip_i')} | {f('clip_t')} | {f('drift')} | {f('cls_subject')} | "
            f"{r.get('seconds', 0):.0f} |"
        )
    if report.get("note"):
        lines.append("\n" + report["note"])
    return "\n".join(lines)


def checks(report: dict[str, Any]) -> list[tuple[str, bool]]:
    base = report["base"]
    out = []
    for name, r in report.items():
        if name in ("base", "note"):
            continue
        out.append((f"{name}: CLIP-I {r['clip_i']:.3f} > base {base['clip_i']:.3f}", r["clip_i"] > base["clip_i"]))
    if "db" in report and "db_prior" in report:
        a, b = report["db_prior"]["drift"], report["db"]["drift"]
        out.append((f"class drift with prior {a:.3f} < without {b:.3f}", a < b))
    return out


def comfy_path(args, value: str | None, folder: str) -> str | None:
    """A bare file name is looked up in ``<comfyui>/models/<folder>/``."""
    if not value:
        return value
    p = Path(value)
    if not p.exists() and args.comfyui:
        cand = Path(args.comfyui) / "models" / folder / value
        if cand.exists():
            return str(cand)
    return str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learning_proof --clip", description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", help="ComfyUI folder: bare file names are looked up in its models/ folders")
    ap.add_argument("--base-model", required=True, help="SD1.5 checkpoint (file, or a name in models/checkpoints)")
    ap.add_argument("--tokenizer", help="CLIP tokenizer folder (default: <comfyui>/comfy/sd1_tokenizer)")
    ap.add_argument("--instance-data", required=True, help="folder of subject photos (e.g. a Face Crop dataset)")
    ap.add_argument("--instance-prompt", default="a photo of sks woman face")
    ap.add_argument("--class-prompt", default="a photo of woman face")
    ap.add_argument("--token", default="sks", help="the rare token (removed from prompts for CLIP-T)")
    ap.add_argument("--class-data", help="folder of class images (default: generate --class-images with classgen)")
    ap.add_argument("--class-images", type=int, default=200)
    ap.add_argument("--clip-vision", required=True, help="CLIP image tower (file, or a name in models/clip_vision)")
    ap.add_argument(
        "--clip-text", help="matching CLIP text tower with text_projection (file, or a name in models/clip)"
    )
    ap.add_argument("--variants", nargs="+", default=["db", "db_prior", "lora_prior"])
    ap.add_argument("--steps", type=int, default=1000, help="DreamBooth steps (node default 1000)")
    ap.add_argument("--lora-steps", type=int, default=1500)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (seeds --seed ... --seed+N-1)")
    ap.add_argument("--sample-steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="clip_proof_out")
    args = ap.parse_args(argv)
    args.base_model = comfy_path(args, args.base_model, "checkpoints")
    args.clip_vision = comfy_path(args, args.clip_vision, "clip_vision")
    args.clip_text = comfy_path(args, args.clip_text, "clip")
    if not args.tokenizer and args.comfyui:
        args.tokenizer = str(Path(args.comfyui) / "comfy" / "sd1_tokenizer")
    report = run(args)
    print(table(report))
    failed = False
    for text, ok in checks(report):
        print(("PASS  " if ok else "FAIL  ") + text)
        failed |= not ok
    return 1 if failed else 0
