import dataclasses
import json

import pytest
import torch

from openhart.config import TransformerConfig, hart_tiny, tokenizer_tiny
from openhart.convert import official
from openhart.hart_model import HARTModel
from openhart.transformer.kv_cache import KVCache
from openhart.transformer.rope import block_tables, image_positions, image_rope, rotate

from ..conftest import FIXTURES

RELEASE = json.loads((FIXTURES / "hart-0.7b-keys.json").read_text())


@torch.no_grad()
def test_cached_scale_steps_equal_teacher_forcing(tiny_model, tiny_context):
    tf = tiny_model.transformer
    context, positions = tiny_context
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    tokens = tiny_model.tokenizer.encode(images)
    inputs = tiny_model.tokenizer.teacher_forcing_input(tokens.indices)
    full = tf(context, positions, inputs)

    cond = tf.embed_context(context)
    cache = tf.new_cache(2, context.device, context.dtype, tf.patch_nums)
    hidden = [tf.forward_scale(cond + tf.level_embedding(0), tf.text_rope(positions), cache)]
    start = 0
    for si, pn in enumerate(tf.patch_nums[1:], start=1):
        x = tf.embed_scale_input(inputs[:, start:start + pn * pn], si)
        hidden.append(tf.forward_scale(x, tf.scale_rope(si, positions, tf.patch_nums), cache))
        start += pn * pn
    torch.testing.assert_close(torch.cat(hidden, dim=1), full.hidden, atol=2e-5, rtol=1e-5)
    assert cache.length == tf.config.context_tokens + sum(pn * pn for pn in tf.patch_nums) - 1


