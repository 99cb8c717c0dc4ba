"""Zero-shot editing with any HART model: inpainting, outpainting and variations.

A next-scale model can edit an image without further training (VAR, section 7): encode the
image, and at every scale keep the tokens of the region that stays, sampling only the others.
The later scales then see a coarse map that agrees with the image. HART adds the continuous
residual: the kept last-scale tokens keep the image's own residual, and the head samples the
residual of the others. The sampling itself is `openhart.sampling.generate` with `KnownTokens`;
this module prepares them:

1. The image is center-cropped to a square and resized to the model's side (`prepare_image`).
2. The mask (1 = regenerate) gets the same crop and resize, and is thresholded at 0.5
   (`prepare_mask`); optionally it is dilated by some pixels.
3. Each scale's token is known when the whole image area it covers is known (`token_masks`).
4. The image's codes per scale are the known tokens, and its latent (codes + residual) is what
   the final latent keeps at the known last-scale positions (`known_tokens`).
5. After decoding, the result may be blended with the image at the mask's border (`blend`).

Variations keep the image's codes for the first k scales and sample the rest; outpainting places
the image on the model's square canvas and regenerates everything around it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .hart_model import HARTModel
from .images import center_crop, check_image_size, open_image, pil_to_tensor
from .sampling import KnownTokens

logger = logging.getLogger(__name__)

@dataclass
class EditInput:
    """An image prepared for an edit.

    Attributes:
        kind: "inpaint", "outpaint" or "vary".
        image: the image on the model's canvas, (1, 3, S, S) in [-1, 1].
        unknown: (S, S) bool, True where pixels are regenerated (all True for a variation: what
            changes there is decided per scale, not per pixel).
        known: the tokens kept at each scale.
        details: what the metadata records of the edit (strength, padding, mask coverage, ...).
        notes: what was done to the input on the way (resizing, thresholding, an empty mask).
    """

    kind: str
    image: torch.Tensor
    unknown: torch.Tensor
    known: KnownTokens
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ----- inputs ------------------------------------------------------------------------------------------

def as_pil(image: Any, name: str) -> Image.Image:
    """A path, PIL image, (H, W, 3) uint8 array or (3, H, W) / (1, 3, H, W) tensor in [0, 1] as
    a PIL RGB image."""
    if isinstance(image, Image.Image):
        check_image_size(image.size, name)
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        pixels = image.detach().float().cpu()
        pixels = pixels[0] if pixels.ndim == 4 and pixels.shape[0] == 1 else pixels
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(f"{name} must be a (3, H, W) tensor in [0, 1], got shape {tuple(image.shape)}")
        array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return as_pil(Image.fromarray(array), name)
    if isinstance(image, np.ndarray):
        return as_pil(Image.fromarray(image), name)
    return open_image(image, str(image))


def prepare_image(image: Any, size: int, notes: list[str]) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image resized (short side) and center-cropped to size x size, (1, 3, S, S) in [-1, 1];
    also its original (width, height)."""
    pil = as_pil(image, "the image")
    if pil.size != (size, size):
        how = "resized" if pil.width == pil.height else "resized and center-cropped"
        notes.append(f"the image is {pil.width}x{pil.height}: {how} to the model's {size}x{size}")
    return pil_to_tensor(center_crop(pil, size)), pil.size


