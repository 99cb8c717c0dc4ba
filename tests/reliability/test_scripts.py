"""Every script under benchmarks/ and scripts/ runs (issue #26, item 8): a smoke test each, on the
tiny preset or the shipped model at its smallest size, seconds apiece, so that a refactor cannot
break a script unseen. The shell scripts, which drive long or GPU runs, are checked by `bash -n`.

Scripts with a fuller test elsewhere: scripts/fuzz.py (tests/reliability/test_fuzz.py),
benchmarks/train_throughput.py (tests/train/test_throughput.py), benchmarks/attention.py
(tests/unit/test_attention_bench.py), scripts/web_ui_screenshot.py's browser path
(tests/web/test_browser.py); they are listed here too, so that the list is the whole folder.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def run(args, tmp_path, timeout=300):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "OPENHART_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_memory_benchmark(tmp_path):
    result = json.loads(run(["benchmarks/memory.py", "--preset", "tiny", "--dtype", "fp32", "--json",
                             str(tmp_path / "m.json")], tmp_path))
    assert result["peak_rss_gib"] > 0 and result["gib"]["kv_cache"] > 0
    assert json.loads((tmp_path / "m.json").read_text()) == result


def test_profile_generate(tmp_path):
    out = run(["benchmarks/profile_generate.py", "--preset", "tiny", "--dtype", "fp32", "--rows", "3", "--out",
               str(tmp_path / "t.txt")], tmp_path)
    assert "Self CPU time total" in out and (tmp_path / "t.txt").is_file()


def test_decode_benchmark(tmp_path):
    out = run(["benchmarks/gpu_decode.py", "--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--batches",
               "1", "--repeats", "1"], tmp_path)
    assert "max |diff| 0.0000" in out


def test_attention_benchmark(tmp_path):
    run(["benchmarks/attention.py", "--size", "256", "--dtype", "fp32", "--scales", "0", "--paths", "sdpa",
         "--repeats", "1", "--json", str(tmp_path / "a.json")], tmp_path)
    assert json.loads((tmp_path / "a.json").read_text())


def test_train_throughput_benchmark(tmp_path):
    run(["-m", "openhart", "data", "shapes", str(tmp_path / "shapes"), "--count", "8"], tmp_path)  # data/ is not in git
    run(["benchmarks/train_throughput.py", "tokenizer", "configs/tokenizer-shapes.json", "--steps", "1",
         "--matmul-size", "128", "--set", "run.batch_size=2", "--set", f"data.path={tmp_path / 'shapes'}",
         "--json", str(tmp_path / "t.json")], tmp_path)
    assert json.loads((tmp_path / "t.json").read_text())


def test_emoji_samples(tmp_path):
    run(["scripts/emoji_samples.py", "--out", str(tmp_path / "s.png"), "--scale", "1"], tmp_path)
    with Image.open(tmp_path / "s.png") as image:
        assert image.width > 64 and image.height > 64


def test_editing_figure(tmp_path):
    run(["scripts/editing_figure.py", "--out", str(tmp_path / "e.png"), "--scale", "1"], tmp_path)
    assert Image.open(tmp_path / "e.png").size[0] > 64


def test_results_table(tmp_path):
    (tmp_path / "shipped").mkdir()
    shutil.copyfile(ROOT / "docs" / "emoji-results.json", tmp_path / "shipped" / "results.json")
    out = run(["scripts/results_table.py", f"shipped={tmp_path / 'shipped'}"], tmp_path)
    assert out.startswith("| model | captions |") and "| shipped | heldout | discrete_only |" in out


def test_finetune_concept_data_and_measure(tmp_path):
    """`data`, then `measure` of a 2-step LoRA of the shipped model against a small shapes gallery
    standing for data/emoji, 2 seeds per prompt: the report and the figure are written."""
    concept = tmp_path / "concept"
    run(["scripts/finetune_concept.py", "data", "--out", str(concept)], tmp_path)
    assert len(list(concept.glob("*.png"))) == 8
    for split, count in (("train", 6), ("heldout", 4)):
        run(["-m", "openhart", "data", "shapes", str(tmp_path / "emoji" / split), "--count", str(count)], tmp_path)
    adapter = tmp_path / "adapter"
    run(["-m", "openhart", "finetune", str(concept), "--out", str(adapter), "--steps", "2", "--batch-size", "4",
         "--trigger", "zorbl", "--cache-dir", str(tmp_path / "cache"), "--quiet"], tmp_path)
    report, figure = tmp_path / "concept.json", tmp_path / "concept.png"
    run(["scripts/finetune_concept.py", "measure", "--adapter", str(adapter), "--concept", str(concept),
         "--emoji", str(tmp_path / "emoji"), "--seeds", "2", "--json", str(report), "--figure", str(figure)], tmp_path)
    result = json.loads(report.read_text())
    assert result["images_per_prompt"] == 2 and result["without_word_images"] == 8 * 2
    for key in ("draws_it_with_word", "draws_it_without_word"):
        assert all(0 <= result[key][model] <= 1 for model in ("base", "adapter"))
    assert 0 <= result["draws_it_ceiling"] <= 1 and result["without_word_mean_abs_pixel_difference"] >= 0
    assert Image.open(figure).size == (150 + 2 * 2 * 128 + 12, 18 + 4 * 128)


def test_fuzz_script(tmp_path):
    counts = [x for kind in ("config", "weights", "image", "flags", "edit", "outputs", "signals", "concurrency",
                             "bombs", "stalled", "official", "checkpoint", "records", "web")
              for x in (f"--{kind}", "1" if kind in ("config", "bombs", "records") else "0")]
    out = run(["scripts/fuzz.py", "--seed", "3", "--work", str(tmp_path / "fuzz"), *counts], tmp_path)
    assert "fuzz cases" in out


def test_web_ui_screenshot(tmp_path):
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (bash scripts/system-deps.sh)")
    run(["scripts/web_ui_screenshot.py", "--out", str(tmp_path / "w.png")], tmp_path, timeout=600)
    assert Image.open(tmp_path / "w.png").size[0] > 300


@pytest.mark.parametrize("script", sorted(str(p.relative_to(ROOT)) for folder in ("benchmarks", "scripts", "configs")
                                           for p in (ROOT / folder).glob("*.sh")))
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_script_has_a_smoke_test():
    here = Path(__file__).read_text()
    scripts = sorted(p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.py"))
    missing = [str(p.relative_to(ROOT)) for p in scripts if f'"{p.relative_to(ROOT)}"' not in here]
    assert not missing, f"scripts without a smoke test: {missing}"
