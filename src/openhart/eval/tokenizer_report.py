"""`openhart eval-tokenizer`: what a tokenizer alone lets a model reach.

A transformer can at best draw what its tokenizer reconstructs. For a tokenizer folder (or the
tokenizer of a model folder) this measures, on the held-out images and a seeded subset of the
training images, the continuous reconstruction (latent -> decoder) and the discrete-only one
(codes -> decoder):
- PSNR, SSIM and rFID against the real images of the same split;
- retrieval, strict and grouped (`retrieval.py`): how often the reconstruction finds its own
  image among the gallery of both folders, top-1 and top-5: the ceiling of a generated image's
  retrieval with this tokenizer.
The gallery, the subset, the seed and the features are those of `openhart eval`, so the numbers
compare with its "reconstruction" rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..loading import load_tokenizer
from .inception import InceptionFeatures
from .report import (_evaluation_splits, _write_results, _gallery_features, _rates, _reconstruction_metrics, _reconstructions,
                     _retrieval)

PATHS = ("continuous", "discrete_only")


@torch.no_grad()
def evaluate_tokenizer(tokenizer_path: str | os.PathLike, data_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, *, train_data: str | os.PathLike | None = None,
                       train_samples: int = 500, inception: str | os.PathLike | None = None, seed: int = 0,
                       batch_size: int = 32, progress: Callable[[str], None] | None = None) -> dict:
    """Measure the reconstructions of each split and write `results.json` into `out_dir`."""
    if train_samples < 1 or batch_size < 1:
        raise ValueError("train_samples and batch_size must be >= 1")
    say = progress or (lambda _: None)
    tokenizer = load_tokenizer(tokenizer_path)
    size = tokenizer.config.image_size  # the side its whole scale list describes
    features = InceptionFeatures(inception, batch_size=batch_size)  # bounds the peak memory too
    folders, gallery_images, splits = _evaluation_splits(data_dir, train_data, size, None, train_samples, seed)
    say(f"Inception features of the gallery ({len(gallery_images)} images)")
    gallery_features = _gallery_features(features, gallery_images, folders, size)
    results_splits = {}
    for split in splits:
        say(f"reconstructions: {split.name} ({len(split.captions)} images)")
        recons = _reconstructions(tokenizer, split.images, batch_size)[:2]
        recon_features = [features(images) for images in recons]
        metrics = _reconstruction_metrics(split, recons, recon_features, gallery_features)
        results_splits[split.name] = {"images": len(split.captions), **{
            path: {**metrics[path], **_retrieval(feats, gallery_features, split)}
            for path, feats in zip(PATHS, recon_features)}}
    results = {"tokenizer": str(tokenizer_path), "data": str(data_dir),
               "train_data": None if train_data is None else str(train_data), "resolution": size, "seed": seed,
               "inception": str(features.path), "gallery_images": len(gallery_features), "splits": results_splits}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_results(out / "results.json", results)
    return results


def format_tokenizer_results(results: dict) -> str:
    """A markdown table of a tokenizer's `results.json`."""
    lines = [f"tokenizer {results['tokenizer']} at {results['resolution']} px; retrieval among "
             f"{results['gallery_images']} gallery images", "",
             "| images | path | PSNR (dB) | SSIM | rFID | top-1 | top-5 | grouped top-1 | grouped top-5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for split, data in results["splits"].items():
        for path in PATHS:
            m = data[path]
            lines.append(f"| {split} ({data['images']}) | {path.replace('_', '-')} | {m['psnr']:.2f} | "
                         f"{m['ssim']:.4f} | {m['rfid']:.2f} | {_rates(m)} |")
    return "\n".join(lines)
