"""The training loop shared by the tokenizer and the transformer: one process or many.

    batch = task.collate(stream.next_batch())
    loss, metrics = wrapped(batch, step)          # under bf16 autocast when asked
    loss.backward(); clip; optimizer.step(); scheduler.step(); ema.update()
    task.auxiliary_step(...)                      # e.g. the PatchGAN discriminator
    log / checkpoint / samples at their intervals

A `TrainingTask` supplies the model, the data and what is task-specific (samples, export). The
loop owns everything that must be exact across a resume: weights, EMA, optimizer, scheduler, step,
each process's data position and RNG states. Every random draw of a step is keyed by (seed,
step, example) inside the task, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..serialization import CheckpointError, atomic_path
from .checkpoint import list_checkpoints, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from .config import OptimConfig, RunConfig
from .distributed import Distributed, unwrap
from .optim import EMA, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


class TrainingTask:
    """What a trainer needs from a task; see `TokenizerTask` and `TransformerTask`."""

    kind: str = ""
    ema: "EMA | None" = None  # set by the trainer; a task may edit averaged weights it replaces

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

    def auxiliary_step(self, batch, step: int, dist: Distributed) -> dict[str, float]:
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

    def write_samples(self, step: int, state: dict[str, torch.Tensor], folder: Path) -> dict[str, float]:
        """Main process only: sample images (and their metrics) from the given weights."""
        return {}

    def export(self, state: dict[str, torch.Tensor], folder: Path) -> Path:
        raise NotImplementedError


def train(task: TrainingTask, run: RunConfig, optim: OptimConfig, train_config: dict, *,
          resume: str | None = "auto", quiet: bool = False) -> Path | None:
    """Run (or resume) a training run; returns the exported model folder on the main process.

    Args:
        train_config: the whole config as a dict, stored in checkpoints and run.json.
        resume: "auto" (the newest checkpoint of the run folder, if any), a checkpoint file or
            folder, or None (start afresh even if the run folder has checkpoints).
    """
    out = Path(run.output_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    resume_from = _resume_source(resume, ckpt_dir)
    resumed = load_checkpoint(resume_from, task.architecture()) if resume_from else None

    dist = Distributed.from_env(run.device)
    try:
        if run.batch_size % dist.world_size:
            raise ValueError(f"the global batch size {run.batch_size} must be divisible by the "
                             f"number of processes {dist.world_size}")
        torch.manual_seed(run.seed)  # same initial weights in every process
        module = task.build(dist.device)
        wrapped = dist.wrap(module, run.parallel, task.shard_units(module))
        model = unwrap(wrapped)
        optimizer = build_optimizer(model, optim.lr, optim.weight_decay, tuple(optim.betas))
        scheduler = build_scheduler(optimizer, optim.warmup_steps, run.steps, optim.min_lr_ratio)
        ema = EMA(model, optim.ema_decay) if optim.ema_decay > 0 else None
        task.ema = ema
        from ..data.stream import BatchStream

        stream = BatchStream(task.dataset(), run.batch_size // dist.world_size, run.seed,
                             dist.rank, dist.world_size, prefetch=run.prefetch_batches)
        step = 0
        if resumed is not None:
            step = _restore(resumed, model, optimizer, scheduler, ema, stream, task, dist)
            logger.info("resumed from %s at step %d", resume_from, step)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _write_run_file(out / "run.json", train_config)
            _truncate_metrics(out / METRICS_FILE, step)
        writer = _tensorboard(out, run.tensorboard) if dist.is_main else None

        autocast = autocast_context(run.precision, dist.device)
        if run.precision == "auto":
            logger.info("precision auto: %s on %s", resolved_precision(run.precision, dist.device),
                        dist.device)
        params = [p for p in model.parameters() if p.requires_grad]
        bar = tqdm(total=run.steps, initial=step, disable=quiet or not dist.is_main, file=sys.stderr,
                   desc=f"train {task.kind}", dynamic_ncols=True)
        window = {"start": time.perf_counter(), "steps": 0, "images": 0, "tokens": 0, "sums": {}}
        while step < run.steps:
            wrapped.train()
            batch = task.collate(stream.next_batch(), dist.device)
            with autocast:
                loss, metrics = wrapped(batch, step)
            if not torch.isfinite(loss):
                raise ValueError(f"the loss is {loss.item()} at step {step}; lower the "
                                         "learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip or float("inf"))
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            metrics = {"loss": loss.detach(), **metrics, "grad_norm": grad_norm}
            metrics.update(task.auxiliary_step(batch, step, dist))
            step += 1

            counts = task.batch_counts(batch)
            window["steps"] += 1
            window["images"] += counts["images"] * dist.world_size
            window["tokens"] += counts["tokens"] * dist.world_size
            for key, value in metrics.items():
                window["sums"][key] = window["sums"].get(key, 0.0) + float(value)
            bar.update(1)
            if step % run.log_every == 0 or step == run.steps:
                record = _log_record(step, window, dist, scheduler, task)
                if dist.is_main:
                    _append_metrics(out / METRICS_FILE, record)
                    if writer is not None:
                        for key, value in record.items():
                            if key != "step":
                                writer.add_scalar(key, value, step)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                window = {"start": time.perf_counter(), "steps": 0, "images": 0, "tokens": 0, "sums": {}}
            if step % run.checkpoint_every == 0 or step == run.steps:
                _save(ckpt_dir, step, model, optimizer, scheduler, ema, stream, task, dist, run,
                      train_config)
            if (run.sample_every and (step % run.sample_every == 0 or step == run.steps)) or step in run.sample_at:
                state = _full_weights(model, ema)
                if dist.is_main:
                    sample_metrics = task.write_samples(step, state, out / "samples")
                    if sample_metrics:
                        _append_metrics(out / METRICS_FILE, {"step": step, **sample_metrics})
                dist.barrier()
        bar.close()
        state = _full_weights(model, ema)
        exported = task.export(state, out / "model") if dist.is_main else None
        dist.barrier()
        if writer is not None:
            writer.close()
        return exported
    finally:
        dist.close()


# ----- helpers ---------------------------------------------------------------------------------------

def resolved_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": `precision` with "auto" decided for `device`."""
    if precision != "auto":
        return precision
    from ..device import has_native_bf16

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


