"""`openhart eval`: the evaluation that tests HART's central claim, on held-out and training captions.

(a) Tokenizer reconstruction of the held-out images through the continuous path (codes +
    residual) against the discrete-only path (codes alone): rFID, PSNR, SSIM; and the retrieval
    rates of the reconstructions of each split, the ceiling that generated images can reach.
(b) The transformer's teacher-forced top-1 code accuracy, at the last scale and over all
    scales, on the held-out images and on a fixed, seeded subset of the training images.
(c) Generation variants (`VARIANTS`: discrete-only, hybrid with the official or the consistent
    last scale, residual temperatures, ...) from the held-out captions and from the training
    subset's captions: FID and KID against the real images of the same split, and prompt
    faithfulness by retrieval (`retrieval.py`): the rank of the caption's own image among every
    image of the gallery (the held-out and the training folder together).

Every generated image uses its caption and a fixed seed per batch (seed + batch index), so the
variants draw the same codes up to the last scale and differ in how it is finished. Results go
to `results.json`, with a contact sheet `contact_sheet.png` of the first held-out examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file, save_file
import torch

from ..config import config_to_dict
from ..data.datasets import ImageCaptionFolder
from ..images import image_grid, save_png, to_pil
from ..metrics import teacher_forced_accuracy
from ..metrics import psnr, ssim
from ..outputs import atomic_path
from ..pipeline import HARTPipeline
from .fid import check_count, frechet_distance, kernel_inception_distance
from .inception import InceptionFeatures
from .retrieval import retrieval_ranks, retrieval_rates, variant_groups

SHEET_ROWS = 8

# Generation variants: changes to the model folder's recommended sampling settings.
# Each hybrid variant turns the residual on itself: a model folder may default to discrete-only
# (the shipped emoji model does), and its hybrid rows must still be hybrid.
VARIANTS: dict[str, dict] = {
    "discrete_only": {"use_residual": False},
    "hybrid_official": {"use_residual": True, "last_scale": "official", "head_temperature": 1.0},
    "hybrid_consistent": {"use_residual": True, "last_scale": "consistent", "head_temperature": 1.0},
    "hybrid_consistent_temp0.5": {"use_residual": True, "last_scale": "consistent", "head_temperature": 0.5},
    "hybrid_consistent_temp0": {"use_residual": True, "last_scale": "consistent", "head_temperature": 0.0},
    "hybrid_gumbel": {"use_residual": True, "last_scale": "gumbel", "head_temperature": 1.0},
    "hybrid_30_steps": {"use_residual": True, "head_steps": 30},
}
DEFAULT_VARIANTS = ("discrete_only", "hybrid_official", "hybrid_consistent",
                    "hybrid_consistent_temp0.5", "hybrid_consistent_temp0", "hybrid_gumbel")


@dataclass
class Split:
    """Evaluation images of one split: real images in [0, 1], captions, gallery index of each, and
    the group id of every gallery image (`retrieval.variant_groups`)."""

    name: str
    images: torch.Tensor
    captions: list[str]
    gallery_index: torch.Tensor
    gallery_groups: torch.Tensor


# About 60 lines: (a)-(c) in the order the report lists them; the work is in the helpers below.
@torch.no_grad()
def evaluate(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
             train_data: str | os.PathLike | None = None, train_samples: int = 500,
             text_encoder: str | None = None, inception: str | os.PathLike | None = None,
             seed: int = 0, limit: int | None = None, batch_size: int = 32,
             guidance_scale: float | None = None, variants: Sequence[str] = DEFAULT_VARIANTS,
             loras: Sequence[tuple[str, float]] = (),
             progress: Callable[[str], None] | None = None) -> dict:
    """Run (a)-(c) and write `results.json` and `contact_sheet.png` into `out_dir`.

    Args:
        data_dir: held-out image-caption folder.
        train_data: the training image-caption folder (optional): adds the training split
            (`train_samples` examples, a subset seeded by `seed`) and joins the gallery.
        limit: use only the first `limit` held-out images (the gallery keeps all of them).
        guidance_scale: the guidance scale (default: the model's).
        variants: names from `VARIANTS`.
        loras: LoRA adapters (path or Hub id, scale) applied to the model.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown evaluation variant(s) {unknown}; choose from {list(VARIANTS)}")
    if train_samples < 1:
        raise ValueError(f"train_samples must be >= 1, got {train_samples}")
    say = progress or (lambda _: None)
    pipe, base, settings = _pipeline_and_variants(model_dir, text_encoder, loras, guidance_scale, variants)
    size = pipe.model.config.image_size
    features = InceptionFeatures(inception, batch_size=batch_size)  # bounds the peak memory too
    folders, gallery_images, splits = _evaluation_splits(data_dir, train_data, size, limit, train_samples, seed)

    say(f"Inception features of the gallery ({len(gallery_images)} images)")
    gallery_features = _gallery_features(features, gallery_images, folders, size)

    say("(a) tokenizer reconstructions")
    heldout = splits[0]
    recons = {split.name: _reconstructions(pipe.model.tokenizer, split.images, batch_size) for split in splits}
    recon_features = {name: [features(images) for images in (c, d)] for name, (c, d, _) in recons.items()}
    reconstruction = _reconstruction_metrics(heldout, recons["heldout"][:2], recon_features["heldout"],
                                             gallery_features)
    results_splits, generated = {}, {}
    for split in splits:
        results_splits[split.name], generated[split.name] = _split_results(
            pipe, split, recons[split.name][2], recon_features[split.name], gallery_features, features,
            settings, seed, batch_size, say)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = _write_contact_sheet(out / "contact_sheet.png", heldout, recons["heldout"][:2], generated["heldout"])
    results = {
        "model": str(model_dir), "data": str(data_dir), "train_data": None if train_data is None else str(train_data),
        "resolution": size, "seed": seed, "batch_size": batch_size, "inception": str(features.path),
        "guidance_scale": base.guidance_scale, "recommended_sampling": config_to_dict(pipe.default_sampling),
        "variants": {name: config_to_dict(sampling) for name, sampling in settings.items()},
        "gallery": {"images": len(gallery_features), "chance_top1": 1 / len(gallery_features),
                    "chance_top5": min(5, len(gallery_features)) / len(gallery_features)},
        "reconstruction": {"images": len(heldout.captions), **reconstruction},
        "splits": results_splits,
        "sheet_columns": columns, "sheet_captions": heldout.captions[:SHEET_ROWS],
    }
    _write_results(out / "results.json", results)
    return results


def _write_results(path: Path, results: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


# ----- steps -----------------------------------------------------------------------------------------

def _pipeline_and_variants(model_dir, text_encoder, loras, guidance_scale, variants):
    """The pipeline (fp32, with its LoRA adapters), its base settings and those of each variant."""
    pipe = HARTPipeline.from_pretrained(model_dir, text_encoder=text_encoder, dtype=torch.float32)
    if loras:
        pipe.set_adapters([pipe.load_lora_weights(path) for path, _ in loras], [scale for _, scale in loras])
    base = pipe.resolve_sampling(None, guidance_scale=guidance_scale)
    return pipe, base, {name: dataclasses.replace(base, **VARIANTS[name]) for name in variants}


def _evaluation_splits(data_dir, train_data, size: int, limit: int | None, train_samples: int, seed: int):
    """The folders, the retrieval gallery and the splits: the held-out images (the first `limit`)
    and, with `train_data`, a seeded subset of `train_samples` training images."""
    folders = {"heldout": ImageCaptionFolder(data_dir, size)}
    if train_data is not None:
        folders["train"] = ImageCaptionFolder(train_data, size)
    count = len(folders["heldout"]) if limit is None else min(limit, len(folders["heldout"]))
    check_count(f"the evaluation set {data_dir}", count)
    picks = {"heldout": list(range(count))}
    if "train" in folders:
        picks["train"] = training_subset(folders["train"], train_samples, seed)
        check_count(f"the training subset of {train_data}", len(picks["train"]))
    gallery_images, splits = _splits(folders, picks)
    return folders, gallery_images, splits



def _reconstruction_metrics(split: Split, images: tuple[torch.Tensor, torch.Tensor],
                            recon_features: list[torch.Tensor], gallery_features: torch.Tensor) -> dict:
    """rFID, PSNR and SSIM of the continuous and discrete-only reconstructions of a split's images."""
    real = gallery_features[split.gallery_index]
    return {name: {"rfid": frechet_distance(real, feats), "psnr": float(psnr(recon, split.images).mean()),
                   "ssim": float(ssim(recon, split.images).mean())}
            for name, recon, feats in zip(("continuous", "discrete_only"), images, recon_features)}


def _split_results(pipe, split: Split, codes, recon_features: list[torch.Tensor],
                   gallery_features: torch.Tensor, features: InceptionFeatures, settings: dict,
                   seed: int, batch_size: int, say: Callable[[str], None]) -> tuple[dict, dict]:
    """(b) and (c) for one split's captions: accuracy, the reconstructions' retrieval, and FID,
    KID and retrieval of every variant's generations; also each variant's first images (for the
    contact sheet)."""
    say(f"(b) teacher-forced accuracy: {split.name}")
    accuracy = _accuracy(pipe, split, codes, batch_size)
    real_features = gallery_features[split.gallery_index]
    # retrieval of the tokenizer's reconstructions: the best a generated image can hope for
    oracle = {name: _retrieval(feats, gallery_features, split)
              for name, feats in zip(("continuous", "discrete_only"), recon_features)}
    generation, sheet_images = {}, {}
    for name, sampling in settings.items():
        say(f"(c) generation, {split.name} captions: {name}")
        images = _generate(pipe, split.captions, seed, batch_size, sampling)
        gen_features = features(images)
        kid, kid_std = kernel_inception_distance(real_features, gen_features, seed=seed)
        generation[name] = {"fid": frechet_distance(real_features, gen_features), "kid_x1000": kid,
                            "kid_x1000_std": kid_std,
                            **_retrieval(gen_features, gallery_features, split)}
        sheet_images[name] = images[:SHEET_ROWS]
    return ({"images": len(split.captions), "accuracy": accuracy, "reconstruction_retrieval": oracle,
             "generation": generation}, sheet_images)


def _write_contact_sheet(path: Path, heldout: Split, recons: tuple[torch.Tensor, torch.Tensor],
                         generated: dict[str, torch.Tensor]) -> list[str]:
    """Rows of held-out image, its reconstructions and each variant's generation; returns the
    column titles."""
    columns = ["held-out image", "continuous reconstruction", "discrete-only reconstruction",
               *(f"generated: {name}" for name in generated)]
    continuous, discrete = recons
    rows = []
    for i in range(min(SHEET_ROWS, len(heldout.images))):
        rows += to_pil(torch.stack([heldout.images[i], continuous[i], discrete[i],
                                    *(g[i] for g in generated.values())]))
    save_png(image_grid(rows, columns=len(columns)), path,
             {"columns": " | ".join(columns), "captions": " | ".join(heldout.captions[:SHEET_ROWS])})
    return columns

def _gallery(folders: dict[str, ImageCaptionFolder]) -> tuple[torch.Tensor, dict[str, int]]:
    """Every image of the folders in [0, 1], (M, 3, R, R), and where each folder starts."""
    images, offsets = [], {}
    for name, folder in folders.items():
        offsets[name] = len(images)
        for i in range(len(folder)):
            sample = folder.load(i)
            if sample is None:
                raise ValueError(f"cannot read {folder.items[i][0]}: the evaluation needs every image "
                                 "of its folders (remove or fix the file)")
            images.append((sample.image + 1) / 2)
    return torch.stack(images), offsets


def training_subset(folder: ImageCaptionFolder, samples: int, seed: int) -> list[int]:
    """Indices of the seeded subset of `samples` training examples (sorted)."""
    n = min(samples, len(folder))
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed))
    return sorted(int(i) for i in order[:n])


