"""Resizing of latent maps between scales: "area" downsampling and bicubic upsampling.

Both match `F.interpolate(mode="area" | "bicubic", align_corners=False)`. On devices whose kernels
reject non-divisible area bins or lack bicubic (Apple MPS), the same maps are applied as explicit
separable matrices, which `tests/unit/test_resample.py` checks against PyTorch on the CPU.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# PyTorch's cubic convolution coefficient (Keys' A) for mode="bicubic".
BICUBIC_A = -0.75


def area_downsample(x_BChw: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling of a square map to `size` x `size` (overlapping bins allowed)."""
    if x_BChw.shape[-1] == size and x_BChw.shape[-2] == size:
        return x_BChw
    if _use_matrix_path(x_BChw):
        return _apply_separable(x_BChw, _area_matrix, size)
    return F.interpolate(x_BChw, size=(size, size), mode="area")


def bicubic_upsample(x_BChw: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of a square map to `size` x `size` (A = -0.75, align_corners=False)."""
    if x_BChw.shape[-1] == size and x_BChw.shape[-2] == size:
        return x_BChw
    if _use_matrix_path(x_BChw):
        return _apply_separable(x_BChw, _bicubic_matrix, size)
    return F.interpolate(x_BChw, size=(size, size), mode="bicubic", align_corners=False)


def _use_matrix_path(x: torch.Tensor) -> bool:
    return x.device.type == "mps"


def _apply_separable(x_BChw: torch.Tensor, build, size: int) -> torch.Tensor:
    h, w = x_BChw.shape[-2:]
    rows = build(h, size).to(device=x_BChw.device, dtype=x_BChw.dtype)
    cols = build(w, size).to(device=x_BChw.device, dtype=x_BChw.dtype)
    return rows @ x_BChw @ cols.T


@lru_cache(maxsize=64)
def _area_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) averaging matrix: output cell i covers [floor(i*in/out), ceil((i+1)*in/out))."""
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m.float()


@lru_cache(maxsize=64)
def _bicubic_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) bicubic interpolation matrix with border clamping, as PyTorch computes it."""
    scale = in_size / out_size
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        t = src - base
        for offset, weight in zip(range(-1, 3), _cubic_weights(t)):
            m[i, min(max(base + offset, 0), in_size - 1)] += weight
    return m.float()


def _cubic_weights(t: float) -> tuple[float, float, float, float]:
    a = BICUBIC_A

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)
