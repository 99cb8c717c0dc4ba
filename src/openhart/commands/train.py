"""`openhart train`: train the tokenizer, or the transformer and its diffusion head, from a JSON
config, in one process or many (torchrun)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config import config_to_dict
from ..train.tokenizer_task import TokenizerTask
from ..train.train_config import TokenizerTrainConfig, TransformerTrainConfig, load_train_config
from ..train.trainer import train
from ..train.transformer_task import TransformerTask

TRAIN_EXAMPLES = """\
examples:
  openhart train tokenizer --config configs/tokenizer-shapes.json
  openhart train tokenizer --config configs/tokenizer-shapes.json --set run.steps=2000 --set optim.lr=2e-4
  openhart train transformer --config configs/transformer-shapes.json
  torchrun --nproc_per_node 8 -m openhart train transformer --config my.json --set run.parallel=fsdp
  a run resumes from the newest checkpoint of its output_dir by default (--resume none starts afresh)
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "train", help="train the tokenizer, or the transformer and diffusion head",
        description="Train from a JSON config (see configs/). One process, or many with torchrun "
                    "(DDP or FSDP, run.parallel). Checkpoints, metrics.jsonl, samples/ and the "
                    "exported model/ go to run.output_dir.",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("tokenizer", "transformer"), help="what to train")
    p.add_argument("--config", type=Path, required=True, help="training config (JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. run.steps=100 or optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", default="auto",
                   help="'auto' (newest checkpoint of the run folder, if any), a checkpoint file or "
                        "folder, or 'none' (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    logging.getLogger("openhart").setLevel(logging.INFO)
    if args.what == "tokenizer":
        config = load_train_config(TokenizerTrainConfig, args.config, args.overrides)
        task = TokenizerTask(config)
    else:
        config = load_train_config(TransformerTrainConfig, args.config, args.overrides)
        task = TransformerTask(config)
    resume = None if args.resume == "none" else args.resume
    quiet = args.quiet or not sys.stderr.isatty()
    exported = train(task, config.run, config.optim, config_to_dict(config), resume=resume, quiet=quiet)
    if exported is not None:
        print(f"trained {config.run.steps} steps; model written to {exported}")
    return 0
