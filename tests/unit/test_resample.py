import pytest
import torch
import torch.nn.functional as F

from openhart.tokenizer import resample


@pytest.mark.parametrize("in_size, out_size", [(64, 1), (64, 3), (64, 21), (64, 48), (8, 6), (10, 7)])
def test_area_matrix_matches_pytorch(in_size, out_size):
    x = torch.randn(2, 5, in_size, in_size, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(out_size, out_size), mode="area")
    got = resample._apply_separable(x, resample._area_matrix, out_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("in_size, out_size", [(1, 64), (2, 64), (3, 8), (7, 10), (21, 64), (48, 64)])
def test_bicubic_matrix_matches_pytorch(in_size, out_size):
    x = torch.randn(2, 5, in_size, in_size, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(out_size, out_size), mode="bicubic", align_corners=False)
    got = resample._apply_separable(x, resample._bicubic_matrix, out_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_same_size_is_identity():
    x = torch.randn(1, 3, 8, 8)
    assert resample.area_downsample(x, 8) is x
    assert resample.bicubic_upsample(x, 8) is x
    want = F.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(want, x, atol=0, rtol=0)


def test_one_by_one_upsample_is_constant():
    x = torch.randn(2, 4, 1, 1)
    up = resample.bicubic_upsample(x, 16)
    torch.testing.assert_close(up, x.expand(-1, -1, 16, 16))
