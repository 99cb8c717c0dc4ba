"""The HART hybrid tokenizer: conv encoder/decoder around the multi-scale hybrid quantizer.

HART paper section 3.1 (VAR's conv autoencoder). Images are RGB in [-1, 1]; the latent of an
H x W image is (Cv, H/16, W/16) for the released 16x model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TokenizerConfig
from .layers import Downsample2x, MidBlock, ResolutionLevel, Upsample2x, group_norm
from .quantizer import MultiScaleQuantizer


@dataclass
class HybridTokens:
    """An image batch as HART tokens.

    Attributes:
        indices: discrete codes per scale; scale si is (B, pn_si**2) int64, row-major.
        residual: continuous residual of the last scale, (B, Cv, pK, pK): latent minus the
            discrete part ("the fine detail").
        latent: the continuous latent f = quant_conv(encoder(x)), (B, Cv, pK, pK).
        last_scale_input: residual before the last scale's codes are removed, (B, pK**2, Cv).
    """

    indices: list[torch.Tensor]
    residual: torch.Tensor
    latent: torch.Tensor
    last_scale_input: torch.Tensor

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(round(idx.shape[1] ** 0.5) for idx in self.indices)


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> features (B, Cv, H/f, W/f); attention only at the lowest resolution."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        ch, mult = config.base_channels, config.channel_mult
        n = len(mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList(
            ResolutionLevel(
                ch * ((1,) + mult)[level], ch * mult[level], config.num_res_blocks,
                use_attention=level == n - 1,
                resample=Downsample2x(ch * mult[level]) if level < n - 1 else None,
                dropout=config.dropout,
            )
            for level in range(n)
        )
        top = ch * mult[-1]
        self.mid = MidBlock(top, config.dropout)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, config.latent_channels, 3, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_B3HW)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


class Decoder(nn.Module):
    """Latent (B, Cv, h, w) -> image (B, 3, h*f, w*f); levels run from the lowest resolution up.

    `up[level]` is indexed by resolution level as in the encoder (up[0] is full resolution).
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        ch, mult = config.base_channels, config.channel_mult
        n = len(mult)
        top = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.latent_channels, top, 3, padding=1)
        self.mid = MidBlock(top, config.dropout)
        self.up = nn.ModuleList(
            ResolutionLevel(
                ch * mult[min(level + 1, n - 1)], ch * mult[level], config.num_res_blocks + 1,
                use_attention=level == n - 1,
                resample=Upsample2x(ch * mult[level]) if level > 0 else None,
                dropout=config.dropout,
            )
            for level in range(n)
        )
        self.norm_out = group_norm(ch * mult[0])
        self.conv_out = nn.Conv2d(ch * mult[0], 3, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        # channels_last throughout: oneDNN and cuDNN convolve NHWC without reordering each
        # activation, and GroupNorm, SiLU and nearest upsampling keep the layout (2.5x faster
        # at 1024 px in bf16 on an AMX CPU; docs/performance.md)
        h = self.mid(self.conv_in(z_BChw.contiguous(memory_format=torch.channels_last)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h), inplace=not torch.is_grad_enabled()))


def use_channels_last(tokenizer: nn.Module) -> nn.Module:
    """Store the decoder's convolution weights channels_last (inference), so that no weight is
    reordered per call either. Saving writes contiguous copies, so folders do not change."""
    tokenizer.decoder.to(memory_format=torch.channels_last)
    tokenizer.post_quant_conv.to(memory_format=torch.channels_last)
    return tokenizer


