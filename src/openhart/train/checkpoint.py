"""Training checkpoints: everything needed to resume exactly, written atomically, last K kept.

A checkpoint is one `ckpt-<step>.pt` file holding a dict of tensors and plain values (model, EMA,
optimizer and scheduler states, step, RNG states, data position, the architecture config). It is
written to a temporary file, fsynced and renamed, so the newest complete checkpoint is never
corrupt, and a failed write (a full disk) leaves the previous ones untouched. Files are read
back with `weights_only=True`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..outputs import atomic_path
from ..serialization import CheckpointError

FORMAT = "openhart.checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:08d}.pt"


def save_checkpoint(folder: str | os.PathLike, step: int, state: dict[str, Any],
                    keep_last: int = 3) -> Path:
    """Write `state` as the checkpoint of `step` and delete all but the newest `keep_last`.

    Args:
        state: model/EMA/optimizer/scheduler state dicts, RNG states, data position, config...
            (tensors and plain Python values only).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    for stale in path.parent.glob(".ckpt-*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state}, tmp)
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a folder, oldest first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: str | os.PathLike, config: dict | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Read a checkpoint file, or the newest one of a folder, and check its contents
    (`check_contents`) before anything uses them.

    Args:
        config: the architecture config of the run resuming; must equal the checkpoint's.
        resume: also check what a resume needs (optimizer, scheduler, RNG states, data positions).
    Raises:
        CheckpointError: not a checkpoint, unreadable, incomplete, or from another architecture.
    """
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint (ckpt-<step>.pt) in {path}")
        path = found[-1]
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to unpickle means: not a usable checkpoint
        raise CheckpointError(f"{path} is not a readable openhart checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an openhart training checkpoint (resume from a "
                              "ckpt-<step>.pt file written by `openhart train`)")
    check_contents(state, path, resume=resume)
    if config is not None and state.get("config") != config:
        raise CheckpointError(f"{path} was written for another architecture; its config differs "
                              "from this run's (start a new run, or resume with the same config)")
    return state


def check_contents(state: dict, path: Path, *, resume: bool) -> None:
    """Raise a CheckpointError naming the first entry of a checkpoint that is missing or of the
    wrong type: a doctored or damaged file is then one line, before it is used."""
    def tensors(value) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in value.items())

    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    checks = [("step", count), ("kind", lambda v: v in ("tokenizer", "transformer", "finetune")),
              ("config", lambda v: isinstance(v, dict)), ("model", lambda v: tensors(v) and bool(v)),
              ("ema", lambda v: v is None or tensors(v)), ("extra", lambda v: isinstance(v, dict))]
    if state.get("kind") == "transformer":
        checks.append(("frozen", tensors))
    if resume:
        checks += [("optimizer", lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                    and isinstance(v.get("param_groups"), list)),
                   ("scheduler", lambda v: isinstance(v, dict)),
                   ("world_size", lambda v: count(v) and v >= 1),
                   ("data_positions", lambda v: isinstance(v, list) and len(v) == state.get("world_size") and all(
                       isinstance(p, dict) and set(p) == {"epoch", "offset"} and all(count(x) for x in p.values())
                       for p in v)),
                   ("rng", lambda v: isinstance(v, list) and len(v) == state.get("world_size")
                    and all(tensors(r) for r in v))]
    optional = {"ema", "extra"}
    for key, valid in checks:
        if key not in state:
            if key in optional:
                continue
            raise CheckpointError(f"{path} lacks its {key!r} entry: the file is damaged or was edited; use "
                                  "another checkpoint of the run")
        if not valid(state[key]):
            raise CheckpointError(f"{path}: its {key!r} entry is not what `openhart train` writes; the file is "
                                  "damaged or was edited; use another checkpoint of the run")


def rng_states() -> dict[str, torch.Tensor]:
    """The state of torch's global CPU RNG, which some layers use (every draw of the training
    data and losses comes from keyed generators: `seeding.keyed_generator`)."""
    return {"torch_global": torch.get_rng_state()}


def restore_rng_states(states: dict[str, torch.Tensor]) -> None:
    if "torch_global" not in states:
        raise CheckpointError("checkpoint lacks the RNG state 'torch_global'")
    torch.set_rng_state(states["torch_global"])
