"""`openhart bench`: time one text-to-image generation per phase against this machine's limits.

Builds a preset with random weights (nothing is downloaded), measures the matmul peak and the exp
rate in the same process, counts FLOPs with `torch.utils.flop_counter` (attention by the formula
4 B H Lq Lkv d, scores B H Lq Lkv) and reports each phase's time, its achieved fraction of its
limit and the ratio of the total time to the floor:

    floor = non-attention FLOP / matmul peak + max(attention FLOP / matmul peak, scores / exp rate)

taken per measured phase (text, each scale, diffusion, decode) and summed, since they run in turn.
The counts are those of the official algorithm's work: shortcuts that are exact but skip work
(the unconditional prefix computed on one token) make a run faster, not its floor lower.

The matmul peak is that of the fastest dtype the machine runs natively (`floor_dtype`: bf16 where
the CPU has AMX or AVX512-BF16 and on GPUs, fp32 elsewhere), whatever dtype the run uses, so that
an fp32 run on a bf16 machine is not flattered by the slower fp32 peak. With `profile=True` one
more generation runs under torch.profiler: the top ops by self time, and the time spent outside
matmul, convolution and attention kernels (`outside_kernels_s`), show where the rest goes.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from .attention import path_for as attention_path
from .config import HARTConfig, SamplingConfig, hart_0p7b, hart_tiny
from .device import has_native_bf16, synchronize
from .hart_model import HARTModel
from .sampling import generate
from .serialization import write_json as write_json_file
from .text.encoder import HFPromptEncoder
from .text.random_encoder import byte_tokenizer
from .timing import PhaseTimer
from .tokenizer import use_channels_last

# Qwen2-1.5B's architecture (the text encoder of HART-0.7B), built with random weights.
QWEN2_1P5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6)
# Rate measurements of the issue: a 2048^3 matmul, and exp over 262,144 fp32 elements.
MATMUL_SIZE = 2048
EXP_ELEMENTS = 262_144
EXP_TOTAL = 2e8
# Attention ops counted by formula; getattr: not every build has every backend.
SDPA_OPS = tuple(getattr(torch.ops.aten, name, None) for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")) + (
    torch.ops.openhart.attention,)  # openhart's CPU kernel (attention.py)
# On GPUs a 2048^3 matmul and 262,144 exps are launch-bound: measure the rates at GPU sizes there.
GPU_MATMUL_SIZE = 8192
GPU_EXP_ELEMENTS = 1 << 26
# Profiler op names whose self time is kernel work: matmuls, convolutions, attention. Everything
# else (elementwise ops, copies, norms, indexing, Python between ops) is "outside the kernels".
KERNEL_OP_PATTERN = re.compile(
    r"^(aten::(mm|addmm|bmm|baddbmm|addmv|mv|dot|_?mkldnn_.*|.*convolution.*|_slow_conv2d_.*"
    r"|_scaled_dot_product_.*|scaled_dot_product_attention)|mkldnn::.*|openhart::attention)$")
PROMPT = "a photo of a red fox sitting in fresh snow at dawn, soft light, high detail"


@dataclass
class BenchSettings:
    preset: str = "hart-0.7b"
    size: int = 1024
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    batch: int = 1
    low_memory: bool = False
    warmup: int = 1
    repeats: int = 3
    guidance_scale: float = 4.5
    text_encoder: str = "qwen2-1.5b"
    seed: int = 0
    matmul_size: int | None = None  # None: 2048 on the CPU, 8192 on GPUs
    profile: bool = False
    profile_top: int = 15
    compile: bool = False


# ----- machine rates ---------------------------------------------------------------------------------

def matmul_peak_tflops(dtype: torch.dtype, device: torch.device, size: int = MATMUL_SIZE,
                       repeats: int = 7, budget_s: float = 20.0) -> float:
    """Median TFLOP/s of a size^3 matmul (fewer repeats if one takes long). Where one product
    would take over a quarter of the budget (bf16 emulated on a CPU without native bf16: minutes
    at 2048), the side is halved until it fits; the rate is then that of the smaller product."""
    side = min(size, 256)
    while side < size and 2 * (2 * side) ** 3 / 1e12 / _matmul_rate(dtype, device, side, 1) < budget_s / 4:
        side *= 2
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    a @ b
    times, spent = [], 0.0
    while len(times) < repeats and (len(times) < 1 or spent < budget_s):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return 2 * side**3 / statistics.median(times) / 1e12


def _matmul_rate(dtype: torch.dtype, device: torch.device, side: int, repeats: int) -> float:
    """TFLOP/s of one warm side^3 product (a quick probe)."""
    a = torch.randn(side, side, device=device).to(dtype)
    a @ a
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    synchronize(device)
    return 2 * side**3 * repeats / (time.perf_counter() - start) / 1e12


def exp_rate(device: torch.device, numel: int = EXP_ELEMENTS, total: float = EXP_TOTAL) -> float:
    """Elements per second of torch.exp(x, out=y) on a contiguous fp32 tensor."""
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    torch.exp(x, out=y)
    rounds = max(1, int(total // numel))
    rates = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(rounds // 3 + 1):
            torch.exp(x, out=y)
        synchronize(device)
        rates.append((rounds // 3 + 1) * numel / (time.perf_counter() - start))
    return statistics.median(rates)


# ----- models with random weights ----------------------------------------------------------------------

def random_fill_(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Cheap random init for timing, in place and in the weights' dtype: N(0, 0.02) matrices
    and convs, unit norm weights, zero biases."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return module


def _materialize(module: torch.nn.Module, settings: BenchSettings, seed: int) -> torch.nn.Module:
    """A module built on the meta device, allocated directly in the target dtype and device."""
    module = module.to(dtype=settings.dtype).to_empty(device=settings.device)
    return random_fill_(module, torch.Generator(device=settings.device).manual_seed(seed))


def build_model(settings: BenchSettings) -> HARTModel:
    config: HARTConfig = hart_tiny() if settings.preset == "tiny" else hart_0p7b(settings.size)
    with torch.device("meta"):
        model = HARTModel(config)
    model = _materialize(model, settings, settings.seed).eval()
    use_channels_last(model.tokenizer)  # as loading does
    if settings.compile:
        model.transformer.compile_regions()
    return model


def build_text_encoder(settings: BenchSettings, config: HARTConfig) -> HFPromptEncoder | None:
    """A random Qwen2 of Qwen2-1.5B's size (tiny preset: a 2-layer one) over byte tokens."""
    # lazy: transformers adds ~2 s to every start of openhart
    from transformers import Qwen2Config, Qwen2Model

    if settings.text_encoder == "none":
        return None
    arch = dict(QWEN2_1P5B, hidden_size=config.transformer.context_dim)
    if settings.preset == "tiny":
        arch.update(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, vocab_size=300)
    qwen_config = Qwen2Config(**arch)
    with torch.device("meta"):
        encoder = Qwen2Model(qwen_config)
    encoder = _materialize(encoder, settings, settings.seed + 1)
    # RoPE frequencies are a non-persistent buffer: rebuild it for real.
    encoder.rotary_emb = type(encoder.rotary_emb)(config=qwen_config).to(settings.device)
    return HFPromptEncoder(encoder, byte_tokenizer(), config.transformer.context_tokens,
                           name=f"random Qwen2 ({settings.text_encoder})")


