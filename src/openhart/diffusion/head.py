"""The residual diffusion head: a per-token MLP with AdaLN blocks (network only).

HART paper section 3.3 (37M MLP, after MAR's DiffLoss). Input a noisy residual
token x_t (N, Cv), its timestep (N,) on the training scale and a condition (N, C); output
[eps (Cv) | variance interpolation values (Cv)].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import TimestepEmbedding
from ..config import DiffusionHeadConfig

# LayerNorm epsilon of the MAR/DiT blocks.
NORM_EPS = 1e-6


class AdaLNResBlock(nn.Module):
    """x + gate * mlp(norm(x) * (1 + scale) + shift), (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=NORM_EPS)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.modulation = nn.Linear(width, 3 * width)

    def forward(self, x_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(y_NW)).chunk(3, dim=-1)
        h = self.norm(x_NW) * (1 + scale) + shift
        return x_NW + gate * self.fc2(F.silu(self.fc1(h)))


class FinalLayer(nn.Module):
    """linear(norm(x) * (1 + scale) + shift) with a parameter-free LayerNorm."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=NORM_EPS, elementwise_affine=False)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_channels)

    def forward(self, x_NW: torch.Tensor, y_NW: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(y_NW)).chunk(2, dim=-1)
        return self.linear(self.norm(x_NW) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """MLP denoiser of residual tokens with learned-range variance output.

    Args:
        latent_channels: width Cv of the residual tokens it models (the tokenizer's latent).
        cond_dim: width of the per-token condition (the transformer's width C).
    """

    def __init__(self, config: DiffusionHeadConfig, *, latent_channels: int, cond_dim: int):
        super().__init__()
        self.config = config
        self.latent_channels = latent_channels
        W = config.width
        self.time_embed = TimestepEmbedding(W)
        self.cond_embed = nn.Linear(cond_dim, W)
        self.input_proj = nn.Linear(latent_channels, W)
        self.blocks = nn.ModuleList(AdaLNResBlock(W) for _ in range(config.depth))
        self.final = FinalLayer(W, 2 * latent_channels)

    def forward(self, x_NCv: torch.Tensor, t_N: torch.Tensor, cond_NC: torch.Tensor) -> torch.Tensor:
        """Returns (N, 2 Cv): predicted noise, then variance interpolation values in [-1, 1]."""
        y = self.time_embed(t_N) + self.cond_embed(cond_NC)
        h = self.input_proj(x_NCv)
        for block in self.blocks:
            h = block(h, y)
        return self.final(h, y)

    def initialize_weights(self) -> None:
        """MAR's initialisation: Xavier linears, small time MLP, zeroed modulations and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for layer in [*self.blocks, self.final]:
            nn.init.zeros_(layer.modulation.weight)
            nn.init.zeros_(layer.modulation.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)
