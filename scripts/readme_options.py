"""The README's table of defaults, generated from the option schema (``trainers/configspec.py`` and the configs).

The table sits between the ``<!-- defaults:begin -->`` and ``<!-- defaults:end -->`` markers of ``README.md``; its
values come from the configs' declared defaults, its "Source" column from ``SOURCES`` below (where each default comes
from). ``tests/test_docs_defaults.py`` checks that the README holds exactly what this renders.

    .venv/bin/python scripts/readme_options.py          # rewrite the table in README.md
    .venv/bin/python scripts/readme_options.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

README = ROOT / "README.md"
BEGIN, END = "<!-- defaults:begin -->", "<!-- defaults:end -->"

SOURCES = {
    "learning rate": 'Hugging Face "Training Stable Diffusion with DreamBooth" study (huggingface.co/blog/dreambooth, '
    "2022): faces need a low lr, 2e-6 for ~1200 steps. kohya sd-scripts' and diffusers' LoRA defaults (1e-4, text "
    "encoder 5e-5).",
    "steps": "The same study: 800–1200 steps for faces at batch 1.",
    "prior preservation": "DreamBooth paper (Ruiz et al., arXiv:2208.12242, §3.3: λ = 1). diffusers' "
    "`train_dreambooth.py` (`prior_loss_weight=1.0`). The study used 200–300 class images for faces.",
    "text encoder": 'The study: "fine-tuning the text encoder gives the best results, especially on faces".',
    "LoRA rank / alpha": "kohya's habit alpha = rank/2 (update scale 0.5). The LoRA paper (Hu et al., "
    "arXiv:2106.09685) for the attention projections.",
    "resolution": "SD1.5 was trained at 512 px.",
    "face crop": "Common DreamBooth face practice: head and shoulders, face centred.",
    "LoRA type (`lora_type`, `dora`)": "LoHa and LoKr: the LyCORIS paper (Yeh et al., arXiv:2309.14859; LoHa from "
    "FedPara, arXiv:2108.06098; LoKr from KronA, arXiv:2212.10650) and its file keys. DoRA: Liu et al., "
    "arXiv:2402.09353. All through peft (`LoHaConfig`, `LoKrConfig`, `LoraConfig(use_dora=True)`). Plain LoRA stays "
    "the default: it is the one every loader applies as trained (see *LoRA types and continuing a LoRA* above).",
    "LoKr factor (`lokr_factor`)": "peft's and LyCORIS' default: each dimension split as near its square root as "
    "possible.",
    "continue a LoRA (`continue_from`; node: `continue_lora`)": "ComfyUI's Train LoRA, kohya's `network_weights` and "
    "ai-toolkit all start from an existing LoRA; the file's type, rank, alpha and layers win over the node's options.",
}


def number(value: float) -> str:
    """How a default is written in the docs: 2e-06 -> 2e-6, 0.0001 -> 1e-4, 1.0 -> 1.0, 8.0 -> 8, 0.7 -> 0.7."""
    if not isinstance(value, float):
        return str(value)
    if value.is_integer():
        return str(int(value)) if abs(value) >= 2 else f"{value:.1f}"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def defaults() -> dict[str, dict]:
    """Every default the table quotes, read from the schema: {config name: {option: default}}."""
    from trainers.classgen import ClassImagesConfig
    from trainers.configspec import specs
    from trainers.data.crop import CropConfig
    from trainers.lora.config import LoRAConfig
    from trainers.train.config import DreamBoothConfig

    classes = {"DreamBooth": DreamBoothConfig, "LoRA": LoRAConfig, "classes": ClassImagesConfig, "crop": CropConfig}
    return {name: {s.name: s.default for s in specs(cls)} for name, cls in classes.items()}


def rows() -> list[tuple[str, str, str]]:
    """(option, DreamBooth default, LoRA default) per row of the table."""
    d = defaults()
    db, lora, classes, crop = d["DreamBooth"], d["LoRA"], d["classes"], d["crop"]

    def lr(c: dict) -> str:
        te = f" (text encoder {number(c['text_encoder_lr'])})" if c["text_encoder_lr"] else ""
        return f"{number(c['learning_rate'])}, {c['lr_scheduler']}{te}"

    def prior(c: dict) -> str:
        return f"weight {number(c['prior_loss_weight'])}, {classes['count']} class images"

    face = 1 / (1 + 2 * crop["margin"])
    return [
        ("learning rate", lr(db), lr(lora)),
        ("steps", f"{db['steps']} at batch {db['batch_size']}", f"{lora['steps']} at batch {lora['batch_size']}"),
        ("prior preservation", prior(db), prior(lora)),
        ("text encoder", "trained" if db["train_text_encoder"] else "frozen",
         "adapters trained" if lora["train_text_encoder"] else "frozen"),
        ("LoRA rank / alpha", "–", f"{lora['lora_rank']} / {number(lora['lora_alpha'])}"),
        ("resolution", f"{db['resolution']} px", f"{lora['resolution']} px"),
        ("face crop", f"{crop['resolution']} px square, face ≈ {face:.0%} of it (margin {number(crop['margin'])})", ""),
    ] + lora_type_rows(lora)  # fmt: skip


def lora_type_rows(lora: dict) -> list[tuple[str, str, str]]:
    """The rows of the LoRA variants' options, for a schema that has them."""
    out = []
    if "lora_type" in lora:
        dora = "on" if lora.get("dora") else "off"
        out.append(("LoRA type (`lora_type`, `dora`)", "–", f"`{lora['lora_type']}`, DoRA {dora}"))
    if "lokr_factor" in lora:
        out.append(("LoKr factor (`lokr_factor`)", "–", number(lora["lokr_factor"])))
    if "continue_from" in lora:
        start = "off" if not lora["continue_from"] else str(lora["continue_from"])
        out.append(("continue a LoRA (`continue_from`; node: `continue_lora`)", "–", start))
    return out


def render() -> str:
    lines = [
        BEGIN,
        "<!-- generated by scripts/readme_options.py from the option schema: edit the configs, then run it -->",
        "| Option | DreamBooth | LoRA | Source |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a} | {b} | {SOURCES[name]} |" for name, a, b in rows()]
    lines.append(END)
    return "\n".join(lines)


def update(text: str) -> str:
    """``text`` (the README) with its table replaced by :func:`render`'s."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render() + text[end:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = p.parse_args()
    text = README.read_text()
    new = update(text)
    if args.check:
        if new != text:
            print("README.md's table of defaults is out of date: run scripts/readme_options.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
