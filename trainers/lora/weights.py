"""One adapted layer's weights, for each adapter type: the exchange format between the trainer (peft), the file
writers/readers and extraction. No peft here, only tensors and the maths loaders apply.

- :class:`LoraWeights` — LoRA / LoCon (``down`` = peft's ``lora_A``, ``up`` = ``lora_B``); with ``dora_scale`` it is a
  DoRA layer (Liu et al. 2024, arXiv:2402.09353): the new weight is ``m * (W + dW) / ||W + dW||`` per output channel.
- :class:`LohaWeights` — LyCORIS LoHa (Hadamard product of two low-rank pairs, FedPara, arXiv:2108.06098).
- :class:`LokrWeights` — LyCORIS LoKr (Kronecker product of a small full ``w1`` and a ``w2`` that is full or low rank).

Every class knows its kohya/LyCORIS file suffixes (:meth:`file_tensors`, :func:`from_file_group`) and its update
to a base weight (:meth:`update`), computed the way ComfyUI, A1111/Forge and LyCORIS compute it: ``alpha / rank``
scales a low-rank product; a LoKr layer without a low-rank factor has no rank and a scale of 1 (LyCORIS stores
``alpha = rank`` for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("lora", "loha", "lokr")


def _shaped(delta: torch.Tensor, shape) -> torch.Tensor:
    return delta if shape is None else delta.reshape(tuple(shape))


@dataclass
class LoraWeights:
    """One LoRA layer: ``down`` (rank x in [x k x k]), ``up`` (out x rank [x 1 x 1]), the real alpha, and for DoRA
    ``dora_scale``, the magnitude per output channel in the file layout (out x 1 [x 1 x 1])."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    dora_scale: torch.Tensor | None = None

    kind = "lora"

    @property
    def dora(self) -> bool:
        return self.dora_scale is not None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def delta(self, dtype: torch.dtype = torch.float32, shape=None) -> torch.Tensor:
        """The low-rank update ``alpha / rank * up @ down`` in the layer's weight shape (without a DoRA magnitude)."""
        up = self.up.to(dtype).flatten(1)
        down = self.down.to(dtype).flatten(1)
        out = (up @ down) * self.scale
        if shape is not None:
            return out.reshape(tuple(shape))
        if self.down.dim() == 4:
            return out.reshape(self.up.shape[0], *self.down.shape[1:])
        return out

    def update(self, weight: torch.Tensor) -> torch.Tensor:
        """What the layer adds to the base ``weight`` at strength 1 (DoRA: ``m * V / ||V|| - W``, V = W + dW)."""
        w = weight.float()
        merged = w + self.delta(shape=w.shape)
        if self.dora_scale is None:
            return merged - w
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (merged.dim() - 1))
        return merged * (self.dora_scale.float().reshape(norm.shape) / norm) - w

    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {"lora_down.weight": self.down, "lora_up.weight": self.up}
        if self.dora_scale is not None:
            out["dora_scale"] = self.dora_scale
        return out


