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


def ssim(images: torch.Tensor, references: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, valid positions only, averaged over positions and channels.

    Args:
        images, references: (B, C, H, W) in [0, data_range], H and W >= 11.
    Returns:
        (B,) float32 in [-1, 1]; 1 for identical images.
    """
    if images.shape != references.shape:
        raise ValueError(f"shape mismatch: {tuple(images.shape)} vs {tuple(references.shape)}")
    if min(images.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {tuple(images.shape[-2:])}")
    x, y = images.double(), references.double()
    C = x.shape[1]
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-coords.square() / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(C, 1, 11, 11).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(dim=1).float()
