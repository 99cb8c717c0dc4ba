"""openhart's CPU attention kernel against SDPA and fp64, and the choice between them (issue #23)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openhart import attention, kernels
from openhart.config import hart_0p7b
from openhart.device import has_native_bf16
from openhart.pipeline import HARTPipeline

CPU = torch.device("cpu")
needs_compiler = pytest.mark.skipif(kernels.compiler() is None, reason="no C++ compiler to build the kernel")


def _schedule_sample() -> list[tuple[int, int, int]]:
    """(size, Lq, Lkv) of the first, a middle and the last two scales of every HART schedule."""
    sample = []
    for size in (256, 512, 1024):
        config = hart_0p7b(size)
        cached, shapes = config.transformer.context_tokens, []
        for pn in config.tokenizer.patch_nums:
            cached += pn * pn
            shapes.append((size, pn * pn, cached))
        sample += [shapes[0], shapes[len(shapes) // 2], shapes[-2], shapes[-1]]
    return sample


def _qkv(b, h, lq, lkv, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype) for n in (lq, lkv, lkv)]


def _reference(q, k, v, scale):
    return ((q.double() @ k.double().transpose(-1, -2)) * scale).softmax(-1) @ v.double()


def _kernel(q, k, v, scale, vnni=False):
    return kernels.load("attention").attention(q, k, v, scale, attention.Q_BLOCK, attention.KV_BLOCK, vnni)


@needs_compiler
@pytest.mark.parametrize("size,lq,lkv", _schedule_sample())
def test_fp32_matches_sdpa_on_hart_s_shapes(size, lq, lkv):
    # Two heads of the real 24 keep the test quick; every head runs the same code.
    q, k, v = _qkv(2, 2, lq, lkv, 64)
    out = _kernel(q, k, v, 0.125)
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=0.125)
    assert (out - sdpa).abs().max() < 2e-6
    assert (out.double() - _reference(q, k, v, 0.125)).abs().max() < 2e-6


@needs_compiler
@pytest.mark.parametrize("vnni", [False, pytest.param(True, marks=pytest.mark.skipif(
    not has_native_bf16(CPU), reason="the VNNI micro-kernels need AVX512-BF16 or AMX"))])
@pytest.mark.parametrize("size,lq,lkv", _schedule_sample()[4:8])  # the 512 px schedule
def test_bf16_matches_sdpa_within_bf16_rounding(size, lq, lkv, vnni):
    q, k, v = _qkv(2, 2, lq, lkv, 64, torch.bfloat16)
    exact = _reference(q, k, v, 0.125)
    out_error = (_kernel(q, k, v, 0.125, vnni).double() - exact).abs().max().item()
    sdpa_error = (F.scaled_dot_product_attention(q, k, v, scale=0.125).double() - exact).abs().max().item()
    # The output is rounded to bf16 (a relative step of 2^-8): both paths sit within a few steps.
    scale_of_output = exact.abs().max().item()
    assert out_error <= max(2 * sdpa_error, 4 * 2**-8 * scale_of_output)


@needs_compiler
@pytest.mark.parametrize("d", [16, 32, 64, 80])
def test_any_head_size_strides_and_block_tails(d):
    # Lq and Lkv are not multiples of the blocks; q is a strided view as the model's rearrange gives.
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 300, 3, 3, d, generator=g)  # (B, L, qkv, H, d)
    q = qkv[:, :257, 0].transpose(1, 2)
    k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
    assert not q.is_contiguous()
    out = _kernel(q, k, v, d**-0.5)
    assert out.shape == q.shape
    assert (out.double() - _reference(q, k, v, d**-0.5)).abs().max() < 2e-6


@needs_compiler
def test_bad_inputs_are_refused_in_words():
    q, k, v = _qkv(1, 2, 4, 8, 16)
    with pytest.raises(RuntimeError, match="share a dtype"):
        _kernel(q, k.double(), v, 0.25)
    with pytest.raises(RuntimeError, match="must be"):
        _kernel(q, k[:, :1], v, 0.25)
    with pytest.raises(RuntimeError, match="VNNI"):
        _kernel(q, k, v, 0.25, vnni=True)
    assert _kernel(q[:, :, :0], k, v, 0.25).shape == (1, 2, 0, 16)


def test_the_path_can_be_forced_and_a_wrong_name_is_refused(monkeypatch):
    monkeypatch.setenv("OPENHART_ATTENTION", "sdpa")
    assert attention.path_for(CPU, torch.float32) == "sdpa"
    monkeypatch.setenv("OPENHART_ATTENTION", "fast")
    with pytest.raises(ValueError, match="OPENHART_ATTENTION='fast'.*sdpa, kernel"):
        attention.path_for(CPU, torch.float32)


def test_without_a_compiler_sdpa_runs(monkeypatch):
    monkeypatch.setattr(kernels, "compiler", lambda: None)
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("OPENHART_ATTENTION", "kernel")
    assert attention.path_for(CPU, torch.float32) == "sdpa"
    q, k, v = _qkv(1, 2, 3, 5, 8)
    assert torch.equal(attention.attend(q, k, v, 0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3))


def test_fp32_takes_sdpa_without_building_the_kernel(monkeypatch):
    monkeypatch.delenv("OPENHART_ATTENTION", raising=False)
    monkeypatch.setattr(kernels, "load", lambda name: pytest.fail("the kernel was built"))
    assert attention.path_for(CPU, torch.float32) == "sdpa"
    monkeypatch.setenv("OPENHART_ATTENTION", "sdpa")
    assert attention.path_for(CPU, torch.bfloat16) == "sdpa"


def test_bf16_without_native_bf16_and_other_devices_take_sdpa(monkeypatch):
    monkeypatch.setenv("OPENHART_ATTENTION", "kernel")
    monkeypatch.setattr(attention, "has_native_bf16", lambda device: False)
    assert attention.path_for(CPU, torch.bfloat16) == "sdpa"
    assert attention.path_for(torch.device("meta"), torch.float32) == "sdpa"
    assert attention.path_for(CPU, torch.float16) == "sdpa"


@needs_compiler
def test_the_choice_is_measured_once_and_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENHART_CACHE", str(tmp_path))
    monkeypatch.delenv("OPENHART_ATTENTION", raising=False)
    monkeypatch.setattr(attention, "_chosen", {})
    monkeypatch.setattr(attention, "TUNE_SHAPE", (1, 1, 64, 200, 16))
    monkeypatch.setattr(attention, "MEASURED", (torch.float32,))
    timed = []
    monkeypatch.setattr(attention, "_best_time", lambda fn: timed.append(fn) or (1.0 if len(timed) == 1 else 0.5))
    assert attention.path_for(CPU, torch.float32) == "kernel"  # 0.5 s against SDPA's 1.0 s
    store = tmp_path / "kernels" / "attention-choice.json"
    [entry] = json.loads(store.read_text()).values()
    assert entry["path"] == "kernel" and entry["seconds"] == {"sdpa": 1.0, "kernel": 0.5}
    assert not list(store.parent.glob(f".{store.name}.*"))  # no partial file left beside it
    # A new process reads it back instead of timing again.
    monkeypatch.setattr(attention, "_chosen", {})
    assert attention.path_for(CPU, torch.float32) == "kernel" and len(timed) == 2


@needs_compiler
def test_a_damaged_choice_file_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENHART_CACHE", str(tmp_path))
    monkeypatch.delenv("OPENHART_ATTENTION", raising=False)
    monkeypatch.setattr(attention, "_chosen", {})
    monkeypatch.setattr(attention, "_best_time", lambda fn: 1.0)  # a tie keeps SDPA
    monkeypatch.setattr(attention, "MEASURED", (torch.float32,))
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "attention-choice.json").write_text("{not json")
    assert attention.path_for(CPU, torch.float32) == "sdpa"
    assert json.loads((tmp_path / "kernels" / "attention-choice.json").read_text())


@needs_compiler
def test_the_shipped_model_makes_the_same_images_on_either_path(monkeypatch):
    pipe = HARTPipeline.from_pretrained()
    images = {}
    for path in attention.PATHS:
        monkeypatch.setenv("OPENHART_ATTENTION", path)
        images[path] = [np.asarray(im, dtype=np.int16) for im in pipe(["red apple", "flag: Japan"], seed=3).images]
    for a, b in zip(images["sdpa"], images["kernel"]):
        assert np.abs(a - b).max() <= 1  # the same codes; the residual differs by fp32 rounding at most
