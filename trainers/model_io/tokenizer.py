"""The SD1 CLIP tokenizer: from ComfyUI (``comfy/sd1_tokenizer``), a diffusers folder or a folder the user names."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

MAX_LENGTH = 77  # SD1's CLIP context; ComfyUI's tokenizer config says 8192, which is wrong for SD


def _tokenizer_dir(path: Path) -> Path:
    for cand in (path, path / "tokenizer"):
        if (cand / "tokenizer.json").is_file() or ((cand / "vocab.json").is_file() and (cand / "merges.txt").is_file()):
            return cand
    raise ConfigError(
        f"no CLIP tokenizer in {path}: expected vocab.json + merges.txt (or tokenizer.json) there or in its "
        "'tokenizer' subfolder; inside ComfyUI it is comfy/sd1_tokenizer, otherwise pass a diffusers SD1.5 folder"
    )


def load_tokenizer(path):
    """A ``CLIPTokenizer`` read from local files only, with ``model_max_length`` 77."""
    from transformers import CLIPTokenizer

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"tokenizer path {p} does not exist")
    folder = _tokenizer_dir(p)
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.model_max_length = MAX_LENGTH
    return tok
