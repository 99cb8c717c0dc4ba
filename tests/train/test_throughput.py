"""benchmarks/train_throughput.py: the trainer's own step, timed and profiled."""

import json
import subprocess
import sys

from openhart.train.train_config import TransformerTrainConfig, load_train_config
from openhart.train.throughput import training_throughput
from openhart.train.trainer import STEP_PHASES
from openhart.train.transformer_task import TransformerTask

from .conftest import REPO, transformer_config


def test_a_profiled_step_accounts_for_its_phases(latent_cache, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(transformer_config(tmp_path / "run", latent_cache)))
    config = load_train_config(TransformerTrainConfig, path, [])
    result = training_throughput(TransformerTask(config), config.run, config.optim, steps=2, warmup=1, profile=True,
                                 matmul_size=128)
    assert result["seconds_per_step"] > 0 and result["tflop_per_step"] > 0
    assert 0 < result["fraction_of_peak"] == result["fraction_of_fp32_peak"]
    phases = result["profile_phases_s"]
    assert set(phases) == set(STEP_PHASES)
    for name in ("openhart.data", "openhart.forward", "openhart.backward", "openhart.optimizer", "openhart.ema"):
        assert phases[name] > 0, name
    assert result["profile_self_s_by_kind"]["matmul"] > 0
    assert len(result["profile_top_ops"]) > 3 and not (tmp_path / "run").exists()  # nothing written


def test_the_benchmark_script_runs(latent_cache, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(transformer_config(tmp_path / "run", latent_cache)))
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "transformer", str(path),
                    "--steps", "1", "--profile", "--matmul-size", "128", "--json", str(out)], check=True, capture_output=True, timeout=600)
    assert json.loads(out.read_text())["profile_phases_s"]["openhart.backward"] > 0
