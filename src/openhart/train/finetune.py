"""`openhart finetune`: adapt a released or trained HART model to your own images.

    base = resolve_model(--model); load it (fp32)             any model `generate` takes
    cache = find_or_build(hash(base, data, resolution, encoder))
                                                               base tokenizer + text encoder, once
    free the text encoder and the tokenizer (the quantizer stays: it builds the inputs)
    train(FinetuneTask)                                        the transformer training loop:
        LoRA (peft) on the blocks' linears [and the head's], or every weight (--full)
    RUN/lora/ (an adapter) or RUN/model/ (a model folder), RUN/samples.png (base vs fine-tuned)

The run folder is an ordinary training run: it resumes exactly from its newest checkpoint when
the same command runs again, under torchrun too. Checkpoints hold only the trained weights; the
rest comes back from the base, whose fingerprint the run records and checks.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import HARTConfig, config_from_dict, config_to_dict
from ..data.latent_cache import EmptyDatasetError, LatentCache, build_latent_cache, collate
from ..data.mixture import CacheMixture
from ..default_model import default_model_dir
from ..device import default_dtype
from ..hart_model import HARTModel
from ..hub import RANDOM_TEXT_ENCODER, parse_hub_id, resolve_model, resolve_text_encoder
from ..images import image_grid, save_png, to_pil
from ..loading import load_model, recommended_sampling, save_model
from ..lora import AdapterRecord, LoraSettings, save_adapter
from ..lora import adapter as lora
from ..lora.files import read_adapter
from ..lora.fingerprint import fingerprint, weights_probe
from ..lora.stack import AdapterStack
from ..pipeline import prompt_encoder_loader
from ..sampling import generate
from ..serialization import CheckpointError, load_into, read_json, write_json
from ..text.encoder import SYSTEM_PROMPT_FILE, load_system_prompt
from .checkpoint import list_checkpoints
from .distributed import Distributed
from .finetune_cache import cache_key, data_fingerprint, default_cache_dir, encoder_identity, find_or_build
from .tokenizer_task import open_dataset
from .train_config import (OptimConfig, RunConfig, SampleConfig, TransformerLossConfig, TransformerTrainConfig,
                           apply_overrides)
from .trainer import CHECKPOINT_DIR, run_folder_lock, train
from .transformer_task import HARTTrainingModule, TransformerTask

logger = logging.getLogger(__name__)

# The name of the adapter while it trains (peft's default).
ADAPTER_NAME = "default"
# Captions of DATA drawn in RUN/samples.png (base against fine-tuned).
SHEET_CAPTIONS = 4
# A run folder's record of what it fine-tunes (beside run.json).
RUN_RECORD = "finetune.json"


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """What `openhart finetune` is asked; None means the default for the model's size
    (`default_hyperparameters`).

    Args:
        data: an image folder (metadata.jsonl or .txt captions) or .tar shards.
        out: the run folder.
        model: the base: a Hub id, a folder in either layout, or None (the shipped model).
        text_encoder: the base's text encoder unless given ("random": tests only).
        weights: official bases: "auto", "ema" or "raw".
        resolution: training resolution; its scales must be a prefix of the base's.
        lora: LoRA settings, or None for full fine-tuning.
        train_head: adapt the diffusion head too (LoRA on its linears, or its weights with full).
        trigger_words: words of the captions that name the new concept (recorded).
        sample_every: sample images every this many steps during training (0: only the final sheet).
        prior_data: images of what the model should keep drawing (its own training images, or images
            it generated), mixed into training so that prompts without the new concept keep their
            images (prior preservation, `data/mixture.py`); None: DATA alone.
        prior_fraction: the share of each epoch's examples drawn from `prior_data`.
        overrides: `section.key=value` settings of the underlying transformer training config
            (`--set losses.mask_rate_max=0`, `--set optim.warmup_steps=0`).
    """

    data: str
    out: str
    model: str | None = None
    text_encoder: str | None = None
    weights: str = "auto"
    resolution: int | None = None
    steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    train_head: bool | None = None
    precision: str = "auto"
    checkpointing: bool | None = None
    seed: int = 0
    trigger_words: tuple[str, ...] = ()
    cache_dir: str | None = None
    device: str = "auto"
    parallel: str = "ddp"
    ema_decay: float = 0.0
    sample_every: int = 0
    checkpoint_every: int | None = None
    log_every: int | None = None
    prior_data: str | None = None
    prior_fraction: float = 0.5
    overrides: tuple[str, ...] = ()


def default_hyperparameters(config: HARTConfig, examples: int, full: bool) -> dict:
    """Defaults for a model's size: batch 4 with activation checkpointing for widths of 1024
    and more (the 0.7B), 16 without below; LoRA learning rates of 2e-4 at width 1024, scaled by
    sqrt(1024 / width); full fine-tuning at 2e-5 * 1024 / width (at most 2e-4); about 20 epochs
    of DATA, between 200 and 2000 steps."""
    width = config.transformer.embed_dim
    large = width >= 1024
    batch = 4 if large else 16
    lr = min(2e-4, 2e-5 * 1024 / width) if full else 2e-4 * math.sqrt(1024 / width)
    steps = min(2000, max(200, math.ceil(20 * examples / batch)))
    return {"batch_size": batch, "lr": float(f"{lr:.2g}"), "steps": steps, "checkpointing": large}


@dataclass
class Base:
    """The base model of a fine-tune, loaded once: its networks (trained in place), its probe
    and where it came from."""

    name: str
    path: Path
    hub_id: str | None
    official: bool
    config: HARTConfig
    model: HARTModel
    probe: dict
    sampling: object
    text_encoder: str | None
    quantizer: nn.Module | None = None   # kept when the rest of the tokenizer is freed

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.probe)

    @property
    def spec(self) -> str | None:
        """The base as `resolve_model` takes it, recorded with the adapter: the Hub id (with its
        revision), the folder, or None for the model that ships with openhart."""
        if self.hub_id:
            return self.hub_id
        if self.path.resolve() == default_model_dir().resolve():
            return None
        return str(self.path.resolve())

    @property
    def display(self) -> str:
        return self.spec or f"the shipped model ({self.path.name})"


def load_base(options: FinetuneOptions) -> Base:
    source = resolve_model(options.model, weights=options.weights)
    model = load_model(source.path, weights=options.weights)  # fp32: the master weights
    return Base(name=source.name, path=source.path, hub_id=source.hub_id, official=source.official,
                config=model.config, model=model, probe=weights_probe(model),
                sampling=recommended_sampling(source.path), text_encoder=source.text_encoder)


class FinetuneTask(TransformerTask):
    """Transformer training that starts from a base model's weights and trains a LoRA adapter
    (peft) or every weight, on a latent cache made with the base's own tokenizer."""

    kind = "finetune"

    def __init__(self, config: TransformerTrainConfig, base: Base, options: FinetuneOptions,
                 data: CacheMixture | None = None):
        """`data`: DATA mixed with the prior (--prior-data); None: the config's cache alone."""
        self.config, self.base, self.options = config, base, options
        self.cache = LatentCache(config.cache)
        self.data = data
        self.patch_nums = self.cache.patch_nums
        self.model_config = base.config
        self.sampling = base.sampling
        # another cache of the same base's tokenizer and text encoder (e.g. of the images the
        # base was trained on), whose teacher-forced accuracy is logged at each sample step
        self.heldout = self._open_heldout_cache(config.heldout_cache) if config.heldout_cache else None
        self.export_name = "lora" if options.lora else "model"
        self._accuracy_sets = None
        self._prompts = None
        self._tokenizer = None
        self._module: HARTTrainingModule | None = None

    def build(self, device: torch.device) -> nn.Module:
        model = self.base.model
        module = HARTTrainingModule(model.transformer, model.head, self.base.quantizer.to(device),
                                    losses=self.config.losses, patch_nums=self.patch_nums,
                                    seed=self.config.run.seed, checkpointing=self.config.checkpointing)
        if self.options.lora is not None:
            lora.inject(module, self.options.lora.peft_config(base_model=self.base.spec), ADAPTER_NAME)
        else:
            module.requires_grad_(True)
            module.head.requires_grad_(bool(self.options.train_head))
        self._module = module
        return module.to(device)

    def dataset(self):
        return self.cache if self.data is None else self.data

    def saved_keys(self, model: nn.Module) -> set[str]:
        return {name for name, p in model.named_parameters() if p.requires_grad}

    def architecture(self) -> dict:
        return {"hart": config_to_dict(self.model_config), "base": self.base.fingerprint,
                "lora": None if self.options.lora is None else asdict(self.options.lora),
                "train_head": bool(self.options.train_head)}

    def extra_state(self, dist) -> dict:
        return {"text_encoder": self.cache.text_encoder, "sampling": config_to_dict(self.sampling),
                "base": {"model": self.base.spec, "fingerprint": self.base.fingerprint}}

    def frozen_state(self) -> dict[str, torch.Tensor]:
        return {}  # the base model holds what is not trained

    def tokenizer(self):
        """The tokenizer that made the cache (loaded when samples are drawn)."""
        if self._tokenizer is None:
            self._tokenizer = self.cache.load_tokenizer()
        return self._tokenizer

    @torch.no_grad()
    def write_samples(self, step: int, state: dict[str, torch.Tensor], folder: Path) -> dict[str, float]:
        module = self._module
        with trained_weights(module, state, self.saved_keys(module)) if self.options.lora else nullcontext():
            model = (HARTModel.from_parts(self.model_config, self.tokenizer(), module.transformer, module.head)
                     if self.options.lora else self.model_from(state))
            metrics = self._accuracy_metrics(model)
            features, positions, captions = sheet_prompts(self.cache, SHEET_CAPTIONS)
            out = generate(model, features, positions, self.sampling,
                           torch.Generator().manual_seed(self.config.samples.seed), patch_nums=self.patch_nums)
        folder.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(to_pil(out.images), columns=len(captions)), folder / f"step-{step:08d}.png",
                 {"prompts": " | ".join(captions)})
        module.train()
        return metrics

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> Path:
        if self.options.lora is not None:
            return save_adapter(folder, self.options.lora.peft_config(base_model=self.base.spec,
                                                                      revision=_revision(self.base.hub_id)),
                                lora.adapter_state(self._module, ADAPTER_NAME, state), self.adapter_record())

        saved = save_model(self.model_from(state), folder, text_encoder=self.cache.text_encoder,
                           sampling=self.sampling)
        prompt = self.base.path / SYSTEM_PROMPT_FILE
        if prompt.is_file():  # the base's Qwen2 system prompt made the cache's features
            shutil.copyfile(prompt, saved / SYSTEM_PROMPT_FILE)
        return saved

    def model_from(self, state: dict[str, torch.Tensor]) -> HARTModel:
        """A full fine-tune's model from the trainer's full weights (no copy on the CPU) and the
        cache's tokenizer."""
        with torch.device("meta"):
            model = HARTModel(self.model_config)
        tokenizer = {f"tokenizer.{k}": v for k, v in self.tokenizer().state_dict().items()}
        trained = {k: v for k, v in state.items() if k.startswith(("transformer.", "head."))}
        load_into(model, {**tokenizer, **trained}, "the fine-tuned weights")
        return model.eval()

    def adapter_record(self) -> AdapterRecord:
        settings, run = self.options.lora, self.config.run
        return AdapterRecord(
            base_model=self.base.spec, base_revision=_revision(self.base.hub_id), base_probe=self.base.probe,
            resolution=self.cache.resolution, patch_nums=list(self.patch_nums),
            trigger_words=list(self.options.trigger_words), sampling=config_to_dict(self.sampling),
            train={"rank": settings.rank, "alpha": settings.alpha or settings.rank, "dropout": settings.dropout,
                   "target_modules": settings.target_modules, "train_head": settings.train_head,
                   "steps": run.steps, "batch_size": run.batch_size, "grad_accum": run.grad_accum,
                   "lr": self.config.optim.lr, "seed": run.seed, "examples": len(self.cache),
                   "text_encoder": self.cache.text_encoder,
                   "prior": None if self.data is None else {
                       "data": self.options.prior_data, "fraction": self.data.fraction,
                       "examples": len(self.data.prior)}})