def prepare_mask(mask: Any, image_size: tuple[int, int], size: int, notes: list[str]) -> torch.Tensor:
    """The mask (white / 1 = regenerate) as (S, S) bool, cropped and resized like the image.

    A mask of another size than the image is first resized to the image's size; a mask with
    values other than 0 and 1 is thresholded at 0.5. Both are said in `notes`.
    """
    if isinstance(mask, torch.Tensor | np.ndarray):
        values = torch.as_tensor(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask),
                                 dtype=torch.float32)
        values = values[0] if values.ndim == 3 and values.shape[0] == 1 else values
        if values.ndim != 2:
            raise ValueError(f"the mask must be a 2-D (H, W) array, got shape {tuple(values.shape)}")
        if values.max() > 1:
            values = values / 255
        pil = Image.fromarray((values.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")
    else:
        pil = as_pil(mask, "the mask").convert("L")
    if pil.size != image_size:
        notes.append(f"the mask is {pil.width}x{pil.height} and the image {image_size[0]}x{image_size[1]}: "
                     "the mask was resized to the image")
        pil = pil.resize(image_size, Image.Resampling.NEAREST)
    values = torch.from_numpy(np.asarray(center_crop(pil, size, Image.Resampling.NEAREST), dtype=np.float32)) / 255
    if bool(((values > 0) & (values < 1)).any()):
        notes.append("the mask has values between 0 and 1: thresholded at 0.5 (white = regenerate)")
    return values >= 0.5


def dilate(unknown: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow the unknown region by `pixels` in every direction (a square structuring element)."""
    if pixels < 0:
        raise ValueError(f"dilate must be >= 0 pixels, got {pixels}")
    if pixels == 0:
        return unknown
    grown = F.max_pool2d(unknown[None, None].float(), 2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0] > 0


# ----- tokens ------------------------------------------------------------------------------------------

def token_masks(unknown: torch.Tensor, patch_nums: tuple[int, ...]) -> list[torch.Tensor]:
    """Per scale, (pn**2,) bool: a token is unknown when any pixel of the area it covers is.

    Areas follow adaptive pooling: for a side that pn does not divide, neighbouring tokens
    overlap by a pixel, which errs towards regenerating.
    """
    pixels = unknown[None, None].float()
    return [F.adaptive_max_pool2d(pixels, pn).flatten() > 0 for pn in patch_nums]


@torch.no_grad()
def known_tokens(model: HARTModel, image: torch.Tensor, unknown: list[torch.Tensor]) -> KnownTokens:
    """The image's codes per scale, and its latent from the codes alone and with the residual."""
    tokenizer = model.tokenizer
    weight = tokenizer.quant_conv.weight
    tokens = tokenizer.encode(image.to(weight.device, weight.dtype))
    discrete = tokenizer.tokens_to_latent(tokens.indices)
    return KnownTokens(indices=list(tokens.indices), unknown=[u.to(weight.device) for u in unknown],
                       latent=discrete + tokens.residual, discrete=discrete)


# ----- the three edits ----------------------------------------------------------------------------------

def inpaint_input(model: HARTModel, image: Any, mask: Any, *, dilate_pixels: int = 0) -> EditInput:
    """Regenerate where the mask is white (1), keep the rest."""
    size, notes = model.config.image_size, []
    pixels, original_size = prepare_image(image, size, notes)
    unknown = dilate(prepare_mask(mask, original_size, size, notes), dilate_pixels)
    coverage = float(unknown.float().mean())
    if coverage == 0:
        notes.append("the mask is empty: every token is kept, and the result is the tokenizer's "
                     "reconstruction of the image")
    elif coverage == 1:
        notes.append("the mask covers the whole image: nothing is kept, and the result is a plain "
                     "generation from the prompt")
    masks = token_masks(unknown, model.config.tokenizer.patch_nums)
    return EditInput(kind="inpaint", image=pixels, unknown=unknown, known=known_tokens(model, pixels, masks),
                     details={"mask_coverage": round(coverage, 4), "dilate": dilate_pixels,
                              "kept_tokens": _kept_fractions(masks)}, notes=notes)


def outpaint_input(model: HARTModel, image: Any, pad: tuple[int, int, int, int] | None = None, *,
                   canvas: tuple[int, int, int, int] | None = None) -> EditInput:
    """Place the image on the model's square canvas and regenerate everything around it.

    Give one of:
        pad: (left, top, right, bottom) in pixels of the image as given. The padded canvas is
            scaled to fit the model's side S, with the image where the padding puts it; a canvas
            that is not square is completed to a square on its right or bottom, and that part
            is regenerated too.
        canvas: (left, top, width, height) of the image on the S x S canvas, in its pixels.
    The encoder sees the image's border pixels repeated outwards.
    """
    size, notes = model.config.image_size, []
    pil = as_pil(image, "the image")
    if (pad is None) == (canvas is None):
        raise ValueError("give pad=(left, top, right, bottom) or canvas=(left, top, width, height), not both")
    if pad is not None:
        x, y, w, h = _placement_from_pad(tuple(pad), pil.size, size, notes)
    else:
        if len(canvas) != 4 or any(not isinstance(v, int) or isinstance(v, bool) for v in canvas):
            raise ValueError(f"canvas must be four integers (left, top, width, height), got {canvas!r}")
        x, y, w, h = canvas
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > size or y + h > size:
            raise ValueError(f"canvas {tuple(canvas)} must place the image inside the model's {size}x{size} "
                             "canvas, with a width and height of at least 1")
        if (w, h) == (size, size):
            raise ValueError(f"canvas {tuple(canvas)} covers the whole {size}x{size} canvas: nothing to outpaint")
    placed = pil_to_tensor(pil.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None))
    pixels = F.pad(placed, (x, size - w - x, y, size - h - y), mode="replicate")
    unknown = torch.ones(size, size, dtype=torch.bool)
    unknown[y:y + h, x:x + w] = False
    masks = token_masks(unknown, model.config.tokenizer.patch_nums)
    if bool(masks[-1].all()):
        notes.append("the image covers no whole token at the last scale: nothing of it is kept; make it larger")
    return EditInput(kind="outpaint", image=pixels, unknown=unknown, known=known_tokens(model, pixels, masks),
                     details={"pad": None if pad is None else list(pad), "placement": [x, y, w, h],
                              "kept_tokens": _kept_fractions(masks)}, notes=notes)


def _placement_from_pad(pad: tuple, image_size: tuple[int, int], size: int,
                        notes: list[str]) -> tuple[int, int, int, int]:
    if len(pad) != 4 or any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in pad):
        raise ValueError(f"pad must be four integers >= 0 (left, top, right, bottom), got {pad!r}")
    if not any(pad):
        raise ValueError("pad is 0 on every side: nothing to outpaint (give at least one side)")
    (width, height), (left, top, right, bottom) = image_size, pad
    canvas_w, canvas_h = width + left + right, height + top + bottom
    scale = size / max(canvas_w, canvas_h)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if canvas_w != canvas_h:
        notes.append(f"the padded canvas is {canvas_w}x{canvas_h}: it is completed to a square, whose "
                     "extra part is regenerated too")
    return min(round(left * scale), size - w), min(round(top * scale), size - h), w, h


def kept_scales(strength: float, num_scales: int) -> int:
    """k, the scales a variation keeps: round((1 - strength) * K). Strength 0 keeps all K scales
    (the reconstruction), strength 1 none (a plain generation)."""
    if not isinstance(strength, int | float) or isinstance(strength, bool) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be a number between 0 and 1, got {strength!r}")
    return round((1 - strength) * num_scales)


def variation_input(model: HARTModel, image: Any, strength: float) -> EditInput:
    """Keep the image's codes for the first k = kept_scales(strength) scales, sample the rest."""
    patch_nums = model.config.tokenizer.patch_nums
    k = kept_scales(strength, len(patch_nums))
    size, notes = model.config.image_size, []
    pixels, _ = prepare_image(image, size, notes)
    masks = [torch.full((pn * pn,), si >= k, dtype=torch.bool) for si, pn in enumerate(patch_nums)]
    return EditInput(kind="vary", image=pixels, unknown=torch.ones(size, size, dtype=torch.bool),
                     known=known_tokens(model, pixels, masks),
                     details={"strength": strength, "kept_scales": k, "num_scales": len(patch_nums)}, notes=notes)


def log_notes(prepared: EditInput) -> EditInput:
    """Say the edit's notes once, as warnings (the CLI prints them; the web UI shows its own)."""
    for note in prepared.notes:
        logger.warning("%s", note)
    return prepared


def _kept_fractions(masks: list[torch.Tensor]) -> list[float]:
    return [round(1 - float(m.float().mean()), 4) for m in masks]


# ----- after decoding ----------------------------------------------------------------------------------

def blend(generated: torch.Tensor, image: torch.Tensor, unknown: torch.Tensor, feather: int) -> torch.Tensor:
    """Pixels of the image where it is known, of the generation where it is not, mixed over a
    ramp of `feather` pixels on each side of the border (0: a hard border).

    Args:
        generated: (B, 3, S, S) in [0, 1]; image: (1, 3, S, S) in [-1, 1]; unknown: (S, S) bool.
    """
    if feather < 0:
        raise ValueError(f"feather must be >= 0 pixels, got {feather}")
    alpha = unknown[None, None].to(generated.device, torch.float32)
    if feather:
        alpha = F.avg_pool2d(alpha, 2 * feather + 1, stride=1, padding=feather, count_include_pad=False)
    original = (image.to(generated.device, torch.float32) + 1) / 2
    return alpha * generated.float() + (1 - alpha) * original
