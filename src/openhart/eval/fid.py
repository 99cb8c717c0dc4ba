"""FID and KID between two sets of Inception features.

FID (Heusel et al. 2017): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). With fewer
images than feature dimensions (2048) the covariances are rank-deficient and FID is biased
upwards: compare FIDs only at equal set sizes. KID (Binkowski et al. 2018) is the unbiased MMD^2
with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets; it is
reported x 1000, as is customary.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

# Fewer images than this and FID / KID are not reported (an error says so).
MIN_IMAGES = 100


def check_count(name: str, count: int, minimum: int = MIN_IMAGES) -> None:
    if count < minimum:
        raise ValueError(f"{name} has {count} images; FID and KID need at least {minimum} to mean "
                         "anything (use a larger evaluation set)")


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two (N, D) feature sets."""
    check_count("the first set", len(features_a))
    check_count("the second set", len(features_b))
    a, b = features_a.double().numpy(), features_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: regularise as the reference code does
        offset = np.eye(cov_a.shape[0]) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real
    return float(np.square(mu_a - mu_b).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def kernel_inception_distance(features_a: torch.Tensor, features_b: torch.Tensor, *, subsets: int = 100,
                              subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID x 1000: mean and standard deviation over random subsets of both sets."""
    check_count("the first set", len(features_a))
    check_count("the second set", len(features_b))
    a, b = features_a.double(), features_b.double()
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = ((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
               + (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1)) - 2 * k_xy.mean())
        values.append(float(mmd))
    values = np.array(values) * 1000
    return float(values.mean()), float(values.std())
