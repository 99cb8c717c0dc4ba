import dataclasses

import pytest
import torch

from openhart.config import config_to_dict
from openhart.data.latent_cache import LatentCache, collate
from openhart.pipeline import HARTPipeline
from openhart.config import config_from_dict
from openhart.train.train_config import TransformerLossConfig, TransformerTrainConfig
from openhart.train.trainer import train
from openhart.train.transformer_task import TransformerTask, kept_token_count

from .conftest import make_cache, metrics, transformer_config


def _train(config: dict):
    cfg = config_from_dict(TransformerTrainConfig, config)
    return train(TransformerTask(cfg), cfg.run, cfg.optim, config_to_dict(cfg), quiet=True)


def test_cross_entropy_and_diffusion_loss_drop(latent_cache, tmp_path):
    config = transformer_config(tmp_path / "run", latent_cache, run={"steps": 60, "log_every": 10},
                                optim={"lr": 2e-3, "warmup_steps": 5, "ema_decay": 0.9})
    _train(config)
    lines = metrics(tmp_path / "run")
    first, last = lines[0], lines[-1]
    assert last["ce"] < first["ce"] - 0.5, [m["ce"] for m in lines]
    assert last["diffusion"] < 0.8 * first["diffusion"], [m["diffusion"] for m in lines]
    assert last["accuracy"] > first["accuracy"]
    assert {"images_per_s", "tokens_per_s", "lr", "grad_norm"} <= set(last)


def test_export_generates_images_through_the_pipeline(latent_cache, tmp_path):
    from openhart.cli import main
    config = transformer_config(tmp_path / "run", latent_cache, run={"steps": 4, "checkpoint_every": 2})
    exported = _train(config)
    assert (exported / "model.safetensors").is_file()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "exported")]) == 0
    assert main(["export", str(tmp_path / "run" / "checkpoints" / "ckpt-00000002.pt"),
                 str(tmp_path / "raw2"), "--weights", "raw"]) == 0
    for folder in (exported, tmp_path / "exported", tmp_path / "raw2"):
        # the folder names the text encoder its cache was made with (here the seeded random one)
        pipe = HARTPipeline.from_pretrained(folder, dtype=torch.float32)
        out = pipe("a red circle", seed=0)
        assert out.images[0].size == (64, 64)
    # the trainer's own export and `openhart export` of the last checkpoint are the same weights
    from safetensors.torch import load_file
    a, b = load_file(exported / "model.safetensors"), load_file(tmp_path / "exported" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --overwrite replaces the folder's own files only; a folder inside the run (not its
    # checkpoints) is a fine destination, the run itself is not
    (tmp_path / "exported" / "notes.md").write_text("mine")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "exported"), "--overwrite", "--weights", "raw"]) == 0
    assert (tmp_path / "exported" / "notes.md").read_text() == "mine"
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "run" / "model-raw"), "--weights", "raw"]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "run"), "--overwrite"]) == 2
    # a diverged checkpoint is refused, and nothing is written
    path = tmp_path / "run" / "checkpoints" / "ckpt-00000002.pt"
    state = torch.load(path, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, path)
    assert main(["export", str(path), str(tmp_path / "nan"), "--weights", "raw"]) == 2
    assert not (tmp_path / "nan").exists()


