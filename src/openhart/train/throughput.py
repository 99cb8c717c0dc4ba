"""Training throughput of a config on this machine, against its measured matmul peak.

One process, the config's batch and precision, and the trainer's own step (`trainer._train_step`:
data, forward, the finite check, backward, clipping, the optimizer and its schedule, EMA, the
task's auxiliary step). FLOPs of one step come from `torch.utils.flop_counter`; the step time is
the median over `steps` steps after `warmup`. The bf16 and fp32 matmul peaks are measured in the
same run. With `profile`, `steps` more steps run under torch.profiler and the result says where
the time goes: per phase of the step (`trainer.STEP_PHASES`) and per op.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ..benchmark import MATMUL_SIZE, kernel_kind, matmul_peak_tflops
from ..timing import call_times
from .distributed import Distributed
from .train_config import OptimConfig, RunConfig
from .trainer import STEP_PHASES, TrainingTask, _setup, _train_step, autocast_context, resolved_precision

PROFILE_TOP = 15


def training_throughput(task: TrainingTask, run: RunConfig, optim: OptimConfig, *, steps: int = 10,
                        warmup: int = 3, profile: bool = False, matmul_size: int = MATMUL_SIZE) -> dict:
    dist = Distributed()
    with tempfile.TemporaryDirectory(prefix="openhart-throughput-") as tmp:
        run = dataclasses.replace(run, output_dir=tmp)  # nothing is written there
        state = _setup(task, run, optim, {}, dist)
        autocast = autocast_context(run.precision, dist.device)

        def one_step(_):
            return _train_step(state, autocast)

        counter = FlopCounterMode(display=False)
        with counter:
            counts, _ = one_step(0)
        for step in range(1, warmup):
            one_step(step)
        seconds = statistics.median(call_times(one_step, range(warmup, warmup + steps), dist.device))
        profiled = _profile(one_step, steps) if profile else {}
    flops = counter.get_total_flops()
    peaks = {"bf16": matmul_peak_tflops(torch.bfloat16, dist.device, matmul_size),
             "fp32": matmul_peak_tflops(torch.float32, dist.device, matmul_size)}
    achieved = flops / seconds / 1e12
    precision = resolved_precision(run.precision, dist.device)
    return {
        "task": task.kind, "precision": precision, "batch_size": run.batch_size,
        "parameters": sum(p.numel() for p in state.params),
        "seconds_per_step": seconds, "images_per_s": counts["images"] / seconds,
        "tokens_per_s": counts["tokens"] / seconds, "tflop_per_step": flops / 1e12,
        "achieved_tflops": achieved, "peak_tflops": peaks,
        "fraction_of_bf16_peak": achieved / peaks["bf16"], "fraction_of_fp32_peak": achieved / peaks["fp32"],
        "fraction_of_peak": achieved / peaks["bf16" if precision == "bf16" else "fp32"],
        **profiled,
    }


def _profile(one_step, steps: int) -> dict:
    """Per-step seconds of each phase, of the matmul/convolution/attention kernels and of the rest."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(steps):
            one_step(step)
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e6 / steps for e in events if e.key in STEP_PHASES}
    ops = [e for e in events if e.key not in STEP_PHASES and not e.key.startswith("ProfilerStep")]
    kinds: dict[str, float] = {}
    for e in ops:
        kind = kernel_kind(e.key)
        kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total / 1e6 / steps
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:PROFILE_TOP]
    return {
        "profile_phases_s": {name: phases.get(name, 0.0) for name in STEP_PHASES},
        "profile_self_s_by_kind": kinds,
        "profile_top_ops": [{"name": e.key, "kind": kernel_kind(e.key), "self_s": e.self_cpu_time_total / 1e6 / steps,
                             "calls": e.count // steps} for e in top],
    }
