"""The training loop shared by the tokenizer and the transformer: one process or many.

    grad_accum times:                             # gradient accumulation (default 1)
        batch = task.collate(stream.next_batch())
        loss, metrics = wrapped(batch, key)       # under bf16 autocast when asked
        (loss / grad_accum).backward()            # reduced across processes on the last one
    clip; optimizer.step(); scheduler.step(); ema.update()
    task.auxiliary_step(...)                      # e.g. the PatchGAN discriminator
    log / checkpoint / samples at their intervals

A `TrainingTask` supplies the model, the data and what is task-specific (samples, export). The
loop owns everything that must be exact across a resume: weights, EMA, optimizer, scheduler, step,
each process's data position and RNG states. Every random draw of a step is keyed by (seed,
step, example) inside the task, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function
from tqdm import tqdm

from ..data.stream import BatchStream
from ..device import has_native_bf16
from ..kernels import require_torch_compile_toolchain
from ..outputs import atomic_path, destination_lock
from ..serialization import CheckpointError
from .checkpoint import list_checkpoints, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .distributed import Distributed, unwrap
from .optim import EMA, build_optimizer, build_scheduler
from .train_config import OptimConfig, RunConfig

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
# The profiler ranges of one training step (`_train_step`), in order.
STEP_PHASES = ("openhart.data", "openhart.forward", "openhart.backward", "openhart.optimizer", "openhart.ema",
               "openhart.auxiliary")


class TrainingTask:
    """What a trainer needs from a task; see `TokenizerTask` and `TransformerTask`."""

    kind: str = ""
    export_name: str = "model"   # the folder of the run that `export` writes

    def build(self, device: torch.device) -> nn.Module:
        """The trainable module; its forward(batch, step) returns (loss, {name: value})."""
        raise NotImplementedError

    def shard_units(self, module: nn.Module) -> list[nn.Module]:
        """Submodules that FSDP shards separately (e.g. transformer blocks)."""
        return []

    def architecture(self) -> dict:
        """What a checkpoint must match to be resumed by this task."""
        raise NotImplementedError

    def dataset(self):
        raise NotImplementedError

    def collate(self, examples: list, device: torch.device):
        raise NotImplementedError

    def batch_counts(self, batch) -> dict[str, int]:
        """{"images": n, "tokens": n} of one process's batch, for throughput."""
        raise NotImplementedError

    def auxiliary_step(self, batch, step: int, dist: Distributed, ema: EMA | None) -> dict[str, float]:
        """Task-specific work after the optimiser step (`ema`: the run's averaged weights, which
        a task may edit where it replaces weights)."""
        return {}

    def interval_metrics(self, dist: Distributed) -> dict[str, float]:
        """Metrics accumulated since the last log line (collective: every process calls it)."""
        return {}

    def extra_state(self, dist: Distributed) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """Frozen weights a checkpoint must carry to be exported on its own (e.g. the tokenizer)."""
        return {}

    def saved_keys(self, model: nn.Module) -> set[str] | None:
        """The state-dict keys that checkpoints and the EMA hold (None: all). A fine-tune holds
        only what it trains; the rest comes back from its base model on resume."""
        return None

    def write_samples(self, step: int, state: dict[str, torch.Tensor], folder: Path) -> dict[str, float]:
        """Main process only: sample images (and their metrics) from the given weights."""
        return {}

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> Path:
        raise NotImplementedError


@dataclass
class TrainState:
    """Everything one training run holds between steps."""

    task: TrainingTask
    run: RunConfig
    optim: OptimConfig
    train_config: dict
    dist: Distributed
    wrapped: nn.Module              # the module as DDP / FSDP runs it
    model: nn.Module                # the same module, unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    stream: Any                     # openhart.data.stream.BatchStream
    params: list[nn.Parameter]      # the trained parameters (gradient clipping)
    saved_keys: set[str] | None     # what checkpoints hold (None: the whole state)
    step: int = 0

    @property
    def out(self) -> Path:
        return Path(self.run.output_dir)


