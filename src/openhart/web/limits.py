"""Server-side limits of the web UI: every request is checked here, whatever the widgets allowed.

A browser's widgets can be bypassed (Gradio's HTTP API takes any JSON), so the handler validates
the raw values again and turns them into a `GenerationRequest`, or raises `RequestError` with a
message that the page shows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..config import SamplingConfig
from ..images import check_image_size, open_image
from ..inputs import check_text
from ..seeding import MAX_SEED

MAX_HEAD_TEMPERATURE = 2.0
MAX_TOP_P = 0.99


class RequestError(ValueError):
    """A request outside the server's limits; the message is shown to the user as is."""


@dataclass(frozen=True)
class ServeLimits:
    """Bounds of one web request (`openhart serve --max-images ...` changes them).

    Attributes:
        max_prompt_chars: longest prompt (and negative prompt), in characters.
        max_images: images per request.
        max_guidance: largest guidance scale.
        max_head_steps: most diffusion steps of the residual head.
        queue_size: requests waiting at most; later ones are turned away until the queue drains.
    """

    max_prompt_chars: int = 300
    max_images: int = 8
    max_guidance: float = 20.0
    max_head_steps: int = 50
    queue_size: int = 16

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_images", "max_head_steps", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.max_guidance > 0:
            raise ValueError(f"max-guidance must be > 0, got {self.max_guidance}")


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: what to draw, and the sampling settings (checked by SamplingConfig)."""

    prompt: str | None
    negative_prompt: str | None
    seed: int
    num_images: int
    sampling: SamplingConfig


def _number(name: str, value, low: float, high: float, *, integer: bool) -> float | int:
    # ints are compared exactly (a JSON number may have hundreds of digits, beyond float's range)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(f"{name} must be a number, got {_shown(value)}")
    if not low <= value <= high:
        bounds = (int(low), int(high)) if integer else (f"{low:g}", f"{high:g}")
        raise RequestError(f"{name} must be between {bounds[0]} and {bounds[1]}, got {_shown(value)}")
    if integer and value != int(value):
        raise RequestError(f"{name} must be a whole number, got {value}")
    return int(value) if integer else float(value)


def _shown(value) -> str:
    """A value for a message, short: a huge integer by its number of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _text(name: str, value, limit: int, *, required: bool) -> str | None:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text, got {type(value).__name__}")
    check_text(value, name, error=RequestError)
    value = value.strip()
    if required and not value:
        raise RequestError("the prompt is empty: describe the image you want, e.g. 'red apple'")
    if len(value) > limit:
        raise RequestError(f"the {name} is too long: {len(value)} characters, at most {limit} are "
                           "allowed; shorten it")
    return value or None


def page_defaults(limits: ServeLimits, recommended: SamplingConfig, vocab_size: int,
                  head_steps: int) -> SamplingConfig:
    """The model folder's recommended settings, clamped to what the page and the server accept
    (a folder may record e.g. top_p 0.995, which SamplingConfig allows and the page does not):
    the widgets start at these values and the Edit tab, which has no sampling widgets, sends them.

    Args:
        head_steps: the model's default number of head steps (when the folder records none).
    """
    return dataclasses.replace(
        recommended, guidance_scale=min(recommended.guidance_scale, limits.max_guidance),
        top_k=None if recommended.top_k is None else min(recommended.top_k, vocab_size),
        top_p=min(recommended.top_p, MAX_TOP_P),
        head_steps=min(recommended.head_steps or head_steps, limits.max_head_steps),
        head_temperature=min(recommended.head_temperature, MAX_HEAD_TEMPERATURE))


