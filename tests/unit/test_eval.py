import pytest
import torch

from openhart.eval.fid import frechet_distance, kernel_inception_distance
from openhart.eval.inception import InceptionFeatures, preprocess
from openhart.eval.metrics import psnr, ssim


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(noisy, x) < 0.9).all() and (ssim(noisy, x) > 0).all()
    # a constant offset lowers only the luminance term
    assert ssim((x * 0.5 + 0.25), x * 0.5 + 0.25).allclose(torch.ones(2))


def test_fid_of_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4000, 4, generator=g, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4I) in 4 dims: 4 * 1 + 4 * (1 + 4 - 2 * 2) = 8
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.08)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(1)
    a, a2 = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    b = torch.randn(400, 16, generator=g) + 0.5
    same, _ = kernel_inception_distance(a, a2, subsets=20)
    different, _ = kernel_inception_distance(a, b, subsets=20)
    assert different > 10 * abs(same), (same, different)


def test_too_few_images_are_refused():
    with pytest.raises(ValueError, match="need at least 100"):
        frechet_distance(torch.randn(50, 8), torch.randn(500, 8))


def test_preprocessing_quantises_resizes_and_maps_to_the_tf_range():
    x = torch.ones(1, 3, 64, 64)
    y = preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    torch.testing.assert_close(y, torch.full_like(y, 127 / 128))
    assert preprocess(torch.zeros(1, 3, 299, 299)).eq(-1).all()


def test_shipped_inception_gives_2048_pool_features():
    net = InceptionFeatures(batch_size=2)
    feats = net(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
