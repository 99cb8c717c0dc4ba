"""The `openhart` command line: generate, convert, reconstruct, bench, train, cache, export.

Exit codes: 0 success, 2 bad usage or bad input (one-line message on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__
from .config import LAST_SCALE_MODES, tokenizer_small
from .device import default_dtype, resolve_device, resolve_dtype
from .eval.metrics import psnr
from .images import image_grid, load_image, save_png, to_pil
from .loading import load_tokenizer
from .text.encoder import SYSTEM_PROMPT_FILE
from .tokenizer import HybridTokenizer

EXIT_OK, EXIT_INTERNAL_ERROR, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad command-line input, reported as one line with exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="openhart: %(levelname)s: %(message)s", level=logging.WARNING)
    for noisy in ("transformers", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # huggingface_hub resets its logger when imported: its retry notices would bury the one-line
    # error of a failed download (its progress bars stay)
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        # CheckpointError and UsageError are ValueErrors too.
        print(f"openhart {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"openhart {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug, not the user's input: show where it happened
        import traceback

        traceback.print_exc()
        print(f"openhart {args.command}: internal error (a bug in openhart, not in your input); "
              "please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openhart",
        description="openhart: an open, trainable HART (Hybrid Autoregressive Transformer).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `openhart COMMAND --help` for the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"openhart {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(commands)
    _add_download(commands)
    _add_convert(commands)
    _add_reconstruct(commands)
    _add_bench(commands)
    from .eval.commands import add_commands as add_eval
    from .train.commands import add_commands as add_train

    from .web.commands import add_commands as add_web

    add_train(commands)
    add_eval(commands)
    add_web(commands)
    return parser


# ----- generate ------------------------------------------------------------------------------------

GENERATE_EXAMPLES = """\
examples:
  openhart generate "red apple" --out apple.png
      the small emoji model that ships with openhart (64 px, offline)
  openhart generate "a red fox in snow" --model hart-0.7b-1024px --text-encoder Qwen2-VL-1.5B-Instruct --out fox.png
  openhart generate "a lighthouse at dusk" --model hart-0.7b-1024px --text-encoder Qwen2-VL-1.5B-Instruct \\
      --seed 7 --guidance-scale 4.5 --num-images 4 --out lighthouse.png      # writes lighthouse-000.png ... -003.png
  openhart generate "red apple" "grinning face" "flag: Japan" --num-images 4 --grid --out grid.png
      one 3 x 4 grid image: a row per prompt, a column per image
  openhart generate --prompts-file prompts.txt --model my-model --text-encoder my-encoder --out out/img.png
  openhart generate "a red apple" --model tests/fixtures/conformance/hart-tiny --text-encoder random --out apple.png
      tiny random checkpoint and random text encoder: shows the pipeline, not quality
