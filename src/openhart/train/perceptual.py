"""Perceptual loss from a local TorchScript feature network (nothing is downloaded).

The network maps images in [-1, 1] (B, 3, H, W) to a feature map or a list of them (e.g. the
VGG16 stages that LPIPS uses, exported with `torch.jit.script`/`trace`). The loss is the mean
squared distance of channel-normalized features, averaged over the maps, as in LPIPS without its
learned channel weights.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn


class PerceptualLoss(nn.Module):
    def __init__(self, weights: str | os.PathLike, device: torch.device | str = "cpu"):
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise ValueError(
                f"perceptual loss weights not found: {path}. openhart never downloads them: save a "
                "TorchScript feature network there (image in [-1, 1] -> feature maps), or set "
                "losses.perceptual to 0 to train without the perceptual loss")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is how such nets ship
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{path} is not a TorchScript file ({error})") from error
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_a, feats_b = self._features(reconstruction), self._features(target)
        losses = [(_unit(a) - _unit(b.detach())).square().sum(dim=1).mean() for a, b in zip(feats_a, feats_b)]
        return torch.stack(losses).mean()

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(images)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
