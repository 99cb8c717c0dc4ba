"""`openhart reconstruct`: the tokenizer's round trip through the continuous and the discrete path."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..config import tokenizer_small
from ..device import resolve_device
from ..hub import resolve_tokenizer
from ..images import load_image, save_png, to_pil
from ..loading import load_tokenizer
from ..metrics import psnr
from ..outputs import check_output_file
from ..tokenizer import HybridTokenizer
from .common import UsageError
from .ranges import integer, seed


RECONSTRUCT_EXAMPLES = """\
examples:
  openhart reconstruct assets/sample.png
      random-weight 'small' tokenizer: shows the pipeline, not quality
  openhart reconstruct photo.jpg --tokenizer hart-0.7b-1024px/tokenizer --out-dir out/
      the released tokenizer; photo.jpg is resized and center-cropped to 1024x1024
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "reconstruct",
        help="tokenizer round trip: encode an image, decode it through both paths, print PSNR",
        description=(
            "Encode IMAGE with the HART hybrid tokenizer, then decode it twice: through the "
            "continuous path (codes + residual) and through the discrete-only path (codes "
            "alone). Both reconstructions are saved as PNGs beside the input (or in --out-dir) "
            "and the PSNR of each against the resized input is printed."
        ),
        epilog=RECONSTRUCT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="input image file (PNG, JPEG, ...)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder, official or openhart layout (or a model folder with "
                        "tokenizer/), or a Hub repo id (only its tokenizer/ is downloaded); "
                        "default: the 'small' preset with random weights")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where to write the reconstructions (default: the input's folder)")
    p.add_argument("--size", type=integer(8, 16384), default=None,
                   help="image side to encode at (default: the tokenizer's full resolution)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--seed", type=seed(), default=0,
                   help="seed of the random weights when no --tokenizer is given (default 0)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    out_dir = args.out_dir if args.out_dir is not None else args.image.parent
    if not out_dir.is_dir():
        raise UsageError(f"output folder does not exist: {out_dir}")
    if not args.image.is_file():
        raise UsageError(f"image not found: {args.image}")
    outputs = {name: out_dir / f"{args.image.stem}.recon-{name}.png" for name in ("continuous", "discrete")}
    for path in outputs.values():
        check_output_file(path, "--out-dir")
    if args.tokenizer is None:
        tokenizer = random_tokenizer(args.seed)
        print(f"No --tokenizer given: using the 'small' preset with RANDOM weights (seed "
              f"{args.seed}). The reconstructions show the pipeline, not quality.")
    else:
        tokenizer = load_tokenizer(resolve_tokenizer(args.tokenizer))
    tokenizer = tokenizer.to(device).eval()
    size = args.size or tokenizer.config.image_size
    tokenizer.scales_for_size(size)  # fail before reading the image if the size does not fit

    images = load_image(args.image, size).to(device)
    with torch.inference_mode():
        tokens = tokenizer.encode(images)
        continuous = tokenizer.decode_latent(tokens.latent)
        discrete = tokenizer.decode_tokens(tokens.indices)
    reference = (images + 1) / 2
    print(f"{args.image}: {size}x{size}, {len(tokens.indices)} scales "
          f"{list(tokens.patch_nums)}, {sum(i.numel() for i in tokens.indices)} codes")
    for name, decoded in (("continuous", continuous), ("discrete", discrete)):
        decoded = (decoded + 1) / 2
        path = outputs[name]
        save_png(to_pil(decoded)[0], path, {"openhart": f"reconstruct --{name} path"})
        value = psnr(decoded, reference).item()
        print(f"  {name:>10} path: PSNR {value:6.2f} dB -> {path}")
    return 0


def random_tokenizer(seed: int) -> HybridTokenizer:
    """The 'small' tokenizer preset with seeded random weights (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HybridTokenizer(tokenizer_small())
