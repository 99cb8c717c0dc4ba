import pytest
import torch

from openhart.config import SamplingConfig
from openhart.sampling import filter_logits, generate, guided_logits, maskgit_rounds


def _run(model, context, positions, seed, **kwargs):
    sampling = SamplingConfig(**{"guidance_scale": 3.0, **kwargs})
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
    negative = generate(tiny_model, context, positions, SamplingConfig(guidance_scale=3.0),
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


def _last_scale_record(model, context, positions, **kwargs):
    records = []
    generate(model, context, positions, SamplingConfig(**{"guidance_scale": 3.0, **kwargs}),
             torch.Generator().manual_seed(0), on_scale=records.append)
    last = records[-1]
    assert last.si == model.config.num_scales - 1 and last.residual is not None
    return last


@pytest.mark.parametrize("maskgit_iters", [1, 3])
def test_consistent_last_scale_adds_the_residual_to_the_conditioning_code(tiny_model, tiny_context,
                                                                          maskgit_iters):
    """With smoothing on, each last-scale token minus its residual is exactly the codebook
    vector of the code that conditioned the residual head."""
    codebook = tiny_model.tokenizer.quantizer.codebook.weight
    last = _last_scale_record(tiny_model, *tiny_context, smooth=True, last_scale="consistent",
                              maskgit_iters=maskgit_iters)
    torch.testing.assert_close(last.h - last.residual, codebook[last.indices], rtol=0, atol=1e-6)
    # ... and that code is the one the head saw: the condition is rebuilt from it exactly
    hidden = last.hidden
    expected = tiny_model.transformer.diffusion_condition(hidden, codebook[last.indices].repeat(2, 1, 1))
    torch.testing.assert_close(last.diffusion_cond, expected)


def test_official_last_scale_adds_the_residual_to_a_second_draw(tiny_model, tiny_context):
    """The official sampler's quirk, kept as an option: the smoothed embedding comes from a
    separate draw, so tokens - residual is not the conditioning code's vector."""
    codebook = tiny_model.tokenizer.quantizer.codebook.weight
    last = _last_scale_record(tiny_model, *tiny_context, smooth=True, last_scale="official")
    assert not torch.allclose(last.h - last.residual, codebook[last.indices], atol=1e-3)


def test_gumbel_last_scale_conditions_on_the_smoothed_draw(tiny_model, tiny_context):
    codebook = tiny_model.tokenizer.quantizer.codebook.weight
    last = _last_scale_record(tiny_model, *tiny_context, smooth=True, last_scale="gumbel")
    base = last.h - last.residual  # the smoothed embedding: nearly one-hot at the last scale
    nearest = torch.cdist(base.reshape(-1, base.shape[-1]), codebook).argmin(-1).reshape(last.indices.shape)
    assert (nearest == last.indices).float().mean() > 0.9


def test_last_scale_modes_share_every_code(tiny_model, tiny_context):
    """The modes differ only in how the last scale is finished: the drawn codes are the same."""
    runs = {mode: _run(tiny_model, *tiny_context, seed=0, last_scale=mode) for mode in ("official", "consistent")}
    assert all(torch.equal(a, b) for a, b in zip(runs["official"].indices, runs["consistent"].indices))
    assert not torch.equal(runs["official"].latent, runs["consistent"].latent)
    without_smoothing = {mode: _run(tiny_model, *tiny_context, seed=0, smooth=False, last_scale=mode)
                         for mode in ("official", "consistent")}
    assert torch.equal(without_smoothing["official"].images, without_smoothing["consistent"].images)


def test_head_temperature_scales_the_noise_of_every_step(tiny_model):
    """Temperature 0 adds no noise after the initial draw; 1 adds the learned variance's."""
    from openhart.diffusion.sampler import DiffusionNoise, sample_residual
    from openhart.diffusion.schedule import DiffusionSchedule

    head = tiny_model.head
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(6, head.cond_embed.in_features, generator=g)
    schedule = DiffusionSchedule.cosine(head.config.num_train_timesteps, 4)
    initial = torch.randn(6, head.latent_channels, generator=g)

    def run(temperature, step_seed):
        steps = [torch.randn(6, head.latent_channels, generator=torch.Generator().manual_seed(step_seed + k))
                 for k in range(4)]
        return sample_residual(head, cond, schedule, guidance=None, temperature=temperature,
                               noise=DiffusionNoise(initial=initial, steps=steps))

    assert torch.equal(run(0.0, 1), run(0.0, 100))
    assert not torch.equal(run(1.0, 1), run(1.0, 100))
    assert not torch.equal(run(0.5, 1), run(1.0, 1))


def test_unknown_last_scale_mode_is_refused():
    with pytest.raises(ValueError, match="last_scale must be one of"):
        SamplingConfig(last_scale="mine")


@pytest.mark.parametrize("maskgit_iters", [1, 3])
def test_collapsed_unconditional_prefix_is_exact(tiny_model, tiny_context, maskgit_iters):
    """The default unconditional prefix (zero context at position 0) is computed on one token;
    passing the same zeros explicitly takes the ordinary path. Both give the same codes, hidden
    states and image."""
    context, positions = tiny_context
    sampling = SamplingConfig(guidance_scale=3.0, maskgit_iters=maskgit_iters)
    runs = []
    for uncond in ({}, {"uncond_context_BTD": torch.zeros_like(context),
                        "uncond_position_ids_BT": torch.zeros_like(positions)}):
        records = []
        out = generate(tiny_model, context, positions, sampling, torch.Generator().manual_seed(3),
                       on_scale=records.append, **uncond)
        runs.append((out, records))
    (collapsed, rec_c), (full, rec_f) = runs
    assert all(torch.equal(a, b) for a, b in zip(collapsed.indices, full.indices))
    for a, b in zip(rec_c, rec_f):
        assert a.hidden.shape == b.hidden.shape
        torch.testing.assert_close(a.hidden, b.hidden, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(collapsed.images, full.images, rtol=0, atol=1e-4)


def test_guidance_and_progress_schedule_with_the_last_scale_reusing_the_previous_ratio():
    sampling = SamplingConfig(guidance_scale=4.5)
    K = 14
    assert sampling.guidance_at(0, K) == 0.0, "the first scale is unguided"
    assert sampling.guidance_at(5, K) == 4.5 * (5 / 13)
    assert sampling.progress_at(12, K) == sampling.progress_at(13, K) == 12 / 13
    assert sampling.guidance_at(13, K) == sampling.guidance_at(12, K) == 4.5 * (12 / 13)
    assert SamplingConfig.progress_at(1, 2) == 0.0, "two scales: both unguided"
