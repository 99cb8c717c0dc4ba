"""Wall-clock time per phase of a generation, with device synchronisation at each mark."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch

from .device import synchronize


class PhaseTimer:
    """`mark(name)` charges the time since the previous mark to `name` (summed over repeats)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._last = None

    def start(self) -> None:
        synchronize(self.device)
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        if self._last is not None:
            self.seconds[name] += now - self._last
        self._last = now


def call_times(fn: Callable[[int], object], indices: Iterable[int], device: torch.device) -> list[float]:
    """Seconds of each call `fn(i)`, the device synchronised before and after it."""
    times = []
    for i in indices:
        synchronize(device)
        start = time.perf_counter()
        fn(i)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
