"""Image files <-> tensors: loading with resize and center crop, PNG writing without partial files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .serialization import atomic_path


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read an image file as RGB, resize its short side to `size`, center-crop to a square.

    Returns:
        (1, 3, size, size) float32 in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read {path} as an image ({error})") from error
    return pil_to_tensor(center_crop(image, size))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is `size`, then crop the center square."""
    image = resize_short_side(image, size)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic (antialiased) resize so that the shorter side is `size`."""
    width, height = image.size
    if min(width, height) < 1:
        raise ValueError("the image is empty")
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=None)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) images in [0, 1] -> PIL images, rounded to the nearest 8-bit level."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]


def save_png(image: Image.Image, path: str | os.PathLike,
             text: dict[str, str] | None = None) -> None:
    """Write a PNG with optional text metadata; the file appears only once fully written."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def image_grid(images: list[Image.Image], columns: int, padding: int = 2,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Paste same-size images row-major into one grid image with `padding` pixels between them."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width + (columns - 1) * padding,
                             rows * height + (rows - 1) * padding), background)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid.paste(image.convert("RGB"), (column * (width + padding), row * (height + padding)))
    return grid
