"""Preallocated key/value caches for scale-by-scale decoding, passed explicitly to the model.

Each block writes the keys and values of the current scale into its slice and attends over
everything the cache holds (`attend`); `advance` then moves the shared length on. No attention
mask is needed at inference: a scale attends to the text, every earlier scale and itself (the
block-causal pattern), through `attention.attend` (SDPA or openhart's CPU kernel).

`rows` gives a view of some of the batch rows (the halves of a guided batch), sharing storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import attend


@dataclass
class KVCache:
    """Keys and values per block, (B, H, max_len, head_dim) each, filled up to `length`."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def allocate(cls, depth: int, batch: int, num_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> "KVCache":
        shape = (batch, num_heads, max_len, head_dim)
        return cls(
            keys=[torch.empty(shape, device=device, dtype=dtype) for _ in range(depth)],
            values=[torch.empty(shape, device=device, dtype=dtype) for _ in range(depth)],
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def append(self, layer: int, k_BHld: torch.Tensor, v_BHld: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this scale's keys/values of one block; return all keys/values so far."""
        end = self.length + k_BHld.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        self.keys[layer][:, :, self.length:end] = k_BHld
        self.values[layer][:, :, self.length:end] = v_BHld
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache over batch rows [start, stop) that writes into this one's storage."""
        return KVCache(keys=[k[start:stop] for k in self.keys], values=[v[start:stop] for v in self.values],
                       length=self.length)

    def attend(self, layer: int, q_BHld: torch.Tensor, k_BHld: torch.Tensor, v_BHld: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Append this scale's keys/values of one block, then attend over the cache (B, H, l, d)."""
        k, v = self.append(layer, k_BHld, v_BHld)
        return attend(q_BHld, k, v, scale)

    def advance(self, num_tokens: int) -> None:
        """Commit the tokens every block has just appended."""
        self.length += num_tokens