def _full_weights(model: nn.Module, ema: EMA | None) -> dict[str, torch.Tensor]:
    """Full (unsharded) weights on CPU, EMA when there is one (collective under FSDP)."""
    if ema is not None:
        return {k: _full(v) for k, v in ema.state_dict().items()}
    return _model_state(model)


def _state_options():
    """Full (unsharded) state dicts; with a process group, gathered on CPU of the main process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    import torch.distributed as dist
    return StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_state_options())
    return {k: v.detach().cpu() for k, v in state.items()}


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu()


def _save(ckpt_dir: Path, step: int, model, optimizer, scheduler, ema, stream, task, dist, run,
          train_config) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    options = _state_options()
    state = {
        "kind": task.kind,
        "config": task.architecture(),
        "train_config": train_config,
        "model": _model_state(model),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
        "scheduler": scheduler.state_dict(),
        "ema": {k: _full(v) for k, v in ema.state_dict().items()} if ema is not None else None,
        "frozen": task.frozen_state(),
        "extra": task.extra_state(dist),
        "world_size": dist.world_size,
        "data_positions": dist.gather_objects(stream.state_dict()),
        "rng": dist.gather_objects(rng_states({})),
    }
    if dist.is_main:
        save_checkpoint(ckpt_dir, step, state, keep_last=run.keep_checkpoints)
    dist.barrier()


def _restore(state: dict, model, optimizer, scheduler, ema, stream, task, dist) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    from torch.distributed.tensor import DTensor, distribute_tensor

    if state.get("kind") != task.kind:
        raise CheckpointError(f"the checkpoint is from {state.get('kind')!r} training, not {task.kind!r}")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        if state.get("ema") is None:
            raise CheckpointError("the checkpoint has no EMA weights but this run keeps them "
                                  "(set optim.ema_decay to 0, or start afresh)")
        shadow = {}
        for key, current in ema.state_dict().items():
            full = state["ema"][key].to(device=current.device if not isinstance(current, DTensor)
                                        else current.to_local().device)
            shadow[key] = (distribute_tensor(full, current.device_mesh, current.placements)
                           if isinstance(current, DTensor) else full)
        ema.load_state_dict(shadow)
    task.load_extra_state(state.get("extra", {}))
    if state["world_size"] == dist.world_size:
        stream.position = type(stream.position)(**state["data_positions"][dist.rank])
        restore_rng_states({}, state["rng"][dist.rank])
    else:
        epoch = max(p["epoch"] for p in state["data_positions"]) + 1
        logger.warning("the checkpoint was written by %d processes and this run has %d: the data "
                       "stream restarts at epoch %d", state["world_size"], dist.world_size, epoch)
        stream.position = type(stream.position)(epoch, 0)
    return int(state["step"])


def _log_record(step: int, window: dict, dist: Distributed, scheduler, task) -> dict[str, float]:
    means = dist.mean({k: v / window["steps"] for k, v in window["sums"].items()})
    means.update(task.interval_metrics(dist))
    seconds = max(time.perf_counter() - window["start"], 1e-9)
    return {"step": step, **means, "lr": scheduler.get_last_lr()[0],
            "images_per_s": window["images"] / seconds, "tokens_per_s": window["tokens"] / seconds,
            "seconds_per_step": seconds / window["steps"]}


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
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("run.tensorboard is on but the tensorboard package is not installed "
                       "(pip install tensorboard); metrics go to %s only", out / METRICS_FILE)
        return None
    return SummaryWriter(str(out / "tensorboard"))