@contextmanager
def trained_weights(module: nn.Module, state: dict[str, torch.Tensor], keys: set[str]):
    """`module` with the trained entries of `state` (e.g. EMA weights) in place of its own, put
    back afterwards; entries that are the module's own tensors are not copied."""
    own = dict(module.named_parameters())
    swapped = {k: own[k].detach().clone() for k in keys
               if k in state and state[k].data_ptr() != own[k].data_ptr()}
    with torch.no_grad():
        for key in swapped:
            own[key].copy_(state[key])
    try:
        yield module.eval()
    finally:
        with torch.no_grad():
            for key, value in swapped.items():
                own[key].copy_(value)


def sheet_prompts(cache, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Text features, positions and captions of the first `count` examples of a latent cache."""
    count = min(count, len(cache))
    examples = [cache.get(i) for i in range(count)]
    batch = collate(examples, cache.patch_nums, torch.device("cpu"))
    captions = []
    with open(cache.root / "captions.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(count)):
            captions.append(json.loads(line)["text"])
    return batch.context, batch.position_ids, captions


def _revision(hub_id: str | None) -> str | None:
    return parse_hub_id(hub_id)[1] if hub_id else None


# ----- the command's work, top to bottom ------------------------------------------------------------

def finetune(options: FinetuneOptions, *, quiet: bool = False) -> Path | None:
    """Fine-tune; returns RUN/lora or RUN/model on the main process (None on the others)."""
    out = Path(options.out)
    if options.lora is not None and options.parallel == "fsdp":
        raise ValueError("LoRA trains with --parallel ddp (its trained weights are small; FSDP shards "
                         "them for nothing); use --full with fsdp")
    check_run_folder(out)
    for data in (options.data, options.prior_data):  # their captions, before any loading
        if data is not None:
            open_dataset(data, options.resolution or 1, random_crop=False)
    dist = Distributed.from_env(options.device)  # joins torchrun's group: one process builds the cache
    with run_folder_lock(out, dist.is_main):  # the run record and the training loop: one writer
        return _finetune(options, out, dist, quiet)


def _finetune(options: FinetuneOptions, out: Path, dist: Distributed, quiet: bool) -> Path | None:
    base = load_base(options)
    resolution = options.resolution or base.config.tokenizer.image_size
    patch_nums = base.config.tokenizer.scales_for_size(resolution)
    if options.lora is not None:
        options = replace(options, lora=replace(options.lora, train_head=bool(options.train_head)))
        lora.check_rank(base.model, options.lora)
    check_run_base(out, base, options)
    cache = latent_cache(options.data, options, base, resolution, dist, quiet)
    prior = None if options.prior_data is None else latent_cache(options.prior_data, options, base, resolution,
                                                                 dist, quiet)
    mixture = None if prior is None else CacheMixture(cache, prior, options.prior_fraction)
    base.quantizer = base.model.tokenizer.quantizer
    base.model.tokenizer = None  # the encoder and decoder are not needed while training
    gc.collect()
    examples = len(cache if mixture is None else mixture)
    task = FinetuneTask(train_config(options, base, cache, patch_nums, examples), base, options, mixture)
    config = task.config
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_record(out / RUN_RECORD, options, base, cache, prior)
    exported = train(task, config.run, config.optim, {"finetune": _options_json(options), **config_to_dict(config)},
                     resume="auto", quiet=quiet)
    if exported is not None:
        del task, base
        gc.collect()
        write_sample_sheet(options, cache, out / "samples.png")
    return exported


def check_run_folder(out: Path) -> None:
    """RUN is new, empty, or an earlier `openhart finetune` run (which then resumes)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; name a folder for the run")
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_RECORD).is_file():
        raise FileExistsError(f"{out} exists and is not an openhart finetune run; choose a new --out")


