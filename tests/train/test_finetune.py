"""`openhart finetune` end to end on tiny data: LoRA and full fine-tuning of the official layout
(the hart-tiny conformance case standing in for the released weights), of an openhart folder and
of the shipped model; the latent cache reused and renewed; SIGKILL + resume exact; DDP with
LoRA; gradient accumulation; bad input as one line with exit code 2."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openhart import HARTPipeline
from openhart.config import MODEL_PRESETS
from openhart.loading import load_model, save_model
from openhart.lora import read_adapter, weights_probe
from openhart.lora.fingerprint import fingerprint
from openhart.hart_model import HARTModel
from openhart.train.checkpoint import load_checkpoint

from .conftest import kill_after_checkpoint, metrics, openhart

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "hart-tiny"
EXACT_KEYS = ("loss", "ce", "diffusion", "accuracy", "grad_norm", "lr")


def finetune_args(data, out, cache, *extra, model=FIXTURE) -> list[str]:
    """`openhart finetune` of hart-tiny (random text encoder) at 64 px, batch 4, LoRA rank 4."""
    args = ["finetune", str(data), "--out", str(out), "--cache-dir", str(cache), "--quiet", "--resolution", "64",
            "--batch-size", "4", "--lora-rank", "4"]
    if model is not None:
        args += ["--model", str(model), "--text-encoder", "random"]
    if "--full" in extra:
        args.remove("--lora-rank")
        args.remove("4")
    return [*args, *extra]


def finetune(data, out, cache, *extra, model=FIXTURE, torchrun=0, timeout=300):
    return openhart(*finetune_args(data, out, cache, *extra, model=model), torchrun=torchrun, timeout=timeout)


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines()
             if not line.startswith(("openhart: INFO", "openhart: WARNING: skipping unreadable image"))]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_lora_of_the_official_layout_end_to_end_and_the_cache_is_reused(shapes_dir, tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    result = finetune(shapes_dir, run, cache, "--steps", "6", "--trigger", "zq")
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = read_adapter(run)
    assert adapter.path == run / "lora" and adapter.record.resolution == 64
    assert adapter.record.patch_nums == [1, 2, 3, 4] and adapter.record.trigger_words == ["zq"]
    assert adapter.record.base_fingerprint == fingerprint(weights_probe(load_model(FIXTURE)))
    assert adapter.record.base_model == str(FIXTURE.resolve())
    assert (run / "samples.png").is_file() and len(metrics(run)) > 0
    checkpoint = load_checkpoint(run / "checkpoints")
    assert checkpoint["kind"] == "finetune" and all("lora_" in k for k in checkpoint["model"])
    # the adapter loads where adapters load, and changes the images
    pipe = HARTPipeline.from_pretrained(FIXTURE, text_encoder="random", dtype=torch.float32)
    before = pipe("a red circle", seed=0, output_type="pt").images
    pipe.load_lora_weights(run)
    assert not torch.equal(pipe("a red circle", seed=0, output_type="pt").images, before)
    # the same command again: the cache is reused and the finished run is not trained again
    (folder,) = cache.iterdir()
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    result = finetune(shapes_dir, run, cache, "--steps", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing the latent cache" in result.stderr
    assert list(cache.iterdir()) == [folder] and (folder / "manifest.json").stat().st_mtime_ns == stamp
    # a changed dataset (one more image) makes a new cache, never a stale one
    changed = tmp_path / "changed"
    shutil.copytree(shapes_dir, changed)
    shutil.copy(changed / "0000.png", changed / "0100.png")
    with open(changed / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "0100.png", "text": "a red circle again"}) + "\n")
    result = finetune(changed, tmp_path / "run2", cache, "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(cache.iterdir())) == 2


def test_full_fine_tuning_of_an_openhart_folder_writes_a_model(shapes_dir, tmp_path):
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_model(HARTModel(MODEL_PRESETS["tiny"]()), base, text_encoder={"kind": "random", "seed": 0,
                                                                     "context_tokens": 6, "context_dim": 32})
    run = tmp_path / "run"
    result = openhart("finetune", str(shapes_dir), "--out", str(run), "--model", str(base), "--full",
                      "--steps", "3", "--no-train-head", "--grad-accum", "2", "--batch-size", "4",
                      "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    tuned, original = load_model(run / "model").state_dict(), load_model(base).state_dict()
    assert all(torch.equal(tuned[k], original[k]) for k in original if k.startswith(("head.", "tokenizer.")))
    assert not torch.equal(tuned["transformer.blocks.0.attn.qkv.weight"], original["transformer.blocks.0.attn.qkv.weight"])
    assert json.loads((run / "model" / "config.json").read_text())["text_encoder"]["kind"] == "random"
    assert metrics(run)[-1]["images_per_s"] > 0


def test_the_shipped_model_fine_tunes_with_lora_and_full(shapes_dir, tmp_path):
    for kind in ("--lora-rank", "--full"):
        run = tmp_path / kind.strip("-")
        args = ["finetune", str(shapes_dir), "--out", str(run), "--steps", "2", "--batch-size", "4",
                "--cache-dir", str(tmp_path / "cache"), "--quiet", *([kind, "8"] if kind == "--lora-rank" else [kind])]
        result = openhart(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (run / ("lora" if kind == "--lora-rank" else "model")).is_dir() and (run / "samples.png").is_file()
    assert read_adapter(tmp_path / "lora-rank").record.base_model is None  # the shipped model
    result = openhart("generate", "red apple", "--lora", str(tmp_path / "lora-rank"), "--seed", "0",
                      "--out", str(tmp_path / "a.png"))
    assert result.returncode == 0, result.stderr
    # an adapter of the shipped model is refused by another model, with one line
    result = openhart("generate", "red apple", "--model", str(FIXTURE), "--text-encoder", "random",
                      "--lora", str(tmp_path / "lora-rank"), "--out", str(tmp_path / "b.png"))
    assert "was trained on base" in one_line_error(result) and not (tmp_path / "b.png").exists()


def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(shapes_dir, tmp_path):
    cache = tmp_path / "cache"
    steps = ["--steps", "40", "--checkpoint-every", "3", "--log-every", "1"]
    result = finetune(shapes_dir, tmp_path / "reference", cache, *steps)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = tmp_path / "killed"
    kill_after_checkpoint(finetune_args(shapes_dir, killed, cache, *steps), killed, 9)
    assert 9 <= load_checkpoint(killed / "checkpoints")["step"] < 40, "the run was not killed during training"
    assert not (killed / "lora").exists()
    result = finetune(shapes_dir, killed, cache, *steps)
    assert result.returncode == 0, result.stderr[-3000:]
    want, got = metrics(tmp_path / "reference"), metrics(killed)
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(want, got):
        for key in EXACT_KEYS:
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
    reference = load_file(tmp_path / "reference" / "lora" / "adapter_model.safetensors")
    resumed = load_file(killed / "lora" / "adapter_model.safetensors")
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_ddp_with_two_processes_and_lora_matches_one(shapes_dir, tmp_path):
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        result = finetune(shapes_dir, out, tmp_path / "cache", "--steps", "4", "--device", "cpu",
                          torchrun=procs if procs > 1 else 0)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[procs] = metrics(out)
    assert [m["step"] for m in runs[1]] == [m["step"] for m in runs[2]]
    for a, b in zip(runs[1], runs[2]):
        for key in ("loss", "ce", "diffusion", "accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    one, two = (load_file(tmp_path / f"run{n}" / "lora" / "adapter_model.safetensors") for n in (1, 2))
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_equals_one_larger_batch(latent_cache, tmp_path):
    from openhart.train.train_config import TransformerTrainConfig
    from openhart.train.trainer import train
    from openhart.train.transformer_task import TransformerTask

    from .conftest import transformer_config
    from openhart.config import config_from_dict

    weights = {}
    for batch, accum in ((8, 1), (4, 2)):
        out = tmp_path / f"b{batch}x{accum}"
        data = transformer_config(out, latent_cache, run={"steps": 2, "batch_size": batch, "grad_accum": accum},
                                  optim={"lr": 1e-3, "warmup_steps": 0, "ema_decay": 0.0},
                                  losses={"diffusion": 0.0, "cond_drop_rate": 0.0, "mask_rate_min": 0.0,
                                          "mask_rate_max": 0.0, "min_kept_tokens": 16})
        config = config_from_dict(TransformerTrainConfig, data)
        train(TransformerTask(config), config.run, config.optim, data, resume=None, quiet=True)
        weights[accum] = load_model(out / "model").state_dict()
        assert metrics(out)[0]["images_per_s"] > 0
    for key, value in weights[1].items():
        torch.testing.assert_close(weights[2][key], value, rtol=1e-4, atol=1e-5)


def _bad_inputs(shapes_dir: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    uncaptioned = tmp / "uncaptioned"
    uncaptioned.mkdir()
    shutil.copy(shapes_dir / "0000.png", uncaptioned / "a.png")
    unreadable = tmp / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"not a png")
    (unreadable / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
    return {
        "no captions": ([str(uncaptioned)], "have no caption"),
        "no readable image": ([str(unreadable)], "no readable image in"),
        "resolution not a prefix": ([str(shapes_dir), "--resolution", "80"], "cannot take 80x80 images"),
        "rank 0": ([str(shapes_dir), "--lora-rank", "0"], "argument --lora-rank: must be between 1 and 4096"),
        "rank larger than a layer": ([str(shapes_dir), "--lora-rank", "65"], "choose a rank of at most 64"),
        "missing data": ([str(tmp / "nowhere")], "not found"),
    }


@pytest.mark.parametrize("case", ["no captions", "no readable image", "resolution not a prefix", "rank 0",
                                  "rank larger than a layer", "missing data"])
def test_bad_input_is_one_line_and_leaves_no_run(case, shapes_dir, tmp_path):
    args, message = _bad_inputs(shapes_dir, tmp_path)[case]
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = openhart("finetune", *args, "--out", str(run), "--cache-dir", str(cache), "--model", str(FIXTURE),
                      "--text-encoder", "random", "--steps", "2", "--quiet",
                      *(["--resolution", "64"] if "--resolution" not in args else []))
    assert message in one_line_error(result)
    assert not run.exists()
    assert not cache.exists() or not [p for p in cache.iterdir()], "no half-written cache"


def test_corrupt_images_are_skipped_and_counted(shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "0003.png").write_bytes(b"broken")
    result = finetune(data, tmp_path / "run", tmp_path / "cache", "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 unreadable image(s)" in result.stderr
    assert read_adapter(tmp_path / "run").record.train["examples"] == 7


def test_a_folder_that_is_not_a_run_is_not_touched(shapes_dir, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    result = finetune(shapes_dir, run, tmp_path / "cache", "--steps", "2")
    assert "not an openhart finetune run" in one_line_error(result)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_run_resumes_only_with_its_base_and_kind(shapes_dir, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = finetune(shapes_dir, run, cache, "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    result = openhart("finetune", str(shapes_dir), "--out", str(run), "--cache-dir", str(cache), "--steps", "2",
                      "--quiet")  # the shipped model instead of hart-tiny
    assert "fine-tunes base" in one_line_error(result)
    result = finetune(shapes_dir, run, cache, "--steps", "2", "--full")
    assert "is a LoRA fine-tune" in one_line_error(result)


def _prior_images(folder: Path, count: int) -> Path:
    """Shapes that are not the training shapes: mirrored, with their own captions."""
    from PIL import Image

    from openhart.data.synthetic import write_shapes

    write_shapes(folder, count=count, size=64)
    lines = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        Image.open(path).transpose(Image.Transpose.TRANSPOSE).save(path)
        lines.append(json.dumps({"file_name": path.name, "text": f"a prior shape {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_prior_mixture_replays_every_prior_example_in_its_share(latent_cache, tiny_tokenizer_dir, tmp_path):
    from openhart.data.latent_cache import LatentCache
    from openhart.data.mixture import CacheMixture

    from .conftest import make_cache

    main = LatentCache(latent_cache)
    prior_images = _prior_images(tmp_path / "prior", 5)
    prior = LatentCache(make_cache(prior_images, tiny_tokenizer_dir, tmp_path / "prior-cache", 64))
    mixture = CacheMixture(main, prior, 0.5)
    assert len(main) == 8 and mixture.prior_per_epoch == 8 and len(mixture) == 16
    epochs = [mixture.epoch_indices(e, seed=3) for e in range(3)]
    for order in epochs:  # each epoch: every main example once, and its share of prior examples
        assert sorted(i for i in order if i < 8) == list(range(8)) and len(order) == 16
    # the prior is walked in seeded permutations: every example once before any twice
    walked = torch.tensor([i - 8 for order in epochs[:2] for i in order if i >= 8])
    assert sorted(torch.bincount(walked, minlength=5).tolist()) == [3, 3, 3, 3, 4]
    # a prior example is the prior cache's, under its own index (which keys its random draws)
    example, source = mixture.get(10), prior.get(2)
    assert example.index == 10 and torch.equal(example.codes, source.codes)
    assert torch.equal(example.context, source.context) and not torch.equal(example.codes, main.get(2).codes)
    # orders depend only on (seed, epoch); ranks split an epoch; a stream resumes at an offset
    assert mixture.epoch_indices(1, 3) == epochs[1] and mixture.epoch_indices(1, 4) != epochs[1]
    ranks = [[e.index for _, e in mixture.stream(1, 3, rank, 2)] for rank in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(epochs[1]) and len(ranks[0]) == 8
    assert [e.index for _, e in mixture.stream(1, 3, 1, 2, start=5)] == ranks[1][5:]
    assert CacheMixture(main, prior, 0.25).prior_per_epoch == 3
    with pytest.raises(ValueError, match="prior fraction"):
        CacheMixture(main, prior, 1.0)
    other = LatentCache(make_cache(prior_images, tiny_tokenizer_dir, tmp_path / "c32", 32))
    with pytest.raises(ValueError, match="other scales or another text encoder"):
        CacheMixture(main, other, 0.5)


def test_prior_data_trains_with_the_run_is_recorded_and_must_stay_on_resume(shapes_dir, tmp_path):
    prior = _prior_images(tmp_path / "prior", 6)
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = finetune(shapes_dir, run, cache, "--steps", "3", "--prior-data", str(prior), "--prior-fraction", "0.25",
                      "--log-every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cached 6 examples" in result.stderr and len(list(cache.iterdir())) == 2
    record = read_adapter(run).record.train["prior"]
    assert record == {"data": str(prior), "fraction": 0.25, "examples": 6}
    assert json.loads((run / "finetune.json").read_text())["prior_cache"] is not None
    # the same run with another prior (or none) would read another data order: refused
    for extra in (["--prior-data", str(prior), "--prior-fraction", "0.5"], []):
        result = finetune(shapes_dir, run, cache, "--steps", "4", *extra)
        assert "resume it with the same prior" in one_line_error(result)
    result = finetune(shapes_dir, tmp_path / "run2", cache, "--steps", "2", "--prior-fraction", "0.3")
    assert "--prior-fraction needs --prior-data" in one_line_error(result)
    assert not (tmp_path / "run2").exists()
