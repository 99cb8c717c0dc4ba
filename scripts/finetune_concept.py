"""The new-concept experiment of docs/finetuning.md: does a LoRA teach the shipped emoji model a
made-up word from 8 images, and leave every other prompt alone?

    .venv/bin/python scripts/finetune_concept.py data      # data/concept-zorbl: 8 shapes, captioned "a zorbl"
    .venv/bin/openhart finetune data/concept-zorbl --out runs/concept-zorbl --trigger zorbl \
        --prior-data data/emoji/train --lr 2e-3
    .venv/bin/python scripts/finetune_concept.py measure --adapter runs/concept-zorbl \
        [--figure docs/finetuning-concept.png]

`measure` draws prompts with the word and prompts without it, with the base model and with the
adapter, the same seeds, and reports:
- "draws it": how often an image's nearest neighbour (cosine of Inception pool features) among the
  8 concept images and the 3,799 emoji of data/emoji is a concept image, with its ceiling (the
  same test on the tokenizer's discrete-only reconstructions of the concept images), and the mean
  cosine to the nearest concept image; and the same test with the reconstructions standing for the
  concept images (what the model can draw at best), for prompts with and without the word;
- for prompts without the word: the mean absolute pixel difference between base and adapter
  images (0-255), how many images are pixel-identical, and how often the adapter's image has the
  same nearest gallery image as the base's (the same emoji drawn).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from openhart import HARTPipeline
from openhart.data.datasets import ImageCaptionFolder
from openhart.data.synthetic import write_shapes
from openhart.eval.inception import InceptionFeatures
from openhart.images import save_png

WORD = "zorbl"
WITH_WORD = ["a zorbl", "zorbl", "a small zorbl", "zorbl on a white background"]
WITHOUT_WORD = ["red apple", "grinning face", "cat face", "thumbs up", "sun", "flag: Japan", "fire", "red heart"]
SEEDS = 8  # images per prompt, seeds 0..SEEDS-1 (--seeds)


def write_data(out: Path) -> None:
    write_shapes(out, count=8, size=64)  # 4 colours x circle / square
    entries = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    (out / "metadata.jsonl").write_text("".join(json.dumps({"file_name": e["file_name"], "text": f"a {WORD}"}) + "\n"
                                                for e in entries))
    print(f"wrote {len(entries)} images captioned 'a {WORD}' to {out}")


def draw(pipe: HARTPipeline, prompts: list[str], seeds: int) -> torch.Tensor:
    """(len(prompts) * seeds, 3, H, W) in [0, 1], prompt-major, one generator per image."""
    gens = [torch.Generator().manual_seed(s) for _ in prompts for s in range(seeds)]
    return pipe(prompts, num_images_per_prompt=seeds, generator=gens, output_type="pt").images


class Gallery:
    """Nearest neighbours by cosine of Inception pool features, among concept images (first) and emoji."""

    def __init__(self, concept_features: torch.Tensor, emoji_features: torch.Tensor):
        self.concept_count = len(concept_features)
        self.features = F.normalize(torch.cat([concept_features, emoji_features]).double(), dim=1)

    def nearest(self, features: torch.Tensor) -> torch.Tensor:
        return (F.normalize(features.double(), dim=1) @ self.features.T).argmax(dim=1)

    def draws_it(self, features: torch.Tensor) -> float:
        """How often the nearest neighbour is a concept image."""
        return float((self.nearest(features) < self.concept_count).double().mean())

    def concept_similarity(self, features: torch.Tensor) -> float:
        """Mean cosine to the nearest concept image."""
        cosines = F.normalize(features.double(), dim=1) @ self.features[:self.concept_count].T
        return float(cosines.amax(dim=1).mean())


def measure(args) -> dict:
    from openhart.eval.report import _gallery, _gallery_features

    inception = InceptionFeatures()
    concept = ImageCaptionFolder(args.concept, 64)
    originals = torch.stack([concept.load(i).image for i in range(len(concept))])  # [-1, 1]
    # the emoji's features as `openhart eval` caches them (held-out first, then training)
    emoji = {split: ImageCaptionFolder(Path(args.emoji) / split, 64) for split in ("heldout", "train")}
    emoji_features = _gallery_features(inception, _gallery(emoji)[0], emoji, 64)
    pipe = HARTPipeline.from_pretrained(None, dtype=torch.float32)
    # the ceiling: the tokenizer's discrete-only reconstructions, the best any transformer on it can draw
    with torch.no_grad():
        tokenizer = pipe.model.tokenizer
        reconstructions = ((tokenizer.decode_tokens(tokenizer.encode(originals).indices) + 1) / 2).clamp(0, 1)
    ceiling = inception(reconstructions)
    gallery = Gallery(inception((originals + 1) / 2), emoji_features)
    drawable = Gallery(ceiling, emoji_features)  # the reconstructions stand for the concept images
    base = {"with": draw(pipe, WITH_WORD, args.seeds), "without": draw(pipe, WITHOUT_WORD, args.seeds)}
    pipe.load_lora_weights(args.adapter)
    tuned = {"with": draw(pipe, WITH_WORD, args.seeds), "without": draw(pipe, WITHOUT_WORD, args.seeds)}
    pixels = lambda x: (x.clamp(0, 1) * 255).round()  # noqa: E731 (as the PNGs store them)
    difference = (pixels(tuned["without"]) - pixels(base["without"])).abs()
    seen = {(model, kind): inception(images[kind]) for model, images in (("base", base), ("adapter", tuned))
            for kind in ("with", "without")}
    per_model = lambda measure, kind: {model: measure(seen[model, kind]) for model in ("base", "adapter")}  # noqa: E731
    if args.figure:
        figure(base, tuned, args.figure, args.seeds)
    return {
        "adapter": str(args.adapter), "images_per_prompt": args.seeds,
        "draws_it_with_word": per_model(gallery.draws_it, "with"),
        "draws_it_without_word": per_model(gallery.draws_it, "without"),
        "draws_it_ceiling": gallery.draws_it(ceiling),
        "draws_reconstructed_concept": {kind: per_model(drawable.draws_it, kind) for kind in ("with", "without")},
        "concept_similarity_with_word": {**per_model(gallery.concept_similarity, "with"),
                                         "ceiling": gallery.concept_similarity(ceiling)},
        "without_word_mean_abs_pixel_difference": float(difference.mean()),
        "without_word_identical_images": int((difference.flatten(1).amax(dim=1) == 0).sum()),
        "without_word_images": len(difference),
        "without_word_same_nearest_image": float(
            (gallery.nearest(seen["adapter", "without"]) == gallery.nearest(seen["base", "without"])).double().mean()),
    }


def figure(base: dict, tuned: dict, path: Path, seeds: int, scale: int = 2) -> None:
    """Rows: two prompts with the word, two without; columns: base seeds 0-3 | adapter seeds 0-3
    (fewer with fewer seeds)."""
    shown = min(4, seeds)
    rows = [("with", 0, WITH_WORD[0]), ("with", 1, WITH_WORD[1]), ("without", 0, WITHOUT_WORD[0]),
            ("without", 1, WITHOUT_WORD[1])]
    side, label_width, gap = 64 * scale, 150, 12
    sheet = Image.new("RGB", (label_width + 2 * shown * side + gap, 18 + len(rows) * side), "white")
    ink = ImageDraw.Draw(sheet)
    ink.text((label_width, 2), f"base model, seeds 0-{shown - 1}", fill="black")
    ink.text((label_width + shown * side + gap, 2), f"with the '{WORD}' LoRA, same seeds", fill="black")
    for r, (kind, index, prompt) in enumerate(rows):
        y = 18 + r * side
        ink.text((4, y + side // 2 - 6), f'"{prompt}"', fill="black")
        for c, images in enumerate((base[kind], tuned[kind])):
            for s in range(shown):
                tile = images[index * seeds + s].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
                tile = Image.fromarray(tile).resize((side, side), Image.Resampling.NEAREST)
                sheet.paste(tile, (label_width + c * (shown * side + gap) + s * side, y))
    save_png(sheet, path, {"rows": " | ".join(p for _, _, p in rows)})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", type=Path, default=Path(f"data/concept-{WORD}"))
    m = sub.add_parser("measure")
    m.add_argument("--adapter", type=Path, required=True)
    m.add_argument("--concept", type=Path, default=Path(f"data/concept-{WORD}"))
    m.add_argument("--emoji", type=Path, default=Path("data/emoji"))
    m.add_argument("--figure", type=Path, default=None)
    m.add_argument("--json", type=Path, default=None)
    m.add_argument("--seeds", type=int, default=SEEDS, help=f"images per prompt (default {SEEDS})")
    args = parser.parse_args()
    if args.what == "data":
        write_data(args.out)
        return
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
