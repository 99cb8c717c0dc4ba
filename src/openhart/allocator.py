"""Keep large CPU tensors in the process heap instead of fresh memory mappings (glibc).

glibc's malloc serves every allocation above its mmap threshold (which adapts, but never past
32 MiB) with a fresh mapping and unmaps it on free. Every large activation (a block's
(B, L, hidden) MLP buffers at the large scales, the decoder's feature maps) is then faulted in
page by page and zeroed by the kernel again, on every call. On a 2-core EPYC, `silu(g) * u` over
36 MiB took 36.8 ms with the default and 8.7 ms with a 1 GiB threshold; over 144 MiB, 137 ms and
29 ms; a whole 512 px bf16 generation 53.9 s and 48.5 s (docs/performance.md).

`keep_large_blocks` raises the mmap and trim thresholds to 2 GiB (the largest value mallopt
takes), so that freed blocks stay in the heap and are reused. The peak resident memory measured
the same (6.07 and 6.05 GiB at 512 px); memory freed after the peak is kept by the process rather
than returned to the system. With 1 GiB, a 512 px fp32 generation's 1.8 GB KV cache was trimmed
from the heap after each call and faulted in again on the next: its writes took 1.75 s against
0.72 s with 2 GiB (AVX2 EPYC, docs/performance.md).
The CLI and `HARTPipeline.from_pretrained` on the CPU call it; set OPENHART_MALLOC=system to keep
the C library's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int
# mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def keep_large_blocks() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in force.

    A no-op (False) outside Linux with glibc, or when OPENHART_MALLOC=system.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("OPENHART_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # glibc only
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
    return _applied