def check_run_base(out: Path, base: Base, options: FinetuneOptions) -> None:
    """A run resumes only with the base and the kind of training it started with."""
    record_path = out / RUN_RECORD
    if not record_path.is_file() or not list_checkpoints(out / CHECKPOINT_DIR):
        return

    record = read_json(record_path)
    if record.get("base_fingerprint") != base.fingerprint:
        raise CheckpointError(f"{out} fine-tunes base {record.get('base_fingerprint')} ({record.get('base')}), but "
                              f"--model gives base {base.fingerprint} ({base.display}); use the same --model, "
                              "or another --out")
    recorded = record.get("options") or {}
    was_lora = recorded.get("lora") is not None
    if was_lora != (options.lora is not None):
        raise CheckpointError(f"{out} is a {'LoRA' if was_lora else 'full'} fine-tune; run it again with "
                              f"{'--lora-rank' if was_lora else '--full'} as before, or use another --out")
    prior = _prior(recorded.get("prior_data"), recorded.get("prior_fraction", FinetuneOptions.prior_fraction))
    if prior != _prior(options.prior_data, options.prior_fraction):
        raise CheckpointError(f"{out} trained with --prior-data {prior[0]} --prior-fraction {prior[1]}; resume it "
                              "with the same prior (its data order depends on it), or use another --out")


