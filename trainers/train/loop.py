"""The training loop shared by DreamBooth and LoRA.

``train(config, components=..., callbacks=..., stop=...)`` validates everything it can (config, folders, images,
output path, resume state) before a model is touched, then runs::

    caching  -> encode every image with the VAE once (and every prompt, while the text encoder is frozen)
    training -> for each step: [stop?] -> micro-batches (subject + class halves) -> loss -> backward
                -> clip -> optimizer/lr step -> progress callback -> samples / resumable state every N steps
    saving   -> the strategy writes the result atomically, with metadata
    sampling -> a last set of sample images

What trains and how it is saved is the strategy's business (:mod:`.strategy`); the maths of one step live in
:mod:`.objective`. Randomness (data order, flips, VAE sampling, noise, timesteps) comes from generators seeded with
``(seed, step, micro-batch, process)``, so a run stopped at step 5 and resumed continues exactly as if it had never
stopped: on CPU in fp32 the final weights are bitwise identical.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..configspec import config_hash, to_dict, validate
from ..errors import ConfigError, LikenessError
from .config import RUN_OPTIONS
from .dataset import ImageSet, Order, load_image_set, mix_seed, to_tensor
from .objective import diffusion_loss, draw_noise, min_snr_weights, noisy_latents_and_target

log = logging.getLogger(__name__)

STATE_VERSION = 1


class OutOfMemory(LikenessError):
    """The GPU ran out of memory; the message says what to change."""


# ---------------------------------------------------------------------------------------------------------------
# what front ends see


@dataclass
class ProgressInfo:
    """One progress report (also the payload of the ``likeness.progress`` browser event)."""

    step: int
    total: int
    phase: str  # caching | training | sampling | saving
    loss: float | None = None
    loss_smoothed: float | None = None
    lr: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    it_s: float | None = None
    loss_instance: float | None = None
    loss_prior: float | None = None

    def as_event(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Callbacks:
    """What a front end hears during training. Subclass and override what you need (all no-ops here)."""

    def on_progress(self, info: ProgressInfo) -> None:
        pass

    def on_sample(self, step: int, images: list, prompts: list[str]) -> None:
        pass

    def on_status(self, text: str) -> None:
        pass


@dataclass
class TrainOutcome:
    state: str  # "finished" | "stopped"
    steps_done: int
    total_steps: int
    path: Path | None  # the saved result (None when stopped)
    state_path: Path | None  # the last resumable state written (if any)
    losses: list[float] = field(default_factory=list)  # one per optimizer step, from step 1 (resumed runs included)
    losses_instance: list[float] = field(default_factory=list)
    losses_prior: list[float] = field(default_factory=list)
    samples: list = field(default_factory=list)  # last sample images (PIL)
    sample_prompts: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# preflight (no torch models needed)


@dataclass
class Plan:
    """Everything checked and read before training: the images, output and resume locations, identity hashes."""

    config: Any
    instance: ImageSet
    classes: ImageSet | None
    output: Path
    state_dir: Path
    resume: Path | None
    dataset_hash: str


def plan(config) -> Plan:
    """Validate the config and the data; raise ConfigError/DatasetError before any heavy work."""
    validate(config, source=f"{getattr(config, 'kind', 'training')} options")
    if not str(config.output).strip():
        raise ConfigError("option 'output' is empty: give the path of the .safetensors file to write")
    output = Path(config.output).expanduser()
    if output.suffix.lower() != ".safetensors":
        raise ConfigError(f"option 'output' ({output}) must end in .safetensors")
    if output.exists() and not config.overwrite:
        raise ConfigError(f"output {output} already exists; choose another name or set overwrite=true")
    instance = load_image_set(config.instance_data, config.instance_prompt, config.resolution, "instance")
    classes = None
    if config.prior_preservation:
        classes = load_image_set(config.class_data, config.class_prompt, config.resolution, "class")
    state_dir = Path(config.state_dir).expanduser() if config.state_dir else output.with_name(output.stem + ".state")
    resume = find_resume(config.resume_from, state_dir)
    parts = [instance.content_hash()] + ([classes.content_hash()] if classes else [])
    return Plan(config, instance, classes, output, state_dir, resume, "-".join(p[:32] for p in parts))


def find_resume(resume_from: str | None, state_dir: Path) -> Path | None:
    if not resume_from:
        return None
    if resume_from == "latest":
        states = list_states(state_dir)
        if not states:
            raise ConfigError(f"resume_from=latest but {state_dir} holds no resumable state (step-NNNNNN folders)")
        return states[-1]
    p = Path(resume_from).expanduser()
    if not (p / "state.json").is_file():
        raise ConfigError(f"resume_from: {p} is not a resumable state (a folder with state.json)")
    return p


def list_states(state_dir: Path) -> list[Path]:
    if not state_dir.is_dir():
        return []
    found = [p for p in state_dir.iterdir() if p.name.startswith("step-") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def weights_hash(config) -> str:
    """Hash of the options that shape the trained weights (not paths, not checkpoint cadence)."""
    return config_hash(config, exclude=RUN_OPTIONS + ("steps",))


def metadata_config(config) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config).items() if k not in RUN_OPTIONS}


# ---------------------------------------------------------------------------------------------------------------
# accelerate


def make_accelerator(mixed_precision: str, device: str):
    """An ``Accelerator`` for this run.

    accelerate keeps process-wide singletons (``AcceleratorState``): a second ``Accelerator`` with another precision
    raises in a long-lived process (ComfyUI, pytest). In a single process we reset them first; under
    ``accelerate launch`` (several processes) the launcher's state is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    mp = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[mixed_precision]
    return Accelerator(mixed_precision=mp, cpu=device == "cpu")


