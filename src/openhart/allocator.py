"""How glibc's malloc serves large CPU tensors: kept in the heap, or mapped afresh under activation checkpointing.

glibc's malloc serves every allocation above its mmap threshold (which adapts, but never past
32 MiB) with a fresh mapping and unmaps it on free. Every large activation (a block's
(B, L, hidden) MLP buffers at the large scales, the decoder's feature maps) is then faulted in
page by page and zeroed by the kernel again, on every call. On a 2-core EPYC, `silu(g) * u` over
36 MiB took 36.8 ms with the default and 8.7 ms with a 1 GiB threshold; over 144 MiB, 137 ms and
29 ms; a whole 512 px bf16 generation 53.9 s and 48.5 s (docs/performance.md).

`keep_large_blocks` (the CLI at startup and `HARTPipeline.from_pretrained` on the CPU) raises the
mmap and trim thresholds to 2 GiB (the largest value mallopt takes), so that freed blocks stay in
the heap and are reused. The peak resident memory of a generation measured the same (6.07 and
6.05 GiB at 512 px); memory freed after the peak is kept by the process rather than returned to
the system. With 1 GiB, a 512 px fp32 generation's 1.8 GB KV cache was trimmed from the heap
after each call and faulted in again on the next: its writes took 1.75 s against 0.72 s with
2 GiB (AVX2 EPYC, docs/performance.md). It sets nothing when a policy is already in force.

`map_large_blocks` (training with activation checkpointing: `HARTTrainingModule`, so `openhart
train`, `openhart finetune` of the 0.7B and `openhart bench --finetune`) fixes the mmap threshold
at 4 MiB instead, restores glibc's trim threshold and returns the free heap. A checkpointed step
keeps each block's input alive while the recomputed block's large transients come and go; in the
heap those transients cannot reuse the holes between the kept inputs, and the step's resident
peak above the built model grew by about 0.4 GiB per checkpointed block of the 0.7B at 512 px
(1.33 GiB with 4 blocks, 2.89 GiB with 8; mapped afresh, 0.60 and 0.69 GiB; docs/finetuning.md).
Mapped blocks return to the system when freed, so the resident peak follows the live tensors.
Training without checkpointing keeps the heap: it has no such holes, and mapping would cost page
faults on every step (not timed for training: the figures above are generation's).

OPENHART_MALLOC=system keeps the C library's defaults; OPENHART_MALLOC=keep or map forces one
policy wherever either is asked for.
"""

from __future__ import annotations

import ctypes
import os
import sys

THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int
TRAINING_MMAP_BYTES = 4 << 20
GLIBC_TRIM_BYTES = 128 << 10  # glibc's default M_TRIM_THRESHOLD
# mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
POLICIES = ("keep", "map")

_policy: str | None = None  # the policy in force; "" when none can be set


def keep_large_blocks() -> bool:
    """Keep large blocks in the heap unless a policy is in force; True when this one is.

    A no-op (False) outside Linux with glibc, or when OPENHART_MALLOC is system or map.
    """
    if _policy is None:
        _apply("keep")
    return _policy == "keep"


def map_large_blocks() -> bool:
    """Map large blocks afresh from now on, and return the free heap; True when this policy is in force."""
    if _policy != "map" and _policy != "":
        _apply("map")
    return _policy == "map"


def _apply(wanted: str) -> None:
    global _policy
    choice = os.environ.get("OPENHART_MALLOC", "").strip().lower()
    libc = _glibc() if choice != "system" and sys.platform.startswith("linux") else None
    if libc is None:
        _policy = ""
        return
    policy = choice if choice in POLICIES else wanted
    if policy == _policy:
        return
    if policy == "keep":
        applied = libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES)
    else:  # a fixed threshold also stops glibc from raising it (and the trim threshold) as blocks are freed
        applied = (libc.mallopt(M_MMAP_THRESHOLD, TRAINING_MMAP_BYTES)
                   and libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_BYTES))
        libc.malloc_trim(0)
    _policy = policy if applied else ""


def _glibc():
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc
