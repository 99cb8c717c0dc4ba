"""The official HART release layout: config field names and state-dict key names.

This is the only module that knows the official names (mit-han-lab/hart, `hart-0.7b-1024px`,
spec section 1). It translates official `config.json` files into openhart configs and official
state-dict keys into openhart module paths, strictly: an unknown field or key is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..config import TokenizerConfig
from ..serialization import CheckpointError

# model_type values of official tokenizer folders, and the key prefix of the autoencoder weights.
TOKENIZER_MODEL_TYPES = {"hart_autoencoder_with_disc": "vae.", "hart_autoencoder": ""}

# Fields every transformers `PretrainedConfig` writes; they carry nothing about the architecture.
HF_GENERIC_FIELDS = frozenset({
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "torch_dtype",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward",
    "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
    "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "architectures",
    "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "bos_token_id",
    "pad_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "problem_type", "transformers_version", "model_type", "dtype", "use_cache",
})

# Official tokenizer fields that only steer training or are unused by the released code paths.
_TOKENIZER_IGNORED_FIELDS = frozenset({
    "test_mode", "levels", "hybrid", "disable_quant_resi", "freeze_codebook_for_hybrid",
    "default_qresi_counts", "share_quant_resi", "quantizer_type", "double_decoder", "quant_resi",
})

_TOKENIZER_FIELD_MAP = {
    "vocab_size": "vocab_size",
    "z_channels": "latent_channels",
    "ch": "base_channels",
    "ch_mult": "channel_mult",
    "dropout": "dropout",
    "beta": "commitment_beta",
    "using_znorm": "normalize_codes",
    "quant_conv_ks": "quant_conv_kernel",
    "v_patch_nums": "patch_nums",
}

# Official (after the "vae." prefix) -> openhart key rewrites, applied in order.
_TOKENIZER_KEY_RULES = [
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.", r"encoder.down.\1.attentions.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down.\1.resample."),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up.\1.resnets.\2."),
    (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.", r"decoder.up.\1.attentions.\2."),
    (r"^decoder\.up\.(\d+)\.upsample\.", r"decoder.up.\1.resample."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid.resnet_1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid.attention."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid.resnet_2."),
    (r"\.nin_shortcut\.", ".shortcut."),
    (r"\.proj_out\.", ".proj."),
    (r"^quantize\.embedding\.", "quantizer.codebook."),
    (r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.", r"quantizer.phi.convs.\1."),
    (r"^quantize\.quant_resi\.qresi\.", "quantizer.phi.convs.0."),
    (r"^quantize\.quant_resi\.(\d+)\.", r"quantizer.phi.convs.\1."),
]
_TOKENIZER_IGNORED_KEYS = re.compile(r"^(disc\.|vae\.quantize\.ema_vocab_hit_SV$|quantize\.ema_vocab_hit_SV$)")


def is_official_tokenizer_config(data: Mapping) -> bool:
    return data.get("model_type") in TOKENIZER_MODEL_TYPES


def tokenizer_config_from_official(data: Mapping) -> TokenizerConfig:
    """Translate an official tokenizer `config.json` (HARTAutoEncoder[WithDisc]Config).

    Raises:
        ValueError: for unknown fields and for switches openhart does not implement.
    """
    known = set(_TOKENIZER_FIELD_MAP) | _TOKENIZER_IGNORED_FIELDS | HF_GENERIC_FIELDS
    unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown field(s) in the official tokenizer config: {unknown}")
    if data.get("double_decoder", False):
        raise ValueError("double_decoder=true (a second decoder for the discrete path) is not "
                         "supported; the released tokenizer has double_decoder=false")
    if data.get("quantizer_type", "var_hybrid") not in ("var", "var_hybrid"):
        raise ValueError(f"unknown quantizer_type {data['quantizer_type']!r}: expected 'var_hybrid'")
    missing = [k for k in ("vocab_size", "z_channels", "ch", "ch_mult", "v_patch_nums") if k not in data]
    if missing:
        raise ValueError(f"the official tokenizer config lacks required field(s) {missing}")
    kwargs = {ours: data[theirs] for theirs, ours in _TOKENIZER_FIELD_MAP.items() if theirs in data}
    kwargs["channel_mult"] = tuple(kwargs["channel_mult"])
    kwargs["patch_nums"] = tuple(kwargs["patch_nums"])
    kwargs["phi_ratio"] = abs(float(data.get("quant_resi", 0.5)))
    if kwargs["phi_ratio"] <= 1e-6:  # the official code builds no Phi conv below this ratio
        kwargs["phi_ratio"] = 0.0
    share = int(data.get("share_quant_resi", 4))
    if share == 0:  # one Phi per scale (or per default_qresi_counts)
        kwargs["num_phi"] = int(data.get("default_qresi_counts", 0)) or len(kwargs["patch_nums"])
    else:
        kwargs["num_phi"] = share
    return TokenizerConfig(**kwargs)


def tokenizer_key_from_official(key: str, prefix: str = "vae.") -> str | None:
    """openhart key of an official tokenizer key; None for keys that inference does not use.

    Raises:
        KeyError: for a key outside the official layout.
    """
    if _TOKENIZER_IGNORED_KEYS.match(key):
        return None
    if not key.startswith(prefix):
        raise KeyError(key)
    ours = key[len(prefix):]
    for pattern, replacement in _TOKENIZER_KEY_RULES:
        ours = re.sub(pattern, replacement, ours)
    if not ours.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantizer.")):
        raise KeyError(key)
    return ours


def convert_tokenizer_state_dict(state_dict: Mapping[str, torch.Tensor], model_type: str,
                                 source: str) -> dict[str, torch.Tensor]:
    """Rename an official tokenizer state dict to openhart keys, dropping unused entries.

    Raises:
        CheckpointError: naming every key that is not part of the official layout.
    """
    prefix = TOKENIZER_MODEL_TYPES[model_type]
    converted: dict[str, torch.Tensor] = {}
    bad = []
    for key, tensor in state_dict.items():
        try:
            ours = tokenizer_key_from_official(key, prefix)
        except KeyError:
            bad.append(key)
            continue
        if ours is not None:
            converted[ours] = tensor
    if bad:
        raise CheckpointError(f"{source} has key(s) outside the official tokenizer layout: "
                         f"{bad[:8]}{' ...' if len(bad) > 8 else ''}")
    return converted
