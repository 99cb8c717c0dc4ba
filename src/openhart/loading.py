"""Model folders on disk: the official release layout and openhart's own, for loading and saving.

openhart's own folder is `config.json` ({"model_type": "openhart.<kind>", "config": {...}}) plus
`model.safetensors` with openhart key names. Official folders are translated by
`openhart.convert.official`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import TokenizerConfig, config_from_dict, config_to_dict
from .convert import official
from .serialization import (
    CheckpointError,
    load_into,
    read_json,
    read_state_dict,
    write_json,
    write_safetensors,
)
from .tokenizer import HybridTokenizer

FORMAT_VERSION = 1
TOKENIZER_MODEL_TYPE = "openhart.tokenizer"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Official weight files in order of preference.
OFFICIAL_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def resolve_tokenizer_dir(path: str | os.PathLike) -> Path:
    """The tokenizer folder itself, or the `tokenizer/` folder of a full model folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"tokenizer folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; pass the folder that holds config.json and the weights")
    if not (path / CONFIG_NAME).is_file() and (path / "tokenizer" / CONFIG_NAME).is_file():
        return path / "tokenizer"
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"{path} has no {CONFIG_NAME}: pass a tokenizer folder (config.json + model.safetensors "
            "or pytorch_model.bin), or a model folder with a tokenizer/ subfolder"
        )
    return path


def load_tokenizer(path: str | os.PathLike, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> HybridTokenizer:
    """Load a tokenizer from an official or an openhart folder, strictly, in eval mode.

    Args:
        path: tokenizer folder (or a model folder with a `tokenizer/` subfolder).
        device: where to put the weights (default CPU).
        dtype: floating dtype of the weights (default: float32).
    """
    folder = resolve_tokenizer_dir(path)
    config_path = folder / CONFIG_NAME
    data = read_json(config_path)
    try:
        if official.is_official_tokenizer_config(data):
            config = official.tokenizer_config_from_official(data)
            weights = _first_existing(folder, OFFICIAL_WEIGHT_NAMES)
            state = official.convert_tokenizer_state_dict(
                read_state_dict(weights), data["model_type"], str(weights))
        elif data.get("model_type") == TOKENIZER_MODEL_TYPE:
            config = config_from_dict(TokenizerConfig, data.get("config", {}))
            weights = _first_existing(folder, (WEIGHTS_NAME,))
            state = read_state_dict(weights)
        else:
            raise CheckpointError(
                f"{config_path} has model_type {data.get('model_type')!r}; expected "
                f"{TOKENIZER_MODEL_TYPE!r} or an official one {sorted(official.TOKENIZER_MODEL_TYPES)}"
            )
    except CheckpointError:
        raise
    except ValueError as error:
        raise CheckpointError(f"{config_path}: {error}") from error
    with torch.device("meta"):
        tokenizer = HybridTokenizer(config)
    load_into(tokenizer, state, str(weights))
    return tokenizer.to(device=device or "cpu", dtype=dtype or torch.float32).eval()


def save_tokenizer(tokenizer: HybridTokenizer, path: str | os.PathLike) -> Path:
    """Write `tokenizer` as an openhart folder (config.json + model.safetensors), atomically."""
    config = {"model_type": TOKENIZER_MODEL_TYPE, "format_version": FORMAT_VERSION,
              "config": config_to_dict(tokenizer.config)}
    return _save_folder(path, config, tokenizer.state_dict(), TOKENIZER_MODEL_TYPE)


def _save_folder(path: str | os.PathLike, config: dict, state: dict, model_type: str) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"parent folder does not exist: {path.parent}")
    metadata = {"format": "pt", "openhart_model_type": model_type}
    if path.exists():  # replace file by file: weights first, so config.json never names missing weights
        write_safetensors(path / WEIGHTS_NAME, state, metadata)
        write_json(path / CONFIG_NAME, config)
        return path
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_safetensors(staging / WEIGHTS_NAME, state, metadata)
        write_json(staging / CONFIG_NAME, config)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no weights in {folder}: expected one of {list(names)}")
