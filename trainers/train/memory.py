"""The memory planner: from a config and a free-memory figure, the peak memory of a run before it starts, and the
cheapest settings that make it fit.

The peak of a training run is, per part (bytes on the training device):

- **weights**: the trained weights (4 bytes each, 2 with ``master_weights=bf16``) and the frozen parts that stay on
  the device (a LoRA's base model; the VAE only without ``cache_latents``, a frozen text encoder only without
  ``cache_text_embeddings``: cached ones leave the GPU, on the CPU nothing leaves);
- **optimizer**: AdamW's two moments, 8 bytes per trained weight (4 for bf16 weights, ~2 for 8-bit AdamW);
- **EMA**: one fp32 copy of the trained weights when the config keeps an EMA;
- **step**: what one micro-step's forward and backward hold at their peak, activations (by resolution, batch,
  prior preservation, gradient checkpointing, attention kernel, precision) together with the gradients as they are
  accumulated. This is traced, not assumed: :mod:`.memtrace` runs the step of the model's own shapes on the meta
  device and counts every tensor alive (cached on disk, so a configuration is traced once), plus the temporaries
  of the low-memory optimizer's update (:mod:`.lowmem` updates one piece of a weight at a time);
- **sampling**: sample images bring the VAE (and text encoder) back and decode at the training resolution while the
  optimizer state is still alive; the peak is the larger of training and sampling.

:func:`fit` tries the savings in the order of what they cost — first the free ones (gradient checkpointing: time;
a smaller batch with gradient accumulation: time, the same result), then 8-bit AdamW (CUDA, bitsandbytes), the
optimizer step in backward (no global clipping), bf16 weights, and last not training the text encoder — and keeps
the first set that fits. :func:`oom_advice` names that set when a run ran out of memory anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

GiB = 2**30
RESERVE_BYTES = 512 * 2**20  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack
RESERVE_FRACTION = 0.03
TRACE_CACHE = "memory_traces.json"


# ---------------------------------------------------------------------------------------------------------------
# option checks (called from the config's own check)


def check_memory_options(cfg) -> None:
    """Refuse memory options that cannot work together (before anything loads)."""
    from ..distributed import world_size

    if cfg.fused_backward:
        if cfg.gradient_accumulation > 1:
            raise ConfigError(
                "fused_backward applies each gradient as soon as it is complete, so it cannot accumulate "
                "micro-batches: set gradient_accumulation=1 or fused_backward=false"
            )
        if cfg.max_grad_norm:
            raise ConfigError(
                "fused_backward cannot clip the global gradient norm (no step ever sees all gradients): set "
                "max_grad_norm=0 or fused_backward=false"
            )
        if world_size() > 1:
            raise ConfigError("fused_backward works in one process only (it would apply one process's gradient)")
    if cfg.master_weights == "bf16":
        if getattr(cfg, "kind", "") == "lora":
            raise ConfigError("master_weights=bf16 is for full fine-tuning; LoRA adapters train in fp32")
        if cfg.mixed_precision in ("fp32", "fp16"):
            raise ConfigError(
                f"master_weights=bf16 computes in bf16; set mixed_precision=bf16 or auto (now {cfg.mixed_precision})"
            )
    if (cfg.fused_backward or cfg.master_weights == "bf16") and cfg.optimizer == "adamw8bit":
        raise ConfigError("fused_backward and master_weights=bf16 use their own AdamW; set optimizer=adamw or auto")


def compute_precision(cfg) -> str:
    """The mixed-precision option the run uses (bf16 weights compute in bf16)."""
    return "bf16" if cfg.master_weights == "bf16" and cfg.mixed_precision == "auto" else cfg.mixed_precision


# ---------------------------------------------------------------------------------------------------------------
# model shapes


@dataclass(frozen=True)
class ModelShapes:
    """What the planner needs to know about a model: configs and parameter counts (no weights)."""

    unet_config: str  # JSON
    te_config: str  # JSON
    vae_config: str  # JSON
    unet: int
    vae: int
    te: int
    lora_per_rank: tuple[tuple[str, int], ...] = ()  # ("unet:attention", params per unit of rank), ...
    largest: int = 0  # values in the largest UNet / text-encoder weight (0: unknown)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(json.loads(self.vae_config).get("block_out_channels", [0, 0, 0, 0])) - 1)

    def lora_params(self, part: str, layers: str, rank: int) -> int:
        return dict(self.lora_per_rank).get(f"{part}:{layers}", 0) * rank


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _lora_units(unet, te) -> tuple[tuple[str, int], ...]:
    """Adapter parameters per unit of rank for each layer set (``down`` rank x in[*k*k], ``up`` out x rank)."""
    from ..lora import adapters

    out = []
    for part, module, names_of in (
        ("unet", unet, adapters.unet_target_names),
        ("text_encoder", te, adapters.text_encoder_target_names),
    ):
        modules = dict(module.named_modules())
        for layers in adapters.LAYER_SETS:
            total = 0
            for name in names_of(module, layers):
                w = modules[name].weight
                fan_in = w.shape[1] * (w[0, 0].numel() if w.ndim == 4 else 1)
                total += fan_in + w.shape[0]
            out.append((f"{part}:{layers}", total))
    return tuple(out)


def _te_dict(te_config) -> dict[str, Any]:
    data = te_config.to_dict() if hasattr(te_config, "to_dict") else dict(te_config)
    skip = ("architectures", "model_type", "transformers_version", "name_or_path", "dtype", "torch_dtype")
    return {k: v for k, v in data.items() if k not in skip and not k.startswith("_")}


def _config_json(config: dict[str, Any]) -> str:
    """A model config as JSON, without its private entries (``_name_or_path``, versions): shapes only."""
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str)


def shapes_of(unet, vae, te) -> ModelShapes:
    """Shapes of loaded (or meta) modules."""
    return ModelShapes(
        unet_config=_config_json(unet.config),
        te_config=_config_json(_te_dict(te.config)),
        vae_config=_config_json(vae.config),
        unet=_count(unet),
        vae=_count(vae),
        te=_count(te),
        lora_per_rank=_lora_units(unet, te),
        largest=max(p.numel() for m in (unet, te) for p in m.parameters()),
    )


@functools.lru_cache(maxsize=1)
def sd15_shapes() -> ModelShapes:
    """SD1.5's shapes from the pack's bundled configs (every SD1.5 checkpoint has them), built on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..model_io.model_configs import bundled_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(bundled_config("unet"))
        vae = AutoencoderKL.from_config(bundled_config("vae"))
        te = CLIPTextModel(CLIPTextConfig(**_te_dict(bundled_config("text_encoder"))))
    return shapes_of(unet, vae, te)


