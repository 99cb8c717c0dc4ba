"""Adapter folders on disk, written as peft writes them, with openhart's record beside them.

    adapter_config.json          peft's LoraConfig (rank, alpha, target_modules, base model)
    adapter_model.safetensors    the LoRA weights, under peft's names
                                 (base_model.model.<module>.lora_A.weight, ...)
    openhart_adapter.json        openhart's record: the base model (name, revision, probe and
                                 fingerprint of its weights), the training resolution and scales,
                                 trigger words, recommended sampling settings, training settings

`peft.PeftModel.from_pretrained(HARTModel(config), folder)` loads such a folder too. A folder is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..inputs import read_json
from ..outputs import staged_folder
from ..serialization import CheckpointError, read_state_dict, write_json, write_safetensors
from .fingerprint import check_probe, fingerprint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RECORD = "openhart_adapter.json"
RECORD_FORMAT = "openhart.lora"
RECORD_VERSION = 1
# The prefix peft's PeftModel.save_pretrained puts before module names.
PEFT_PREFIX = "base_model.model."
# The adapter folder inside a `openhart finetune` run folder.
RUN_ADAPTER_DIR = "lora"
# Largest adapter_config.json / openhart_adapter.json read (the record's probe is tens of KB).
MAX_JSON_BYTES = 16 * 2**20


class AdapterMismatch(ValueError):
    """An adapter trained on other base weights than the model it is given to."""


@dataclass(frozen=True, kw_only=True)
class AdapterRecord:
    """openhart's record of an adapter (openhart_adapter.json).

    Attributes:
        base_model: the base as `--model` takes it: a Hub id (with @revision), a folder, or None
            for the model that ships with openhart.
        base_revision: the base's Hub revision, if it came from the Hub.
        base_probe: `fingerprint.weights_probe` of the base weights; `base_fingerprint` its hash.
        resolution: the training resolution in pixels, and `patch_nums` its scales.
        trigger_words: words the captions used for the new concept, if the user named any.
        sampling: recommended sampling settings (SamplingConfig fields), or None.
        train: how it was trained (rank, alpha, targets, steps, learning rate, ...).
    """

    base_model: str | None
    base_revision: str | None = None
    base_probe: dict = field(repr=False)
    resolution: int | None = None
    patch_nums: list[int] | None = None
    trigger_words: list[str] = field(default_factory=list)
    sampling: dict | None = None
    train: dict = field(default_factory=dict)

    @property
    def base_fingerprint(self) -> str:
        return fingerprint(self.base_probe)

    def to_json(self) -> dict:
        return {"format": RECORD_FORMAT, "format_version": RECORD_VERSION,
                "base_fingerprint": self.base_fingerprint, **asdict(self)}

    @classmethod
    def from_json(cls, data: object, source: Path) -> "AdapterRecord":
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise CheckpointError(f"{source} is not an openhart adapter record (format {RECORD_FORMAT!r})")
        if data.get("format_version") != RECORD_VERSION:
            raise CheckpointError(f"{source}: format_version {data.get('format_version')!r} is not one this "
                                  f"openhart reads ({RECORD_VERSION}); upgrade openhart")
        try:
            record = cls(base_model=_optional(data, "base_model", str), base_revision=_optional(data, "base_revision", str),
                         base_probe=check_probe(data.get("base_probe")),
                         resolution=_optional(data, "resolution", int), patch_nums=_optional(data, "patch_nums", list),
                         trigger_words=_optional(data, "trigger_words", list) or [],
                         sampling=_optional(data, "sampling", dict), train=_optional(data, "train", dict) or {})
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: {error}; restore the adapter folder") from error
        if not all(isinstance(w, str) for w in record.trigger_words):
            raise CheckpointError(f"{source}: trigger_words must be a list of strings")
        return record


@dataclass
class Adapter:
    """An adapter read from disk.

    Attributes:
        path: its folder. config: peft's LoraConfig. state: the LoRA weights under peft's names
        without the "base_model.model." prefix. record: openhart's record (None for adapters
        written by other tools). fingerprint: 16 hex digits of sha256 of the weights file.
    """

    path: Path
    config: object
    state: dict[str, torch.Tensor]
    record: AdapterRecord | None
    fingerprint: str


def save_adapter(folder: str | os.PathLike, config, state: dict[str, torch.Tensor],
                 record: AdapterRecord) -> Path:
    """Write an adapter folder (peft's two files and openhart's record), atomically.

    Args:
        config: peft's LoraConfig. state: LoRA weights under peft's names (`adapter.adapter_state`).
    """
    with staged_folder(folder, owned=(ADAPTER_CONFIG, ADAPTER_WEIGHTS, RECORD)) as staging:
        config.save_pretrained(str(staging))
        write_safetensors(staging / ADAPTER_WEIGHTS, {PEFT_PREFIX + k: v.contiguous() for k, v in state.items()},
                          {"format": "pt"})
        write_json(staging / RECORD, record.to_json())
    return Path(folder)


def adapter_folder(path: str | os.PathLike) -> Path:
    """The adapter folder itself, or the lora/ folder of an `openhart finetune` run."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"adapter not found: {path} (pass an adapter folder with {ADAPTER_CONFIG}, a "
                              "finetune run folder, or a Hub repo id)")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; pass the adapter folder that holds {ADAPTER_CONFIG}")
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if (path / RUN_ADAPTER_DIR / ADAPTER_CONFIG).is_file():
        return path / RUN_ADAPTER_DIR
    if (path / "model" / "config.json").is_file():
        raise CheckpointError(f"{path} is a full fine-tune (its model/ is a whole model): use it as "
                              f"--model {path / 'model'}, not as an adapter")
    raise CheckpointError(f"{path} has no {ADAPTER_CONFIG}: pass a LoRA adapter folder (as written by "
                          "`openhart finetune` or peft) or a finetune run folder with lora/")


