"""Write docs/editing.png: zero-shot editing with the shipped emoji model.

Row 1: an emoji, the region painted over it, and that region regenerated under another prompt.
Row 2: an emoji, the same emoji placed on a larger canvas, and the canvas outpainted.
Row 3: an emoji, its reconstruction (strength 0) and its variations at three strengths.
All with the residual on (the kept region keeps the image's continuous latent), inpainting and
outpainting blended with the source over 2 pixels at the border.

Usage: .venv/bin/python scripts/editing_figure.py [--out docs/editing.png] [--scale 2]
(needs Debian's fonts-noto-color-emoji for the source emoji)
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from openhart import HARTPipeline
from openhart.data.emoji import FONT_SIZE, find_font, render
from openhart.images import save_png

SEEDS = [0, 1, 2]
INPAINT = ("😀", "grinning face", "smiling face with sunglasses", (8, 14, 56, 34))  # the eyes' band
OUTPAINT = ("🍎", "red apple", "red apple", (24, 24, 24, 24))
VARY = ("🐱", "cat face", [0.3, 0.5, 0.7])
FEATHER = 2  # pixels of blending with the source at the region's border


def emoji_image(char: str, size: int) -> Image.Image:
    font = ImageFont.truetype(str(find_font()), FONT_SIZE)
    return render(char, font).resize((size, size), Image.Resampling.BICUBIC)


def labelled(image: Image.Image, text: str, scale: int) -> Image.Image:
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (image.width, image.height + 14), "white")
    tile.paste(image, (0, 0))
    ImageDraw.Draw(tile).text((2, image.height + 1), text, fill="black")
    return tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/editing.png")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling (default 2)")
    args = parser.parse_args()
    pipe = HARTPipeline.from_pretrained()
    size = pipe.model.config.image_size
    rows = []

    char, name, prompt, box = INPAINT
    face = emoji_image(char, size)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    shown = Image.composite(Image.new("RGB", face.size, (255, 0, 255)), face, mask.point(lambda v: v // 2))
    edits = [pipe.inpaint(face, mask, prompt, seed=seed, feather=FEATHER, use_residual=True).images[0]
             for seed in SEEDS]
    rows.append([labelled(face, name, args.scale), labelled(shown, "region", args.scale)]
                + [labelled(e, f"'{prompt[:18]}..' s{s}", args.scale) for e, s in zip(edits, SEEDS)])

    char, name, prompt, pad = OUTPAINT
    apple = emoji_image(char, size)
    edits = [pipe.outpaint(apple, prompt, pad=pad, seed=seed, feather=FEATHER, use_residual=True) for seed in SEEDS]
    x, y, w, h = __import__("json").loads(edits[0].metadata[0]["openhart"])["edit"]["placement"]
    placed = Image.new("RGB", (size, size), (200, 200, 200))
    placed.paste(apple.resize((w, h), Image.Resampling.BICUBIC), (x, y))
    rows.append([labelled(apple, name, args.scale), labelled(placed, "canvas", args.scale)]
                + [labelled(e.images[0], f"outpainted s{s}", args.scale) for e, s in zip(edits, SEEDS)])

    char, name, strengths = VARY
    cat = emoji_image(char, size)
    varied = [pipe.vary(cat, strength, seed=0, use_residual=True).images[0] for strength in strengths]
    rows.append([labelled(cat, name, args.scale), labelled(pipe.vary(cat, 0.0, seed=0, use_residual=True).images[0],
                                                          "strength 0", args.scale)]
                + [labelled(v, f"strength {s}", args.scale) for v, s in zip(varied, strengths)])

    tile_w, tile_h = rows[0][0].size
    sheet = Image.new("RGB", (5 * (tile_w + 4), 3 * (tile_h + 4)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * (tile_w + 4), r * (tile_h + 4)))
    save_png(sheet, args.out, {"rows": "inpaint | outpaint | vary", "seeds": " ".join(map(str, SEEDS))})
    print(f"wrote {args.out} ({np.asarray(sheet).shape[1]}x{np.asarray(sheet).shape[0]})")


if __name__ == "__main__":
    main()