# ---------------------------------------------------------------------------------------------------------------
# the estimate


@dataclass
class Estimate:
    """Predicted peak bytes of a run on its training device, by part."""

    weights: int
    optimizer: int
    ema: int
    step: int  # activations + gradients at the peak of one micro-step
    gradients: int  # of which gradients (for the report)
    sampling: int  # peak while making samples (0: no samples)
    loaded: int  # bytes of the weights as loaded, before training (what the growth is measured from on the CPU)

    @property
    def training(self) -> int:
        return self.weights + self.optimizer + self.ema + self.step

    @property
    def total(self) -> int:
        return max(self.training, self.sampling)

    @property
    def growth(self) -> int:
        """The peak over the weights as training starts: what training adds (optimizer, EMA, activations and
        gradients, sampling); the figure measured on the CPU, where nothing leaves memory."""
        return self.total - self.weights

    def summary(self) -> str:
        parts = [f"weights {gb(self.weights)}", f"optimizer {gb(self.optimizer)}"]
        if self.ema:
            parts.append(f"EMA {gb(self.ema)}")
        parts.append(f"activations + gradients {gb(self.step)}")
        if self.sampling > self.training:
            parts.append(f"sampling peak {gb(self.sampling)}")
        return f"{gb(self.total)} ({', '.join(parts)})"


def gb(n: int) -> str:
    return f"{n / GiB:.1f} GB"


