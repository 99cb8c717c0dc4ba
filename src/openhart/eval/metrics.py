"""Pixel-level reconstruction metrics. Each returns a float per call or a tensor per image."""

from __future__ import annotations

import torch


def psnr(images: torch.Tensor, references: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image.

    Args:
        images, references: (B, C, H, W) in [0, data_range].
    Returns:
        (B,) float32; +inf for identical images.
    """
    if images.shape != references.shape:
        raise ValueError(f"shape mismatch: {tuple(images.shape)} vs {tuple(references.shape)}")
    mse = (images.float() - references.float()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)
