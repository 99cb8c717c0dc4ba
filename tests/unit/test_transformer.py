import json

import pytest
import torch

from openhart.config import TransformerConfig
from openhart.convert import official
from openhart.model import HARTModel
from openhart.transformer.kv_cache import KVCache
from openhart.transformer.rope import apply_rope, image_positions, image_rope

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
    cache = tf.new_cache(2, context.device, context.dtype)
    hidden = [tf.forward_scale(cond + tf.level_embedding(0), tf.text_rope(positions), cache)]
    start = 0
    for si, pn in enumerate(tf.config.patch_nums[1:], start=1):
        x = tf.embed_scale_input(inputs[:, start:start + pn * pn], si)
        hidden.append(tf.forward_scale(x, tf.scale_rope(si, positions), cache))
        start += pn * pn
    torch.testing.assert_close(torch.cat(hidden, dim=1), full.hidden, atol=2e-5, rtol=1e-5)
    assert cache.length == tf.config.sequence_length


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
    q = torch.randn(1, 1, 1, 8)
    rotated = apply_rope(q, cos, sin)
    assert not torch.allclose(rotated.norm(), q.norm()), "the official 2-D RoPE is not a rotation"


def test_context_mask_does_not_matter_but_positions_do(tiny_model, tiny_context):
    tf = tiny_model.transformer
    context, positions = tiny_context
    inputs = torch.randn(2, tf.config.num_image_tokens - 1, 8)
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
    with pytest.raises(ValueError, match="first scale must be 1x1"):
        TransformerConfig(patch_nums=(2, 4))


@torch.no_grad()
def _teacher_inputs(model, batch=2, size=64, seed=3):
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    tokens = model.tokenizer.encode(images)
    return tokens, model.tokenizer.teacher_forcing_input(tokens.indices)


@torch.no_grad()
def test_a_prefix_of_the_scales_is_the_model_configured_with_that_prefix(tiny_model, tiny_context):
    import dataclasses
    from openhart.transformer.model import HARTTransformer
    tf = tiny_model.transformer
    context, positions = tiny_context
    prefix = tf.config.patch_nums[:5]
    tokens, inputs = _teacher_inputs(tiny_model, size=prefix[-1] * 4)
    assert tokens.patch_nums == prefix
    narrow = HARTTransformer(dataclasses.replace(tf.config, patch_nums=prefix))
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
    l = tf.config.patch_nums[-1] ** 2
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
