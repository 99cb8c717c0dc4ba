"""A synthetic image-caption dataset: coloured shapes on plain backgrounds, captioned.

`openhart data shapes OUT` writes it; tests and smoke runs train on it without any download.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40)}
SHAPES = ("circle", "square")


def write_shapes(folder: Path, count: int = 8, size: int = 64, metadata: bool = True) -> Path:
    """`count` images `size` x `size` with a `metadata.jsonl` (or `.txt` sidecars): colour i % 4,
    shape (i // 4) % 2, background, size and position varied by i."""
    if not 1 <= count <= 1_000_000 or not 8 <= size <= 4096:
        raise ValueError(f"need 1 <= count <= 1000000 and 8 <= size <= 4096, got count={count}, size={size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        color_name = list(COLORS)[i % len(COLORS)]
        shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
        image = Image.new("RGB", (size, size), (250, 250, 250) if i % 3 else (20, 20, 30))
        draw = ImageDraw.Draw(image)
        r = size // 4 + (i % 3) * size // 16
        cx, cy = size // 2 + (i % 5 - 2) * size // 16, size // 2 + (i % 7 - 3) * size // 24
        box = (cx - r, cy - r, cx + r, cy + r)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color_name])
        name = f"{i:04d}.png"
        image.save(folder / name)
        caption = f"a {color_name} {shape}"
        if metadata:
            entries.append({"file_name": name, "text": caption})
        else:
            (folder / f"{i:04d}.txt").write_text(caption)
    if metadata:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return folder
