"""Training throughput of a config on this machine, against its measured matmul peak.

One process, the config's batch and precision. FLOPs of one optimizer step (forward + backward)
come from `torch.utils.flop_counter`; the step time is the median over `steps` steps after
`warmup`, data loading included. The bf16 and fp32 matmul peaks are measured in the same run.
"""

from __future__ import annotations

import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..bench import matmul_peak_tflops
from ..data.stream import BatchStream
from ..timing import call_times
from .config import OptimConfig, RunConfig
from .distributed import Distributed
from .optim import build_optimizer
from .trainer import TrainingTask, autocast_context, resolved_precision


def training_throughput(task: TrainingTask, run: RunConfig, optim: OptimConfig, *, steps: int = 10,
                        warmup: int = 3, device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    torch.manual_seed(run.seed)
    module = task.build(device).train()
    optimizer = build_optimizer(module, optim.lr, optim.weight_decay, tuple(optim.betas))
    params = [p for p in module.parameters() if p.requires_grad]
    stream = BatchStream(task.dataset(), run.batch_size, run.seed)
    autocast = autocast_context(run.precision, device)

    def one_step(step: int):
        batch = task.collate(stream.next_batch(), device)
        with autocast:
            loss, _ = module(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip or float("inf"))
        optimizer.step()
        task.auxiliary_step(batch, step, Distributed(), None)
        return batch

    counter = FlopCounterMode(display=False)
    with counter:
        batch = one_step(0)
    counts = task.batch_counts(batch)
    for step in range(1, warmup):
        one_step(step)
    seconds = statistics.median(call_times(one_step, range(warmup, warmup + steps), device))
    flops = counter.get_total_flops()
    peaks = {"bf16": matmul_peak_tflops(torch.bfloat16, device),
             "fp32": matmul_peak_tflops(torch.float32, device)}
    achieved = flops / seconds / 1e12
    return {
        "task": task.kind, "precision": resolved_precision(run.precision, device), "batch_size": run.batch_size,
        "parameters": sum(p.numel() for p in params),
        "seconds_per_step": seconds, "images_per_s": counts["images"] / seconds,
        "tokens_per_s": counts["tokens"] / seconds, "tflop_per_step": flops / 1e12,
        "achieved_tflops": achieved, "peak_tflops": peaks,
        "fraction_of_bf16_peak": achieved / peaks["bf16"], "fraction_of_fp32_peak": achieved / peaks["fp32"],
    }

