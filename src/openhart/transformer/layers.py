"""Transformer building blocks in plain PyTorch: attention with RoPE and a KV cache, SwiGLU MLP,
the pre-norm block (one RMSNorm shared by both sublayers) and the AdaLN output norm.

The official conventions they keep are named in docs/official-behaviour.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..blocks import RMSNorm
from ..config import TransformerConfig
from .kv_cache import KVCache
from .rope import rotate

# VAR's attention scale: 0.25 / sqrt(head_dim) instead of 1 / sqrt(head_dim)
# (official-behaviour: attention-scale).
ATTENTION_SCALE_FACTOR = 0.25


class BiasedLinear(nn.Linear):
    """nn.Linear whose bias can be given per call: HART's q and v biases (and the zero k bias)
    live beside the fused qkv projection, so that the checkpoint keys stay the official ones.
    Calling the module (not its weight) lets LoRA adapters wrap it (peft passes `bias` on)."""

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias if bias is None else bias)


class Attention(nn.Module):
    """Multi-head self-attention; q and v have biases, k has none; RoPE on q and k."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        C = config.embed_dim
        self.num_heads = config.num_heads
        self.scale = ATTENTION_SCALE_FACTOR / math.sqrt(config.head_dim)
        self.qkv = BiasedLinear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.out = nn.Linear(C, C)

    def project(self, x_BLC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H, L, d): strided views of one projection, q and k rotated together.

        `rope` holds the tables of `rope.block_tables`. SDPA and the cache write take strides, so
        nothing is copied into (B, H, L, d) layout.
        """
        B, L, _ = x_BLC.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = self.qkv(x_BLC, bias=bias).view(B, L, 3, self.num_heads, -1)
        if rope[0].dtype != qkv.dtype:  # autocast: the projection is bf16, the residual stream fp32
            rope = (rope[0].to(qkv.dtype), rope[1].to(qkv.dtype))
        q, k = rotate(qkv[:, :, :2], *rope).transpose(1, 3).unbind(2)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
               layer: int = 0) -> torch.Tensor:
        """Attention over `k, v` themselves (teacher forcing, with `attn_mask`) or over the
        cache + them, (B, L, C) before the output projection."""
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        else:
            out = cache.attend(layer, q, k, v, self.scale)
        return rearrange(out, "b h l d -> b l (h d)")


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate(x), self.up(x)
        if torch.is_grad_enabled():
            return self.down(F.silu(gate) * up)
        # inference: in place on the fresh projection, two (B, L, hidden) buffers fewer to
        # allocate and fault in (the largest activations of a block)
        return self.down(F.silu(gate, inplace=True).mul_(up))


class Block(nn.Module):
    """x += attn(norm(x)); x += mlp(norm(x)), with the same norm weights for both
    (official-behaviour: shared-block-norm)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm = RMSNorm(config.embed_dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp = SwiGLU(config.embed_dim, config.mlp_hidden)

    def forward(self, x_BLC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        q, k, v = self.attention_input(x_BLC, rope)
        return self.attention_output_and_mlp(x_BLC, self.attn.attend(q, k, v, attn_mask, cache, layer))

    # The two pure stretches of the block, around the attention kernel and the cache write:
    # `compile_regions` compiles them (elementwise ops fused into the matmuls' neighbours).

    def attention_input(self, x_BLC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.attn.project(self.norm(x_BLC), rope)

    def attention_output_and_mlp(self, x_BLC: torch.Tensor, attended_BLC: torch.Tensor) -> torch.Tensor:
        x_BLC = x_BLC + self.attn.out(attended_BLC)
        mlp = self.mlp(self.norm(x_BLC))
        return x_BLC + mlp if torch.is_grad_enabled() else x_BLC.add_(mlp)  # x_BLC is this block's own


class AdaLNHeadNorm(nn.Module):
    """RMSNorm(x) * (1 + scale) + shift, (scale, shift) from the max-pooled text condition."""

    def __init__(self, dim: int, cond_dim: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x_BlC: torch.Tensor, cond_BTD: torch.Tensor) -> torch.Tensor:
        # every slot, padding included (official-behaviour: unmasked-padding)
        pooled = cond_BTD.max(dim=1, keepdim=True).values
        scale, shift = self.modulation(F.silu(pooled)).chunk(2, dim=-1)
        return self.norm(x_BlC) * (1 + scale) + shift