def _dtype_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _ema_bytes(cfg, n: int, device_type: str) -> int:
    """The EMA's fp32 copy of what trains, when ``ema`` is on and the copy is on the training device (``ema_on_cpu``
    keeps it in CPU memory: nothing on a GPU; on the CPU it is the same memory either way)."""
    if not getattr(cfg, "ema", False):
        return 0
    if getattr(cfg, "ema_on_cpu", False) and device_type != "cpu":
        return 0
    return 4 * n


def _trained(cfg, shapes: ModelShapes) -> tuple[int, bool]:
    """(trained parameter count, text encoder trained)."""
    te = bool(cfg.train_text_encoder)
    if getattr(cfg, "kind", "dreambooth") == "lora":
        n = shapes.lora_params("unet", cfg.lora_layers, cfg.lora_rank)
        return n + (shapes.lora_params("text_encoder", cfg.lora_layers, cfg.lora_rank) if te else 0), te
    return shapes.unet + (shapes.te if te else 0), te


def _optimizer_bytes(cfg, n: int, device_type: str) -> int:
    from .optim import resolve_optimizer

    if cfg.master_weights == "bf16":
        return 4 * n
    if resolve_optimizer(cfg, device_type) == "adamw8bit":
        return int(2.01 * n)  # two uint8 moments + one fp32 scale per 2048-value block
    return 8 * n


def _weights(cfg, shapes: ModelShapes, device_type: str, frozen: int) -> tuple[int, int]:
    """(bytes on the device while training, bytes as loaded)."""
    lora = getattr(cfg, "kind", "dreambooth") == "lora"
    n, te_trained = _trained(cfg, shapes)
    wbytes = 2 if cfg.master_weights == "bf16" else 4
    on_cpu = device_type == "cpu"
    vae = 0 if cfg.cache_latents and not on_cpu else shapes.vae * frozen
    te_frozen = shapes.te * frozen if (lora or not te_trained) else 0
    if not te_trained and cfg.cache_text_embeddings and not on_cpu:
        te_frozen = 0
    if lora:
        weights = shapes.unet * frozen + te_frozen + vae + 4 * n
    else:
        weights = shapes.unet * wbytes + (shapes.te * wbytes if te_trained else te_frozen) + vae
    loaded = (shapes.unet + shapes.vae + shapes.te) * 4
    return weights, loaded


def estimate(cfg, shapes: ModelShapes | None = None, device_type: str = "cuda") -> Estimate:
    """The predicted peak of ``cfg`` on ``device_type`` (SD1.5's shapes unless others are given)."""
    shapes = shapes or sd15_shapes()
    precision = _compute(cfg, device_type)
    frozen = 4 if device_type == "cpu" else _dtype_bytes(precision)
    n, te_trained = _trained(cfg, shapes)
    weights, loaded = _weights(cfg, shapes, device_type, frozen)
    gbytes = 0 if cfg.fused_backward else n * (2 if cfg.master_weights == "bf16" else 4)
    step = _step_bytes(cfg, shapes, precision, te_trained, n)
    optimizer = _optimizer_bytes(cfg, n, device_type)
    ema = _ema_bytes(cfg, n, device_type)
    sampling = 0
    if cfg.sample_every or cfg.sample_at_end:
        back = (shapes.vae + (0 if te_trained else shapes.te)) * frozen if device_type != "cpu" else 0
        sampling = weights + optimizer + ema + back + _decode_bytes(shapes, cfg.resolution, precision)
    return Estimate(weights, optimizer, ema, step, gbytes, sampling, loaded)


def _compute(cfg, device_type: str) -> str:
    from ..devices import resolve_precision

    return resolve_precision(compute_precision(cfg), device_type)


