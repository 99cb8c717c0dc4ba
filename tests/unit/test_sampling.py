import pytest
import torch

from openhart.config import SamplingConfig
from openhart.sampling import filter_logits, generate, guided_logits, maskgit_rounds


def _run(model, context, positions, seed, **kwargs):
    sampling = SamplingConfig(**{"cfg_scale": 3.0, **kwargs})
    return generate(model, context, positions, sampling, torch.Generator().manual_seed(seed))


def test_same_seed_same_image_other_seed_differs(tiny_model, tiny_context):
    a = _run(tiny_model, *tiny_context, seed=0)
    b = _run(tiny_model, *tiny_context, seed=0)
    c = _run(tiny_model, *tiny_context, seed=1)
    assert a.images.shape == (2, 3, 64, 64)
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert [tuple(i.shape) for i in a.indices] == [(2, p * p) for p in (1, 2, 3, 4, 6, 8, 16)]


def test_inputs_are_not_modified(tiny_model, tiny_context):
    context, positions = (t.clone() for t in tiny_context)
    _run(tiny_model, context, positions, seed=0)
    assert torch.equal(context, tiny_context[0]) and torch.equal(positions, tiny_context[1])


def test_discrete_only_and_maskgit_options(tiny_model, tiny_context):
    full = _run(tiny_model, *tiny_context, seed=0, smooth=False)
    discrete = _run(tiny_model, *tiny_context, seed=0, smooth=False, use_residual=False)
    assert all(torch.equal(a, b) for a, b in zip(full.indices, discrete.indices))
    assert not torch.equal(full.latent, discrete.latent)
    maskgit = _run(tiny_model, *tiny_context, seed=0, maskgit_iters=4)
    assert maskgit.images.shape == full.images.shape


def test_user_top_k_is_honoured(tiny_model, tiny_context):
    """top_k=1 is argmax: two seeds give the same codes (the official code ignored top_k)."""
    a = _run(tiny_model, *tiny_context, seed=0, top_k=1, smooth=False, use_residual=False)
    b = _run(tiny_model, *tiny_context, seed=5, top_k=1, smooth=False, use_residual=False)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))


def test_negative_context_changes_the_unconditional_branch(tiny_model, tiny_context):
    context, positions = tiny_context
    base = _run(tiny_model, context, positions, seed=0)
    negative = generate(tiny_model, context, positions, SamplingConfig(cfg_scale=3.0),
                        torch.Generator().manual_seed(0), uncond_context_BTD=torch.ones_like(context),
                        uncond_position_ids_BT=positions)
    assert not torch.equal(base.images, negative.images)


def test_guided_logits_formula():
    cond, uncond = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    torch.testing.assert_close(guided_logits(torch.cat([cond, uncond]), 2.0), 3 * cond - 2 * uncond)


def test_filter_logits_top_k_top_p_without_mutation():
    logits = torch.tensor([[[1.0, 4.0, 3.0, 2.0]]])
    before = logits.clone()
    top2 = filter_logits(logits, 2, 0.0)
    assert torch.equal(logits, before)
    assert torch.isinf(top2[0, 0, [0, 3]]).all() and torch.isfinite(top2[0, 0, [1, 2]]).all()
    probs = logits.softmax(-1)[0, 0]  # 0.032, 0.644, 0.237, 0.087
    nucleus = filter_logits(logits, 0, 0.7)
    kept = torch.isfinite(nucleus[0, 0])
    assert kept.tolist() == [False, True, True, False]
    assert probs[kept].sum() >= 0.7


@pytest.mark.parametrize("iterations", [2, 3, 8])
def test_maskgit_rounds_cover_every_token_once(iterations):
    rounds = maskgit_rounds(3, 16, iterations, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(rounds) == iterations
    allpos = torch.cat(rounds, dim=1).sort(dim=1).values
    assert torch.equal(allpos, torch.arange(16).expand(3, -1))
    assert all(r.shape[1] >= 1 for r in rounds)
