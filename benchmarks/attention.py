"""Attention at HART's real inference shapes, per scale and path, against the machine's limit (issue #23).

Usage:
    .venv/bin/python benchmarks/attention.py --size 512 --dtype bf16 --json attention-512-bf16.json
    .venv/bin/python benchmarks/attention.py --size 256 --dtype fp32 --scales 8 9   # the last two scales
    .venv/bin/python benchmarks/attention.py --size 512 --paths sdpa kernel chunked flex --scales 9

Paths (candidates of issue #23): `sdpa` (PyTorch's F.scaled_dot_product_attention), `kernel`
(openhart's C++ kernel, src/openhart/kernels/attention.cpp; with bf16 it uses the VNNI
micro-kernels only where the CPU has native bf16), `chunked` (query-chunked attention from PyTorch
ops: per chunk of queries one matmul, an fp32 softmax and a second matmul, the chunk sized so that
one head's fp32 score tile is at most 256 KiB, a quarter of a 1 MiB L2) and `flex` (torch.compile'd
flex_attention with no score_mod and no block mask; compiled once per shape, not timed).

The shapes are those of a generation with classifier-free guidance: at scale k, the queries are
that scale's tokens (B = 2 halves, 24 heads of 64 for the 0.7B), and the keys and values are
everything cached so far (the text prefix, every earlier scale, and the current one), with no
mask. For each scale it prints seconds (median of --repeats), scores per second (B x heads x Lq x
Lkv per second), the fraction of the limit and the largest error against an fp64 reference
(over the first two heads).

The limit follows `openhart bench`'s rule: max(FLOPs / matmul peak, scores / exp rate), with
4 x d FLOPs per score (QK^T and PV) and the peaks measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from openhart import kernels
from openhart.attention import KV_BLOCK, Q_BLOCK
from openhart.benchmark import exp_rate, matmul_peak_tflops
from openhart.config import hart_0p7b
from openhart.device import has_native_bf16
from openhart.timing import call_times

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHUNK_TILE_BYTES = 256 << 10


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


def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    module = kernels.load("attention")
    if module is None:
        raise RuntimeError("the attention kernel could not be built here (see the warning above)")
    vnni = q.dtype == torch.bfloat16 and has_native_bf16(q.device)
    return module.attention(q, k, v, q.shape[-1] ** -0.5, Q_BLOCK, KV_BLOCK, vnni)


def chunk_rows(lkv: int) -> int:
    """Queries per chunk: one head's fp32 score tile (rows x Lkv) within CHUNK_TILE_BYTES."""
    rows = max(1, CHUNK_TILE_BYTES // (4 * lkv))
    return 1 << (rows.bit_length() - 1)


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scale, rows = q.shape[-1] ** -0.5, chunk_rows(k.shape[-2])
    kt = k.transpose(-1, -2)
    out = torch.empty_like(q)
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start:start + rows, :], kt).float().mul_(scale)
        out[..., start:start + rows, :] = torch.matmul(scores.softmax(dim=-1).to(q.dtype), v)
    return out


_flex_compiled = None


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    global _flex_compiled
    if _flex_compiled is None:
        from torch.nn.attention.flex_attention import flex_attention
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled(q, k, v)


PATHS = {"sdpa": sdpa, "kernel": kernel, "chunked": chunked, "flex": flex}


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact attention in fp64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.softmax(dim=-1) @ v


def measure(shape: dict, dtype: torch.dtype, peak_tflops: float, exp_per_s: float, repeats: int,
            generator: torch.Generator, path: str = "sdpa") -> dict:
    b, h, lq, lkv, d = shape["batch"], shape["heads"], shape["lq"], shape["lkv"], shape["head_dim"]
    q = torch.randn(b, h, lq, d, generator=generator).to(dtype)
    k = torch.randn(b, h, lkv, d, generator=generator).to(dtype)
    v = torch.randn(b, h, lkv, d, generator=generator).to(dtype)
    scores = b * h * lq * lkv
    limit_s = max(4 * d * scores / (peak_tflops * 1e12), scores / exp_per_s)
    attend = PATHS[path]
    attend(q, k, v)  # warm-up (and flex's compilation)
    seconds = statistics.median(call_times(lambda _: attend(q, k, v), range(repeats), q.device))
    # The error on the first two heads: an fp64 reference of every head at 1024 px would take 15 GB.
    error = (attend(q, k, v)[:, :2].double() - reference(q[:, :2], k[:, :2], v[:, :2])).abs().max().item()
    return {**shape, "path": path, "seconds": seconds, "scores_per_s": scores / seconds,
            "limit_s": limit_s, "fraction_of_limit": limit_s / seconds, "max_abs_error": error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, choices=(256, 512, 1024), default=512)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--scales", type=int, nargs="*", default=None, help="scale indices (default: all)")
    parser.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=["sdpa", "kernel"],
                        help="candidates to time (default: sdpa kernel)")
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
        for path in args.paths:
            row = measure(shape, dtype, peak, exps, args.repeats, generator, path)
            rows.append(row)
            print(f"scale {row['scale']:2d}  Lq {row['lq']:5d}  Lkv {row['lkv']:5d}  {path:>8}  "
                  f"{row['seconds'] * 1e3:9.2f} ms  {row['scores_per_s']:.2e} scores/s  "
                  f"{100 * row['fraction_of_limit']:5.1f}% of limit  max error {row['max_abs_error']:.1e}")
    for path in args.paths:
        total = sum(r["seconds"] for r in rows if r["path"] == path)
        limit = sum(r["limit_s"] for r in rows if r["path"] == path)
        print(f"{path:>8}, all scales timed: {total:.3f} s against a limit of {limit:.3f} s "
              f"({100 * limit / total:.1f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "dtype": args.dtype, "matmul_peak_tflops": peak, "exp_per_s": exps,
                       "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                       "native_bf16": has_native_bf16(device), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