def resolve_precision(config, device_type: str) -> str:
    import torch

    if config.mixed_precision != "auto":
        if device_type == "cpu" and config.mixed_precision == "fp16":
            raise ConfigError("mixed_precision=fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
        return config.mixed_precision
    if device_type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_device(config) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available; use device=auto or cpu")
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


# ---------------------------------------------------------------------------------------------------------------
# the trainer


def train(
    config,
    *,
    components=None,
    callbacks: Callbacks | None = None,
    stop: Callable[[], bool] | None = None,
    base_hash: str | None = None,
) -> TrainOutcome:
    """Train ``config`` (a ``DreamBoothConfig`` or ``LoRAConfig``) and save the result.

    ``components`` (``model_io.Components``) are trained in place; without them the base model named by the config is
    loaded. ``stop`` is polled every step; when it returns True the run saves a resumable state (if configured) and
    returns with ``state="stopped"``. ``base_hash`` is the base model's sha256 when the caller already knows it.
    """
    the_plan = plan(config)
    callbacks = callbacks or Callbacks()
    stop = stop or (lambda: False)
    if components is None:
        from ..model_io import load_components

        callbacks.on_status(f"loading {config.base_model}")
        components = load_components(config.base_model, tokenizer=config.tokenizer)
    if base_hash is None:
        base_hash = _base_hash(config.base_model)
    trainer = Trainer(the_plan, components, callbacks, stop, base_hash)
    try:
        return trainer.run()
    finally:
        trainer.release()


def _base_hash(path: str) -> str:
    """sha256 of the base model (the same value a ``ModelHandle`` carries), '' when there is no file."""
    if not path or not Path(path).exists():
        return ""
    from ..model_io.export import content_hash

    return content_hash(path)


class Trainer:
    """One run: set up from a plan, then cache -> train -> save -> sample. ``run()`` is the whole story."""

    def __init__(self, the_plan: Plan, components, callbacks: Callbacks, stop: Callable[[], bool], base_hash: str):
        self.plan = the_plan
        self.cfg = the_plan.config
        self.c = components
        self.cb = callbacks
        self.stop = stop
        self.base_hash = base_hash
        self.strategy = self.cfg.make_strategy()
        self.losses: list[float] = []
        self.losses_instance: list[float] = []
        self.losses_prior: list[float] = []
        self.samples: list = []
        self.last_state: Path | None = None
        self.step = 0
        self.t_start = time.perf_counter()
        self.optimizer = None
        self.latent_cache: dict[tuple[str, int, bool], Any] = {}
        self.text_cache: dict[str, Any] = {}

    # -- setup ---------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch

        cfg = self.cfg
        device_type = resolve_device(cfg)
        self.precision = resolve_precision(cfg, device_type)
        self.accel = make_accelerator(self.precision, device_type)
        self.device = self.accel.device
        self.rank, self.world = self.accel.process_index, self.accel.num_processes
        c = self.c
        _set_attention(c.unet, cfg.attention)
        self.groups = self.strategy.prepare(c, cfg)
        self.modules = self.strategy.trainable_modules(c)
        for module in (c.unet, c.vae, c.text_encoder):
            module.to(self.device)
            module.eval()
        for module in self.modules.values():
            module.train()
        if cfg.gradient_checkpointing:
            if "unet" in self.modules:
                c.unet.enable_gradient_checkpointing()
            if "text_encoder" in self.modules:
                _te_checkpointing(c.text_encoder, True)
        self.optimizer = self.accel.prepare(_make_optimizer(cfg, self.groups, device_type))
        from .optim import make_lr_scheduler

        self.lr_scheduler = make_lr_scheduler(cfg, self.optimizer.optimizer)
        # Forward passes go through the data-parallel wrappers when there are several processes.
        self.unet_fwd = self.accel.prepare(c.unet) if self.world > 1 and "unet" in self.modules else c.unet
        te_trained = "text_encoder" in self.modules
        self.te_fwd = self.accel.prepare(c.text_encoder) if self.world > 1 and te_trained else c.text_encoder
        self.te_training = te_trained
        self.orders = {"instance": Order(len(self.plan.instance), cfg.seed, 1, cfg.random_flip)}
        if self.plan.classes is not None:
            self.orders["class"] = Order(len(self.plan.classes), cfg.seed, 2, cfg.random_flip)
        self.scaling = getattr(c.vae.config, "scaling_factor", 0.18215)
        self.num_timesteps = c.noise_scheduler.config.num_train_timesteps
        torch.manual_seed(mix_seed(cfg.seed, 0))  # anything outside our generators (dropout) is seeded too

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        import torch

        oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        try:
            self.setup()
            if self.plan.resume is not None:
                self.load_state(self.plan.resume)
            self.cache()
            if not self.stop():
                self.train_steps()
            if self.step < self.cfg.steps:
                return self.finish_stopped()
            return self.finish()
        except oom as e:
            self.release()
            raise OutOfMemory(
                f"the GPU ran out of memory at step {self.step} (batch_size={self.cfg.batch_size}, "
                f"resolution={self.cfg.resolution}); memory was freed. Lower batch_size or resolution, turn on "
                "gradient_checkpointing, use optimizer=adamw8bit, set train_text_encoder=false "
                "or cache_latents=true"
            ) from e

    def train_steps(self) -> None:
        cfg = self.cfg
        self.t_train = time.perf_counter()
        self.first_step = self.step
        smoothed = _Smoother()
        for value in self.losses:
            smoothed.add(value)
        while self.step < cfg.steps:
            if self.stop():
                self.cb.on_status(f"stop requested at step {self.step}")
                return
            self.update_text_encoder_phase()
            loss, inst, prior = self.one_step()
            self.step += 1
            self.losses.append(loss)
            self.losses_instance.append(inst)
            if prior is not None:
                self.losses_prior.append(prior)
            self.report(loss, smoothed.add(loss), inst, prior)
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
                self.make_samples()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_state()

    def one_step(self) -> tuple[float, float, float | None]:
        """One optimizer step over ``gradient_accumulation`` micro-batches. Returns (loss, subject, prior)."""
        import torch

        cfg = self.cfg
        accum = cfg.gradient_accumulation
        total = inst = 0.0
        prior = None if self.plan.classes is None else 0.0
        for micro in range(accum):
            gen = torch.Generator().manual_seed(mix_seed(cfg.seed, 3, self.step, micro, self.rank))
            latents, captions = self.batch(micro, gen)
            sync = micro == accum - 1
            ctx = contextlib.nullcontext() if sync or self.world == 1 else self.accel.no_sync(self.unet_fwd)
            with ctx, self.accel.autocast():
                hidden = self.encode_text(captions)
                noise, timesteps = draw_noise(latents, self.num_timesteps, gen, cfg.noise_offset)
                noisy, target = noisy_latents_and_target(self.c.noise_scheduler, latents, noise, timesteps)
                pred = self.unet_fwd(noisy, timesteps, hidden, return_dict=False)[0]
                weights = None
                if cfg.snr_gamma:
                    weights = min_snr_weights(self.c.noise_scheduler, timesteps, cfg.snr_gamma)
                parts = diffusion_loss(
                    pred, target, n_instance=cfg.batch_size, prior_weight=cfg.prior_loss_weight, weights=weights
                )
            self.accel.backward(parts.total / accum)
            total += float(parts.total.detach()) / accum
            inst += parts.instance / accum
            if prior is not None:
                prior += parts.prior / accum
        if cfg.max_grad_norm:
            params = [p for g in self.groups for p in g["params"] if p.requires_grad]
            self.accel.clip_grad_norm_(params, cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, inst, prior

    def batch(self, micro: int, gen) -> tuple[Any, list[str]]:
        """Subject samples then class samples (the same count) for this step, micro-batch and process."""
        import torch

        cfg = self.cfg
        first = ((self.step * cfg.gradient_accumulation + micro) * self.world + self.rank) * cfg.batch_size
        latents, captions = [], []
        sets = [("instance", self.plan.instance)] + ([("class", self.plan.classes)] if self.plan.classes else [])
        for kind, image_set in sets:
            for k in range(first, first + cfg.batch_size):
                index, flip = self.orders[kind](k)
                example = image_set.examples[index]
                latents.append(self.latents_of(kind, index, example, flip, gen))
                captions.append(example.caption)
        return torch.cat(latents).to(self.device), captions

    # -- VAE and text encoder ------------------------------------------------------------------------------------

    def latents_of(self, kind: str, index: int, example, flip: bool, gen):
        """Scaled latents of one image: a fresh sample of its (cached) VAE posterior."""
        import torch

        key = (kind, id(example), flip)
        params = self.latent_cache.get(key)
        if params is None:
            params = self.encode_image(example, flip)
            if self.cfg.cache_latents:
                self.latent_cache[key] = params
        mean, logvar = params.float().chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=gen, dtype=torch.float32)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return (mean + std * noise.to(mean.device)) * self.scaling

    def encode_image(self, example, flip: bool):
        import torch

        pixels = to_tensor(example, flip).unsqueeze(0).to(self.device)
        with torch.no_grad(), self.accel.autocast():
            return self.c.vae.encode(pixels).latent_dist.parameters.float()

    def encode_text(self, captions: list[str]):
        import torch

        if self.te_training:
            return self.te_fwd(self.tokenize(captions), return_dict=False)[0]
        out = []
        for caption in captions:
            hidden = self.text_cache.get(caption)
            if hidden is None:
                with torch.no_grad():
                    hidden = self.c.text_encoder(self.tokenize([caption]), return_dict=False)[0]
                if self.cfg.cache_text_embeddings:
                    self.text_cache[caption] = hidden
            out.append(hidden)
        return torch.cat(out)

    def tokenize(self, captions: list[str]):
        tok = self.c.tokenizer
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def cache(self) -> None:
        """Encode every image (both orientations when flipping) once, before the first step."""
        if not self.cfg.cache_latents:
            return
        jobs = []
        sets = [("instance", self.plan.instance)] + ([("class", self.plan.classes)] if self.plan.classes else [])
        for kind, image_set in sets:
            for example in image_set.unique:
                for flip in (False, True) if self.cfg.random_flip else (False,):
                    jobs.append((kind, example, flip))
        self.cb.on_status(f"caching {len(jobs)} VAE latents")
        for i, (kind, example, flip) in enumerate(jobs):
            if self.stop():
                return
            self.latent_cache[(kind, id(example), flip)] = self.encode_image(example, flip)
            if i % 8 == 0 or i == len(jobs) - 1:
                self.cb.on_progress(self.phase_info("caching"))

    def update_text_encoder_phase(self) -> None:
        """Stop training the text encoder once ``text_encoder_steps`` are done (the TE group stops changing)."""
        limit = self.cfg.text_encoder_steps
        if not self.te_training or not limit or self.step < limit:
            return
        for group in self.groups:
            if group["name"] == "text_encoder":
                for p in group["params"]:
                    p.requires_grad_(False)
                    p.grad = None
        self.c.text_encoder.eval()
        if self.cfg.gradient_checkpointing:
            _te_checkpointing(self.c.text_encoder, False)
        self.te_training = False
        self.cb.on_status(f"text encoder frozen after {limit} steps")

    # -- reporting, samples --------------------------------------------------------------------------------------

    def phase_info(self, phase: str) -> ProgressInfo:
        """A progress report for a phase other than a training step (elapsed keeps counting)."""
        return ProgressInfo(
            step=self.step, total=self.cfg.steps, phase=phase, elapsed=time.perf_counter() - self.t_start
        )

    def report(self, loss: float, smoothed: float, inst: float, prior: float | None) -> None:
        now = time.perf_counter()
        done = self.step - self.first_step
        rate = done / max(now - self.t_train, 1e-9)
        lr = self.lr_scheduler.get_last_lr()[0]
        info = ProgressInfo(
            step=self.step,
            total=self.cfg.steps,
            phase="training",
            loss=loss,
            loss_smoothed=smoothed,
            lr=lr,
            elapsed=now - self.t_start,
            eta=(self.cfg.steps - self.step) / rate if rate > 0 else None,
            it_s=rate,
            loss_instance=inst,
            loss_prior=prior,
        )
        self.cb.on_progress(info)

    def make_samples(self) -> None:
        prompts = sample_prompts(self.cfg)
        if not prompts or not self.accel.is_main_process:
            return
        self.cb.on_progress(self.phase_info("sampling"))
        self.samples = sample_images(
            self.c, prompts, self.cfg, self.device, stop=self.stop, autocast=self.accel.autocast
        )
        for module in self.modules.values():
            module.train()
        if not self.te_training:
            self.c.text_encoder.eval()
        if self.samples:
            self.cb.on_sample(self.step, self.samples, prompts[: len(self.samples)])

    # -- finishing -----------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        cfg = self.cfg
        return {
            "likeness.kind": self.strategy.name,
            "likeness.version": __version__,
            "likeness.steps": str(self.step),
            "likeness.base_model_sha256": self.base_hash,
            "likeness.dataset_sha256": self.plan.dataset_hash,
            "likeness.config": json.dumps(metadata_config(cfg), sort_keys=True, default=str),
        }

    def finish(self) -> TrainOutcome:
        self.accel.wait_for_everyone()
        path = None
        meta = self.metadata()
        if self.accel.is_main_process:
            self.cb.on_progress(self.phase_info("saving"))
            self.cb.on_status(f"saving {self.plan.output}")
            self.strategy.save_result(self.c, self.plan.output, meta, self.cfg)
            path = self.plan.output
        if self.cfg.sample_at_end and not self.stop():
            self.make_samples()
        return self.outcome("finished", path, meta)

    def finish_stopped(self) -> TrainOutcome:
        if self.cfg.save_state_on_stop and self.step > 0 and self.step > self._resumed_step():
            self.save_state()
        self.cb.on_status(f"stopped at step {self.step} of {self.cfg.steps}")
        return self.outcome("stopped", None, self.metadata())

    def _resumed_step(self) -> int:
        return getattr(self, "resumed_at", 0)

    def outcome(self, state: str, path: Path | None, meta: dict[str, str]) -> TrainOutcome:
        return TrainOutcome(
            state=state,
            steps_done=self.step,
            total_steps=self.cfg.steps,
            path=path,
            state_path=self.last_state,
            losses=list(self.losses),
            losses_instance=list(self.losses_instance),
            losses_prior=list(self.losses_prior),
            samples=list(self.samples),
            sample_prompts=sample_prompts(self.cfg)[: len(self.samples)],
            metadata=meta,
            elapsed=time.perf_counter() - self.t_start,
        )

    def release(self) -> None:
        """Drop optimizer state and caches, turn the models back to inference, give memory back."""
        import torch

        self.optimizer = None
        self.lr_scheduler = None
        self.latent_cache.clear()
        self.text_cache.clear()
        self.unet_fwd = self.te_fwd = None
        c = self.c
        with contextlib.suppress(Exception):
            for module in (c.unet, c.text_encoder, c.vae):
                module.requires_grad_(False)
                module.eval()
            if self.cfg.gradient_checkpointing:
                c.unet.disable_gradient_checkpointing()
                _te_checkpointing(c.text_encoder, False)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- resumable states ----------------------------------------------------------------------------------------

    def save_state(self) -> Path | None:
        """Write ``state_dir/step-NNNNNN/`` atomically (temp folder + rename), keep the last K."""
        import torch
        from safetensors.torch import save_file

        self.accel.wait_for_everyone()
        if not self.accel.is_main_process:
            return None
        self.cb.on_status(f"saving resumable state at step {self.step}")
        root = self.plan.state_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:06d}"
        tmp = root / f".step-{self.step:06d}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            tensors = {
                k: v.detach().to("cpu").contiguous() for k, v in self.strategy.state_dict_for_checkpoint(self.c).items()
            }
            save_file(tensors, str(tmp / "trainable.safetensors"))
            extra = {
                "optimizer": self.optimizer.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
            }
            if self.accel.scaler is not None:
                extra["scaler"] = self.accel.scaler.state_dict()
            if torch.cuda.is_available():
                extra["rng_cuda"] = torch.cuda.get_rng_state_all()
            torch.save(extra, tmp / "optimizer.pt")
            info = {
                "version": STATE_VERSION,
                "likeness_version": __version__,
                "kind": self.strategy.name,
                "step": self.step,
                "te_training": self.te_training,
                "weights_hash": weights_hash(self.cfg),
                "dataset_hash": self.plan.dataset_hash,
                "losses": self.losses,
                "losses_instance": self.losses_instance,
                "losses_prior": self.losses_prior,
                "config": metadata_config(self.cfg),
            }
            (tmp / "state.json").write_text(json.dumps(info, indent=1, default=str))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in list_states(root)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        self.last_state = final
        return final

    def load_state(self, path: Path) -> None:
        import torch
        from safetensors.torch import load_file

        info = json.loads((path / "state.json").read_text())
        if info.get("kind") != self.strategy.name:
            raise ConfigError(f"resume_from: {path} is a {info.get('kind')} state, not {self.strategy.name}")
        if info.get("weights_hash") != weights_hash(self.cfg):
            raise ConfigError(
                f"resume_from: {path} was trained with other options (learning rate, data, model...); "
                "only steps, checkpoint and output options may change when resuming"
            )
        if info.get("dataset_hash") != self.plan.dataset_hash:
            raise ConfigError(f"resume_from: {path} was trained on other images; resume with the same folders")
        if info["step"] > self.cfg.steps:
            raise ConfigError(f"resume_from: {path} is at step {info['step']}, beyond steps={self.cfg.steps}")
        self.strategy.load_state_dict_for_resume(self.c, load_file(str(path / "trainable.safetensors")))
        extra = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        self.step = self.resumed_at = int(info["step"])
        self.update_text_encoder_phase()
        self.optimizer.optimizer.load_state_dict(extra["optimizer"])
        self.lr_scheduler.load_state_dict(extra["lr_scheduler"])
        if "scaler" in extra and self.accel.scaler is not None:
            self.accel.scaler.load_state_dict(extra["scaler"])
        torch.set_rng_state(extra["rng_cpu"])
        if "rng_cuda" in extra and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["rng_cuda"])
        self.losses = list(info.get("losses", []))
        self.losses_instance = list(info.get("losses_instance", []))
        self.losses_prior = list(info.get("losses_prior", []))
        self.last_state = path
        self.cb.on_status(f"resumed from {path} at step {self.step}")