# ----- one measured generation ----------------------------------------------------------------------------

class _Probes:
    """Cumulative FLOP, attention-FLOP and score counts under a FlopCounterMode."""

    def __init__(self):
        self.attention_flops = 0
        self.scores = 0
        # Every SDPA backend (CPU flash, CUDA flash / memory-efficient / cuDNN) takes q, k, v first.
        self.mode = FlopCounterMode(display=False, custom_mapping={
            op: self._attention for op in SDPA_OPS if op is not None})

    def _attention(self, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        B, H, Lq, d = q_shape
        Lkv = k_shape[-2]
        self.scores += B * H * Lq * Lkv
        flops = 4 * B * H * Lq * Lkv * d
        self.attention_flops += flops
        return flops

    def read(self) -> dict[str, float]:
        return {"flops": self.mode.get_total_flops(), "attention_flops": self.attention_flops,
                "scores": self.scores}


def run_once(model: HARTModel, make_encoder: Callable[[], HFPromptEncoder | None],
             settings: BenchSettings, timer: PhaseTimer, *, reference_work: bool = False) -> dict:
    """One generation: encode the prompts, then sample; phase times go to `timer`.

    With `reference_work` the unconditional zeros are passed explicitly, which turns off the
    exact one-token shortcut for them (`HARTTransformer.forward_prefix`): the run then does the
    official algorithm's work, which is what the floor counts.
    """
    T, D = model.config.transformer.context_tokens, model.config.transformer.context_dim
    encoder = make_encoder()
    timer.start()
    if encoder is not None:
        cond = encoder.encode([PROMPT] * settings.batch)
        context, positions = cond.features, cond.position_ids
    else:
        context = torch.randn(settings.batch, T, D, device=settings.device)
        positions = torch.arange(T, device=settings.device).expand(settings.batch, -1)
    timer.mark("text")
    if settings.low_memory:
        del encoder
        gc.collect()
    uncond = ({"uncond_context_BTD": torch.zeros_like(context),
               "uncond_position_ids_BT": torch.zeros_like(positions)} if reference_work else {})
    generate(model, context, positions, SamplingConfig(guidance_scale=settings.guidance_scale),
             torch.Generator(device=settings.device).manual_seed(settings.seed),
             on_scale=lambda record: timer.mark(PHASES[record.stage].format(si=record.si)), **uncond)
    timer.mark("decode")  # the decoder is the last step of `generate`
    return dict(timer.seconds)


# The timer's phase for each kind of `ScaleRecord`: a scale's transformer pass and draw, or the
# residual head's sampling at the last scale.
PHASES = {"codes": "scale_{si}", "residual": "diffusion"}


class _CountingTimer(PhaseTimer):
    """A PhaseTimer that also charges FLOP/score counts to the phase of each mark."""

    def __init__(self, device, probes: _Probes):
        super().__init__(device)
        self.probes = probes
        self.counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._last_counts = probes.read()

    def mark(self, name: str) -> None:
        super().mark(name)
        now = self.probes.read()
        for key, value in now.items():
            self.counts[name][key] += value - self._last_counts[key]
        self._last_counts = now


def run_bench(settings: BenchSettings) -> dict:
    """Build, warm up, time `repeats` runs, count FLOPs once; return the JSON-ready result."""
    encoder_log = logging.getLogger("openhart.text.encoder")
    level = encoder_log.level
    encoder_log.setLevel(logging.ERROR)  # the benchmark prompt is truncated on purpose
    try:
        return _run_bench(settings)
    finally:
        encoder_log.setLevel(level)


def _run_bench(settings: BenchSettings) -> dict:
    torch.manual_seed(settings.seed)
    model = build_model(settings)
    encoder = None if settings.low_memory else build_text_encoder(settings, model.config)

    def make_encoder():
        return build_text_encoder(settings, model.config) if settings.low_memory else encoder

    for _ in range(settings.warmup):
        run_once(model, make_encoder, settings, PhaseTimer(settings.device))
    runs = []
    for _ in range(settings.repeats):
        runs.append(run_once(model, make_encoder, settings, PhaseTimer(settings.device)))
    probes = _Probes()
    counting = _CountingTimer(settings.device, probes)
    with probes.mode:
        run_once(model, make_encoder, settings, counting, reference_work=True)
    gpu = settings.device.type != "cpu"
    size = settings.matmul_size or (GPU_MATMUL_SIZE if gpu else MATMUL_SIZE)
    rates = {
        "bf16": matmul_peak_tflops(torch.bfloat16, settings.device, size),
        "fp32": matmul_peak_tflops(torch.float32, settings.device, size),
    }
    exp_per_s = exp_rate(settings.device, GPU_EXP_ELEMENTS if gpu else EXP_ELEMENTS,
                         max(EXP_TOTAL, 4 * GPU_EXP_ELEMENTS) if gpu else EXP_TOTAL)
    result = summarize(settings, runs, counting.counts, rates, exp_per_s)
    if settings.profile:
        result.update(profile_run(model, make_encoder, settings))
    return result


def kernel_kind(name: str) -> str:
    """The kind of a profiler op: matmul, convolution, attention (kernel work) or other."""
    if not KERNEL_OP_PATTERN.match(name):
        return "other"
    if "scaled_dot_product" in name or name == "openhart::attention":
        return "attention"
    if "conv" in name:
        return "convolution"
    return "matmul"


def profile_run(model: HARTModel, make_encoder: Callable[[], HFPromptEncoder | None],
                settings: BenchSettings) -> dict:
    """One more generation under torch.profiler.

    Returns `profile` (the `profile_top` ops by self time: name, kind, seconds, calls),
    `profile_wall_s` (the profiled run's wall time, profiler overhead included), `kernel_s`
    (self time of matmul, convolution and attention ops) and `outside_kernels_s` = wall - kernel.
    On GPUs self time is device time.
    """

    activities = [ProfilerActivity.CPU]
    gpu = settings.device.type == "cuda"
    if gpu:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run_once(model, make_encoder, settings, PhaseTimer(settings.device))
        synchronize(settings.device)
        wall = time.perf_counter() - start
    rows = []
    for event in prof.key_averages():
        self_us = event.self_device_time_total if gpu else event.self_cpu_time_total
        if self_us > 0:
            rows.append({"name": event.key, "kind": kernel_kind(event.key), "seconds": self_us / 1e6,
                         "calls": event.count})
    rows.sort(key=lambda r: r["seconds"], reverse=True)
    kernel = sum(r["seconds"] for r in rows if r["kind"] != "other")
    by_kind = defaultdict(float)
    for r in rows:
        by_kind[r["kind"]] += r["seconds"]
    return {"profile": rows[:settings.profile_top], "profile_wall_s": wall,
            "profile_seconds_by_kind": dict(by_kind), "kernel_s": kernel,
            "outside_kernels_s": max(0.0, wall - kernel)}


# ----- report ---------------------------------------------------------------------------------------

def _phase_groups(phases: list[str]) -> dict[str, list[str]]:
    groups = {"text": ["text"], "transformer": [p for p in phases if p.startswith("scale_")],
              "diffusion": ["diffusion"], "decode": ["decode"]}
    return {k: [p for p in v if p in phases] for k, v in groups.items()}


def summarize(settings: BenchSettings, runs: list[dict], counts: dict, rates: dict,
              exp_per_s: float) -> dict:
    phases = list(runs[0])
    median = {p: statistics.median(r[p] for r in runs) for p in phases}
    totals = [sum(r.values()) for r in runs]
    floor_dtype = "bf16" if has_native_bf16(settings.device) or settings.device.type == "cuda" else "fp32"
    peak = rates[floor_dtype]

    def floor(c: dict) -> float:
        non_attention = (c["flops"] - c["attention_flops"]) / 1e12 / peak
        attention = max(c["attention_flops"] / 1e12 / peak, c["scores"] / exp_per_s)
        return non_attention + attention

    phase_rows = {}
    for group, members in _phase_groups(phases).items():
        c = {k: sum(counts[m][k] for m in members) for k in ("flops", "attention_flops", "scores")}
        seconds = sum(median[m] for m in members)
        # phases run one after another, so each one's bound is paid in turn: a sum of per-phase floors
        group_floor = sum(floor(counts[m]) for m in members)
        phase_rows[group] = {"seconds": seconds, "tflop": c["flops"] / 1e12,
                             "attention_tflop": c["attention_flops"] / 1e12, "scores": c["scores"],
                             "floor_s": group_floor,
                             "fraction_of_limit": group_floor / seconds if seconds else 0.0}
    per_scale = {p: median[p] for p in phases if p.startswith("scale_")}
    total = {k: sum(counts[p][k] for p in phases) for k in ("flops", "attention_flops", "scores")}
    floor_s = sum(row["floor_s"] for row in phase_rows.values())
    total_s = statistics.median(totals)
    return {
        "preset": settings.preset, "size": settings.size if settings.preset != "tiny" else 64,
        "dtype": str(settings.dtype).removeprefix("torch."), "device": str(settings.device),
        "batch": settings.batch, "low_memory": settings.low_memory, "repeats": settings.repeats,
        "compile": settings.compile,
        "native_bf16": has_native_bf16(settings.device),
        "attention_path": attention_path(settings.device, settings.dtype),
        "total_s": total_s, "total_s_runs": totals,
        "phases": {k: v["seconds"] for k, v in phase_rows.items()}, "phase_details": phase_rows,
        "per_scale_s": per_scale,
        "flops": {k: v["tflop"] for k, v in phase_rows.items()},
        "attention_tflop": total["attention_flops"] / 1e12, "attention_scores": total["scores"],
        "total_tflop": total["flops"] / 1e12,
        "peak_tflops": rates, "exp_rate": exp_per_s,
        "floor_dtype": floor_dtype, "floor_s": floor_s, "ratio_to_floor": total_s / floor_s if floor_s else float("inf"),
        "achieved_tflops": total["flops"] / 1e12 / total_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_device_memory_gib": (torch.cuda.max_memory_allocated(settings.device) / 2**30
                                   if settings.device.type == "cuda" else None),
        "images_per_s": settings.batch / total_s,
        "settings": {k: str(v) for k, v in asdict(settings).items()},
    }


