"""The latent cache of a fine-tune, found again by what made it.

`openhart finetune` encodes DATA once with the base model's tokenizer and text encoder. The
cache folder is named by a hash of everything its contents depend on: the base weights, every
file of DATA (names and bytes), the resolution, the text encoder (its name, files and system
prompt) and the text length. An unchanged input reuses the cache; any change makes a new one,
never a stale one. Caches live in `--cache-dir`, by default $OPENHART_CACHE/latents or
~/.cache/openhart/latents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..data.latent_cache import MANIFEST, LatentCache

logger = logging.getLogger(__name__)

# Bump when what a cache holds, or how it is keyed, changes.
KEY_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("OPENHART_CACHE"):
        return Path(os.environ["OPENHART_CACHE"]) / "latents"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "openhart" / "latents"


def data_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over every file of a dataset folder (or of one .tar): relative names and bytes.
    Hidden files (.DS_Store, editor swap files) are left out."""
    root = Path(path)
    if root.is_file():
        files, base = [root], root.parent
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        base = root
    digest = hashlib.sha256()
    for file in files:
        digest.update(json.dumps([str(file.relative_to(base)), file.stat().st_size]).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def encoder_identity(spec: str, folder: str | os.PathLike | None, system_prompt: str | None) -> dict:
    """What a text encoder's features depend on: its name, the names, sizes and times of its
    local files (a Hub snapshot's folder also names its commit), and the system prompt."""
    files = []
    if folder is not None and Path(folder).is_dir():
        for file in sorted(Path(folder).rglob("*")):
            if file.is_file():
                stat = file.stat()
                files.append([str(file.relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    prompt = None if system_prompt is None else hashlib.sha256(system_prompt.encode()).hexdigest()
    return {"spec": str(spec), "folder": None if folder is None else str(Path(folder).resolve()),
            "files": files, "system_prompt": prompt}


def cache_key(**inputs) -> str:
    """A hash of the cache's inputs (JSON-serialisable values)."""
    text = json.dumps({"version": KEY_VERSION, **inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def find_or_build(folder: Path, build: Callable[[Path], None]) -> tuple[LatentCache, bool]:
    """The cache at `folder` if it is complete, else `build(folder)` first (which writes it
    atomically). Returns the cache and whether it was reused."""
    if (folder / MANIFEST).is_file():
        logger.info("reusing the latent cache %s", folder)
        return LatentCache(folder), True
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        build(folder)
    except FileExistsError:
        if not (folder / MANIFEST).is_file():  # another process is building the same cache right now
            raise FileExistsError(f"{folder} is being written by another openhart finetune; wait for it "
                                  "and run again") from None
    return LatentCache(folder), False
