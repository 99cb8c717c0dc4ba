"""Gaussian diffusion schedule of the residual head: cosine betas, respacing, posterior terms.

improved-DDPM's cosine schedule, as MAR and HART use it. Schedules are computed in float64 on
the CPU and cast to float32 when indexed, so they work on devices without float64 (Apple MPS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Largest beta of the cosine schedule (Nichol & Dhariwal 2021).
MAX_BETA = 0.999
# Offset s of the cosine schedule's alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2) ** 2.
COSINE_OFFSET = 0.008


def cosine_betas(num_steps: int) -> np.ndarray:
    """beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999), float64."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), MAX_BETA)
                     for i in range(num_steps)], dtype=np.float64)


def respaced_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """Evenly spaced kept steps, first and last included: 1000 -> 8 gives 0, 143, ..., 856, 999."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"cannot respace {num_train_steps} training steps to {num_steps}")
    stride = (num_train_steps - 1) / (num_steps - 1) if num_steps > 1 else 1
    steps, position = [], 0.0
    for _ in range(num_steps):
        steps.append(round(position))
        position += stride
    return sorted(set(steps))


@dataclass(frozen=True)
class DiffusionSchedule:
    """Per-step coefficients of a (possibly respaced) schedule, as float64 CPU tensors.

    `timestep_map[i]` is the training-scale timestep the network sees at step i.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    timestep_map: torch.Tensor

    @classmethod
    def cosine(cls, num_train_steps: int, num_steps: int | None = None) -> "DiffusionSchedule":
        """The cosine schedule, respaced to `num_steps` (default: all training steps)."""
        base = np.cumprod(1.0 - cosine_betas(num_train_steps))
        kept = respaced_timesteps(num_train_steps, num_steps or num_train_steps)
        betas, last = [], 1.0
        for t in kept:
            betas.append(1 - base[t] / last)
            last = base[t]
        betas = np.array(betas, dtype=np.float64)
        return cls(betas=torch.from_numpy(betas), alphas_cumprod=torch.from_numpy(np.cumprod(1 - betas)),
                   timestep_map=torch.tensor(kept, dtype=torch.int64))

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        """log of the posterior variance, its (zero) first entry replaced by the second."""
        variance = self.posterior_variance
        if len(variance) > 1:
            variance = torch.cat([variance[1:2], variance[1:]])
        return torch.log(variance)

    def coefficients(self, i: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Scalar float32 coefficients of step i (computed in float64)."""
        ac, ac_prev, beta = self.alphas_cumprod[i], self.alphas_cumprod_prev[i], self.betas[i]
        values = {
            "sqrt_recip_ac": torch.sqrt(1.0 / ac),
            "sqrt_recipm1_ac": torch.sqrt(1.0 / ac - 1),
            "mean_coef_x0": beta * torch.sqrt(ac_prev) / (1 - ac),
            "mean_coef_xt": (1 - ac_prev) * torch.sqrt(1 - beta) / (1 - ac),
            "min_log": self.posterior_log_variance_clipped[i],
            "max_log": torch.log(beta),
        }
        return {k: v.to(device=device, dtype=torch.float32) for k, v in values.items()}
