"""`openhart generate`: prompts in, PNGs with their metadata out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..images import image_grid, save_png
from ..inputs import check_text, read_text
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
from .ranges import integer

# Images per prompt at most; they are generated CHUNK at a time (commands/common.py).
MAX_IMAGES = 1024

GENERATE_EXAMPLES = """\
examples:
  openhart generate "red apple" --out apple.png
      the small emoji model that ships with openhart (64 px, offline)
  openhart generate "a red fox in snow" --model hart-0.7b-1024px --text-encoder Qwen2-VL-1.5B-Instruct --out fox.png
  openhart generate "a lighthouse at dusk" --model hart-0.7b-1024px --text-encoder Qwen2-VL-1.5B-Instruct \\
      --seed 7 --guidance-scale 4.5 --num-images 4 --out lighthouse.png      # writes lighthouse-000.png ... -003.png
  openhart generate "red apple" "grinning face" "flag: Japan" --num-images 4 --grid --out grid.png
      one 3 x 4 grid image: a row per prompt, a column per image
  openhart generate --prompts-file prompts.txt --model my-model --text-encoder my-encoder --out out/img.png
  openhart generate "a red apple" --model tests/fixtures/conformance/hart-tiny --text-encoder random --out apple.png
      tiny random checkpoint and random text encoder: shows the pipeline, not quality
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "generate", help="text-to-image: generate PNGs from prompts",
        description="Generate images from text prompts with a HART model. The prompt, seed, "
                    "settings and model name are written into each PNG's text metadata.",
        epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    p.add_argument("--out", type=Path, required=True,
                   help="output PNG; with several images, -000, -001, ... are added to the name")
    p.add_argument("--num-images", type=integer(1, MAX_IMAGES), default=1, help="images per prompt (default 1)")
    p.add_argument("--grid", action="store_true",
                   help="write one grid image to --out (a row per prompt, a column per image) "
                        "instead of one PNG per image")
    add_sampling_arguments(p)
    add_model_arguments(p)
    add_device_arguments(p)
    p.add_argument("--low-memory", action="store_true",
                   help="free the text encoder once the prompts are encoded (lower peak memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    prompts = [check_text(p, f"PROMPT {p[:40]!r}", error=UsageError) for p in args.prompts]
    if args.prompts_file is not None:
        text = read_text(args.prompts_file, "prompts file", error=UsageError)
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError("no prompt given: pass PROMPT arguments or --prompts-file")
    if args.negative_prompt is not None:
        check_text(args.negative_prompt, "--negative-prompt", error=UsageError)
    check_image_outputs(args, prompts=len(prompts))
    pipe = load_pipeline(args, low_memory=args.low_memory)
    sampling = pipe.resolve_sampling(None, **sampling_settings(args))

    def draw_chunk(prompt, count, seed, on_scale):
        return pipe(prompt, negative_prompt=args.negative_prompt, num_images_per_prompt=count,
                    sampling=sampling, seed=seed, on_scale=on_scale)

    seed, images, metadata = draw_images(pipe, draw_chunk, prompts, args.num_images, args.seed, args.quiet)
    if args.grid:
        grid = image_grid(images, columns=args.num_images)
        save_png(grid, args.out, dict(metadata[0], prompt=" | ".join(prompts),
                                      images=json.dumps([json.loads(m["openhart"]) for m in metadata])))
        print(f"{args.out}  seed {seed}  {len(prompts)} prompt(s) x {args.num_images} image(s)")
        return 0
    for path, text in zip(write_images(images, metadata, args.out), metadata):
        print(f"{path}  seed {text['seed']}  {text['prompt']!r}")
    return 0
