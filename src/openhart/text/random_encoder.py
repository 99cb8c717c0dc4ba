"""A small text encoder with seeded random weights, for demos and tests without downloads.

A 2-layer Qwen2 model of the requested width over a byte-level vocabulary (every UTF-8 byte is a
token): prompts map to deterministic features, but they carry no learned meaning.
"""

from __future__ import annotations

import torch

from .encoder import HFPromptEncoder

BYTE_VOCAB = 256
PAD_TOKEN = "<pad>"


def byte_tokenizer():
    """A fast tokenizer whose tokens are the 256 bytes (GPT-2 byte alphabet) plus <pad>."""
    # lazy: transformers adds ~2 s to every start of openhart
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    vocab[PAD_TOKEN] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD_TOKEN, padding_side="right")


def random_prompt_encoder(hidden_size: int, max_length: int, seed: int = 0,
                          device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> HFPromptEncoder:
    """A seeded random Qwen2 encoder of width `hidden_size` (a multiple of 2 heads)."""
    # lazy: transformers adds ~2 s to every start of openhart
    from transformers import Qwen2Config, Qwen2Model

    heads = 2 if hidden_size % 2 == 0 else 1
    config = Qwen2Config(vocab_size=BYTE_VOCAB + 1, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max(512, 2 * max_length))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2Model(config)
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return HFPromptEncoder(model, byte_tokenizer(), max_length, name=f"random-qwen2-{hidden_size}")
