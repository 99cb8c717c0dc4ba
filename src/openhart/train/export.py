"""`openhart export`: a training checkpoint -> a model folder that loads like any other.

A transformer checkpoint becomes a HART model folder (`HARTPipeline.from_pretrained`), a tokenizer
checkpoint a tokenizer folder (`load_tokenizer`, `openhart reconstruct --tokenizer`). The EMA
weights are exported by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..config import HARTConfig, SamplingConfig, TokenizerConfig, config_from_dict
from ..loading import save_model, save_tokenizer
from ..model import HARTModel
from ..serialization import CheckpointError
from ..tokenizer import HybridTokenizer
from .checkpoint import load_checkpoint


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                      weights: str = "ema", dtype: torch.dtype = torch.float32) -> Path:
    """Write the model of a training checkpoint (file, or run/checkpoints folder: the newest).

    Args:
        weights: "ema" (the default; falls back to the raw weights, with an error if asked for
            explicitly and absent) or "raw".
        dtype: storage dtype of the floating weights: fp32, or fp16 / bf16 for a folder of half
            the size. Loading casts them to the compute dtype (fp32, or bf16 where native).
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    path = Path(checkpoint)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    state = load_checkpoint(path)
    trained = state["model"]
    if weights == "ema":
        if state.get("ema") is None:
            raise CheckpointError(f"{path} has no EMA weights (the run had optim.ema_decay 0); "
                                  "export with --weights raw")
        trained = state["ema"]
    kind = state.get("kind")
    if kind == "tokenizer":
        tokenizer = HybridTokenizer(config_from_dict(TokenizerConfig, state["config"]["tokenizer"]))
        tokenizer.load_state_dict({k.removeprefix("tokenizer."): v for k, v in trained.items()})
        return save_tokenizer(storage_cast(tokenizer, dtype), out)
    if kind == "transformer":
        model = HARTModel(HARTConfig.from_dict(state["config"]["hart"]))
        model.load_state_dict({**state["frozen"], **trained})
        model = storage_cast(model, dtype)
        extra = state.get("extra", {})
        sampling = extra.get("sampling")
        return save_model(model, out, text_encoder=extra.get("text_encoder"),
                          sampling=None if sampling is None else config_from_dict(SamplingConfig, sampling))
    raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")


def storage_cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module` with its floating weights in `dtype`; an error if a weight does not fit it."""
    if dtype == torch.float32:
        return module
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"weights can be stored as fp32, fp16 or bf16, not {dtype}")
    limit = torch.finfo(dtype).max
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and tensor.abs().max() > limit:
            raise ValueError(f"{name} has values beyond the range of {dtype} (max {limit:g}); "
                             "store the weights as fp32 or bf16")
    return module.to(dtype)
