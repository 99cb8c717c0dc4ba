"""Architecture configs as frozen dataclasses that round-trip through JSON, and named presets.

A config describes weights only: paths, device, dtype and backends are runtime choices and live
elsewhere. Official `config.json` field names are translated in `openhart.convert.official`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

# Scale side lengths of the released HART-0.7B-1024px model (spec section 0).
HART_1024_PATCH_NUMS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)

# GroupNorm in the VAR/LDM conv autoencoder always uses 32 groups.
GROUP_NORM_GROUPS = 32

C = TypeVar("C")


def _fail(cls_name: str, message: str) -> None:
    raise ValueError(f"invalid {cls_name}: {message}")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """HART hybrid tokenizer: VAR conv autoencoder + multi-scale residual quantizer (spec section 2).

    Args:
        vocab_size: codebook entries V.
        latent_channels: latent width Cv (`z_channels` officially).
        base_channels: channels of the first conv level (`ch`).
        channel_mult: per-level channel multipliers; len - 1 stride-2 levels give the
            downsampling factor 2 ** (len(channel_mult) - 1).
        num_res_blocks: resnet blocks per encoder level (the decoder has one more).
        dropout: dropout inside resnet blocks (training only).
        quant_conv_kernel: kernel size of `quant_conv` / `post_quant_conv`.
        patch_nums: side of each scale's token grid, small to large; the last one is the latent side.
        phi_ratio: mixing ratio r of the Phi refiners, Phi(h) = (1 - r) h + r conv(h); 0 disables Phi.
        num_phi: number of shared Phi convs; 0 means one per scale.
        normalize_codes: look codes up by cosine similarity instead of L2 distance (`using_znorm`).
        commitment_beta: weight of the commitment term of the VQ loss (training).
    """

    vocab_size: int = 4096
    latent_channels: int = 32
    base_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    quant_conv_kernel: int = 3
    patch_nums: tuple[int, ...] = HART_1024_PATCH_NUMS
    phi_ratio: float = 0.5
    num_phi: int = 4
    normalize_codes: bool = False
    commitment_beta: float = 0.25

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("vocab_size", "latent_channels", "base_channels", "num_res_blocks"):
            if getattr(self, field) < 1:
                _fail(name, f"{field} must be >= 1, got {getattr(self, field)}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            _fail(name, f"channel_mult must be non-empty positive ints, got {self.channel_mult}")
        for m in (1, *self.channel_mult):
            if (self.base_channels * m) % GROUP_NORM_GROUPS:
                _fail(name, f"base_channels * channel_mult ({self.base_channels * m}) must be a "
                      f"multiple of {GROUP_NORM_GROUPS} (GroupNorm groups)")
        if not self.patch_nums or any(p < 1 for p in self.patch_nums):
            _fail(name, f"patch_nums must be non-empty positive ints, got {self.patch_nums}")
        if any(a >= b for a, b in zip(self.patch_nums, self.patch_nums[1:])):
            _fail(name, f"patch_nums must be strictly increasing, got {self.patch_nums}")
        if self.quant_conv_kernel < 1 or self.quant_conv_kernel % 2 == 0:
            _fail(name, f"quant_conv_kernel must be a positive odd int, got {self.quant_conv_kernel}")
        if not 0.0 <= self.phi_ratio <= 1.0:
            _fail(name, f"phi_ratio must be in [0, 1], got {self.phi_ratio}")
        if self.num_phi < 0:
            _fail(name, f"num_phi must be >= 0 (0 = one Phi per scale), got {self.num_phi}")
        if not 0.0 <= self.dropout < 1.0:
            _fail(name, f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def image_size(self) -> int:
        """Side of the images the full scale list describes (latent side x downsampling)."""
        return self.patch_nums[-1] * self.downsample_factor

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a (nested) config dataclass; tuples become lists."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build a config dataclass from a dict, rejecting unknown fields and wrong types by name."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(cls.__name__, name, hints[name], value) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(owner: str, name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(owner, name, hint, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{owner}.{name} must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(owner, name, item, v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and not (isinstance(value, hint) and
                                                 (hint is bool or not isinstance(value, bool))):
        raise ValueError(f"{owner}.{name} must be {hint.__name__}, got {value!r}")
    return value


# ----- presets -----------------------------------------------------------------------------------

def tokenizer_hart_1024() -> TokenizerConfig:
    """The tokenizer of the released HART-0.7B-1024px (spec section 1.3)."""
    return TokenizerConfig()


def tokenizer_small() -> TokenizerConfig:
    """A small 256px tokenizer (~3M parameters) for demos and quick CPU runs."""
    return TokenizerConfig(
        vocab_size=1024, latent_channels=16, base_channels=32, channel_mult=(1, 1, 2, 2, 4),
        patch_nums=(1, 2, 3, 4, 6, 8, 12, 16),
    )


def tokenizer_tiny() -> TokenizerConfig:
    """A tiny 64px tokenizer for unit tests."""
    return TokenizerConfig(
        vocab_size=64, latent_channels=8, base_channels=32, channel_mult=(1, 1, 1),
        patch_nums=(1, 2, 3, 4, 6, 8, 16),
        num_phi=4,
    )
