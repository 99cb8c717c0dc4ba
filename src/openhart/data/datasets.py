"""Image-caption datasets: a folder with `metadata.jsonl` or `.txt` sidecars, and tar shards.

Both yield `Sample`s with the image as a float tensor in [-1, 1] at a fixed square resolution.
The order of an epoch is a deterministic function of (seed, epoch) and is split across ranks, so
N processes together see each example once per epoch. A random crop is drawn from a generator
keyed by (seed, epoch, example), so it does not depend on the number of processes or on where a
run was resumed. Unreadable images are skipped, counted in `skipped` and logged; they never stop
a run.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..images import open_image
from ..inputs import InputError, decode_utf8, parse_json, read_text
from ..seeding import derive_seed, keyed_generator
from .transforms import image_to_tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_MEMBER_BYTES = 64 << 20  # of a tar member (image or caption); larger ones are skipped unread


@dataclass
class Sample:
    """One example: image (3, R, R) in [-1, 1], its caption, a stable key, and a stable integer id
    (the index in the dataset for folders) that keys the example's randomness in training."""

    image: torch.Tensor
    caption: str
    key: str
    index: int = 0


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This rank's share of a seeded permutation of range(num_items) for `epoch`."""
    generator = torch.Generator().manual_seed(derive_seed("epoch-order", seed, epoch))
    order = torch.randperm(num_items, generator=generator).tolist()
    return order[rank::world_size]


class StreamingDataset:
    """Datasets read as streams: `stream` yields (position, sample), `iterate` the samples."""

    def stream(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               start: int = 0) -> Iterator[tuple[int, Sample]]:
        raise NotImplementedError

    def iterate(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[Sample]:
        """This rank's examples of `epoch`, from position `start` on."""
        for _, sample in self.stream(epoch, seed, rank, world_size, start):
            yield sample


class ImageCaptionFolder(StreamingDataset):
    """A folder of images with captions from `metadata.jsonl` (`file_name`, `text`, as Hugging Face
    image folders write it) or, without it, from a `.txt` file of the same name beside each image.
    """

    def __init__(self, root: str | os.PathLike, resolution: int, *, random_crop: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"dataset folder not found: {self.root}")
        self.resolution = resolution
        self.random_crop = random_crop
        self.items = self._read_metadata() if (self.root / "metadata.jsonl").is_file() else self._read_sidecars()
        if not self.items:
            raise ValueError(f"no images in {self.root}: expected files ending in "
                             f"{', '.join(IMAGE_EXTENSIONS)} (searched recursively)")
        self.skipped = 0

    def _read_metadata(self) -> list[tuple[Path, str]]:
        items, missing = [], []
        path = self.root / "metadata.jsonl"
        for number, line in enumerate(read_text(path, "metadata file").splitlines(), start=1):
            if not line.strip():
                continue
            entry = parse_json(line, f"{path}:{number}")
            name = entry.get("file_name") if isinstance(entry, dict) else None
            text = entry.get("text") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not isinstance(text, str):
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'file_name' and a 'text' "
                                 f"string, got {line[:80]!r}")
            if not text.strip():
                raise ValueError(f"{path}:{number}: the caption of {name} is empty")
            image = self.root / name
            if not name.strip() or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"{path}:{number}: file_name {name[:80]!r} must be a path inside {self.root}")
            if not image.is_file():
                missing.append(name)
            items.append((image, text))
        if missing:
            raise ValueError(f"{path} names {len(missing)} image(s) that do not exist, e.g. {missing[:3]}")
        return items

    def _read_sidecars(self) -> list[tuple[Path, str]]:
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        uncaptioned = [p for p in images if not p.with_suffix(".txt").is_file()]
        if images and uncaptioned:
            raise ValueError(
                f"{len(uncaptioned)} of {len(images)} images in {self.root} have no caption, e.g. "
                f"{[str(p.relative_to(self.root)) for p in uncaptioned[:3]]}: add a metadata.jsonl "
                "(one {\"file_name\": ..., \"text\": ...} per line) or a .txt file beside each image"
            )
        return [(p, read_text(p.with_suffix(".txt"), "caption file").strip()) for p in images]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, generator: torch.Generator | None = None) -> Sample | None:
        """The example at `index`, or None (counted and logged) if its image cannot be read."""
        path, caption = self.items[index]
        try:
            tensor = image_to_tensor(open_image(path, str(path)), self.resolution, self.random_crop, generator)
        except (OSError, ValueError) as error:
            self.skipped += 1
            logger.warning("skipping unreadable image %s (%s); %d skipped so far", path, error, self.skipped)
            return None
        return Sample(image=tensor, caption=caption, key=str(path.relative_to(self.root)), index=index)

    def stream(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               start: int = 0) -> Iterator[tuple[int, Sample]]:
        """This rank's examples of `epoch` in their seeded order, from position `start` on, each
        with the position after it in this rank's share of the epoch (what a resume passes back
        as `start`)."""
        order = epoch_order(len(self), seed, epoch, rank, world_size)
        for position in range(start, len(order)):
            index = order[position]
            sample = self.load(index, keyed_generator("crop", seed, epoch, index))
            if sample is not None:
                yield position + 1, sample


