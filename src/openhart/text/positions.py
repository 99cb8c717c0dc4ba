"""Text position ids as HART computes them from the attention mask."""

from __future__ import annotations

import torch


def position_ids_from_mask(mask_BT: torch.Tensor) -> torch.Tensor:
    """cumsum(mask) - 1: 0..n-1 over the n real tokens; right padding repeats n - 1."""
    return torch.cumsum(mask_BT.long(), dim=1) - 1
