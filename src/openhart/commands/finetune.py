"""`openhart finetune DATA --model BASE --out RUN`: LoRA or full fine-tuning in one command."""

from __future__ import annotations

import argparse
import logging
import sys

from ..lora import LoraSettings
from ..train.finetune import FinetuneOptions, finetune
from .common import UsageError
from .ranges import integer, real, seed

FINETUNE_EXAMPLES = """\
examples:
  openhart finetune my-images/ --out runs/my-style
      a LoRA of the shipped emoji model on my-images/ (metadata.jsonl, or a .txt caption beside
      each image); RUN/lora/ is the adapter, RUN/samples.png the base against the fine-tune
  openhart generate "a red apple" --lora runs/my-style --out apple.png
  openhart finetune my-images/ --model mit-han-lab/hart-0.7b-1024px --resolution 512 --out runs/fox
  openhart finetune my-images/ --model runs/emoji/model --full --steps 1000 --out runs/emoji-full
  openhart finetune my-images/ --prior-data data/emoji/train --out runs/keep
      half of each epoch replays the base's own training images: its other prompts keep their images
  torchrun --nproc_per_node 8 -m openhart finetune shards/ --model mit-han-lab/hart-0.7b-1024px --out runs/big
  a run resumes from its newest checkpoint when the same command runs again
"""


# Longer than 60 lines on purpose: one add_argument per flag, in the order --help shows them.
def add_command(commands) -> None:
    p = commands.add_parser(
        "finetune", help="adapt a model to your images: a LoRA adapter (default) or full fine-tuning",
        description="Fine-tune a HART model (any --model that generate takes) on an image-caption "
                    "folder or .tar shards. The images are encoded once with the model's own "
                    "tokenizer and text encoder into a latent cache (reused while the model, the "
                    "data and the resolution are unchanged); then the transformer trains with a "
                    "LoRA adapter (peft) or all its weights. Defaults follow the model's size.",
        epilog=FINETUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="an image folder (metadata.jsonl or .txt captions), a folder of .tar shards, or a .tar")
    p.add_argument("--out", required=True, help="the run folder (checkpoints, metrics.jsonl, lora/ or model/, samples.png)")
    p.add_argument("--model", default=None,
                   help="the base: a Hub repo id, a folder in the official or openhart layout "
                        "(default: the small emoji model that ships with openhart)")
    p.add_argument("--text-encoder", default=None, help="default: the one the model names")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="official models: EMA or raw llm weights (default: EMA when present)")
    p.add_argument("--resolution", type=integer(8, 4096), default=None,
                   help="training resolution; its scales must be a prefix of the model's, e.g. 256 or "
                        "512 for the 1024-px model (default: the model's own)")
    p.add_argument("--steps", type=integer(1, 100_000_000), default=None, help="optimizer steps (default: about 20 epochs, 200-2000)")
    p.add_argument("--lr", type=real(0, 1, above=True), default=None,
                   help="peak learning rate (default: 2e-4 * sqrt(1024 / width) for LoRA, "
                        "2e-5 * 1024 / width for --full)")
    p.add_argument("--batch-size", type=integer(1, 4096), default=None,
                   help="images per forward pass over all processes (default 4 for widths >= 1024, else 16)")
    p.add_argument("--grad-accum", type=integer(1, 4096), default=1,
                   help="forward passes per optimizer step (gradient accumulation; default 1)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--lora-rank", type=integer(1, 4096), default=None, help="rank of the LoRA adapter (default 16)")
    kind.add_argument("--full", action="store_true", help="train every weight of the transformer instead of a LoRA")
    p.add_argument("--lora-alpha", type=real(0, 1e6, above=True), default=None, help="LoRA alpha (default: the rank, a scale of 1)")
    p.add_argument("--train-head", action=argparse.BooleanOptionalAction, default=False,
                   help="adapt the diffusion head too (default: off)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast where the device has native bf16, else fp32 (default)")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing (default: on for widths >= 1024)")
    p.add_argument("--seed", type=seed(), default=0, help="seeds the adapter, the data order and every draw (default 0)")
    p.add_argument("--trigger", dest="trigger_words", action="append", default=[], metavar="WORD",
                   help="a word of the captions that names the new concept, recorded with the adapter (repeatable)")
    p.add_argument("--prior-data", default=None, metavar="DATA",
                   help="images of what the model should keep drawing (e.g. the images it was trained "
                        "on, or images it generated for related captions), mixed into training so that "
                        "prompts without your concept keep their images (prior preservation)")
    p.add_argument("--prior-fraction", type=real(0, 1), default=None,
                   help="share of the training examples drawn from --prior-data (default 0.5)")
    p.add_argument("--cache-dir", default=None,
                   help="where latent caches are kept (default: $OPENHART_CACHE/latents or ~/.cache/openhart/latents)")
    p.add_argument("--ema-decay", type=real(0, 1), default=0.0, help="EMA of the trained weights (default 0: none)")
    p.add_argument("--sample-every", type=integer(0, 100_000_000), default=0,
                   help="sample images of DATA's first captions every this many steps (default 0: only RUN/samples.png)")
    p.add_argument("--checkpoint-every", type=integer(1, 100_000_000), default=None, help="default: a fifth of the steps, at most 500")
    p.add_argument("--log-every", type=integer(1, 100_000_000), default=None,
                   help="steps between lines of RUN/metrics.jsonl (default: a twentieth of the steps, at most 50)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the underlying transformer training config, e.g. "
                        "losses.mask_rate_max=0 or optim.warmup_steps=0 (repeatable; see docs/training.md)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp", help="under torchrun (default ddp)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    logging.getLogger("openhart").setLevel(logging.INFO)
    if args.lr is not None and args.lr >= 1:
        raise UsageError(f"--lr must be in (0, 1), got {args.lr}")
    if args.prior_fraction is not None and args.prior_data is None:
        raise UsageError("--prior-fraction needs --prior-data")
    prior_fraction = FinetuneOptions.prior_fraction if args.prior_fraction is None else args.prior_fraction
    if not 0 < prior_fraction < 1:
        raise UsageError(f"--prior-fraction must be in (0, 1), got {prior_fraction}")
    if args.full and args.lora_alpha is not None:
        raise UsageError("--lora-alpha is for LoRA; leave it out with --full")
    settings = None if args.full else LoraSettings(rank=args.lora_rank or 16, alpha=args.lora_alpha)
    options = FinetuneOptions(
        data=args.data, out=args.out, model=args.model, text_encoder=args.text_encoder, weights=args.weights,
        resolution=args.resolution, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lora=settings, train_head=args.train_head, precision=args.precision,
        checkpointing=args.checkpointing, seed=args.seed, trigger_words=tuple(args.trigger_words),
        cache_dir=args.cache_dir, device=args.device, parallel=args.parallel, ema_decay=args.ema_decay,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, prior_data=args.prior_data, prior_fraction=prior_fraction,
        overrides=tuple(args.overrides))
    quiet = args.quiet or not sys.stderr.isatty()
    exported = finetune(options, quiet=quiet)
    if exported is not None:
        kind = "adapter" if settings else "model"
        print(f"fine-tuned; {kind} written to {exported}, base against fine-tuned in {args.out}/samples.png")
    return 0
