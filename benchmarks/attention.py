"""Attention at HART's real inference shapes, per scale, against the machine's limit (issue #23).

Usage:
    .venv/bin/python benchmarks/attention.py --size 512 --dtype bf16 --json attention-512-bf16.json
    .venv/bin/python benchmarks/attention.py --size 256 --dtype fp32 --scales 8 9   # the last two scales

The shapes are those of a generation with classifier-free guidance: at scale k, the queries are
that scale's tokens (B = 2 halves, 24 heads of 64 for the 0.7B), and the keys and values are
everything cached so far (the text prefix, every earlier scale, and the current one), with no
mask. For each scale it prints seconds (median of --repeats), scores per second (B x heads x Lq x
Lkv per second), the fraction of the limit and the largest error against an fp64 reference.

The limit follows `openhart bench`'s rule: max(FLOPs / matmul peak, scores / exp rate), with
4 x d FLOPs per score (QK^T and PV) and the peaks measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from openhart.bench import exp_rate, matmul_peak_tflops
from openhart.config import hart_0p7b
from openhart.timing import call_times

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def scale_shapes(size: int, batch: int = 2) -> list[dict]:
    """One entry per scale: batch, heads, Lq, Lkv, head dim."""
    config = hart_0p7b(size)
    heads = config.transformer.num_heads
    head_dim = config.transformer.embed_dim // heads
    cached = config.transformer.context_tokens
    shapes = []
    for k, pn in enumerate(config.tokenizer.patch_nums):
        cached += pn * pn
        shapes.append({"scale": k, "batch": batch, "heads": heads, "lq": pn * pn, "lkv": cached, "head_dim": head_dim})
    return shapes


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact attention in fp64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.softmax(dim=-1) @ v


def measure(shape: dict, dtype: torch.dtype, peak_tflops: float, exp_per_s: float, repeats: int,
            generator: torch.Generator) -> dict:
    b, h, lq, lkv, d = shape["batch"], shape["heads"], shape["lq"], shape["lkv"], shape["head_dim"]
    q = torch.randn(b, h, lq, d, generator=generator).to(dtype)
    k = torch.randn(b, h, lkv, d, generator=generator).to(dtype)
    v = torch.randn(b, h, lkv, d, generator=generator).to(dtype)
    scores = b * h * lq * lkv
    limit_s = max(4 * d * scores / (peak_tflops * 1e12), scores / exp_per_s)
    sdpa(q, k, v)  # warm-up
    seconds = statistics.median(call_times(lambda _: sdpa(q, k, v), range(repeats), q.device))
    error = (sdpa(q, k, v).double() - reference(q, k, v)).abs().max().item()
    return {**shape, "path": "sdpa", "seconds": seconds, "scores_per_s": scores / seconds,
            "limit_s": limit_s, "fraction_of_limit": limit_s / seconds, "max_abs_error": error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, choices=(256, 512, 1024), default=512)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--scales", type=int, nargs="*", default=None, help="scale indices (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    shapes = scale_shapes(args.size)
    if args.scales is not None:
        unknown = [s for s in args.scales if not 0 <= s < len(shapes)]
        if unknown:
            parser.error(f"--scales {unknown}: {args.size} px has scales 0-{len(shapes) - 1}")
        shapes = [shapes[s] for s in args.scales]
    dtype, device = DTYPES[args.dtype], torch.device("cpu")
    peak, exps = matmul_peak_tflops(dtype, device), exp_rate(device)
    print(f"{args.dtype} matmul peak {peak:.3f} TFLOP/s, exp {exps:.2e}/s, {torch.get_num_threads()} threads")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for shape in shapes:
        row = measure(shape, dtype, peak, exps, args.repeats, generator)
        rows.append(row)
        print(f"scale {row['scale']:2d}  Lq {row['lq']:5d}  Lkv {row['lkv']:5d}  {row['seconds'] * 1e3:9.2f} ms  "
              f"{row['scores_per_s']:.2e} scores/s  {100 * row['fraction_of_limit']:5.1f}% of limit  "
              f"max error {row['max_abs_error']:.1e}")
    total = sum(r["seconds"] for r in rows)
    limit = sum(r["limit_s"] for r in rows)
    print(f"all scales: {total:.3f} s against a limit of {limit:.3f} s ({100 * limit / total:.1f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "dtype": args.dtype, "matmul_peak_tflops": peak, "exp_per_s": exps,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
