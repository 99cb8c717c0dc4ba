"""`openhart export`: a training checkpoint (or a LoRA merged into its base) as a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..device import resolve_dtype
from ..outputs import check_output_folder
from ..train.export import checkpoint_source, export_checkpoint, merge_adapter

EXPORT_EXAMPLES = """\
examples:
  openhart export runs/tf runs/tf-model                       # newest checkpoint, EMA weights
  openhart export runs/tf/checkpoints/ckpt-00001000.pt model-1k --weights raw
  openhart export runs/my-style my-style-model --merge-lora   # a LoRA (run or adapter folder) merged into its base
"""


def add_command(commands) -> None:
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
