import math

import pytest
import torch

from openhart.config import DiffusionHeadConfig
from openhart.diffusion import DiffusionHead, DiffusionSchedule
from openhart.train.losses import ar_loss, condition_dropout_mask, diffusion_loss


class OracleHead(DiffusionHead):
    """Predicts the true noise and the posterior variance (v = -1): the loss optimum."""

    def __init__(self, noise, eps_offset=0.0):
        super().__init__(DiffusionHeadConfig(width=8, depth=1), latent_channels=4, cond_dim=4)
        self.noise, self.eps_offset = noise, eps_offset

    def forward(self, x, t, cond):
        return torch.cat([self.noise + self.eps_offset, -torch.ones_like(self.noise)], dim=1)


def test_diffusion_loss_is_zero_at_the_optimum_for_t_above_zero():
    schedule = DiffusionSchedule.cosine(1000)
    noise = torch.randn(6, 4)
    target = torch.rand(6, 4) * 1.2 - 0.6  # residuals within the head's range
    t = torch.tensor([1, 10, 100, 500, 900, 999])
    loss = diffusion_loss(OracleHead(noise), schedule, target, torch.zeros(6, 4), t_N=t, noise_NC=noise)
    assert loss.abs() < 1e-4
    worse = diffusion_loss(OracleHead(noise, 0.1), schedule, target, torch.zeros(6, 4), t_N=t, noise_NC=noise)
    assert worse > loss + 0.005  # MSE of a 0.1 offset is 0.01, plus the bound


def test_decoder_nll_at_t0_and_gradients_of_the_bound():
    schedule = DiffusionSchedule.cosine(1000)
    head = DiffusionHead(DiffusionHeadConfig(width=16, depth=1), latent_channels=4, cond_dim=4)
    torch.manual_seed(0)
    target, cond = torch.rand(5, 4) - 0.5, torch.randn(5, 4)
    t0 = diffusion_loss(head, schedule, target, cond, t_N=torch.zeros(5, dtype=torch.long),
                        noise_NC=torch.randn(5, 4))
    assert torch.isfinite(t0) and t0 > 0
    loss = diffusion_loss(head, schedule, target, cond, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_ar_loss_is_cross_entropy():
    logits = torch.zeros(2, 3, 5)
    assert math.isclose(ar_loss(logits, torch.zeros(2, 3, dtype=torch.long)).item(), math.log(5), rel_tol=1e-6)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_condition_dropout_drops_its_configured_fraction(rate):
    """The official `torch.randn(B) < p` dropped ~54% of rows for p = 0.1; this must drop p."""
    generators = [torch.Generator().manual_seed(i) for i in range(20_000)]
    mask = condition_dropout_mask(generators, rate)
    assert abs(mask.float().mean().item() - rate) < 0.015
    # each row depends on its own generator only: the same drops in any batch split
    assert torch.equal(mask[:100], condition_dropout_mask([torch.Generator().manual_seed(i) for i in range(100)], rate))
    with pytest.raises(ValueError, match="dropout rate"):
        condition_dropout_mask(generators[:4], 1.5)
