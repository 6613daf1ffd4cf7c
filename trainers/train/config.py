"""Training configs: one shared base (data, loop, optimizer, sampling, checkpoints) and ``DreamBoothConfig``.

Every option is declared once with :func:`~trainers.configspec.opt`; the CLI flags, the ComfyUI node inputs and
their tooltips come from here. No torch at import time.

Face defaults (DreamBooth, full UNet + text encoder) and where they come from:

- learning rate ``2e-6`` with a constant schedule: the DreamBooth paper (Ruiz et al. 2023, arXiv:2208.12242, sec. 4)
  fine-tunes Imagen/SD at ~5e-6; the diffusers DreamBooth guide and the Hugging Face "Training Stable Diffusion with
  DreamBooth" study (huggingface.co/blog/dreambooth, 2022) found faces need a *lower* lr than objects: 2e-6 for
  ~1200 steps at batch 1 (5e-6 over-fits faces quickly);
- ``1000`` steps at batch 1 (the blog: 800-1200 for faces);
- prior preservation weight ``1.0`` and ~200 class images (paper sec. 3.3 uses λ=1 and ~1000 samples per class for
  Imagen; the diffusers example defaults to ``prior_loss_weight=1.0`` and ``num_class_images=100``, the blog used
  200-300 for faces);
- text encoder trained (the blog: "fine-tuning the text encoder gives the best results, especially on faces"),
  optionally stopped after a part of the run to save memory/avoid over-fitting;
- 8-bit Adam, gradient checkpointing and fp16/bf16 to fit smaller GPUs (the figures, with their source, are in the
  README's "GPU memory" section: stated once).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..configspec import opt
from ..errors import ConfigError

DEFAULT_INSTANCE_PROMPT = "a photo of sks woman face"
DEFAULT_CLASS_PROMPT = "a photo of woman face"  # the class images' prompt too: one default everywhere
DEFAULT_EVAL_PROMPTS = ("{instance}", "{instance}, in a park", "{instance}, at night, neon light")
EVAL_EVERY_HELP = (
    "Measure likeness every N steps and at the end (0 = never; a run shorter than N steps is not measured): probe "
    "images from fixed seeds, scored by face identity against the subject photos (needs dlib: pip install dlib-bin "
    "face_recognition_models)."
)
PRIOR_MODES = ("class_images", "base_model")

PATH_OPTIONS = (
    "base_model",
    "vae_path",
    "tokenizer",
    "instance_data",
    "class_data",
    "output",
    "state_dir",
    "resume_from",
    "continue_from",  # LoRA: the file a run continues (its content hash is in the weights hash)
    "validation_folder",
)
"""Options that are locations, not training choices: left out of saved metadata and content hashes."""

RUN_OPTIONS = PATH_OPTIONS + ("overwrite", "device", "checkpoint_every", "keep_checkpoints", "save_state_on_stop")
RUN_OPTIONS += ("ema_on_cpu", "validation_every", "fit_memory")
"""Options that do not change the trained weights (a resumed run may change them)."""

SAMPLE_OPTIONS = ("sample_every", "sample_prompts", "sample_at_end", "sample_seed", "sample_steps", "sample_guidance")
WEIGHTLESS_OPTIONS = RUN_OPTIONS + SAMPLE_OPTIONS
"""Options left out of a result's content key: the same weights whatever their values."""


