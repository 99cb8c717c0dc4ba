"""The two layouts of a model folder, by file name: openhart's own and the official release's.

Which layout a folder has and where its files are, asked by loading (`openhart.loading`), model
resolution (`openhart.hub`) and conversion (`openhart.convert`). Checkpoint key names are not
here: the official ones are in `openhart.convert.official` only.
"""

from __future__ import annotations

from pathlib import Path

from .serialization import CONFIG_NAME, read_json
from .text.encoder import SYSTEM_PROMPT_FILE

# ----- openhart's layout: config.json ({"model_type": ..., "config": {...}}) + model.safetensors ---

# 2: the transformer and head sections no longer repeat the tokenizer's scales, latent width and
# codebook size, nor the head its condition width (format-1 files are still read).
FORMAT_VERSION = 2
MODEL_TYPE = "openhart.hart"
TOKENIZER_MODEL_TYPE = "openhart.tokenizer"
WEIGHTS_NAME = "model.safetensors"
SAMPLING_KEY = "sampling"  # the key of config.json that holds a model's recommended sampling settings
MODEL_CARD = "README.md"
# The files of an openhart model or tokenizer folder: writing a folder replaces these (and only
# these) in an existing one, so that no file of an earlier model stays mixed with the new one.
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, SYSTEM_PROMPT_FILE)


def is_openhart_model(folder: str | Path) -> bool:
    """Whether `folder` holds an openhart model: config.json of MODEL_TYPE and its weights."""
    folder = Path(folder)
    try:
        data = read_json(folder / CONFIG_NAME)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == MODEL_TYPE and (folder / WEIGHTS_NAME).is_file()


# ----- the official layout: llm/ (config.json + weights) and tokenizer/ (config.json + weights) ----

LLM_EMA_WEIGHTS = "ema_model.bin"
LLM_RAW_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def is_official_folder(folder: str | Path) -> bool:
    """Whether `folder` is the root of an official model (llm/config.json, tokenizer/config.json)."""
    return (Path(folder) / "llm" / CONFIG_NAME).is_file() and (Path(folder) / "tokenizer" / CONFIG_NAME).is_file()


def official_root(folder: str | Path) -> Path | None:
    """The official model root that `folder` stands for, or None: the root itself (`llm/` and
    `tokenizer/` with their config.json), or its `llm/` folder. Loading and model resolution
    both ask this one question."""
    folder = Path(folder)
    if is_official_folder(folder):
        return folder
    if folder.name == "llm" and is_official_folder(folder.parent):
        return folder.parent
    return None


def has_llm_weights(folder: str | Path) -> bool:
    """Whether an official root holds any of the transformer's weight files."""
    return any((Path(folder) / "llm" / name).is_file() for name in (LLM_EMA_WEIGHTS, *LLM_RAW_WEIGHTS))
