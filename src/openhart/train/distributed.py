"""One code path for 1 process or N (torchrun): process group, device, DDP or FSDP wrapping,
and the few collectives the trainer needs.

Under `torchrun` the environment gives RANK, WORLD_SIZE and LOCAL_RANK; the process group uses
NCCL on CUDA and gloo on CPU. Without it the run is a single process and every collective is
the identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str = "auto") -> "Distributed":
        """Join the torchrun process group if there is one, and pick this process's device."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else (
                "mps" if torch.backends.mps.is_available() and world_size == 1 else "cpu")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' was asked for but CUDA is not available")
            torch.cuda.set_device(local_rank)
            chosen = torch.device("cuda", local_rank)
        elif device == "mps":
            if world_size > 1:
                raise ValueError("multi-process training is not supported on MPS")
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if chosen.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    def wrap(self, module: nn.Module, mode: str, shard_units: Sequence[nn.Module] = ()) -> nn.Module:
        """DDP (replicated) or FSDP (`fully_shard` on each of `shard_units`, then the root);
        the module itself in a single process."""
        if not self.active:
            return module
        if mode == "fsdp":
            # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
            from torch.distributed.fsdp import fully_shard

            for unit in shard_units:
                fully_shard(unit)
            fully_shard(module)
            return module
        if mode != "ddp":
            raise ValueError(f"unknown parallel mode {mode!r}")
        # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def mean(self, values: dict[str, float | torch.Tensor]) -> dict[str, float]:
        """The mean of each value over all processes."""
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                               device=self.device if self.device.type == "cuda" else "cpu")
        if self.active:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return dict(zip(keys, stacked.tolist()))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def gather_objects(self, obj) -> list:
        """Every process's `obj`, in rank order (a list of one in a single process)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active:
            dist.destroy_process_group()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) else module
