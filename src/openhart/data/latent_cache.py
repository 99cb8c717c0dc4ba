"""A cache of what transformer training reads: tokenizer codes, last-scale residuals, text features.

`openhart cache` runs the frozen tokenizer and the text encoder once over an image-caption
dataset; transformer training then reads this folder instead of re-encoding every epoch.

Layout of a cache folder:
    manifest.json             format, resolution, scales, tokenizer and text-encoder identity,
                              shard list, feature dtype
    tokenizer/                the tokenizer that made the codes (an openhart tokenizer folder)
    shard-00000.safetensors   codes (N, L) int32, last_scale_input (N, l, Cv) fp32,
                              context (N, T, D), position_ids (N, T) int32
    captions.jsonl            {"index", "key", "text"} per example

The folder is written under a temporary name and renamed when complete, so a cache that exists
is never half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..inputs import read_json
from ..loading import load_tokenizer, save_tokenizer
from ..outputs import staged_folder
from ..serialization import write_json, write_safetensors
from .datasets import Sample, epoch_order

FORMAT = "openhart.latent_cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CachedExample:
    """One cached example. `codes` holds the codes of every scale, concatenated (L,)."""

    index: int
    codes: torch.Tensor
    last_scale_input: torch.Tensor
    context: torch.Tensor
    position_ids: torch.Tensor


@dataclass
class CachedBatch:
    """A batch for transformer training.

    Attributes:
        indices: dataset index of each example (keys its randomness), (B,) int64.
        codes: per scale, (B, pn**2) int64.
        last_scale_input: (B, l, Cv) fp32, the latent residual before the last scale's codes.
        context: (B, T, D) fp32 text features; position_ids: (B, T) int64.
    """

    indices: torch.Tensor
    codes: list[torch.Tensor]
    last_scale_input: torch.Tensor
    context: torch.Tensor
    position_ids: torch.Tensor

    @property
    def size(self) -> int:
        return self.indices.shape[0]


def collate(examples: list[CachedExample], patch_nums: tuple[int, ...], device: torch.device) -> CachedBatch:
    codes = torch.stack([e.codes for e in examples]).to(device=device, dtype=torch.int64)
    return CachedBatch(
        indices=torch.tensor([e.index for e in examples], dtype=torch.int64),
        codes=list(codes.split([pn * pn for pn in patch_nums], dim=1)),
        last_scale_input=torch.stack([e.last_scale_input for e in examples]).to(device, torch.float32),
        context=torch.stack([e.context for e in examples]).to(device, torch.float32),
        position_ids=torch.stack([e.position_ids for e in examples]).to(device, torch.int64),
    )


class LatentCache:
    """Read a cache folder; examples stream like an image dataset's (seeded, split by rank)."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"{self.root} is not a latent cache (no {MANIFEST}); build one with "
                             "`openhart cache --data DIR --tokenizer DIR --text-encoder DIR --out "
                             f"{self.root}`")
        self.manifest = read_json(manifest, "latent cache manifest")
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest} is not a latent cache manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest} has format version {self.manifest.get('format_version')}, "
                             f"this openhart reads version {FORMAT_VERSION}; rebuild the cache")
        self.patch_nums = tuple(self.manifest["patch_nums"])
        self._shards = []
        for entry in self.manifest["shards"]:
            path = self.root / entry["name"]
            if not path.is_file():
                raise ValueError(f"latent cache shard missing: {path}; rebuild the cache")
            self._shards.append((safe_open(str(path), framework="pt"), entry["count"]))
        self._starts = []
        start = 0
        for _, count in self._shards:
            self._starts.append(start)
            start += count
        self._length = start

    def __len__(self) -> int:
        return self._length

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer"

    @property
    def text_encoder(self) -> dict:
        """{"kind": "random" | "huggingface", "path", "context_tokens", "context_dim", ...}."""
        return self.manifest["text_encoder"]

    def load_tokenizer(self, device: torch.device | str = "cpu"):
        return load_tokenizer(self.tokenizer_path, device=device)

    def get(self, index: int) -> CachedExample:
        if not 0 <= index < self._length:
            raise IndexError(index)
        shard = max(i for i, s in enumerate(self._starts) if s <= index)
        handle, _ = self._shards[shard]
        i = index - self._starts[shard]

        def row(name: str) -> torch.Tensor:
            return handle.get_slice(name)[i:i + 1][0]

        return CachedExample(index=index, codes=row("codes"), last_scale_input=row("last_scale_input"),
                             context=row("context"), position_ids=row("position_ids"))

    def stream(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               start: int = 0) -> Iterator[tuple[int, CachedExample]]:
        order = epoch_order(len(self), seed, epoch, rank, world_size)
        for position in range(start, len(order)):
            yield position + 1, self.get(order[position])


