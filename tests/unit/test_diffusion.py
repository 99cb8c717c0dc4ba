import math

import numpy as np
import torch

from openhart.config import DiffusionHeadConfig
from openhart.diffusion import DiffusionHead, DiffusionSchedule, sample_residual
from openhart.diffusion.schedule import cosine_betas, respaced_timesteps


def test_respacing_of_the_release():
    assert respaced_timesteps(1000, 8) == [0, 143, 285, 428, 571, 714, 856, 999]
    assert respaced_timesteps(1000, 1000) == list(range(1000))
    assert respaced_timesteps(1000, 1) == [0]


def test_cosine_schedule_closed_form():
    betas = cosine_betas(1000)
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert math.isclose(betas[0], 1 - alpha_bar(0.001) / alpha_bar(0), rel_tol=1e-12)
    assert betas[-1] == 0.999
    spaced = DiffusionSchedule.cosine(1000, 8)
    np.testing.assert_allclose(
        spaced.betas.numpy(),
        [4.128e-5, 0.05488, 0.14875, 0.24955, 0.36607, 0.51757, 0.73544, 1.0], rtol=2e-3)
    full_ac = np.cumprod(1 - betas)
    np.testing.assert_allclose(spaced.alphas_cumprod.numpy(), full_ac[spaced.timestep_map.numpy()],
                               rtol=1e-9)


def _head():
    torch.manual_seed(0)
    head = DiffusionHead(DiffusionHeadConfig(width=32, depth=2), latent_channels=4, cond_dim=8)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return head.eval()


def test_same_generator_same_sample_and_range():
    head, schedule = _head(), DiffusionSchedule.cosine(1000, 8)
    cond = torch.randn(6, 8)
    a = sample_residual(head, cond, schedule, guidance=2.0, generator=torch.Generator().manual_seed(1))
    b = sample_residual(head, cond, schedule, guidance=2.0, generator=torch.Generator().manual_seed(1))
    c = sample_residual(head, cond, schedule, guidance=2.0, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 0.6 + 1e-6  # x0 is clipped to [-1, 1], then scaled by 0.6


def test_initialisation_zeroes_the_output():
    head = DiffusionHead(DiffusionHeadConfig(width=16, depth=1), latent_channels=4, cond_dim=8)
    head.initialize_weights()
    out = head(torch.randn(3, 4), torch.tensor([1, 500, 999]), torch.randn(3, 8))
    assert torch.equal(out, torch.zeros(3, 8))
