import pytest
import torch

from openhart.eval.fid import frechet_distance, kernel_inception_distance
from openhart.eval.inception import InceptionFeatures, preprocess
from openhart.metrics import ssim


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


def test_retrieval_ranks_by_cosine_similarity():
    from openhart.eval.retrieval import retrieval_ranks, retrieval_rates

    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[2.0, 0.1],    # closest to 0, then 2
                            [0.9, 1.0],    # closest to 2, then 1 and 0
                            [5.0, 0.0]])   # exactly 0 (scale does not matter)
    ranks = retrieval_ranks(queries, gallery, torch.tensor([2, 0, 0]))
    assert ranks.tolist() == [1, 2, 0]
    rates = retrieval_rates(ranks, len(gallery), ks=(1, 2))
    assert rates == {"top1": 1 / 3, "chance_top1": 1 / 4, "top2": 2 / 3, "chance_top2": 2 / 4}
    # an identical gallery image ties with the target: it does not push it down
    assert retrieval_ranks(queries[:1], torch.cat([gallery[:1], gallery[:1]]), torch.tensor([1])).tolist() == [0]
    with pytest.raises(ValueError, match="target indices"):
        retrieval_ranks(queries, gallery, torch.tensor([0, 1, 4]))


def test_skin_tone_variants_share_a_group():
    from openhart.data.emoji import base_caption
    from openhart.eval.retrieval import variant_groups

    assert base_caption("waving hand: medium-dark skin tone") == "waving hand"
    assert base_caption("people holding hands: light skin tone, dark skin tone") == "people holding hands"
    assert base_caption("woman: red hair, dark skin tone") == "woman: red hair"  # a hair style is its own emoji
    assert base_caption("flag: Japan") == "flag: Japan" and base_caption("red apple") == "red apple"
    captions = ["waving hand", "waving hand: light skin tone", "woman: red hair", "woman: red hair, light skin tone",
                "woman", "waving hand: dark skin tone"]
    assert variant_groups(captions).tolist() == [0, 0, 1, 1, 2, 0]


def test_grouped_retrieval_counts_a_sibling_variant_as_a_hit():
    from openhart.eval.retrieval import retrieval_ranks

    # gallery: two skin tones of one hand (group 0), an apple (1), a flag (2)
    gallery = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    groups = torch.tensor([0, 0, 1, 2])
    queries = torch.tensor([[0.9, 0.1, 0.0],     # drawn for variant 0, nearest to its sibling 1
                            [0.5, 0.6, 0.0],     # drawn for variant 1: the apple is nearer than both hands
                            [0.0, 0.2, 1.0]])    # the flag, drawn well
    targets = torch.tensor([0, 1, 3])
    assert retrieval_ranks(queries, gallery, targets).tolist() == [1, 1, 0]
    # grouped: the sibling counts, and a sibling does not push the target down either
    assert retrieval_ranks(queries, gallery, targets, groups).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="group ids"):
        retrieval_ranks(queries, gallery, targets, groups[:3])


def test_teacher_forced_accuracy_counts_the_argmax_of_each_scale(tiny_model, tiny_context):
    from openhart.metrics import teacher_forced_accuracy

    tf, quantizer = tiny_model.transformer, tiny_model.tokenizer.quantizer
    patch_nums = tf.patch_nums
    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, tf.head.out_features, (2, pn * pn), generator=g) for pn in patch_nums]
    context, positions = tiny_context
    out = tf(context, positions, quantizer.teacher_forcing_input(codes, patch_nums))
    predicted = out.logits.argmax(-1)
    # make the targets agree with the prediction on exactly the first 5 tokens of the last scale
    last = predicted[:, tf.scale_slices(tf.patch_nums)[-1]].clone()
    last[:, 5:] = (last[:, 5:] + 1) % tf.head.out_features
    codes[-1] = last
    accuracy = teacher_forced_accuracy(tf, quantizer, codes, context, positions, batch_size=1)
    assert accuracy["last_scale_top1"] == pytest.approx(5 / patch_nums[-1] ** 2)
    # all scales: the earlier scales' predictions do not depend on the last scale's codes
    earlier = sum(int((predicted[:, s] == c).sum()) for s, c in zip(tf.scale_slices(tf.patch_nums)[:-1], codes[:-1]))
    assert accuracy["all_scales_top1"] == pytest.approx((earlier + 10) / (2 * sum(p * p for p in patch_nums)))
