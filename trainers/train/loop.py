"""The training loop shared by DreamBooth and LoRA: :meth:`Trainer.one_step` is the training step.

``train(config, components=..., callbacks=..., stop=...)`` plans the run (:mod:`.plan`: every check before a model is
touched), then :class:`Trainer` runs::

    caching  -> encode every image with the VAE once (and every prompt, while the text encoder is frozen); the VAE
                (and the frozen text encoder) then leave the training device until samples need them
    training -> for each step: [stop?] -> micro-batches (subject + class halves) -> loss -> backward
                -> clip -> optimizer/lr step -> progress callback -> samples / resumable state every N steps
                (on a GPU a step's losses are read and reported during the next step: :meth:`Trainer.settle`)
    saving   -> the strategy writes the result atomically, with metadata
    sampling -> a last set of sample images

What trains and how it is saved is the strategy's business (:mod:`.strategy`); the maths of one step live in
:mod:`.objective`; resumable states in :mod:`.state`; images in :mod:`..sampling`. Randomness (data order, flips, VAE
sampling, noise, timesteps) comes from generators seeded with ``(seed, step, micro-batch, process)``, so a run stopped
at step 5 and resumed continues exactly as if it had never stopped: on CPU in fp32 the final weights are bitwise
identical. Front ends usually go through :mod:`.session`, which owns the run's files and reuse.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__, collector
from ..devices import placement, release_freed_host_memory, to_device
from ..errors import OutOfMemory, OutputExists, SaveFailed, TrainingDiverged
from .batches import BatchPlan, has_masks, pixel_masks
from .dataset import mix_seed, to_tensor
from .events import Callbacks, ProgressInfo, TrainOutcome
from .hooks import hooks_for, sampling_weights
from .memory import compute_precision, oom_advice, shapes_of
from .memtrace import cast_quietly
from .objective import diffusion_loss, draw_noise, mask_weights, min_snr_weights, noisy_latents_and_target
from .plan import Plan, free_output_path, metadata_config, plan, weights_hash
from .state import check_compatible, clean_partials, prune_states, read_info, read_state, write_state
from .strategy import RunContext

log = logging.getLogger(__name__)

__all__ = ["Callbacks", "OutOfMemory", "ProgressInfo", "TrainOutcome", "Trainer", "train"]

OFFLOAD_DEVICE = "cpu"  # where frozen parts wait while they are not needed
TRIM_GRADIENT_BYTES = 64 << 20  # CPU runs with more gradient bytes than this trim the heap once a step


def train(
    config,
    *,
    components=None,
    callbacks: Callbacks | None = None,
    stop: Callable[[], bool] | None = None,
    base_hash: str | None = None,
    the_plan: Plan | None = None,
) -> TrainOutcome:
    """Train ``config`` (a ``DreamBoothConfig`` or ``LoRAConfig``) and save the result at ``config.output``.

    ``components`` (``model_io.Components``) are trained in place; without them the base model named by the config is
    loaded. ``stop`` is polled every step; when it returns True the run saves a resumable state (if configured) and
    returns with ``state="stopped"``. ``base_hash`` is the base model's sha256 when the caller already knows it;
    ``the_plan`` a plan the caller already made for this config. This is the bare run: reuse of earlier results,
    output names and automatic resume belong to :class:`~trainers.train.session.Session`.
    """
    the_plan = the_plan or plan(config)
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


def make_accelerator(mixed_precision: str, device_type: str):
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
    return Accelerator(mixed_precision=mp, cpu=device_type == "cpu")


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
        self.step = self.resumed_at = 0
        self.t_start = time.perf_counter()
        self.optimizer = self.lr_scheduler = None
        self.latent_cache: dict[tuple[str, int, bool], Any] = {}
        self.text_cache: dict[str, Any] = {}
        self.offloaded: set[str] = set()  # frozen parts moved off the training device after caching
        self.hooks = hooks_for(self.cfg)
        self.extra_metadata: dict[str, str] = {}  # what hooks add to the result's metadata
        self.stopped_early: str | None = None  # why a hook ended training before ``steps``
        self.stop_agreed = False  # several processes: some process asked to stop (see ``stop_requested``)
        self.defer_numbers = False  # read a step's numbers during the next step (on a GPU: see ``settle``)
        self.pending: StepNumbers | None = None  # a finished step whose numbers are not read yet
        self.smoothed = _Smoother()

    # -- setup ---------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch

        from .optim import make_lr_scheduler, make_optimizer, resolve_optimizer

        cfg, c = self.cfg, self.c
        where = placement(cfg.device, compute_precision(cfg))
        self.accel = make_accelerator(where.precision, where.device_type)
        self.device = self.accel.device
        self.defer_numbers = self.device.type == "cuda"
        self.rank, self.world = self.accel.process_index, self.accel.num_processes
        if not self.accel.is_main_process:
            self.cb = Callbacks()  # progress, samples and status come from the main process only
        self.ctx = RunContext(self.device, where, resolve_optimizer(cfg, where.device_type), self.plan, time.time())
        _set_attention(c.unet, cfg.attention)
        self.shapes = shapes_of(c.unet, c.vae, c.text_encoder)  # for the planner's advice (before adapters)
        # anything outside our generators (adapter initialisation, dropout) is seeded too: the same on every process
        torch.manual_seed(mix_seed(cfg.seed, 0))
        self.groups = self.strategy.prepare(c, cfg, self.ctx)
        self.modules = self.strategy.trainable_modules(c)
        for name in ("unet", "vae", "text_encoder"):
            module = getattr(c, name)
            module.to(self.device)
            module.eval()
            if name != "unet" and name not in self.modules:  # frozen: the compute precision on a GPU, fp32 on the CPU
                cast_quietly(module, where.frozen_dtype)
        for module in self.modules.values():
            module.train()
            if cfg.master_weights == "bf16":
                cast_quietly(module, torch.bfloat16)  # trained in bf16 with stochastic rounding (``lowmem``)
        self.token_ids: dict[str, Any] = {}  # caption -> token ids on the training device
        self.base_prior = None
        if cfg.prior_preservation and cfg.prior == "base_model":
            from .base_prior import BasePrior

            self.base_prior = BasePrior.build(self)
        if cfg.gradient_checkpointing:
            if "unet" in self.modules:
                c.unet.enable_gradient_checkpointing()
            if "text_encoder" in self.modules:
                _te_checkpointing(c.text_encoder, True)
        self.optimizer = self.accel.prepare(make_optimizer(cfg, self.groups, where.device_type))
        # on the CPU, freed gradients go back to the system once a step when they are big enough to matter
        grad_bytes = sum(p.numel() * p.element_size() for g in self.groups for p in g["params"] if p.requires_grad)
        self.trim_heap = self.device.type == "cpu" and grad_bytes >= TRIM_GRADIENT_BYTES
        self.lr_scheduler = make_lr_scheduler(cfg, self.optimizer.optimizer)
        # Forward passes go through the data-parallel wrappers when there are several processes.
        self.unet_fwd = self.accel.prepare(c.unet) if self.world > 1 and "unet" in self.modules else c.unet
        self.te_training = "text_encoder" in self.modules
        self.te_fwd = self.accel.prepare(c.text_encoder) if self.world > 1 and self.te_training else c.text_encoder
        self.batches = BatchPlan(self.plan.instance, self.plan.classes, cfg.seed, cfg.random_flip, cfg.batch_size)
        self.masked = bool(cfg.masked_loss) and has_masks(self.plan.instance)
        if cfg.masked_loss and not self.masked:
            log.info("face-weighted loss: the dataset has no masks (*.mask.png), so the loss is not weighted")
        self.scaling = getattr(c.vae.config, "scaling_factor", 0.18215)
        self.num_timesteps = c.noise_scheduler.config.num_train_timesteps

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        import torch

        oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        try:
            self.setup()
            if self.plan.resume is not None:
                self.load_state(self.plan.resume)
            self.cache()
            for hook in self.hooks:
                hook.start(self)
            if not self.stop_requested(agree=True):
                self.train_steps()
            if self.step < self.cfg.steps and not self.stopped_early:
                return self.finish_stopped()
            return self.finish()
        except oom as e:
            self.release()
            advice = oom_advice(self.cfg, getattr(self.device, "type", "cuda"), getattr(self, "shapes", None))
            raise OutOfMemory(
                f"the GPU ran out of memory at step {self.step} (batch_size={self.cfg.batch_size}, "
                f"resolution={self.cfg.resolution}); memory was freed. {advice} Otherwise lower batch_size or "
                "resolution, turn on gradient_checkpointing, use optimizer=adamw8bit, set train_text_encoder=false "
                "or cache_latents=true"
            ) from e

    def train_steps(self) -> None:
        collector.resume()  # a command-line run paused the collector for its set-up (trainers/collector.py)
        cfg = self.cfg
        self.t_train = time.perf_counter()
        self.first_step = self.step
        self.smoothed = _Smoother()
        for value in self.losses:
            self.smoothed.add(value)
        while self.step < cfg.steps:
            if self.stop_requested():
                self.settle()
                self.cb.on_status(f"stop requested at step {self.step}")
                return
            self.update_text_encoder_phase()
            numbers = self.one_step()
            self.step += 1
            self.settle(numbers)
            last = self.step >= cfg.steps
            sample = bool(cfg.sample_every and self.step % cfg.sample_every == 0) and not last
            save = bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) and not last
            if last or sample or save or any(hook.reads_model(self) for hook in self.hooks):
                self.settle()  # the model is read or saved next: its steps are checked first (nothing diverged shown)
            if sample:
                self.make_samples()
            for hook in self.hooks:
                hook.after_step(self)
            if save:
                self.save_state()
            reasons = [r for r in (hook.stop_reason(self) for hook in self.hooks) if r]
            if reasons:
                self.settle()
                self.stopped_early = "; ".join(reasons)
                self.cb.on_status(f"training ends at step {self.step}: {self.stopped_early}")
                return
        self.settle()

    def one_step(self) -> StepNumbers:
        """One optimizer step over ``gradient_accumulation`` micro-batches. Returns the step's numbers (losses,
        gradient norm) still on the device: nothing here waits for the device (see :meth:`settle`)."""
        import torch

        cfg = self.cfg
        accum = cfg.gradient_accumulation
        sums = torch.zeros(3, device=self.device)  # total, subject, prior: summed on the device
        for micro in range(accum):
            latents, captions, masks, gens = self.batch(micro)
            if self.base_prior is not None:
                captions = captions + self.base_prior.captions(len(captions))
            with self.no_sync(micro == accum - 1), self.accel.autocast():
                hidden = self.encode_text(captions)
                noise, timesteps = draw_noise(latents, self.num_timesteps, gens, cfg.noise_offset)
                noisy, target = noisy_latents_and_target(self.c.noise_scheduler, latents, noise, timesteps)
                if self.base_prior is not None:
                    noisy, timesteps, target = self.base_prior.extend(noisy, timesteps, target)
                pred = self.unet_fwd(noisy, timesteps, hidden, return_dict=False)[0]
                weights = None
                if cfg.snr_gamma:
                    weights = min_snr_weights(self.c.noise_scheduler, timesteps, cfg.snr_gamma)
                parts = diffusion_loss(
                    pred, target, n_instance=cfg.batch_size, prior_weight=cfg.prior_loss_weight, weights=weights,
                    pixel_weights=self.pixel_weights(masks, pred),
                )  # fmt: skip
            self.accel.backward(parts.total / accum)
            sums += torch.stack([parts.total.detach(), parts.instance, parts.prior_or_zero()]).float() / accum
        norm = None
        if cfg.max_grad_norm:
            params = [p for g in self.groups for p in g["params"] if p.requires_grad]
            norm = self.accel.clip_grad_norm_(params, cfg.max_grad_norm)
        numbers = self.step_numbers(sums, norm)
        if not self.defer_numbers:
            self.check(numbers)  # read now: a non-finite step is never applied
        self.optimizer.step()
        self.lr_scheduler.step()
        numbers.lr = self.lr_scheduler.get_last_lr()[0]  # the report's lr, whenever the step is read
        self.optimizer.zero_grad(set_to_none=True)
        if self.trim_heap:
            release_freed_host_memory()
        return numbers

    def step_numbers(self, sums, norm) -> StepNumbers:
        """The step's numbers as one device tensor (with several processes averaged over them, this process's stop
        flag summed in last: the step's one reduction), its copy to the host started."""
        import torch

        values = torch.cat([sums, norm.detach().float().reshape(1).to(sums.device)]) if norm is not None else sums
        if self.world > 1:
            values = self.accel.reduce(torch.cat([values.float() / self.world, self.stop_flag()]), reduction="sum")
        return StepNumbers(self.step + 1, values, norm is not None)

    def settle(self, numbers: StepNumbers | None = None) -> None:
        """Record and report finished steps; where the training loop waits for the device. On the CPU a step's
        numbers were read and checked in :meth:`one_step`, before the optimizer applied the step. On a GPU
        (``defer_numbers``) ``settle(numbers)`` keeps them pending and takes the step before, so they are read while
        the next step runs and the GPU never waits for Python; a non-finite step then stops the run one step later,
        and the loop settles first whenever the model is sampled, evaluated or saved.
        ``settle()`` takes what is pending."""
        if numbers is not None and self.defer_numbers:
            numbers, self.pending = self.pending, numbers
        elif numbers is None:
            numbers, self.pending = self.pending, None
        if numbers is None:
            return
        total, inst, prior = self.check(numbers)
        if self.plan.classes is None and self.base_prior is None:
            prior = None
        self.losses.append(total)
        self.losses_instance.append(inst)
        if prior is not None:
            self.losses_prior.append(prior)
        self.report(numbers.step, numbers.lr, total, self.smoothed.add(total), inst, prior)

    def check(self, numbers: StepNumbers) -> list[float]:
        """A step's losses as floats (read once). A non-finite loss, or gradient norm without fp16 loss scaling
        (which skips such steps itself), stops the run: nothing is saved."""
        if numbers.losses is not None:
            return numbers.losses
        values = numbers.read()
        if self.world > 1:
            self.stop_agreed = self.stop_agreed or values[-1] > 0
            values = values[:-1]
        losses = values[:3]
        bad_norm = numbers.has_norm and self.accel.scaler is None and not math.isfinite(values[3])
        if not all(math.isfinite(x) for x in losses) or bad_norm:
            what = "the gradient norm" if all(math.isfinite(x) for x in losses) else "the loss"
            raise TrainingDiverged(
                f"{what} became {'NaN' if any(math.isnan(x) for x in values) else 'infinite'} at step "
                f"{numbers.step}: training diverged, so nothing was saved (resumable states written before stay). "
                f"Lower learning_rate (now {self.cfg.learning_rate:g}), keep max_grad_norm on, or use "
                "mixed_precision=fp32/bf16"
            )
        numbers.losses = losses
        return losses

    def batch(self, micro: int) -> tuple[Any, list[str], Any, list[Any]]:
        """Subject samples then class samples (the same count, the same bucket) for this step, micro-batch and
        process, the subject samples' soft masks (None without the face-weighted loss), and one random generator per
        sample: global sample ``k`` of a half gets the same image, flip and noise whatever the number of processes,
        micro-batches and batch size, so N processes train like one with N times the batch."""
        import torch

        cfg = self.cfg
        number = (self.step * cfg.gradient_accumulation + micro) * self.world + self.rank
        picks = self.batches(number)
        first = number * cfg.batch_size
        gens = [
            torch.Generator().manual_seed(
                mix_seed(cfg.seed, 3, 0 if kind == "instance" else 1, first + j % cfg.batch_size)
            )
            for j, (kind, _, _) in enumerate(picks)
        ]
        latents = [
            self.latents_of(kind, example, flip, g) for (kind, example, flip), g in zip(picks, gens, strict=True)
        ]
        captions = [example.caption for _, example, _ in picks]
        masks = pixel_masks(picks) if self.masked else None
        return torch.cat(latents).to(self.device), captions, masks, gens

    def no_sync(self, last_micro: bool):
        """No gradient all-reduce before the last micro-batch of a step (several processes only)."""
        stack = contextlib.ExitStack()
        if self.world > 1 and not last_micro:
            for module in {id(m): m for m in (self.unet_fwd, self.te_fwd) if m is not None}.values():
                if hasattr(module, "no_sync"):
                    stack.enter_context(module.no_sync())
        return stack

    def stop_requested(self, agree: bool = False) -> bool:
        """The stop flag. Several processes stop at the same step: each step's one reduction carries every
        process's flag (:meth:`step_numbers`, read in :meth:`check`), and ``agree`` asks all of them now (outside
        the hot loop)."""
        if self.world == 1:
            return bool(self.stop())
        if agree:
            self.stop_agreed = self.stop_agreed or self.accel.reduce(self.stop_flag(), reduction="sum").tolist()[0] > 0
        return self.stop_agreed

    def stop_flag(self):
        """This process's stop flag as a one-value tensor on the device (copied without a wait: a plain
        ``torch.tensor(..., device=cuda)`` waits for the GPU)."""
        import torch

        return to_device(torch.tensor([float(bool(self.stop()))]), self.device)

    def pixel_weights(self, masks, pred):
        """Per-pixel loss weights for the whole batch from the subject masks (1 for every class sample), or None."""
        import torch

        if masks is None:
            return None
        subject = mask_weights(masks, tuple(pred.shape[-2:]), self.cfg.mask_floor)
        rest = torch.ones((pred.shape[0] - subject.shape[0], *subject.shape[1:]), dtype=subject.dtype)
        return to_device(torch.cat([subject, rest]), pred.device)

    # -- VAE and text encoder ------------------------------------------------------------------------------------

    def latents_of(self, kind: str, example, flip: bool, gen):
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
        return (mean + std * to_device(noise, mean.device)) * self.scaling

    def encode_image(self, example, flip: bool):
        import torch

        vae = self.c.vae
        pixels = to_tensor(example, flip).unsqueeze(0).to(self.device, next(vae.parameters()).dtype)
        with torch.no_grad():  # in the VAE's own precision (autocast to bf16 would crawl on a CPU)
            return vae.encode(pixels).latent_dist.parameters.float()

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
        """Token ids of the captions on the device (each caption tokenized and copied once per run)."""
        import torch

        tok = self.c.tokenizer
        for caption in set(captions) - set(self.token_ids):
            ids = tok([caption], padding="max_length", max_length=tok.model_max_length, truncation=True)
            self.token_ids[caption] = to_device(torch.tensor(ids.input_ids), self.device)
        return torch.cat([self.token_ids[c] for c in captions])

    def cache(self) -> None:
        """Encode every image (both orientations when flipping) and, while the text encoder is frozen, every caption
        once, before the first step; then the VAE (and the frozen text encoder) leave the training device."""
        if self.cfg.cache_latents:
            jobs = [
                (kind, example, flip)
                for kind, example in self.batches.unique()
                for flip in ((False, True) if self.cfg.random_flip else (False,))
            ]
            self.cb.on_status(f"caching {len(jobs)} VAE latents")
            for i, (kind, example, flip) in enumerate(jobs):
                if self.world == 1 and self.stop():
                    return
                self.latent_cache[(kind, id(example), flip)] = self.encode_image(example, flip)
                if i % 8 == 0 or i == len(jobs) - 1:
                    self.cb.on_progress(self.phase_info("caching"))
            self.offload("vae")
        if not self.te_training and self.cfg.cache_text_embeddings:
            captions = {ex.caption for _, ex in self.batches.unique()}
            if self.base_prior is not None:
                captions.add(self.cfg.class_prompt)
            self.encode_text(sorted(captions))
            self.offload("text_encoder")

    def offload(self, part: str) -> None:
        """Move a frozen part off the training device (it comes back for samples)."""
        getattr(self.c, part).to(OFFLOAD_DEVICE)
        self.offloaded.add(part)

    @contextlib.contextmanager
    def parts_on_device(self):
        """The offloaded parts back on the training device for a while (samples need the whole model)."""
        for part in self.offloaded:
            getattr(self.c, part).to(self.device)
        try:
            yield
        finally:
            for part in self.offloaded:
                getattr(self.c, part).to(OFFLOAD_DEVICE)

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

    def report(self, step: int, lr: float, loss: float, smoothed: float, inst: float, prior: float | None) -> None:
        now = time.perf_counter()
        rate = (step - self.first_step) / max(now - self.t_train, 1e-9)
        info = ProgressInfo(
            step=step,
            total=self.cfg.steps,
            phase="training",
            loss=loss,
            loss_smoothed=smoothed,
            lr=lr,
            elapsed=now - self.t_start,
            eta=(self.cfg.steps - step) / rate if rate > 0 else None,
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
        for module in self.modules.values():
            module.eval()
        width, height = self.batches.buckets[0]
        with self.parts_on_device(), sampling_weights(self):
            self.samples = sample_images(
                self.c, prompts, self.cfg, stop=self.stop, autocast=self.accel.autocast, size=(width, height)
            )
        for module in self.modules.values():
            module.train()
        if not self.te_training:
            self.c.text_encoder.eval()
        if self.samples:
            self.cb.on_sample(self.step, self.samples, prompts[: len(self.samples)])

    # -- finishing -----------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        return {
            **self.extra_metadata,
            "likeness.kind": self.strategy.name,
            "likeness.version": __version__,
            "likeness.steps": str(self.step),
            "likeness.base_model_sha256": self.base_hash,
            "likeness.dataset_sha256": self.plan.dataset_hash,
            "likeness.config": json.dumps(metadata_config(self.cfg), sort_keys=True, default=str),
        }

    def finish(self) -> TrainOutcome:
        self.accel.wait_for_everyone()
        path = None
        for hook in self.hooks:
            hook.before_save(self)
        meta = self.metadata()
        if self.accel.is_main_process:
            self.cb.on_progress(self.phase_info("saving"))
            self.cb.on_status(f"saving {self.plan.output}")
            self.ctx.step = self.step
            path = self.save_result(meta)
        if self.cfg.sample_at_end and not self.stop():
            self.make_samples()
        return self.outcome("finished", path, meta)

    def save_result(self, meta: dict[str, str]) -> Path:
        """Write the result. A file that appeared at the output path meanwhile is never replaced: the result goes
        beside it under a free name. When the file system refuses the write (full, read-only), the trained weights
        are kept as a resumable state at the final step, so running again saves without training again."""
        output = self.plan.output
        try:
            return Path(self.strategy.save_result(self.c, output, meta, self.cfg, self.ctx))
        except (FileExistsError, OutputExists):
            other = free_output_path(output.parent, output.stem)
            self.cb.on_status(f"{output} appeared while training; saving the result as {other.name} instead")
            return Path(self.strategy.save_result(self.c, other, meta, self.cfg, self.ctx))
        except OSError as e:
            raise self.save_failed(output, e) from None

    def save_failed(self, output: Path, error: OSError) -> SaveFailed:
        import shutil

        need = _result_bytes(self.strategy, self.c, self.cfg)
        try:
            free = shutil.disk_usage(output.parent).free
        except OSError:
            free = -1
        why = f"could not save {output} ({error.strerror or error}); "
        space = f"{_mb(free)} free there, the result needs about {_mb(need)}" if free >= 0 else f"it needs {_mb(need)}"
        state = self.last_state if self.last_state is not None and self.resumed_at == self.step else self.save_state()
        if state is not None:
            return SaveFailed(
                f"{why}{space}. The trained weights are kept as a resumable state in {state}: free space (or fix the "
                "folder's permissions) and run the same training again: it saves without training again"
            )
        return SaveFailed(
            f"{why}{space}, and no resumable state could be written in {self.plan.state_dir} either: the trained "
            f"weights are lost. Free at least {_mb(need)} in {output.parent} before training again"
        )

    def finish_stopped(self) -> TrainOutcome:
        if self.cfg.save_state_on_stop and self.step > 0 and self.step > self.resumed_at:
            self.save_state()
        self.cb.on_status(f"stopped at step {self.step} of {self.cfg.steps}")
        return self.outcome("stopped", None, self.metadata())

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
        self.token_ids = {}
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
        """Write ``state_dir/step-NNNNNN/`` (atomically), keep the last K. A failed save (a full disk, say) is reported
        and training goes on: the states written before stay."""
        import torch

        self.accel.wait_for_everyone()
        if not self.accel.is_main_process:
            return None
        self.cb.on_status(f"saving resumable state at step {self.step}")
        root = self.plan.state_dir
        tensors = {
            k: v.detach().to("cpu").contiguous() for k, v in self.strategy.state_dict_for_checkpoint(self.c).items()
        }
        extra = {
            "optimizer": self.optimizer.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if self.accel.scaler is not None:
            extra["scaler"] = self.accel.scaler.state_dict()
        if torch.cuda.is_available():
            extra["rng_cuda"] = torch.cuda.get_rng_state_all()
        info = {
            "likeness_version": __version__,
            "kind": self.strategy.name,
            "te_training": self.te_training,
            "weights_hash": weights_hash(self.cfg),
            "dataset_hash": self.plan.dataset_hash,
            "losses": self.losses,
            "losses_instance": self.losses_instance,
            "losses_prior": self.losses_prior,
            "config": metadata_config(self.cfg),
            "hooks": {hook.name: hook.state() for hook in self.hooks},
        }
        hook_tensors = {
            f"{hook.name}.{k}": v.detach().to("cpu").contiguous()
            for hook in self.hooks
            for k, v in hook.tensors().items()
        }
        try:
            final = write_state(root, self.step, tensors, extra, info, hook_tensors)
        except OSError as e:
            clean_partials(root)
            self.cb.on_status(
                f"could not save a resumable state at step {self.step} in {root} ({e.strerror or e}); "
                "training goes on, the earlier states are kept"
            )
            log.warning("resumable state at step %d not saved in %s: %s", self.step, root, e)
            return None
        prune_states(root, self.cfg.keep_checkpoints)
        self.last_state = final
        return final

    def load_state(self, path: Path) -> None:
        import torch

        info = read_info(path)
        check_compatible(
            info,
            path,
            kind=self.strategy.name,
            weights=weights_hash(self.cfg),
            dataset=self.plan.dataset_hash,
            steps=self.cfg.steps,
        )
        saved = read_state(path, info)
        self.strategy.load_state_dict_for_resume(self.c, saved.tensors)
        self.step = self.resumed_at = saved.step
        self.update_text_encoder_phase()
        self.optimizer.optimizer.load_state_dict(saved.extra["optimizer"])
        self.lr_scheduler.load_state_dict(saved.extra["lr_scheduler"])
        if "scaler" in saved.extra and self.accel.scaler is not None:
            self.accel.scaler.load_state_dict(saved.extra["scaler"])
        torch.set_rng_state(saved.extra["rng_cpu"])
        if "rng_cuda" in saved.extra and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved.extra["rng_cuda"])
        self.losses = list(info.get("losses", []))
        self.losses_instance = list(info.get("losses_instance", []))
        self.losses_prior = list(info.get("losses_prior", []))
        for hook in self.hooks:
            prefix = f"{hook.name}."
            mine = {k[len(prefix) :]: v for k, v in saved.hook_tensors.items() if k.startswith(prefix)}
            hook.load((info.get("hooks") or {}).get(hook.name, {}), mine)
        self.last_state = path
        self.cb.on_status(f"resumed from {path} at step {self.step}")