def _splits(folders: dict[str, ImageCaptionFolder], picks: dict[str, list[int]]) -> tuple[torch.Tensor, list[Split]]:
    """The gallery of every image of `folders` (`_gallery`), and a Split of the picked indices of
    each folder named in `picks`, with the gallery's group ids (`retrieval.variant_groups`)."""
    gallery_images, offsets = _gallery(folders)
    groups = variant_groups([caption for folder in folders.values() for _, caption in folder.items])
    splits = []
    for name, indices in picks.items():
        index = torch.tensor([offsets[name] + i for i in indices], dtype=torch.long)
        splits.append(Split(name=name, images=gallery_images[index],
                            captions=[folders[name].items[i][1] for i in indices],
                            gallery_index=index, gallery_groups=groups))
    return gallery_images, splits


def feature_cache_dir() -> Path:
    """Where gallery features are kept between evaluations: $XDG_CACHE_HOME/openhart/eval
    (~/.cache/openhart/eval by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "openhart" / "eval"


def _gallery_features(features: InceptionFeatures, images: torch.Tensor,
                      folders: dict[str, ImageCaptionFolder], size: int) -> torch.Tensor:
    """Inception features of the gallery, reused when the same files (paths, sizes, times,
    captions) were featurised at the same resolution by the same network."""
    key = hashlib.sha256()
    for folder in folders.values():
        for path, caption in folder.items:
            stat = path.stat()
            key.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{caption}\n".encode())
    key.update(f"{size}|{features.path}".encode())
    digest = key.hexdigest()
    out = feature_cache_dir()
    cached = out / f"gallery-{digest[:24]}.safetensors"
    if cached.is_file():
        with safe_open(str(cached), framework="pt") as f:
            if (f.metadata() or {}).get("key") == digest:
                return load_file(str(cached))["features"]
    gallery = features(images)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        save_file({"features": gallery.contiguous()}, str(tmp), metadata={"key": digest})
    return gallery


def _reconstructions(tokenizer, images: torch.Tensor, batch_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Continuous and discrete-only reconstructions in [0, 1], and the codes of every scale."""
    continuous, discrete, codes = [], [], []
    for chunk in (images * 2 - 1).split(batch_size):
        tokens = tokenizer.encode(chunk)
        continuous.append((tokenizer.decode_latent(tokens.latent) + 1) / 2)
        discrete.append((tokenizer.decode_tokens(tokens.indices) + 1) / 2)
        codes.append(tokens.indices)
    per_scale = [torch.cat(c) for c in zip(*codes)]
    return torch.cat(continuous).clamp(0, 1), torch.cat(discrete).clamp(0, 1), per_scale


