"""Reading and writing weight files: safe loading, strict key checks, and atomic writes.

`.bin`/`.pt` files are read with `torch.load(weights_only=True)`, so pickled code is never run.
Every write goes through `outputs.atomic_path` (a temporary file, fsynced, then renamed into
place), so an interrupted write never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import inputs
from .outputs import atomic_path


class CheckpointError(ValueError):
    """A weight or config file is missing, unreadable, or does not fit the model."""


# ----- reading -------------------------------------------------------------------------------------

CONFIG_NAME = "config.json"  # of every model and tokenizer folder, openhart's and official


def read_state_dict(path: str | os.PathLike,
                    skip: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` or `.bin`/`.pt`/`.pth` file, on the CPU.

    Keys for which `skip(key)` is true are never read into memory (safetensors are read key by
    key; `.bin` files are memory-mapped, so a skipped tensor's pages are never touched).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys() if skip is None or not skip(k)}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"cannot read {path}: the safetensors file is truncated or corrupt ({error}); "
                "re-download or re-convert it"
            ) from error
    if path.suffix in (".bin", ".pt", ".pth"):
        state = _read_torch_file(path)
        return {k: v for k, v in state.items() if skip is None or not skip(k)}
    raise CheckpointError(f"unsupported weight file {path}: expected .safetensors, .bin, .pt or .pth")


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than plain tensors, and "
            f"openhart never runs pickled code ({str(error).splitlines()[0]}). Convert it to "
            "safetensors with the tool that wrote it"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({str(error).splitlines()[0]}); "
            "re-download it"
        ) from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def first_existing(folder: Path, names: tuple[str, ...]) -> Path:
    """The first of `names` that is a file in `folder` (files in order of preference)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no weights in {folder}: expected one of {list(names)}")


def read_json(path: str | os.PathLike) -> dict:
    """A config file's JSON object: bounded in size and nesting, UTF-8 (`inputs.read_json`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"config file not found: {path}")
    return inputs.read_json(path, "config file", error=CheckpointError)


# ----- strict loading ------------------------------------------------------------------------------

def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `module` strictly: every key present, none extra, every shape right.

    Tensors are cast to the dtype of the module's own tensors. A module built on the meta device
    receives the loaded tensors themselves (no second copy).
    Raises:
        CheckpointError: naming the offending key(s), `source` and the expected shape.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: file has {tuple(state_dict[k].shape)}, model expects {tuple(expected[k].shape)}"
        for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(
            f"{k} (expected shape {tuple(expected[k].shape)})" for k in missing[:8]
        ) + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:8])
                        + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""))
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong[:8]))
    kinds = [f"{k} ({state_dict[k].dtype}, the model needs {expected[k].dtype})" for k in expected
             if k in state_dict and state_dict[k].is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        problems.append("wrong tensor kinds: " + ", ".join(kinds[:8]))
    if not problems:
        broken = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            problems.append("NaN or infinite values in " + ", ".join(broken[:8])
                            + (f" and {len(broken) - 8} more" if len(broken) > 8 else ""))
    if problems:
        raise CheckpointError(
            f"{source} does not match the model built from its config: " + " | ".join(problems)
            + "; re-download or re-convert it"
        )
    on_meta = any(t.is_meta for t in expected.values())
    cast = {k: v.to(dtype=expected[k].dtype) if v.is_floating_point() else v
            for k, v in state_dict.items()}
    module.load_state_dict(cast, strict=True, assign=on_meta)


# ----- writing -------------------------------------------------------------------------------------

def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)
