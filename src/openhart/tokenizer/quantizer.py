"""Multi-scale residual quantizer with shared Phi refiners and the hybrid continuous residual.

HART paper section 3.1 (hybrid tokenization) on top of VAR's multi-scale VQ
(official-behaviour: phi-last-scale).
Scale `si` of `K` has a `pn x pn` code map; code maps are bicubic-upsampled to the last scale
(`pK x pK`) and refined by Phi before they are summed, except the last scale, which is added as is.
Whatever the codes do not explain is the continuous residual that the diffusion head models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import TokenizerConfig
from .resample import area_downsample, bicubic_upsample


@dataclass
class QuantizedLatent:
    """What the hybrid quantizer extracts from a latent `f` of shape (B, Cv, pK, pK).

    Attributes:
        indices: code indices per scale, scale si has shape (B, pn_si**2), row-major over (h, w).
        residual: continuous residual f - f_hat_discrete, (B, Cv, pK, pK).
        last_scale_input: residual before the last scale's codes are subtracted, in token layout
            (B, pK**2, Cv); the transformer's diffusion target is this minus its sampled code.
    """

    indices: list[torch.Tensor]
    residual: torch.Tensor
    last_scale_input: torch.Tensor


@dataclass
class TrainingQuantization:
    """The quantizer's training forward (VAR's multi-scale VQ with HART's hybrid
    convention that the last scale's code map is added without Phi, as at decoding).

    Attributes:
        f_hat: discrete latent with a straight-through gradient to f, (B, Cv, pK, pK).
        vq_loss: mean over scales of beta * ||sg(f_hat_k) - f||^2 + ||f_hat_k - sg(f)||^2, where
            f_hat_k is the running sum of the refined code maps up to scale k.
        indices: codes per scale, (B, pn**2) each.
        queries: the vectors that were looked up, every scale's rows concatenated (N, Cv)
            (candidates for restarting unused codes).
    """

    f_hat: torch.Tensor
    vq_loss: torch.Tensor
    indices: list[torch.Tensor]
    queries: torch.Tensor


@dataclass
class _ScaleStep:
    """One scale of the residual quantization: the looked-up vectors (N, Cv), their codes
    (B, pn**2), the code map as it enters f_hat (B, Cv, pK, pK) and the rest it was taken from."""

    queries: torch.Tensor
    indices: torch.Tensor
    h: torch.Tensor
    rest: torch.Tensor


class PhiRefiners(nn.Module):
    """Phi(h) = (1 - r) h + r conv3x3(h), with a few convs shared across scales by position."""

    def __init__(self, channels: int, ratio: float, num_convs: int):
        super().__init__()
        self.ratio = ratio
        count = num_convs if ratio > 0 else 0
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(count))
        # Tick positions in [0, 1]; the official code special-cases 4 convs with a 1/3 margin.
        margin = 1 / 3 / count if count == 4 else 1 / 2 / max(count, 1)
        self._ticks = np.linspace(margin, 1 - margin, count) if count else np.zeros(0)

    def index(self, si: int, num_scales: int) -> int:
        """Which conv refines scale `si` of `num_scales`: the tick nearest to si / (K - 1)."""
        at = si / (num_scales - 1) if num_scales > 1 else 0.0
        return int(np.argmin(np.abs(self._ticks - at)))

    def forward(self, h_BChw: torch.Tensor, si: int, num_scales: int) -> torch.Tensor:
        if not len(self.convs):
            return h_BChw
        conv = self.convs[self.index(si, num_scales)]
        return h_BChw * (1 - self.ratio) + conv(h_BChw) * self.ratio


class MultiScaleQuantizer(nn.Module):
    """Codebook lookup over the scales of `patch_nums`, and the map from codes back to latents."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.codebook = nn.Embedding(config.vocab_size, config.latent_channels)
        num_convs = config.num_phi or config.num_scales
        self.phi = PhiRefiners(config.latent_channels, config.phi_ratio, num_convs)

    # ----- lookups -------------------------------------------------------------------------------

    def lookup(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of each row: argmin ||z||^2 + ||e||^2 - 2 z.e (first on ties)."""
        codes_VC = self.codebook.weight
        if self.config.normalize_codes:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(codes_VC, dim=-1).T, dim=1)
        dist_NV = z_NC.square().sum(dim=1, keepdim=True) + codes_VC.square().sum(dim=1)
        dist_NV.addmm_(z_NC, codes_VC.T, alpha=-2, beta=1)
        return torch.argmin(dist_NV, dim=1)

    def embed(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Code vectors of a (B, pn*pn) index map as a (B, Cv, pn, pn) feature map."""
        return rearrange(self.codebook(idx_Bl), "b (h w) c -> b c h w", h=pn, w=pn)

    # ----- latent -> codes -------------------------------------------------------------------------

    def quantize(self, f_BChw: torch.Tensor, patch_nums: Sequence[int]) -> QuantizedLatent:
        """Hybrid quantization of a latent: codes per scale plus the continuous residual.

        Args:
            f_BChw: latent (B, Cv, pK, pK) with pK = patch_nums[-1].
            patch_nums: scale sides, small to large.
        """
        indices = []
        for step in self._scale_steps(f_BChw, patch_nums):
            indices.append(step.indices)
        return QuantizedLatent(indices=indices, residual=step.rest - step.h.detach(),
                               last_scale_input=rearrange(step.rest, "b c h w -> b (h w) c").clone())

    def quantize_for_training(self, f_BChw: torch.Tensor, patch_nums: Sequence[int],
                              beta: float) -> TrainingQuantization:
        """Quantize with gradients: codebook and Phi learn from the VQ loss, the encoder from the
        commitment term and from the straight-through f_hat."""
        f_detached = f_BChw.detach()
        f_hat = torch.zeros_like(f_detached)
        vq_loss = f_BChw.new_zeros(())
        indices, queries = [], []
        for step in self._scale_steps(f_BChw, patch_nums, query_dtype=torch.float32):
            indices.append(step.indices)
            queries.append(step.queries)
            f_hat = f_hat + step.h
            vq_loss = vq_loss + beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_detached)
        f_hat_st = (f_hat.detach() - f_detached) + f_BChw
        return TrainingQuantization(f_hat=f_hat_st, vq_loss=vq_loss / len(patch_nums), indices=indices,
                                    queries=torch.cat(queries))

    def _scale_steps(self, f_BChw: torch.Tensor, patch_nums: Sequence[int],
                     query_dtype: torch.dtype | None = None) -> Iterator[_ScaleStep]:
        """The residual quantization shared by `quantize` and `quantize_for_training`: at each
        scale, look up the area-downsampled rest, and subtract the code map (refined by Phi
        except at the last scale) from it. The lookups take no gradient; the maps do."""
        B, _, H, W = f_BChw.shape
        if not H == W == patch_nums[-1]:
            raise ValueError(f"latent of shape {tuple(f_BChw.shape)} does not end at scale {patch_nums[-1]}")
        rest = f_BChw.detach().clone()
        for si, pn in enumerate(patch_nums):
            with torch.no_grad():
                queries = rearrange(area_downsample(rest, pn), "b c h w -> (b h w) c")
                queries = queries if query_dtype is None else queries.to(query_dtype)
                idx_Bl = self.lookup(queries).reshape(B, pn * pn)
            h = self.scale_map(self.embed(idx_Bl, pn), si, patch_nums)
            yield _ScaleStep(queries=queries, indices=idx_Bl, h=h, rest=rest)
            rest = rest - h.detach()

    @torch.no_grad()
    def restart_codes(self, unused_V: torch.Tensor, queries_NC: torch.Tensor,
                      generator: torch.Generator) -> int:
        """Move unused codes onto randomly chosen looked-up vectors (dead-code restart).

        Returns:
            how many codes were moved.
        """
        dead = unused_V.nonzero().flatten()
        if not len(dead) or not len(queries_NC):
            return 0
        rows = torch.randint(0, len(queries_NC), (len(dead),), generator=generator)
        weight = self.codebook.weight
        weight[dead.to(weight.device)] = queries_NC[rows].to(device=weight.device, dtype=weight.dtype)
        return len(dead)

    # ----- codes -> latent -------------------------------------------------------------------------

    def scale_map(self, h_BChw: torch.Tensor, si: int, patch_nums: Sequence[int]) -> torch.Tensor:
        """Scale si's code map as it enters f_hat: Phi(upsample(h)), the last scale's as it is."""
        if si == len(patch_nums) - 1:
            return h_BChw
        return self.phi(bicubic_upsample(h_BChw, patch_nums[-1]), si, len(patch_nums))

    def add_scale(self, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor, si: int,
                  patch_nums: Sequence[int]) -> torch.Tensor:
        """f_hat + scale si's map."""
        return f_hat_BChw + self.scale_map(h_BChw, si, patch_nums)

    def next_scale_input(self, si: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor,
                         patch_nums: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampling step: add scale si's map, and area-downsample the sum to scale si + 1.

        Returns:
            (f_hat (B, Cv, pK, pK), next scale's input map (B, Cv, pn_{si+1}, pn_{si+1})).
        """
        if not 0 <= si < len(patch_nums) - 1:
            raise ValueError(f"next_scale_input needs 0 <= si < {len(patch_nums) - 1}, got {si}")
        f_hat_BChw = self.add_scale(f_hat_BChw, h_BChw, si, patch_nums)
        return f_hat_BChw, area_downsample(f_hat_BChw, patch_nums[si + 1])

    def indices_to_fhat(self, indices: Sequence[torch.Tensor],
                        patch_nums: Sequence[int]) -> torch.Tensor:
        """Discrete latent f_hat (B, Cv, pK, pK): the sum of the refined code maps of all scales."""
        B = indices[0].shape[0]
        side = patch_nums[-1]
        f_hat = self.codebook.weight.new_zeros(B, self.config.latent_channels, side, side)
        for si, (idx_Bl, pn) in enumerate(zip(indices, patch_nums)):
            f_hat = self.add_scale(f_hat, self.embed(idx_Bl, pn), si, patch_nums)
        return f_hat

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor],
                              patch_nums: Sequence[int]) -> torch.Tensor:
        """Transformer input for scales 1..K-1 from ground-truth codes.

        Returns:
            (B, L - 1, Cv) with L = sum(pn**2): for each scale si >= 1 the area-downsampled running
            f_hat of scales < si, flattened row-major.
        """
        B = indices[0].shape[0]
        side = patch_nums[-1]
        f_hat = self.codebook.weight.new_zeros(B, self.config.latent_channels, side, side)
        inputs = []
        for si in range(len(patch_nums) - 1):
            h_BChw = self.embed(indices[si], patch_nums[si])
            f_hat, next_BChw = self.next_scale_input(si, f_hat, h_BChw, patch_nums)
            inputs.append(rearrange(next_BChw, "b c h w -> b (h w) c"))
        if not inputs:
            return f_hat.new_zeros(B, 0, self.config.latent_channels)
        return torch.cat(inputs, dim=1)
