"""The three networks of a HART model in one module, so they share one state dict and one load."""

from __future__ import annotations

import torch
from torch import nn

from .config import HARTConfig
from .diffusion.head import DiffusionHead
from .tokenizer import HybridTokenizer
from .transformer.model import HARTTransformer


class HARTModel(nn.Module):
    """Hybrid tokenizer + next-scale transformer + residual diffusion head."""

    def __init__(self, config: HARTConfig):
        super().__init__()
        self.config = config
        self.tokenizer = HybridTokenizer(config.tokenizer)
        self.transformer = HARTTransformer(config.transformer, config.tokenizer)
        self.head = DiffusionHead(config.head, latent_channels=config.tokenizer.latent_channels,
                                  cond_dim=config.transformer.embed_dim)

    @classmethod
    def from_parts(cls, config: HARTConfig, tokenizer: HybridTokenizer, transformer: HARTTransformer,
                   head: DiffusionHead) -> "HARTModel":
        """A model over existing networks (shared, not copied), e.g. those being fine-tuned."""
        with torch.device("meta"):
            model = cls(config)
        model.tokenizer, model.transformer, model.head = tokenizer, transformer, head
        return model
