"""PatchGAN discriminator and hinge losses for tokenizer training (pix2pix / VQGAN style).

The discriminator scores overlapping patches of an image as real or reconstructed. GroupNorm
replaces BatchNorm so that its output does not depend on how the batch is split across
processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """conv4x4/2 + LeakyReLU, `layers` strided conv-norm-LeakyReLU blocks, then a 1-channel map."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(width, out, 4, stride, 1, bias=False),
                        nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            width = out
        modules.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        return self.net(images_B3HW)


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
