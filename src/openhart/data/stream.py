"""An endless stream of batches over epochs, with a position that a checkpoint can store.

Each rank draws `batch_size` examples per step from its share of each epoch's seeded order and
moves on to the next epoch when its share runs out, so every rank makes the same number of steps
whatever images were skipped. `position` (epoch, offset in this rank's share) resumes the stream
exactly where it stopped. With `prefetch > 0` a background thread prepares that many batches
ahead (image decoding overlaps the training step); `position` still describes the batches
handed out, not the ones prepared.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
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
                 world_size: int = 1, position: StreamPosition | dict | None = None,
                 prefetch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch size per process must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        if isinstance(position, dict):
            position = StreamPosition(**position)
        self.position = position or StreamPosition()
        self._reader: _Reader | None = None
        self._queue: queue.Queue | None = None

    def next_batch(self) -> list[Any]:
        """The next batch; `position` then points just after it. Set `position` (to resume)
        before the first call only."""
        if self.prefetch > 0:
            if self._queue is None:
                self._start_thread()
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            batch, self.position = item
            return batch
        if self._reader is None:
            self._reader = _Reader(self, replace(self.position))
        batch = self._reader.read()
        self.position = replace(self._reader.position)
        return batch

    def _start_thread(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        reader = _Reader(self, replace(self.position))

        def produce() -> None:
            while True:
                try:
                    batch = reader.read()
                except BaseException as error:  # handed to the consumer, which raises it
                    self._queue.put(error)
                    return
                self._queue.put((batch, replace(reader.position)))

        threading.Thread(target=produce, daemon=True, name="openhart-data").start()

    def state_dict(self) -> dict[str, int]:
        return asdict(self.position)


class _Reader:
    """Reads batches of a stream from a position; owned by the stream or its prefetch thread."""

    def __init__(self, stream: BatchStream, position: StreamPosition):
        self.stream, self.position = stream, position
        self._iterator: Iterator[tuple[int, Any]] | None = None

    def _examples(self) -> Iterator[tuple[int, Any]]:
        s = self.stream
        return s.dataset.stream(self.position.epoch, s.seed, s.rank, s.world_size, self.position.offset)

    def read(self) -> list[Any]:
        s = self.stream
        batch, empty_epochs = [], 0
        while len(batch) < s.batch_size:
            if self._iterator is None:
                self._iterator = self._examples()
            item = next(self._iterator, None)
            if item is None:  # this rank's share of the epoch is used up
                empty_epochs = empty_epochs + 1 if not batch else 0
                if empty_epochs > 1:
                    raise ValueError(f"process {s.rank} of {s.world_size} got no readable "
                                     "example in a whole epoch: the dataset is too small for this "
                                     "many processes, or all of its images are unreadable")
                self.position = StreamPosition(self.position.epoch + 1, 0)
                self._iterator = None
                continue
            offset, example = item
            self.position = StreamPosition(self.position.epoch, offset)
            batch.append(example)
        return batch