def validate_request(limits: ServeLimits, defaults: SamplingConfig, vocab_size: int, *, prompt,
                     negative_prompt, seed, guidance_scale, top_k, top_p, smooth, head_steps,
                     use_residual, num_images, head_temperature, last_scale,
                     prompt_required: bool = True) -> GenerationRequest:
    """Check raw UI/API values against the server's `limits`, then build the sampling settings
    from the model's `defaults`; SamplingConfig's own checks give the message of anything else.

    `top_k` means what it means everywhere: None (an empty field) the model's per-scale
    schedule, 0 off, k the k most likely codes at every scale.
    """
    if top_k is not None:
        top_k = _number("top-k", top_k, 0, vocab_size, integer=True)
    try:
        sampling = dataclasses.replace(
            defaults,
            guidance_scale=_number("guidance scale", guidance_scale, 0, limits.max_guidance, integer=False),
            top_k=top_k, top_p=_number("top-p", top_p, 0, MAX_TOP_P, integer=False), smooth=smooth,
            head_steps=_number("diffusion steps", head_steps, 1, limits.max_head_steps, integer=True),
            use_residual=use_residual, last_scale=last_scale,
            head_temperature=_number("residual temperature", head_temperature, 0, MAX_HEAD_TEMPERATURE,
                                     integer=False))
    except ValueError as error:
        if isinstance(error, RequestError):
            raise
        raise RequestError(str(error).removeprefix("invalid SamplingConfig: ")) from None
    return GenerationRequest(
        prompt=_text("prompt", prompt, limits.max_prompt_chars, required=prompt_required),
        negative_prompt=_text("negative prompt", negative_prompt, limits.max_prompt_chars, required=False),
        seed=_number("seed", seed, 0, MAX_SEED, integer=True),
        num_images=_number("number of images", num_images, 1, limits.max_images, integer=True),
        sampling=sampling,
    )


EDIT_MODES = ("inpaint", "vary")
MAX_DILATE = 64
MAX_FEATHER = 32


@dataclass(frozen=True)
class EditRequest:
    """A validated edit of an uploaded image (the Edit tab): what `HARTPipeline.inpaint` or
    `.vary` takes."""

    generation: GenerationRequest
    mode: str
    image: Image.Image
    mask: np.ndarray  # (H, W) bool, True = regenerate (drawn strokes)
    strength: float
    dilate: int
    feather: int | None


def validate_edit(limits: ServeLimits, defaults: SamplingConfig, vocab_size: int, *, editor, mode, strength,
                  dilate, feather, **generation) -> EditRequest:
    """`validate_request` for the edit's text and settings (a variation needs no prompt), plus the
    uploaded image and the strokes drawn on it, read from Gradio's upload folder with the same
    size checks as every image openhart reads."""
    if mode not in EDIT_MODES:
        raise RequestError(f"mode must be one of {list(EDIT_MODES)}, got {_shown(mode)}")
    request = validate_request(limits, defaults, vocab_size, prompt_required=mode == "inpaint", **generation)
    image, mask = _editor_image_and_mask(editor)
    feather = _number("feather", feather, 0, MAX_FEATHER, integer=True)
    return EditRequest(generation=request, mode=mode, image=image, mask=mask,
                       strength=_number("strength", strength, 0, 1, integer=False),
                       dilate=_number("dilate", dilate, 0, MAX_DILATE, integer=True), feather=feather or None)


def _editor_image_and_mask(editor) -> tuple[Image.Image, np.ndarray]:
    """The ImageEditor's background image and the union of its drawn layers' opaque pixels."""
    background = editor.get("background") if isinstance(editor, dict) else None
    if not isinstance(background, dict) or not isinstance(background.get("path"), str):
        raise RequestError("upload an image to edit first")
    image = _open(background["path"], "the uploaded image")
    mask = np.zeros((image.height, image.width), dtype=bool)
    for layer in editor.get("layers") or []:
        if not isinstance(layer, dict) or not isinstance(layer.get("path"), str):
            raise RequestError("the drawn mask layer could not be read; draw it again")
        with Image.open(layer["path"]) as strokes:  # written by the page's own editor, like the image
            _check_size(strokes.size)
            alpha = strokes.convert("RGBA").getchannel("A").resize(image.size, Image.Resampling.NEAREST)
        mask |= np.asarray(alpha) > 0
    return image, mask


def _open(path: str, name: str) -> Image.Image:
    try:
        return open_image(path, name)
    except ValueError as error:
        raise RequestError(str(error)) from None


def _check_size(size: tuple[int, int]) -> None:
    try:
        check_image_size(size, "the drawn mask")
    except ValueError as error:
        raise RequestError(str(error)) from None