class EmptyDatasetError(ValueError):
    """The dataset given to `build_latent_cache` yielded no readable example."""


@torch.no_grad()
def build_latent_cache(samples: Iterable[Sample], out: str | os.PathLike, *, tokenizer, encoder,
                       text_encoder_spec: dict, resolution: int, batch_size: int = 16,
                       shard_size: int = 2048, feature_dtype: str = "float32",
                       progress: Callable[[int], None] | None = None) -> tuple[Path, dict[str, int]]:
    """Encode `samples` with the frozen tokenizer and text encoder into a cache folder at `out`.

    Args:
        text_encoder_spec: how to rebuild the text encoder for sample prompts at training time,
            stored in the manifest ({"kind": "random", "seed"} or {"kind": "huggingface", "path"}).
        progress: called with the number of examples done after each batch.

    Returns:
        the cache folder, and counts {"examples", "truncated_captions"}.
    """
    out = Path(out)
    if feature_dtype not in FEATURE_DTYPES:
        raise ValueError(f"feature dtype must be one of {sorted(FEATURE_DTYPES)}, got {feature_dtype!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    patch_nums = tokenizer.scales_for_size(resolution)
    device = next(tokenizer.parameters()).device
    encoder.warn_truncation = False
    try:
        with staged_folder(out, overwrite=False) as staging:
            shards, pending, captions, done, truncated = [], [], [], 0, 0

            def flush() -> None:
                name = f"shard-{len(shards):05d}.safetensors"
                tensors = {key: torch.cat([p[key] for p in pending]) for key in pending[0]}
                write_safetensors(staging / name, tensors, {"format": "pt"})
                shards.append({"name": name, "count": int(tensors["codes"].shape[0])})
                pending.clear()

            for batch in _batched(samples, batch_size):
                encoded, batch_truncated = _encode_batch(batch, tokenizer, encoder, device, feature_dtype)
                pending.append(encoded)
                truncated += batch_truncated
                captions += [{"index": done + i, "key": s.key, "text": s.caption} for i, s in enumerate(batch)]
                done += len(batch)
                if sum(p["codes"].shape[0] for p in pending) >= shard_size:
                    flush()
                if progress is not None:
                    progress(done)
            if pending:
                flush()
            if not done:
                raise EmptyDatasetError("the dataset yielded no readable example; nothing to cache")
            save_tokenizer(tokenizer, staging / "tokenizer")
            with open(staging / "captions.jsonl", "w", encoding="utf-8") as f:
                for entry in captions:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            write_json(staging / MANIFEST, {
                "format": FORMAT, "format_version": FORMAT_VERSION, "resolution": resolution,
                "patch_nums": list(patch_nums), "num_examples": done, "feature_dtype": feature_dtype,
                "text_encoder": {**text_encoder_spec, "context_tokens": encoder.max_length,
                                 "context_dim": encoder.hidden_size},
                "shards": shards, "truncated_captions": truncated,
            })
    finally:
        encoder.warn_truncation = True
    return out, {"examples": done, "truncated_captions": truncated}


def _encode_batch(batch: list[Sample], tokenizer, encoder, device, feature_dtype: str) -> tuple[dict, int]:
    """The cached tensors of a batch (codes of every scale, the last scale's input, the text
    features and positions) and the number of its captions that were truncated."""
    tokens = tokenizer.encode(torch.stack([s.image for s in batch]).to(device))
    prompt = encoder.encode([s.caption for s in batch])
    return {
        "codes": torch.cat(tokens.indices, dim=1).to(torch.int32).cpu(),
        "last_scale_input": tokens.last_scale_input.float().cpu(),
        "context": prompt.features.to(FEATURE_DTYPES[feature_dtype]).cpu(),
        "position_ids": prompt.position_ids.to(torch.int32).cpu(),
    }, sum(prompt.truncated)


def _batched(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

