"""`openhart export`: a training checkpoint -> a model folder that loads like any other.

A transformer checkpoint becomes a HART model folder (`HARTPipeline.from_pretrained`), a tokenizer
checkpoint a tokenizer folder (`load_tokenizer`, `openhart reconstruct --tokenizer`). The EMA
weights are exported by default.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import HARTConfig, TokenizerConfig, config_from_dict
from ..loading import save_model, save_tokenizer
from ..model import HARTModel
from ..serialization import CheckpointError
from ..tokenizer import HybridTokenizer
from .checkpoint import load_checkpoint


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                      weights: str = "ema") -> Path:
    """Write the model of a training checkpoint (file, or run/checkpoints folder: the newest).

    Args:
        weights: "ema" (the default; falls back to the raw weights, with an error if asked for
            explicitly and absent) or "raw".
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
        return save_tokenizer(tokenizer, out)
    if kind == "transformer":
        model = HARTModel(config_from_dict(HARTConfig, state["config"]["hart"]))
        model.load_state_dict({**state["frozen"], **trained})
        return save_model(model, out, text_encoder=state.get("extra", {}).get("text_encoder"))
    raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}")
