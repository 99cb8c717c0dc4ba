"""What the commands share: the usage error, the model and device arguments, and the pipeline
built from them."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import LAST_SCALE_MODES, SamplingConfig
from ..device import default_dtype, resolve_device, resolve_dtype
from ..images import save_png
from ..outputs import check_output_file
from ..pipeline import HARTPipeline
from ..sampling import per_scale
from ..seeding import MAX_SEED, new_seed
from .ranges import integer, real, seed


class UsageError(ValueError):
    """Bad command-line input, reported as one line with exit code 2."""


# ----- the request loop of the commands that write images (generate, edit, vary) -------------------

CHUNK = 8  # images per pipeline call at most (bounded memory); chunk c is drawn with seed + c


def check_image_outputs(args: argparse.Namespace, prompts: int = 1) -> None:
    """--out and --seed of the commands that write images, checked before any work: --out is a
    .png and every file that `prompts` x --num-images images will be written to is writable; the
    seeds of all chunks (seed + c) fit the seed range. The numbers themselves are checked by
    their types at parse time."""
    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {args.out}")
    count = 1 if getattr(args, "grid", False) else prompts * args.num_images
    for path in output_paths(args.out, count):
        check_output_file(path)
    chunks = -(-args.num_images // CHUNK)
    if args.seed is not None and args.seed + chunks - 1 > MAX_SEED:
        raise UsageError(f"--seed {args.seed} leaves no room for the {chunks} chunks of {args.num_images} images "
                         f"(chunk c is drawn with seed + c): use a seed <= {MAX_SEED - chunks + 1}")


def draw_images(pipe, draw_chunk, prompts: list, num_images: int, seed: int | None, quiet: bool
                ) -> tuple[int, list, list]:
    """Draw `num_images` images per prompt, CHUNK at a time, with a progress bar over the scales.

    Args:
        draw_chunk: (prompt, count, seed, on_scale) -> a pipeline output (images, metadata).
        seed: the seed of chunk 0 (chunk c uses seed + c); None draws a fresh one.
    Returns:
        (the seed, the images, their metadata), in prompt order then image order.
    """
    seed = new_seed() if seed is None else seed
    jobs = [(prompt, start, min(CHUNK, num_images - start))
            for prompt in prompts for start in range(0, num_images, CHUNK)]
    images, metadata = [], []
    with scale_progress(pipe, quiet, len(jobs)) as on_scale:
        for prompt, start, count in jobs:
            out = draw_chunk(prompt, count, seed + start // CHUNK, on_scale)
            images += out.images
            metadata += out.metadata
    return seed, images, metadata


def write_images(images: list, metadata: list, out: Path) -> list[Path]:
    """Write each image with its metadata to OUT (one image) or OUT-000.png, OUT-001.png, ..."""
    paths = output_paths(out, len(images))
    for image, path, text in zip(images, paths, metadata):
        save_png(image, path, text)
    return paths


@contextlib.contextmanager
def scale_progress(pipe, quiet: bool, calls: int = 1):
    """A tqdm bar over the scales on stderr, as an `on_scale` hook; None (no bar) with --quiet or
    when stderr is not a TTY."""
    if quiet or not sys.stderr.isatty():
        yield None
        return

    total = pipe.model.config.num_scales * calls
    with tqdm(total=total, desc="scales", unit="scale", file=sys.stderr, leave=False) as bar:
        yield per_scale(lambda si: bar.update(1))


def output_paths(out: Path, count: int) -> list[Path]:
    """The files of `count` images written to --out: OUT itself, or OUT-000.png, OUT-001.png, ..."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(count)]


