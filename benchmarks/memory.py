"""Peak resident memory of one generation of the 0.7B preset with the Qwen2-1.5B-size text encoder.

Usage: python benchmarks/memory.py [--size 1024] [--dtype bf16] [--low-memory] [--json out.json]
       python benchmarks/memory.py --preset tiny --dtype fp32     (a smoke test: seconds)

Random weights (nothing is downloaded), batch 1, guidance 4.5: the same generation as
`openhart bench`, run once, without the bench's timed repeats, FLOP counting and matmul-peak
measurement, so that the peak is that of a generation (ru_maxrss of this process). Also prints the
bytes of each model part and of the KV cache, which set most of the peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from openhart.allocator import keep_large_blocks
from openhart.benchmark import BenchSettings, build_model, build_text_encoder, run_once
from openhart.device import resolve_dtype
from openhart.timing import PhaseTimer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("hart-0.7b", "tiny"), default="hart-0.7b")
    parser.add_argument("--size", type=int, default=1024, choices=(256, 512, 1024))
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--low-memory", action="store_true", help="free the text encoder after encoding")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    keep_large_blocks()  # as the CLI does
    settings = BenchSettings(preset=args.preset, size=args.size, dtype=resolve_dtype(args.dtype),
                             low_memory=args.low_memory)
    model = build_model(settings)
    parts = {name: sum(p.numel() * p.element_size() for p in getattr(model, name).parameters()) / 2**30
             for name in ("transformer", "tokenizer", "head")}
    cfg = model.config.transformer
    cache_len = cfg.context_tokens + sum(pn * pn for pn in model.config.tokenizer.patch_nums) - 1
    parts["kv_cache"] = 2 * cfg.depth * 2 * cfg.num_heads * cache_len * cfg.head_dim * settings.dtype.itemsize / 2**30
    encoder = None if settings.low_memory else build_text_encoder(settings, model.config)

    def make_encoder():
        return build_text_encoder(settings, model.config) if settings.low_memory else encoder

    if encoder is not None:
        parts["text_encoder"] = sum(p.numel() * p.element_size() for p in encoder.model.parameters()) / 2**30
    start = time.perf_counter()
    phases = run_once(model, make_encoder, settings, PhaseTimer(settings.device))
    result = {"preset": args.preset, "size": model.config.image_size, "dtype": args.dtype, "low_memory": args.low_memory,
              "seconds": time.perf_counter() - start, "phases": phases,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "gib": parts}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