"""


def _add_generate(commands) -> None:
    p = commands.add_parser(
        "generate", help="text-to-image: generate PNGs from prompts",
        description="Generate images from text prompts with a HART model. The prompt, seed, "
                    "settings and model name are written into each PNG's text metadata.",
        epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    p.add_argument("--model", default=None,
                   help="a Hub repo id (mit-han-lab/hart-0.7b-1024px, optionally @revision; "
                        "downloaded once into the Hugging Face cache) or a local folder in the "
                        "official layout (llm/ and tokenizer/) or openhart's (default: the small "
                        "emoji model that ships with openhart)")
    p.add_argument("--text-encoder", default=None,
                   help="local Hugging Face text encoder folder (e.g. Qwen2-VL-1.5B-Instruct), a "
                        "packaged one (all-MiniLM-L6-v2), or 'random' (demo only); default: the "
                        "one the model folder names")
    p.add_argument("--out", type=Path, required=True,
                   help="output PNG; with several images, -000, -001, ... are added to the name")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's, 4.5 for the official "
                        "model)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--grid", action="store_true",
                   help="write one grid image to --out (a row per prompt, a column per image) "
                        "instead of one PNG per image")
    p.add_argument("--negative-prompt", default=None,
                   help="text for the unconditional branch (default: HART's zero features)")
    p.add_argument("--top-k", type=int, default=None,
                   help="top-k at every scale, 0 = off (default: the model folder's; officially "
                        "600 for scales < 7, then 300)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling threshold, 0 = off (default: the model folder's)")
    p.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="Gumbel smoothing of code embeddings (default on, as the official scripts)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="add the residual diffusion head's continuous detail (default on; "
                        "--no-residual gives discrete-only images)")
    p.add_argument("--last-scale", choices=LAST_SCALE_MODES, default=None,
                   help="which embedding the residual is added to: 'consistent' (the code the "
                        "head was conditioned on), 'official' (the smoothed embedding of a second "
                        "draw, as the official sampler) or 'gumbel' (default: the model folder's)")
    p.add_argument("--head-temperature", type=float, default=None,
                   help="noise temperature of the residual head, 0 = no noise after the first "
                        "step (default: the model folder's, 1 for the official model)")
    p.add_argument("--head-steps", type=int, default=None,
                   help="diffusion steps of the residual head (default 8)")
    p.add_argument("--maskgit-iters", type=int, default=None,
                   help="MaskGIT iterations on the last scale (default 1)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="official folders: EMA or raw llm weights (default: EMA when present)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 where the hardware has native bf16 matmul, else fp32; fp16 on "
                        "other GPUs), fp32, bf16 or fp16")
    p.add_argument("--low-memory", action="store_true",
                   help="free the text encoder once the prompts are encoded (lower peak memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from .pipeline import HARTPipeline

    prompts = list(args.prompts)
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise UsageError(f"prompts file not found: {args.prompts_file}")
        prompts += [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    if not prompts:
        raise UsageError("no prompt given: pass PROMPT arguments or --prompts-file")
    if args.out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {args.out}")
    if not args.out.parent.is_dir():
        raise UsageError(f"output folder does not exist: {args.out.parent}")
    if args.num_images < 1:
        raise UsageError(f"--num-images must be >= 1, got {args.num_images}")
    device = resolve_device(args.device)
    dtype = default_dtype(device) if args.dtype == "auto" else resolve_dtype(args.dtype)
    pipe = HARTPipeline.from_pretrained(args.model, text_encoder=args.text_encoder, device=device,
                                        dtype=dtype, weights=args.weights, low_memory=args.low_memory)
    sampling = pipe.resolve_sampling(
        None, guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p, smooth=args.smooth,
        head_steps=args.head_steps, maskgit_iters=args.maskgit_iters, use_residual=args.residual,
        head_temperature=args.head_temperature, last_scale=args.last_scale)
    with _scale_progress(pipe, args.quiet) as on_scale:
        out = pipe(prompts, negative_prompt=args.negative_prompt, num_images_per_prompt=args.num_images,
                   sampling=sampling, seed=args.seed, on_scale=on_scale)
    if args.grid:
        grid = image_grid(out.images, columns=args.num_images)
        save_png(grid, args.out, dict(out.metadata[0], prompt=" | ".join(prompts),
                                      images=json.dumps([json.loads(m["openhart"]) for m in out.metadata])))
        print(f"{args.out}  seed {out.seed}  {len(prompts)} prompt(s) x {args.num_images} image(s)")
        return 0
    for image, path, text in zip(out.images, _output_paths(args.out, len(out.images)), out.metadata):
        save_png(image, path, text)
        print(f"{path}  seed {out.seed}  {text['prompt']!r}")
    return 0


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(count)]


class _scale_progress:
    """A tqdm bar over the scales on stderr; silent with --quiet or when stderr is not a TTY."""

    def __init__(self, pipe, quiet: bool):
        self.total = pipe.model.config.transformer.num_scales
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc="scales", unit="scale", file=sys.stderr, leave=False)
        return lambda record: self.bar.update(1)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


# ----- download ------------------------------------------------------------------------------------

DOWNLOAD_EXAMPLES = """\
examples:
  openhart download mit-han-lab/hart-0.7b-1024px
      the released model (llm/config.json, the EMA weights, tokenizer/) and its text encoder
      mit-han-lab/Qwen2-VL-1.5B-Instruct, into the Hugging Face cache (HF_HOME)
  openhart download mit-han-lab/hart-0.7b-1024px@main --weights raw
  HF_HUB_OFFLINE=1 openhart generate "a red fox in snow" --model mit-han-lab/hart-0.7b-1024px --out fox.png
      later, without a network: everything comes from the cache