class HybridTokenizer(nn.Module):
    """HART's hybrid tokenizer: image <-> (multi-scale codes, continuous residual).

    Example:
        >>> tokens = tokenizer.encode(images)                 # images in [-1, 1], (B, 3, H, W)
        >>> full = tokenizer.decode_latent(tokens.latent)     # continuous path
        >>> coarse = tokenizer.decode_tokens(tokens.indices)  # discrete-only path
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        pad = config.quant_conv_kernel // 2
        self.quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels,
                                    config.quant_conv_kernel, padding=pad)
        self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels,
                                         config.quant_conv_kernel, padding=pad)
        self.quantizer = MultiScaleQuantizer(config)

    # ----- validation ------------------------------------------------------------------------------

    def scales_for_size(self, image_size: int) -> tuple[int, ...]:
        """The prefix of `patch_nums` that ends at the latent side of an `image_size` image."""
        return self.config.scales_for_size(image_size)

    def check_images(self, images: torch.Tensor) -> tuple[int, ...]:
        """Validate an image batch and return the scales that describe it."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must have shape (B, 3, H, W) (RGB, channels first), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor in [-1, 1], got {images.dtype}; "
                "convert uint8 pixels with x / 127.5 - 1"
            )
        _, _, height, width = images.shape
        if height != width:
            raise ValueError(f"images must be square, got {height}x{width}; crop them first")
        lo, hi = images.amin().item(), images.amax().item()
        if not (lo >= -1.0 - 1e-3 and hi <= 1.0 + 1e-3):
            raise ValueError(
                f"images must be in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "map [0, 1] images with 2 * x - 1 and uint8 pixels with x / 127.5 - 1"
            )
        return self.scales_for_size(height)

    # ----- encode ----------------------------------------------------------------------------------

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latent f = quant_conv(encoder(x)), (B, Cv, H/f, W/f)."""
        self.check_images(images)
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> HybridTokens:
        """Encode images in [-1, 1], shape (B, 3, H, W), into hybrid tokens."""
        latent = self.encode_latent(images)
        quantized = self.quantizer.quantize(latent, self.check_images(images))
        return HybridTokens(indices=quantized.indices, residual=quantized.residual,
                            latent=latent, last_scale_input=quantized.last_scale_input)

    # ----- decode ----------------------------------------------------------------------------------

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a continuous latent (B, Cv, h, w) to images in [-1, 1] (B, 3, h*f, w*f)."""
        if latent.ndim != 4 or latent.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latent must have shape (B, {self.config.latent_channels}, h, w), "
                f"got {tuple(latent.shape)}"
            )
        return self.decoder(self.post_quant_conv(latent)).clamp(-1, 1)

    def tokens_to_latent(self, indices: Sequence[torch.Tensor],
                         residual: torch.Tensor | None = None) -> torch.Tensor:
        """Latent of the codes of every scale, plus the continuous residual when given."""
        patch_nums = self.check_indices(indices)
        f_hat = self.quantizer.indices_to_fhat(indices, patch_nums)
        return f_hat if residual is None else f_hat + residual

    def decode_tokens(self, indices: Sequence[torch.Tensor],
                      residual: torch.Tensor | None = None) -> torch.Tensor:
        """Decode codes (discrete-only path), or codes plus a residual, to images in [-1, 1]."""
        return self.decode_latent(self.tokens_to_latent(indices, residual))

    def check_indices(self, indices: Sequence[torch.Tensor]) -> tuple[int, ...]:
        """Validate per-scale code maps and return their scales (a prefix of patch_nums)."""
        patch_nums = self.config.patch_nums
        if not 0 < len(indices) <= len(patch_nums):
            raise ValueError(f"expected codes for 1..{len(patch_nums)} scales, got {len(indices)}")
        for si, (idx, pn) in enumerate(zip(indices, patch_nums)):
            if idx.ndim != 2 or idx.shape[1] != pn * pn or idx.dtype != torch.int64:
                raise ValueError(
                    f"codes of scale {si} must be int64 of shape (B, {pn * pn}), "
                    f"got {idx.dtype} {tuple(idx.shape)}"
                )
        return patch_nums[: len(indices)]

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Transformer input for scales 1..K-1, (B, L - 1, Cv); see `MultiScaleQuantizer`."""
        return self.quantizer.teacher_forcing_input(indices, self.check_indices(indices))
