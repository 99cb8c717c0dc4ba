"""Model folders on disk: the official release layout and openhart's own, for loading and saving.

openhart's own folder is `config.json` ({"model_type": "openhart.<kind>", "config": {...}}) plus
`model.safetensors` with openhart key names (`openhart.layout` names the files and tells the two
layouts apart). Official folders are read and translated by `openhart.convert.official`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .config import HARTConfig, SamplingConfig, TokenizerConfig, config_from_dict, config_to_dict
from .convert import official
from .hart_model import HARTModel
from .layout import (FOLDER_FILES, FORMAT_VERSION, MODEL_TYPE, SAMPLING_KEY, TOKENIZER_MODEL_TYPE, WEIGHTS_NAME,
                     official_root)
from .outputs import staged_folder
from .serialization import (
    CONFIG_NAME,
    CheckpointError,
    first_existing,
    load_into,
    read_json,
    read_state_dict,
    write_json,
    write_safetensors,
)
from .tokenizer import HybridTokenizer, use_channels_last



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
        path: tokenizer folder, a model folder with a `tokenizer/` subfolder, or an openhart model
            folder that keeps every part in one file (the shipped model): its tokenizer.
        device: where to put the weights (default CPU).
        dtype: floating dtype of the weights (default: float32).
    """
    single_file = Path(path) / CONFIG_NAME
    if single_file.is_file() and not (Path(path) / "tokenizer").is_dir() \
            and read_json(single_file).get("model_type") == MODEL_TYPE:
        return load_model(path, device=device, dtype=dtype or torch.float32).tokenizer
    folder = resolve_tokenizer_dir(path)
    config_path = folder / CONFIG_NAME
    data = read_json(config_path)
    try:
        if official.is_official_tokenizer_config(data):
            config, state, weights = official.read_official_tokenizer(folder, data)
        elif data.get("model_type") == TOKENIZER_MODEL_TYPE:
            _check_format_version(config_path, data)
            config = config_from_dict(TokenizerConfig, data.get("config", {}))
            weights = first_existing(folder, (WEIGHTS_NAME,))
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
    tokenizer = tokenizer.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    return use_channels_last(tokenizer)


def save_tokenizer(tokenizer: HybridTokenizer, path: str | os.PathLike, *, overwrite: bool = True,
                   sources: tuple = ()) -> Path:
    """Write `tokenizer` as an openhart folder (config.json + model.safetensors), atomically."""
    config = {"model_type": TOKENIZER_MODEL_TYPE, "format_version": FORMAT_VERSION,
              "config": config_to_dict(tokenizer.config)}
    return _save_folder(path, config, tokenizer.state_dict(), TOKENIZER_MODEL_TYPE, overwrite=overwrite,
                        sources=sources)


def _save_folder(path: str | os.PathLike, config: dict, state: dict, model_type: str, *,
                 copy_files: dict[str, Path] | None = None, overwrite: bool = True, sources: tuple = ()) -> Path:
    """Write config.json and model.safetensors (and `copy_files`) in a staging folder whose files
    then reach `path` (`outputs.staged_folder`)."""
    with staged_folder(path, overwrite=overwrite, owned=FOLDER_FILES, sources=sources) as staging:
        write_folder_files(staging, config, state, model_type)
        for name, source in (copy_files or {}).items():
            shutil.copyfile(source, staging / name)
    return Path(path)


def write_folder_files(folder: Path, config: dict, state: dict, model_type: str) -> None:
    """config.json and model.safetensors of a folder; weights that are not finite are refused
    first (every loader would refuse the folder later)."""
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"refusing to write a {model_type} with NaN or infinite weights ("
                              + ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
                              + "): the run diverged; export an earlier checkpoint or the other weights")
    write_safetensors(folder / WEIGHTS_NAME, state, {"format": "pt", "openhart_model_type": model_type})
    write_json(folder / CONFIG_NAME, config)


# ----- whole models ----------------------------------------------------------------------------------