def add_model_arguments(p: argparse.ArgumentParser, *, weights: bool = True) -> None:
    """--model and --text-encoder (and --weights) of the commands that load a model."""
    p.add_argument("--model", default=None,
                   help="a Hub repo id (mit-han-lab/hart-0.7b-1024px, optionally @revision; fetched "
                        "once into the Hugging Face cache) or a local folder, in the official layout "
                        "(llm/ and tokenizer/) or openhart's (default: the small emoji model that "
                        "ships with openhart)")
    p.add_argument("--text-encoder", default=None,
                   help="a Hub repo id or local Hugging Face folder (e.g. "
                        "mit-han-lab/Qwen2-VL-1.5B-Instruct), a packaged encoder (all-MiniLM-L6-v2) "
                        "or 'random' (demos only); default: the one the model names")
    if weights:
        p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                       help="official models: EMA or raw llm weights (default: EMA when present)")
    p.add_argument("--lora", dest="loras", action="append", default=[], type=lora_spec, metavar="PATH_OR_ID[:SCALE]",
                   help="a LoRA adapter (a folder from `openhart finetune`: the adapter or the run; "
                        "or a Hub repo id), at SCALE (default 1); repeatable. An adapter trained on "
                        "another model is refused")


def lora_spec(text: str) -> tuple[str, float]:
    """PATH_OR_ID[:SCALE] -> (path or id, scale); a suffix that is not a number is part of the path."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return text, 1.0
        if not -100 <= scale <= 100:
            raise argparse.ArgumentTypeError(f"the scale of {head} must be between -100 and 100, got {tail}")
        return head, scale
    return text, 1.0


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 where the hardware has native bf16 matmul, else fp32; fp16 on "
                        "other GPUs), fp32, bf16 or fp16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (the first generation compiles for "
                        "about half a minute; torch caches the result on disk for later runs)")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """--seed, --negative-prompt and the sampling settings of the commands that sample."""
    p.add_argument("--seed", type=seed(), default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=real(0, 1000), default=None,
                   help="classifier-free guidance scale (default: the model's, 4.5 for the official "
                        "model)")
    p.add_argument("--negative-prompt", default=None,
                   help="text for the unconditional branch (default: HART's zero features)")
    p.add_argument("--top-k", type=integer(0, 1 << 20), default=None,
                   help="top-k at every scale, 0 = off (default: the model folder's; officially "
                        "600 for scales < 7, then 300)")
    p.add_argument("--top-p", type=real(0, 1), default=None,
                   help="nucleus sampling threshold, 0 = off (default: the model folder's)")
    p.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="Gumbel smoothing of code embeddings (default on, as the official scripts)")
    p.add_argument("--residual", dest="use_residual", action=argparse.BooleanOptionalAction, default=None,
                   help="add the residual diffusion head's continuous detail (default on; "
                        "--no-residual gives discrete-only images)")
    p.add_argument("--last-scale", choices=LAST_SCALE_MODES, default=None,
                   help="which embedding the residual is added to: 'consistent' (the code the "
                        "head was conditioned on), 'official' (the smoothed embedding of a second "
                        "draw, as the official sampler) or 'gumbel' (default: the model folder's)")
    p.add_argument("--head-temperature", type=real(0, 100), default=None,
                   help="noise temperature of the residual head, 0 = no noise after the first "
                        "step (default: the model folder's, 1 for the official model)")
    p.add_argument("--head-steps", type=integer(1, 1000), default=None,
                   help="diffusion steps of the residual head (default 8)")
    p.add_argument("--maskgit-iters", type=integer(1, 1 << 20), default=None,
                   help="MaskGIT iterations on the last scale (default 1)")


def sampling_settings(args: argparse.Namespace) -> dict:
    """The sampling settings of `add_sampling_arguments` (None: the model folder's), by
    SamplingConfig's field names (the flags' destinations are those names)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig) if hasattr(args, f.name)}


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    device = resolve_device(args.device)
    return device, default_dtype(device) if args.dtype == "auto" else resolve_dtype(args.dtype)


def load_pipeline(args: argparse.Namespace, *, low_memory: bool = False):
    """The pipeline of --model, --text-encoder, --weights, --device, --dtype and --lora."""
    device, dtype = device_and_dtype(args)
    pipe = HARTPipeline.from_pretrained(args.model, text_encoder=args.text_encoder, device=device, dtype=dtype,
                                        weights=getattr(args, "weights", "auto"), low_memory=low_memory,
                                        compile=args.compile)
    loras = getattr(args, "loras", [])
    if loras:
        names = [pipe.load_lora_weights(path) for path, _ in loras]
        pipe.set_adapters(names, [scale for _, scale in loras])
    return pipe
