"""Write docs/emoji-samples.png: the shipped model's images, a column per prompt, a row per seed.

Usage: .venv/bin/python scripts/emoji_samples.py [--out docs/emoji-samples.png] [--scale 2]
"""

from __future__ import annotations

import argparse

from PIL import Image

from openhart import HARTPipeline
from openhart.images import image_grid, save_png

PROMPTS = ["red apple", "grinning face", "flag: Japan", "red heart", "sun", "thumbs up", "fire",
           "green apple"]
SEEDS = [0, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/emoji-samples.png")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling (default 2)")
    args = parser.parse_args()
    pipe = HARTPipeline.from_pretrained()
    rows = [pipe(PROMPTS, seed=seed).images for seed in SEEDS]
    images = [im.resize((im.width * args.scale, im.height * args.scale), Image.NEAREST)
              for row in rows for im in row]
    save_png(image_grid(images, columns=len(PROMPTS), padding=4),
             args.out, {"prompts": " | ".join(PROMPTS), "seeds": " ".join(map(str, SEEDS))})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
