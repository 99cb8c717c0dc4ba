"""Reverse diffusion of the residual head: ancestral (improved-DDPM) sampling with learned variance.

Classifier-free guidance (official-behaviour: guidance-schedule) acts on the predicted noise
only: the network sees the
conditional x twice, with the conditional and the unconditional condition, and
eps = (1 + g) eps_cond - g eps_uncond (HART's convention). The predicted x0 is clipped to [-1, 1]
and the result is scaled by `residual_scale` (0.6). All noise comes from one `torch.Generator`
unless it is supplied explicitly (`DiffusionNoise`, used by the conformance tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .head import DiffusionHead
from .schedule import DiffusionSchedule


@dataclass
class DiffusionNoise:
    """Explicit noise: `initial` (N, Cv) and one (N, Cv) draw per step, in sampling order."""

    initial: torch.Tensor
    steps: Sequence[torch.Tensor]


@dataclass
class DiffusionStep:
    """One reverse step: the step index (counting down), x entering, predicted x0, x leaving."""

    index: int
    x_in: torch.Tensor
    pred_x0: torch.Tensor
    x_out: torch.Tensor


def guided_prediction(head: DiffusionHead, x_NCv: torch.Tensor, t_M: torch.Tensor,
                      cond_MC: torch.Tensor, guidance: float | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, variance values) for x, each (N, Cv).

    With `guidance=None`, t and cond have N rows and the head runs once. Otherwise they have
    2N rows, [cond ; uncond]; the head runs on [x ; x] and the noise is guided.
    """
    Cv = x_NCv.shape[1]
    if guidance is None:
        out = head(x_NCv, t_M, cond_MC)
        return out[:, :Cv], out[:, Cv:]
    out = head(torch.cat([x_NCv, x_NCv]), t_M, cond_MC)
    eps_cond, eps_uncond = out[:, :Cv].chunk(2)
    return eps_cond * (1 + guidance) - guidance * eps_uncond, out[: len(x_NCv), Cv:]


def reverse_steps(head: DiffusionHead, cond_MC: torch.Tensor, schedule: DiffusionSchedule, *,
                  guidance: float | None, generator: torch.Generator | None = None,
                  temperature: float = 1.0, noise: DiffusionNoise | None = None
                  ) -> Iterator[DiffusionStep]:
    """Yield each reverse step from pure noise to x0 (in the head's scaled residual units)."""
    N = cond_MC.shape[0] if guidance is None else cond_MC.shape[0] // 2
    Cv = head.latent_channels
    device, dtype = cond_MC.device, cond_MC.dtype
    x = (noise.initial.to(device, dtype) if noise is not None
         else torch.randn(N, Cv, generator=generator, device=device, dtype=dtype))
    timestep_map = schedule.timestep_map.to(device)
    for k, i in enumerate(reversed(range(schedule.num_steps))):
        t = timestep_map[i].expand(cond_MC.shape[0])
        eps, var_values = guided_prediction(head, x, t, cond_MC, guidance)
        z = None
        if i > 0:
            z = (noise.steps[k].to(device, torch.float32) if noise is not None
                 else torch.randn(N, Cv, generator=generator, device=device, dtype=torch.float32))
        pred_x0, x_out = posterior_step(schedule.coefficients(i, device), x, eps, var_values, z,
                                        temperature)
        yield DiffusionStep(index=i, x_in=x, pred_x0=pred_x0, x_out=x_out.to(dtype))
        x = x_out.to(dtype)


def posterior_step(coefficients: dict[str, torch.Tensor], x_NCv: torch.Tensor, eps_NCv: torch.Tensor,
                   var_values_NCv: torch.Tensor, z_NCv: torch.Tensor | None, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step in fp32: clipped x0 from eps, posterior mean, learned-range variance.

    Returns:
        (predicted x0, x at the previous step); `z=None` on the final step (no noise).
    """
    c = coefficients
    x, eps = x_NCv.float(), eps_NCv.float()
    frac = (var_values_NCv.float() + 1) / 2
    log_variance = frac * c["max_log"] + (1 - frac) * c["min_log"]
    pred_x0 = (c["sqrt_recip_ac"] * x - c["sqrt_recipm1_ac"] * eps).clamp(-1, 1)
    mean = c["mean_coef_x0"] * pred_x0 + c["mean_coef_xt"] * x
    if z_NCv is None:
        return pred_x0, mean
    return pred_x0, mean + torch.exp(0.5 * log_variance) * z_NCv * temperature


@torch.no_grad()
def sample_residual(head: DiffusionHead, cond_MC: torch.Tensor, schedule: DiffusionSchedule, *,
                    guidance: float | None, generator: torch.Generator | None = None,
                    temperature: float = 1.0, noise: DiffusionNoise | None = None) -> torch.Tensor:
    """Sample residual tokens (N, Cv) for per-token conditions.

    Args:
        cond_MC: conditions; M = N without guidance, M = 2N ([cond ; uncond]) with it.
        guidance: CFG strength g, or None for plain conditional sampling.
        generator: source of every noise draw (ignored when `noise` is given).
    Returns:
        The sampled residual in latent units (x0 * residual_scale).
    """
    step = None
    for step in reverse_steps(head, cond_MC, schedule, guidance=guidance, generator=generator,
                              temperature=temperature, noise=noise):
        pass
    assert step is not None
    return step.x_out * head.config.residual_scale
