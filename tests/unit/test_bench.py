import json

import torch

from openhart.bench import BenchSettings, run_bench
from openhart.cli import main
from openhart.device import default_dtype, has_native_bf16

REQUIRED_KEYS = {"size", "dtype", "total_s", "phases", "flops", "attention_scores", "peak_tflops",
                 "exp_rate", "floor_s", "ratio_to_floor", "peak_rss_gib"}


def test_bench_smoke_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--warmup", "0", "--repeats", "1", "--dtype", "fp32",
                 "--matmul-size", "128", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(result)
    assert set(result["phases"]) == {"text", "transformer", "diffusion", "decode"}
    assert set(result["peak_tflops"]) == {"bf16", "fp32"}
    assert result["total_s"] > 0 and result["floor_s"] > 0 and result["ratio_to_floor"] > 0
    assert result["flops"]["transformer"] > 0 and result["attention_scores"] > 0
    assert "ratio to floor" in capsys.readouterr().out


def test_low_memory_and_attention_counts():
    settings = BenchSettings(preset="tiny", warmup=0, repeats=1, low_memory=True, matmul_size=128)
    result = run_bench(settings)
    # transformer attention: every scale attends to the text and all earlier scales
    T, pns = 6, (1, 2, 3, 4, 6, 8, 16)
    lengths = [T] + [p * p for p in pns[1:]]
    heads, batch, depth = 4, 2, 2  # CFG doubles the batch
    scores = sum(l * (sum(lengths[:i + 1])) for i, l in enumerate(lengths)) * heads * batch * depth
    text_scores = result["phase_details"]["text"]["scores"]
    transformer_scores = result["phase_details"]["transformer"]["scores"]
    assert transformer_scores == scores and text_scores > 0


def test_default_dtype_follows_the_hardware():
    cpu = torch.device("cpu")
    assert default_dtype(cpu) == (torch.bfloat16 if has_native_bf16(cpu) else torch.float32)