def test_export_records_the_consistent_last_scale_and_stores_half_precision(latent_cache, tmp_path):
    """Models openhart trains recommend the consistent last scale (and the run's other sampling
    settings); an fp16 export is half the size and loads back in the compute dtype."""
    import json

    from openhart.cli import main
    from openhart.loading import load_model

    config = transformer_config(tmp_path / "run", latent_cache, run={"steps": 2},
                                sampling={"guidance_scale": 2.0, "head_temperature": 0.5})
    exported = _train(config)
    recorded = json.loads((exported / "config.json").read_text())["sampling"]
    assert recorded["last_scale"] == "consistent" and recorded["guidance_scale"] == 2.0
    assert recorded["head_temperature"] == 0.5
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "half"), "--dtype", "fp16"]) == 0
    assert json.loads((tmp_path / "half" / "config.json").read_text())["sampling"] == recorded
    full_size = (exported / "model.safetensors").stat().st_size
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.55 * full_size
    full, half = load_model(exported), load_model(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    for (name, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        torch.testing.assert_close(b, a.half().float() if a.is_floating_point() else a, rtol=0, atol=0,
                                   msg=name)
    assert load_model(tmp_path / "half", dtype=torch.bfloat16).head.input_proj.weight.dtype == torch.bfloat16
    pipe = HARTPipeline.from_pretrained(tmp_path / "half", dtype=torch.float32)
    assert pipe.default_sampling.last_scale == "consistent"
    assert pipe("a red circle", seed=0).images[0].size == (64, 64)


def test_sample_steps_log_teacher_forced_accuracy_on_training_and_heldout_data(latent_cache, tmp_path):
    config = transformer_config(tmp_path / "run", latent_cache, heldout_cache=str(latent_cache),
                                run={"steps": 2, "sample_every": 2}, samples={"accuracy_examples": 6})
    _train(config)
    import json
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step_lines = [m for m in lines if "ce" in m]
    assert all(0 <= m["last_scale_accuracy"] <= 1 for m in step_lines)
    (sampled,) = [m for m in lines if "train_last_scale_top1" in m]
    assert sampled["step"] == 2
    # the held-out cache is the training cache here, and both use the same seeded subset
    assert sampled["heldout_last_scale_top1"] == sampled["train_last_scale_top1"]
    assert 0 <= sampled["train_all_scales_top1"] <= 1


def test_a_heldout_cache_of_other_scales_is_refused(latent_cache, shapes_dir, tiny_tokenizer_dir, tmp_path):
    other = make_cache(shapes_dir, tiny_tokenizer_dir, tmp_path / "c32", 32)
    with pytest.raises(ValueError, match="heldout_cache .* other scales or another text encoder"):
        TransformerTask(config_from_dict(TransformerTrainConfig, transformer_config(
            tmp_path / "run", latent_cache, heldout_cache=str(other))))


def _module(cache_path, **losses):
    cache = LatentCache(cache_path)
    task = TransformerTask(config_from_dict(TransformerTrainConfig, transformer_config(
        "unused", cache_path, losses={"min_kept_tokens": 16, **losses})))
    torch.manual_seed(0)
    module = task.build(torch.device("cpu"))
    batch = collate([cache.get(i) for i in range(4)], cache.patch_nums, torch.device("cpu"))
    return module, batch


def test_dropping_the_condition_is_the_unconditional_branch(latent_cache):
    module, batch = _module(latent_cache, cond_drop_rate=1.0, diffusion_code="ground_truth")
    loss, metrics_ = module(batch, 0)
    assert metrics_["dropped_text"] == 1.0
    other = dataclasses.replace(batch, context=torch.randn_like(batch.context),
                                position_ids=torch.randint(0, 8, batch.position_ids.shape))
    assert torch.equal(module(other, 0)[0], loss)  # the text is gone: features and positions
    kept, _ = _module(latent_cache, cond_drop_rate=0.0, diffusion_code="ground_truth")
    assert kept(batch, 0)[1]["dropped_text"] == 0.0


def test_losses_depend_on_the_example_not_on_its_batch(latent_cache):
    """Randomness keyed by (seed, step, example): a batch split in two gives the same losses."""
    module, batch = _module(latent_cache)
    whole = module(batch, 3)[1]
    halves = [module(_slice(batch, s), 3)[1] for s in (slice(0, 2), slice(2, 4))]
    for key in ("ce", "diffusion"):
        torch.testing.assert_close((halves[0][key] + halves[1][key]) / 2, whole[key], rtol=1e-5, atol=1e-6)


def _slice(batch, s):
    return dataclasses.replace(batch, indices=batch.indices[s], codes=[c[s] for c in batch.codes],
                               last_scale_input=batch.last_scale_input[s], context=batch.context[s],
                               position_ids=batch.position_ids[s])


def test_kept_token_count_follows_the_truncated_normal():
    cfg = TransformerLossConfig()
    counts = [kept_token_count(4096, cfg, torch.Generator().manual_seed(i)) for i in range(400)]
    assert min(counts) >= 32 and max(counts) <= 2048
    mean_rate = 1 - sum(counts) / len(counts) / 4096
    # mean of N(1, 0.25) truncated to [0.5, 1]: 1 - 0.25 * phi(0) / (Phi(0) - Phi(-2)) = 0.8206
    assert mean_rate == pytest.approx(0.8206, abs=0.015)
    everything = TransformerLossConfig(mask_rate_min=0.0, mask_rate_max=0.0)
    assert kept_token_count(256, everything, torch.Generator()) == 256


def test_progressive_resolution_continues_from_the_low_resolution_stage(shapes_dir, tiny_tokenizer_dir, tmp_path):
    low = make_cache(shapes_dir, tiny_tokenizer_dir, tmp_path / "c32", 32)
    assert LatentCache(low).patch_nums == (1, 2, 3, 4, 6, 8)
    _train(transformer_config(tmp_path / "low", low, run={"steps": 4}))
    full = make_cache(shapes_dir, tiny_tokenizer_dir, tmp_path / "c64", 64)
    stage2 = transformer_config(tmp_path / "high", full, run={"steps": 1},
                                init_from=str(tmp_path / "low" / "checkpoints"))
    task = TransformerTask(config_from_dict(TransformerTrainConfig, stage2))
    module = task.build(torch.device("cpu"))
    low_state = torch.load(sorted((tmp_path / "low" / "checkpoints").glob("*.pt"))[-1], weights_only=True)["ema"]
    for key, value in module.state_dict().items():
        assert torch.equal(value, low_state[key]), key
    _train(stage2)
    assert metrics(tmp_path / "high")[0]["step"] == 1


def test_activation_checkpointing_and_bf16_autocast_run(latent_cache, tmp_path):
    config = transformer_config(tmp_path / "run", latent_cache, checkpointing=True,
                                run={"steps": 2, "precision": "bf16"})
    _train(config)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics(tmp_path / "run"))


def test_a_compiled_run_learns_the_same_steps_and_saves_plain_names(latent_cache, tmp_path):
    from torch._dynamo.utils import counters

    from openhart.train.checkpoint import list_checkpoints, load_checkpoint

    runs = {}
    counters.clear()
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        # every last-scale token kept: one shape, so one compilation
        _train(transformer_config(out, latent_cache, run={"steps": 3, "compile": compiled, "checkpoint_every": 3},
                                  losses={"mask_rate_min": 0.0, "mask_rate_max": 0.0}))
        runs[compiled] = (metrics(out), load_checkpoint(list_checkpoints(out / "checkpoints")[-1], None))
    (eager, eager_ckpt), (compiled, compiled_ckpt) = runs[False], runs[True]
    # the same losses up to the compiled kernels' rounding, and checkpoints without _orig_mod names
    assert [m["loss"] for m in compiled] == pytest.approx([m["loss"] for m in eager], rel=1e-3)
    assert set(compiled_ckpt["model"]) == set(eager_ckpt["model"])
    assert not any("_orig_mod" in k for k in compiled_ckpt["model"])
    # the seeded generators stay out of the traced code (their draws run eagerly)
    breaks = [reason for reason in counters["graph_break"] if "Generator" in reason or "manual_seed" in reason]
    assert counters["graph_break"] and not breaks, breaks


def test_precision_auto_is_bf16_exactly_where_bf16_is_native(monkeypatch):
    from openhart.train import trainer
    from openhart.train.trainer import autocast_context, resolved_precision

    cpu = torch.device("cpu")
    assert resolved_precision("fp32", cpu) == "fp32" and resolved_precision("bf16", cpu) == "bf16"
    for native in (True, False):
        monkeypatch.setattr(trainer, "has_native_bf16", lambda device, native=native: native)
        assert resolved_precision("auto", cpu) == ("bf16" if native else "fp32")
        with autocast_context("auto", cpu):
            dtype = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        assert dtype == (torch.bfloat16 if native else torch.float32)
