"""HART's next-scale transformer: text prefix + multi-scale image tokens, llama blocks.

Paper section 3.2. Two paths over the same weights: `forward` (teacher forcing
over all scales with a block-causal mask, for training) and `forward_scale` (one scale against an
explicit KV cache, for sampling). `tests/unit/test_transformer.py` checks that they agree.

Shape legend: B batch, K scales, L image tokens over all scales, l tokens at one scale, T text
tokens, S = T + L - 1 sequence length, C model width, Cv latent channels, V codebook size,
D text feature width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from ..blocks import RMSNorm, TimestepEmbedding
from ..config import TokenizerConfig, TransformerConfig
from ..kernels import require_torch_compile_toolchain
from .kv_cache import KVCache
from .layers import AdaLNHeadNorm, Block
from .rope import block_tables, image_positions, image_rope, text_rope


@dataclass
class TeacherForcingOutput:
    """Attributes:
        logits: (B, L, V) fp32; row 0 predicts scale 0 (read at the last text slot), then scale si
            occupies rows [sum_{j<si} pn_j**2, +pn_si**2) in raster order.
        hidden: (B, S, C) output of the last block (before the head norm).
    """

    logits: torch.Tensor
    hidden: torch.Tensor


class HARTTransformer(nn.Module):
    """The released HART transformer (no per-block AdaLN; text conditioning through the prefix).

    It predicts the codes of the tokenizer described by `tokens`: its scales (`patch_nums`), its
    latent width (the input of `word_embed`) and its codebook size (the output of `head`).

    Methods that take `patch_nums` expect the model's scales or a prefix of them, checked once
    where a caller enters (`forward`, or `check_patch_nums` in the sampler).
    """

    def __init__(self, config: TransformerConfig, tokens: TokenizerConfig):
        super().__init__()
        self.config = config
        self.patch_nums = tokens.patch_nums
        C = config.embed_dim
        self.context_norm = (RMSNorm(config.context_dim, config.norm_eps)
                             if config.use_context_norm else nn.Identity())
        self.context_embed = nn.Linear(config.context_dim, C)
        self.word_embed = nn.Linear(tokens.latent_channels, C)
        self.level_embed = TimestepEmbedding(C)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.head_norm = AdaLNHeadNorm(C, C, config.norm_eps)
        self.head = nn.Linear(C, tokens.vocab_size)
        self.diffusion_cond_norm = RMSNorm(C, config.norm_eps)

    # ----- embeddings --------------------------------------------------------------------------

    def embed_context(self, context_BTD: torch.Tensor) -> torch.Tensor:
        """Text features (B, T, D) -> prefix tokens and head condition (B, T, C)."""
        return self.context_embed(self.context_norm(context_BTD))

    def level_embedding(self, si: int | torch.Tensor) -> torch.Tensor:
        """Embedding of level(s) si (0 = text, s = scale s), (C,) or (N, C)."""
        levels = torch.as_tensor(si, device=self.head.weight.device).reshape(-1)
        embedding = self.level_embed(levels)
        return embedding[0] if isinstance(si, int) else embedding

    def embed_scale_input(self, x_BlCv: torch.Tensor, si: int) -> torch.Tensor:
        """Latent map of scale si (B, l, Cv) -> input tokens (B, l, C)."""
        return self.word_embed(x_BlCv.to(self.word_embed.weight.dtype)) + self.level_embedding(si)

    # ----- positions -----------------------------------------------------------------------------

    def text_rope(self, position_ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return text_rope(position_ids_BT, self.config.head_dim, self.config.rope_theta)

    def scale_rope(self, si: int, position_ids_BT: torch.Tensor, patch_nums: Sequence[int],
                   token_idx_Bl: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables of scale si >= 1 (optionally of a subset of its tokens, (B, l) indices).

        Positions are laid out on the grid of the last of `patch_nums` (the model's scales, or a
        prefix of them for a lower resolution).
        """
        positions = image_positions(patch_nums, si, position_ids_BT[:, -1])
        if token_idx_Bl is not None:
            positions = torch.gather(positions.expand(token_idx_Bl.shape[0], -1, -1), 1,
                                     token_idx_Bl[..., None].expand(-1, -1, 2))
        return image_rope(positions, self.config.head_dim, self.config.rope_theta)

    # ----- teacher forcing -----------------------------------------------------------------------

    def forward(self, context_BTD: torch.Tensor, position_ids_BT: torch.Tensor,
                inputs_BLCv: torch.Tensor, *, patch_nums: Sequence[int] | None = None,
                last_scale_keep_Bn: torch.Tensor | None = None,
                checkpointing: bool = False) -> TeacherForcingOutput:
        """All scales at once with the block-causal mask.

        Args:
            context_BTD: text features (B, T, D).
            position_ids_BT: text position ids (B, T), cumsum(mask) - 1.
            inputs_BLCv: teacher-forcing input of scales 1..K-1, (B, L - 1, Cv).
            patch_nums: a prefix of the configured scales (a lower resolution; progressive
                training); all of them by default.
            last_scale_keep_Bn: positions (B, n) of the last scale's tokens to run (the others
                are dropped from the sequence, as HART's training subsamples them); all by default.
            checkpointing: recompute each block in the backward pass instead of storing its
                activations (activation checkpointing).

        Returns:
            logits over [scale 0, scales 1..K-2, kept tokens of the last scale] and the hidden states.
        """
        patch_nums = self.check_patch_nums(patch_nums)
        cond_BTC = self.embed_context(context_BTD)
        x_BSC = self.embed_sequence(cond_BTC, inputs_BLCv, patch_nums)
        levels_S = self.sequence_levels(x_BSC.device, patch_nums)
        cos, sin = self._sequence_rope(position_ids_BT, patch_nums)
        if last_scale_keep_Bn is not None:
            x_BSC, cos, sin, levels_S = self._keep_last_scale_tokens(
                last_scale_keep_Bn, x_BSC, cos, sin, levels_S, patch_nums)
        mask_SS = levels_S[:, None] >= levels_S[None, :]
        cos, sin = block_tables(cos, sin, x_BSC.dtype)
        for i, block in enumerate(self.blocks):
            if checkpointing and torch.is_grad_enabled():
                x_BSC = torch.utils.checkpoint.checkpoint(block, x_BSC, (cos, sin), attn_mask=mask_SS,
                                                          layer=i, use_reentrant=False)
            else:
                x_BSC = block(x_BSC, (cos, sin), attn_mask=mask_SS, layer=i)
        T = self.config.context_tokens
        return TeacherForcingOutput(logits=self.logits(x_BSC[:, T - 1:], cond_BTC), hidden=x_BSC)

    @staticmethod
    def _keep_last_scale_tokens(keep_Bn: torch.Tensor, x_BSC: torch.Tensor, cos: torch.Tensor,
                                sin: torch.Tensor, levels_S: torch.Tensor, patch_nums: Sequence[int]):
        """Training only: drop the last scale's tokens outside `keep_Bn` (B, n) from the
        sequence, its RoPE tables and its levels; every earlier token stays."""
        first_last = x_BSC.shape[1] - patch_nums[-1] ** 2
        B = x_BSC.shape[0]
        index_BS = torch.cat([torch.arange(first_last, device=x_BSC.device).expand(B, -1),
                              keep_Bn + first_last], dim=1)
        last_level = levels_S.new_full((keep_Bn.shape[1],), len(patch_nums) - 1)
        levels_S = torch.cat([levels_S[:first_last], last_level])
        return (_gather_rows(x_BSC, index_BS), _gather_rows(cos, index_BS), _gather_rows(sin, index_BS),
                levels_S)

    def check_patch_nums(self, patch_nums: Sequence[int] | None) -> tuple[int, ...]:
        """The configured scales, or a validated prefix of at least two of them."""
        full = self.patch_nums
        if patch_nums is None:
            return full
        patch_nums = tuple(patch_nums)
        if len(patch_nums) < 2 or patch_nums != full[: len(patch_nums)]:
            raise ValueError(f"patch_nums must be a prefix of at least two of the model's scales "
                             f"{list(full)}, got {list(patch_nums)}")
        return patch_nums

    def embed_sequence(self, cond_BTC: torch.Tensor, inputs_BLCv: torch.Tensor,
                       patch_nums: Sequence[int]) -> torch.Tensor:
        """Block input (B, S, C): [text prefix ; word_embed(inputs)] + level embeddings."""
        levels_S = self.sequence_levels(cond_BTC.device, patch_nums)
        expected = sum(pn * pn for pn in patch_nums[1:])
        if inputs_BLCv.shape[1] != expected:
            raise ValueError(f"teacher-forcing input has {inputs_BLCv.shape[1]} tokens, scales "
                             f"{list(patch_nums)} need {expected}")
        x_BSC = torch.cat([cond_BTC, self.word_embed(inputs_BLCv.to(cond_BTC.dtype))], dim=1)
        levels = torch.arange(len(patch_nums), device=levels_S.device)
        return x_BSC + self.level_embedding(levels)[levels_S]

    def sequence_levels(self, device: torch.device, patch_nums: Sequence[int]) -> torch.Tensor:
        """(S,) level id of every position: 0 for text, s for the tokens of scale s >= 1."""
        counts = [self.config.context_tokens] + [pn * pn for pn in patch_nums[1:]]
        return torch.repeat_interleave(torch.arange(len(patch_nums), device=device),
                                       torch.tensor(counts, device=device))

    def _sequence_rope(self, position_ids_BT: torch.Tensor,
                       patch_nums: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        tables = [self.text_rope(position_ids_BT)]
        tables += [self.scale_rope(si, position_ids_BT, patch_nums)
                   for si in range(1, len(patch_nums))]
        B = position_ids_BT.shape[0]
        cos = torch.cat([c.expand(B, -1, -1) for c, _ in tables], dim=1)
        sin = torch.cat([s.expand(B, -1, -1) for _, s in tables], dim=1)
        return cos, sin

    # ----- cached, one scale at a time --------------------------------------------------------------

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype,
                  patch_nums: Sequence[int]) -> KVCache:
        """An empty cache for the text prefix and the tokens of `patch_nums` (S = T + L - 1)."""
        cfg = self.config
        length = cfg.context_tokens + sum(pn * pn for pn in patch_nums) - 1
        return KVCache.allocate(cfg.depth, batch, cfg.num_heads, length, cfg.head_dim, device, dtype)

    def forward_prefix(self, x_2BTC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                       cache: KVCache, *, uncond_is_uniform: bool = False) -> torch.Tensor:
        """The text prefix of a guided [cond ; uncond] batch: `forward_scale`, except that with
        `uncond_is_uniform` the unconditional half runs on one of its T tokens.

        The default unconditional prefix is T identical zero-context tokens at position 0: each
        block gives them identical outputs, keys and values, so one token computes them all; its
        keys and values are then copied into the other T - 1 slots of the cache, and its output
        repeated, exactly what the T tokens would give.
        """
        if not uncond_is_uniform:
            return self.forward_scale(x_2BTC, rope, cache)
        B, T = x_2BTC.shape[0] // 2, x_2BTC.shape[1]
        cos, sin = rope
        cond = self.forward_scale(x_2BTC[:B], (cos[:B], sin[:B]), cache.rows(0, B))
        uncond = self.forward_scale(x_2BTC[B:, :1], (cos[B:, :1], sin[B:, :1]), cache.rows(B, 2 * B))
        for keys, values in zip(cache.keys, cache.values):
            keys[B:, :, 1:T] = keys[B:, :, :1]
            values[B:, :, 1:T] = values[B:, :, :1]
        cache.advance(T)
        return torch.cat([cond, uncond.expand(-1, T, -1)])

    def forward_scale(self, x_BlC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                      cache: KVCache) -> torch.Tensor:
        """Run the blocks on one scale's tokens, attending to the cache; append them to it.

        `rope` is the fp32 (cos, sin) of `text_rope` or `scale_rope`, (B, l, head_dim) each."""
        rope = block_tables(*rope, x_BlC.dtype)
        for i, block in enumerate(self.blocks):
            x_BlC = block(x_BlC, rope, cache=cache, layer=i)
        cache.advance(x_BlC.shape[1])
        return x_BlC

    def compile_regions(self, **options) -> None:
        """torch.compile the pure stretches of every block (regional compilation).

        Each block's norm + qkv projection + RoPE and its output projection + norm + SwiGLU +
        residuals compile to one graph each, shared by all blocks (the weights are inputs) and
        dynamic in the token count, so one compilation serves every scale. The attention kernel
        and the cache write stay eager. Compiled code is cached on disk by torch between runs.
        """
        if self.head.weight.device.type == "cpu":
            require_torch_compile_toolchain()
        for block in self.blocks:
            block.attention_input = torch.compile(block.attention_input, dynamic=True, **options)
            block.attention_output_and_mlp = torch.compile(block.attention_output_and_mlp,
                                                           dynamic=True, **options)

    # ----- outputs -------------------------------------------------------------------------------------

    def logits(self, hidden_BlC: torch.Tensor, cond_BTC: torch.Tensor) -> torch.Tensor:
        """Code logits (B, l, V) in fp32 from last-block states and the text condition."""
        return self.head(self.head_norm(hidden_BlC, cond_BTC)).float()

    def diffusion_condition(self, hidden_BlC: torch.Tensor, codes_BlCv: torch.Tensor) -> torch.Tensor:
        """Per-token condition of the residual head: norm(hidden + word_embed(code vectors))."""
        return self.diffusion_cond_norm(hidden_BlC + self.word_embed(codes_BlCv.to(hidden_BlC.dtype)))

    @staticmethod
    def scale_slices(patch_nums: Sequence[int]) -> Sequence[slice]:
        """Row ranges of each scale in the (B, L, ...) logits of `forward`."""
        slices, start = [], 0
        for pn in patch_nums:
            slices.append(slice(start, start + pn * pn))
            start += pn * pn
        return slices


def _gather_rows(x_BSX: torch.Tensor, index_BS: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, s]] for every b, s (x broadcast over the batch if its B is 1)."""
    x_BSX = x_BSX.expand(index_BS.shape[0], -1, -1)
    return torch.gather(x_BSX, 1, index_BS[..., None].expand(-1, -1, x_BSX.shape[-1]))