def load_model(path: str | os.PathLike, *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, weights: str = "auto") -> HARTModel:
    """Load a HART model (tokenizer, transformer, diffusion head) strictly, in eval mode.

    Args:
        path: an openhart model folder, an official release folder (with `llm/` and
            `tokenizer/`), or the official `llm/` folder itself.
        device, dtype: where and in which floating dtype to put the weights (default CPU, fp32).
        weights: official folders only: "ema" (`llm/ema_model.bin`), "raw" (`model.safetensors`
            or `pytorch_model.bin`) or "auto" (EMA when present, as the official scripts do).
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}" if not folder.exists() else
                              f"{folder} is a file; pass the model folder")
    data = read_json(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else {}
    if data.get("model_type") == MODEL_TYPE:
        config, state, source = _read_own_model(folder, data)
    elif (root := official_root(folder)) is not None:
        config, state, source = official.read_official_model(root, weights)
    else:
        raise CheckpointError(
            f"{folder} is not a model folder: expected an openhart folder (config.json with "
            f"model_type {MODEL_TYPE!r}) or the official layout with llm/config.json and "
            "tokenizer/config.json (e.g. hart-0.7b-1024px/)")
    with torch.device("meta"):
        model = HARTModel(config)
    check_memory(model, dtype or torch.float32, torch.device(device or "cpu"), source)
    load_into(model, state, source)
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()
    use_channels_last(model.tokenizer)
    return model


def save_model(model: HARTModel, path: str | os.PathLike, *, text_encoder: dict | None = None,
               sampling: SamplingConfig | None = None, copy_files: dict[str, Path] | None = None,
               overwrite: bool = True, sources: tuple = ()) -> Path:
    """Write `model` as an openhart folder (config.json + model.safetensors), atomically.

    Args:
        text_encoder: how the model's text features were made ({"kind": "huggingface", "path",
            "context_tokens", "context_dim"} or {"kind": "random", "seed", ...}); recorded in
            config.json so that the pipeline can find its text encoder.
        sampling: the sampling settings recommended for this model, recorded in config.json
            (`recommended_sampling` reads them back; the official defaults when absent).
        copy_files: more files of the folder, {name: file to copy} (e.g. the system prompt).
        overwrite, sources: as `outputs.staged_folder`: into an existing folder only the
            folder's own files are replaced; a path that is or holds a source is refused.
    """
    return _save_folder(path, model_config_json(model, text_encoder=text_encoder, sampling=sampling),
                        model.state_dict(), MODEL_TYPE, copy_files=copy_files, overwrite=overwrite, sources=sources)


def model_config_json(model: HARTModel, *, text_encoder: dict | None = None,
                      sampling: SamplingConfig | None = None) -> dict:
    """The config.json of an openhart model folder."""
    config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION,
              "config": config_to_dict(model.config)}
    if text_encoder is not None:
        config["text_encoder"] = text_encoder
    if sampling is not None:
        config[SAMPLING_KEY] = config_to_dict(sampling)
    return config


def recommended_sampling(path: str | os.PathLike) -> SamplingConfig:
    """The sampling defaults of a model folder: the `sampling` object of an openhart folder's
    config.json (missing fields take `SamplingConfig`'s defaults), or the official defaults for
    official folders and openhart folders that record none."""
    config_path = Path(path) / CONFIG_NAME
    data = read_json(config_path) if config_path.is_file() else {}
    if data.get("model_type") != MODEL_TYPE or data.get(SAMPLING_KEY) is None:
        return SamplingConfig()
    try:
        return config_from_dict(SamplingConfig, data[SAMPLING_KEY])
    except ValueError as error:
        raise CheckpointError(f"{config_path}: {SAMPLING_KEY}: {error}") from error


def check_memory(module: torch.nn.Module, dtype: torch.dtype, device: torch.device, source: str) -> None:
    """Refuse a model whose weights alone would not fit in this machine's available memory
    (checked on the meta-device model, before anything is allocated)."""
    need = sum(p.numel() for p in module.parameters()) * torch.empty((), dtype=dtype).element_size()
    available = available_memory(device)
    if available is not None and need > available:
        raise CheckpointError(f"{source}: the model's weights need {need / 2**30:.1f} GiB in {dtype}, but "
                              f"{available / 2**30:.1f} GiB are available here; free memory, use a smaller "
                              "dtype (--dtype bf16) or a larger machine")


def available_memory(device: torch.device) -> int | None:
    """Bytes available for new allocations on `device` (None when unknown)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _check_format_version(config_path: Path, data: dict) -> None:
    """openhart folders of a newer format are refused rather than misread."""
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: format_version {version!r} is not one this openhart reads "
                              f"(1 to {FORMAT_VERSION}); upgrade openhart or re-export the model")


def _read_own_model(folder: Path, data: dict) -> tuple[HARTConfig, dict, str]:
    _check_format_version(folder / CONFIG_NAME, data)
    try:
        config = HARTConfig.from_dict(data.get("config", {}))
    except ValueError as error:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {error}") from error
    weights = first_existing(folder, (WEIGHTS_NAME,))
    return config, read_state_dict(weights), str(weights)
