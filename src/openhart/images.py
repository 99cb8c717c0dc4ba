"""Image files <-> tensors: loading with resize and center crop, PNG writing without partial files."""

from __future__ import annotations

import os
from pathlib import Path
import warnings

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .outputs import atomic_path

# Image files openhart reads: the size is checked from the header, before any pixel is decoded.
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 1 << 27  # 134 M pixels: a 11585 x 11585 image
MAX_ASPECT_RATIO = 16       # longer side / shorter side; thinner images are crops of nothing


def open_image(source, name: str) -> Image.Image:
    """Decode an image file (a path or a file object) as RGB, after checking its size: too large,
    too thin, a decompression bomb or not an image give one ValueError naming `name`. Animated
    images give their first frame; CMYK, 16-bit, palette and grey images are converted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                check_image_size(image.size, name)
                image.seek(0)
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{name} is too large to decode safely ({error}); resize it first") from error
    except ImageSizeError:
        raise
    except ValueError as error:  # Pillow's limit on decompressed PNG text chunks, and the like
        raise ValueError(f"cannot read {name} safely: {' '.join(str(error).split())} (a metadata bomb?); "
                         "re-save the image without its metadata") from error
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError) as error:
        raise ValueError(f"cannot read {name} as an image ({' '.join(str(error).split())})") from error


class ImageSizeError(ValueError):
    """An image too large, too thin or empty to read."""


def check_image_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if min(width, height) < 1:
        raise ImageSizeError(f"{name} is empty ({width}x{height})")
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise ImageSizeError(f"{name} is {width}x{height} pixels; at most {MAX_IMAGE_SIDE} per side and "
                         f"{MAX_IMAGE_PIXELS} in all are read: resize it first")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageSizeError(f"{name} is {width}x{height} pixels, thinner than {MAX_ASPECT_RATIO}:1; crop it "
                         "to a roughly square region first")


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read an image file as RGB, resize its short side to `size`, center-crop to a square.

    Returns:
        (1, 3, size, size) float32 in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return pil_to_tensor(center_crop(open_image(path, str(path)), size))


def center_crop(image: Image.Image, size: int,
                resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize so the short side is `size`, then crop the center square (masks: NEAREST)."""
    image = resize_short_side(image, size, resample)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_short_side(image: Image.Image, size: int,
                      resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize (bicubic, antialiased, by default) so that the shorter side is `size`."""
    width, height = image.size
    if min(width, height) < 1:
        raise ValueError("the image is empty")
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new_size, resample, reducing_gap=None)


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
