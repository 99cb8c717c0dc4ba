"""`openhart bench`: a generation timed per phase against this machine's measured limits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..benchmark import BenchSettings, format_report, run_bench, write_json
from ..device import default_dtype, resolve_device, resolve_dtype
from ..outputs import atomic_path, check_output_file
from ..train.finetune_bench import format_finetune_report, run_finetune_bench
from .common import UsageError
from .ranges import integer, real


BENCH_EXAMPLES = """\
examples:
  openhart bench --size 1024 --dtype bf16 --json bench-1024-bf16.json
  openhart bench --size 1024 --dtype bf16 --low-memory          # text encoder freed after encoding
  openhart bench --preset tiny --warmup 0 --repeats 1           # seconds, for a smoke test
  openhart bench --size 512 --profile                            # plus the top ops by self time
  openhart bench --finetune lora --size 512 --json lora-512.json # one LoRA fine-tuning step: time, memory
  openhart bench --finetune full --size 256                      # full fine-tuning (weights, grads, AdamW)
"""


def add_command(commands) -> None:
    p = commands.add_parser(
        "bench", help="time a generation per phase against this machine's measured limits",
        description="Build a preset with random weights (the released 0.7B transformer and "
                    "tokenizer plus a random Qwen2 of Qwen2-1.5B size by default; nothing is "
                    "downloaded), time text encoding, each scale, the residual diffusion and the "
                    "decode, count FLOPs, measure the matmul peak and the exp rate in the same "
                    "process, and print each phase against its limit and the ratio to the floor.",
        epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=("hart-0.7b", "tiny"), default="hart-0.7b")
    p.add_argument("--size", type=int, choices=(256, 512, 1024), default=1024,
                   help="image size of the hart-0.7b preset (default 1024)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 where the hardware has native bf16, else fp32), fp32, bf16, fp16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch", type=integer(1, 1024), default=1, help="prompts per generation (default 1)")
    p.add_argument("--low-memory", action="store_true",
                   help="free the text encoder once the prompts are encoded")
    p.add_argument("--text-encoder", choices=("qwen2-1.5b", "none"), default="qwen2-1.5b",
                   help="random text encoder to time, or none (random features)")
    p.add_argument("--warmup", type=integer(0, 1000), default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeats", type=integer(1, 1000), default=3, help="timed runs, median reported (default 3)")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=real(0, 1000), default=4.5,
                   help="guidance scale (default 4.5)")
    p.add_argument("--matmul-size", type=integer(64, 32768), default=None,
                   help="side of the matmul that measures the peak (default 2048 on the CPU, "
                        "8192 on GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (compiled in the warm-up runs)")
    p.add_argument("--profile", action="store_true",
                   help="profile one more run: top ops by self time and the time outside "
                        "matmul/convolution/attention kernels")
    p.add_argument("--finetune", choices=("lora", "full"), default=None,
                   help="time fine-tuning steps instead of a generation: batch --batch of cached "
                        "inputs, activation checkpointing, bf16 autocast where native (--dtype "
                        "fp32 forces fp32); seconds per step, peak memory, trainable parameters")
    p.add_argument("--steps", type=integer(1, 10_000), default=2, help="--finetune: timed steps after one counted step (default 2)")
    p.add_argument("--json", type=Path, default=None, help="write the full result as JSON here")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    dtype = default_dtype(device) if args.dtype == "auto" else resolve_dtype(args.dtype)
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.finetune is not None:
        return run_finetune(args, device)
    settings = BenchSettings(preset=args.preset, size=args.size, dtype=dtype, device=device,
                             batch=args.batch, low_memory=args.low_memory, warmup=args.warmup,
                             repeats=args.repeats, guidance_scale=args.guidance_scale, text_encoder=args.text_encoder,
                             matmul_size=args.matmul_size, profile=args.profile,
                             compile=args.compile)
    result = run_bench(settings)
    print(format_report(result))
    if args.json is not None:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def run_finetune(args: argparse.Namespace, device) -> int:
    if args.dtype not in ("auto", "fp32", "bf16"):
        raise UsageError("--finetune trains fp32 weights: --dtype auto (bf16 autocast where native), bf16 or fp32")
    precision = "auto" if args.dtype == "auto" else args.dtype
    result = run_finetune_bench(args.finetune, preset=args.preset, size=args.size, batch=args.batch,
                                steps=args.steps, precision=precision, device=device, matmul_size=args.matmul_size)
    print(format_finetune_report(result))
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
