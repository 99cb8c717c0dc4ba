"""Small modules shared by the transformer and the diffusion head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Sinusoidal embedding width and period of the timestep/level embedders (GLIDE/DiT convention).
FREQUENCY_DIM = 256
MAX_PERIOD = 10000


def sinusoidal_embedding(t_N: torch.Tensor, dim: int = FREQUENCY_DIM,
                         max_period: float = MAX_PERIOD) -> torch.Tensor:
    """(N,) integer or fractional steps -> (N, dim) fp32 [cos | sin] features (cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t_N.device) / half)
    args = t_N[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of a step index through Linear -> SiLU -> Linear."""

    def __init__(self, width: int, frequency_dim: int = FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.linear_1 = nn.Linear(frequency_dim, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(t_N, self.frequency_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(features)))


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps), normalised in fp32 and cast back before the weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = (x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        weight = self.weight.to(x.dtype)
        # `normed` is a fresh tensor: without autograd, scale it in place (one buffer fewer)
        return normed * weight if torch.is_grad_enabled() else normed.mul_(weight)