@dataclass
class LohaWeights:
    """One LoHa layer: ``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank``; ``w*_a`` out x rank, ``w*_b`` rank x in
    (convolutions: in x k x k flattened, as LyCORIS stores them without its CP/Tucker option)."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float

    kind = "loha"
    dora = False

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def delta(self, dtype: torch.dtype = torch.float32, shape=None) -> torch.Tensor:
        m1 = self.w1_a.to(dtype) @ self.w1_b.to(dtype)
        m2 = self.w2_a.to(dtype) @ self.w2_b.to(dtype)
        return _shaped(m1 * m2 * self.scale, shape)

    def update(self, weight: torch.Tensor) -> torch.Tensor:
        return self.delta(shape=weight.shape)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        return {"hada_w1_a": self.w1_a, "hada_w1_b": self.w1_b, "hada_w2_a": self.w2_a, "hada_w2_b": self.w2_b}


@dataclass
class LokrWeights:
    """One LoKr layer: ``kron(w1, w2) * scale``; ``w2`` is full (``w2``) or low rank (``w2_a @ w2_b``). Only a
    low-rank ``w2`` has a rank (and the scale alpha / rank); with a full ``w2`` the scale is 1."""

    w1: torch.Tensor
    alpha: float
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None

    kind = "lokr"
    dora = False

    def __post_init__(self) -> None:
        if (self.w2 is None) == (self.w2_a is None or self.w2_b is None):
            raise ValueError("a LoKr layer needs either lokr_w2 or both lokr_w2_a and lokr_w2_b")

    @property
    def decomposed(self) -> bool:
        return self.w2 is None

    @property
    def rank(self) -> int | None:
        return int(self.w2_b.shape[0]) if self.w2_b is not None else None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank if self.rank else 1.0

    def full_w2(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.w2 is not None:
            return self.w2.to(dtype)
        return self.w2_a.to(dtype) @ self.w2_b.to(dtype)

    def delta(self, dtype: torch.dtype = torch.float32, shape=None) -> torch.Tensor:
        w1, w2 = self.w1.to(dtype), self.full_w2(dtype)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return _shaped(torch.kron(w1, w2.contiguous()) * self.scale, shape)

    def update(self, weight: torch.Tensor) -> torch.Tensor:
        return self.delta(shape=weight.shape)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        if self.w2 is not None:
            return {"lokr_w1": self.w1, "lokr_w2": self.w2}
        return {"lokr_w1": self.w1, "lokr_w2_a": self.w2_a, "lokr_w2_b": self.w2_b}


LayerWeights = LoraWeights | LohaWeights | LokrWeights

# kohya/LyCORIS key suffixes (after "<layer>.") this reader understands, and those it knows but cannot train
SUFFIXES = (
    "lora_down.weight", "lora_up.weight", "alpha", "dora_scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
    "lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
)  # fmt: skip
UNSUPPORTED = {
    "lora_mid.weight": "LoCon with a CP/Tucker middle weight",
    "hada_t1": "LoHa with CP/Tucker decomposition",
    "hada_t2": "LoHa with CP/Tucker decomposition",
    "lokr_t2": "LoKr with CP/Tucker decomposition",
    "lokr_w1_a": "LoKr with a low-rank w1 (decompose_both)",
    "lokr_w1_b": "LoKr with a low-rank w1 (decompose_both)",
}


def kind_of_group(group: dict[str, torch.Tensor]) -> str:
    """The adapter type ("lora", "loha" or "lokr") of one layer's tensors (by suffix); ValueError for none or a mix."""
    kinds = set()
    for suffix in group:
        if suffix.startswith("lora_") or suffix == "dora_scale":
            kinds.add("lora")
        elif suffix.startswith("hada_"):
            kinds.add("loha")
        elif suffix.startswith("lokr_"):
            kinds.add("lokr")
    if len(kinds) != 1:
        raise ValueError(f"holds {'no adapter weights' if not kinds else 'a mix of ' + ', '.join(sorted(kinds))}")
    return kinds.pop()


def from_file_group(group: dict[str, torch.Tensor]) -> LayerWeights:
    """One layer from its file tensors (suffix -> tensor); ValueError naming what is missing or inconsistent."""
    kind = kind_of_group(group)
    need = {"lora": ("lora_down.weight", "lora_up.weight"), "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a",
            "hada_w2_b"), "lokr": ("lokr_w1",)}[kind]  # fmt: skip
    missing = [s for s in need if s not in group]
    if missing:
        raise ValueError(f"lacks its {', '.join(missing)}")
    alpha = float(group["alpha"].item()) if "alpha" in group else None
    if kind == "lora":
        down, up = group["lora_down.weight"], group["lora_up.weight"]
        if up.shape[1] != down.shape[0]:
            raise ValueError(f"has rank {down.shape[0]} down but {up.shape[1]} up")
        dora = group.get("dora_scale")
        if dora is not None and dora.numel() != up.shape[0]:
            raise ValueError(f"has a dora_scale of {dora.numel()} values for {up.shape[0]} output channels")
        return LoraWeights(down, up, alpha if alpha is not None else float(down.shape[0]), dora)
    if kind == "loha":
        w = [group[s] for s in need]
        return LohaWeights(*w, alpha=alpha if alpha is not None else float(w[1].shape[0]))
    w2_a, w2_b = group.get("lokr_w2_a"), group.get("lokr_w2_b")
    rank = int(w2_b.shape[0]) if w2_b is not None else None
    if alpha is None:  # a full w2 has scale 1 whatever alpha says (ComfyUI, A1111, LyCORIS)
        alpha = float(rank) if rank else 1.0
    return LokrWeights(group["lokr_w1"], alpha, group.get("lokr_w2"), w2_a, w2_b)