# ---------------------------------------------------------------------------------------------------------------
# helpers


class StepNumbers:
    """One optimizer step's numbers while they are on the device: total, subject and prior loss, the gradient norm
    (when clipped) and, with several processes, the summed stop flag. From a GPU they are copied to pinned host
    memory without waiting; :meth:`read` waits for that copy alone."""

    def __init__(self, step: int, values, has_norm: bool):
        import torch

        self.step, self.has_norm = step, has_norm
        self.losses: list[float] | None = None  # total, subject, prior once read and checked (``Trainer.check``)
        self.lr = 0.0  # the learning rate after the step (set by ``Trainer.one_step``)
        self.event = None
        if values.device.type == "cuda":
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.values = values

    def read(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.values.tolist()


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


def _result_bytes(strategy, components, cfg) -> int:
    """About how many bytes the result file takes (the strategy's own estimate, else its trained tensors)."""
    estimate = getattr(strategy, "result_bytes", None)
    if callable(estimate):
        return int(estimate(components, cfg))
    return sum(t.numel() * t.element_size() for t in strategy.state_dict_for_checkpoint(components).values())


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 10e6 else f"{n / 1e6:.1f} MB"


def sample_prompts(cfg) -> list[str]:
    return list(cfg.sample_prompts) or [cfg.instance_prompt]


def sample_images(components, prompts: list[str], cfg, *, stop=None, autocast=None, size=None) -> list:
    """One image per prompt from the current weights: DDIM, a fixed seed per prompt, no safety checker (PIL), at
    ``size`` (width, height; default: the resolution squared)."""
    from ..sampling import Abandoned, encode_prompt, make_pipeline, render

    pipe = make_pipeline(components, "ddim")
    images: list = []
    for i, prompt in enumerate(prompts):
        if stop is not None and stop():
            break
        with autocast() if autocast else contextlib.nullcontext():
            embeds = encode_prompt(pipe, prompt, "", cfg.sample_guidance)
            try:
                images += render(
                    pipe,
                    embeds,
                    [mix_seed(cfg.sample_seed, i)],
                    height=size[1] if size else cfg.resolution,
                    width=size[0] if size else cfg.resolution,
                    steps=cfg.sample_steps,
                    guidance=cfg.sample_guidance,
                    stop=stop,
                )
            except Abandoned:
                break
    return images


def loss_quarters(losses: list[float]) -> tuple[float, float]:
    """Mean of the first and the last quarter of a loss curve (a trend check that tolerates noise)."""
    q = max(1, len(losses) // 4)
    return sum(losses[:q]) / q, sum(losses[-q:]) / q