"""


def _add_download(commands) -> None:
    p = commands.add_parser(
        "download", help="fetch a model and its text encoder from the Hugging Face Hub into the cache",
        description="Download the files a Hub model needs (only those: for the official release "
                    "llm/config.json, the EMA weights unless --weights raw, and tokenizer/) and "
                    "the text encoder it names, into the Hugging Face cache, and print where they "
                    "are. Files already cached are not downloaded again. Respects HF_HOME, "
                    "HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE.",
        epilog=DOWNLOAD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="Hub repo id, optionally @revision (a local folder is checked and printed)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="official models: EMA or raw llm weights (default: EMA when present)")
    p.add_argument("--text-encoder", default=None,
                   help="text encoder to fetch instead of the one the model names; 'none' skips it")
    p.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    from .hub import resolve_model, resolve_text_encoder

    source = resolve_model(args.name, weights=args.weights)
    print(f"model {source.name}: {source.path}")
    encoder = args.text_encoder or source.text_encoder
    if encoder is None:
        print("text encoder: the model names none; pass --text-encoder when you generate")
    elif encoder != "none":
        print(f"text encoder {encoder}: {resolve_text_encoder(encoder)}")
    return 0


# ----- convert -------------------------------------------------------------------------------------

CONVERT_EXAMPLES = """\
examples:
  openhart convert hart-0.7b-1024px hart-0.7b-openhart
  openhart convert hart-0.7b-1024px hart-0.7b-bf16 --dtype bf16 --system-prompt hart_system_prompt.txt
"""


def _add_convert(commands) -> None:
    p = commands.add_parser(
        "convert", help="convert a model folder (e.g. the official release) to openhart's layout",
        description="Read SRC (official release folder with llm/ and tokenizer/, or an openhart "
                    "folder) and write DST as openhart's config.json + model.safetensors; then "
                    "load DST back and check every tensor.",
        epilog=CONVERT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="source model folder, or a Hub repo id (downloaded)")
    p.add_argument("dst", type=Path, help="destination folder (must not exist unless --overwrite)")
    p.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16 weights (default fp32)")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="official llm weights: EMA or raw (default: EMA when present)")
    p.add_argument("--system-prompt", type=Path, default=None,
                   help=f"copy this file into DST as {SYSTEM_PROMPT_FILE} (the official system prompt)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing DST")
    p.set_defaults(handler=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_official_checkpoint

    dtype = resolve_dtype(args.dtype)
    if args.dst.exists() and not args.overwrite:
        raise UsageError(f"{args.dst} already exists; choose a new folder or pass --overwrite")
    if args.system_prompt is not None and not args.system_prompt.is_file():
        raise UsageError(f"system prompt file not found: {args.system_prompt}")
    dst = convert_official_checkpoint(args.src, args.dst, dtype=dtype, weights=args.weights,
                                      system_prompt_file=args.system_prompt, overwrite=args.overwrite)
    print(f"wrote {dst} ({args.dtype}); reloaded it and verified every tensor")
    return 0


# ----- reconstruct -------------------------------------------------------------------------------

RECONSTRUCT_EXAMPLES = """\
examples:
  openhart reconstruct assets/sample.png
      random-weight 'small' tokenizer: shows the pipeline, not quality
  openhart reconstruct photo.jpg --tokenizer hart-0.7b-1024px/tokenizer --out-dir out/
      the released tokenizer; photo.jpg is resized and center-cropped to 1024x1024
