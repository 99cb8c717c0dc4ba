"""Image preprocessing for training: resize the short side, crop a square, map to [-1, 1]."""

from __future__ import annotations

import torch
from PIL import Image

from ..images import center_crop, pil_to_tensor, resize_short_side


def image_to_tensor(image: Image.Image, resolution: int, random_crop: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(3, R, R) float32 in [-1, 1]: short side resized to R (bicubic), then a center or random
    square crop (the crop offset is drawn from `generator`)."""
    image = image.convert("RGB")
    if not random_crop:
        return pil_to_tensor(center_crop(image, resolution))[0]
    image = resize_short_side(image, resolution)
    left = int(torch.randint(0, image.width - resolution + 1, (1,), generator=generator))
    top = int(torch.randint(0, image.height - resolution + 1, (1,), generator=generator))
    return pil_to_tensor(image.crop((left, top, left + resolution, top + resolution)))[0]
