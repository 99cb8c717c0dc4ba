"""`openhart convert`: a model folder (the official release in particular) to openhart's layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..convert.checkpoint import convert_official_checkpoint
from ..device import resolve_dtype
from ..outputs import check_output_folder
from ..text.encoder import SYSTEM_PROMPT_FILE
from .common import UsageError


CONVERT_EXAMPLES = """\
examples:
  openhart convert hart-0.7b-1024px hart-0.7b-openhart
  openhart convert hart-0.7b-1024px hart-0.7b-bf16 --dtype bf16 --system-prompt hart_system_prompt.txt
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "convert", help="convert a model folder (e.g. the official release) to openhart's layout",
        description="Read SRC (official release folder with llm/ and tokenizer/, or an openhart "
                    "folder) and write DST as openhart's config.json + model.safetensors; then "
                    "load DST back and check every tensor.",
        epilog=CONVERT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="source model folder, or a Hub repo id (downloaded)")
    p.add_argument("dst", type=Path, help="destination folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 weights (default fp32)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="official llm weights: EMA or raw (default: EMA when present)")
    p.add_argument("--system-prompt", type=Path, default=None,
                   help=f"copy this file into DST as {SYSTEM_PROMPT_FILE} (the official system prompt)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing DST: its config.json, model.safetensors and system "
                        "prompt are replaced, other files stay")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    dtype = resolve_dtype(args.dtype)
    local = [args.src] if Path(args.src).exists() else []  # a Hub id is checked once it is resolved
    check_output_folder(args.dst, "DST", overwrite=args.overwrite, sources=local)
    if args.system_prompt is not None and not args.system_prompt.is_file():
        raise UsageError(f"system prompt file not found: {args.system_prompt}")
    dst = convert_official_checkpoint(args.src, args.dst, dtype=dtype, weights=args.weights,
                                      system_prompt_file=args.system_prompt, overwrite=args.overwrite)
    print(f"wrote {dst} ({args.dtype}); reloaded it and verified every tensor")
    return 0
