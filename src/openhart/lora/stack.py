"""The adapters loaded into one model: checked against the base, scaled, fused and removed.

`HARTPipeline` holds one `AdapterStack` and forwards diffusers' names to it
(`load_lora_weights`, `set_adapters`, `fuse_lora`, `unfuse_lora`, `unload_lora_weights`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from . import adapter as lora
from .files import Adapter, AdapterMismatch
from .fingerprint import fingerprint, probes_match, weights_probe

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class LoadedAdapter:
    """Attributes: name (the adapter's name in the model), source (where it was read from),
    fingerprint (of its weights), scale, fused (its update is in the base weights)."""

    name: str
    source: str
    fingerprint: str
    scale: float = 1.0
    fused: bool = False

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "fingerprint": self.fingerprint,
                "scale": self.scale, **({"fused": True} if self.fused else {})}


class AdapterStack:
    """LoRA adapters of `model` (a HARTModel), by name, with their scales."""

    def __init__(self, model: nn.Module, base_name: str = "the model"):
        self.model = model
        self.base_name = base_name
        self.loaded: dict[str, LoadedAdapter] = {}
        self.baked: list[LoadedAdapter] = []   # fused, then unloaded: part of the base weights now
        self._base_probe: dict | None = None
        self._originals: dict[str, torch.Tensor] | None = None

    @property
    def base_probe(self) -> dict:
        """The probe of the base weights, taken before any adapter changes them."""
        if self._base_probe is None:
            self._base_probe = weights_probe(self.model)
        return self._base_probe

    @property
    def base_fingerprint(self) -> str:
        return fingerprint(self.base_probe)

    @property
    def fused(self) -> bool:
        return self._originals is not None

    def next_name(self) -> str:
        """diffusers' default adapter names: default_0, default_1, ..."""
        i = 0
        while f"default_{i}" in self.loaded:
            i += 1
        return f"default_{i}"

    def load(self, adapter: Adapter, name: str | None = None, scale: float = 1.0, source: str | None = None) -> str:
        """Add `adapter` under `name`, after checking that it was trained on this base (`source`:
        how the user named it, for metadata; its folder by default)."""
        name = name or self.next_name()
        if not _NAME.match(name):
            raise ValueError(f"adapter_name must be 1-64 letters, digits, '_' or '-', got {name!r}")
        if name in self.loaded:
            raise ValueError(f"an adapter named {name!r} is already loaded; choose another adapter_name "
                             "or unload_lora_weights() first")
        if self.fused:
            raise ValueError("adapters are fused into the weights: unfuse_lora() before loading another")
        self.check_base(adapter)
        source = source or str(adapter.path)
        lora.inject(self.model, adapter.config, name)
        try:
            lora.load_state(self.model, name, adapter.state, source)
        except Exception:
            self._forget(name)
            raise
        weight = next(p for n, p in self.model.named_parameters() if "lora_" not in n)
        for n, p in self.model.named_parameters():
            if f".{name}." in n and "lora_" in n:
                p.data = p.data.to(weight.dtype)  # peft keeps adapters in fp32; compute in the model's dtype
        self.loaded[name] = LoadedAdapter(name=name, source=source, fingerprint=adapter.fingerprint, scale=scale)
        self.apply_scales()
        return name

    def check_base(self, adapter: Adapter) -> None:
        """An AdapterMismatch unless the adapter's recorded base is this model's base."""
        record = adapter.record
        if record is None:
            logger.warning("%s has no openhart_adapter.json: its base model cannot be checked; it is applied "
                           "to %s because its layer shapes fit", adapter.path, self.base_name)
            return
        if not probes_match(record.base_probe, self.base_probe):
            raise AdapterMismatch(
                f"{adapter.path} was trained on base {record.base_fingerprint} "
                f"({record.base_model or 'the model that ships with openhart'}), but "
                f"{self.base_name} is {self.base_fingerprint}; load it on the model it was trained on")

    def set_scales(self, names: list[str], weights: list[float]) -> None:
        """Activate exactly `names`, with these scales; the other loaded adapters are turned off."""
        unknown = [n for n in names if n not in self.loaded]
        if unknown:
            raise ValueError(f"no adapter named {unknown[0]!r} is loaded (loaded: {sorted(self.loaded)})")
        if self.fused:
            raise ValueError("adapters are fused into the weights: unfuse_lora() before changing their scales")
        for adapter in self.loaded.values():
            adapter.scale = 0.0
        for name, weight in zip(names, weights):
            self.loaded[name].scale = _check_scale(weight)
        self.apply_scales()

    def apply_scales(self) -> None:
        lora.set_scales(self.model, {n: a.scale for n, a in self.loaded.items() if a.scale != 0.0})
        for p in self.model.parameters():
            p.requires_grad_(False)  # peft's set_adapter marks active adapters trainable

    def fuse(self, lora_scale: float = 1.0) -> None:
        """Add the active adapters' updates (times `lora_scale`) into the base weights."""
        if self.fused:
            raise ValueError("the adapters are already fused; unfuse_lora() first")
        if not self.loaded:
            raise ValueError("no adapter is loaded: load_lora_weights(...) first")
        lora_scale = _check_scale(lora_scale)
        lora.set_scales(self.model, {n: a.scale * lora_scale for n, a in self.loaded.items() if a.scale != 0.0})
        self._originals = lora.fuse(self.model)
        for adapter in self.loaded.values():
            adapter.fused = adapter.scale != 0.0
            adapter.scale *= lora_scale

    def unfuse(self) -> None:
        """The base weights as they were before `fuse`, exactly."""
        if not self.fused:
            raise ValueError("no adapter is fused")
        lora.unfuse(self.model, self._originals)
        self._originals = None
        for adapter in self.loaded.values():
            adapter.fused = False
        self.apply_scales()

    def unload(self) -> None:
        """Remove every adapter. Fused ones stay in the weights (and in the images' metadata)."""
        self.baked += [a for a in self.loaded.values() if a.fused]
        lora.remove_adapters(self.model)
        self.loaded.clear()
        self._originals = None

    def describe(self) -> list[dict]:
        """The adapters that shape this model's images now, for metadata and the web UI."""
        return [a.describe() for a in [*self.baked, *self.loaded.values()] if a.scale != 0.0 or a.fused]

    def _forget(self, name: str) -> None:
        """Remove a half-loaded adapter (its layers and config) after a failed load."""
        for layer in lora.lora_layers(self.model).values():
            if name in layer.lora_A:
                layer.delete_adapter(name)
        getattr(self.model, "peft_config", {}).pop(name, None)
        if not getattr(self.model, "peft_config", None):
            lora.remove_adapters(self.model)


def _check_scale(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
        raise ValueError(f"an adapter scale must be a number in [-100, 100], got {value!r}")
    return float(value)
