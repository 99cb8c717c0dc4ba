"""2 CPU processes (torchrun, gloo) against 1: same global batch and seed, same losses.

Tolerance: relative 1e-4 on every logged loss of every step. The processes average gradients in
another order than one process sums them, so the weights differ by float rounding after the
first step; nothing else may differ (every random draw is keyed by example, not by process).
"""

import pytest
import torch

from .conftest import metrics, openhart, tokenizer_config, transformer_config, write_config

LOSS_KEYS = {"transformer": ("loss", "ce", "diffusion", "accuracy"), "tokenizer": ("loss", "l2", "vq")}


def _compare(single, multi, keys):
    assert [m["step"] for m in single] == [m["step"] for m in multi]
    for a, b in zip(single, multi):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key, a[key], b[key])


@pytest.mark.parametrize("what,parallel", [("transformer", "ddp"), ("transformer", "fsdp"), ("tokenizer", "ddp")])
def test_two_processes_match_one(what, parallel, shapes_dir, latent_cache, tmp_path):
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        if what == "transformer":
            config = transformer_config(out, latent_cache, run={"steps": 5, "parallel": parallel})
        else:
            config = tokenizer_config(out, shapes_dir, run={"steps": 4, "parallel": parallel})
        path = write_config(tmp_path / f"c{procs}.json", config)
        result = openhart("train", what, "--config", str(path), "--quiet", torchrun=procs if procs > 1 else 0)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[procs] = metrics(out)
    _compare(runs[1], runs[2], LOSS_KEYS[what])
    assert runs[2][0]["images_per_s"] > 0
    checkpoint = torch.load(sorted((tmp_path / "run2" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["data_positions"]) == 2
