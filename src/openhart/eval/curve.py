"""`openhart eval-curve`: prompt faithfulness (retrieval) against training steps.

For every checkpoint of a transformer run, the model of that checkpoint (EMA weights by default)
generates one image per caption of the same seeded training subset as `openhart eval`, with one
generation variant, and the retrieval rates of the captions' own images are measured against the
same gallery (held-out and training folders). The teacher-forced last-scale accuracy that the
run logged at that step is added when the run logged it. The curve says whether more training
would still help, and where a target was missed, by how much.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.datasets import ImageCaptionFolder
from ..outputs import atomic_path
from ..pipeline import HARTPipeline
from ..train.checkpoint import list_checkpoints
from ..train.export import export_checkpoint
from .inception import InceptionFeatures
from .report import VARIANTS, _gallery_features, _generate, _rates, _retrieval, _splits, training_subset


def checkpoint_step(path: Path) -> int:
    """The step of a `ckpt-00001000.pt` file."""
    return int(path.stem.removeprefix("ckpt-"))


@torch.no_grad()
def retrieval_curve(run_dir: str | os.PathLike, data_dir: str | os.PathLike, train_data: str | os.PathLike,
                    out: str | os.PathLike, *, samples: int = 500, variant: str = "hybrid_consistent",
                    weights: str = "ema", text_encoder: str | None = None,
                    inception: str | os.PathLike | None = None, seed: int = 0, batch_size: int = 32,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Retrieval top-1/top-5 of the training captions at every checkpoint of `run_dir`.

    Args:
        data_dir: the held-out folder (joins the gallery, as in `openhart eval`).
        train_data: the training folder; `samples` captions of it, seeded by `seed`.
        out: JSON file to write.
        variant: one of `VARIANTS`, applied to each checkpoint's recorded sampling settings.
    Returns:
        {"run", "variant", "samples", "gallery_images", "points": [{"step", "retrieval_top1",
        "retrieval_top5", "retrieval_grouped_top1", "retrieval_grouped_top5", "last_scale_top1"?}, ...]}.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown evaluation variant {variant!r}; choose from {list(VARIANTS)}")
    run = Path(run_dir)
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    checkpoints = list_checkpoints(folder) if folder.is_dir() else []
    if not checkpoints:
        raise ValueError(f"no checkpoints (ckpt-*.pt) in {folder}: pass a transformer run folder")
    say = progress or (lambda _: None)
    logged = _logged_accuracy(run / "metrics.jsonl")

    features = InceptionFeatures(inception, batch_size=batch_size)  # bounds the peak memory too
    points, gallery_features, split = [], None, None
    with tempfile.TemporaryDirectory(prefix="openhart-curve-") as tmp:
        for path in sorted(checkpoints, key=checkpoint_step):
            step = checkpoint_step(path)
            model_dir = export_checkpoint(path, Path(tmp) / f"step-{step}", weights=weights)
            pipe = HARTPipeline.from_pretrained(model_dir, text_encoder=text_encoder, dtype=torch.float32)
            if gallery_features is None:
                size = pipe.model.config.image_size
                folders = {"heldout": ImageCaptionFolder(data_dir, size),
                           "train": ImageCaptionFolder(train_data, size)}
                gallery_images, (split,) = _splits(
                    folders, {"train": training_subset(folders["train"], samples, seed)})
                gallery_features = _gallery_features(features, gallery_images, folders, size)
            say(f"step {step}: generating {len(split.captions)} images ({variant})")
            sampling = dataclasses.replace(pipe.resolve_sampling(None), **VARIANTS[variant])
            images = _generate(pipe, split.captions, seed, batch_size, sampling)
            point = {"step": step, **_retrieval(features(images), gallery_features, split)}
            if step in logged:
                point["last_scale_top1"] = logged[step]
            points.append(point)
            say(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in point.items() if k != "step"))
    result = {"run": str(run_dir), "variant": variant, "weights": weights, "samples": len(split.captions),
              "seed": seed, "gallery_images": len(gallery_features), "points": points}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp_file:
        tmp_file.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _logged_accuracy(metrics: Path) -> dict[int, float]:
    """{step: train_last_scale_top1} from a run's metrics.jsonl (empty when absent)."""
    found = {}
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a stopped run
            if isinstance(row, dict) and "train_last_scale_top1" in row and "step" in row:
                found[int(row["step"])] = float(row["train_last_scale_top1"])
    return found


def format_curve(result: dict) -> str:
    """A markdown table of a curve."""
    lines = [f"retrieval of {result['samples']} training captions among {result['gallery_images']} "
             f"images, variant {result['variant']}, {result['weights']} weights", "",
             "| step | top-1 | top-5 | grouped top-1 | grouped top-5 | last-scale acc. (train) |",
             "|---|---|---|---|---|---|"]
    for p in result["points"]:
        acc = f"{p['last_scale_top1']:.3f}" if "last_scale_top1" in p else ""
        lines.append(f"| {p['step']} | {_rates(p)} | {acc} |")
    return "\n".join(lines)
