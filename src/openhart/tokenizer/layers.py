"""Building blocks of the VAR/LDM conv autoencoder: resnet blocks, single-head attention, resampling.

The layout of mit-han-lab/hart's `hart/modules/networks/basic_vae.py`, itself from VAR and
latent-diffusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import GROUP_NORM_GROUPS

# GroupNorm epsilon of the LDM autoencoder.
NORM_EPS = 1e-6
# Per-group size from which GPUs use `split_group_norm` (PyTorch's CUDA GroupNorm gives each of the
# B x 32 groups one thread block: 1.1 ms per call at 1024 px on an H200, 17% of a generation).
SPLIT_GROUP_NORM_MIN = 1 << 16


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state-dict keys); large groups on GPUs take the
    split-reduction path, everything else (the CPU, conformance) PyTorch's kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda" and x[0].numel() // self.num_groups >= SPLIT_GROUP_NORM_MIN:
            return split_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def split_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """GroupNorm as two fp32-accumulated reductions (which parallelise within a group) and one
    fused multiply-add: y = x * a + b with per-(sample, channel) a = w / std, b = bias - mean a.
    Statistics are fp32; a and b are rounded to x's dtype, as the output is."""
    B, C = x.shape[:2]
    x_BGn = x.reshape(B, groups, -1)
    n = x_BGn.shape[-1]
    mean = x_BGn.sum(-1, dtype=torch.float32) / n
    mean_sq = torch.linalg.vector_norm(x_BGn, dim=-1, dtype=torch.float32).square() / n
    rstd = torch.rsqrt((mean_sq - mean.square()).clamp_min(0) + eps)
    a = weight.float().view(1, groups, -1) * rstd[..., None]
    b = bias.float().view(1, groups, -1) - mean[..., None] * a
    shape = (B, C) + (1,) * (x.ndim - 2)
    return torch.addcmul(b.reshape(shape).to(x.dtype), x, a.reshape(shape).to(x.dtype))


def group_norm(channels: int) -> GroupNorm:
    return GroupNorm(GROUP_NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """out = shortcut(x) + conv(dropout(silu(norm(conv(silu(norm(x)))))))."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = not torch.is_grad_enabled()  # the norms' outputs are fresh: no buffer to allocate
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, scale C^-1/2, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x_BChw.shape
        qkv = rearrange(self.qkv(self.norm(x_BChw)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # default scale = C^-1/2
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return x_BChw + self.proj(out)


class Downsample2x(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResolutionLevel(nn.Module):
    """Resnet blocks at one resolution, each optionally followed by attention, then a resample."""

    def __init__(self, channels_in: int, channels_out: int, num_blocks: int, use_attention: bool,
                 resample: nn.Module | None, dropout: float):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(channels_in if i == 0 else channels_out, channels_out, dropout)
            for i in range(num_blocks)
        )
        self.attentions = nn.ModuleList(
            AttnBlock(channels_out) for _ in range(num_blocks if use_attention else 0)
        )
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions:
                x = self.attentions[i](x)
        return self.resample(x) if self.resample is not None else x


class MidBlock(nn.Module):
    """Resnet, attention, resnet at the lowest resolution."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.resnet_1 = ResnetBlock(channels, channels, dropout)
        self.attention = AttnBlock(channels)
        self.resnet_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet_2(self.attention(self.resnet_1(x)))
