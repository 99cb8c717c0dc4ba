import pytest
import torch
from einops import rearrange

from openhart.config import TokenizerConfig, tokenizer_hart_1024
from openhart.tokenizer.quantizer import MultiScaleQuantizer, PhiRefiners
from openhart.tokenizer.resample import area_downsample


def test_released_phi_assignment():
    phi = PhiRefiners(4, 0.5, 4)
    got = [phi.index(si, 14) for si in range(14)]
    assert got == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]


def test_phi_counts_and_identity():
    assert len(PhiRefiners(4, 0.0, 4).convs) == 0
    h = torch.randn(1, 4, 3, 3)
    assert PhiRefiners(4, 0.0, 4)(h, 1, 3) is h
    shared = PhiRefiners(4, 0.5, 1)
    assert {shared.index(si, 10) for si in range(10)} == {0}
    per_scale = PhiRefiners(4, 0.5, 5)
    assert [per_scale.index(si, 5) for si in range(5)] == [0, 1, 2, 3, 4]


@pytest.fixture
def quantizer():
    torch.manual_seed(0)
    config = TokenizerConfig(vocab_size=50, latent_channels=6, base_channels=32,
                             channel_mult=(1, 1), patch_nums=(1, 2, 3, 5, 8))
    q = MultiScaleQuantizer(config).eval()
    with torch.no_grad():
        q.codebook.weight.mul_(2)
    return q


def test_lookup_is_nearest_code(quantizer):
    z = torch.randn(300, 6)
    want = torch.cdist(z, quantizer.codebook.weight).argmin(dim=1)
    assert torch.equal(quantizer.lookup(z), want)


@torch.no_grad()
def test_codes_plus_residual_rebuild_the_latent(quantizer):
    pns = quantizer.config.patch_nums
    f = torch.randn(2, 6, 8, 8) * 2
    f_before = f.clone()
    q = quantizer.quantize(f, pns)
    assert torch.equal(f, f_before), "quantize must not modify its input"
    assert [tuple(i.shape) for i in q.indices] == [(2, pn * pn) for pn in pns]
    f_hat = quantizer.indices_to_fhat(q.indices, pns)
    torch.testing.assert_close(f_hat + q.residual, f, atol=1e-5, rtol=0)
    last = quantizer.codebook(q.indices[-1])
    torch.testing.assert_close(q.last_scale_input,
                               rearrange(q.residual, "b c h w -> b (h w) c") + last, atol=1e-5, rtol=0)


@torch.no_grad()
def test_each_scale_codes_the_downsampled_residual(quantizer):
    pns = quantizer.config.patch_nums
    f = torch.randn(1, 6, 8, 8) * 2
    q = quantizer.quantize(f, pns)
    f_rest = f.clone()
    for si, pn in enumerate(pns):
        z = rearrange(area_downsample(f_rest, pn), "b c h w -> (b h w) c")
        assert torch.equal(q.indices[si][0], quantizer.lookup(z))
        f_rest = f_rest - (quantizer.add_scale(torch.zeros_like(f), quantizer.embed(q.indices[si], pn), si, pns))


@torch.no_grad()
def test_teacher_forcing_input_equals_sampling_steps(quantizer):
    pns = quantizer.config.patch_nums
    indices = [torch.randint(0, 50, (2, pn * pn)) for pn in pns]
    tf = quantizer.teacher_forcing_input(indices, pns)
    assert tf.shape == (2, sum(pn * pn for pn in pns) - 1, 6)
    f_hat = torch.zeros(2, 6, 8, 8)
    pieces = []
    for si in range(len(pns) - 1):
        f_hat, nxt = quantizer.next_scale_input(si, f_hat, quantizer.embed(indices[si], pns[si]), pns)
        pieces.append(rearrange(nxt, "b c h w -> b (h w) c"))
    torch.testing.assert_close(tf, torch.cat(pieces, 1), atol=0, rtol=0)
    with pytest.raises(ValueError, match="next_scale_input needs"):
        quantizer.next_scale_input(len(pns) - 1, f_hat, f_hat, pns)


def test_next_scale_input_does_not_modify_inputs(quantizer):
    pns = quantizer.config.patch_nums
    f_hat = torch.randn(1, 6, 8, 8)
    h = torch.randn(1, 6, 1, 1)
    before = f_hat.clone(), h.clone()
    with torch.no_grad():
        quantizer.next_scale_input(0, f_hat, h, pns)
    assert torch.equal(f_hat, before[0]) and torch.equal(h, before[1])


def test_cosine_lookup_option():
    config = TokenizerConfig(vocab_size=20, latent_channels=4, base_channels=32, channel_mult=(1,),
                             patch_nums=(1, 2), normalize_codes=True)
    q = MultiScaleQuantizer(config)
    z = torch.randn(30, 4)
    sims = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(q.codebook.weight, dim=1).T
    assert torch.equal(q.lookup(z), sims.argmax(1))


def test_released_quantizer_parameter_count():
    # Spec 1.7: quantize has 168,064 parameters (codebook 4096x32 and four 3x3 Phi convs).
    with torch.device("meta"):
        q = MultiScaleQuantizer(tokenizer_hart_1024())
    assert sum(p.numel() for p in q.parameters()) == 168_064


def test_training_quantization_matches_inference_and_passes_gradients(tiny_tokenizer):
    q = tiny_tokenizer.quantizer
    patch_nums = q.config.patch_nums
    f = torch.randn(2, q.config.latent_channels, patch_nums[-1], patch_nums[-1],
                    generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = q.quantize_for_training(f, patch_nums, beta=0.25)
    ref = q.quantize(f.detach(), patch_nums)
    for a, b in zip(out.indices, ref.indices):
        assert torch.equal(a, b)
    # forward value: the discrete latent that decode_tokens uses; gradient: straight through to f
    torch.testing.assert_close(out.f_hat, q.indices_to_fhat(ref.indices, patch_nums), atol=1e-5, rtol=1e-5)
    (out.f_hat.sum() + out.vq_loss).backward()
    assert f.grad is not None and q.codebook.weight.grad.abs().sum() > 0
    assert all(c.weight.grad is not None for c in q.phi.convs)
    # the commitment part reaches f with weight beta: d/df of beta * mean((sg(f_hat) - f)^2)
    assert out.vq_loss.item() > 0
