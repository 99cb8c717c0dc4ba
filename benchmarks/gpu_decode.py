"""Decoder time at 1024 px on a GPU with PyTorch's GroupNorm against openhart's split GroupNorm.

Usage: python benchmarks/gpu_decode.py [--dtype bf16] [--batches 1 8]
       python benchmarks/gpu_decode.py --preset tiny --device cpu --dtype fp32 --batches 1 --repeats 1
           (a smoke test: seconds)
Random weights (the released tokenizer's architecture); prints ms per decode and the largest
difference between the two paths' images.
"""

from __future__ import annotations

import argparse
import time

import torch

from openhart.benchmark import BenchSettings, build_model
from openhart.device import resolve_dtype
from openhart.tokenizer import layers


def time_decode(model, latent, repeats: int = 10) -> tuple[float, torch.Tensor]:
    sync = torch.cuda.synchronize if latent.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        out = model.tokenizer.decode_latent(latent)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            model.tokenizer.decode_latent(latent)
        sync()
    return (time.perf_counter() - start) * 1000 / repeats, out.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--preset", choices=("hart-0.7b", "tiny"), default="hart-0.7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    model = build_model(BenchSettings(preset=args.preset, size=1024, dtype=resolve_dtype(args.dtype), device=device))
    side = model.config.tokenizer.patch_nums[-1]
    for batch in args.batches:
        g = torch.Generator(device=device).manual_seed(0)
        latent = torch.randn(batch, model.config.tokenizer.latent_channels, side, side, device=device,
                             generator=g).to(model.tokenizer.quantizer.codebook.weight.dtype)
        split_ms, split = time_decode(model, latent, args.repeats)
        threshold = layers.SPLIT_GROUP_NORM_MIN
        layers.SPLIT_GROUP_NORM_MIN = 1 << 62  # PyTorch's kernel everywhere
        native_ms, native = time_decode(model, latent, args.repeats)
        layers.SPLIT_GROUP_NORM_MIN = threshold
        print(f"batch {batch} {args.dtype}: decode {native_ms:.1f} ms with torch GroupNorm, "
              f"{split_ms:.1f} ms with split GroupNorm; max |diff| {(split - native).abs().max().item():.4f} "
              f"(images in [-1, 1], std {native.std().item():.3f})")


if __name__ == "__main__":
    main()
