"""`openhart edit` (inpainting, outpainting) and `openhart vary` (variations): an image in, PNGs
with their metadata out (`openhart.editing` prepares the edit, `HARTPipeline.edit` samples it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..editing import inpaint_input, log_notes, outpaint_input, variation_input
from ..inputs import check_text
from .common import (
    UsageError,
    add_device_arguments,
    add_model_arguments,
    add_sampling_arguments,
    check_image_outputs,
    draw_images,
    load_pipeline,
    sampling_settings,
    write_images,
)
from .ranges import integer, real

MAX_IMAGES = 64

EDIT_EXAMPLES = """\
examples:
  openhart edit face.png --mask mouth.png "grinning face with sweat" --out edited.png
      regenerate the white part of mouth.png from the prompt, keep the rest of face.png
  openhart edit face.png --mask mouth.png "grinning face" --dilate 4 --feather 3 --num-images 4 --out e.png
      grow the region by 4 px, blend 3 px across its border, four candidates
  openhart edit apple.png --outpaint 32,0,32,0 "red apple" --out wide.png
      32 px more on the left and on the right (the canvas is scaled to the model's side)
"""

VARY_EXAMPLES = """\
examples:
  openhart vary face.png --strength 0.5 --num-images 4 --out variation.png
      keep the coarse half of the scales, resample the rest, without a prompt
  openhart vary face.png --strength 0.3 --prompt "smiling face with sunglasses" --out v.png
"""


def add_command(commands) -> None:
    edit = commands.add_parser(
        "edit", help="inpaint (regenerate a masked region) or outpaint (extend) an image",
        description="Zero-shot editing with any HART model: the image is encoded, and at every scale "
                    "the tokens of the region that stays are kept while the others are sampled from "
                    "the prompt (docs/editing.md). The image is center-cropped to a square and "
                    "resized to the model's side; the mask gets the same crop and resize.",
        epilog=EDIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    edit.add_argument("image", type=Path, metavar="IMAGE", help="the image to edit")
    edit.add_argument("prompt", metavar="PROMPT", help="what the regenerated region shows")
    how = edit.add_mutually_exclusive_group(required=True)
    how.add_argument("--mask", type=Path,
                     help="mask image, white (>= 0.5) = regenerate, black = keep; resized to the image if "
                          "its size differs")
    how.add_argument("--outpaint", metavar="LEFT,TOP,RIGHT,BOTTOM",
                     help="pixels to add on each side (of the image as given)")
    edit.add_argument("--dilate", type=integer(0, 16384), default=0, help="grow the masked region by N pixels (default 0)")
    edit.add_argument("--feather", type=integer(0, 16384), default=None,
                      help="after decoding, blend with the image over N pixels on each side of the border "
                           "(0: a hard border; default: no blending)")
    _add_common(edit)
    edit.set_defaults(handler=run_edit)

    vary = commands.add_parser(
        "vary", help="variations of an image: keep its coarse scales, resample the rest",
        description="Scale-level image-to-image: keep the image's codes for the first "
                    "k = round((1 - strength) x K) of the model's K scales and sample the others. "
                    "Strength 0 gives the tokenizer's reconstruction, 1 a new image.",
        epilog=VARY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    vary.add_argument("image", type=Path, metavar="IMAGE", help="the image to vary")
    vary.add_argument("--strength", type=real(0, 1), required=True, help="0 (keep every scale) to 1 (keep none)")
    vary.add_argument("--prompt", default=None, help="guide the new scales with a prompt (default: none)")
    _add_common(vary)
    vary.set_defaults(handler=run_vary)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True,
                   help="output PNG; with several images, -000, -001, ... are added to the name")
    p.add_argument("--num-images", type=integer(1, MAX_IMAGES), default=1, help=f"images to draw, 1 to {MAX_IMAGES} (default 1)")
    add_sampling_arguments(p)
    add_model_arguments(p)
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_edit(args: argparse.Namespace) -> int:
    _check(args)
    if args.mask is not None and not args.mask.is_file():
        raise UsageError(f"mask not found: {args.mask}")
    if args.outpaint is None:
        return _write(args, lambda model: inpaint_input(model, args.image, args.mask, dilate_pixels=args.dilate),
                      args.prompt, args.feather)
    pad = _parse_pad(args.outpaint)
    if args.dilate:
        raise UsageError("--dilate applies to --mask, not to --outpaint")
    return _write(args, lambda model: outpaint_input(model, args.image, pad), args.prompt, args.feather)


def run_vary(args: argparse.Namespace) -> int:
    _check(args)
    return _write(args, lambda model: variation_input(model, args.image, args.strength), args.prompt, None)


def _check(args: argparse.Namespace) -> None:
    if not args.image.is_file():
        raise UsageError(f"image not found: {args.image}")
    for text, name in ((args.prompt, "PROMPT"), (args.negative_prompt, "--negative-prompt")):
        if text is not None:
            check_text(text, name, error=UsageError)
    check_image_outputs(args)


MAX_PAD = 16384  # pixels added on one side at most


def _parse_pad(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    try:
        pad = tuple(int(p) for p in parts if len(p.strip()) <= 8)
    except ValueError:
        pad = ()
    if len(pad) != 4 or len(parts) != 4 or min(pad) < 0 or max(pad) > MAX_PAD:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise UsageError(f"--outpaint takes four pixel counts between 0 and {MAX_PAD}, LEFT,TOP,RIGHT,BOTTOM "
                         f"(e.g. 32,0,32,0), got {shown!r}")
    return pad


def _write(args: argparse.Namespace, prepare, prompt: str | None, feather: int | None) -> int:
    """Prepare the edit once (encoding the image), then sample it CHUNK images at a time (chunk c
    drawn with seed + c) and write the PNGs."""
    pipe = load_pipeline(args)
    sampling = pipe.resolve_sampling(None, **sampling_settings(args))
    prepared = log_notes(prepare(pipe.model))

    def draw_chunk(prompt, count, seed, on_scale):
        return pipe.edit(prepared, prompt, feather, num_images_per_prompt=count, sampling=sampling,
                         negative_prompt=args.negative_prompt, seed=seed, on_scale=on_scale)

    _, images, metadata = draw_images(pipe, draw_chunk, [prompt], args.num_images, args.seed, args.quiet)
    for path, text in zip(write_images(images, metadata, args.out), metadata):
        print(f"{path}  seed {text['seed']}")
    return 0
