"""Rotary position tables of HART: 1-D on text tokens, the official 2-D layout on image tokens.

The 2-D table is laid out [row | row | col | col] (head_dim / 4 each) and applied with the
ordinary `rotate_half` over the whole head, so dims k and k + head_dim/2 pair a row angle with a
column angle (official-behaviour: rope-2d). That is not a rotation when row != col; it is
reproduced because the released weights were trained with it. Tables are computed in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def inverse_frequencies(head_dim: int, stride: int, theta: float, device: torch.device) -> torch.Tensor:
    """theta ** -(arange(0, head_dim, stride) / head_dim), as the official tables compute it."""
    exponents = torch.arange(0, head_dim, stride, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta ** exponents)


def text_rope(position_ids_BT: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, T, head_dim) for text positions (HF Llama layout [angles | angles])."""
    inv_freq = inverse_frequencies(head_dim, 2, theta, position_ids_BT.device)
    angles = position_ids_BT.float()[..., None] * inv_freq  # B T hd/2
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def image_positions(patch_nums: Sequence[int], si: int, offset_B: torch.Tensor) -> torch.Tensor:
    """(B, pn*pn, 2) float (row, col) coordinates of scale si on the last scale's grid, + offset.

    Token (i, j) of a pn x pn scale sits at (i / pn * pK, j / pn * pK); both coordinates are
    shifted by the last text position id of each sample (0 for the unconditional branch).
    """
    pn, largest = patch_nums[si], patch_nums[-1]
    grid = torch.arange(pn, device=offset_B.device)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    coords = coords / pn * largest
    return coords[None] + offset_B.reshape(-1, 1, 1)


def image_rope(positions_Bl2: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, l, head_dim) for 2-D image positions, official [row | row | col | col] layout."""
    inv_freq = inverse_frequencies(head_dim, 4, theta, positions_Bl2.device)
    angles = positions_Bl2.float()[..., None] * inv_freq  # B l 2 hd/4
    angles = torch.cat([angles, angles], dim=-1).flatten(-2)  # B l hd
    return angles.cos(), angles.sin()


def block_tables(cos_BLd: torch.Tensor, sin_BLd: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables as every block applies them, prepared once per forward pass: cast to the
    compute dtype, shaped (B, L, 1, 1, d) to broadcast over the [q, k] pair and the heads of the
    (B, L, 3, H, d) projection, and with rotate_half's sign folded into sin (see `rotate`)."""
    half = sin_BLd.shape[-1] // 2
    signed_sin = torch.cat([-sin_BLd[..., :half], sin_BLd[..., half:]], dim=-1)
    return cos_BLd[:, :, None, None].to(dtype), signed_sin[:, :, None, None].to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with tables from `block_tables`.

    rotate_half(x) * sin = [-x2 s1, x1 s2] = roll(x, d/2) * [-s1, s2]: one roll and one fused
    multiply-add instead of a neg, a cat and two more passes.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)