def _prior(data: str | None, fraction: float) -> tuple[str | None, float | None]:
    """A run's prior as (data, fraction); the fraction means nothing without data."""
    return (data, fraction if data else None)


def latent_cache(data: str, options: FinetuneOptions, base: Base, resolution: int, dist: Distributed,
                 quiet: bool) -> LatentCache:
    """The cache of (data, base, resolution, text encoder): found by its key, or built by the main
    process with the base's tokenizer and text encoder (freed afterwards)."""
    spec = options.text_encoder or base.text_encoder
    if spec is None:
        raise ValueError(f"{base.path / 'config.json'} names no text encoder: pass --text-encoder")
    dataset = open_dataset(data, resolution, random_crop=False)
    encoder_folder = None if str(spec) == RANDOM_TEXT_ENCODER else resolve_text_encoder(spec)
    system_prompt = None if encoder_folder is None else load_system_prompt(base.path, encoder_folder)
    transformer = base.config.transformer
    key = cache_key(base=fingerprint(weights_probe(base.model, ("tokenizer.", "transformer.", "head."))),
                    data=data_fingerprint(data), resolution=resolution,
                    encoder=encoder_identity(spec, encoder_folder, system_prompt),
                    context_tokens=transformer.context_tokens, context_dim=transformer.context_dim)
    folder = Path(options.cache_dir or default_cache_dir()) / key
    if not dist.is_main:
        dist.barrier()
        return LatentCache(folder)
    record = ({"kind": "random", "seed": 0} if encoder_folder is None else
              {"kind": "huggingface", "path": str(spec) if not Path(str(spec)).exists() else str(Path(spec).resolve())})

    def build(target: Path) -> None:
        encoder = prompt_encoder_loader(spec, transformer, model_folder=base.path, system_prompt=system_prompt)()
        total = len(dataset) if hasattr(dataset, "__len__") else None
        samples = (sample for _, sample in dataset.stream(0, seed=0))
        with tqdm(total=total, desc="cache", unit="img", file=sys.stderr,
                  disable=quiet or not sys.stderr.isatty()) as bar:
            try:
                _, counts = build_latent_cache(
                    samples, target, tokenizer=base.model.tokenizer, encoder=encoder, text_encoder_spec=record,
                    resolution=resolution, batch_size=16, progress=lambda done: bar.update(done - bar.n))
            except EmptyDatasetError as error:
                raise ValueError(f"no readable image in {data} ({getattr(dataset, 'skipped', 0)} "
                                 "unreadable skipped); check that the files are images") from error
        skipped = getattr(dataset, "skipped", 0)
        logger.info("cached %d examples of %s%s", counts["examples"], data,
                    f" ({skipped} unreadable images skipped)" if skipped else "")
        if skipped:
            print(f"openhart finetune: {skipped} unreadable image(s) of {data} skipped", file=sys.stderr)

    cache, _ = find_or_build(folder, build)
    gc.collect()
    dist.barrier()
    return cache


