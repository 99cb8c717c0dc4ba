"""Transformer + residual-diffusion-head training on a latent cache (HART paper 3.2-3.3).

One step, for a batch of cached (codes, last-scale residual input, text features):
1. Condition dropout: each example loses its text (zero features and zero positions: exactly the
   unconditional branch of sampling) with probability `cond_drop_rate`.
2. Token subsampling: a fraction of the last scale's tokens, drawn per step from a truncated
   normal, is dropped from the sequence; each example keeps its own random subset.
3. Teacher forcing over all scales -> cross-entropy against the ground-truth codes.
4. The diffusion head learns the residual of every kept last-scale token: the target is the
   latent minus the embedding of the code the model samples there (as at inference), each token
   repeated `diffusion_batch_mul` times with its own timestep and noise.

Every random draw comes from a generator keyed by (seed, step, example index), so the losses do
not depend on the number of processes or on a resume.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..allocator import map_large_blocks
from ..config import MODEL_PRESETS, HARTConfig, config_to_dict
from ..data.latent_cache import CachedBatch, LatentCache, collate
from ..diffusion.head import DiffusionHead
from ..diffusion.schedule import DiffusionSchedule
from ..hart_model import HARTModel
from ..images import image_grid, save_png, to_pil
from ..loading import load_model, save_model
from ..metrics import teacher_forced_accuracy
from ..sampling import filter_logits, generate
from ..seeding import keyed_generator
from ..serialization import CheckpointError
from ..text.encoder import load_prompt_encoder
from ..text.random_encoder import random_prompt_encoder
from ..tokenizer import HybridTokenizer
from ..transformer.model import HARTTransformer
from .checkpoint import load_checkpoint
from .losses import ar_loss, condition_dropout_mask, diffusion_loss
from .train_config import TransformerLossConfig, TransformerTrainConfig
from .trainer import TrainingTask

logger = logging.getLogger(__name__)


def model_config_from(model: Any, tokenizer: HybridTokenizer, context_tokens: int,
                      context_dim: int) -> HARTConfig:
    """A preset of `MODEL_PRESETS` ("tiny", "0.7b") or {"transformer": {...}, "head": {...}},
    over the cache's tokenizer and text encoder (which fix the text prefix's length and width)."""
    if isinstance(model, str):
        if model not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {model!r}; choose one of {sorted(MODEL_PRESETS)} or "
                             "give {\"transformer\": {...}, \"head\": {...}}")
        preset = MODEL_PRESETS[model]()
        transformer, head = config_to_dict(preset.transformer), config_to_dict(preset.head)
    elif isinstance(model, dict):
        unknown = sorted(set(model) - {"transformer", "head"})
        if unknown:
            raise ValueError(f"unknown model section(s) {unknown}; expected 'transformer' and 'head'")
        transformer, head = dict(model.get("transformer", {})), dict(model.get("head", {}))
        for key, value in {"context_tokens": context_tokens, "context_dim": context_dim}.items():
            if key in transformer and transformer[key] != value:
                raise ValueError(f"model.transformer.{key} = {transformer[key]} but the text encoder of "
                                 f"the cache fixes it to {value}; leave it out")
    else:
        raise ValueError(f"model must be a preset name or an object, got {model!r}")
    transformer.update(context_tokens=context_tokens, context_dim=context_dim)
    return HARTConfig.from_dict({"tokenizer": config_to_dict(tokenizer.config), "transformer": transformer,
                                 "head": head})


class HARTTrainingModule(nn.Module):
    """forward(batch, step) -> (loss, metrics); holds the trained transformer and head. The frozen
    quantizer (its codebook and Phi build the teacher-forcing inputs) is not part of its state."""

    def __init__(self, transformer: HARTTransformer, head: DiffusionHead, quantizer: nn.Module,
                 losses: TransformerLossConfig, patch_nums: tuple[int, ...], seed: int, checkpointing: bool):
        super().__init__()
        self.transformer, self.head = transformer, head
        self.__dict__["quantizer"] = quantizer.eval().requires_grad_(False)
        self.losses, self.patch_nums, self.seed = losses, patch_nums, seed
        self.checkpointing = checkpointing
        if checkpointing:  # openhart.allocator: the heap would grow with every checkpointed block
            map_large_blocks()
        self.schedule = DiffusionSchedule.cosine(head.config.num_train_timesteps)

    @classmethod
    def fresh(cls, config: HARTConfig, quantizer: nn.Module, **kwargs) -> "HARTTrainingModule":
        """A new transformer and head (MAR's initialisation of the head) for `config`."""
        transformer = HARTTransformer(config.transformer, config.tokenizer)  # drawn first, then the head
        head = DiffusionHead(config.head, latent_channels=config.tokenizer.latent_channels,
                             cond_dim=config.transformer.embed_dim)
        head.initialize_weights()
        return cls(transformer, head, quantizer, **kwargs)

    def forward(self, batch: CachedBatch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, patch_nums = self.losses, self.patch_nums
        l = patch_nums[-1] ** 2

        # 1-2. condition dropout (zero features and zero positions: the unconditional branch) and
        # which last-scale tokens stay in the sequence
        generators, dropped, keep = self._draw_inputs(batch, step, l)
        kept = l if keep is None else keep.shape[1]
        context = batch.context.masked_fill(dropped[:, None, None], 0.0)
        position_ids = batch.position_ids.masked_fill(dropped[:, None], 0)

        # 3. teacher forcing and cross-entropy
        with torch.no_grad():
            inputs = self.quantizer.teacher_forcing_input(batch.codes, patch_nums)
        out = self.transformer(context, position_ids, inputs, patch_nums=patch_nums,
                               last_scale_keep_Bn=keep, checkpointing=self.checkpointing)
        last_codes = batch.codes[-1] if keep is None else torch.gather(batch.codes[-1], 1, keep)
        targets = torch.cat([*batch.codes[:-1], last_codes], dim=1)
        ce = ar_loss(out.logits, targets)

        # 4. the residual diffusion loss on the kept last-scale tokens
        hidden_last, logits_last = out.hidden[:, -kept:], out.logits[:, -kept:].detach()
        with torch.no_grad():
            if cfg.diffusion_code == "sampled":
                codes = self._sample_codes(logits_last, generators)
            else:
                codes = last_codes
            code_vectors = self.quantizer.codebook(codes).float()
            last_input = batch.last_scale_input if keep is None else torch.gather(
                batch.last_scale_input, 1, keep[..., None].expand(-1, -1, batch.last_scale_input.shape[-1]))
            target = (last_input - code_vectors).repeat_interleave(cfg.diffusion_batch_mul, dim=1)
        condition = self.transformer.diffusion_condition(hidden_last, code_vectors)
        condition = condition.repeat_interleave(cfg.diffusion_batch_mul, dim=1)
        t, noise = self._draw_noise(generators, kept * cfg.diffusion_batch_mul, target.shape[-1])
        diff = diffusion_loss(self.head, self.schedule, target.flatten(0, 1), condition.flatten(0, 1),
                              t_N=t, noise_NC=noise)

        loss = cfg.ce * ce + cfg.diffusion * diff
        with torch.no_grad():
            hits = out.logits.argmax(-1) == targets
            accuracy, last_accuracy = hits.float().mean(), hits[:, -kept:].float().mean()
        metrics = {"ce": ce.detach(), "diffusion": diff.detach(), "accuracy": accuracy,
                   "last_scale_accuracy": last_accuracy,
                   "kept_tokens": torch.tensor(float(kept)), "dropped_text": dropped.float().mean()}
        return loss, metrics

    # The random draws run eagerly (torch.compile cannot trace a seeded torch.Generator); each
    # example draws, in this order, from its own generator keyed by (seed, step, example index):
    # its condition dropout, its kept tokens, its sampled codes, its timesteps and noise.

    @torch.compiler.disable
    def _draw_inputs(self, batch: CachedBatch, step: int, l: int
                     ) -> tuple[list[torch.Generator], torch.Tensor, torch.Tensor | None]:
        """The step's generators, the (B,) mask of dropped text and the (B, kept) sorted indices
        of the kept last-scale tokens (None when all are kept)."""
        device = batch.context.device
        generators = [keyed_generator("example", self.seed, step, int(i), device=device)
                      for i in batch.indices]
        dropped = condition_dropout_mask(generators, self.losses.cond_drop_rate, device)
        kept = kept_token_count(l, self.losses, keyed_generator("mask-rate", self.seed, step))
        keep = None
        if kept < l:
            keep = torch.stack([torch.randperm(l, generator=g, device=device)[:kept].sort().values
                                for g in generators])
        return generators, dropped, keep

    @torch.compiler.disable
    def _sample_codes(self, logits_BnV: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Codes drawn from the model's own filtered distribution (diffusion_code "sampled")."""
        filtered = filter_logits(logits_BnV.float(), self.losses.diffusion_top_k, self.losses.diffusion_top_p)
        return torch.stack([torch.multinomial(filtered[b].softmax(-1), 1, generator=g)[:, 0]
                            for b, g in enumerate(generators)])

    @torch.compiler.disable
    def _draw_noise(self, generators: list[torch.Generator], rows: int, channels: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's `rows` diffusion timesteps and (rows, channels) noise, concatenated."""
        device = generators[0].device
        t = torch.cat([torch.randint(0, self.schedule.num_steps, (rows,), generator=g, device=device)
                       for g in generators])
        noise = torch.cat([torch.randn(rows, channels, generator=g, device=device) for g in generators])
        return t, noise


def kept_token_count(l: int, cfg: TransformerLossConfig, generator: torch.Generator) -> int:
    """Last-scale tokens kept this step: l - ceil(l * rate), rate ~ N(max, std) truncated to
    [min, max] (HART: mean 1.0, std 0.25 on [0.5, 1]), at least `min_kept_tokens` (or l)."""
    lo, hi = cfg.mask_rate_min, cfg.mask_rate_max
    if hi <= 0:
        return l
    while True:  # rejection sampling of the truncated normal
        rate = hi + cfg.mask_rate_std * float(torch.randn((), generator=generator))
        if lo <= rate <= hi:
            break
    masked = min(math.ceil(l * rate), l - min(cfg.min_kept_tokens, l))
    return l - masked


class TransformerTask(TrainingTask):
    kind = "transformer"

    def __init__(self, config: TransformerTrainConfig):
        self.config = config
        self.cache = LatentCache(config.cache)
        self.tokenizer = self.cache.load_tokenizer()
        encoder = self.cache.text_encoder
        self.model_config = model_config_from(config.model, self.tokenizer, encoder["context_tokens"],
                                              encoder["context_dim"])
        self.patch_nums = self.cache.patch_nums
        if self.patch_nums != self.model_config.tokenizer.patch_nums[: len(self.patch_nums)]:
            raise ValueError(f"the cache's scales {list(self.patch_nums)} are not a prefix of the "
                             f"model's {list(self.model_config.tokenizer.patch_nums)}")
        self.init_state = _initial_weights(config.init_from) if config.init_from else None
        self.sampling = config.recommended_sampling()
        self.heldout = self._open_heldout_cache(config.heldout_cache) if config.heldout_cache else None
        self._prompts = None
        self._accuracy_sets = None

    def build(self, device: torch.device) -> nn.Module:
        module = HARTTrainingModule.fresh(self.model_config, self.tokenizer.to(device).quantizer,
                                          losses=self.config.losses, patch_nums=self.patch_nums,
                                          seed=self.config.run.seed, checkpointing=self.config.checkpointing)
        if self.init_state is not None:
            missing, unexpected = module.load_state_dict(self.init_state, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"init_from {self.config.init_from} does not fit this model: "
                                      f"missing {missing[:5]}, unexpected {unexpected[:5]}")
            logger.info("initialised the transformer and head from %s", self.config.init_from)
        return module.to(device)

    def shard_units(self, module: nn.Module) -> list[nn.Module]:
        return [*module.transformer.blocks, module.head]

    def architecture(self) -> dict:
        return {"hart": config_to_dict(self.model_config)}

    def dataset(self):
        return self.cache

    def collate(self, examples: list, device: torch.device) -> CachedBatch:
        return collate(examples, self.patch_nums, device)

    def batch_counts(self, batch: CachedBatch) -> dict[str, int]:
        return {"images": batch.size, "tokens": batch.size * sum(pn * pn for pn in self.patch_nums)}

    def extra_state(self, dist) -> dict[str, Any]:
        return {"text_encoder": self.cache.text_encoder,
                "sampling": config_to_dict(self.sampling)}

    def frozen_state(self) -> dict[str, torch.Tensor]:
        return {f"tokenizer.{k}": v.detach().cpu() for k, v in self.tokenizer.state_dict().items()}

    def model_from(self, state: dict[str, torch.Tensor]) -> HARTModel:
        model = HARTModel(self.model_config)
        model.load_state_dict({**self.frozen_state(), **state})
        return model.eval()

    @torch.no_grad()
    def write_samples(self, step: int, state: dict[str, torch.Tensor], folder: Path) -> dict[str, float]:
        """The sample grid of the fixed prompts, and the teacher-forced accuracy of these weights
        on training and held-out examples (returned as metrics)."""
        model = self.model_from(state)
        metrics = self._accuracy_metrics(model)
        prompts = self._sample_prompts()
        if prompts is None:
            return metrics
        features, positions = prompts
        samples = self.config.samples
        generator = torch.Generator().manual_seed(samples.seed)
        out = generate(model, features, positions, self.sampling, generator,
                       patch_nums=self.patch_nums)
        folder.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(to_pil(out.images), columns=min(4, len(out.images))),
                 folder / f"step-{step:08d}.png", {"prompts": " | ".join(samples.prompts)})
        return metrics

    def _accuracy_metrics(self, model: HARTModel) -> dict[str, float]:
        """Teacher-forced top-1 accuracy on a fixed subset of the training cache and on the
        held-out cache: {"train_last_scale_top1", "train_all_scales_top1", "heldout_..."}."""
        count = self.config.samples.accuracy_examples
        if count == 0:
            return {}
        if self._accuracy_sets is None:
            sets = {"train": self.cache}
            if self.heldout is not None:
                sets["heldout"] = self.heldout
            self._accuracy_sets = {}
            for name, cache in sets.items():
                order = torch.randperm(len(cache), generator=torch.Generator().manual_seed(0))
                examples = [cache.get(int(i)) for i in order[:count]]
                self._accuracy_sets[name] = collate(examples, self.patch_nums, torch.device("cpu"))
        metrics = {}
        for name, batch in self._accuracy_sets.items():
            accuracy = teacher_forced_accuracy(model.transformer, model.tokenizer.quantizer, batch.codes,
                                               batch.context, batch.position_ids)
            metrics.update({f"{name}_{key}": value for key, value in accuracy.items()})
        return metrics

    def _open_heldout_cache(self, path: str) -> LatentCache:
        """The held-out cache, checked against the training cache before training starts."""
        heldout = LatentCache(path)
        if heldout.patch_nums[: len(self.patch_nums)] != self.patch_nums or heldout.text_encoder != self.cache.text_encoder:
            raise ValueError(f"heldout_cache {path} was made with other scales or "
                             "another text encoder than the training cache; build it with the same "
                             "tokenizer and text encoder")
        return heldout

    def _sample_prompts(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._prompts is None:
            encoder = text_encoder_from_spec(self.cache.text_encoder)
            if encoder is None:
                return None
            embedding = encoder.encode(list(self.config.samples.prompts))
            self._prompts = (embedding.features.float(), embedding.position_ids)
        return self._prompts

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> Path:
        return save_model(self.model_from(state), folder, text_encoder=self.cache.text_encoder,
                          sampling=self.sampling)


def text_encoder_from_spec(spec: dict):
    """The text encoder a cache was made with, or None (with a warning) if it is not available."""
    if spec.get("kind") == "random":
        return random_prompt_encoder(spec["context_dim"], spec["context_tokens"], seed=spec.get("seed", 0))
    path = spec.get("path")
    if path:
        try:
            return load_prompt_encoder(path, max_length=spec["context_tokens"])
        except ValueError as error:
            logger.warning("%s", error)
    logger.warning("the text encoder of the cache (%s) is not available here: no sample images", path)
    return None


def _initial_weights(path: str) -> dict[str, torch.Tensor]:
    """Transformer and head weights of a training checkpoint (EMA if any) or of a model folder."""
    source = Path(path)
    if not source.exists():
        raise CheckpointError(f"init_from not found: {source}")
    if source.is_dir() and (source / "config.json").is_file():
        state = load_model(source).state_dict()
    else:
        checkpoint = load_checkpoint(source)
        if checkpoint.get("kind") != "transformer":
            raise CheckpointError(f"init_from {source} is a {checkpoint.get('kind')} checkpoint, "
                                  "not a transformer one")
        state = checkpoint.get("ema") or checkpoint["model"]
    return {k: v for k, v in state.items() if k.startswith(("transformer.", "head."))}

