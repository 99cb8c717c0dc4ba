"""Training configs: JSON files read strictly (an unknown key is an error that names it).

`openhart train tokenizer --config tok.json` reads a `TokenizerTrainConfig`,
`openhart train transformer --config tf.json` a `TransformerTrainConfig`. Every field has a
default except the output folder, the data and the step count; `configs/` holds examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..config import SamplingConfig, config_from_dict, invalid
from ..inputs import InputError, parse_json, read_json

PRECISIONS = ("fp32", "bf16", "auto")
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where a run writes, how long it runs, and how.

    Args:
        output_dir: run folder: checkpoints, metrics.jsonl, samples/ and the exported model.
        steps: optimizer steps in total.
        batch_size: global batch of one forward and backward pass (split evenly across
            processes).
        grad_accum: forward and backward passes per optimizer step (gradient accumulation):
            each step learns from batch_size * grad_accum examples.
        seed: seeds the weights, the data order and every random draw of training.
        precision: "fp32", "bf16" autocast (weights and optimizer states stay fp32), or "auto":
            bf16 autocast where the device multiplies bf16 natively (CPUs with AMX or
            AVX512-BF16, CUDA GPUs with bf16), fp32 elsewhere.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "mps".
        parallel: with several processes (torchrun), "ddp" (replicated weights) or "fsdp"
            (sharded weights, gradients and optimizer states).
        log_every: steps between lines of metrics.jsonl.
        checkpoint_every: steps between checkpoints (and one at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        sample_every: steps between sample images (0: none).
        sample_at: further steps at which to write sample images.
        tensorboard: also write TensorBoard events (needs the `tensorboard` package).
        prefetch_batches: batches prepared ahead by a background thread (0: none).
        compile: torch.compile the training module (the first steps compile, for minutes on a
            small CPU; then 10-20% faster steps on the AVX2 EPYC, docs/training.md).
    """

    output_dir: str
    steps: int
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    precision: str = "fp32"
    device: str = "auto"
    parallel: str = "ddp"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0
    sample_at: tuple[int, ...] = ()
    tensorboard: bool = False
    prefetch_batches: int = 2
    compile: bool = False

    def __post_init__(self) -> None:
        name = "run config"
        if not self.output_dir:
            invalid(name, "output_dir is required")
        for key in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                invalid(name, f"{key} must be >= 1, got {getattr(self, key)}")
        if self.prefetch_batches < 0:
            invalid(name, f"prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if self.sample_every < 0:
            invalid(name, f"sample_every must be >= 0 (0 = no samples), got {self.sample_every}")
        if self.precision not in PRECISIONS:
            invalid(name, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.parallel not in PARALLEL_MODES:
            invalid(name, f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            invalid(name, f"device must be auto, cpu, cuda or mps, got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, gradient clipping and EMA weights.

    Args:
        lr: peak learning rate.
        weight_decay: decoupled weight decay of matrices and convs (none on biases and norms).
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 to `lr`.
        min_lr_ratio: the cosine ends at lr * min_lr_ratio.
        grad_clip: clip the global gradient norm to this (0: no clipping).
        ema_decay: decay of the EMA weights (0: no EMA).
    """

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        name = "optim config"
        if not self.lr > 0:
            invalid(name, f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            invalid(name, f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            invalid(name, "warmup_steps, weight_decay and grad_clip must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            invalid(name, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.ema_decay < 1:
            invalid(name, f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Images with captions: a folder (`metadata.jsonl` or `.txt` sidecars) or tar shards.

    Args:
        path: an image-caption folder, or a folder of `.tar` shards, or one `.tar` file.
        resolution: square training resolution (the short side is resized, then cropped).
        random_crop: random instead of center crops.
    """

    path: str
    resolution: int
    random_crop: bool = False

    def __post_init__(self) -> None:
        if not self.path:
            invalid("data config", "path is required (an image folder or tar shards)")
        if self.resolution < 1:
            invalid("data config", f"resolution must be >= 1, got {self.resolution}")


@dataclass(frozen=True, kw_only=True)
class TokenizerLossConfig:
    """Losses of tokenizer training (HART paper 3.1).

    Args:
        l1, l2: weights of the pixel L1 and L2 (MSE) reconstruction terms.
        vq: weight of the VQ loss (codebook + commitment_beta * commitment, mean over scales).
        discrete_prob: probability that a step decodes the discrete-only latent instead of the
            continuous one (HART's alternating training; 0.5 in the paper).
        gan: weight of the PatchGAN adversarial (hinge) loss; 0 disables the discriminator.
        gan_start_step: the adversarial loss and the discriminator start at this step.
        perceptual: weight of the perceptual loss; needs `perceptual_weights`.
        perceptual_weights: a local TorchScript feature network (image in [-1, 1] -> a list of
            feature maps) for the perceptual loss; never downloaded.
        restart_dead_codes_every: every this many steps, codes no step used since the last
            restart move onto vectors the quantizer looked up (0: never).
    """

    l1: float = 0.0
    l2: float = 1.0
    vq: float = 1.0
    discrete_prob: float = 0.5
    gan: float = 0.0
    gan_start_step: int = 0
    perceptual: float = 0.0
    perceptual_weights: str | None = None
    restart_dead_codes_every: int = 0

    def __post_init__(self) -> None:
        name = "tokenizer loss config"
        if self.restart_dead_codes_every < 0:
            invalid(name, "restart_dead_codes_every must be >= 0 (0 = never)")
        for key in ("l1", "l2", "vq", "gan", "perceptual"):
            if getattr(self, key) < 0:
                invalid(name, f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.discrete_prob <= 1:
            invalid(name, f"discrete_prob must be in [0, 1], got {self.discrete_prob}")
        if self.gan_start_step < 0:
            invalid(name, "gan_start_step must be >= 0")
        if self.perceptual > 0 and not self.perceptual_weights:
            invalid(name, "perceptual > 0 needs perceptual_weights: the path of a local "
                  "TorchScript feature network (nothing is downloaded); or set perceptual to 0")


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainConfig:
    """`openhart train tokenizer`.

    Args:
        model: a tokenizer preset ("tiny", "small", "hart-1024") or a `TokenizerConfig` object.
        init_from: a tokenizer folder to start from (fine-tuning).
        train: "all", or "decoder": train only the decoder and post_quant_conv, as HART
            fine-tuned VAR's tokenizer (needs `init_from`).
        eval_images: fixed images (the first of the dataset) reconstructed at each sample step.
    """

    run: RunConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    losses: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    model: Any = "tiny"
    init_from: str | None = None
    train: str = "all"
    eval_images: int = 4

    def __post_init__(self) -> None:
        if self.train not in ("all", "decoder"):
            invalid("tokenizer train config", f"train must be 'all' or 'decoder', got {self.train!r}")
        if self.train == "decoder" and not self.init_from:
            invalid("tokenizer train config", "train='decoder' fine-tunes an existing tokenizer: "
                  "set init_from to its folder")
        if self.eval_images < 1:
            invalid("tokenizer train config", "eval_images must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TransformerLossConfig:
    """Losses of transformer + diffusion-head training (HART paper 3.2-3.3).

    Args:
        ce: weight of the teacher-forced cross-entropy over all scales.
        diffusion: weight of the residual diffusion loss.
        cond_drop_rate: fraction of examples trained without their text (for guidance).
        diffusion_batch_mul: each residual token is trained with this many (t, noise) draws.
        mask_rate_min, mask_rate_max, mask_rate_std: per step, a fraction of the last scale's
            tokens is dropped from the sequence, drawn from a normal with mean `mask_rate_max`
            truncated to [min, max] (HART: 0.5, 1.0, 0.25); min = max = 0 keeps every token.
        min_kept_tokens: at least this many last-scale tokens are kept.
        diffusion_code: which last-scale code conditions the head and is subtracted from its
            target: "sampled" from the model's logits (HART's recipe, as at inference) or
            "ground_truth".
        diffusion_top_k, diffusion_top_p: filtering of that draw (HART: 600, 0.96).
    """

    ce: float = 1.0
    diffusion: float = 1.0
    cond_drop_rate: float = 0.1
    diffusion_batch_mul: int = 4
    mask_rate_min: float = 0.5
    mask_rate_max: float = 1.0
    mask_rate_std: float = 0.25
    min_kept_tokens: int = 32
    diffusion_code: str = "sampled"
    diffusion_top_k: int = 600
    diffusion_top_p: float = 0.96

    def __post_init__(self) -> None:
        name = "transformer loss config"
        if self.ce < 0 or self.diffusion < 0 or self.ce + self.diffusion == 0:
            invalid(name, "ce and diffusion must be >= 0 and not both 0")
        if not 0 <= self.cond_drop_rate <= 1:
            invalid(name, f"cond_drop_rate must be in [0, 1], got {self.cond_drop_rate}")
        if self.diffusion_batch_mul < 1 or self.min_kept_tokens < 1:
            invalid(name, "diffusion_batch_mul and min_kept_tokens must be >= 1")
        if not 0 <= self.mask_rate_min <= self.mask_rate_max < 1 + 1e-9:
            invalid(name, "need 0 <= mask_rate_min <= mask_rate_max <= 1")
        if self.mask_rate_std <= 0:
            invalid(name, "mask_rate_std must be > 0")
        if self.diffusion_code not in ("sampled", "ground_truth"):
            invalid(name, f"diffusion_code must be 'sampled' or 'ground_truth', got {self.diffusion_code!r}")
        if self.diffusion_top_k < 0 or not 0 <= self.diffusion_top_p < 1:
            invalid(name, "diffusion_top_k must be >= 0 and diffusion_top_p in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Sample images written during training (fixed prompts, fixed seed).

    Args:
        prompts: the prompts of the sample grid (drawn with the run's `sampling` settings).
        seed: seed of the sampler.
        accuracy_examples: at each sample step, the teacher-forced code accuracy of the EMA
            weights is measured on this many training examples (a fixed, seeded subset) and on
            as many of `heldout_cache` (0: not measured).
    """

    prompts: tuple[str, ...] = ("a red apple", "a smiling face")
    seed: int = 0
    accuracy_examples: int = 256

    def __post_init__(self) -> None:
        if self.accuracy_examples < 0:
            invalid("samples config", f"accuracy_examples must be >= 0, got {self.accuracy_examples}")


@dataclass(frozen=True, kw_only=True)
class TransformerTrainConfig:
    """`openhart train transformer`.

    Args:
        cache: a folder written by `openhart cache` (codes, residuals, text features). Its
            resolution decides the scales trained (a prefix of the model's for a lower
            resolution: progressive training).
        model: "tiny", "0.7b", or an object {"transformer": {...}, "head": {...}} of
            `TransformerConfig` / `DiffusionHeadConfig` fields; the fields fixed by the tokenizer
            and the text encoder (scales, vocabulary, latent and text widths) come from the cache.
        init_from: start from these weights (a training checkpoint or a model folder), e.g. the
            lower-resolution stage of progressive training; optimizer and step start afresh.
        checkpointing: activation checkpointing of the transformer blocks.
        sampling: the sampling settings recorded in the exported model folder as its
            recommended defaults, and used for the sample images: `SamplingConfig` fields
            (guidance `guidance_scale`, `top_k`, `top_p`, `head_temperature`, ...). Fields not given
            take `SamplingConfig`'s defaults, except `last_scale`, which is "consistent" for the
            models openhart trains.
        heldout_cache: a latent cache of held-out images (`openhart cache` of another folder,
            same tokenizer and text encoder): its teacher-forced accuracy is logged at each
            sample step.
    """

    run: RunConfig
    cache: str
    optim: OptimConfig = field(default_factory=OptimConfig)
    losses: TransformerLossConfig = field(default_factory=TransformerLossConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    model: Any = "tiny"
    init_from: str | None = None
    checkpointing: bool = False
    sampling: dict = field(default_factory=dict)
    heldout_cache: str | None = None

    def __post_init__(self) -> None:
        if not self.cache:
            invalid("transformer train config", "cache is required (a folder from `openhart cache`)")
        try:
            self.recommended_sampling()
        except ValueError as error:
            invalid("transformer train config", f"sampling: {error}")

    def recommended_sampling(self) -> SamplingConfig:
        """The `sampling` section as a `SamplingConfig` (last scale "consistent" unless given)."""
        if not isinstance(self.sampling, dict):
            raise ValueError(f"must be an object of SamplingConfig fields, got {self.sampling!r}")
        return config_from_dict(SamplingConfig, {"last_scale": "consistent", **self.sampling})


C = TypeVar("C")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set `section.key=value` items (JSON values, else strings) in a config dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        try:
            value = parse_json(raw, f"--set {key}")
        except InputError as error:
            if "nested deeper" in str(error):
                raise
            value = raw  # a bare string
        target = data
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: {part} is {target!r}, not a section of keys")
        target[last] = value
    return data


def load_train_config(cls: type[C], path: str | os.PathLike, overrides: list[str] | None = None) -> C:
    """Read a training config from a JSON file, with `section.key=value` overrides (JSON values)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    data = read_json(path, "training config")
    apply_overrides(data, overrides or [])
    try:
        return config_from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error