def train(task: TrainingTask, run: RunConfig, optim: OptimConfig, train_config: dict, *,
          resume: str | None = "auto", quiet: bool = False) -> Path | None:
    """Run (or resume) a training run; returns the exported model folder on the main process.

    Args:
        train_config: the whole config as a dict, stored in checkpoints and run.json.
        resume: "auto" (the newest checkpoint of the run folder, if any), a checkpoint file or
            folder, or None (start afresh even if the run folder has checkpoints).
    """
    resume_from = _resume_source(resume, Path(run.output_dir) / CHECKPOINT_DIR)
    resumed = load_checkpoint(resume_from, task.architecture(), resume=True) if resume_from else None
    dist = Distributed.from_env(run.device)
    held = contextlib.ExitStack()
    try:
        held.enter_context(run_folder_lock(run.output_dir, dist.is_main))
        state = _setup(task, run, optim, train_config, dist)
        if resumed is not None:
            state.step = _restore(state, resumed)
            logger.info("resumed from %s at step %d", resume_from, state.step)
        if dist.is_main:
            state.out.mkdir(parents=True, exist_ok=True)
            _write_run_file(state.out / "run.json", train_config)
            _truncate_metrics(state.out / METRICS_FILE, state.step)
        writer = _tensorboard(state.out, run.tensorboard) if dist.is_main else None
        autocast = autocast_context(run.precision, dist.device)
        if run.precision == "auto":
            logger.info("precision auto: %s on %s", resolved_precision(run.precision, dist.device), dist.device)
        bar = tqdm(total=run.steps, initial=state.step, disable=quiet or not dist.is_main, file=sys.stderr,
                   desc=f"train {task.kind}", dynamic_ncols=True)
        window = _Window()
        while state.step < run.steps:
            counts, metrics = _train_step(state, autocast)
            window.add(counts, metrics, dist.world_size)
            bar.update(1)
            step = state.step
            if step % run.log_every == 0 or step == run.steps:
                _log(state, window, writer, bar)
                window = _Window()
            if step % run.checkpoint_every == 0 or step == run.steps:
                _save(state)
            if (run.sample_every and (step % run.sample_every == 0 or step == run.steps)) or step in run.sample_at:
                _write_samples(state)
        bar.close()
        weights = _full_weights(state.model, state.ema, state.saved_keys)
        exported = task.export(weights, state.out / task.export_name) if dist.is_main else None
        dist.barrier()
        if writer is not None:
            writer.close()
        return exported
    finally:
        held.close()
        dist.close()


def run_folder_lock(folder: str | os.PathLike, main: bool = True) -> contextlib.AbstractContextManager:
    """One writer per run folder: the main process holds `outputs.destination_lock` on it for the
    whole run, so that a second run into the same folder is refused at once instead of mixing its
    checkpoints and metrics into this one's (the other processes of a run take none)."""
    if not main:
        return nullcontext()
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    return destination_lock(folder)


def _setup(task: TrainingTask, run: RunConfig, optim: OptimConfig, train_config: dict,
           dist: Distributed) -> TrainState:
    """The module (wrapped for DDP / FSDP), its optimizer, schedule and EMA, and the data stream."""
    if run.batch_size % dist.world_size:
        raise ValueError(f"the global batch size {run.batch_size} must be divisible by the "
                         f"number of processes {dist.world_size}")
    torch.manual_seed(run.seed)  # same initial weights in every process
    module = task.build(dist.device)
    wrapped = dist.wrap(module, run.parallel, task.shard_units(module))
    model = unwrap(wrapped)
    if run.compile:  # the unwrapped model keeps its own names for checkpoints and EMA
        if dist.device.type == "cpu":
            require_torch_compile_toolchain()
        wrapped = torch.compile(wrapped)
    optimizer = build_optimizer(model, optim.lr, optim.weight_decay, tuple(optim.betas))
    saved_keys = task.saved_keys(model)
    return TrainState(
        task=task, run=run, optim=optim, train_config=train_config, dist=dist, wrapped=wrapped, model=model,
        optimizer=optimizer, scheduler=build_scheduler(optimizer, optim.warmup_steps, run.steps, optim.min_lr_ratio),
        ema=EMA(model, optim.ema_decay, saved_keys) if optim.ema_decay > 0 else None,
        params=[p for p in model.parameters() if p.requires_grad], saved_keys=saved_keys,
        stream=BatchStream(task.dataset(), run.batch_size // dist.world_size, run.seed, dist.rank,
                           dist.world_size, prefetch=run.prefetch_batches))


