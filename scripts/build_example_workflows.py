"""Build ``example_workflows/*.json`` in ComfyUI's real editor (dev-only; the tests never run this).

Starts the test host (``tests/host/harness.py``) with placeholder model files, opens its page in headless Chromium,
creates every node with ``LiteGraph.createNode`` + ``app.graph.add``, sets widgets, connects them, lays them out
left to right with Note nodes above the steps they explain, and saves exactly what the editor's Save button writes
(``app.graphToPrompt().workflow``, ``JSON.stringify(…, null, 2)``). The editor's own API prompt for the same graph
must equal ``tests/workflow_api.ui_to_api`` of the saved file (checked here). Also writes a same-name ``.jpg``
thumbnail of the canvas per workflow and ``docs/workflow_dreambooth.png`` for the README.

    .venv/bin/python scripts/build_example_workflows.py [--only NAME] [--keep]

Needs Debian's chromium and chromium-driver and selenium (``requirements-dev.txt``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from host.harness import ComfyHost, prepare_host  # noqa: E402
from workflow_api import ui_to_api  # noqa: E402

OUT = ROOT / "example_workflows"
README_SHOT = ROOT / "docs" / "workflow_dreambooth.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=2200,1250",
)  # fmt: skip

BASE_CKPT = "v1-5-pruned-emaonly.safetensors"  # the name most users have; any SD1.5 checkpoint works
DB_FILE = "likeness/likeness_dreambooth.safetensors"
LORA_FILE = "likeness/likeness_lora.safetensors"
PROMPT = "a photo of sks woman face, portrait, natural light, detailed skin, sharp focus, 85mm"
NEGATIVE = "blurry, lowres, deformed face, bad anatomy, disfigured, watermark, text, cartoon, painting"

# ---------------------------------------------------------------------------------------------------------------
# defaults (from the option schema: a note or a widget never quotes a default of its own)


def _defaults() -> dict[str, dict]:
    from trainers.classgen import ClassImagesConfig
    from trainers.configspec import specs
    from trainers.data.crop import CropConfig
    from trainers.lora.config import LoRAConfig
    from trainers.train.config import DreamBoothConfig

    configs = {"dreambooth": DreamBoothConfig, "lora": LoRAConfig, "classes": ClassImagesConfig, "crop": CropConfig}
    return {name: {s.name: s.default for s in specs(cls)} for name, cls in configs.items()}


D = _defaults()
DB, LORA, CLASSES, CROP = D["dreambooth"], D["lora"], D["classes"], D["crop"]


def _num(value: float) -> str:
    from readme_options import number

    return number(value)


# ---------------------------------------------------------------------------------------------------------------
# notes (what a user reads on the canvas)

N_CKPT = """1. BASE MODEL
Pick any Stable Diffusion 1.5 checkpoint from models/checkpoints (civitai .safetensors or .ckpt). A realistic model \
(e.g. Realistic Vision) gives realistic faces. SDXL/SD2/Flux files are refused.
The training nodes read the file themselves; MODEL/CLIP/VAE here are the untrained base."""

N_PHOTOS = f"""2. YOUR PHOTOS
Put 15-30 photos of ONE person in ComfyUI/input/likeness_photos (jpg/png/webp, any size, phone photos are fine).
Variety helps: different days, light, clothes, backgrounds, expressions, some profile. Avoid sunglasses, heavy \
filters, group photos, blurry shots.
Faces are found, cropped square at 'resolution' ({CROP["resolution"]} for SD1.5) and blurry/duplicate photos \
skipped: the report names each dropped photo and why."""

N_CLASS = f"""3. CLASS IMAGES (prior preservation)
Generates 'count' images of the class ('{CLASSES["class_prompt"]}') with the base model, so training learns YOUR \
face without turning every woman into you. Default {CLASSES["count"]}; made once and reused.
Use 'man face' / 'person' to match your subject."""

N_DB = f"""4. DREAMBOOTH TRAIN
Fine-tunes the whole model. Defaults: {DB["steps"]} steps at batch {DB["batch_size"]}, learning rate \
{_num(DB["learning_rate"])}, text encoder trained (the README's table says where they come from).
The instance prompt comes from the dataset ('{CROP["instance_prompt"]}'); 'sks' is the rare token that means \
your person.
GPU memory: see the README (GPU memory). To need less, turn train_text_encoder off, or install bitsandbytes \
(the default optimizer, auto, then uses 8-bit AdamW).
Queueing the same graph again reuses the saved result (models/checkpoints/likeness/) instead of training \
again. Watch progress, samples and loss on the node; Stop ends the run cleanly and the next run resumes."""

N_LORA = f"""4. LORA TRAIN
Trains a small LoRA (a few MB) on top of the frozen model. Defaults: {LORA["steps"]} steps, learning rate \
{_num(LORA["learning_rate"])}, rank {LORA["lora_rank"]}, alpha {_num(LORA["lora_alpha"])}.
Needs less GPU memory than DreamBooth (see the README). The file goes to models/loras/likeness/ and also works \
with Load LoRA, A1111/Forge and diffusers, on any SD1.5 checkpoint.
Queueing the same graph again reuses the saved result instead of training again; Stop ends the run cleanly."""

N_APPLY_DB = """5. APPLY TRAINED MODEL
Loads the trained checkpoint as MODEL/CLIP/VAE (ComfyUI's own loader). Later, sample without training: pick the \
file in 'source' (see the sample_trained workflow).
Write prompts with the instance words: 'a photo of sks woman face, ...'."""

N_APPLY_LORA = """5. APPLY TRAINED MODEL (LoRA)
Applies the LoRA to the base MODEL/CLIP at 'strength' (1 = as trained; 0.6-0.9 if the face looks overcooked or \
the style suffers). Connect the base VAE; it is passed through.
You can apply it on a different SD1.5 checkpoint too."""

N_SAMPLE = """6. SAMPLE
A normal ComfyUI sampling graph at 768x1024 (3:4 portrait). Keep 'sks woman face' in the prompt; add clothes, \
place, light, style. 25-35 steps, cfg 5-7. Queue again to get new seeds: training is not repeated."""

N_PICK = """SAMPLE A RESULT TRAINED EARLIER (no training)
'source' lists your results: checkpoints/likeness/... (DreamBooth: the model/clip inputs are not used) and \
loras/likeness/... (LoRA: applied to the checkpoint loaded on the left, at 'strength').
A finished training run adds its file to the list at once; files copied in by hand appear after Refresh (R). \
The 'info' output tells the instance prompt and steps the file was trained with: use those words in your prompt."""


# ---------------------------------------------------------------------------------------------------------------
# the graphs: columns of nodes (left to right), each a list top to bottom, then links by output/input name


def _sampling(apply_key: str, prefix: str, model_from=None, clip_from=None, vae_from=None):
    model_from = model_from or (apply_key, "MODEL")
    clip_from = clip_from or (apply_key, "CLIP")
    vae_from = vae_from or (apply_key, "VAE")
    columns = [
        [
            {"key": "pos", "type": "CLIPTextEncode", "title": "Positive prompt", "widgets": {"text": PROMPT},
             "size": [400, 150]},
            {"key": "neg", "type": "CLIPTextEncode", "title": "Negative prompt", "widgets": {"text": NEGATIVE},
             "size": [400, 150]},
        ],
        [
            {"key": "note_sample", "type": "Note", "text": N_SAMPLE, "size": [330, 190]},
            {"key": "latent", "type": "EmptyLatentImage", "widgets": {"width": 768, "height": 1024, "batch_size": 1}},
            {"key": "ksampler", "type": "KSampler",
             "widgets": {"seed": 42, "control_after_generate": "randomize", "steps": 30, "cfg": 6.0,
                         "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0}},
        ],
        [
            {"key": "decode", "type": "VAEDecode"},
            {"key": "save", "type": "SaveImage", "widgets": {"filename_prefix": prefix}, "size": [360, 450]},
        ],
    ]  # fmt: skip
    links = [
        (*clip_from, "pos", "clip"),
        (*clip_from, "neg", "clip"),
        (*model_from, "ksampler", "model"),
        ("pos", "CONDITIONING", "ksampler", "positive"),
        ("neg", "CONDITIONING", "ksampler", "negative"),
        ("latent", "LATENT", "ksampler", "latent_image"),
        ("ksampler", "LATENT", "decode", "samples"),
        (*vae_from, "decode", "vae"),
        ("decode", "IMAGE", "save", "images"),
    ]
    return columns, links


def _training_graph(kind: str) -> dict:
    lora = kind == "lora"
    train_type = "LikenessLoRATrain" if lora else "LikenessDreamBoothTrain"
    cfg = LORA if lora else DB
    train_widgets = {
        "output_name": f"likeness_{kind}",
        "instance_prompt": "",  # from the dataset
        **{k: cfg[k] for k in ("class_prompt", "steps", "learning_rate", "batch_size", "resolution",
                               "train_text_encoder", "prior_loss_weight", "save_dtype")},
        "train_seed": 1234,
        "sample_every": 250,  # samples while it trains (the default, 0, makes them only at the end)
    }  # fmt: skip
    if lora:
        train_widgets.update({k: cfg[k] for k in ("lora_rank", "lora_alpha", "lora_layers", "lora_dropout")})
    apply_widgets = {"source": "(from the trained input)", "strength_model": 0.9 if lora else 1.0,
                     "strength_clip": 0.9 if lora else 1.0}  # fmt: skip
    columns = [
        [
            {"key": "note_ckpt", "type": "Note", "text": N_CKPT, "size": [330, 170]},
            {"key": "ckpt", "type": "LikenessLoadCheckpoint", "widgets": {"ckpt_name": BASE_CKPT}, "size": [330, 0]},
        ],
        [
            {"key": "note_photos", "type": "Note", "text": N_PHOTOS, "size": [360, 230]},
            {"key": "faces", "type": "LikenessFaceCropDataset",
             "widgets": {"folder": "likeness_photos", "instance_prompt": CROP["instance_prompt"],
                         "resolution": CROP["resolution"]}, "size": [380, 0]},
            {"key": "faces_preview", "type": "PreviewImage", "title": "Cropped photos", "size": [360, 300]},
        ],
        [
            {"key": "note_class", "type": "Note", "text": N_CLASS, "size": [340, 190]},
            {"key": "classes", "type": "LikenessGenerateClassImages",
             "widgets": {"class_prompt": CLASSES["class_prompt"], "negative_prompt": "blurry, lowres, cartoon",
                         "count": CLASSES["count"], "resolution": CLASSES["resolution"], "steps": CLASSES["steps"]},
             "size": [380, 0]},
        ],
        [
            {"key": "note_train", "type": "Note", "text": N_LORA if lora else N_DB, "size": [380, 300]},
            {"key": "train", "type": train_type, "widgets": train_widgets, "size": [400, 0]},
            {"key": "loss", "type": "PreviewImage", "title": "Loss curve", "size": [380, 260]},
        ],
        [
            {"key": "note_apply", "type": "Note", "text": N_APPLY_LORA if lora else N_APPLY_DB, "size": [330, 170]},
            {"key": "apply", "type": "LikenessApplyTrainedModel", "widgets": apply_widgets, "size": [400, 0]},
        ],
    ]  # fmt: skip
    links = [
        ("ckpt", "likeness_model", "classes", "model"),
        ("ckpt", "likeness_model", "train", "model"),
        ("faces", "preview", "faces_preview", "images"),
        ("faces", "dataset", "train", "instance_images"),
        ("classes", "class_dataset", "train", "class_images"),
        ("train", "trained", "apply", "trained"),
        ("train", "loss_curve", "loss", "images"),
    ]
    if lora:
        links += [
            ("ckpt", "MODEL", "apply", "model"),
            ("ckpt", "CLIP", "apply", "clip"),
            ("ckpt", "VAE", "apply", "vae"),
        ]
    cols, more = _sampling("apply", f"likeness/{kind}_face")
    columns[-1] += cols[0]  # the prompts go under the apply node
    return {"columns": columns + cols[1:], "links": links + more}


def _sample_graph() -> dict:
    columns = [
        [
            {"key": "note_pick", "type": "Note", "text": N_PICK, "size": [360, 220]},
            {"key": "ckpt", "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": BASE_CKPT}, "size": [330, 0]},
        ],
        [
            {"key": "apply", "type": "LikenessApplyTrainedModel",
             "widgets": {"source": f"loras/{LORA_FILE}", "strength_model": 0.9, "strength_clip": 0.9},
             "size": [400, 0]},
        ],
    ]  # fmt: skip
    links = [("ckpt", "MODEL", "apply", "model"), ("ckpt", "CLIP", "apply", "clip"), ("ckpt", "VAE", "apply", "vae")]
    cols, more = _sampling("apply", "likeness/sample")
    columns[-1] += cols[0]
    return {"columns": columns + cols[1:], "links": links + more}


GRAPHS = {
    "dreambooth_face": lambda: _training_graph("dreambooth"),
    "lora_face": lambda: _training_graph("lora"),
    "sample_trained": _sample_graph,
}

# ---------------------------------------------------------------------------------------------------------------
# the page

BUILD_JS = r"""
const spec = args[0];
const graph = app.graph;
graph.clear();
const byKey = {};
const GAP_X = 60, GAP_Y = 50, TOP = 60, LEFT = 40;
for (const column of spec.columns) {
  for (const item of column) {
    const node = LiteGraph.createNode(item.type);
    if (!node) throw new Error("unknown node type " + item.type);
    graph.add(node);
    if (item.title) node.title = item.title;
    if (item.text !== undefined) node.widgets[0].value = item.text;
    for (const [name, value] of Object.entries(item.widgets || {})) {
      const w = (node.widgets || []).find((w) => w.name === name);
      if (!w) throw new Error(item.type + " has no widget " + name);
      w.value = value;
    }
    byKey[item.key] = node;
  }
}
for (const [fromKey, outName, toKey, inName] of spec.links) {
  const a = byKey[fromKey], b = byKey[toKey];
  const o = a.findOutputSlot(outName), i = b.findInputSlot(inName);
  if (o < 0) throw new Error(a.type + " has no output " + outName);
  if (i < 0) throw new Error(b.type + " has no input " + inName);
  if (!a.connect(o, b, i)) throw new Error("could not connect " + fromKey + "." + outName + " -> " + toKey);
}
// Wide enough that no widget's label meets its value: the 2024 editor draws the label at the left and the value
// right-aligned, without shortening either (measured in the widgets' font, with the arrows and margins).
function textWidth(node) {
  const ctx = app.canvas.canvas.getContext("2d");
  ctx.save();
  ctx.font = `${LiteGraph.NODE_SUBTEXT_SIZE || 12}px Arial`;
  let need = 0;
  for (const w of node.widgets || []) {
    if (!["combo", "number", "text", "toggle"].includes(w.type)) continue;
    const value = w.type === "number" ? Number(w.value).toFixed(w.options?.precision ?? 3) : String(w.value);
    need = Math.max(need, ctx.measureText(String(w.label || w.name)).width + ctx.measureText(value).width + 110);
  }
  ctx.restore();
  return Math.ceil(need);
}
// Extensions may add or grow widgets after creation (the training monitor, the info box): lay out, let the canvas
// draw, again; a node never shrinks below what a draw made it.
function layout() {
  let x = LEFT;
  for (const column of spec.columns) {
    let y = TOP, width = 0;
    for (const item of column) {
      const node = byKey[item.key];
      const size = node.computeSize(), want = item.size || [0, 0];
      const w = Math.max(want[0], size[0], node.size[0], textWidth(node));
      node.setSize([Math.round(w), Math.round(Math.max(want[1], size[1], node.size[1]))]);
      node.pos = [x, y + LiteGraph.NODE_TITLE_HEIGHT];
      y += node.size[1] + LiteGraph.NODE_TITLE_HEIGHT + GAP_Y;
      width = Math.max(width, node.size[0]);
    }
    x += width + GAP_X;
  }
}
for (let i = 0; i < 3; i++) {
  layout();
  app.canvas.draw(true, true);
  await new Promise((r) => setTimeout(r, 300));
}
graph.setDirtyCanvas(true, true);
const p = await app.graphToPrompt();
return {workflow: p.workflow, output: p.output};
"""

FIT_JS = r"""
// Fit the whole graph into the window (at most 1:1), hide the menu; returns the graph's height on screen.
for (const el of document.querySelectorAll(".comfy-menu, .comfy-settings-btn")) el.style.display = "none";
app.canvas.show_info = false;
const canvas = app.canvas, nodes = app.graph._nodes;
let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
for (const n of nodes) {
  x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
  x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
}
const el = canvas.canvas, pad = 20, w = window.innerWidth, h = window.innerHeight;
const scale = Math.min((w - 2 * pad) / (x1 - x0), (h - 2 * pad) / (y1 - y0), 1.0);
canvas.ds.scale = scale;
canvas.ds.offset = [pad / scale - x0, pad / scale - y0];
canvas.setDirty(true, true);
canvas.draw(true, true);
return [Math.ceil((x1 - x0) * scale + 2 * pad), Math.ceil((y1 - y0) * scale + 2 * pad)];
"""


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _run_async(driver, body: str, *args, timeout: float = 60.0):
    driver.set_script_timeout(timeout)
    wrapped = (
        "const done = arguments[arguments.length - 1]; const args = arguments;"
        "(async () => { " + body + " })().then((v) => done(JSON.stringify({ok: v})),"
        " (e) => done(JSON.stringify({error: String(e && e.stack || e)})));"
    )
    out = json.loads(driver.execute_async_script(wrapped, *args))
    if "error" in out:
        raise RuntimeError(out["error"])
    return out["ok"]


def _placeholders(host: ComfyHost) -> None:
    """Empty files with the names the examples use, so the editor's combos accept them (nothing is loaded)."""
    for path in (host.checkpoints_dir / BASE_CKPT, host.checkpoints_dir / DB_FILE, host.loras_dir / LORA_FILE):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _strip_seed_controls(api: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def build(names: list[str], keep: bool) -> None:
    from PIL import Image

    workdir = Path(tempfile.mkdtemp(prefix="likeness-build-wf."))
    host = ComfyHost(prepare_host(), workdir)
    _placeholders(host)
    host.start()
    driver = None
    try:
        info = host.object_info()
        driver = _driver()
        for name in names:
            driver.get(host.url)
            deadline = time.monotonic() + 60
            while not driver.execute_script("return !!(window.app && window.app.graph && window.LiteGraph)"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the ComfyUI page did not load")
                time.sleep(0.2)
            spec = GRAPHS[name]()
            got = _run_async(driver, BUILD_JS, spec)
            workflow, editor_api = got["workflow"], got["output"]
            (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
            ours = ui_to_api(workflow, info)
            if _strip_seed_controls(editor_api) != ours:
                raise RuntimeError(
                    f"{name}: tests/workflow_api.ui_to_api differs from the editor's own prompt:\n"
                    f"editor: {json.dumps(editor_api, sort_keys=True)}\nours:   {json.dumps(ours, sort_keys=True)}"
                )
            (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
            width, height = driver.execute_script(FIT_JS)
            time.sleep(1.0)  # the DOM text boxes follow the canvas on the next frames
            image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
            image = image.crop((0, 0, min(width, image.width), min(height, image.height)))
            if name == "dreambooth_face":
                README_SHOT.parent.mkdir(parents=True, exist_ok=True)
                image.save(README_SHOT, optimize=True)
            thumb = image.copy()
            thumb.thumbnail((800, 800))
            thumb.save(OUT / f"{name}.jpg", quality=85, optimize=True)
            print(f"{name}: {len(workflow['nodes'])} nodes, {len(workflow['links'])} links -> {OUT / name}.json/.jpg")
    finally:
        if driver is not None:
            driver.quit()
        host.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(GRAPHS), action="append", help="build only this workflow")
    p.add_argument("--keep", action="store_true", help="keep the host's temporary folder")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(exist_ok=True)
    build(args.only or list(GRAPHS), args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
