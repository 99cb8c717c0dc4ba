"""`openhart data`: write an image-caption dataset folder (the emoji of Noto Color Emoji, or
coloured shapes for smoke runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.emoji import write_emoji_dataset
from ..data.synthetic import write_shapes
from .ranges import integer, seed

DATA_EXAMPLES = """\
examples:
  openhart data emoji data/emoji
      every colour emoji of Noto Color Emoji (about 3,800) at 128 px, captioned with its name
      ("red apple", "flag: Japan"), in data/emoji/train and a fixed 10% in data/emoji/heldout;
      needs Debian's fonts-noto-color-emoji (sudo apt-get install fonts-noto-color-emoji)
  openhart data shapes data/shapes --count 512 --size 64
      coloured circles and squares with captions ("a red circle"), for smoke runs of training
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "data", help="build an image-caption dataset folder",
        description="Write an image-caption folder (images + metadata.jsonl) in the training format.",
        epilog=DATA_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("emoji", "shapes"), help="which dataset")
    p.add_argument("out", type=Path, help="folder to create")
    p.add_argument("--font", type=Path, default=None, help="emoji: path of NotoColorEmoji.ttf "
                   "(default: where Debian's fonts-noto-color-emoji puts it)")
    p.add_argument("--seed", type=seed(), default=0, help="emoji: seed of the held-out split (default 0)")
    p.add_argument("--count", type=integer(1, 1_000_000), default=512, help="shapes: number of images (default 512)")
    p.add_argument("--size", type=integer(8, 4096), default=64, help="shapes: image side in pixels (default 64)")
    p.set_defaults(handler=run_data)


def run_data(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        raise ValueError(f"{args.out} exists and is not empty; choose a new folder")
    if args.kind == "emoji":
        counts = write_emoji_dataset(args.out, font=args.font, seed=args.seed)
        print(f"wrote {counts['train']} training and {counts['heldout']} held-out emoji to {args.out} "
              f"({counts['skipped']} named emoji have no single glyph in the font)")
        return 0
    write_shapes(args.out, count=args.count, size=args.size)
    print(f"wrote {args.count} images with captions to {args.out}")
    return 0