def train_config(options: FinetuneOptions, base: Base, cache: LatentCache, patch_nums: tuple[int, ...],
                 examples: int) -> TransformerTrainConfig:
    """The training config; `examples` per epoch (DATA's, with the prior's share) set the defaults."""
    defaults = default_hyperparameters(base.config, examples, full=options.lora is None)
    steps = options.steps or defaults["steps"]
    run = RunConfig(output_dir=str(options.out), steps=steps, batch_size=options.batch_size or defaults["batch_size"],
                    grad_accum=options.grad_accum, seed=options.seed, precision=options.precision,
                    device=options.device, parallel=options.parallel,
                    log_every=options.log_every or max(1, min(50, steps // 20)),
                    checkpoint_every=options.checkpoint_every or max(1, min(500, steps // 5)),
                    keep_checkpoints=2, sample_every=options.sample_every)
    optim = OptimConfig(lr=options.lr or defaults["lr"], warmup_steps=min(100, steps // 10),
                        ema_decay=options.ema_decay, weight_decay=0.0 if options.lora else 0.05)
    checkpointing = defaults["checkpointing"] if options.checkpointing is None else options.checkpointing
    config = TransformerTrainConfig(run=run, cache=str(cache.root), optim=optim, losses=TransformerLossConfig(),
                                    samples=SampleConfig(accuracy_examples=min(64, len(cache)) if options.sample_every else 0),
                                    checkpointing=checkpointing, sampling=config_to_dict(base.sampling))
    if not options.overrides:
        return config
    data = apply_overrides(config_to_dict(config), list(options.overrides))
    if data["cache"] != str(cache.root) or data["run"]["output_dir"] != str(options.out):
        raise ValueError("--set cannot change the cache or the run folder; use --out and --cache-dir")
    return config_from_dict(TransformerTrainConfig, data)


def write_run_record(path: Path, options: FinetuneOptions, base: Base, cache: LatentCache,
                     prior: LatentCache | None = None) -> None:
    write_json(path, {"format": "openhart.finetune", "base": base.display, "base_fingerprint": base.fingerprint,
                      "cache": str(cache.root), "prior_cache": None if prior is None else str(prior.root),
                      "options": _options_json(options)})


def _options_json(options: FinetuneOptions) -> dict:
    data = asdict(options)
    data["trigger_words"] = list(options.trigger_words)
    return data


@torch.no_grad()
def write_sample_sheet(options: FinetuneOptions, cache, path: Path) -> Path:
    """The first captions of DATA drawn by the base (top row) and the fine-tuned model (bottom
    row), same seed, at the training resolution: the exported files loaded as a user would."""
    features, positions, captions = sheet_prompts(cache, SHEET_CAPTIONS)
    dtype = default_dtype(torch.device("cpu"))
    source = resolve_model(options.model, weights=options.weights)
    sampling = recommended_sampling(source.path)
    rows = []
    model = load_model(source.path, weights=options.weights, dtype=dtype)
    for tuned in (False, True):
        if tuned and options.lora is not None:
            AdapterStack(model, source.name).load(read_adapter(Path(options.out) / "lora"))
        elif tuned:
            del model
            gc.collect()
            model = load_model(Path(options.out) / "model", dtype=dtype)
        out = generate(model, features.to(dtype), positions, sampling, torch.Generator().manual_seed(0),
                       patch_nums=cache.patch_nums)
        rows += to_pil(out.images)
    save_png(image_grid(rows, columns=len(captions)), path,
             {"rows": "base | fine-tuned", "prompts": " | ".join(captions)})
    return path
