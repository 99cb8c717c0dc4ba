"""Tokenizer training: reconstruction + VQ losses, HART's alternating continuous/discrete decoding,
an optional PatchGAN and perceptual loss, decoder-only fine-tuning, codebook usage.

Each step decodes either the continuous latent (the hybrid path: codes + residual = the latent
itself) or the discrete-only latent (straight-through), the latter with probability
`losses.discrete_prob`; the choice is keyed by (seed, step), so every process makes the same one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TOKENIZER_PRESETS, TokenizerConfig, config_from_dict, config_to_dict
from ..data.datasets import ImageCaptionFolder, TarShards
from ..images import image_grid, save_png, to_pil
from ..loading import load_tokenizer, save_tokenizer
from ..metrics import psnr
from ..seeding import keyed_generator
from ..tokenizer import HybridTokenizer
from .discriminator import PatchDiscriminator, discriminator_hinge_loss, generator_hinge_loss
from .distributed import Distributed
from .optim import EMA, build_optimizer
from .perceptual import PerceptualLoss
from .train_config import TokenizerTrainConfig
from .trainer import TrainingTask

logger = logging.getLogger(__name__)


def tokenizer_config_from(model: Any) -> TokenizerConfig:
    """A preset name or a dict of `TokenizerConfig` fields."""
    if isinstance(model, str):
        if model not in TOKENIZER_PRESETS:
            raise ValueError(f"unknown tokenizer preset {model!r}; choose one of "
                             f"{sorted(TOKENIZER_PRESETS)} or give an object of TokenizerConfig fields")
        return TOKENIZER_PRESETS[model]()
    if isinstance(model, dict):
        return config_from_dict(TokenizerConfig, model)
    raise ValueError(f"model must be a preset name or an object, got {model!r}")


def open_dataset(path: str, resolution: int, random_crop: bool):
    """An image-caption folder, a folder of .tar shards, or one .tar shard."""
    root = Path(path)
    if root.is_file() and root.suffix == ".tar":
        return TarShards([root], resolution, random_crop=random_crop)
    if root.is_dir() and not any(root.glob("metadata.jsonl")) and any(root.glob("*.tar")):
        return TarShards(sorted(root.glob("*.tar")), resolution, random_crop=random_crop)
    return ImageCaptionFolder(root, resolution, random_crop=random_crop)


class TokenizerTrainingModule(nn.Module):
    """forward(images, step) -> (loss, metrics) for one batch; `tokenizer` holds the weights."""

    def __init__(self, tokenizer: HybridTokenizer, config: TokenizerTrainConfig,
                 perceptual: PerceptualLoss | None):
        super().__init__()
        self.tokenizer = tokenizer
        self.config = config
        self.__dict__["perceptual"] = perceptual  # frozen, not part of the trained state
        self.__dict__["discriminator"] = None     # set by the task when the GAN loss is on
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, losses = self.config, self.config.losses
        tok = self.tokenizer
        patch_nums = tok.scales_for_size(images.shape[-1])
        f = tok.quant_conv(tok.encoder(images))
        quantized = tok.quantizer.quantize_for_training(f, patch_nums, tok.config.commitment_beta)
        discrete = bool(torch.rand((), generator=keyed_generator("decode-path", cfg.run.seed, step))
                        < losses.discrete_prob)
        latent = quantized.f_hat if discrete else f
        recon = tok.decoder(tok.post_quant_conv(latent)).float()
        l1 = (recon - images).abs().mean()
        l2 = (recon - images).square().mean()
        loss = losses.l1 * l1 + losses.l2 * l2
        if cfg.train == "all":
            loss = loss + losses.vq * quantized.vq_loss
        metrics = {"l1": l1.detach(), "l2": l2.detach(), "vq": quantized.vq_loss.detach(),
                   "discrete_step": torch.tensor(float(discrete))}
        if self.perceptual is not None and losses.perceptual > 0:
            perceptual = self.perceptual(recon, images)
            loss = loss + losses.perceptual * perceptual
            metrics["perceptual"] = perceptual.detach()
        if self.discriminator is not None and step >= losses.gan_start_step:
            disc = self.discriminator
            for p in disc.parameters():
                p.requires_grad_(False)
            adversarial = generator_hinge_loss(disc(recon))
            for p in disc.parameters():
                p.requires_grad_(True)
            loss = loss + losses.gan * adversarial
            metrics["gan_g"] = adversarial.detach()
        self.last = {"recon": recon.detach(), "indices": [i.detach() for i in quantized.indices],
                     "queries": quantized.queries}
        return loss, metrics


class TokenizerTask(TrainingTask):
    kind = "tokenizer"

    def __init__(self, config: TokenizerTrainConfig):
        self.config = config
        if config.init_from:
            self.model_config = load_tokenizer(config.init_from).config
            if not isinstance(config.model, str) or config.model != "tiny":
                logger.info("init_from is set: the architecture comes from %s", config.init_from)
        else:
            self.model_config = tokenizer_config_from(config.model)
        self._dataset = open_dataset(config.data.path, config.data.resolution, config.data.random_crop)
        self.model_config.scales_for_size(config.data.resolution)  # fails before any compute
        self.perceptual = None
        self.discriminator = None
        self.disc_wrapped = None
        self.disc_optimizer = None
        self.module: TokenizerTrainingModule | None = None
        self.code_counts = torch.zeros(self.model_config.vocab_size, dtype=torch.float64)
        self.restart_counts = torch.zeros_like(self.code_counts)
        self.restarted = 0
        self.skipped_before = 0.0  # images skipped before the run resumed

    # ----- the model ---------------------------------------------------------------------------

    def build(self, device: torch.device) -> nn.Module:
        cfg = self.config
        if cfg.init_from:
            tokenizer = load_tokenizer(cfg.init_from, device=device).train()
        else:
            tokenizer = HybridTokenizer(self.model_config).to(device)
        if cfg.train == "decoder":
            for part in (tokenizer.encoder, tokenizer.quant_conv, tokenizer.quantizer):
                part.requires_grad_(False)
        if cfg.losses.perceptual > 0:
            self.perceptual = PerceptualLoss(cfg.losses.perceptual_weights, device)
        self.module = TokenizerTrainingModule(tokenizer, cfg, self.perceptual)
        if cfg.losses.gan > 0:
            self.discriminator = PatchDiscriminator(channels=64 if self.model_config.base_channels >= 64 else 32,
                                                    layers=2 if cfg.data.resolution <= 64 else 3).to(device)
            self.disc_optimizer = build_optimizer(self.discriminator, cfg.optim.lr,
                                                  cfg.optim.weight_decay, tuple(cfg.optim.betas))
            self.module.__dict__["discriminator"] = self.discriminator
        return self.module

    def shard_units(self, module: nn.Module) -> list[nn.Module]:
        tok = module.tokenizer
        return [tok.encoder, tok.decoder]

    def architecture(self) -> dict:
        return {"tokenizer": config_to_dict(self.model_config)}

    # ----- data --------------------------------------------------------------------------------

    def dataset(self):
        return self._dataset

    def collate(self, examples: list, device: torch.device) -> torch.Tensor:
        return torch.stack([e.image for e in examples]).to(device)

    def batch_counts(self, batch: torch.Tensor) -> dict[str, int]:
        patch_nums = self.model_config.patch_nums
        side = batch.shape[-1] // self.model_config.downsample_factor
        tokens = sum(pn * pn for pn in patch_nums[: patch_nums.index(side) + 1])
        return {"images": batch.shape[0], "tokens": batch.shape[0] * tokens}

    # ----- discriminator and codebook statistics -------------------------------------------------

    def auxiliary_step(self, batch: torch.Tensor, step: int, dist: Distributed,
                       ema: EMA | None) -> dict[str, float]:
        last = self.module.last
        for idx in last["indices"]:
            hits = torch.bincount(idx.flatten().cpu(), minlength=len(self.code_counts)).double()
            self.code_counts += hits
            self.restart_counts += hits
        every = self.config.losses.restart_dead_codes_every
        if every and self.config.train == "all" and (step + 1) % every == 0:
            self._restart_dead_codes(step, dist, ema)
        if self.discriminator is None or step < self.config.losses.gan_start_step:
            return {}
        if self.disc_wrapped is None:
            self.disc_wrapped = dist.wrap(self.discriminator, "ddp")
        logits = self.disc_wrapped(torch.cat([batch, last["recon"]]))
        real, fake = logits.chunk(2)
        loss = discriminator_hinge_loss(real, fake)
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_optimizer.step()
        return {"gan_d": float(loss.detach())}

    def _restart_dead_codes(self, step: int, dist: Distributed, ema: EMA | None) -> None:
        """Unused codes (over all processes) move onto looked-up vectors of the main process,
        which every process then receives, so the codebooks stay identical."""
        unused = dist.sum(self.restart_counts.clone()) == 0
        self.restart_counts.zero_()
        quantizer = self.module.tokenizer.quantizer
        if dist.is_main:
            generator = keyed_generator("restart", self.config.run.seed, step)
            self.restarted += quantizer.restart_codes(unused, self.module.last["queries"].cpu(), generator)
        weight = quantizer.codebook.weight
        if dist.active:
            # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
            import torch.distributed as torch_dist
            from torch.distributed.tensor import DTensor

            if isinstance(weight, DTensor):
                raise ValueError("restart_dead_codes_every is not supported with parallel 'fsdp'")
            torch_dist.broadcast(weight.data, src=0)
        if ema is not None:  # a restarted code must not be averaged with its dead value
            shadow = ema.shadow["tokenizer.quantizer.codebook.weight"]
            shadow[unused.to(shadow.device)] = weight.data[unused.to(weight.device)].to(shadow.dtype)

    def interval_metrics(self, dist: Distributed) -> dict[str, float]:
        counts = dist.sum(self.code_counts.clone())
        self.code_counts.zero_()
        used = float((counts > 0).double().mean())
        return {"codebook_usage": used, "dead_code_fraction": 1.0 - used,
                "skipped_images": self._skipped_images(dist), "restarted_codes": float(self.restarted)}

    def _skipped_images(self, dist: Distributed) -> float:
        """Unreadable images skipped so far by every process, runs before a resume included."""
        here = float(getattr(self._dataset, "skipped", 0))
        return float(dist.sum(torch.tensor([here], dtype=torch.float64))[0]) + self.skipped_before

    def extra_state(self, dist: Distributed) -> dict[str, Any]:
        state: dict[str, Any] = {"restart_counts": dist.sum(self.restart_counts.clone()),
                                 "restarted": self.restarted, "skipped_images": self._skipped_images(dist)}
        if self.discriminator is not None:
            state["discriminator"] = {k: v.detach().cpu() for k, v in self.discriminator.state_dict().items()}
            state["discriminator_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "restart_counts" in state:
            # counts of all processes, summed: they only need to be non-zero where a code was used
            self.restart_counts = state["restart_counts"].clone()
            self.restarted = state["restarted"]
        self.skipped_before = float(state.get("skipped_images", 0.0))
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["discriminator_optimizer"])

    # ----- outputs -------------------------------------------------------------------------------

    def _tokenizer_from(self, state: dict[str, torch.Tensor]) -> HybridTokenizer:
        tokenizer = HybridTokenizer(self.model_config)
        tokenizer.load_state_dict({k.removeprefix("tokenizer."): v for k, v in state.items()})
        return tokenizer.eval()

    @torch.no_grad()
    def write_samples(self, step: int, state: dict[str, torch.Tensor], folder: Path) -> dict[str, float]:
        """Reconstruct fixed images through both paths: [input | continuous | discrete-only]."""
        tokenizer = self._tokenizer_from(state)
        images = self._eval_images()
        tokens = tokenizer.encode(images)
        continuous = tokenizer.decode_latent(tokens.latent)
        discrete = tokenizer.decode_tokens(tokens.indices)
        target = (images + 1) / 2
        rows = []
        for i in range(images.shape[0]):
            rows += to_pil(torch.stack([target[i], (continuous[i] + 1) / 2, (discrete[i] + 1) / 2]))
        folder.mkdir(parents=True, exist_ok=True)
        save_png(image_grid(rows, columns=3), folder / f"step-{step:08d}.png")
        return {"eval_psnr_continuous": float(psnr((continuous + 1) / 2, target).mean()),
                "eval_psnr_discrete": float(psnr((discrete + 1) / 2, target).mean())}

    def _eval_images(self) -> torch.Tensor:
        data, images = self._dataset, []
        for _, sample in data.stream(0, self.config.run.seed):
            images.append(sample.image)
            if len(images) == self.config.eval_images:
                break
        return torch.stack(images)

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> Path:
        return save_tokenizer(self._tokenizer_from(state), folder)
