"""LoRA layers in a HART model through peft: targets, injection, scales, exact fusing, removal.

peft wraps each targeted `nn.Linear` (by default the blocks' attention projections, qkv and
out, and their MLP linears; optionally the diffusion head's) in a `peft.tuners.lora.Linear` that
adds B(A(x)) * scale to the frozen layer's output. Several adapters can live in one model, each
under its own name; `set_scales` chooses which are active and how strongly.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..config import invalid

# The layers a LoRA adapts, as peft's `target_modules` (a regular expression that must match a
# module's whole name): the attention projections (fused q, k, v; and out) and the SwiGLU
# linears of every transformer block.
TRANSFORMER_TARGETS = r"transformer\.blocks\.\d+\.(attn\.(qkv|out)|mlp\.(gate|up|down))"
# The diffusion head's linears, with `LoraSettings.train_head`.
HEAD_TARGETS = r"head\.(cond_embed|input_proj|blocks\.\d+\.(fc1|fc2|modulation)|final\.(modulation|linear))"


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """Args:
        rank: rank r of the update B A (A: r x in, B: out x r).
        alpha: the update is scaled by alpha / rank (default: alpha = rank, a scale of 1).
        dropout: dropout on the LoRA branch's input during training.
        train_head: adapt the diffusion head's linears too.
    """

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    train_head: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            invalid("LoRA settings", f"the rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            invalid("LoRA settings", f"alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            invalid("LoRA settings", f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def target_modules(self) -> str:
        if self.train_head:
            return f"({TRANSFORMER_TARGETS})|({HEAD_TARGETS})"
        return TRANSFORMER_TARGETS

    def peft_config(self, *, base_model: str | None = None, revision: str | None = None):
        """The peft `LoraConfig` of these settings (written as adapter_config.json)."""
        # lazy: peft adds ~5 s to every start; only LoRA needs it
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, lora_dropout=self.dropout,
                          target_modules=self.target_modules, bias="none", init_lora_weights=True,
                          base_model_name_or_path=base_model, revision=revision)


def target_layers(module: nn.Module, pattern: str) -> dict[str, nn.Linear]:
    """The linears of `module` whose full name matches `pattern` (peft's rule: re.fullmatch)."""
    return {name: layer for name, layer in module.named_modules()
            if isinstance(layer, nn.Linear) and re.fullmatch(pattern, name)}


def check_rank(module: nn.Module, settings: LoraSettings) -> None:
    """A rank no larger than any targeted layer's smaller side (else the update is not low-rank)."""
    layers = target_layers(module, settings.target_modules)
    if not layers:
        raise ValueError("the model has none of the layers a LoRA adapts (transformer.blocks.N.attn.qkv, ...); "
                         "is it a HART model?")
    name, layer = min(layers.items(), key=lambda item: min(item[1].in_features, item[1].out_features))
    limit = min(layer.in_features, layer.out_features)
    if settings.rank > limit:
        raise ValueError(f"LoRA rank {settings.rank} is larger than the layer {name} ({layer.in_features} -> "
                         f"{layer.out_features}); choose a rank of at most {limit}")


def inject(module: nn.Module, config, name: str) -> nn.Module:
    """Wrap the layers `config` (a peft LoraConfig) targets with a new adapter `name`, initialised
    as peft does (B = 0: the model's outputs are unchanged). Only LoRA weights stay trainable."""
    # lazy: peft adds ~5 s to every start; only LoRA needs it
    from peft import inject_adapter_in_model

    if name in getattr(module, "peft_config", {}):
        raise ValueError(f"an adapter named {name!r} is already loaded; choose another adapter_name "
                         "or unload it first")
    with warnings.catch_warnings():  # peft warns whenever a model gets its second adapter
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        return inject_adapter_in_model(config, module, adapter_name=name)


def adapter_state(module: nn.Module, name: str, state: dict[str, torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """The LoRA weights of adapter `name` under peft's names (without the adapter name), from
    the module or from a state dict of it (e.g. EMA weights)."""
    # lazy: peft adds ~5 s to every start; only LoRA needs it
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(module, state, adapter_name=name,
                                                                   save_embedding_layers=False).items()}


def load_state(module: nn.Module, name: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Set adapter `name`'s weights exactly: the same keys and shapes, or an error naming them."""
    # lazy: peft adds ~5 s to every start; only LoRA needs it
    from peft import set_peft_model_state_dict

    expected = adapter_state(module, name)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source} does not fit this model: it lacks {missing[:3]} and has {unexpected[:3]} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected LoRA weights)")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{source} does not fit this model: {key} has shape {list(value.shape)}, the "
                             f"model's is {list(expected[key].shape)} (an adapter of another model width?)")
    set_peft_model_state_dict(module, state, adapter_name=name)


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of `module`, by name."""
    # lazy: peft adds ~5 s to every start; only LoRA needs it
    from peft.tuners.lora import LoraLayer

    return {name: layer for name, layer in module.named_modules() if isinstance(layer, LoraLayer)}


def set_scales(module: nn.Module, scales: dict[str, float]) -> None:
    """Make exactly these adapters active, each with its scale (0 turns one off exactly)."""
    for layer in lora_layers(module).values():
        present = [name for name in scales if name in layer.lora_A]
        layer.set_adapter(present)
        for name in present:
            layer.set_scale(name, float(scales[name]))


@torch.no_grad()
def fuse(module: nn.Module) -> dict[str, torch.Tensor]:
    """Add the active adapters' updates into the base weights (peft's merge); returns the
    original weights, which `unfuse` puts back exactly (subtracting the update would not give
    back the same floating-point numbers)."""
    originals = {}
    for name, layer in lora_layers(module).items():
        if not layer.active_adapters:
            continue
        base = layer.get_base_layer()
        originals[name] = base.weight.data
        base.weight.data = base.weight.data.clone()
        layer.merge(adapter_names=[a for a in layer.active_adapters if a in layer.lora_A])
    return originals


@torch.no_grad()
def unfuse(module: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    layers = lora_layers(module)
    for name, weight in originals.items():
        layer = layers[name]
        layer.get_base_layer().weight.data = weight
        layer.merged_adapters.clear()


def remove_adapters(module: nn.Module) -> None:
    """Every LoRA layer replaced by the layer it wraps (with its current weights, fused or not)."""
    for name, layer in lora_layers(module).items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
