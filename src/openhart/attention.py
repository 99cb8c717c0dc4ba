"""Attention at inference: PyTorch's SDPA, or openhart's C++ kernel where it is faster.

HART's cached attention has no mask: the current scale's queries against everything cached.
`attend` runs it on one of two exact paths:

- `sdpa`: `F.scaled_dot_product_attention`, on every device.
- `kernel`: `kernels/attention.cpp` on the CPU, fp32 through BLAS and bf16 through the oneDNN
  AVX512-BF16/AMX micro-kernels on CPUs with native bf16 (docs/performance.md).

Which is faster depends on the CPU, so for bf16 on a CPU with native bf16 the choice is measured
once per machine (CPU model, threads), torch version and kernel build, on a 512-px last-scale
shape, and kept in the kernels' cache folder: the kernel must beat SDPA by `MARGIN` to be
chosen. The same machine therefore always runs the same path, and so makes the same images. fp32
takes SDPA (the kernel ties it there). `OPENHART_ATTENTION=sdpa` or `=kernel` forces a path
(`kernel` still falls back to SDPA where it cannot run: no compiler, a GPU, or bf16 on a CPU
without native bf16).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from . import kernels
from .device import cpu_name, has_native_bf16
from .outputs import atomic_path
from .timing import call_times

logger = logging.getLogger(__name__)

PATHS = ("sdpa", "kernel")
MARGIN = 1.1  # the kernel must be this much faster than SDPA to be chosen
# The dtypes whose path is measured by default. In fp32 the kernel is SDPA's own algorithm over the
# same BLAS and ties it (docs/performance.md), so fp32 takes SDPA without building the kernel
# unless OPENHART_ATTENTION=kernel asks for it.
MEASURED = (torch.bfloat16,)
# Query and key/value blocks of the kernel: a 256 x 512 fp32 score tile (512 KiB) stays in L2.
Q_BLOCK, KV_BLOCK = 256, 512
# The shape the choice is measured on: a quarter of the 512-px last scale (one CFG half, 6 heads).
TUNE_SHAPE = (1, 6, 1024, 3079, 64)
_chosen: dict[torch.dtype, str] = {}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v without a mask; q (B, H, Lq, D), k and v (B, H, Lkv, D)."""
    if path_for(q.device, q.dtype) == "kernel" and k.shape[2] > 0:
        return kernel_attention(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


# A registered op, so that the profiler names it, FLOP counters can count it and torch.compile
# treats it as one opaque call.
@torch.library.custom_op("openhart::attention", mutates_args=())
def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The C++ kernel's attention (see `attend`)."""
    return _kernel(q, k, v, scale)


@kernel_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    b, h, lq, d = q.shape
    return q.new_empty(b, lq, h, d).transpose(1, 2)  # the kernel's layout


def path_for(device: torch.device, dtype: torch.dtype) -> str:
    """The path `attend` takes for tensors of this device and dtype."""
    forced = os.environ.get("OPENHART_ATTENTION", "").strip().lower()
    if forced and forced not in PATHS:
        raise ValueError(f"OPENHART_ATTENTION={forced!r}: use one of {', '.join(PATHS)} (or leave it unset)")
    if forced == "sdpa" or not _kernel_can_run(device, dtype, build=forced == "kernel" or dtype in MEASURED):
        return "sdpa"
    if forced:
        return forced
    if dtype not in _chosen:
        _chosen[dtype] = _measured_choice(dtype)
    return _chosen[dtype]


def _kernel_can_run(device: torch.device, dtype: torch.dtype, build: bool) -> bool:
    """Whether the kernel runs for this device and dtype; without `build`, never compiles it."""
    if not build or device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.bfloat16 and not has_native_bf16(device):
        return False  # bf16 is emulated there; fp32 is openhart's default on such CPUs
    return kernels.load("attention") is not None


def _kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    vnni = q.dtype == torch.bfloat16 and q.shape[-1] % 64 == 0
    if q.dtype == torch.bfloat16 and not vnni:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return kernels.load("attention").attention(q, k, v, scale, Q_BLOCK, KV_BLOCK, vnni)


def _measured_choice(dtype: torch.dtype) -> str:
    """Time both paths once on this machine (or read the time kept from before)."""
    key = "|".join([cpu_name(), f"threads={torch.get_num_threads()}", torch.__version__,
                    kernels.build_name("attention"), str(dtype)])
    store = kernels.cache_dir() / "attention-choice.json"
    choices = _read_choices(store)
    if key in choices and choices[key].get("path") in PATHS:
        return choices[key]["path"]
    generator = torch.Generator().manual_seed(0)
    b, h, lq, lkv, d = TUNE_SHAPE
    q = torch.randn(b, h, lq, d, generator=generator).to(dtype)
    k = torch.randn(b, h, lkv, d, generator=generator).to(dtype)
    v = torch.randn(b, h, lkv, d, generator=generator).to(dtype)
    seconds = {"sdpa": _best_time(lambda: F.scaled_dot_product_attention(q, k, v, scale=d**-0.5)),
               "kernel": _best_time(lambda: _kernel(q, k, v, d**-0.5))}
    path = "kernel" if seconds["kernel"] * MARGIN < seconds["sdpa"] else "sdpa"
    logger.info("attention for %s on this CPU: %s (sdpa %.3f s, kernel %.3f s)", dtype, path,
                seconds["sdpa"], seconds["kernel"])
    choices[key] = {"path": path, "seconds": seconds, "shape": list(TUNE_SHAPE)}
    _write_choices(store, choices)
    return path


def _best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up: the kernel's micro-kernels are generated on first use
    return min(call_times(lambda _: fn(), range(repeats), torch.device("cpu")))


def _read_choices(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: measure again


def _write_choices(path: Path, choices: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
    except OSError as error:  # a read-only cache: the choice is measured again next time
        logger.warning("could not keep the attention choice in %s: %s", path, error)
