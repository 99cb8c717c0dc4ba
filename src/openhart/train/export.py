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
from ..hart_model import HARTModel
from ..hub import model_text_encoder_spec, resolve_adapter, resolve_model
from ..loading import load_model, recommended_sampling, save_model, save_tokenizer
from ..lora.files import read_adapter
from ..lora.stack import AdapterStack
from ..outputs import check_destination
from ..serialization import CheckpointError, load_into
from ..text.encoder import SYSTEM_PROMPT_FILE
from ..tokenizer import HybridTokenizer
from .checkpoint import load_checkpoint


def checkpoint_source(checkpoint: str | os.PathLike) -> Path:
    """What `export` reads: a checkpoint file, or the checkpoints/ folder of a run folder."""
    path = Path(checkpoint)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    return path


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                      weights: str = "ema", dtype: torch.dtype = torch.float32, overwrite: bool = True) -> Path:
    """Write the model of a training checkpoint (file, or run/checkpoints folder: the newest).

    Args:
        weights: "ema" (the default; falls back to the raw weights, with an error if asked for
            explicitly and absent) or "raw".
        dtype: storage dtype of the floating weights: fp32, or fp16 / bf16 for a folder of half
            the size. Loading casts them to the compute dtype (fp32, or bf16 where native).
        overwrite: whether an existing `out` receives the folder's files (its other files stay).
            `out` must not be, contain or lie inside what is read.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    path = checkpoint_source(checkpoint)
    check_destination(out, [path])
    state = load_checkpoint(path)
    trained = state["model"]
    if weights == "ema":
        if state.get("ema") is None:
            raise CheckpointError(f"{path} has no EMA weights (the run had optim.ema_decay 0); "
                                  "export with --weights raw")
        trained = state["ema"]
    kind = state.get("kind")
    section = {"tokenizer": "tokenizer", "transformer": "hart"}.get(kind)
    if section is not None and not isinstance(state["config"].get(section), dict):
        raise CheckpointError(f"{path} lacks the {section!r} section of its config: the file is damaged or was "
                              "edited; use another checkpoint of the run")
    try:
        if kind == "tokenizer":
            tokenizer = HybridTokenizer(config_from_dict(TokenizerConfig, state["config"]["tokenizer"]))
        elif kind == "transformer":
            model = HARTModel(HARTConfig.from_dict(state["config"]["hart"]))
    except ValueError as error:
        raise CheckpointError(f"{path}: the architecture config it records is invalid ({error})") from error
    if kind == "tokenizer":
        load_into(tokenizer, {k.removeprefix("tokenizer."): v for k, v in trained.items()}, str(path))
        return save_tokenizer(storage_cast(tokenizer, dtype), out, overwrite=overwrite, sources=(path,))
    if kind == "transformer":
        load_into(model, {**state["frozen"], **trained}, str(path))
        model = storage_cast(model, dtype)
        extra = state.get("extra", {})
        sampling = extra.get("sampling")
        return save_model(model, out, text_encoder=extra.get("text_encoder"),
                          sampling=None if sampling is None else config_from_dict(SamplingConfig, sampling),
                          overwrite=overwrite, sources=(path,))
    if kind == "finetune":
        raise CheckpointError(f"{path} is from `openhart finetune`: its result is the run's lora/ (an adapter; "
                              "`openhart export RUN OUT --merge-lora` makes a model folder of it) or model/")
    raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")


def merge_adapter(adapter: str | os.PathLike, out: str | os.PathLike, *, model: str | None = None,
                  weights: str = "auto", dtype: torch.dtype = torch.float32, overwrite: bool = True) -> Path:
    """Write a self-contained model folder: the base with a LoRA adapter's update added into its
    weights (`openhart export ADAPTER OUT --merge-lora`).

    Args:
        adapter: an adapter folder, a finetune run folder or a Hub id.
        model: the base (default: the one the adapter records); it must be the base the adapter
            was trained on.
    """
    folder, _ = resolve_adapter(adapter)
    check_destination(out, [folder])
    loaded = read_adapter(folder)
    if model is None and loaded.record is None:
        raise ValueError(f"{folder} records no base model (no openhart_adapter.json): pass --model BASE")
    source = resolve_model(model if model is not None else loaded.record.base_model, weights=weights)
    check_destination(out, [folder, source.path])
    hart = load_model(source.path, weights=weights)
    stack = AdapterStack(hart, source.name)
    stack.load(loaded)
    stack.fuse()
    stack.unload()
    sampling = recommended_sampling(source.path)
    if loaded.record is not None and loaded.record.sampling is not None:
        sampling = config_from_dict(SamplingConfig, loaded.record.sampling)
    prompt = Path(source.path) / SYSTEM_PROMPT_FILE
    return save_model(storage_cast(hart, dtype), out, text_encoder=model_text_encoder_spec(source), sampling=sampling,
                      copy_files={SYSTEM_PROMPT_FILE: prompt} if prompt.is_file() else None,
                      overwrite=overwrite, sources=(folder, source.path))


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
