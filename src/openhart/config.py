"""Architecture configs as frozen dataclasses that round-trip through JSON, and named presets.

A config describes weights only: paths, device, dtype and backends are runtime choices and live
elsewhere. Official `config.json` field names are translated in `openhart.convert.official`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar

# Scale side lengths of the released HART-0.7B-1024px model (mit-han-lab/hart-0.7b-1024px).
HART_1024_PATCH_NUMS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)

# GroupNorm in the VAR/LDM conv autoencoder always uses 32 groups.
GROUP_NORM_GROUPS = 32

C = TypeVar("C")

# Bounds on the sizes a config may ask for: far above every released or trained HART, far below
# what would exhaust a machine while building the model (a hostile or corrupt config.json).
MAX_WIDTH = 16384           # embed_dim, context_dim, head width, conv channels
MAX_DEPTH = 256             # blocks, resnet blocks
MAX_VOCAB = 1 << 20
MAX_SCALE_SIDE = 256        # latent side: a 4096-px image at 16x downsampling
MAX_SCALES = 64
MAX_CONTEXT_TOKENS = 4096   # text prefix (the released model uses 300)
MAX_TIMESTEPS = 100_000     # diffusion schedule length
MAX_LATENT_CHANNELS = 1024
MAX_GUIDANCE = 1000         # guidance scale (4.5 is the official default)


def invalid(owner: str, message: str) -> NoReturn:
    """Raise the ValueError of an invalid config, "invalid <owner>: <message>"."""
    raise ValueError(f"invalid {owner}: {message}")


def _check_ranges(owner: Any, bounds: dict[str, tuple[float, float]]) -> None:
    """Each named field lies in [low, high] and is finite."""
    for field, (low, high) in bounds.items():
        value = getattr(owner, field)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            invalid(type(owner).__name__, f"{field} must be between {low:g} and {high:g}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """HART hybrid tokenizer: VAR conv autoencoder + multi-scale residual quantizer.

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
        _check_ranges(self, {"vocab_size": (1, MAX_VOCAB), "latent_channels": (1, MAX_LATENT_CHANNELS),
                             "base_channels": (1, MAX_WIDTH), "num_res_blocks": (1, MAX_DEPTH),
                             "quant_conv_kernel": (1, 15), "num_phi": (0, MAX_SCALES),
                             "phi_ratio": (0, 1), "dropout": (0, 0.999), "commitment_beta": (0, 1e3)})
        if not self.channel_mult or any(m < 1 for m in self.channel_mult) or len(self.channel_mult) > 8 \
                or self.base_channels * max(self.channel_mult) > MAX_WIDTH:
            invalid(name, f"channel_mult must be 1 to 8 positive ints with base_channels * channel_mult at "
                        f"most {MAX_WIDTH}, got {self.channel_mult}")
        for m in (1, *self.channel_mult):
            if (self.base_channels * m) % GROUP_NORM_GROUPS:
                invalid(name, f"base_channels * channel_mult ({self.base_channels * m}) must be a "
                      f"multiple of {GROUP_NORM_GROUPS} (GroupNorm groups)")
        if not self.patch_nums or len(self.patch_nums) > MAX_SCALES or any(
                not 1 <= p <= MAX_SCALE_SIDE for p in self.patch_nums):
            invalid(name, f"patch_nums must be 1 to {MAX_SCALES} sides between 1 and {MAX_SCALE_SIDE}, "
                        f"got {self.patch_nums}")
        if any(a >= b for a, b in zip(self.patch_nums, self.patch_nums[1:])):
            invalid(name, f"patch_nums must be strictly increasing, got {self.patch_nums}")
        if self.quant_conv_kernel < 1 or self.quant_conv_kernel % 2 == 0:
            invalid(name, f"quant_conv_kernel must be a positive odd int, got {self.quant_conv_kernel}")
        if not 0.0 <= self.phi_ratio <= 1.0:
            invalid(name, f"phi_ratio must be in [0, 1], got {self.phi_ratio}")
        if self.num_phi < 0:
            invalid(name, f"num_phi must be >= 0 (0 = one Phi per scale), got {self.num_phi}")
        if not 0.0 <= self.dropout < 1.0:
            invalid(name, f"dropout must be in [0, 1), got {self.dropout}")

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

    def scales_for_size(self, image_size: int) -> tuple[int, ...]:
        """The prefix of `patch_nums` that ends at the latent side of an `image_size` image."""
        factor = self.downsample_factor
        side = image_size // factor
        if image_size % factor or side not in self.patch_nums:
            sizes = ", ".join(str(p * factor) for p in self.patch_nums)
            raise ValueError(
                f"this tokenizer cannot take {image_size}x{image_size} images: the side must be "
                f"{factor} x a scale of patch_nums {list(self.patch_nums)}, i.e. one of "
                f"{sizes} (default {self.image_size}); resize or crop the images first"
            )
        return self.patch_nums[: self.patch_nums.index(side) + 1]


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """HART's next-scale transformer as released: llama blocks, text prefix.

    Args:
        embed_dim: model width C.
        depth: number of blocks.
        num_heads: attention heads (head_dim = embed_dim / num_heads, a multiple of 4 for 2-D RoPE).
        mlp_ratio: SwiGLU hidden = int(C * mlp_ratio * 2 / 3 + 255) // 256 * 256.
        context_tokens: text prefix length T (prompts are padded or truncated to it).
        context_dim: width D of the text encoder features.
        use_context_norm: RMSNorm on the text features before `context_embed`.
        norm_eps: epsilon of every RMSNorm.
        rope_theta: RoPE base.

    The scales, the latent width and the codebook size it works on are the tokenizer's
    (`HARTTransformer` takes the `TokenizerConfig` beside this one).
    """

    embed_dim: int = 1536
    depth: int = 24
    num_heads: int = 24
    mlp_ratio: float = 4.0
    context_tokens: int = 300
    context_dim: int = 1536
    use_context_norm: bool = True
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_ranges(self, {"embed_dim": (1, MAX_WIDTH), "depth": (1, MAX_DEPTH), "num_heads": (1, MAX_WIDTH),
                             "context_tokens": (1, MAX_CONTEXT_TOKENS), "context_dim": (1, MAX_WIDTH),
                             "mlp_ratio": (1e-3, 64), "norm_eps": (1e-12, 1.0), "rope_theta": (1.0, 1e12)})
        if self.embed_dim % self.num_heads:
            invalid(name, f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 4:
            invalid(name, f"head_dim = embed_dim / num_heads must be a multiple of 4 for the 2-D RoPE, "
                  f"got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio * 2 / 3 + 255) // 256 * 256



@dataclass(frozen=True, kw_only=True)
class DiffusionHeadConfig:
    """HART's residual diffusion head: an MLP with AdaLN blocks (MAR's design).

    Args:
        width: hidden width of the MLP.
        depth: number of AdaLN residual blocks.
        num_train_timesteps: steps of the cosine schedule it was trained on.
        residual_scale: the head models residual / residual_scale (official `vae_scale`).
        sampling_steps: default number of respaced sampling steps.

    The width of the residuals it models is the tokenizer's latent width, and the width of its
    per-token condition the transformer's (`DiffusionHead` takes both beside this config).
    """

    width: int = 1024
    depth: int = 6
    num_train_timesteps: int = 1000
    residual_scale: float = 0.6
    sampling_steps: int = 8

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_ranges(self, {"width": (1, MAX_WIDTH), "depth": (1, MAX_DEPTH),
                             "num_train_timesteps": (1, MAX_TIMESTEPS), "sampling_steps": (1, MAX_TIMESTEPS),
                             "residual_scale": (1e-6, 1e6)})
        if self.sampling_steps > self.num_train_timesteps:
            invalid(name, f"sampling_steps ({self.sampling_steps}) cannot exceed num_train_timesteps")


@dataclass(frozen=True, kw_only=True)
class HARTConfig:
    """A whole HART model: tokenizer, transformer and residual diffusion head (weights only).

    Each fact is stored once: the scales, latent width and codebook size are the tokenizer's, the
    head's condition width is the transformer's `embed_dim`.
    """

    tokenizer: TokenizerConfig
    transformer: TransformerConfig
    head: DiffusionHeadConfig

    # Facts that config.json files of format 1 repeated in the transformer and head sections, and
    # where they are stored now. They are read when they agree, and refused when they do not.
    COPIED_FIELDS: ClassVar[dict[tuple[str, str], tuple[str, str]]] = {
        ("transformer", "patch_nums"): ("tokenizer", "patch_nums"),
        ("transformer", "latent_channels"): ("tokenizer", "latent_channels"),
        ("transformer", "vocab_size"): ("tokenizer", "vocab_size"),
        ("head", "latent_channels"): ("tokenizer", "latent_channels"),
        ("head", "cond_dim"): ("transformer", "embed_dim"),
    }

    def __post_init__(self) -> None:
        patch_nums = self.tokenizer.patch_nums
        if len(patch_nums) < 2 or patch_nums[0] != 1:
            invalid(type(self).__name__, f"the transformer needs at least two scales, the first 1x1 (it "
                                       f"is predicted from the text), got patch_nums {patch_nums}")

    @classmethod
    def from_dict(cls, data: Any) -> HARTConfig:
        """`config_from_dict`, also reading the copied fields of format-1 files (`COPIED_FIELDS`)."""
        if not isinstance(data, dict):
            return config_from_dict(cls, data)
        sections = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
        copies = {}
        for (section, field), source in cls.COPIED_FIELDS.items():
            if isinstance(sections.get(section), dict) and field in sections[section]:
                copies[section, field] = (sections[section].pop(field), source)
        config = config_from_dict(cls, sections)
        for (section, field), (value, (source_section, source_field)) in copies.items():
            expected = getattr(getattr(config, source_section), source_field)
            if config_to_dict(expected) != (list(value) if isinstance(value, (list, tuple)) else value):
                invalid(cls.__name__, f"{section}.{field} = {value!r} disagrees with {source_section}."
                                    f"{source_field} = {config_to_dict(expected)!r}; leave it out (it is "
                                    f"taken from {source_section}.{source_field})")
        return config

    @property
    def image_size(self) -> int:
        return self.tokenizer.image_size

    @property
    def num_scales(self) -> int:
        return self.tokenizer.num_scales


# How the last scale combines a code and its residual (see `SamplingConfig.last_scale`).
LAST_SCALE_MODES = ("official", "consistent", "gumbel")


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Runtime knobs of text-to-image sampling; defaults are the official scripts'
    (docs/official-behaviour.md).

    Args:
        guidance_scale: classifier-free guidance; scale si uses t = guidance_scale * si / (K - 1), and the
            last scale (and the diffusion head) reuse (K - 2) / (K - 1).
        top_k: keep the k most likely codes at every scale; None uses the official per-scale
            schedule `scale_top_k` (the official code ignores its own `top_k` argument); 0 disables.
        scale_top_k: official top-k before / from `top_k_switch_scale` on.
        top_k_switch_scale: first scale that uses `scale_top_k[1]`.
        top_p: nucleus sampling threshold; 0 disables.
        smooth: Gumbel-softmax smoothing of the code embeddings (`more_smooth`, on in the scripts).
        head_steps: diffusion steps of the residual head; None uses the model's default (8).
        head_temperature: noise temperature of the residual head's sampler.
        maskgit_iters: MaskGIT iterations over the last scale (1 = all tokens at once).
        use_residual: add the diffusion head's continuous residual (False = discrete-only images).
        last_scale: how a last-scale token is formed from its code and its residual:
            "official": the head is conditioned on the drawn code, and its residual is added to
                the Gumbel-smoothed embedding of a second, independent draw (the official
                release; with `smooth` off both are the same code);
            "consistent": the token is the embedding of the code the head was conditioned on,
                plus its residual (no smoothing at the last scale);
            "gumbel": the head is conditioned on the code of the Gumbel draw whose smoothed
                embedding the residual is added to.
            Models that openhart trains record "consistent" in their folder's defaults.
    """

    guidance_scale: float = 4.5
    top_k: int | None = None
    scale_top_k: tuple[int, ...] = (600, 300)
    top_k_switch_scale: int = 7
    top_p: float = 0.0
    smooth: bool = True
    head_steps: int | None = None
    head_temperature: float = 1.0
    maskgit_iters: int = 1
    use_residual: bool = True
    last_scale: str = "official"

    # Field names of earlier versions, still read from config.json files and training configs.
    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"cfg_scale": "guidance_scale"}

    def __post_init__(self) -> None:
        """Every sampling setting is checked here, once: the pipeline, the CLI and the web UI
        show these messages."""
        name = type(self).__name__
        if not _is_number(self.guidance_scale) or not 0 <= self.guidance_scale <= MAX_GUIDANCE:
            invalid(name, f"guidance_scale must be a finite number between 0 and {MAX_GUIDANCE} (0 = no "
                        f"guidance), got {self.guidance_scale!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            invalid(name, f"top_k must be an integer >= 0 (0 = off) or None (the per-scale schedule "
                        f"scale_top_k), got {self.top_k!r}")
        if len(self.scale_top_k) != 2 or not all(_is_int(k) and k >= 0 for k in self.scale_top_k):
            invalid(name, f"scale_top_k must be two integers >= 0, got {self.scale_top_k!r}")
        if not _is_number(self.top_p) or not 0.0 <= self.top_p < 1.0:
            invalid(name, f"top_p must be a number in [0, 1) (0 = off), got {self.top_p!r}")
        if self.head_steps is not None and (not _is_int(self.head_steps) or self.head_steps < 1):
            invalid(name, f"head_steps must be an integer >= 1, got {self.head_steps!r}")
        if not _is_number(self.head_temperature) or not 0 <= self.head_temperature < math.inf:
            invalid(name, f"head_temperature must be a finite number >= 0, got {self.head_temperature!r}")
        if not _is_int(self.maskgit_iters) or self.maskgit_iters < 1:
            invalid(name, f"maskgit_iters must be an integer >= 1, got {self.maskgit_iters!r}")
        for flag in ("smooth", "use_residual"):
            if not isinstance(getattr(self, flag), bool):
                invalid(name, f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.last_scale not in LAST_SCALE_MODES:
            invalid(name, f"last_scale must be one of {list(LAST_SCALE_MODES)}, got {self.last_scale!r}")

    def top_k_at(self, si: int) -> int:
        if self.top_k is not None:
            return self.top_k
        return self.scale_top_k[0] if si < self.top_k_switch_scale else self.scale_top_k[1]

    def guidance_at(self, si: int, num_scales: int) -> float:
        """The guidance t of scale si (official-behaviour: guidance-schedule)."""
        return self.guidance_scale * self.progress_at(si, num_scales)

    @staticmethod
    def progress_at(si: int, num_scales: int) -> float:
        """r = si / (K - 1), which scales the guidance and anneals the Gumbel smoothing; the last
        scale reuses the previous scale's r, (K - 2) / (K - 1), as the official loop does."""
        return min(si, num_scales - 2) / (num_scales - 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    renamed = getattr(cls, "RENAMED_FIELDS", {})
    for old, new in renamed.items():
        if old in data:
            if new in data:
                raise ValueError(f"{cls.__name__}: give {new!r} only ({old!r} is its former name)")
            data = {(new if k == old else k): v for k, v in data.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(fields)}")
    missing = sorted(name for name, f in fields.items() if name not in data and f.init
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"{cls.__name__} is missing required field(s) {missing}")
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
    """The tokenizer of the released HART-0.7B-1024px."""
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


def hart_0p7b_1024() -> HARTConfig:
    """The released HART-0.7B-1024px."""
    return HARTConfig(tokenizer=TokenizerConfig(), transformer=TransformerConfig(),
                      head=DiffusionHeadConfig())


def hart_0p7b(size: int = 1024) -> HARTConfig:
    """The 0.7B architecture at another resolution: the released scales below size / 16, then
    size / 16 itself (256 px: 1..12, 16; 512 px: 1..27, 32; 1024 px: the release)."""
    side = size // 16
    if size % 16 or side < 2:
        raise ValueError(f"size must be a multiple of 16 of at least 32, got {size}")
    patch_nums = tuple(p for p in HART_1024_PATCH_NUMS if p < side) + (side,)
    config = hart_0p7b_1024()
    return dataclasses.replace(config, tokenizer=dataclasses.replace(config.tokenizer, patch_nums=patch_nums))


def hart_tiny() -> HARTConfig:
    """A tiny 64px HART for unit tests (random weights)."""
    return HARTConfig(tokenizer=tokenizer_tiny(),
                      transformer=TransformerConfig(embed_dim=64, depth=2, num_heads=4, context_tokens=6,
                                                    context_dim=32),
                      head=DiffusionHeadConfig(width=48, depth=2))


# Named presets: `openhart train tokenizer` takes the tokenizer names, `openhart train transformer`
# and `openhart bench` the model names.
TOKENIZER_PRESETS = {"tiny": tokenizer_tiny, "small": tokenizer_small, "hart-1024": tokenizer_hart_1024}
MODEL_PRESETS = {"tiny": hart_tiny, "0.7b": hart_0p7b_1024}
