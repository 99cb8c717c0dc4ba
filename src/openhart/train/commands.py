"""Command-line entry points of training: `openhart train`, `openhart cache`, `openhart export`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..device import resolve_dtype
from ..outputs import check_output_folder
from ..commands.ranges import integer, seed

TRAIN_EXAMPLES = """\
examples:
  openhart train tokenizer --config configs/tokenizer-shapes.json
  openhart train tokenizer --config configs/tokenizer-shapes.json --set run.steps=2000 --set optim.lr=2e-4
  openhart train transformer --config configs/transformer-shapes.json
  torchrun --nproc_per_node 8 -m openhart train transformer --config my.json --set run.parallel=fsdp
  a run resumes from the newest checkpoint of its output_dir by default (--resume none starts afresh)
"""

CACHE_EXAMPLES = """\
examples:
  openhart cache --data emoji/train --tokenizer runs/tok/model --text-encoder all-MiniLM-L6-v2 \\
      --resolution 64 --context-tokens 32 --out cache/emoji-64
  openhart cache --data images/ --tokenizer runs/tok/model --text-encoder random --context-dim 64 \\
      --context-tokens 16 --resolution 64 --out cache/test
      random text encoder: for tests and smoke runs only
"""

EXPORT_EXAMPLES = """\
examples:
  openhart export runs/tf runs/tf-model                       # newest checkpoint, EMA weights
  openhart export runs/tf/checkpoints/ckpt-00001000.pt model-1k --weights raw
  openhart export runs/my-style my-style-model --merge-lora   # a LoRA (run or adapter folder) merged into its base
"""


DATA_EXAMPLES = """\
examples:
  openhart data emoji data/emoji
      every colour emoji of Noto Color Emoji (about 3,800) at 128 px, captioned with its name
      ("red apple", "flag: Japan"), in data/emoji/train and a fixed 10% in data/emoji/heldout;
      needs Debian's fonts-noto-color-emoji (sudo apt-get install fonts-noto-color-emoji)
  openhart data shapes data/shapes --count 512 --size 64
      coloured circles and squares with captions ("a red circle"), for smoke runs of training
"""


def add_commands(commands) -> None:
    _add_data(commands)
    _add_train(commands)
    _add_cache(commands)
    _add_export(commands)


def _add_data(commands) -> None:
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
        from ..data.emoji import write_emoji_dataset

        counts = write_emoji_dataset(args.out, font=args.font, seed=args.seed)
        print(f"wrote {counts['train']} training and {counts['heldout']} held-out emoji to {args.out} "
              f"({counts['skipped']} named emoji have no single glyph in the font)")
        return 0
    from ..data.synthetic import write_shapes

    write_shapes(args.out, count=args.count, size=args.size)
    print(f"wrote {args.count} images with captions to {args.out}")
    return 0


def _add_train(commands) -> None:
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
    from ..config import config_to_dict
    from .config import TokenizerTrainConfig, TransformerTrainConfig, load_train_config
    from .trainer import train

    logging.getLogger("openhart").setLevel(logging.INFO)
    if args.what == "tokenizer":
        from .tokenizer_task import TokenizerTask

        config = load_train_config(TokenizerTrainConfig, args.config, args.overrides)
        task = TokenizerTask(config)
    else:
        from .transformer_task import TransformerTask

        config = load_train_config(TransformerTrainConfig, args.config, args.overrides)
        task = TransformerTask(config)
    resume = None if args.resume == "none" else args.resume
    quiet = args.quiet or not sys.stderr.isatty()
    exported = train(task, config.run, config.optim, config_to_dict(config), resume=resume, quiet=quiet)
    if exported is not None:
        print(f"trained {config.run.steps} steps; model written to {exported}")
    return 0


def _add_cache(commands) -> None:
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
    from ..data.latent_cache import EmptyDatasetError, build_latent_cache
    from ..loading import load_tokenizer
    from ..text.encoder import load_prompt_encoder
    from ..text.random_encoder import random_prompt_encoder
    from .tokenizer_task import open_dataset

    if args.out.exists():
        raise ValueError(f"{args.out} already exists; remove it or choose another --out")
    tokenizer = load_tokenizer(args.tokenizer, device=args.device)
    tokenizer.scales_for_size(args.resolution)
    dataset = open_dataset(args.data, args.resolution, random_crop=False)
    if args.text_encoder == "random":
        encoder = random_prompt_encoder(args.context_dim, args.context_tokens, device=args.device)
        spec = {"kind": "random", "seed": 0}
    else:
        from ..text.encoder import PACKAGED_ENCODERS

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


def _add_export(commands) -> None:
    p = commands.add_parser(
        "export", help="turn a training checkpoint into a model folder",
        description="Write the model of a training checkpoint as an openhart folder: a HART model "
                    "(for `openhart generate --model` and HARTPipeline) or a tokenizer.",
        epilog=EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a ckpt-*.pt file, a checkpoints/ folder or a run folder; with "
                   "--merge-lora a LoRA adapter (folder, finetune run or Hub id)")
    p.add_argument("out", type=Path, help="model folder to write")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="default: ema")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="storage dtype of the weights (default fp32; fp16 halves the folder, and "
                        "loading casts back to the compute dtype)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing OUT: its config.json, model.safetensors and system prompt "
                        "are replaced, other files stay")
    p.add_argument("--merge-lora", action="store_true",
                   help="add the LoRA adapter's update into its base model's weights and write a "
                        "self-contained model folder")
    p.add_argument("--model", default=None,
                   help="with --merge-lora: the base model (default: the one the adapter records)")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .export import checkpoint_source, export_checkpoint, merge_adapter

    if args.model is not None and not args.merge_lora:
        raise ValueError("--model names the base of --merge-lora; leave it out otherwise")
    source = Path(args.checkpoint) if args.merge_lora else checkpoint_source(args.checkpoint)
    check_output_folder(args.out, "OUT", overwrite=args.overwrite,
                        sources=[source] if source.exists() else [])  # a Hub id is checked once resolved
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if args.merge_lora:
            out = merge_adapter(args.checkpoint, args.out, model=args.model, dtype=resolve_dtype(args.dtype),
                                overwrite=args.overwrite)
            print(f"wrote {out} (the base with the adapter merged in, stored as {args.dtype})")
            return 0
        out = export_checkpoint(Path(args.checkpoint), args.out, weights=args.weights,
                                dtype=resolve_dtype(args.dtype), overwrite=args.overwrite)
    print(f"wrote {out} ({args.weights} weights, stored as {args.dtype})")
    return 0
