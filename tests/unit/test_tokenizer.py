import pytest
import torch

from openhart.config import tokenizer_hart_1024
from openhart.tokenizer import HybridTokenizer


@torch.no_grad()
def test_encode_decode_shapes(tiny_tokenizer, tiny_images):
    tokens = tiny_tokenizer.encode(tiny_images)
    pns = tiny_tokenizer.config.patch_nums
    assert tokens.patch_nums == pns
    assert [tuple(i.shape) for i in tokens.indices] == [(2, p * p) for p in pns]
    assert all(i.dtype == torch.int64 for i in tokens.indices)
    assert tokens.latent.shape == tokens.residual.shape == (2, 8, 16, 16)
    assert tokens.last_scale_input.shape == (2, 256, 8)
    for images in (tiny_tokenizer.decode_latent(tokens.latent),
                   tiny_tokenizer.decode_tokens(tokens.indices),
                   tiny_tokenizer.decode_tokens(tokens.indices, tokens.residual)):
        assert images.shape == tiny_images.shape
        assert images.min() >= -1 and images.max() <= 1


@torch.no_grad()
def test_continuous_path_is_codes_plus_residual(tiny_tokenizer, tiny_images):
    tokens = tiny_tokenizer.encode(tiny_images)
    latent = tiny_tokenizer.tokens_to_latent(tokens.indices, tokens.residual)
    torch.testing.assert_close(latent, tokens.latent, atol=1e-5, rtol=0)
    discrete = tiny_tokenizer.tokens_to_latent(tokens.indices)
    assert (discrete - tokens.latent).abs().max() > 1e-3, "residual should carry detail"


@torch.no_grad()
def test_smaller_images_use_a_prefix_of_the_scales(tiny_tokenizer):
    images = torch.zeros(1, 3, 24, 24)  # latent 6 = the 5th scale of (1, 2, 3, 4, 6, 8, 16)
    tokens = tiny_tokenizer.encode(images)
    assert tokens.patch_nums == (1, 2, 3, 4, 6)
    assert tiny_tokenizer.decode_tokens(tokens.indices).shape == (1, 3, 24, 24)
    assert tiny_tokenizer.teacher_forcing_input(tokens.indices).shape == (1, 1 + 4 + 9 + 16 + 36 - 1, 8)


@torch.no_grad()
def test_inputs_are_not_modified(tiny_tokenizer, tiny_images):
    before = tiny_images.clone()
    tokens = tiny_tokenizer.encode(tiny_images)
    assert torch.equal(tiny_images, before)
    latent = tokens.latent.clone()
    tiny_tokenizer.decode_latent(tokens.latent)
    assert torch.equal(latent, tokens.latent)


@pytest.mark.parametrize("images, message", [
    (torch.zeros(3, 64, 64), r"shape \(B, 3, H, W\)"),
    (torch.zeros(1, 1, 64, 64), r"shape \(B, 3, H, W\)"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float tensor in"),
    (torch.full((1, 3, 64, 64), 2.0), r"in \[-1, 1\]"),
    (torch.zeros(1, 3, 64, 32), "square"),
    (torch.zeros(1, 3, 60, 60), "cannot take 60x60"),
    (torch.zeros(1, 3, 20, 20), "cannot take 20x20"),
    ("not a tensor", "torch.Tensor"),
])
def test_bad_images_raise_value_error(tiny_tokenizer, images, message):
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer.encode(images)


def test_bad_codes_raise_value_error(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"codes of scale 1 must be int64 of shape \(B, 4\)"):
        tiny_tokenizer.decode_tokens([torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)])
    with pytest.raises(ValueError, match="expected codes for 1..7 scales"):
        tiny_tokenizer.decode_tokens([])
    with pytest.raises(ValueError, match=r"latent must have shape \(B, 8, h, w\)"):
        tiny_tokenizer.decode_latent(torch.zeros(1, 4, 16, 16))


@torch.no_grad()
def test_runs_in_bfloat16(tiny_tokenizer, tiny_images):
    tokenizer = tiny_tokenizer.to(torch.bfloat16)
    tokens = tokenizer.encode(tiny_images.to(torch.bfloat16))
    assert tokens.latent.dtype == torch.bfloat16
    assert tokenizer.decode_tokens(tokens.indices).dtype == torch.bfloat16


def test_released_tokenizer_size_on_meta():
    # Spec 1.7: the released autoencoder has 108,948,355 parameters.
    with torch.device("meta"):
        tokenizer = HybridTokenizer(tokenizer_hart_1024())
    assert sum(p.numel() for p in tokenizer.parameters()) == 108_948_355
    assert sum(p.numel() for p in tokenizer.encoder.parameters()) == 44_107_872
    assert sum(p.numel() for p in tokenizer.decoder.parameters()) == 64_653_923


def test_split_group_norm_matches_torch_group_norm():
    """The GPU path for large groups (tokenizer/layers.py) computes the same function."""
    import torch.nn.functional as F

    from openhart.tokenizer.layers import split_group_norm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 24, 24, generator=g) * 3 + 5  # a mean far from 0
    weight, bias = torch.randn(64, generator=g), torch.randn(64, generator=g)
    want = F.group_norm(x, 32, weight, bias, 1e-6)
    torch.testing.assert_close(split_group_norm(x, 32, weight, bias, 1e-6), want, atol=2e-5, rtol=1e-5)
    got = split_group_norm(x.bfloat16(), 32, weight.bfloat16(), bias.bfloat16(), 1e-6).float()
    want = F.group_norm(x.bfloat16().float(), 32, weight.bfloat16().float(), bias.bfloat16().float(), 1e-6)
    assert (got - want).abs().max() <= 0.015 * want.abs().max()  # bf16 rounding (torch: 0.003)


def test_channels_last_decoding_matches_the_contiguous_layout(tiny_tokenizer, tiny_images, tmp_path):
    import copy

    from openhart.loading import load_tokenizer, save_tokenizer
    from openhart.tokenizer import use_channels_last

    latent = tiny_tokenizer.encode(tiny_images).latent
    with torch.no_grad():
        reference = tiny_tokenizer.decode_latent(latent)
        fast = use_channels_last(copy.deepcopy(tiny_tokenizer))
        conv = fast.decoder.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        out = fast.decode_latent(latent)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    # loading gives the inference layout; saving it writes the same tensors as the contiguous model
    from safetensors.torch import load_file

    a = save_tokenizer(tiny_tokenizer.float(), tmp_path / "a")
    b = save_tokenizer(load_tokenizer(a), tmp_path / "b")
    saved_a, saved_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert saved_a.keys() == saved_b.keys()
    assert all(torch.equal(saved_a[k], saved_b[k]) for k in saved_a)
    assert load_tokenizer(a).decoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
