import json

import pytest

from openhart.config import (
    HARTConfig,
    TokenizerConfig,
    config_from_dict,
    config_to_dict,
    hart_tiny,
    tokenizer_hart_1024,
    tokenizer_small,
    tokenizer_tiny,
)


@pytest.mark.parametrize("preset", [tokenizer_hart_1024, tokenizer_small, tokenizer_tiny])
def test_json_round_trip(preset):
    config = preset()
    text = json.dumps(config_to_dict(config))
    assert config_from_dict(TokenizerConfig, json.loads(text)) == config


def test_released_tokenizer_geometry():
    config = tokenizer_hart_1024()
    assert config.downsample_factor == 16
    assert config.image_size == 1024
    assert config.num_scales == 14


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match=r"unknown TokenizerConfig field\(s\) \['vocab'\]"):
        config_from_dict(TokenizerConfig, {"vocab": 10})


@pytest.mark.parametrize("data, message", [
    ({"vocab_size": "8"}, "vocab_size must be int"),
    ({"patch_nums": 4}, "patch_nums must be a list"),
    ({"normalize_codes": 1}, "normalize_codes must be bool"),
    ({"vocab_size": True}, "vocab_size must be int"),
])
def test_wrong_types_are_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(TokenizerConfig, data)


def test_int_is_accepted_for_float():
    assert config_from_dict(TokenizerConfig, {"phi_ratio": 1}).phi_ratio == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"patch_nums": (1, 3, 2)}, "strictly increasing"),
    ({"patch_nums": ()}, "patch_nums must be 1 to 64 sides"),
    ({"patch_nums": (1, 2, 100000)}, "sides between 1 and 256"),
    ({"base_channels": 40}, "multiple of 32"),
    ({"vocab_size": 0}, "vocab_size must be between 1 and"),
    ({"vocab_size": 10**12}, "vocab_size must be between 1 and"),
    ({"phi_ratio": 1.5}, "phi_ratio must be between 0 and 1"),
    ({"phi_ratio": float("nan")}, "phi_ratio must be between 0 and 1"),
    ({"quant_conv_kernel": 2}, "odd"),
    ({"num_phi": -1}, "num_phi"),
    ({"channel_mult": ()}, "channel_mult"),
])
def test_inconsistent_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig(**kwargs)


@pytest.mark.parametrize("cls, kwargs, message", [
    ("TransformerConfig", {"context_tokens": 10**9}, "context_tokens must be between 1 and 4096"),
    ("TransformerConfig", {"embed_dim": 10**9, "num_heads": 1}, "embed_dim must be between 1 and 16384"),
    ("TransformerConfig", {"norm_eps": float("nan")}, "norm_eps must be between"),
    ("TransformerConfig", {"rope_theta": float("inf")}, "rope_theta must be between"),
    ("TokenizerConfig", {"patch_nums": (1, 2, 100000)}, "sides between 1 and 256"),
    ("DiffusionHeadConfig", {"num_train_timesteps": 10**11}, "num_train_timesteps must be between 1 and 100000"),
    ("DiffusionHeadConfig", {"residual_scale": float("inf")}, "residual_scale must be between"),
    ("DiffusionHeadConfig", {"width": -3}, "width must be between 1 and"),
])
def test_sizes_a_machine_cannot_hold_are_refused_before_building(cls, kwargs, message):
    import openhart.config as config

    with pytest.raises(ValueError, match=message):
        getattr(config, cls)(**kwargs)


def test_config_is_frozen_and_keyword_only():
    config = TokenizerConfig()
    with pytest.raises(AttributeError):
        config.vocab_size = 3
    with pytest.raises(TypeError):
        TokenizerConfig(4096)


def test_0p7b_presets_at_other_sizes():
    from openhart.config import HART_1024_PATCH_NUMS, hart_0p7b, hart_0p7b_1024

    assert hart_0p7b(1024) == hart_0p7b_1024()
    assert hart_0p7b(256).tokenizer.patch_nums == (1, 2, 3, 4, 5, 7, 9, 12, 16)
    assert hart_0p7b(512).tokenizer.patch_nums == HART_1024_PATCH_NUMS[:11] + (32,)
    assert hart_0p7b(512).image_size == 512
    with pytest.raises(ValueError, match="multiple of 16"):
        hart_0p7b(500)


def test_missing_required_fields_are_named():
    from openhart.train.train_config import TransformerTrainConfig
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['cache'\]"):
        config_from_dict(TransformerTrainConfig, {"run": {"output_dir": "r", "steps": 1, "batch_size": 1}})


def test_each_fact_is_stored_once_and_format_1_copies_are_read_when_they_agree():
    config = hart_tiny()
    data = config_to_dict(config)
    assert "patch_nums" not in data["transformer"] and "cond_dim" not in data["head"]
    assert HARTConfig.from_dict(data) == config
    tok = data["tokenizer"]
    old = {**data, "transformer": {**data["transformer"], "patch_nums": tok["patch_nums"],
                                   "latent_channels": tok["latent_channels"], "vocab_size": tok["vocab_size"]},
           "head": {**data["head"], "latent_channels": tok["latent_channels"],
                    "cond_dim": data["transformer"]["embed_dim"]}}
    assert HARTConfig.from_dict(old) == config
    bad = {**old, "head": {**old["head"], "cond_dim": 7}}
    with pytest.raises(ValueError, match=r"head.cond_dim = 7 disagrees with transformer.embed_dim = 64"):
        HARTConfig.from_dict(bad)
    bad = {**old, "transformer": {**old["transformer"], "patch_nums": [1, 2]}}
    with pytest.raises(ValueError, match="transformer.patch_nums"):
        HARTConfig.from_dict(bad)
