"""Kill a training run with SIGKILL and resume it: the losses equal an uninterrupted run's, exactly
(fp32 on CPU), and the newest checkpoint on disk is always readable."""

import pytest

from openhart.train.checkpoint import load_checkpoint

from .conftest import kill_after_checkpoint, metrics, openhart, tokenizer_config, transformer_config, write_config

EXACT_KEYS = {"transformer": ("loss", "ce", "diffusion", "accuracy", "grad_norm", "lr"),
              "tokenizer": ("loss", "l2", "vq", "grad_norm", "lr", "discrete_step")}


def _config(what, out, shapes_dir, latent_cache):
    run = {"steps": 120 if what == "transformer" else 40, "checkpoint_every": 3, "keep_checkpoints": 2,
           "log_every": 1}
    if what == "transformer":
        return transformer_config(out, latent_cache, run=run)
    return tokenizer_config(out, shapes_dir, run=run, data={"random_crop": True})


@pytest.mark.parametrize("what", ["transformer", "tokenizer"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(what, shapes_dir, latent_cache, tmp_path):
    reference = _config(what, tmp_path / "reference", shapes_dir, latent_cache)
    result = openhart("train", what, "--config", str(write_config(tmp_path / "ref.json", reference)), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    config = write_config(tmp_path / "killed.json", _config(what, killed_dir, shapes_dir, latent_cache))
    kill_after_checkpoint(["train", what, "--config", str(config), "--quiet"], killed_dir, 9)
    newest = load_checkpoint(killed_dir / "checkpoints")  # never corrupt, even mid-save
    assert 9 <= newest["step"] < reference["run"]["steps"], "the run was not killed during training"

    result = openhart("train", what, "--config", str(config), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    want, got = metrics(tmp_path / "reference"), metrics(killed_dir)
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(want, got):
        for key in EXACT_KEYS[what]:
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
