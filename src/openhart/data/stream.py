"""An endless stream of batches over epochs, with a position that a checkpoint can store.

Each rank draws `batch_size` examples per step from its share of each epoch's seeded order and
moves on to the next epoch when its share runs out, so every rank makes the same number of steps
whatever images were skipped. `position` (epoch, offset in this rank's share) resumes the stream
exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class StreamableDataset(Protocol):
    def stream(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               start: int = 0) -> Iterator[tuple[int, Any]]: ...


@dataclass
class StreamPosition:
    epoch: int = 0
    offset: int = 0


class BatchStream:
    """Batches (lists of examples) of one rank, forever, resumable from `position`."""

    def __init__(self, dataset: StreamableDataset, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, position: StreamPosition | dict | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size per process must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        if isinstance(position, dict):
            position = StreamPosition(**position)
        self.position = position or StreamPosition()
        self._iterator: Iterator[tuple[int, Any]] | None = None

    def _examples(self) -> Iterator[tuple[int, Any]]:
        return self.dataset.stream(self.position.epoch, self.seed, self.rank, self.world_size,
                                   self.position.offset)

    def next_batch(self) -> list[Any]:
        batch, empty_epochs = [], 0
        while len(batch) < self.batch_size:
            if self._iterator is None:
                self._iterator = self._examples()
            item = next(self._iterator, None)
            if item is None:  # this rank's share of the epoch is used up
                empty_epochs = empty_epochs + 1 if not batch else 0
                if empty_epochs > 1:
                    raise ValueError(f"process {self.rank} of {self.world_size} got no readable "
                                     "example in a whole epoch: the dataset is too small for this "
                                     "many processes, or all of its images are unreadable")
                self.position = StreamPosition(self.position.epoch + 1, 0)
                self._iterator = None
                continue
            offset, example = item
            self.position = StreamPosition(self.position.epoch, offset)
            batch.append(example)
        return batch

    def state_dict(self) -> dict[str, int]:
        return asdict(self.position)