def _retrieval(features_ND: torch.Tensor, gallery_MD: torch.Tensor, split: Split) -> dict[str, float]:
    """{"retrieval_top1", "retrieval_top5", "retrieval_grouped_top1", "retrieval_grouped_top5"} of
    images drawn for the captions of `split`."""
    result = {}
    for prefix, groups in (("retrieval_", None), ("retrieval_grouped_", split.gallery_groups)):
        ranks = retrieval_ranks(features_ND, gallery_MD, split.gallery_index, groups)
        result.update({prefix + k: v for k, v in retrieval_rates(ranks, len(gallery_MD)).items()
                       if not k.startswith("chance")})
    return result


def _accuracy(pipe, split: Split, codes: list[torch.Tensor], batch_size: int) -> dict[str, float]:
    """Teacher-forced accuracy on the split's images, given their codes of every scale."""
    model = pipe.model
    contexts, positions = [], []
    for start in range(0, len(split.captions), batch_size):
        cond, _ = pipe.encode_prompt(split.captions[start:start + batch_size], None)
        contexts.append(cond.features)
        positions.append(cond.position_ids)
    return teacher_forced_accuracy(model.transformer, model.tokenizer.quantizer, codes,
                                   torch.cat(contexts), torch.cat(positions), batch_size=batch_size)


