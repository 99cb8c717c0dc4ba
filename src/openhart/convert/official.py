"""The official HART release layout: config field names and state-dict key names.

This is the only module that knows the official names (mit-han-lab/hart, `hart-0.7b-1024px`;
their conventions are in docs/official-behaviour.md). It translates official `config.json`
files into openhart configs and official state-dict keys into openhart module paths, strictly:
an unknown field or key is an error. It also reads official folders (`read_official_model`,
`read_official_tokenizer`) for `openhart.loading`; which folder is official, and its file names,
are `openhart.layout`'s. It imports nothing above loading, so that loading can ask it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import DiffusionHeadConfig, HARTConfig, TokenizerConfig, TransformerConfig
from ..layout import LLM_EMA_WEIGHTS, LLM_RAW_WEIGHTS, TOKENIZER_WEIGHTS
from ..serialization import CONFIG_NAME, CheckpointError, first_existing, read_json, read_state_dict

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


# ----- typed fields ---------------------------------------------------------------------------------
# The JSON type of every official field that openhart reads: a value of another type (null, a
# list, an object, a bool for a number, NaN/Inf) is a one-line error naming the field.

def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return (_integer(value) or isinstance(value, float)) and math.isfinite(value)


def _integers(value) -> bool:
    return isinstance(value, list) and bool(value) and all(_integer(v) for v in value)


_TYPES = {
    "an integer": _integer, "a finite number": _number, "true or false": lambda v: isinstance(v, bool),
    "a string": lambda v: isinstance(v, str), "a non-empty list of integers": _integers,
    "a step count (string or integer)": lambda v: isinstance(v, str) or _integer(v),
}
_TOKENIZER_FIELD_TYPES = {
    "vocab_size": "an integer", "z_channels": "an integer", "ch": "an integer",
    "ch_mult": "a non-empty list of integers", "dropout": "a finite number", "beta": "a finite number",
    "using_znorm": "true or false", "quant_conv_ks": "an integer", "v_patch_nums": "a non-empty list of integers",
    "quant_resi": "a finite number", "share_quant_resi": "an integer", "default_qresi_counts": "an integer",
    "double_decoder": "true or false", "quantizer_type": "a string",
}
_LLM_FIELD_TYPES = {
    "embed_dim": "an integer", "depth": "an integer", "num_heads": "an integer", "mlp_ratio": "a finite number",
    "context_token": "an integer", "context_dim": "an integer", "use_context_norm": "true or false",
    "norm_eps": "a finite number", "diff_width": "an integer", "diff_depth": "an integer",
    "num_sampling_steps": "a step count (string or integer)", "patch_nums": "a non-empty list of integers",
}


def check_field_types(data: Mapping, types: Mapping[str, str]) -> None:
    """Raise a ValueError naming the first field of `data` whose value is not of its type."""
    for field, expected in types.items():
        if field in data and not _TYPES[expected](data[field]):
            shown = repr(data[field])
            raise ValueError(f"{field} must be {expected}, got {shown if len(shown) <= 40 else shown[:40] + '...'}")


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
    check_field_types(data, _TOKENIZER_FIELD_TYPES)
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


# ----- transformer + diffusion head (the `llm/` folder) ---------------------------------------------

LLM_MODEL_TYPE = "hart_transformer_t2i"

# Switches of HARTForT2IConfig that must have the released value (openhart implements that one).
_LLM_REQUIRED = {
    "attn_type": "llama", "mlp_type": "llama", "disable_aln": True, "shared_aln": False,
    "attn_l2_norm": False, "use_cross_attn": False, "use_timestep_embed": True, "sampler": "iddpm",
}
# Fields that only steer training, kernels or unused code paths.
_LLM_IGNORED_FIELDS = frozenset({
    "drop_rate", "attn_drop_rate", "drop_path_rate", "cond_drop_rate", "diffusion_batch_mul",
    "flash_if_available", "fused_if_available", "sep_aln_pooling_mode", "context_norm_scale",
    "vae_path", "diffusion_head_repeats",
})
_LLM_FIELD_MAP = {
    "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "context_token": "context_tokens", "context_dim": "context_dim",
    "use_context_norm": "use_context_norm", "norm_eps": "norm_eps",
}
_LLM_KEY_RULES = [
    (r"^lvl_embed\.mlp\.0\.", "transformer.level_embed.linear_1."),
    (r"^lvl_embed\.mlp\.2\.", "transformer.level_embed.linear_2."),
    (r"^blocks\.(\d+)\.attn\.qkv_proj\.", r"transformer.blocks.\1.attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.(q_bias|v_bias)$", r"transformer.blocks.\1.attn.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"transformer.blocks.\1.attn.out."),
    (r"^blocks\.(\d+)\.ffn\.(gate|up|down)_proj\.", r"transformer.blocks.\1.mlp.\2."),
    (r"^blocks\.(\d+)\.ln_wo_grad\.", r"transformer.blocks.\1.norm."),
    (r"^head_nm\.ln_wo_grad\.", "transformer.head_norm.norm."),
    (r"^head_nm\.ada_lin\.1\.", "transformer.head_norm.modulation."),
    (r"^decoder_norm\.", "transformer.diffusion_cond_norm."),
    (r"^(word_embed|context_embed|context_norm|head)\.", r"transformer.\1."),
    (r"^diffloss\.net\.time_embed\.mlp\.0\.", "head.time_embed.linear_1."),
    (r"^diffloss\.net\.time_embed\.mlp\.2\.", "head.time_embed.linear_2."),
    (r"^diffloss\.net\.(cond_embed|input_proj)\.", r"head.\1."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.in_ln\.", r"head.blocks.\1.norm."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.mlp\.0\.", r"head.blocks.\1.fc1."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.mlp\.2\.", r"head.blocks.\1.fc2."),
    (r"^diffloss\.net\.res_blocks\.(\d+)\.adaLN_modulation\.1\.", r"head.blocks.\1.modulation."),
    (r"^diffloss\.net\.final_layer\.adaLN_modulation\.1\.", "head.final.modulation."),
    (r"^diffloss\.net\.final_layer\.linear\.", "head.final.linear."),
]
# Buffers of the official checkpoint that openhart recomputes (or that are zero by construction).
LLM_SKIPPED_KEYS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")


def read_official_model(root: Path, weights: str = "auto") -> tuple[HARTConfig, dict, str]:
    """The HARTConfig, the openhart state dict and a description of the files read, from an
    official model root (`llm/` + `tokenizer/`).

    Args:
        weights: "ema" (`llm/ema_model.bin`), "raw" (`model.safetensors` or `pytorch_model.bin`)
            or "auto" (EMA when present, as the official scripts do).
    """
    llm, tok = root / "llm", root / "tokenizer"
    llm_data, tok_data = read_json(llm / CONFIG_NAME), read_json(tok / CONFIG_NAME)
    if not is_official_llm_config(llm_data):
        raise CheckpointError(f"{llm / CONFIG_NAME} has model_type {llm_data.get('model_type')!r}, "
                              f"expected {LLM_MODEL_TYPE!r}")
    if not is_official_tokenizer_config(tok_data):
        raise CheckpointError(f"{tok / CONFIG_NAME} has model_type {tok_data.get('model_type')!r}, "
                              f"expected one of {sorted(TOKENIZER_MODEL_TYPES)}")
    try:
        tokenizer_config_from_official(tok_data)
    except ValueError as error:
        raise CheckpointError(f"{tok / CONFIG_NAME}: {error}") from error
    try:
        config = hart_config_from_official(llm_data, tok_data)
    except ValueError as error:
        raise CheckpointError(f"{llm / CONFIG_NAME}: {error}") from error
    llm_weights = _llm_weights(llm, weights)
    tok_weights = first_existing(tok, TOKENIZER_WEIGHTS)
    # training-only buffers are skipped unread: the 380 MB attention mask, the discriminator
    state = convert_llm_state_dict(
        read_state_dict(llm_weights, skip=lambda k: k == "attn_bias_for_masking"), str(llm_weights))
    tokenizer_state = convert_tokenizer_state_dict(
        read_state_dict(tok_weights, skip=lambda k: k.startswith("disc.")),
        tok_data["model_type"], str(tok_weights))
    state.update({f"tokenizer.{k}": v for k, v in tokenizer_state.items()})
    return config, state, f"{llm_weights} + {tok_weights}"


def read_official_tokenizer(folder: Path, data: Mapping) -> tuple[TokenizerConfig, dict, str]:
    """The TokenizerConfig, the openhart state dict and the weights file of an official
    `tokenizer/` folder whose config.json is `data`."""
    config = tokenizer_config_from_official(data)
    weights = first_existing(folder, TOKENIZER_WEIGHTS)
    state = convert_tokenizer_state_dict(read_state_dict(weights), data["model_type"], str(weights))
    return config, state, str(weights)


def _llm_weights(llm: Path, weights: str) -> Path:
    ema = llm / LLM_EMA_WEIGHTS
    if weights == "ema" or (weights == "auto" and ema.is_file()):
        if not ema.is_file():
            raise CheckpointError(f"weights='ema' was asked for but {ema} does not exist")
        return ema
    return first_existing(llm, LLM_RAW_WEIGHTS)


def is_official_llm_config(data: Mapping) -> bool:
    return data.get("model_type") == LLM_MODEL_TYPE


def hart_config_from_official(llm: Mapping, tokenizer: Mapping) -> HARTConfig:
    """Translate the official `llm/config.json` and `tokenizer/config.json` into a HARTConfig.

    Raises:
        ValueError: for unknown fields, and for switches other than the release's.
    """
    known = set(_LLM_FIELD_MAP) | set(_LLM_REQUIRED) | _LLM_IGNORED_FIELDS | HF_GENERIC_FIELDS
    known |= {"diff_width", "diff_depth", "num_sampling_steps", "context_token", "patch_nums"}
    unknown = sorted(k for k in llm if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown field(s) in the official llm config: {unknown}")
    check_field_types(llm, _LLM_FIELD_TYPES)
    for field, released in _LLM_REQUIRED.items():
        if field in llm and llm[field] != released:
            raise ValueError(f"{field}={llm[field]!r} is not supported: openhart implements the "
                             f"released architecture ({field}={released!r})")
    if int(llm.get("context_token", 0)) < 1:
        raise ValueError("context_token must be >= 1: class-conditional HART (no text prefix) "
                         "is not supported")
    steps = str(llm.get("num_sampling_steps", "8"))
    if not steps.isdigit():
        raise ValueError(f"num_sampling_steps={steps!r} is not supported: expected a step count")
    tok = tokenizer_config_from_official(tokenizer)
    if "patch_nums" in llm and llm["patch_nums"] != list(tok.patch_nums):
        raise ValueError(f"the llm's patch_nums {llm['patch_nums']!r} differ from the tokenizer's "
                         f"v_patch_nums {list(tok.patch_nums)}")
    kwargs = {ours: llm[theirs] for theirs, ours in _LLM_FIELD_MAP.items() if theirs in llm}
    transformer = TransformerConfig(**kwargs)
    head = DiffusionHeadConfig(width=int(llm.get("diff_width", 1024)),
                               depth=int(llm.get("diff_depth", 6)), sampling_steps=int(steps))
    return HARTConfig(tokenizer=tok, transformer=transformer, head=head)


def llm_key_from_official(key: str) -> str | None:
    """openhart key (prefixed `transformer.` or `head.`) of an official llm key; None if skipped.

    Raises:
        KeyError: for a key outside the official layout.
    """
    if LLM_SKIPPED_KEYS.match(key):
        return None
    for pattern, replacement in _LLM_KEY_RULES:
        ours, count = re.subn(pattern, replacement, key)
        if count:
            return ours
    raise KeyError(key)


def convert_llm_state_dict(state_dict: Mapping[str, torch.Tensor], source: str
                           ) -> dict[str, torch.Tensor]:
    """Rename an official llm state dict; check the skipped buffers hold what they must.

    Raises:
        CheckpointError: naming keys outside the layout, or a non-zero `zero_k_bias`.
    """
    converted, bad = {}, []
    for key, tensor in state_dict.items():
        try:
            ours = llm_key_from_official(key)
        except KeyError:
            bad.append(key)
            continue
        if ours is not None:
            converted[ours] = tensor
        elif key.endswith("zero_k_bias") and bool(tensor.any()):
            raise CheckpointError(f"{source}: {key} is not all zeros; openhart's attention has no "
                                  "key bias, so this checkpoint cannot be loaded faithfully")
    if bad:
        raise CheckpointError(f"{source} has key(s) outside the official llm layout: "
                              f"{bad[:8]}{' ...' if len(bad) > 8 else ''}")
    return converted
