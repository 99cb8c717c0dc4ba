"""`openhart cache`: encode an image-caption dataset once (codes, residuals, text features) for
transformer training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..data.latent_cache import EmptyDatasetError, build_latent_cache
from ..loading import load_tokenizer
from ..text.encoder import PACKAGED_ENCODERS, load_prompt_encoder
from ..text.random_encoder import random_prompt_encoder
from ..train.tokenizer_task import open_dataset
from .ranges import integer

CACHE_EXAMPLES = """\
examples:
  openhart cache --data emoji/train --tokenizer runs/tok/model --text-encoder all-MiniLM-L6-v2 \\
      --resolution 64 --context-tokens 32 --out cache/emoji-64
  openhart cache --data images/ --tokenizer runs/tok/model --text-encoder random --context-dim 64 \\
      --context-tokens 16 --resolution 64 --out cache/test
      random text encoder: for tests and smoke runs only
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "cache", help="encode a dataset once (codes, residuals, text features) for transformer training",
        description="Run the frozen tokenizer and text encoder over an image-caption dataset and "
                    "write a latent cache folder for `openhart train transformer`.",
        epilog=CACHE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image-caption folder, folder of .tar shards, or a .tar")
    p.add_argument("--tokenizer", type=Path, required=True,
                   help="tokenizer folder, or a model folder (its tokenizer)")
    p.add_argument("--text-encoder", required=True,
                   help="local Hugging Face text encoder folder, or 'random' (tests only)")
    p.add_argument("--resolution", type=integer(8, 4096), required=True, help="square image size")
    p.add_argument("--out", type=Path, required=True, help="cache folder to create")
    p.add_argument("--context-tokens", type=integer(1, 4096), default=300, help="text tokens per prompt (default 300)")
    p.add_argument("--context-dim", type=integer(1, 16384), default=64, help="width of the random text encoder")
    p.add_argument("--batch-size", type=integer(1, 4096), default=16)
    p.add_argument("--feature-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="storage dtype of the text features (default float32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise ValueError(f"{args.out} already exists; remove it or choose another --out")
    tokenizer = load_tokenizer(args.tokenizer, device=args.device)
    tokenizer.scales_for_size(args.resolution)
    dataset = open_dataset(args.data, args.resolution, random_crop=False)
    if args.text_encoder == "random":
        encoder = random_prompt_encoder(args.context_dim, args.context_tokens, device=args.device)
        spec = {"kind": "random", "seed": 0}
    else:
        encoder = load_prompt_encoder(args.text_encoder, max_length=args.context_tokens, device=args.device)
        packaged = args.text_encoder in PACKAGED_ENCODERS and not Path(args.text_encoder).exists()
        spec = {"kind": "huggingface",
                "path": args.text_encoder if packaged else str(Path(args.text_encoder).resolve())}
    total = len(dataset) if hasattr(dataset, "__len__") else None
    with tqdm(total=total, desc="cache", unit="img", file=sys.stderr,
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        samples = (sample for _, sample in dataset.stream(0, seed=0))
        try:
            out, counts = build_latent_cache(samples, args.out, tokenizer=tokenizer, encoder=encoder,
                                             text_encoder_spec=spec, resolution=args.resolution,
                                             batch_size=args.batch_size, feature_dtype=args.feature_dtype,
                                             progress=lambda done: bar.update(done - bar.n))
        except EmptyDatasetError as error:
            raise ValueError(f"no readable example in {args.data} ({getattr(dataset, 'skipped', 0)} unreadable "
                             "skipped, see the warnings above); check the images and captions") from error
    notes = [f"{counts['examples']} examples"]
    if getattr(dataset, "skipped", 0):
        notes.append(f"{dataset.skipped} unreadable images skipped")
    if counts["truncated_captions"]:
        notes.append(f"{counts['truncated_captions']} captions longer than {args.context_tokens} "
                     "tokens were cut (raise --context-tokens to keep them whole)")
    print(f"wrote {out} ({'; '.join(notes)})")
    return 0