def test_cache_overflow_is_an_error():
    cache = KVCache.allocate(1, 1, 1, 4, 2, torch.device("cpu"), torch.float32)
    cache.append(0, torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    cache.advance(3)
    with pytest.raises(RuntimeError, match="overflow"):
        cache.append(0, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_image_positions_and_quirky_2d_rope():
    pos = image_positions((1, 3, 64), 1, torch.tensor([5, 0]))
    assert pos.shape == (2, 9, 2)
    torch.testing.assert_close(pos[1, :3, 1], torch.tensor([0.0, 64 / 3, 128 / 3]))
    torch.testing.assert_close(pos[0, 0], torch.tensor([5.0, 5.0]))
    cos, sin = image_rope(torch.tensor([[[0.0, 10.0]]]), 8, 10000.0)
    # layout [row | row | col | col]: the first half sees angle 0, the second half angle 10 f
    torch.testing.assert_close(cos[0, 0, :4], torch.ones(4))
    assert cos[0, 0, 4:].ne(1).any()
    q = torch.randn(1, 1, 1, 1, 8)  # B L [q, k] H d
    rotated = rotate(q, *block_tables(cos, sin, q.dtype))
    assert not torch.allclose(rotated.norm(), q.norm()), "the official 2-D RoPE is not a rotation"


def test_rotate_is_x_cos_plus_rotate_half_x_sin_in_both_dtypes():
    cos, sin = image_rope(torch.rand(2, 5, 2) * 64, 16, 10000.0)
    x = torch.randn(2, 5, 2, 3, 16)  # B L [q, k] H d
    half = x.shape[-1] // 2
    c, s = cos[:, :, None, None], sin[:, :, None, None]
    expected = x * c + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * s
    torch.testing.assert_close(rotate(x, *block_tables(cos, sin, torch.float32)), expected,
                               rtol=0, atol=1e-6)
    xb = x.bfloat16()
    cb, sb = c.bfloat16(), s.bfloat16()
    expected_bf16 = xb * cb + torch.cat([-xb[..., half:], xb[..., :half]], dim=-1) * sb
    got = rotate(xb, *block_tables(cos, sin, torch.bfloat16))
    assert got.dtype == torch.bfloat16
    # one rounding fewer than the unfused formula: equal to within one bf16 step
    torch.testing.assert_close(got.float(), expected_bf16.float(), rtol=2 ** -7, atol=2 ** -7)


def test_context_mask_does_not_matter_but_positions_do(tiny_model, tiny_context):
    tf = tiny_model.transformer
    context, positions = tiny_context
    inputs = torch.randn(2, sum(pn * pn for pn in tf.patch_nums) - 1, 8)
    with torch.no_grad():
        a = tf(context, positions, inputs).logits
        b = tf(context, torch.arange(6).expand(2, -1), inputs).logits
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_released_architecture_on_meta_matches_the_official_keys():
    config = official.hart_config_from_official(RELEASE["llm_config"], RELEASE["tokenizer_config"])
    with torch.device("meta"):
        model = HARTModel(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("tokenizer.")}
    mapped = {}
    for entry in RELEASE["llm"]["keys"]:
        key = official.llm_key_from_official(entry["key"])
        if key is None:
            assert entry["kind"] == "buffer", entry["key"]
            continue
        assert key not in mapped, f"two official keys map to {key}"
        mapped[key] = entry["shape"]
    assert mapped == ours
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("tokenizer."))
    assert params == RELEASE["llm"]["n_parameters"] == 732_399_168
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("change, message", [
    ({"attn_type": "gpt2"}, "attn_type='gpt2' is not supported"),
    ({"disable_aln": False}, "disable_aln=False is not supported"),
    ({"use_cross_attn": True}, "use_cross_attn"),
    ({"use_timestep_embed": False}, "use_timestep_embed"),
    ({"context_token": 0}, "class-conditional"),
    ({"num_sampling_steps": "ddim25"}, "num_sampling_steps"),
    ({"new_switch": 1}, "unknown field"),
    ({"num_heads": 7}, "divisible"),
])
def test_unsupported_official_switches_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        official.hart_config_from_official(dict(RELEASE["llm_config"], **change),
                                           RELEASE["tokenizer_config"])


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 4"):
        TransformerConfig(embed_dim=60, num_heads=10)
    with pytest.raises(ValueError, match="the first 1x1"):
        dataclasses.replace(hart_tiny(), tokenizer=dataclasses.replace(tokenizer_tiny(), patch_nums=(2, 4)))


@torch.no_grad()
def _teacher_inputs(model, batch=2, size=64, seed=3):
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    tokens = model.tokenizer.encode(images)
    return tokens, model.tokenizer.teacher_forcing_input(tokens.indices)


@torch.no_grad()
def test_a_prefix_of_the_scales_is_the_model_configured_with_that_prefix(tiny_model, tiny_context):
    from openhart.transformer.model import HARTTransformer
    tf = tiny_model.transformer
    context, positions = tiny_context
    prefix = tf.patch_nums[:5]
    tokens, inputs = _teacher_inputs(tiny_model, size=prefix[-1] * 4)
    assert tokens.patch_nums == prefix
    narrow = HARTTransformer(tf.config, dataclasses.replace(tiny_model.config.tokenizer, patch_nums=prefix))
    narrow.load_state_dict(tf.state_dict())
    got = tf(context, positions, inputs, patch_nums=prefix)
    want = narrow(context, positions, inputs)
    torch.testing.assert_close(got.logits, want.logits)
    with pytest.raises(ValueError, match="prefix"):
        tf(context, positions, inputs, patch_nums=(1, 3))


@torch.no_grad()
def test_subsampled_last_scale_rows_equal_the_full_sequence_rows(tiny_model, tiny_context):
    tf = tiny_model.transformer
    context, positions = tiny_context
    _, inputs = _teacher_inputs(tiny_model)
    full = tf(context, positions, inputs).logits
    l = tf.patch_nums[-1] ** 2
    keep = torch.stack([torch.randperm(l, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    # all tokens kept, in another order per sample: same rows, permuted
    permuted = tf(context, positions, inputs, last_scale_keep_Bn=keep).logits
    torch.testing.assert_close(permuted[:, :-l], full[:, :-l])
    torch.testing.assert_close(permuted[:, -l:], torch.stack([full[b, -l:][keep[b]] for b in range(2)]),
                               atol=2e-5, rtol=1e-5)
    # a subset: earlier scales cannot see the last scale, so their rows are unchanged
    few = tf(context, positions, inputs, last_scale_keep_Bn=keep[:, :10].sort(dim=1).values).logits
    assert few.shape[1] == full.shape[1] - l + 10
    torch.testing.assert_close(few[:, :-10], full[:, :-l])


def test_activation_checkpointing_gives_the_same_gradients(tiny_model, tiny_context):
    tf = tiny_model.transformer
    context, positions = tiny_context
    _, inputs = _teacher_inputs(tiny_model)
    grads = []
    for checkpointing in (False, True):
        tf.zero_grad()
        tf(context, positions, inputs, checkpointing=checkpointing).logits.square().mean().backward()
        grads.append([p.grad.clone() for p in tf.parameters() if p.grad is not None])
    assert len(grads[-1]) > 10
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_uniform_unconditional_prefix_fills_the_cache_as_the_full_prefix_does(tiny_model, tiny_context):
    tf = tiny_model.transformer
    context, positions = tiny_context
    context = torch.cat([context, torch.zeros_like(context)])
    positions = torch.cat([positions, torch.zeros_like(positions)])
    x = tf.embed_context(context) + tf.level_embedding(0)
    rope = tf.text_rope(positions)
    caches, hidden = [], []
    with torch.no_grad():
        for uniform in (False, True):
            cache = tf.new_cache(context.shape[0], context.device, context.dtype, tf.patch_nums)
            hidden.append(tf.forward_prefix(x, rope, cache, uncond_is_uniform=uniform))
            caches.append(cache)
    full, collapsed = caches
    assert collapsed.length == full.length == tf.config.context_tokens
    T = tf.config.context_tokens
    torch.testing.assert_close(hidden[1], hidden[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(full.keys + full.values, collapsed.keys + collapsed.values):
        torch.testing.assert_close(b[:, :, :T], a[:, :, :T], rtol=1e-5, atol=1e-5)


def test_cache_rows_write_into_the_shared_storage():
    cache = KVCache.allocate(2, 4, 1, 5, 2, torch.device("cpu"), torch.float32)
    half = cache.rows(2, 4)
    half.append(1, torch.ones(2, 1, 3, 2), torch.full((2, 1, 3, 2), 2.0))
    assert torch.equal(cache.keys[1][2:, :, :3], torch.ones(2, 1, 3, 2))
    assert torch.equal(cache.values[1][2:, :, :3], torch.full((2, 1, 3, 2), 2.0))


def test_compiled_regions_give_the_eager_result(tiny_model, tiny_context):
    """`compile_regions` (torch.compile of each block's pure stretches, dynamic in the token
    count) generates the same codes and image as eager code."""
    import copy

    from openhart.config import SamplingConfig
    from openhart.sampling import generate

    compiled = copy.deepcopy(tiny_model)
    compiled.transformer.compile_regions()
    sampling = SamplingConfig(guidance_scale=3.0, maskgit_iters=2)
    runs = [generate(m, *tiny_context, sampling, torch.Generator().manual_seed(5))
            for m in (tiny_model, compiled)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].indices, runs[1].indices))
    torch.testing.assert_close(runs[1].images, runs[0].images, rtol=0, atol=1e-4)
