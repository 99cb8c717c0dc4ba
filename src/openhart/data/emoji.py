"""`openhart data emoji OUT`: every colour emoji of Noto Color Emoji as a captioned image folder.

Each emoji is rendered with Pillow from Debian's `fonts-noto-color-emoji` (the CBDT bitmap font,
size 109, `embedded_color=True`) onto a white square; its caption is the `emoji` package's name
written as natural text ("red apple", "woman artist: dark skin tone", "flag: Japan"). A fixed
10% of the emoji, drawn with a seed, form the held-out split.

Layout: OUT/train/ and OUT/heldout/, each images + metadata.jsonl (the training format).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import emoji
import torch
from PIL import Image, ImageDraw, ImageFont

from ..outputs import staged_folder

FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
              "/usr/share/fonts/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the one size the CBDT font has bitmaps for
CANVAS = 136     # the bitmaps are 136 x 128
HELD_OUT_FRACTION = 0.1
INSTALL_HINT = ("install Debian's fonts-noto-color-emoji (sudo apt-get install fonts-noto-color-emoji) "
                "or pass --font PATH to NotoColorEmoji.ttf")

_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
_TONE_WORDS = {f"{t}_skin_tone": f"{t} skin tone" for t in _TONES}
_HAIR = {"red_hair": "red hair", "curly_hair": "curly hair", "white_hair": "white hair",
         "bald": "bald", "blond_hair": "blond hair", "beard": "beard"}


def find_font(font: str | os.PathLike | None = None) -> Path:
    candidates = [Path(font)] if font else [Path(p) for p in FONT_PATHS]
    for path in candidates:
        if path.is_file():
            return path
    where = str(font) if font else " or ".join(FONT_PATHS)
    raise FileNotFoundError(f"the Noto Color Emoji font is not at {where}: {INSTALL_HINT}")


def caption(name: str) -> str:
    """The `emoji` package's name (":woman_artist_dark_skin_tone:") as natural text."""
    words = name.strip(":")
    qualifiers = []
    changed = True
    while changed:  # peel skin tones (possibly two) and hair styles off the end
        changed = False
        for suffix, text in {**_TONE_WORDS, **_HAIR}.items():
            if words.endswith("_" + suffix) and words != suffix:
                words = words[: -len(suffix) - 1]
                qualifiers.insert(0, text)
                changed = True
    if words.startswith("keycap_"):
        return f"keycap: {words[len('keycap_'):]}"
    base = words.replace("_", " ")
    base = re.sub(r"\s+", " ", base).strip()
    return f"{base}: {', '.join(qualifiers)}" if qualifiers else base


def base_caption(text: str) -> str:
    """The caption without its skin tones: the name shared by every skin-tone variant of one emoji
    ("waving hand: medium skin tone" -> "waving hand"; "woman: red hair, dark skin tone" -> "woman:
    red hair"). Other captions come back unchanged."""
    name, sep, qualifiers = text.partition(": ")
    if not sep:
        return text
    kept = [q for q in qualifiers.split(", ") if q not in _TONE_WORDS.values()]
    return f"{name}: {', '.join(kept)}" if kept else name


def emoji_entries() -> list[tuple[str, str]]:
    """(emoji, caption) for every fully-qualified emoji the `emoji` package names."""
    fully_qualified = emoji.STATUS["fully_qualified"]
    entries = []
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != fully_qualified:
            continue
        text = caption(data["en"])
        if _is_flag(char):
            text = f"flag: {text}"
        entries.append((char, text))
    return sorted(entries, key=lambda e: e[0])


def _is_flag(char: str) -> bool:
    return len(char) == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in char)


def render(char: str, font) -> Image.Image | None:
    """The emoji on a white 128 x 128 square, or None if the font has no single glyph for it."""
    canvas = Image.new("RGBA", (CANVAS * 3, CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > CANVAS or canvas.getchannel("A").getextrema()[1] == 0:
        return None  # missing, or drawn as several glyphs (an unsupported sequence)
    glyph = canvas.crop((0, 0, CANVAS, CANVAS))
    square = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
    square.paste(glyph, (0, 0), glyph)
    left = (CANVAS - 128) // 2
    return square.crop((left, 0, left + 128, 128))


def write_emoji_dataset(out: str | os.PathLike, *, font: str | os.PathLike | None = None,
                        seed: int = 0, limit: int | None = None) -> dict[str, int]:
    """Render the emoji into OUT/train and OUT/heldout; returns the counts written and skipped."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    font_path = find_font(font)
    pil_font = ImageFont.truetype(str(font_path), FONT_SIZE)
    entries = emoji_entries()[:limit] if limit else emoji_entries()
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(out) as staging:  # an existing folder is empty (checked above)
        rendered = [(i, char, text, image) for i, (char, text, image) in
                    enumerate((c, t, render(c, pil_font)) for c, t in entries) if image is not None]
        order = torch.randperm(len(rendered), generator=torch.Generator().manual_seed(seed)).tolist()
        held = set(order[: round(len(rendered) * HELD_OUT_FRACTION)])
        counts = {"train": 0, "heldout": 0, "skipped": len(entries) - len(rendered)}
        lines: dict[str, list[str]] = {"train": [], "heldout": []}
        for position, (_, char, text, image) in enumerate(rendered):
            split = "heldout" if position in held else "train"
            name = "u" + "-".join(f"{ord(c):04x}" for c in char) + ".png"
            (staging / split).mkdir(exist_ok=True)
            image.save(staging / split / name, optimize=True)
            lines[split].append(json.dumps({"file_name": name, "text": text, "emoji": char},
                                           ensure_ascii=False))
            counts[split] += 1
        for split, rows in lines.items():
            (staging / split).mkdir(exist_ok=True)
            (staging / split / "metadata.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return counts

