"""`openhart eval`: the evaluation that tests HART's central claim on a held-out set.

(a) Tokenizer reconstruction through the continuous path (codes + residual) against the
    discrete-only path (codes alone): rFID, PSNR, SSIM.
(b) Generation with the residual diffusion against discrete-only generation (the transformer's
    own codes, no residual): FID, KID against the held-out images.
(c) The residual head at its default steps (8) against more steps (30): FID, KID.

Every generated image uses the held-out caption of the same index and a fixed seed per batch,
so the variants of (b) and (c) draw the same codes and differ only in the residual. Results go
to `results.json`, with a contact sheet `contact_sheet.png` of the first examples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import SamplingConfig
from ..data.datasets import ImageCaptionFolder
from ..images import image_grid, save_png, to_pil
from ..serialization import atomic_path
from .fid import check_count, frechet_distance, kernel_inception_distance
from .inception import InceptionFeatures
from .metrics import psnr, ssim

SHEET_ROWS = 8
COLUMNS = ("held-out image", "continuous reconstruction", "discrete-only reconstruction",
           "generated, hybrid", "generated, discrete-only", "generated, hybrid 30 steps")


@torch.no_grad()
def evaluate(model_dir: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
             text_encoder: str | None = None, inception: str | os.PathLike | None = None,
             seed: int = 0, limit: int | None = None, batch_size: int = 32, long_steps: int = 30,
             cfg: float | None = None, progress: Callable[[str], None] | None = None) -> dict:
    from ..pipeline import HARTPipeline

    say = progress or (lambda _: None)
    pipe = HARTPipeline.from_pretrained(model_dir, text_encoder=text_encoder, dtype=torch.float32)
    size = pipe.model.config.image_size
    data = ImageCaptionFolder(data_dir, size)
    count = len(data) if limit is None else min(limit, len(data))
    check_count(f"the evaluation set {data_dir}", count)
    features = InceptionFeatures(inception)
    examples = [s for s in (data.load(i) for i in range(count)) if s is not None]
    real = (torch.stack([s.image for s in examples]) + 1) / 2
    captions = [s.caption for s in examples]

    say("Inception features of the held-out images")
    real_features = features(real)

    say("(a) tokenizer reconstructions")
    tokenizer = pipe.model.tokenizer
    continuous, discrete = [], []
    for chunk in (real * 2 - 1).split(batch_size):
        tokens = tokenizer.encode(chunk)
        continuous.append((tokenizer.decode_latent(tokens.latent) + 1) / 2)
        discrete.append((tokenizer.decode_tokens(tokens.indices) + 1) / 2)
    continuous, discrete = torch.cat(continuous), torch.cat(discrete)
    reconstruction = {
        name: {"rfid": frechet_distance(real_features, features(images)),
               "psnr": float(psnr(images, real).mean()), "ssim": float(ssim(images, real).mean())}
        for name, images in (("continuous", continuous), ("discrete_only", discrete))
    }

    variants = {"hybrid": {}, "discrete_only": {"use_residual": False},
                f"hybrid_{long_steps}_steps": {"head_steps": long_steps}}
    generated, generation = {}, {}
    for name, settings in variants.items():
        say(f"(b/c) generation: {name}")
        images = []
        for b, start in enumerate(range(0, len(captions), batch_size)):
            out = pipe(captions[start:start + batch_size], seed=seed + b, guidance_scale=cfg, **settings)
            images += [torch.from_numpy(_array(im)) for im in out.images]
        generated[name] = torch.stack(images).permute(0, 3, 1, 2).float() / 255
        gen_features = features(generated[name])
        kid, kid_std = kernel_inception_distance(real_features, gen_features, seed=seed)
        generation[name] = {"fid": frechet_distance(real_features, gen_features), "kid_x1000": kid,
                            "kid_x1000_std": kid_std}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(min(SHEET_ROWS, len(real))):
        rows += to_pil(torch.stack([real[i], continuous[i], discrete[i], *(g[i] for g in generated.values())]))
    save_png(image_grid(rows, columns=len(COLUMNS)), out / "contact_sheet.png",
             {"columns": " | ".join(COLUMNS), "captions": " | ".join(captions[:SHEET_ROWS])})
    results = {
        "model": str(model_dir), "data": str(data_dir), "images": len(real), "resolution": size,
        "seed": seed, "batch_size": batch_size, "inception": str(features.path),
        "guidance_scale": cfg if cfg is not None else SamplingConfig().cfg_scale,
        "reconstruction": reconstruction, "generation": generation,
        "sheet_columns": list(COLUMNS), "sheet_captions": captions[:SHEET_ROWS],
    }
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def _array(image):
    import numpy as np

    return np.asarray(image.convert("RGB")).copy()


def format_results(results: dict) -> str:
    rec, gen = results["reconstruction"], results["generation"]
    lines = [f"{results['images']} held-out images at {results['resolution']} px, seed {results['seed']}",
             "", "| reconstruction | rFID | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for name, m in rec.items():
        lines.append(f"| {name.replace('_', '-')} | {m['rfid']:.2f} | {m['psnr']:.2f} | {m['ssim']:.4f} |")
    lines += ["", "| generation | FID | KID x1000 |", "|---|---|---|"]
    for name, m in gen.items():
        lines.append(f"| {name.replace('_', ' ')} | {m['fid']:.2f} | {m['kid_x1000']:.2f} ± {m['kid_x1000_std']:.2f} |")
    return "\n".join(lines)
