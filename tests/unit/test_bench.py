import json

import pytest
import torch

from openhart import kernels
from openhart.benchmark import BenchSettings, run_bench
from openhart.cli import main
from openhart.device import has_native_bf16

REQUIRED_KEYS = {"size", "dtype", "total_s", "phases", "flops", "attention_scores", "peak_tflops",
                 "exp_rate", "floor_s", "ratio_to_floor", "peak_rss_gib", "attention_path"}


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


@pytest.mark.parametrize("path", ["sdpa", pytest.param("kernel", marks=pytest.mark.skipif(
    kernels.compiler() is None, reason="no C++ compiler to build the kernel"))])
def test_low_memory_and_attention_counts(monkeypatch, path):
    monkeypatch.setenv("OPENHART_ATTENTION", path)
    settings = BenchSettings(preset="tiny", warmup=0, repeats=1, low_memory=True, matmul_size=128)
    result = run_bench(settings)
    # transformer attention: every scale attends to the text and all earlier scales
    T, pns = 6, (1, 2, 3, 4, 6, 8, 16)
    lengths = [T] + [p * p for p in pns[1:]]
    heads, batch, depth = 4, 2, 2  # CFG doubles the batch
    scores = sum(l * (sum(lengths[:i + 1])) for i, l in enumerate(lengths)) * heads * batch * depth
    text_scores = result["phase_details"]["text"]["scores"]
    transformer_scores = result["phase_details"]["transformer"]["scores"]
    assert transformer_scores == scores and text_scores > 0  # the kernel's calls are counted too
    assert result["attention_path"] == path


def test_floor_uses_the_fastest_native_dtype_and_profile_splits_kernel_time(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--warmup", "0", "--repeats", "1", "--dtype", "fp32",
                 "--matmul-size", "128", "--profile", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    native = has_native_bf16(torch.device("cpu"))
    assert result["floor_dtype"] == ("bf16" if native else "fp32")
    assert result["dtype"] == "float32"  # the run's dtype, measured against the floor's peak
    # the floor is the sum of the phases' floors; each phase's floor is at least the bound of its
    # summed counts at the floor dtype's peak (equal when one limit binds in all of its steps)
    peak = result["peak_tflops"][result["floor_dtype"]]
    rows = result["phase_details"].values()
    assert abs(sum(row["floor_s"] for row in rows) - result["floor_s"]) <= 1e-9 * result["floor_s"]
    for row in rows:
        attention = max(row["attention_tflop"] / peak, row["scores"] / result["exp_rate"])
        bound = (row["tflop"] - row["attention_tflop"]) / peak + attention
        assert bound <= row["floor_s"] * (1 + 1e-9) + 1e-12
        assert bound >= row["floor_s"] * (1 - 1e-9) - 1e-12 or row is result["phase_details"]["transformer"]
    assert result["ratio_to_floor"] == result["total_s"] / result["floor_s"]

    profile = result["profile"]
    assert 0 < len(profile) <= 15
    assert all(set(row) == {"name", "kind", "seconds", "calls"} for row in profile)
    assert [row["seconds"] for row in profile] == sorted((row["seconds"] for row in profile), reverse=True)
    kinds = {row["kind"] for row in profile}
    assert "matmul" in kinds or "attention" in kinds
    by_kind = result["profile_seconds_by_kind"]
    kernel = sum(v for k, v in by_kind.items() if k != "other")
    assert abs(result["kernel_s"] - kernel) < 1e-9
    assert 0 < result["kernel_s"] < result["profile_wall_s"]
    assert abs(result["outside_kernels_s"] - (result["profile_wall_s"] - result["kernel_s"])) < 1e-9
    printed = capsys.readouterr().out
    assert "outside them" in printed and "op (by self time)" in printed


def test_kernel_kinds_of_profiler_op_names():
    from openhart.benchmark import kernel_kind

    assert kernel_kind("aten::mm") == "matmul"
    assert kernel_kind("aten::addmm") == "matmul"
    assert kernel_kind("aten::bmm") == "matmul"
    assert kernel_kind("aten::mkldnn_convolution") == "convolution"
    assert kernel_kind("aten::_slow_conv2d_forward") == "convolution"
    assert kernel_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    for other in ("aten::copy_", "aten::mul", "aten::native_group_norm", "aten::cat", "aten::linear_backward",
                  "aten::mm_backward_hypothetical"):
        assert kernel_kind(other) == "other", other


def test_finetune_bench_smoke_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "finetune.json"
    for kind in ("lora", "full"):
        assert main(["bench", "--finetune", kind, "--preset", "tiny", "--steps", "1", "--dtype", "fp32",
                     "--matmul-size", "128", "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["finetune"] == kind and result["seconds_per_step"] > 0 and result["peak_memory_gib"] > 0
        assert result["tflop_per_step"] > 0 and result["checkpointing"] is True
        assert 0 < result["trainable_parameters"] <= result["total_parameters"]
        if kind == "lora":
            assert result["trainable_parameters"] < result["total_parameters"] / 4 and result["lora_rank"] == 16
        else:
            assert result["trainable_parameters"] == result["total_parameters"]
    assert "trainable parameters" in capsys.readouterr().out
    assert main(["bench", "--finetune", "lora", "--preset", "tiny", "--dtype", "fp16"]) == 2
