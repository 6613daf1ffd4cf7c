"""The LoRA strategy for the shared training loop (see ``trainers/train/strategy.py`` for the seam).

``prepare`` freezes the whole base model, keeps it in the lowest sensible precision (the compute precision on a GPU:
fp16/bf16; fp32 on CPU, where half precision is slow), injects peft adapters (fp32, so the optimizer and the
gradient scaler see fp32 parameters) and hands only the adapter parameters to the optimizer. A resumable state holds
the adapter tensors only; the loop adds the optimizer, scheduler and RNG states. ``save_result`` writes the kohya
file (and optionally the diffusers one) with kohya-style ``ss_*`` metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from ..train.strategy import ParamGroup, RunContext, text_encoder_lr
from . import adapters
from .config import check_shape
from .kohya import TrainingFacts, base_model_hashes, save_diffusers, save_kohya, tag_frequency, training_metadata
from .start import StartLoRA, add_start, layer_set_of, read_start

log = logging.getLogger(__name__)


class LoRATrain:
    """Adapters (LoRA, DoRA, LoHa, LoKr) on the UNet (and the text encoder when ``train_text_encoder``), or the
    layers of the LoRA file the run continues (``continue_from``); everything else frozen."""

    name = "lora"

    def __init__(self) -> None:
        self.train_text_encoder = False
        self.unet_layers: list[str] = []
        self.te_layers: list[str] = []
        self.start: StartLoRA | None = None  # the LoRA this run continues
        self.frozen_te: dict = {}  # the continued file's text-encoder layers when they do not train
        self.kind, self.dora, self.rank, self.alpha, self.lokr_factor, self.layer_set = "lora", False, 0, 0.0, -1, ""

    def prepare(self, components, config, ctx: RunContext) -> list[ParamGroup]:
        self.train_text_encoder = bool(config.train_text_encoder)
        c = components
        for module in (c.unet, c.text_encoder, c.vae):
            module.requires_grad_(False)
        dtype = ctx.placement.frozen_dtype  # the base stays frozen: compute precision on a GPU, fp32 on the CPU
        if config.continue_from:
            self._continue(c, config)
        else:
            self._fresh(c, config)
        adapters.freeze_base(c.unet, dtype)  # adapter values are kept exactly through the cast
        groups: list[ParamGroup] = [
            {"name": "unet", "params": adapters.lora_parameters(c.unet), "lr": config.learning_rate}
        ]
        if self.te_layers:
            adapters.freeze_base(c.text_encoder, dtype)
        elif dtype != torch.float32:
            c.text_encoder.to(dtype)
        if self.train_text_encoder:
            params = adapters.lora_parameters(c.text_encoder)
            groups.append({"name": "text_encoder", "params": params, "lr": text_encoder_lr(config)})
        else:  # a continued file's text-encoder layers stay as they are
            for p in adapters.lora_parameters(c.text_encoder):
                p.requires_grad_(False)
        n = sum(p.numel() for g in groups for p in g["params"])
        log.info(
            "%s rank %d alpha %g on %d UNet + %d text encoder layers: %.2f M trainable parameters, base in %s",
            self.describe(), self.rank, self.alpha, len(self.unet_layers), len(self.te_layers), n / 1e6, dtype,
        )  # fmt: skip
        return groups

    def describe(self) -> str:
        return {"lora": "DoRA" if self.dora else "LoRA", "loha": "LoHa", "lokr": "LoKr"}[self.kind]

    def _fresh(self, c, config) -> None:
        """New adapters of the configured type on the configured layers."""
        self.kind, self.dora, self.lokr_factor = config.lora_type, bool(config.dora), int(config.lokr_factor)
        self.rank, self.alpha, self.layer_set = int(config.lora_rank), float(config.lora_alpha), config.lora_layers
        shape = dict(rank=self.rank, alpha=self.alpha, dropout=config.lora_dropout, kind=self.kind, dora=self.dora,
                     lokr_factor=self.lokr_factor)  # fmt: skip
        self.unet_layers = adapters.unet_target_names(c.unet, config.lora_layers)
        adapters.add_adapters(c.unet, self.unet_layers, **shape)
        if self.train_text_encoder:
            self.te_layers = adapters.text_encoder_target_names(c.text_encoder, config.lora_layers)
            adapters.add_adapters(c.text_encoder, self.te_layers, **shape)

    def _continue(self, c, config) -> None:
        """The layers of the file being continued, with its weights: type, rank and alpha come from the file."""
        s = self.start = read_start(config.continue_from, c.unet, c.text_encoder)
        self.kind, self.dora, self.rank, self.alpha, self.lokr_factor = s.kind, s.dora, s.rank, s.alpha, s.lokr_factor
        if self.train_text_encoder and not s.text_encoder:
            log.warning("%s has no text-encoder layers: only its UNet layers train", s.path.name)
            self.train_text_encoder = False
        check_shape(s.kind, s.dora, dataclasses.replace(config, train_text_encoder=bool(s.text_encoder)))
        self.layer_set = layer_set_of(c.unet, list(s.unet))
        self.unet_layers = list(s.unet)
        add_start(c.unet, s.unet, s, config.lora_dropout)
        if s.text_encoder:
            self.te_layers = list(s.text_encoder)
            add_start(c.text_encoder, s.text_encoder, s, config.lora_dropout)
            if not self.train_text_encoder:
                self.frozen_te = dict(s.text_encoder)

    def trainable_modules(self, components) -> dict[str, torch.nn.Module]:
        modules = {"unet": components.unet}
        if self.train_text_encoder:
            modules["text_encoder"] = components.text_encoder
        return modules

    # -- resumable states: the adapter tensors only ------------------------------------------------------------

    def _named(self, components) -> dict[str, torch.nn.Parameter]:
        out = {}
        parts = [("unet", components.unet)] + (
            [("text_encoder", components.text_encoder)] if self.train_text_encoder else []
        )
        for prefix, module in parts:
            trained = {id(p) for p in adapters.lora_parameters(module)}  # every adapter type's tensors (DoRA too)
            for name, p in module.named_parameters():
                if id(p) in trained:
                    out[f"{prefix}.{name}"] = p
        return out

    def state_dict_for_checkpoint(self, components) -> dict[str, torch.Tensor]:
        return {k: p.detach().float() for k, p in self._named(components).items()}

    def load_state_dict_for_resume(self, components, state: dict[str, torch.Tensor]) -> None:
        params = self._named(components)
        if set(params) != set(state):
            extra, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
            raise ValueError(
                f"the resumable state does not fit these LoRA options (missing {missing[:3]}, unexpected {extra[:3]})"
            )
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k].to(p.dtype))

    # -- the result ----------------------------------------------------------------------------------------------

    def weights(self, components):
        unet = adapters.get_weights(components.unet)
        te = adapters.get_weights(components.text_encoder) if self.train_text_encoder else dict(self.frozen_te)
        return unet, te

    def result_bytes(self, components, config) -> int:
        """The saved LoRA's size: the adapter weights in ``save_dtype``."""
        per = 4 if config.save_dtype == "fp32" else 2
        return sum(p.numel() for p in self._named(components).values()) * per

    def save_result(self, components, path: Path, metadata: dict[str, str], config, ctx: RunContext) -> Path:
        unet, te = self.weights(components)
        md = dict(metadata)
        if self.start is not None:
            md["likeness.continued_from"] = self.start.path.name
            md["likeness.continued_from_sha256"] = config.start_weights_hash()
        md.update(training_metadata(self.facts(config, metadata, Path(path), ctx)))
        out = save_kohya(path, unet, te, metadata=md, dtype=config.save_dtype, overwrite=bool(config.overwrite))
        if getattr(config, "save_diffusers", False):
            save_diffusers(
                diffusers_path(path),
                unet,
                te,
                dropout=config.lora_dropout,
                metadata={k: v for k, v in md.items() if k.startswith("likeness.")},
                dtype=config.save_dtype,
                overwrite=bool(config.overwrite),
            )
        return out

    def facts(self, config, metadata: dict[str, str], path: Path, ctx: RunContext) -> TrainingFacts:
        base = Path(config.base_model) if config.base_model else None
        legacy, full = _base_hashes(base, metadata.get("likeness.base_model_sha256", ""))
        dirs, tags, n_inst = _dataset_facts(ctx.plan.instance)
        steps = ctx.step
        seen = steps * config.batch_size * config.gradient_accumulation
        n_reg = len(ctx.plan.classes.unique) if ctx.plan.classes is not None else 0
        return TrainingFacts(
            rank=self.rank,
            alpha=self.alpha,
            layers=self.layer_set,
            lora_type=self.kind,
            dora=self.dora,
            lokr_factor=self.lokr_factor,
            train_text_encoder=self.train_text_encoder,
            dropout=config.lora_dropout,
            output_name=path.stem,
            base_model_path=str(base) if base else None,
            base_model_name=base.name if base else "",
            base_model_hash=legacy,
            base_model_sha256=full,
            vae_name=Path(config.vae_path).name if config.vae_path else "",
            steps=steps,
            max_steps=config.steps,
            epochs=-(-seen // n_inst) if n_inst else 0,
            batch_size=config.batch_size,
            gradient_accumulation=config.gradient_accumulation,
            resolution=config.resolution,
            learning_rate=config.learning_rate,
            text_encoder_lr=text_encoder_lr(config),
            lr_scheduler=config.lr_scheduler,
            lr_warmup_steps=config.lr_warmup_steps,
            optimizer=ctx.optimizer,
            mixed_precision=ctx.placement.precision,
            seed=config.seed,
            num_train_images=n_inst,
            num_reg_images=n_reg,
            prior_loss_weight=config.prior_loss_weight if config.prior_preservation else 0.0,
            noise_offset=config.noise_offset,
            min_snr_gamma=config.snr_gamma or None,
            max_grad_norm=config.max_grad_norm,
            cache_latents=config.cache_latents,
            dataset_dirs=dirs,
            tag_frequency=tags,
            training_comment=config.training_comment,
            started_at=ctx.started_at,
            finished_at=time.time(),
        )


def _base_hashes(base: Path | None, full: str) -> tuple[str, str]:
    """(legacy 8-hex hash, sha256) of the base model file, as kohya records them ('' when unknown)."""
    legacy = ""
    if base is not None and base.is_file():
        try:
            legacy, full2 = base_model_hashes(base)
            full = full or full2
        except OSError as e:
            log.warning("could not hash the base model %s: %s", base, e)
    return legacy, full


def diffusers_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".diffusers.safetensors")


def _dataset_facts(images) -> tuple[dict, dict, int]:
    """kohya's ``ss_dataset_dirs`` and ``ss_tag_frequency`` for the run's instance images (as the plan read them)."""
    root = images.folder
    dirs: dict[str, dict[str, int]] = {}
    captions: dict[str, list[str]] = {}
    for example in images.unique:
        key = example.path.parent.name if example.path.parent != root else root.name
        repeats = sum(1 for e in images.examples if e is example)
        d = dirs.setdefault(key, {"n_repeats": repeats, "img_count": 0})
        d["img_count"] += 1
        captions.setdefault(key, []).append(example.caption)
    return dirs, tag_frequency(captions), len(images.examples)
