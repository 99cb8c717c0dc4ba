"""`openhart bench --finetune lora|full`: one fine-tuning step of a preset, timed, with its memory.

What a fine-tune holds while it trains, and nothing else: the transformer and the diffusion head
(fp32 master weights) with their LoRA adapters or all their gradients and AdamW states, the
tokenizer's quantizer (codebook and Phi, which build the teacher-forcing inputs) and one batch of
cached codes, residuals and text features (random here). The text encoder and the tokenizer's
encoder and decoder are never built: `openhart finetune` frees them once the latent cache exists.
The step is `openhart finetune`'s: bf16 autocast where the device has native bf16, activation
checkpointing, gradient clipping, AdamW. A warm-up step allocates AdamW's states, then the timed
steps run and the peak memory is read; the FLOPs are counted in one last step (under the FLOP
counter, checkpointing keeps more activations alive, which is not the step's memory) and
compared with the matmul peak measured in the same process.
"""

from __future__ import annotations

import resource
import statistics

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..benchmark import matmul_peak_tflops, random_fill_
from ..config import HARTConfig, hart_0p7b, hart_tiny
from ..data.latent_cache import CachedBatch
from ..device import cpu_name
from ..diffusion.head import DiffusionHead
from ..lora import LoraSettings
from ..lora import adapter as lora
from ..timing import call_times
from ..tokenizer.quantizer import MultiScaleQuantizer
from ..transformer.model import HARTTransformer
from .optim import build_optimizer
from .train_config import TransformerLossConfig
from .trainer import autocast_context, resolved_precision
from .transformer_task import HARTTrainingModule

KINDS = ("lora", "full")


def build_module(config: HARTConfig, kind: str, device: torch.device, rank: int = 16) -> HARTTrainingModule:
    """The training module of a fine-tune with random weights, allocated once in fp32."""
    with torch.device("meta"):
        transformer = HARTTransformer(config.transformer, config.tokenizer)
        head = DiffusionHead(config.head, latent_channels=config.tokenizer.latent_channels,
                             cond_dim=config.transformer.embed_dim)
        quantizer = MultiScaleQuantizer(config.tokenizer)
    generator = torch.Generator(device=device).manual_seed(0)
    parts = [random_fill_(m.to_empty(device=device), generator) for m in (transformer, head, quantizer)]
    module = HARTTrainingModule(*parts, losses=TransformerLossConfig(), patch_nums=config.tokenizer.patch_nums,
                                seed=0, checkpointing=True)
    if kind == "lora":
        lora.inject(module, LoraSettings(rank=rank).peft_config(), "default")
    return module.train()


def random_batch(config: HARTConfig, batch: int, device: torch.device) -> CachedBatch:
    generator = torch.Generator(device=device).manual_seed(1)
    tokens, transformer = config.tokenizer, config.transformer
    codes = [torch.randint(0, tokens.vocab_size, (batch, pn * pn), generator=generator, device=device)
             for pn in tokens.patch_nums]
    last = tokens.patch_nums[-1] ** 2
    return CachedBatch(
        indices=torch.arange(batch),
        codes=codes,
        last_scale_input=torch.randn(batch, last, tokens.latent_channels, generator=generator, device=device),
        context=torch.randn(batch, transformer.context_tokens, transformer.context_dim, generator=generator,
                            device=device),
        position_ids=torch.arange(transformer.context_tokens, device=device).expand(batch, -1).contiguous())


def run_finetune_bench(kind: str, *, preset: str = "hart-0.7b", size: int = 256, batch: int = 1,
                       steps: int = 2, precision: str = "auto", device: torch.device | str = "cpu",
                       matmul_size: int | None = None) -> dict:
    """Seconds per optimizer step (median of `steps` after a warm-up step), peak memory and
    the trainable parameter count of a LoRA (rank 16) or full fine-tune of the preset."""
    if kind not in KINDS:
        raise ValueError(f"--finetune must be one of {KINDS}, got {kind!r}")
    device = torch.device(device)
    config = hart_tiny() if preset == "tiny" else hart_0p7b(size)
    module = build_module(config, kind, device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = build_optimizer(module, 1e-4, 0.0 if kind == "lora" else 0.05)
    data = random_batch(config, batch, device)
    autocast = autocast_context(precision, device)

    def step(index: int) -> None:
        with autocast:
            loss, _ = module(data, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    step(0)  # the warm-up: AdamW's states are allocated here
    times = call_times(step, range(1, steps + 1), device)
    seconds = statistics.median(times)
    peak_memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    # FLOPs last: under FlopCounterMode activation checkpointing keeps more alive, which must
    # not count as the step's memory
    counter = FlopCounterMode(display=False)
    with counter:
        step(steps + 1)
    resolved = resolved_precision(precision, device)
    side = matmul_size or (2048 if device.type == "cpu" else 8192)
    peak = matmul_peak_tflops(torch.bfloat16 if resolved == "bf16" else torch.float32, device, side)
    flops = counter.get_total_flops()
    return {
        "finetune": kind, "preset": preset, "size": config.tokenizer.image_size, "batch": batch,
        "device": str(device), "precision": resolved, "checkpointing": True,
        "lora_rank": 16 if kind == "lora" else None,
        "trainable_parameters": sum(p.numel() for p in params),
        "total_parameters": sum(p.numel() for p in module.parameters()),
        "seconds_per_step": seconds, "step_times": times,
        "peak_memory_gib": peak_memory / 2**30,
        "memory_kind": "device memory (max allocated)" if device.type == "cuda" else "peak RSS",
        "tflop_per_step": flops / 1e12, "achieved_tflops": flops / seconds / 1e12,
        "peak_tflops": peak, "fraction_of_peak": flops / seconds / 1e12 / peak,
        "cpu": cpu_name(),
    }


def format_finetune_report(result: dict) -> str:
    return "\n".join([
        f"fine-tune {result['finetune']} of {result['preset']} at {result['size']} px, batch {result['batch']}, "
        f"{result['precision']} on {result['device']} ({result['cpu']}), activation checkpointing",
        f"  trainable parameters  {result['trainable_parameters']:,} of {result['total_parameters']:,}",
        f"  seconds per step      {result['seconds_per_step']:.2f} (median of {len(result['step_times'])})",
        f"  {result['memory_kind']:<21} {result['peak_memory_gib']:.2f} GiB",
        f"  work                  {result['tflop_per_step']:.2f} TFLOP per step, {result['achieved_tflops']:.3f} "
        f"TFLOP/s = {100 * result['fraction_of_peak']:.0f}% of the measured {result['precision']} matmul peak "
        f"({result['peak_tflops']:.3f} TFLOP/s)",
    ])

