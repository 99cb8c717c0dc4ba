import json

import pytest
import torch

from openhart.config import TokenizerConfig
from openhart.convert import official
from openhart.serialization import CheckpointError
from openhart.tokenizer import HybridTokenizer

from ..conftest import FIXTURES, HART_TINY

RELEASE = json.loads((FIXTURES / "hart-0.7b-keys.json").read_text())


def test_released_tokenizer_config_translates():
    config = official.tokenizer_config_from_official(RELEASE["tokenizer_config"])
    assert config == TokenizerConfig()  # the defaults are the release


def test_released_tokenizer_keys_map_one_to_one():
    config = official.tokenizer_config_from_official(RELEASE["tokenizer_config"])
    with torch.device("meta"):
        ours = HybridTokenizer(config).state_dict()
    mapped = {}
    for entry in RELEASE["tokenizer"]["keys"]:
        key = official.tokenizer_key_from_official(entry["key"])
        if key is None:
            assert entry["key"].startswith("disc.") or entry["key"].endswith("ema_vocab_hit_SV")
            continue
        assert key not in mapped, f"two official keys map to {key}"
        mapped[key] = entry["shape"]
    assert set(mapped) == set(ours), (set(mapped) ^ set(ours))
    for key, shape in mapped.items():
        assert list(ours[key].shape) == shape, key


def test_tiny_case_config():
    data = json.loads((HART_TINY / "tokenizer" / "config.json").read_text())
    config = official.tokenizer_config_from_official(data)
    assert config.patch_nums == (1, 2, 3, 4, 6, 8)
    assert (config.vocab_size, config.latent_channels, config.base_channels) == (600, 32, 32)


@pytest.mark.parametrize("share, counts, key, num_phi", [
    (4, 0, "vae.quantize.quant_resi.qresi_ls.3.weight", 4),
    (1, 0, "vae.quantize.quant_resi.qresi.weight", 1),
    (0, 0, "vae.quantize.quant_resi.13.weight", 14),
    (0, 6, "vae.quantize.quant_resi.5.weight", 6),
])
def test_phi_layouts(share, counts, key, num_phi):
    data = dict(RELEASE["tokenizer_config"], share_quant_resi=share, default_qresi_counts=counts)
    config = official.tokenizer_config_from_official(data)
    assert config.num_phi == num_phi
    ours = official.tokenizer_key_from_official(key)
    with torch.device("meta"):
        assert ours in HybridTokenizer(config).state_dict()


@pytest.mark.parametrize("change, message", [
    ({"double_decoder": True}, "double_decoder"),
    ({"quantizer_type": "fsq"}, "quantizer_type"),
    ({"mystery": 1}, r"unknown field\(s\) .*mystery"),
    ({"ch": 40}, "multiple of 32"),
])
def test_bad_official_configs(change, message):
    with pytest.raises(ValueError, match=message):
        official.tokenizer_config_from_official(dict(RELEASE["tokenizer_config"], **change))


@pytest.mark.parametrize("section, field", [
    ("llm_config", "context_token"), ("llm_config", "diff_width"), ("llm_config", "embed_dim"),
    ("llm_config", "norm_eps"), ("tokenizer_config", "ch_mult"), ("tokenizer_config", "v_patch_nums"),
    ("tokenizer_config", "quant_resi"), ("tokenizer_config", "vocab_size"), ("tokenizer_config", "using_znorm"),
])
@pytest.mark.parametrize("value", [None, [], {}, float("inf"), True, "8", [1.5]])
def test_official_fields_of_the_wrong_type_are_named(section, field, value):
    llm, tok = dict(RELEASE["llm_config"]), dict(RELEASE["tokenizer_config"])
    target = llm if section == "llm_config" else tok
    expected_type = official._LLM_FIELD_TYPES.get(field) or official._TOKENIZER_FIELD_TYPES[field]
    if official._TYPES[expected_type](value):
        return  # a valid value of that type (e.g. True for a boolean field)
    target[field] = value
    with pytest.raises(ValueError, match=f"^{field} must be "):
        official.hart_config_from_official(llm, tok)


def test_keys_outside_the_layout_are_named():
    with pytest.raises(CheckpointError, match="model.layer"):
        official.convert_tokenizer_state_dict(
            {"model.layer": torch.zeros(1)}, "hart_autoencoder_with_disc", "x.bin")