def read_adapter(path: str | os.PathLike, weight_name: str | None = None) -> Adapter:
    """Read and check an adapter folder (or a finetune run folder's lora/)."""
    # lazy: peft adds ~5 s to every start; only LoRA needs it
    from peft import LoraConfig

    folder = adapter_folder(path)
    config_data = _read_json(folder / ADAPTER_CONFIG)
    if config_data.get("peft_type") not in (None, "LORA"):
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is a {config_data.get('peft_type')} adapter; "
                              "openhart loads LoRA adapters")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is not a valid peft LoRA config ({error}); "
                              "restore the adapter folder") from error
    weights = folder / (weight_name or ADAPTER_WEIGHTS)
    if Path(weight_name or ADAPTER_WEIGHTS).name != (weight_name or ADAPTER_WEIGHTS):
        raise CheckpointError(f"weight_name must be a file name inside the adapter folder, got {weight_name!r}")
    if not weights.is_file():
        raise CheckpointError(f"adapter weights not found: {weights}")
    if weights.suffix != ".safetensors":
        raise CheckpointError(f"{weights}: openhart reads adapter weights from .safetensors files only")
    raw = read_state_dict(weights)
    if not raw or not all(".lora_" in k for k in raw):
        raise CheckpointError(f"{weights} holds no LoRA weights (keys ...lora_A.weight / lora_B.weight); "
                              "restore the adapter folder")
    bad = [k for k, v in raw.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{weights}: {bad[0]} is not a finite floating-point tensor; the adapter is broken")
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()}
    record = AdapterRecord.from_json(_read_json(folder / RECORD), folder / RECORD) if (folder / RECORD).is_file() else None
    return Adapter(path=folder, config=config, state=state, record=record, fingerprint=_file_hash(weights))


def _read_json(path: Path) -> dict:
    return read_json(path, "adapter file", limit=MAX_JSON_BYTES, error=CheckpointError)


def _optional(data: dict, key: str, kind: type):
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise TypeError(f"{key} must be a {kind.__name__}, got {value!r}")
    return value


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
