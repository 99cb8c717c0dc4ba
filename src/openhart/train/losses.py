"""Training losses: next-scale cross-entropy, the residual diffusion loss, condition dropout.

The diffusion loss is improved-DDPM's for learned-range variance (as MAR's DiffLoss): MSE on the
predicted noise plus the variational bound on the variance only (the mean is detached in that
term), in bits per dimension; the decoder NLL replaces the KL at t = 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..diffusion.head import DiffusionHead
from ..diffusion.schedule import DiffusionSchedule


def ar_loss(logits_BLV: torch.Tensor, idx_BL: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the teacher-forced code logits against the ground-truth codes."""
    return F.cross_entropy(logits_BLV.flatten(0, 1).float(), idx_BL.flatten())


def condition_dropout_mask(generators: list[torch.Generator], rate: float,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) bool, True where the text condition is dropped: row b with probability `rate`, drawn
    from its example's own generator (the same drop whatever the batch or the process count)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"condition dropout rate must be in [0, 1], got {rate}")
    return torch.stack([torch.rand((), generator=g, device=device) for g in generators]) < rate


def diffusion_loss(head: DiffusionHead, schedule: DiffusionSchedule, target_NC: torch.Tensor,
                   cond_NC: torch.Tensor, generator: torch.Generator | None = None,
                   t_N: torch.Tensor | None = None, noise_NC: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Mean per-token loss of the residual head on residual tokens `target` (latent units).

    Args:
        schedule: the full training schedule (`DiffusionSchedule.cosine(T)`).
        target_NC: residual tokens; the head models target / residual_scale.
        cond_NC: per-token conditions from the transformer.
        t_N, noise_NC: explicit timesteps and noise (tests); drawn from `generator` otherwise.
    """
    x0 = target_NC.float() / head.config.residual_scale
    N, device = x0.shape[0], x0.device
    if t_N is None:
        t_N = torch.randint(0, schedule.num_steps, (N,), generator=generator, device=device)
    if noise_NC is None:
        noise_NC = torch.randn(x0.shape, generator=generator, device=device)
    c = _per_row(schedule, t_N)
    x_t = c["sqrt_ac"] * x0 + c["sqrt_one_minus_ac"] * noise_NC
    out = head(x_t.to(cond_NC.dtype), schedule.timestep_map.to(device)[t_N], cond_NC).float()
    eps, var_values = out.chunk(2, dim=1)
    mse = (noise_NC - eps).square().mean(dim=1)
    vb = _variational_bound(c, x0, x_t, eps.detach(), var_values, t_N)
    return (mse + vb).mean()


def _per_row(schedule: DiffusionSchedule, t_N: torch.Tensor) -> dict[str, torch.Tensor]:
    """Schedule terms for each row's timestep, float32 (N, 1) on t's device."""
    t = t_N.cpu()
    ac, ac_prev, beta = schedule.alphas_cumprod[t], schedule.alphas_cumprod_prev[t], schedule.betas[t]
    terms = {
        "sqrt_ac": ac.sqrt(), "sqrt_one_minus_ac": (1 - ac).sqrt(),
        "sqrt_recip_ac": (1 / ac).sqrt(), "sqrt_recipm1_ac": (1 / ac - 1).sqrt(),
        "mean_coef_x0": beta * ac_prev.sqrt() / (1 - ac),
        "mean_coef_xt": (1 - ac_prev) * (1 - beta).sqrt() / (1 - ac),
        "min_log": schedule.posterior_log_variance_clipped[t], "max_log": beta.log(),
    }
    return {k: v.to(device=t_N.device, dtype=torch.float32)[:, None] for k, v in terms.items()}


def _variational_bound(c: dict, x0: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor,
                       var_values: torch.Tensor, t_N: torch.Tensor) -> torch.Tensor:
    """KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) in bits/dim; the decoder NLL at t = 0."""
    frac = (var_values + 1) / 2
    log_variance = frac * c["max_log"] + (1 - frac) * c["min_log"]
    pred_x0 = c["sqrt_recip_ac"] * x_t - c["sqrt_recipm1_ac"] * eps
    mean = c["mean_coef_x0"] * pred_x0 + c["mean_coef_xt"] * x_t
    true_mean = c["mean_coef_x0"] * x0 + c["mean_coef_xt"] * x_t
    kl = 0.5 * (-1.0 + log_variance - c["min_log"] + torch.exp(c["min_log"] - log_variance)
                + (true_mean - mean).square() * torch.exp(-log_variance))
    kl = kl.mean(dim=1) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance).mean(dim=1) / math.log(2.0)
    return torch.where(t_N == 0, nll, kl)


def _discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                         log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of x in [-1, 1] under a Gaussian discretised into 256 bins (iDDPM)."""
    def cdf(v):  # tanh approximation of the standard normal CDF
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v.pow(3))))

    centered, inv_std = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv_std * (centered + 1.0 / 255)), cdf(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