"""


def _add_reconstruct(commands) -> None:
    p = commands.add_parser(
        "reconstruct",
        help="tokenizer round trip: encode an image, decode it through both paths, print PSNR",
        description=(
            "Encode IMAGE with the HART hybrid tokenizer, then decode it twice: through the "
            "continuous path (codes + residual) and through the discrete-only path (codes "
            "alone). Both reconstructions are saved as PNGs beside the input (or in --out-dir) "
            "and the PSNR of each against the resized input is printed."
        ),
        epilog=RECONSTRUCT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="input image file (PNG, JPEG, ...)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder, official or openhart layout (or a model folder with "
                        "tokenizer/), or a Hub repo id (only its tokenizer/ is downloaded); "
                        "default: the 'small' preset with random weights")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where to write the reconstructions (default: the input's folder)")
    p.add_argument("--size", type=int, default=None,
                   help="image side to encode at (default: the tokenizer's full resolution)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights when no --tokenizer is given (default 0)")
    p.set_defaults(handler=run_reconstruct)


def run_reconstruct(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    out_dir = args.out_dir if args.out_dir is not None else args.image.parent
    if not out_dir.is_dir():
        raise UsageError(f"output folder does not exist: {out_dir}")
    if not args.image.is_file():
        raise UsageError(f"image not found: {args.image}")
    if args.tokenizer is None:
        tokenizer = random_tokenizer(args.seed)
        print(f"No --tokenizer given: using the 'small' preset with RANDOM weights (seed "
              f"{args.seed}). The reconstructions show the pipeline, not quality.")
    else:
        from .hub import resolve_tokenizer

        tokenizer = load_tokenizer(resolve_tokenizer(args.tokenizer))
    tokenizer = tokenizer.to(device).eval()
    size = args.size or tokenizer.config.image_size
    tokenizer.scales_for_size(size)  # fail before reading the image if the size does not fit

    images = load_image(args.image, size).to(device)
    with torch.inference_mode():
        tokens = tokenizer.encode(images)
        continuous = tokenizer.decode_latent(tokens.latent)
        discrete = tokenizer.decode_tokens(tokens.indices)
    reference = (images + 1) / 2
    print(f"{args.image}: {size}x{size}, {len(tokens.indices)} scales "
          f"{list(tokens.patch_nums)}, {sum(i.numel() for i in tokens.indices)} codes")
    for name, decoded in (("continuous", continuous), ("discrete", discrete)):
        decoded = (decoded + 1) / 2
        path = out_dir / f"{args.image.stem}.recon-{name}.png"
        save_png(to_pil(decoded)[0], path, {"openhart": f"reconstruct --{name} path"})
        value = psnr(decoded, reference).item()
        print(f"  {name:>10} path: PSNR {value:6.2f} dB -> {path}")
    return 0


def random_tokenizer(seed: int) -> HybridTokenizer:
    """The 'small' tokenizer preset with seeded random weights (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HybridTokenizer(tokenizer_small())


# ----- bench -----------------------------------------------------------------------------------------

BENCH_EXAMPLES = """\
examples:
  openhart bench --size 1024 --dtype bf16 --json bench-1024-bf16.json
  openhart bench --size 1024 --dtype bf16 --low-memory          # text encoder freed after encoding
  openhart bench --preset tiny --warmup 0 --repeats 1           # seconds, for a smoke test
  openhart bench --size 512 --profile                            # plus the top ops by self time
"""


def _add_bench(commands) -> None:
    p = commands.add_parser(
        "bench", help="time a generation per phase against this machine's measured limits",
        description="Build a preset with random weights (the released 0.7B transformer and "
                    "tokenizer plus a random Qwen2 of Qwen2-1.5B size by default; nothing is "
                    "downloaded), time text encoding, each scale, the residual diffusion and the "
                    "decode, count FLOPs, measure the matmul peak and the exp rate in the same "
                    "process, and print each phase against its limit and the ratio to the floor.",
        epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=("hart-0.7b", "tiny"), default="hart-0.7b")
    p.add_argument("--size", type=int, choices=(256, 512, 1024), default=1024,
                   help="image size of the hart-0.7b preset (default 1024)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 where the hardware has native bf16, else fp32), fp32, bf16, fp16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch", type=int, default=1, help="prompts per generation (default 1)")
    p.add_argument("--low-memory", action="store_true",
                   help="free the text encoder once the prompts are encoded")
    p.add_argument("--text-encoder", choices=("qwen2-1.5b", "none"), default="qwen2-1.5b",
                   help="random text encoder to time, or none (random features)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default 3)")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=4.5,
                   help="guidance scale (default 4.5)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the matmul that measures the peak (default 2048 on the CPU, "
                        "8192 on GPUs)")
    p.add_argument("--profile", action="store_true",
                   help="profile one more run: top ops by self time and the time outside "
                        "matmul/convolution/attention kernels")
    p.add_argument("--json", type=Path, default=None, help="write the full result as JSON here")
    p.set_defaults(handler=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, format_report, run_bench, write_json

    device = resolve_device(args.device)
    dtype = default_dtype(device) if args.dtype == "auto" else resolve_dtype(args.dtype)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        raise UsageError("--batch and --repeats must be >= 1 and --warmup >= 0")
    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(f"output folder does not exist: {args.json.parent}")
    settings = BenchSettings(preset=args.preset, size=args.size, dtype=dtype, device=device,
                             batch=args.batch, low_memory=args.low_memory, warmup=args.warmup,
                             repeats=args.repeats, guidance_scale=args.guidance_scale, text_encoder=args.text_encoder,
                             matmul_size=args.matmul_size, profile=args.profile)
    result = run_bench(settings)
    print(format_report(result))
    if args.json is not None:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
