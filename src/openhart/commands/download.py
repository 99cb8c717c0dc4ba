"""`openhart download`: fetch a model and its text encoder from the Hugging Face Hub."""

from __future__ import annotations

import argparse

from ..hub import resolve_model, resolve_text_encoder


DOWNLOAD_EXAMPLES = """\
examples:
  openhart download mit-han-lab/hart-0.7b-1024px
      the released model (llm/config.json, the EMA weights, tokenizer/) and its text encoder
      mit-han-lab/Qwen2-VL-1.5B-Instruct, into the Hugging Face cache (HF_HOME)
  openhart download mit-han-lab/hart-0.7b-1024px@main --weights raw
  HF_HUB_OFFLINE=1 openhart generate "a red fox in snow" --model mit-han-lab/hart-0.7b-1024px --out fox.png
      later, without a network: everything comes from the cache
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "download", help="fetch a model and its text encoder from the Hugging Face Hub into the cache",
        description="Download the files a Hub model needs (only those: for the official release "
                    "llm/config.json, the EMA weights unless --weights raw, and tokenizer/) and "
                    "the text encoder it names, into the Hugging Face cache, and print where they "
                    "are. Files already cached are not downloaded again. Respects HF_HOME, "
                    "HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE.",
        epilog=DOWNLOAD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="Hub repo id, optionally @revision (a local folder is checked and printed)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="official models: EMA or raw llm weights (default: EMA when present)")
    p.add_argument("--text-encoder", default=None,
                   help="text encoder to fetch instead of the one the model names; 'none' skips it")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    source = resolve_model(args.name, weights=args.weights)
    print(f"model {source.name}: {source.path}")
    encoder = args.text_encoder or source.text_encoder
    if encoder is None:
        print("text encoder: the model names none; pass --text-encoder when you generate")
    elif encoder != "none":
        print(f"text encoder {encoder}: {resolve_text_encoder(encoder)}")
    return 0
