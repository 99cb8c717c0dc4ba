import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "attention.py"


def _module():
    spec = importlib.util.spec_from_file_location("attention_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shapes_are_hart_s_cached_prefix_per_scale():
    shapes = _module().scale_shapes(256)
    assert [s["lq"] for s in shapes] == [n * n for n in (1, 2, 3, 4, 5, 7, 9, 12, 16)]
    assert shapes[0]["lkv"] == 300 + 1, "the text prefix and the first token"
    assert shapes[-1]["lkv"] == 300 + sum(n * n for n in (1, 2, 3, 4, 5, 7, 9, 12, 16))
    assert {(s["batch"], s["heads"], s["head_dim"]) for s in shapes} == {(2, 24, 64)}


def test_a_measured_row_is_exact_and_within_its_limit():
    bench = _module()
    shape = {"scale": 0, "batch": 2, "heads": 2, "lq": 4, "lkv": 9, "head_dim": 8}
    row = bench.measure(shape, torch.float32, peak_tflops=0.1, exp_per_s=1e9, repeats=1,
                        generator=torch.Generator().manual_seed(0))
    assert row["max_abs_error"] < 1e-5
    assert row["seconds"] > 0 and row["scores_per_s"] == 2 * 2 * 4 * 9 / row["seconds"]
    assert row["fraction_of_limit"] == row["limit_s"] / row["seconds"]


def test_every_cheap_candidate_is_exact_on_a_real_tail_shape():
    bench = _module()
    # Lq and Lkv of the 256-px scale 6 (81 queries, 2 heads of 64), which no block divides.
    shape = {"scale": 6, "batch": 2, "heads": 2, "lq": 81, "lkv": 465, "head_dim": 64}
    paths = ["sdpa", "chunked"] + (["kernel"] if bench.kernels.compiler() is not None else [])
    for path in paths:
        row = bench.measure(shape, torch.float32, peak_tflops=0.1, exp_per_s=1e9, repeats=1,
                            generator=torch.Generator().manual_seed(0), path=path)
        assert row["path"] == path and row["max_abs_error"] < 2e-6, row


def test_the_chunk_keeps_one_head_s_score_tile_within_a_quarter_of_l2():
    bench = _module()
    for lkv in (301, 3079, 9751):
        rows = bench.chunk_rows(lkv)
        assert rows * lkv * 4 <= bench.CHUNK_TILE_BYTES < 2 * rows * lkv * 4
        assert rows & (rows - 1) == 0  # a power of two
