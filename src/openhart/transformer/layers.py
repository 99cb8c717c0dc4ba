"""Transformer building blocks in plain PyTorch: attention with RoPE and a KV cache, SwiGLU MLP,
the pre-norm block (one RMSNorm shared by both sublayers) and the AdaLN output norm.

Spec sections 3.4-3.9.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..common import RMSNorm
from ..config import TransformerConfig
from .kv_cache import KVCache
from .rope import apply_rope

# VAR's attention scale: 0.25 / sqrt(head_dim) instead of 1 / sqrt(head_dim) (spec 3.6, quirk 2).
ATTENTION_SCALE_FACTOR = 0.25


class Attention(nn.Module):
    """Multi-head self-attention; q and v have biases, k has none; RoPE on q and k."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        C = config.embed_dim
        self.num_heads = config.num_heads
        self.scale = ATTENTION_SCALE_FACTOR / math.sqrt(config.head_dim)
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.out = nn.Linear(C, C)

    def forward(self, x_BLC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        """Attend over `x` itself (teacher forcing, with `attn_mask`) or over the cache + `x`."""
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x_BLC, self.qkv.weight, bias)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.out(rearrange(out, "b h l d -> b l (h d)"))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """x += attn(norm(x)); x += mlp(norm(x)), with the same norm weights for both (spec 3.5)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp = SwiGLU(config.embed_dim, config.mlp_hidden)

    def forward(self, x_BLC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x_BLC = x_BLC + self.attn(self.norm(x_BLC), rope, attn_mask, cache, layer)
        return x_BLC + self.mlp(self.norm(x_BLC))


class AdaLNHeadNorm(nn.Module):
    """RMSNorm(x) * (1 + scale) + shift, (scale, shift) from the max-pooled text condition."""

    def __init__(self, dim: int, cond_dim: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x_BlC: torch.Tensor, cond_BTD: torch.Tensor) -> torch.Tensor:
        pooled = cond_BTD.max(dim=1, keepdim=True).values  # every slot, padding included (quirk 4)
        scale, shift = self.modulation(F.silu(pooled)).chunk(2, dim=-1)
        return self.norm(x_BlC) * (1 + scale) + shift