@dataclass
class TrainConfig:
    """Options shared by every training method (DreamBooth, LoRA): data, loop, optimizer, sampling, checkpoints."""

    # --- model and data (the ComfyUI node fills these from its inputs) ---
    base_model: str = opt("", "SD1.5 base model: a .safetensors/.ckpt file or a diffusers folder.", node=False)
    vae_path: str | None = opt(None, "Optional separate VAE file to load with the base model.", node=False)
    tokenizer: str | None = opt(
        None,
        "CLIP tokenizer folder (vocab.json + merges.txt), needed for a single-file base model "
        "(e.g. ComfyUI's comfy/sd1_tokenizer).",
        node=False,
    )
    instance_data: str = opt(
        "",
        "Folder with photos of the subject. A '<caption>.txt' beside an image replaces the instance prompt for it; "
        "kohya-style sub-folders '<repeats>_<name>' repeat their images.",
        node=False,
    )
    instance_prompt: str = opt(DEFAULT_INSTANCE_PROMPT, "Prompt for the subject's photos (rare token + class).")
    class_data: str | None = opt(
        None, "Folder of class images for prior preservation (e.g. made by Generate Class Images).", node=False
    )
    class_prompt: str = opt(DEFAULT_CLASS_PROMPT, "Prompt for the class images (the class without the token).")
    prior_preservation: bool = opt(
        True,
        "Keep the model's idea of the class by training on class images in every step (needs class images).",
        node=False,
    )
    prior_loss_weight: float = opt(
        1.0, "Weight of the class (prior) loss next to the subject loss; 1.0 in the DreamBooth paper.", min=0.0
    )
    prior: str = opt(
        "class_images",
        "Where prior preservation's class target comes from: class_images (generated beforehand) or base_model (the "
        "frozen base model's own prediction for the class prompt on the same noisy latents: no class images to "
        "make. LoRA: one more forward pass per step with the adapters off. DreamBooth: a frozen copy of the UNet beside "
        "it, 1.7 GB in fp16; see the README's GPU memory section).",
        choices=PRIOR_MODES,
    )
    output: str = opt("", "Where to write the result (.safetensors).", node=False)
    overwrite: bool = opt(False, "Replace an existing output file (otherwise that is an error).", node=False)

    # --- loop ---
    steps: int = opt(1000, "Optimizer steps to train (800-1200 suits a face at batch 1).", min=1, max=1_000_000)
    resolution: int = opt(512, "Training image side in pixels (multiple of 8; SD1.5 was trained at 512).", min=32)
    batch_size: int = opt(1, "Subject images per step (prior preservation adds as many class images).", min=1)
    gradient_accumulation: int = opt(1, "Micro-batches summed into one optimizer step.", min=1, advanced=True)
    seed: int = opt(
        0, "Seed for data order, noise and timesteps: same seed + same data = same result.", min=0, widget="train_seed"
    )
    random_flip: bool = opt(
        False, "Mirror images at random (off for faces: parting and moles are one-sided).", advanced=True
    )
    buckets: bool = opt(
        True,
        "Aspect buckets: each image trains at its own aspect (3:4 portraits at 448x576 for resolution 512) with about "
        "resolution^2 pixels, a batch holding one bucket; off = every image is centre-cropped to a square.",
        advanced=True,
    )
    bucket_step: int = opt(
        64, "Bucket sides are multiples of this (64 for SD1.5: its UNet halves the latents 3 times).", min=8,
        max=256, step=8, advanced=True,
    )  # fmt: skip
    max_upscale: float = opt(
        2.0,
        "With buckets, an image is never enlarged more than this to fill its bucket: a smaller image gets a smaller "
        "bucket (the face crop warns above 2x).",
        min=1.0,
        max=8.0,
        advanced=True,
    )
    validation_images: int = opt(
        0, "Hold out this many photos (not trained on) for a validation loss curve (0 = none).", min=0, advanced=True
    )
    validation_folder: str | None = opt(
        None, "Or a folder of held-out photos for the validation loss (they stay out of training).", node=False,
        advanced=True,
    )  # fmt: skip
    validation_every: int = opt(
        100, "Compute the validation loss every N steps (at fixed timesteps and noise, so points compare).", min=1,
        advanced=True,
    )  # fmt: skip

    # --- optimizer ---
    learning_rate: float = opt(2e-6, "Learning rate (2e-6 for a full UNet on faces).", min=0.0, step=1e-7)
    text_encoder_lr: float = opt(
        0.0,
        "Learning rate for the text encoder (0 = same as learning_rate). Left at 0 on Training Options, each training "
        "node keeps its own default (LoRA: 5e-5).",
        min=0.0,
        step=1e-7,
        advanced=True,
    )
    lr_scheduler: str = opt(
        "constant",
        "Learning-rate schedule after the warm-up.",
        choices=("constant", "constant_with_warmup", "cosine"),
        advanced=True,
    )
    lr_warmup_steps: int = opt(0, "Steps over which the learning rate ramps up from 0.", min=0, advanced=True)
    optimizer: str = opt(
        "auto",
        "AdamW (fused on CUDA) or 8-bit AdamW (bitsandbytes, saves ~3/4 of optimizer memory); "
        "auto = 8-bit on CUDA when bitsandbytes is installed.",
        choices=("auto", "adamw", "adamw8bit"),
        advanced=True,
    )
    weight_decay: float = opt(1e-2, "AdamW weight decay.", min=0.0, advanced=True)
    adam_beta1: float = opt(0.9, "AdamW beta1.", min=0.0, max=1.0, advanced=True)
    adam_beta2: float = opt(0.999, "AdamW beta2.", min=0.0, max=1.0, advanced=True)
    adam_epsilon: float = opt(1e-8, "AdamW epsilon.", min=0.0, advanced=True)
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this (0 = no clipping).", min=0.0, advanced=True)

    # --- objective ---
    snr_gamma: float = opt(
        0.0, "Min-SNR-gamma loss weighting (5.0 is the paper's value, 0 = off; Hang et al. 2023).", min=0.0,
        advanced=True,
    )  # fmt: skip
    noise_offset: float = opt(
        0.0, "Offset noise strength (0.05-0.1 helps very dark/bright images, 0 = off).", min=0.0, advanced=True
    )
    masked_loss: bool = opt(
        True,
        "Face-weighted loss: weigh the loss by the soft face masks the face crop writes (*.mask.png), so training "
        "spends itself on the face; off by itself for a dataset without masks. Class images are never masked.",
        advanced=True,
    )
    mask_floor: float = opt(
        0.3, "Loss weight of the picture outside the face mask (1 = no weighting, 0 = face only).", min=0.0,
        max=1.0, advanced=True,
    )  # fmt: skip
    ema: bool = opt(False, "Keep an EMA of the trained weights; the result and the samples use it.", advanced=True)
    ema_decay: float = opt(
        0.995, "EMA decay per step (warm-up (1+n)/(10+n) below it; 0.995 = a half-life of ~140 steps).", min=0.0,
        max=1.0, step=0.0001, advanced=True,
    )  # fmt: skip
    ema_start_step: int = opt(0, "The EMA follows the weights exactly until this step.", min=0, advanced=True)
    ema_on_cpu: bool = opt(
        False, "Keep the EMA weights in CPU memory (saves VRAM: a full copy of what trains; slower).", advanced=True
    )

    # --- text encoder ---
    train_text_encoder: bool = opt(True, "Train the text encoder too (best for faces; costs memory).")
    text_encoder_steps: int = opt(
        0, "Stop training the text encoder after this many steps (0 = train it all the way).", min=0, advanced=True
    )

    # --- memory and speed ---
    mixed_precision: str = opt(
        "auto",
        "Compute precision: auto = bf16 on GPUs that have it, else fp16 on CUDA, fp32 on CPU.",
        choices=("auto", "fp32", "fp16", "bf16"),
        advanced=True,
    )
    gradient_checkpointing: bool = opt(
        True,
        "Recompute activations in the backward pass: SD1.5 at 512 px, batch 1, fp32 keeps 1.8 GB of activations "
        "without it, 0.5 GB with it (traced); it costs one more forward pass, about +33% of a step where the GPU/CPU "
        "is busy (computed; measured on a loaded 2-core CPU at 512 px: -3% and +15% in two runs; +43% on the tiny "
        "test model; see docs/benchmarks.md).",
        advanced=True,
    )
    attention: str = opt(
        "sdpa", "Attention kernel: PyTorch scaled-dot-product (fast, low memory) or the plain one.",
        choices=("sdpa", "plain"), advanced=True,
    )  # fmt: skip
    cache_latents: bool = opt(
        True, "Encode every image with the VAE once before training (faster; the VAE then leaves the GPU).",
        advanced=True,
    )  # fmt: skip
    fused_backward: bool = opt(
        False,
        "Apply each weight's optimizer step as soon as its gradient is complete and free the gradient: the "
        "gradients never all exist at once (SD1.5 UNet in fp32: -3.3 GB). Needs gradient_accumulation 1, "
        "max_grad_norm 0 (no global clipping) and one process.",
        advanced=True,
    )
    master_weights: str = opt(
        "fp32",
        "Precision of the trained weights (full fine-tuning): bf16 keeps weights, gradients and AdamW states in "
        "bf16 and applies updates with stochastic rounding (8 instead of 16 bytes per weight; computes in bf16).",
        choices=("fp32", "bf16"),
        advanced=True,
    )
    fit_memory: bool = opt(
        True,
        "Before training on a GPU, predict the peak memory; when it does not fit the free memory, turn on the "
        "cheapest savings that make it fit (checkpointing, smaller batches with accumulation, 8-bit AdamW, ...) "
        "and say what changed.",
        advanced=True,
    )
    cache_text_embeddings: bool = opt(
        True, "Encode each prompt once while the text encoder is not being trained.", advanced=True
    )
    device: str = opt(
        "auto", "Where to train: auto = CUDA when available.", choices=("auto", "cpu", "cuda"), node=False
    )

    # --- samples ---
    sample_every: int = opt(0, "Make sample images every N steps (0 = never, a last set is made at the end).", min=0)
    sample_prompts: list[str] = opt(
        [], "Prompts for the sample images, one per line (empty = the instance prompt).", advanced=True
    )
    sample_at_end: bool = opt(True, "Make a last set of sample images after saving.", advanced=True)
    sample_seed: int = opt(1234, "Seed of the sample images (fixed, so samples are comparable).", min=0, advanced=True)
    sample_steps: int = opt(25, "Denoising steps per sample image.", min=1, max=200, advanced=True)
    sample_guidance: float = opt(7.5, "Classifier-free guidance scale of the samples.", min=1.0, advanced=True)

    # --- checkpoints and resume ---
    state_dir: str | None = opt(
        None,
        "Folder under which resumable training states are kept, one sub-folder per run (named after the output and "
        "its content key); empty = the front end's own (CLI: ~/.cache/likeness/training_state).",
        node=False,
        advanced=True,
    )
    checkpoint_every: int = opt(0, "Save a resumable state every N steps (0 = never).", min=0, advanced=True)
    keep_checkpoints: int = opt(2, "Keep only the last K resumable states.", min=1, advanced=True)
    save_state_on_stop: bool = opt(True, "When stopped early, save a resumable state first.", advanced=True)
    resume_from: str | None = opt(
        None, "Resume from a state folder, or 'latest' (the newest in state_dir).", node=False, advanced=True
    )

    # --- likeness evaluation (train/evaluation.py; defaults and their cost: docs/benchmarks.md) ---
    eval_every: int = opt(250, EVAL_EVERY_HELP + " DreamBooth default 250, LoRA 500.", min=0, advanced=True)
    eval_prompts: list[str] = opt(
        list(DEFAULT_EVAL_PROMPTS),
        "Subject probe prompts, one per line; {instance} is the instance prompt (the class prompt is always probed "
        "too, for bleed).",
        advanced=True,
    )
    eval_images: int = opt(1, "Probe images per prompt at each evaluation (fixed seeds).", min=1, max=16, advanced=True)
    eval_steps: int = opt(15, "Denoising steps per probe image (DDIM).", min=1, max=200, advanced=True)
    keep_best: bool = opt(
        True,
        "Save the checkpoint with the best likeness (bleed under bleed_limit) instead of the last step.",
        advanced=True,
    )
    keep_last: bool = opt(
        False, "With keep_best: also save the last step as <name>_last when an earlier step was kept.", advanced=True
    )
    bleed_limit: float = opt(
        0.15,
        "Bleed limit for keep_best: how much closer to the subject the class prompt's probes may get than the base "
        "model's (similarity, 0-1).",
        min=0.0,
        max=1.0,
        advanced=True,
    )
    early_stop_patience: int = opt(
        0, "Stop when likeness has not improved for this many evaluations (0 = never stop early).", min=0,
        advanced=True,
    )  # fmt: skip

    def check(self) -> None:
        if self.resolution % 8:
            raise ConfigError(
                f"option 'resolution' is {self.resolution}; it must be a multiple of 8 (e.g. {self.resolution // 8 * 8})"
            )
        if self.prior_preservation and self.prior == "class_images" and not self.class_data:
            raise ConfigError(
                "prior preservation needs class images: set 'class_data' to a folder of class images "
                "(Generate Class Images makes them), set prior=base_model, or set prior_preservation=false"
            )
        if self.validation_images and self.validation_folder:
            raise ConfigError("give either 'validation_images' (held out from the photos) or 'validation_folder'")
        if not self.instance_prompt.strip():
            raise ConfigError("option 'instance_prompt' is empty; describe the subject, e.g. 'a photo of sks woman'")
        if self.prior_preservation and not self.class_prompt.strip():
            raise ConfigError("option 'class_prompt' is empty; describe the class, e.g. 'a photo of woman face'")
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "option 'optimizer' is adamw8bit but bitsandbytes is not installed: "
                "'pip install bitsandbytes' (CUDA only) or choose optimizer=adamw"
            )
        if self.eval_every and not any(p.strip() for p in self.eval_prompts):
            raise ConfigError("option 'eval_prompts' is empty; give at least one subject prompt, e.g. '{instance}'")
        from .memory import check_memory_options

        check_memory_options(self)
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ConfigError(
                "option 'lr_warmup_steps' has no effect with lr_scheduler=constant; "
                "choose constant_with_warmup or cosine"
            )


@dataclass
class DreamBoothConfig(TrainConfig):
    """DreamBooth: fine-tune the whole UNet (and the text encoder) and save one SD1.5 checkpoint."""

    save_dtype: str = opt(
        "fp16", "Weight type of the saved checkpoint (fp16 = 2 GB, loads everywhere).", choices=("fp16", "bf16", "fp32")
    )
    save_diffusers: bool = opt(
        False, "Also write a diffusers folder beside the .safetensors file.", advanced=True, node=False
    )

    kind = "dreambooth"

    def make_strategy(self):
        from .strategy import FullFineTune

        return FullFineTune()
