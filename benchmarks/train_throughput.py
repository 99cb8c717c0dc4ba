"""Training throughput of a training config on this machine (one process).

Usage:
    .venv/bin/python benchmarks/train_throughput.py tokenizer configs/tokenizer-shapes.json
    .venv/bin/python benchmarks/train_throughput.py transformer configs/transformer-shapes.json \
        --json benchmarks/results/train-transformer-shapes.json

Prints seconds per step, images/s, tokens/s and the achieved TFLOP/s as a fraction of the bf16 and
fp32 matmul peaks measured in the same run. The step is the trainer's own (EMA and all). With
--profile, as many more steps run under torch.profiler, and the result adds the seconds per step
of each phase (data, forward, backward, optimizer, ema, auxiliary), of the matmul kernels
against everything else, and the top ops by self time. The C library's heap is set up as `openhart train`
sets it (openhart.allocator); OPENHART_MALLOC=keep or map forces one policy.
"""

import argparse
import json
import sys

from openhart.allocator import keep_large_blocks
from openhart.train.train_config import TokenizerTrainConfig, TransformerTrainConfig, load_train_config
from openhart.train.throughput import training_throughput


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("tokenizer", "transformer"))
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="also profile --steps steps")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak-measuring matmul")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    keep_large_blocks()  # as the CLI starts
    if args.what == "tokenizer":
        from openhart.train.tokenizer_task import TokenizerTask as Task
        config = load_train_config(TokenizerTrainConfig, args.config, args.overrides)
    else:
        from openhart.train.transformer_task import TransformerTask as Task
        config = load_train_config(TransformerTrainConfig, args.config, args.overrides)
    result = training_throughput(Task(config), config.run, config.optim, steps=args.steps, profile=args.profile,
                                 matmul_size=args.matmul_size)
    result["config"] = args.config
    result["overrides"] = args.overrides
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