def format_report(result: dict) -> str:
    lines = [
        f"openhart bench: {result['preset']} {result['size']}px {result['dtype']} on {result['device']}, "
        f"batch {result['batch']}{', low-memory' if result['low_memory'] else ''}"
        f"{', compiled' if result.get('compile') else ''} "
        f"(median of {result['repeats']})",
        f"machine: matmul peak bf16 {result['peak_tflops']['bf16']:.3g} TFLOP/s, fp32 "
        f"{result['peak_tflops']['fp32']:.3g} TFLOP/s; exp {result['exp_rate']:.3g}/s; native bf16: "
        f"{result['native_bf16']}; floor at the {result['floor_dtype']} peak; attention: "
        f"{result.get('attention_path', 'sdpa')}",
        f"{'phase':<12}{'seconds':>10}{'TFLOP':>10}{'attn TFLOP':>12}{'floor s':>10}{'of limit':>10}",
    ]
    for name, row in result["phase_details"].items():
        lines.append(f"{name:<12}{row['seconds']:>10.3f}{row['tflop']:>10.3f}{row['attention_tflop']:>12.3f}"
                     f"{row['floor_s']:>10.3f}{row['fraction_of_limit']:>10.1%}")
    lines.append(f"{'total':<12}{result['total_s']:>10.3f}{result['total_tflop']:>10.3f}"
                 f"{result['attention_tflop']:>12.3f}{result['floor_s']:>10.3f}"
                 f"{result['floor_s'] / result['total_s']:>10.1%}")
    memory = f"peak RSS {result['peak_rss_gib']:.2f} GiB"
    if result.get("peak_device_memory_gib") is not None:
        memory += f", peak GPU memory {result['peak_device_memory_gib']:.2f} GiB"
    lines.append(f"ratio to floor {result['ratio_to_floor']:.2f}; achieved {result['achieved_tflops']:.3g} "
                 f"TFLOP/s; {result['images_per_s']:.3g} images/s; {memory}")
    if "profile" in result:
        lines.append(f"profile of one more run: {result['profile_wall_s']:.3f} s wall, "
                     f"{result['kernel_s']:.3f} s in matmul/convolution/attention kernels, "
                     f"{result['outside_kernels_s']:.3f} s outside them")
        lines.append(f"{'op (by self time)':<56}{'kind':>12}{'seconds':>10}{'calls':>8}")
        for row in result["profile"]:
            lines.append(f"{row['name'][:55]:<56}{row['kind']:>12}{row['seconds']:>10.3f}{row['calls']:>8}")
    return "\n".join(lines)


def write_json(result: dict, path) -> None:
    write_json_file(path, json.loads(json.dumps(result, default=str)))