def _train_step(state: TrainState, autocast) -> tuple[dict[str, int], dict]:
    """One optimisation step over `grad_accum` batches, then the task's auxiliary step; returns
    the step's example counts and its metrics (means over the batches). Each part runs under a
    profiler range named in `STEP_PHASES` (free unless a profiler is recording)."""
    state.wrapped.train()
    accum = state.run.grad_accum
    state.optimizer.zero_grad(set_to_none=True)
    counts, sums = {"images": 0, "tokens": 0}, {}
    for micro in range(accum):
        with record_function("openhart.data"):
            batch = state.task.collate(state.stream.next_batch(), state.dist.device)
        with _gradient_sync(state, micro == accum - 1):
            with autocast, record_function("openhart.forward"):
                # each batch of a step keys its random draws by its own index: with grad_accum 1
                # the key is the step itself
                loss, metrics = state.wrapped(batch, state.step * accum + micro)
            if not torch.isfinite(loss):
                raise ValueError(f"the loss is {loss.item()} at step {state.step}; lower the learning rate "
                                 "or check the data")
            with record_function("openhart.backward"):
                (loss / accum if accum > 1 else loss).backward()
        for key, value in {"loss": loss.detach(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value
        for key, value in state.task.batch_counts(batch).items():
            counts[key] += value
    with record_function("openhart.optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(state.params, state.optim.grad_clip or float("inf"))
        state.optimizer.step()
        state.scheduler.step()
    if state.ema is not None:
        with record_function("openhart.ema"):
            state.ema.update(state.model)
    metrics = {key: value / accum if accum > 1 else value for key, value in sums.items()}
    metrics["grad_norm"] = grad_norm
    # the auxiliary step (e.g. the PatchGAN discriminator) sees the step's last batch
    with record_function("openhart.auxiliary"):
        metrics.update(state.task.auxiliary_step(batch, state.step, state.dist, state.ema))
    state.step += 1
    return counts, metrics


def _gradient_sync(state: TrainState, sync: bool):
    """Gradients are reduced across processes only on the last batch of a step (DDP's no_sync,
    FSDP's requires_gradient_sync); a no-op in one process or on that last batch."""
    if sync or not state.dist.active:
        return nullcontext()
    if hasattr(state.wrapped, "no_sync"):
        return state.wrapped.no_sync()
    return _fsdp_no_sync(state.wrapped)


@contextmanager
def _fsdp_no_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


@dataclass
class _Window:
    """Sums of the metrics and counts since the last log line."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    images: int = 0
    tokens: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, counts: dict[str, int], metrics: dict, world_size: int) -> None:
        self.steps += 1
        self.images += counts["images"] * world_size
        self.tokens += counts["tokens"] * world_size
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)


def _log(state: TrainState, window: _Window, writer, bar) -> None:
    """Mean metrics of the window over all processes: metrics.jsonl, TensorBoard and the bar."""
    means = state.dist.mean({k: v / window.steps for k, v in window.sums.items()})
    means.update(state.task.interval_metrics(state.dist))
    seconds = max(time.perf_counter() - window.start, 1e-9)
    record = {"step": state.step, **means, "lr": state.scheduler.get_last_lr()[0],
              "images_per_s": window.images / seconds, "tokens_per_s": window.tokens / seconds,
              "seconds_per_step": seconds / window.steps}
    if not state.dist.is_main:
        return
    _append_metrics(state.out / METRICS_FILE, record)
    if writer is not None:
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(key, value, state.step)
    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}",
                    tok_s=f"{record['tokens_per_s']:.0f}")


def _write_samples(state: TrainState) -> None:
    """Samples (and their metrics) from the current weights, EMA when kept; main process only."""
    weights = _full_weights(state.model, state.ema, state.saved_keys)
    if state.dist.is_main:
        sample_metrics = state.task.write_samples(state.step, weights, state.out / "samples")
        if sample_metrics:
            _append_metrics(state.out / METRICS_FILE, {"step": state.step, **sample_metrics})
    state.dist.barrier()


# ----- helpers ---------------------------------------------------------------------------------------

def resolved_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": `precision` with "auto" decided for `device`."""
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(device) else "fp32"


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast when the (resolved) precision is bf16, else a no-op context."""
    if resolved_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def _resume_source(resume: str | None, ckpt_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(ckpt_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.exists():
        raise CheckpointError(f"resume path not found: {path}")
    return path


def _full_weights(model: nn.Module, ema: EMA | None, saved_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Full (unsharded) weights on CPU, EMA when there is one (collective under FSDP). When the
    EMA averages only the trained weights (`saved_keys`), the others are the model's own."""
    if ema is None:
        return _model_state(model)
    averaged = {k: _full(v) for k, v in ema.state_dict().items()}
    return averaged if saved_keys is None else {**_model_state(model), **averaged}


def _state_options():
    """Full (unsharded) state dicts; with a process group, gathered on CPU of the main process."""
    # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_state_options())
    return {k: v.detach().cpu() for k, v in state.items()}


def _saved(state: dict[str, torch.Tensor], keys: set[str] | None) -> dict[str, torch.Tensor]:
    return state if keys is None else {k: v for k, v in state.items() if k in keys}


def _full(tensor: torch.Tensor) -> torch.Tensor:
    # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def _save(state: TrainState) -> None:
    """A checkpoint of everything a resume needs (collective: every process gathers its part)."""
    # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    task, dist, ema = state.task, state.dist, state.ema
    checkpoint = {
        "kind": task.kind,
        "config": task.architecture(),
        "train_config": state.train_config,
        "model": _saved(_model_state(state.model), state.saved_keys),
        "optimizer": get_optimizer_state_dict(state.model, state.optimizer, options=_state_options()),
        "scheduler": state.scheduler.state_dict(),
        "ema": {k: _full(v) for k, v in ema.state_dict().items()} if ema is not None else None,
        "frozen": task.frozen_state(),
        "extra": task.extra_state(dist),
        "world_size": dist.world_size,
        "data_positions": dist.gather_objects(state.stream.state_dict()),
        "rng": dist.gather_objects(rng_states()),
    }
    if dist.is_main:
        save_checkpoint(state.out / CHECKPOINT_DIR, state.step, checkpoint, keep_last=state.run.keep_checkpoints)
    dist.barrier()


def _restore(state: TrainState, checkpoint: dict) -> int:
    """Load a checkpoint into the run's state; returns its step."""
    # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    task, dist = state.task, state.dist
    if checkpoint.get("kind") != task.kind:
        raise CheckpointError(f"the checkpoint is from {checkpoint.get('kind')!r} training, not {task.kind!r}")
    if state.saved_keys is not None and set(checkpoint["model"]) != state.saved_keys:
        raise CheckpointError("the checkpoint holds other trained weights than this run trains "
                              f"({len(checkpoint['model'])} against {len(state.saved_keys)}); start a new run")
    set_state_dict(state.model, state.optimizer, model_state_dict=checkpoint["model"],
                   optim_state_dict=checkpoint["optimizer"],
                   options=StateDictOptions(full_state_dict=True, strict=state.saved_keys is None))
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    if state.ema is not None:
        if checkpoint.get("ema") is None:
            raise CheckpointError("the checkpoint has no EMA weights but this run keeps them "
                                  "(set optim.ema_decay to 0, or start afresh)")
        _restore_ema(state.ema, checkpoint["ema"])
    task.load_extra_state(checkpoint.get("extra", {}))
    stream = state.stream
    if checkpoint["world_size"] == dist.world_size:
        stream.position = type(stream.position)(**checkpoint["data_positions"][dist.rank])
        restore_rng_states(checkpoint["rng"][dist.rank])
    else:
        epoch = max(p["epoch"] for p in checkpoint["data_positions"]) + 1
        logger.warning("the checkpoint was written by %d processes and this run has %d: the data "
                       "stream restarts at epoch %d", checkpoint["world_size"], dist.world_size, epoch)
        stream.position = type(stream.position)(epoch, 0)
    return int(checkpoint["step"])


def _restore_ema(ema: EMA, full_shadow: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) EMA weights, sharded like the current ones under FSDP."""
    # lazy: torch.distributed adds ~1.4 s to every start; only training needs it
    from torch.distributed.tensor import DTensor, distribute_tensor

    shadow = {}
    for key, current in ema.state_dict().items():
        full = full_shadow[key].to(device=current.device if not isinstance(current, DTensor)
                                   else current.to_local().device)
        shadow[key] = (distribute_tensor(full, current.device_mesh, current.placements)
                       if isinstance(current, DTensor) else full)
    ema.load_state_dict(shadow)


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after `step` (written by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _write_run_file(path: Path, train_config: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(train_config, indent=2) + "\n", encoding="utf-8")


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        # lazy: tensorboard is optional
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("run.tensorboard is on but the tensorboard package is not installed "
                       "(pip install tensorboard); metrics go to %s only", out / METRICS_FILE)
        return None
    return SummaryWriter(str(out / "tensorboard"))
