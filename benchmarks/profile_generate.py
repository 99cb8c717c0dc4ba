"""Profile one generation of a bench preset with torch.profiler; print the top ops.

Usage: python benchmarks/profile_generate.py [--size 1024] [--dtype bf16] [--device cuda]
           [--batch 1] [--rows 30] [--stack 4] [--out table.txt]
With --stack N the ops are also grouped by their N innermost Python frames (which line of
openhart issued each copy_, cat or cast).
Random weights and random text features (the text encoder is left out: `openhart bench` times it).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from openhart.benchmark import BenchSettings, build_model
from openhart.config import SamplingConfig
from openhart.device import resolve_device, resolve_dtype
from openhart.sampling import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("hart-0.7b", "tiny"), default="hart-0.7b",
                        help="tiny: the test model, for a smoke test in seconds")
    parser.add_argument("--size", type=int, default=1024, choices=(256, 512, 1024))
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--stack", type=int, default=0,
                        help="also group ops by their N innermost Python frames")
    parser.add_argument("--out", default=None, help="also write the tables here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    settings = BenchSettings(preset=args.preset, size=args.size, dtype=resolve_dtype(args.dtype), device=device,
                             batch=args.batch)
    model = build_model(settings)
    T, D = model.config.transformer.context_tokens, model.config.transformer.context_dim
    context = torch.randn(args.batch, T, D, device=device)
    positions = torch.arange(T, device=device).expand(args.batch, -1)

    def run() -> None:
        generate(model, context, positions, SamplingConfig(guidance_scale=4.5),
                 torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, with_stack=args.stack > 0) as prof:
        run()
    tables = []
    keys = ["self_cpu_time_total"] + (["self_cuda_time_total"] if device.type == "cuda" else [])
    for key in keys:
        tables.append(f"== sorted by {key}\n"
                      + prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    if args.stack:
        tables.append(f"== grouped by the {args.stack} innermost frames, sorted by self CPU time\n"
                      + prof.key_averages(group_by_stack_n=args.stack).table(
                          sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    text = "\n".join(tables)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
