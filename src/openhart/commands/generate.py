"""`openhart generate`: prompts in, PNGs with their metadata out."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from pathlib import Path

from ..config import LAST_SCALE_MODES
from ..images import image_grid, save_png
from ..sampling import per_scale
from ..seeding import check_seed
from .common import UsageError, add_device_arguments, add_model_arguments, check_output_file, load_pipeline

# Images per prompt at most; they are generated CHUNK at a time (bounded memory).
MAX_IMAGES = 1024
CHUNK = 8

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
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's, 4.5 for the official "
                        "model)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--grid", action="store_true",
                   help="write one grid image to --out (a row per prompt, a column per image) "
                        "instead of one PNG per image")
    p.add_argument("--negative-prompt", default=None,
                   help="text for the unconditional branch (default: HART's zero features)")
    p.add_argument("--top-k", type=int, default=None,
                   help="top-k at every scale, 0 = off (default: the model folder's; officially "
                        "600 for scales < 7, then 300)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling threshold, 0 = off (default: the model folder's)")
    p.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="Gumbel smoothing of code embeddings (default on, as the official scripts)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="add the residual diffusion head's continuous detail (default on; "
                        "--no-residual gives discrete-only images)")
    p.add_argument("--last-scale", choices=LAST_SCALE_MODES, default=None,
                   help="which embedding the residual is added to: 'consistent' (the code the "
                        "head was conditioned on), 'official' (the smoothed embedding of a second "
                        "draw, as the official sampler) or 'gumbel' (default: the model folder's)")
    p.add_argument("--head-temperature", type=float, default=None,
                   help="noise temperature of the residual head, 0 = no noise after the first "
                        "step (default: the model folder's, 1 for the official model)")
    p.add_argument("--head-steps", type=int, default=None,
                   help="diffusion steps of the residual head (default 8)")
    p.add_argument("--maskgit-iters", type=int, default=None,
                   help="MaskGIT iterations on the last scale (default 1)")
    add_model_arguments(p)
    add_device_arguments(p)
    p.add_argument("--low-memory", action="store_true",
                   help="free the text encoder once the prompts are encoded (lower peak memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise UsageError(f"prompts file not found: {args.prompts_file}")
        prompts += [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    if not prompts:
        raise UsageError("no prompt given: pass PROMPT arguments or --prompts-file")
    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {args.out}")
    check_output_file(args.out)
    if not 1 <= args.num_images <= MAX_IMAGES:
        raise UsageError(f"--num-images must be between 1 and {MAX_IMAGES}, got {args.num_images}")
    if args.seed is not None:
        check_seed(args.seed)
    pipe = load_pipeline(args, low_memory=args.low_memory)
    sampling = pipe.resolve_sampling(
        None, guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p, smooth=args.smooth,
        head_steps=args.head_steps, maskgit_iters=args.maskgit_iters, use_residual=args.residual,
        head_temperature=args.head_temperature, last_scale=args.last_scale)
    seed = secrets.randbits(62) if args.seed is None else args.seed
    # at most CHUNK images per pipeline call: chunk c is drawn with seed + c (recorded per image)
    jobs = [(prompt, start, min(CHUNK, args.num_images - start))
            for prompt in prompts for start in range(0, args.num_images, CHUNK)]
    images, metadata = [], []
    with _scale_progress(pipe, args.quiet, len(jobs)) as on_scale:
        for prompt, start, count in jobs:
            out = pipe(prompt, negative_prompt=args.negative_prompt, num_images_per_prompt=count,
                       sampling=sampling, seed=seed + start // CHUNK, on_scale=on_scale)
            images += out.images
            metadata += out.metadata
    if args.grid:
        grid = image_grid(images, columns=args.num_images)
        save_png(grid, args.out, dict(metadata[0], prompt=" | ".join(prompts),
                                      images=json.dumps([json.loads(m["openhart"]) for m in metadata])))
        print(f"{args.out}  seed {seed}  {len(prompts)} prompt(s) x {args.num_images} image(s)")
        return 0
    for image, path, text in zip(images, _output_paths(args.out, len(images)), metadata):
        save_png(image, path, text)
        print(f"{path}  seed {text['seed']}  {text['prompt']!r}")
    return 0


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(count)]


@contextlib.contextmanager
def _scale_progress(pipe, quiet: bool, calls: int = 1):
    """A tqdm bar over the scales on stderr, as an `on_scale` hook; None (no bar) with --quiet or
    when stderr is not a TTY."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    total = pipe.model.config.num_scales * calls
    with tqdm(total=total, desc="scales", unit="scale", file=sys.stderr, leave=False) as bar:
        yield per_scale(lambda si: bar.update(1))