# ---------------------------------------------------------------------------------------------------------------
# helpers


class _Smoother:
    """Bias-corrected exponential moving average of the loss (what the progress bar shows)."""

    def __init__(self, beta: float = 0.9):
        self.beta, self.value, self.n = beta, 0.0, 0

    def add(self, x: float) -> float:
        self.n += 1
        self.value = self.beta * self.value + (1 - self.beta) * x
        return self.value / (1 - self.beta**self.n)


def _set_attention(unet, kind: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def _te_checkpointing(text_encoder, on: bool) -> None:
    """Gradient checkpointing of a transformers model (the method was renamed in transformers 5)."""
    name = (
        "activation_checkpointing"
        if hasattr(text_encoder, "activation_checkpointing_enable")
        else "gradient_checkpointing"
    )
    getattr(text_encoder, f"{name}_{'enable' if on else 'disable'}")()


def _make_optimizer(cfg, groups, device_type):
    from .optim import make_optimizer

    return make_optimizer(cfg, groups, device_type)


def sample_prompts(cfg) -> list[str]:
    return list(cfg.sample_prompts) or [cfg.instance_prompt]


def sample_images(components, prompts: list[str], cfg, device, *, stop=None, autocast=None) -> list:
    """One image per prompt from the current weights: DDIM, fixed seed, no safety checker. Returns PIL images."""
    import torch
    from diffusers import DDIMScheduler

    from ..model_io import make_pipeline

    c = components
    scheduler = DDIMScheduler.from_config(
        c.noise_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipe = make_pipeline(c, scheduler)
    factor = 2 ** (len(c.vae.config.block_out_channels) - 1)  # 8 for SD's VAE
    images = []
    for i, prompt in enumerate(prompts):
        if stop is not None and stop():
            break
        gen = torch.Generator().manual_seed(mix_seed(cfg.sample_seed, i))
        side = cfg.resolution // factor
        latents = torch.randn((1, c.unet.config.in_channels, side, side), generator=gen).to(device)
        with torch.no_grad(), autocast() if autocast else contextlib.nullcontext():
            out = pipe(
                prompt,
                height=cfg.resolution,
                width=cfg.resolution,
                num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.sample_guidance,
                latents=latents,
                output_type="pil",
            )
        images.append(out.images[0])
    return images


def loss_quarters(losses: list[float]) -> tuple[float, float]:
    """Mean of the first and the last quarter of a loss curve (a trend check that tolerates noise)."""
    q = max(1, len(losses) // 4)
    return sum(losses[:q]) / q, sum(losses[-q:]) / q


def nan_safe(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x
