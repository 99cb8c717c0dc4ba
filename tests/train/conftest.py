"""Shared fixtures of the training tests: a synthetic dataset, a tiny tokenizer, a latent cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openhart.config import tokenizer_tiny
from openhart.data.latent_cache import build_latent_cache
from openhart.loading import save_tokenizer
from openhart.text.random_encoder import random_prompt_encoder
from openhart.tokenizer import HybridTokenizer
from openhart.train.tokenizer_task import open_dataset

from openhart.data.synthetic import write_shapes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes") / "data", count=8, size=64)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tokenizer = HybridTokenizer(tokenizer_tiny()).eval()
    with torch.no_grad():
        tokenizer.quantizer.codebook.weight.mul_(3.0)
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok") / "tokenizer")


def make_cache(shapes_dir: Path, tokenizer_dir: Path, out: Path, resolution: int) -> Path:
    from openhart.loading import load_tokenizer

    dataset = open_dataset(str(shapes_dir), resolution, random_crop=False)
    encoder = random_prompt_encoder(32, 8)
    path, _ = build_latent_cache((s for _, s in dataset.stream(0, 0)), out,
                                 tokenizer=load_tokenizer(tokenizer_dir), encoder=encoder,
                                 text_encoder_spec={"kind": "random", "seed": 0}, resolution=resolution,
                                 batch_size=3, shard_size=5)
    return path


@pytest.fixture(scope="session")
def latent_cache(shapes_dir, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return make_cache(shapes_dir, tiny_tokenizer_dir, tmp_path_factory.mktemp("cache") / "c64", 64)


def tokenizer_config(out: Path, images: Path, **sections) -> dict:
    config = {"run": {"output_dir": str(out), "steps": 6, "batch_size": 4, "log_every": 1,
                      "checkpoint_every": 100},
              "data": {"path": str(images), "resolution": 32},
              "optim": {"lr": 2e-3, "warmup_steps": 2, "ema_decay": 0.9}, "model": "tiny"}
    return _merge(config, sections)


def transformer_config(out: Path, cache: Path, **sections) -> dict:
    config = {"run": {"output_dir": str(out), "steps": 6, "batch_size": 4, "log_every": 1,
                      "checkpoint_every": 100},
              "cache": str(cache), "optim": {"lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9},
              "losses": {"min_kept_tokens": 16}, "model": "tiny"}
    return _merge(config, sections)


def _merge(config: dict, sections: dict) -> dict:
    """Update sections of a config: dicts are merged key by key, other values replace."""
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(name), dict):
            config[name].update(values)
        else:
            config[name] = values
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "loss" in json.loads(line)]


def openhart(*args: str, env: dict | None = None, torchrun: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process (as a user would), optionally under torchrun."""
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={torchrun}", "-m", "openhart"] if torchrun
               else [sys.executable, "-m", "openhart"])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def kill_after_checkpoint(args: list[str], run_dir: Path, step: int, timeout: float = 120) -> None:
    """Run `openhart ARGS` and SIGKILL it as soon as its run folder holds a checkpoint of `step`
    or later (the process must still be training then)."""
    import signal
    import time

    from openhart.train.checkpoint import list_checkpoints

    process = subprocess.Popen([sys.executable, "-m", "openhart", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list_checkpoints(run_dir / "checkpoints")
        if found and int(found[-1].stem.split("-")[1]) >= step:
            break
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