class TarShards(StreamingDataset):
    """WebDataset-style tar shards: members grouped by key, an image (`.png/.jpg/...`) and a
    caption (`.txt`, or `.json` with a `text` field) per key. Shards are split across ranks."""

    def __init__(self, shards: Sequence[str | os.PathLike], resolution: int, *, random_crop: bool = False):
        self.shards = [Path(s) for s in shards]
        if not self.shards:
            raise ValueError("no tar shards given")
        missing = [str(s) for s in self.shards if not s.is_file()]
        if missing:
            raise ValueError(f"tar shard(s) not found: {missing[:3]}")
        self.resolution = resolution
        self.random_crop = random_crop
        self.skipped = 0

    def stream(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               start: int = 0) -> Iterator[tuple[int, Sample]]:
        """This rank's shards of `epoch` in a seeded order, their examples in file order, each
        with the count of examples of this rank's epoch read so far (unreadable ones included);
        `start` skips that many without decoding their images."""
        order = epoch_order(len(self.shards), seed, epoch)
        position = 0
        for shard in [self.shards[i] for i in order][rank::world_size]:
            for key, parts in self._read_shard(shard):
                position += 1
                if position <= start:
                    continue
                generator = keyed_generator("crop", seed, epoch, shard.name, key)
                sample = self._decode(shard, key, parts, generator)
                if sample is not None:
                    yield position, sample

    def _read_shard(self, shard: Path) -> Iterator[tuple[str, dict[str, bytes | None]]]:
        """The examples of a shard, one at a time: the members of one key are consecutive (as
        WebDataset writes them), so memory holds one example, {extension: bytes}. A member
        declared larger than MAX_MEMBER_BYTES, or shorter than its header says, is None (not
        read); its example is skipped and counted."""
        key, parts = None, {}
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    name, _, ext = member.name.rpartition(".")
                    if name != key:
                        if parts:
                            yield key, parts
                        key, parts = name, {}
                    data = None
                    if member.size <= MAX_MEMBER_BYTES:
                        data = tar.extractfile(member).read(MAX_MEMBER_BYTES + 1)
                    parts[ext.lower()] = data if data is not None and len(data) == member.size else None
        except (tarfile.TarError, OSError, EOFError) as error:
            self.skipped += 1
            logger.warning("skipping the rest of unreadable shard %s (%s)", shard, error)
            return
        if parts:
            yield key, parts

    def _decode(self, shard: Path, key: str, parts: dict[str, bytes | None],
                generator: torch.Generator) -> Sample | None:
        image_ext = next((e for e in parts if f".{e}" in IMAGE_EXTENSIONS), None)
        unread = [e for e, data in parts.items() if data is None]
        try:
            if unread:
                raise ValueError(f"member {key}.{unread[0]} is larger than {MAX_MEMBER_BYTES >> 20} MB "
                                 "or shorter than its header says")
            caption = _tar_caption(parts, f"{shard}/{key}")
            if image_ext is None or not caption:
                raise ValueError("image or caption missing")
            image = open_image(io.BytesIO(parts[image_ext]), f"{key}.{image_ext}")
            tensor = image_to_tensor(image, self.resolution, self.random_crop, generator)
        except (OSError, ValueError) as error:
            self.skipped += 1
            logger.warning("skipping %s in %s (%s); %d skipped so far", key, shard, error, self.skipped)
            return None
        return Sample(image=tensor, caption=caption, key=f"{shard.name}/{key}",
                      index=derive_seed(shard.name, key))


def _tar_caption(parts: dict[str, bytes], source: str) -> str | None:
    """The caption of a tar example: its `.txt`, or the `text` string of its `.json`."""
    if "txt" in parts:
        return decode_utf8(parts["txt"], f"{source}.txt").strip()
    if "json" in parts:
        record = parse_json(decode_utf8(parts["json"], f"{source}.json"), f"{source}.json")
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise InputError(f"{source}.json must hold an object with a 'text' string")
        return text.strip()
    return None