def _step_bytes(cfg, shapes: ModelShapes, precision: str, te_trained: bool, n: int) -> int:
    """Traced activations + gradients of one micro-step; gradients counted in the weights' dtype."""
    from .memtrace import StepShape

    lora = getattr(cfg, "kind", "dreambooth") == "lora"
    grads = "none" if lora else ("free" if cfg.fused_backward else "keep")
    shape = StepShape(
        unet_config=shapes.unet_config,
        te_config=shapes.te_config if te_trained and not lora else None,
        batch=cfg.batch_size * (2 if cfg.prior_preservation else 1),
        latent=cfg.resolution // shapes.vae_factor,
        checkpointing=bool(cfg.gradient_checkpointing),
        attention=cfg.attention,
        dtype=precision,
        grads=grads,
    )
    peak = traced(shape)
    act = _dtype_bytes(precision)
    weight = 2 if cfg.master_weights == "bf16" else 4
    if grads == "keep" and weight != act:
        peak += n * (weight - act)  # the trace held the gradients in the activation dtype
    if lora:
        peak += 4 * n
    return peak + _update_bytes(cfg, shapes)


def _update_bytes(cfg, shapes: ModelShapes) -> int:
    """The fp32 temporaries of the optimizer's update when :mod:`.lowmem` applies it (step in backward, bf16
    weights): one piece of one weight at a time (the largest weight when it is smaller than a piece), ~34 bytes a
    value in bf16 (gradient, moments, denominator, new weights, rounding noise), one denominator (4 bytes a value)
    in fp32. torch's fused AdamW keeps none."""
    if getattr(cfg, "kind", "dreambooth") == "lora" or not (cfg.fused_backward or cfg.master_weights == "bf16"):
        return 0
    from .lowmem import PIECE

    values = min(PIECE, shapes.largest) if shapes.largest else PIECE
    return values * (34 if cfg.master_weights == "bf16" else 4)


def _decode_bytes(shapes: ModelShapes, resolution: int, precision: str) -> int:
    from .memtrace import decode_peak_bytes

    latent = resolution // shapes.vae_factor
    key = (shapes.vae_config, latent, precision)
    return _cached("decode", key, lambda: decode_peak_bytes(shapes.vae_config, latent, precision))


# ---------------------------------------------------------------------------------------------------------------
# traces, cached on disk (a configuration is traced once per machine)


def traced(shape) -> int:
    from .memtrace import step_peak_bytes

    return _cached("step", dataclasses.astuple(shape), lambda: step_peak_bytes(shape))


def _cache_file() -> Path:
    from ..fsutil import cache_dir

    return cache_dir() / TRACE_CACHE


def _cached(kind: str, key: Any, compute) -> int:
    from .. import __version__

    digest = hashlib.sha256(json.dumps([kind, __version__, key], default=str).encode()).hexdigest()[:32]
    path = _cache_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    if isinstance(data.get(digest), int):
        return data[digest]
    value = int(compute())
    data[digest] = value
    try:
        from ..fsutil import write_json_atomic

        write_json_atomic(path, dict(list(data.items())[-2000:]))
    except OSError as e:
        log.debug("memory trace cache %s not written: %s", path, e)
    return value


# ---------------------------------------------------------------------------------------------------------------
# free memory, fitting, advice


def available_bytes(device_type: str, device: Any = None) -> int:
    """What a run may use: on CUDA the free memory plus what this process's allocator holds (the host's models,
    unloaded before training), less a reserve; on the CPU the available RAM."""
    if device_type == "cuda":
        import torch

        dev = device if device is not None else torch.device("cuda", torch.cuda.current_device())
        free, total = torch.cuda.mem_get_info(dev)
        usable = free + torch.cuda.memory_reserved(dev)
        return max(0, int(usable - RESERVE_BYTES - RESERVE_FRACTION * total))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass
class Fit:
    """The planner's answer: the config to run, its estimate, the changes made, and whether it fits."""

    config: Any
    estimate: Estimate
    available: int
    changes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.available

    def message(self) -> str:
        head = f"memory: predicted peak {self.estimate.summary()}; {gb(self.available)} usable"
        if self.changes:
            head += "; changed to fit: " + ", ".join(self.changes)
        if not self.fits:
            head += (
                ". It does not fit even so: lower resolution or batch_size, set train_text_encoder=false, or use LoRA"
            )
        return head


