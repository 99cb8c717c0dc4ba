"""A latent cache mixed with a prior cache: the replay behind prior preservation.

A fine-tune that only sees its new images forgets what the base drew before: prompts without
the new concept change too. DreamBooth (Ruiz et al., 2023) keeps them by training on images of
what the model already knows next to the new ones; continual learning calls the same thing
replay. Here the prior is any cache made with the base's own tokenizer and text encoder: the
images the base was trained on, or images the base generated for related captions.

Each epoch is every example of the main cache plus the next `prior_per_epoch` examples of the
prior cache, shuffled together, so `fraction` of the examples (and so of each batch, on average)
come from the prior. The prior is walked through a seeded permutation per pass, so every prior
example is seen once before any is seen twice, whatever its size. Orders depend only on (seed,
epoch), so a resumed stream continues exactly, under any number of processes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch

from ..seeding import derive_seed
from .datasets import epoch_order
from .latent_cache import CachedExample, LatentCache


class CacheMixture:
    """Examples 0..len(main)-1 are the main cache's; len(main) + i is prior example i."""

    def __init__(self, main: LatentCache, prior: LatentCache, fraction: float):
        if not 0 < fraction < 1:
            raise ValueError(f"the prior fraction must be in (0, 1), got {fraction}")
        if prior.patch_nums != main.patch_nums or prior.text_encoder != main.text_encoder:
            raise ValueError(f"the prior cache {prior.root} was made with other scales or another text "
                             f"encoder than {main.root}; build both with the same model and resolution")
        if len(main) == 0 or len(prior) == 0:
            raise ValueError("the main and the prior cache must both hold examples")
        self.main, self.prior, self.fraction = main, prior, fraction
        self.prior_per_epoch = max(1, math.ceil(len(main) * fraction / (1 - fraction)))

    def __len__(self) -> int:
        """Examples per epoch."""
        return len(self.main) + self.prior_per_epoch

    def get(self, index: int) -> CachedExample:
        if index < len(self.main):
            return self.main.get(index)
        return dataclasses.replace(self.prior.get(index - len(self.main)), index=index)

    def epoch_indices(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """This rank's example indices for `epoch`, in training order (a cache's own epoch order)."""
        members = list(range(len(self.main))) + self._prior_share(epoch, seed)
        return [members[i] for i in epoch_order(len(members), seed, epoch, rank, world_size)]

    def _prior_share(self, epoch: int, seed: int) -> list[int]:
        """The prior examples of `epoch`: the next stretch of seeded walks through the prior."""
        size, walks, share = len(self.prior), {}, []
        for position in range(epoch * self.prior_per_epoch, (epoch + 1) * self.prior_per_epoch):
            walk, offset = divmod(position, size)
            if walk not in walks:
                walks[walk] = torch.randperm(size, generator=torch.Generator().manual_seed(
                    derive_seed("prior-walk", seed, walk))).tolist()
            share.append(len(self.main) + walks[walk][offset])
        return share

    def stream(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               start: int = 0) -> Iterator[tuple[int, CachedExample]]:
        order = self.epoch_indices(epoch, seed, rank, world_size)
        for position in range(start, len(order)):
            yield position + 1, self.get(order[position])