def _generate(pipe, captions: list[str], seed: int, batch_size: int, sampling) -> torch.Tensor:
    """One image per caption, (N, 3, R, R) in [0, 1]; batch b uses seed + b."""
    images = []
    for b, start in enumerate(range(0, len(captions), batch_size)):
        out = pipe(captions[start:start + batch_size], seed=seed + b, sampling=sampling)
        images += [_array(image) for image in out.images]
    return torch.stack(images).permute(0, 3, 1, 2).float() / 255


def _array(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


# ----- report ----------------------------------------------------------------------------------------

def format_results(results: dict) -> str:
    """Markdown tables of a `results.json`."""
    rec = results["reconstruction"]
    lines = [f"reconstruction of {rec['images']} held-out images at {results['resolution']} px, "
             f"seed {results['seed']}", "", "| reconstruction | rFID | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for name in ("continuous", "discrete_only"):
        m = rec[name]
        lines.append(f"| {name.replace('_', '-')} | {m['rfid']:.2f} | {m['psnr']:.2f} | {m['ssim']:.4f} |")
    gallery = results["gallery"]
    lines += ["", f"retrieval among {gallery['images']} gallery images (chance top-1 "
              f"{100 * gallery['chance_top1']:.2f}%, top-5 {100 * gallery['chance_top5']:.2f}%); "
              f"guidance {results['guidance_scale']:g}", "",
              "| captions | variant | FID | KID x1000 | top-1 | top-5 | grouped top-1 | grouped top-5 "
              "| last-scale acc. | all-scale acc. |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for split, data in results["splits"].items():
        acc = data["accuracy"]
        for name, m in data["reconstruction_retrieval"].items():
            lines.append(f"| {split} ({data['images']}) | reconstruction, {name.replace('_', '-')} | | | "
                         f"{_rates(m)} | | |")
        for name, m in data["generation"].items():
            lines.append(f"| {split} ({data['images']}) | {name} | {m['fid']:.2f} | "
                         f"{m['kid_x1000']:.2f} ± {m['kid_x1000_std']:.2f} | {_rates(m)} | "
                         f"{acc['last_scale_top1']:.3f} | {acc['all_scales_top1']:.3f} |")
    return "\n".join(lines)


def _rates(m: dict) -> str:
    """Strict and grouped top-1 and top-5 cells (results written before grouping have no grouped rates)."""
    cells = [m.get(f"retrieval_{kind}top{k}") for kind in ("", "grouped_") for k in (1, 5)]
    return " | ".join("" if v is None else f"{100 * v:.1f}%" for v in cells)