def _savings(cfg, device_type: str):
    """The savings in the order of their cost, as option changes: time only first (the same result), then what
    changes the optimizer, last what changes what trains."""
    from .optim import resolve_optimizer

    if not cfg.gradient_checkpointing:
        yield {"gradient_checkpointing": True}
    batch, accum = cfg.batch_size, cfg.gradient_accumulation
    while batch > 1 and batch % 2 == 0:
        batch, accum = batch // 2, accum * 2
        yield {"batch_size": batch, "gradient_accumulation": accum}  # the same global batch
    lora = getattr(cfg, "kind", "dreambooth") == "lora"
    low_memory_adamw = cfg.master_weights == "bf16" or cfg.fused_backward
    uses_8bit = resolve_optimizer(cfg, device_type) == "adamw8bit" and not low_memory_adamw
    if device_type == "cuda" and not uses_8bit and _has_bitsandbytes():
        yield {"optimizer": "adamw8bit", "master_weights": "fp32", "fused_backward": False}
    if not lora and not cfg.fused_backward and accum == 1:
        yield {"fused_backward": True, "max_grad_norm": 0.0, "optimizer": "adamw"}
    if not lora and cfg.master_weights != "bf16" and _bf16_ok(device_type):
        yield {"master_weights": "bf16", "optimizer": "adamw", "mixed_precision": "auto"}
    if cfg.train_text_encoder:
        yield {"train_text_encoder": False}


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _bf16_ok(device_type: str) -> bool:
    if device_type != "cuda":
        return True
    import torch

    return torch.cuda.is_bf16_supported()


def fit(cfg, available: int, shapes: ModelShapes | None = None, device_type: str = "cuda") -> Fit:
    """The cheapest settings whose peak fits ``available``: the savings of :func:`_savings` are tried in order, each
    kept only when it lowers the peak, until the run fits."""
    best = estimate(cfg, shapes, device_type)
    config = cfg
    if best.total > available:
        for values in _savings(cfg, device_type):
            candidate = dataclasses.replace(config, **values)
            found = estimate(candidate, shapes, device_type)
            if found.total < best.total:
                config, best = candidate, found
            if best.total <= available:
                break
    return Fit(config, best, available, describe_changes(cfg, config))


def describe_changes(before, after) -> list[str]:
    """``option old -> new`` for every option the planner changed."""

    def show(v):
        return ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)

    return [
        f"{f.name} {show(getattr(before, f.name))} -> {show(getattr(after, f.name))}"
        for f in dataclasses.fields(before)
        if getattr(before, f.name) != getattr(after, f.name)
    ]


def oom_advice(cfg, device_type: str, shapes: ModelShapes | None = None, available: int | None = None) -> str:
    """For an out-of-memory error: the cheapest change that fits this device, with the prediction."""
    try:
        usable = available if available is not None else available_bytes(device_type)
        found = fit(cfg, usable, shapes, device_type)
    except Exception as e:  # noqa: BLE001 - advice must never hide the real error
        log.debug("no memory advice: %s", e)
        return ""
    if found.fits and found.changes:
        return (
            f"The cheapest change that fits ({gb(found.estimate.total)} of {gb(usable)}): {', '.join(found.changes)}."
        )
    if found.fits:
        return f"The planner predicts {gb(found.estimate.total)} of {gb(usable)}: other programs may hold GPU memory."
    return f"Even with {', '.join(found.changes)} the planner predicts {gb(found.estimate.total)} of {gb(usable)}: lower resolution or use LoRA."


def plan_memory(cfg, shapes: ModelShapes | None = None) -> tuple[Any, str | None]:
    """Before a run: on a GPU, the config that fits (``fit_memory``) and a line saying what was predicted and changed;
    elsewhere the config unchanged and no line (the CPU has no limit worth planning for)."""
    from ..devices import resolve_device

    device_type = resolve_device(cfg.device)
    if device_type != "cuda":
        return cfg, None
    usable = available_bytes(device_type)
    if not cfg.fit_memory:
        return cfg, Fit(cfg, estimate(cfg, shapes, device_type), usable).message()
    found = fit(cfg, usable, shapes, device_type)
    return found.config, found.message()
