"""`openhart eval` end to end on a tiny trained model, with a small stand-in feature network."""

import json

import pytest
import torch

from openhart.cli import main
from openhart.config import config_to_dict
from openhart.data.synthetic import write_shapes
from openhart.config import config_from_dict
from openhart.train.train_config import TransformerTrainConfig
from openhart.train.trainer import train
from openhart.train.transformer_task import TransformerTask

from .conftest import transformer_config


@pytest.fixture(scope="module")
def tiny_model_dir(latent_cache, tmp_path_factory):
    cfg = config_from_dict(TransformerTrainConfig, transformer_config(
        tmp_path_factory.mktemp("run") / "run", latent_cache, run={"steps": 2}))
    return train(TransformerTask(cfg), cfg.run, cfg.optim, config_to_dict(cfg), quiet=True)


@pytest.fixture(scope="module")
def features_net(tmp_path_factory):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU())
    path = tmp_path_factory.mktemp("net") / "features.pt"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(str(path))
    return path


def test_eval_writes_results_and_a_contact_sheet(tiny_model_dir, features_net, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    heldout = write_shapes(tmp_path / "heldout", count=100, size=64)
    train_folder = write_shapes(tmp_path / "train", count=120, size=64)
    variants = "discrete_only,hybrid_official,hybrid_consistent_temp0"
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(heldout), "--out", str(tmp_path / "ev"),
            "--train-data", str(train_folder), "--train-samples", "100", "--variants", variants,
            "--inception", str(features_net), "--batch-size", "50"]
    assert main(args) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["reconstruction"]["images"] == 100
    assert set(results["reconstruction"]) == {"images", "continuous", "discrete_only"}
    rec = results["reconstruction"]
    assert rec["continuous"]["psnr"] > rec["discrete_only"]["psnr"]  # the residual carries detail
    assert results["gallery"] == {"images": 220, "chance_top1": 1 / 220, "chance_top5": 5 / 220}
    assert set(results["splits"]) == {"heldout", "train"}
    for split in results["splits"].values():
        assert split["images"] == 100
        assert set(split["generation"]) == set(variants.split(","))
        assert set(split["accuracy"]) == {"last_scale_top1", "all_scales_top1"}
        assert set(split["reconstruction_retrieval"]) == {"continuous", "discrete_only"}
        assert all(0 <= a <= 1 for a in split["accuracy"].values())
        for m in [*split["generation"].values(), *split["reconstruction_retrieval"].values()]:
            assert 0 <= m["retrieval_top1"] <= m["retrieval_top5"] <= 1
            # a group holds the image itself, so grouped retrieval never ranks lower than strict
            assert m["retrieval_top1"] <= m["retrieval_grouped_top1"] <= m["retrieval_grouped_top5"]
            assert m["retrieval_top5"] <= m["retrieval_grouped_top5"]
        for m in split["generation"].values():
            assert m["fid"] >= 0
    # the recorded settings of each variant are the effective ones
    assert results["variants"]["hybrid_consistent_temp0"]["head_temperature"] == 0.0
    assert results["variants"]["hybrid_official"]["last_scale"] == "official"
    assert results["variants"]["discrete_only"]["use_residual"] is False
    assert results["variants"]["hybrid_official"]["use_residual"] is True
    from PIL import Image
    sheet = Image.open(tmp_path / "ev" / "contact_sheet.png")
    assert sheet.size == (6 * 64 + 5 * 2, 8 * 64 + 7 * 2)
    out = capsys.readouterr().out
    assert "| reconstruction | rFID" in out and "| train (100) | hybrid_official |" in out

    # a second run reuses the gallery features and gives the same numbers
    (gallery_file,) = (tmp_path / "cache" / "openhart" / "eval").glob("gallery-*.safetensors")
    written = gallery_file.stat().st_mtime_ns
    assert main(args) == 0
    assert gallery_file.stat().st_mtime_ns == written
    assert json.loads((tmp_path / "ev" / "results.json").read_text()) == results


def test_eval_tokenizer_measures_the_ceiling_of_a_model_or_tokenizer_folder(tiny_model_dir, tiny_tokenizer_dir,
                                                                           features_net, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    heldout = write_shapes(tmp_path / "heldout", count=100, size=64)
    train_folder = write_shapes(tmp_path / "train", count=110, size=64)
    for name, folder in (("model", tiny_model_dir), ("tokenizer", tiny_tokenizer_dir)):
        out = tmp_path / f"tok-{name}"
        args = ["eval-tokenizer", str(folder), "--data", str(heldout), "--train-data", str(train_folder),
                "--train-samples", "100", "--out", str(out), "--inception", str(features_net), "--quiet"]
        assert main(args) == 0, capsys.readouterr().err
        results = json.loads((out / "results.json").read_text())
        assert results["resolution"] == 64 and results["gallery_images"] == 210
        assert {k: v["images"] for k, v in results["splits"].items()} == {"heldout": 100, "train": 100}
        for split in results["splits"].values():
            assert split["continuous"]["psnr"] > split["discrete_only"]["psnr"]
            for path in ("continuous", "discrete_only"):
                m = split[path]
                assert m["rfid"] >= 0 and 0 < m["ssim"] <= 1
                assert 0 <= m["retrieval_top1"] <= m["retrieval_top5"] <= m["retrieval_grouped_top5"] <= 1
        assert "| train (100) | continuous |" in capsys.readouterr().out
    # the model folder's tokenizer is the one the model was trained with
    model_results = json.loads((tmp_path / "tok-model" / "results.json").read_text())
    assert model_results["splits"] == json.loads((tmp_path / "tok-tokenizer" / "results.json").read_text())["splits"]


def test_unknown_variant_is_a_clear_error(tiny_model_dir, features_net, tmp_path, capsys):
    heldout = write_shapes(tmp_path / "heldout", count=100, size=64)
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(heldout), "--out", str(tmp_path / "ev"),
                 "--inception", str(features_net), "--variants", "hybrid,mine"])
    assert code == 2 and "unknown evaluation variant(s) ['hybrid', 'mine']" in capsys.readouterr().err


def test_a_set_below_the_fid_minimum_says_so(tiny_model_dir, features_net, tmp_path, capsys):
    heldout = write_shapes(tmp_path / "small", count=20, size=64)
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(heldout), "--out", str(tmp_path / "ev"),
                 "--inception", str(features_net)])
    assert code == 2 and "has 20 images; FID and KID need at least 100" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_eval_curve_measures_retrieval_at_every_checkpoint(latent_cache, features_net, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = config_from_dict(TransformerTrainConfig, transformer_config(
        tmp_path / "run", latent_cache, run={"steps": 2, "checkpoint_every": 1, "sample_every": 2},
        samples={"prompts": ["a red circle"], "accuracy_examples": 4}))
    train(TransformerTask(cfg), cfg.run, cfg.optim, config_to_dict(cfg), quiet=True)
    heldout = write_shapes(tmp_path / "heldout", count=20, size=64)
    train_folder = write_shapes(tmp_path / "train", count=30, size=64)
    out = tmp_path / "curve.json"
    args = ["eval-curve", str(tmp_path / "run"), "--data", str(heldout), "--train-data", str(train_folder),
            "--out", str(out), "--train-samples", "25", "--inception", str(features_net), "--quiet",
            "--variant", "hybrid_consistent_temp0"]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert [p["step"] for p in result["points"]] == [1, 2]
    assert result["samples"] == 25 and result["gallery_images"] == 50
    for point in result["points"]:
        assert 0 <= point["retrieval_top1"] <= point["retrieval_top5"] <= 1
    # the run logged its teacher-forced accuracy at step 2 (a sample step), not at step 1
    assert "last_scale_top1" not in result["points"][0]
    assert 0 <= result["points"][1]["last_scale_top1"] <= 1
    assert "| step | top-1 | top-5 |" in capsys.readouterr().out
    # fixed seeds: the same curve again
    assert main(args) == 0
    assert json.loads(out.read_text()) == result


def test_eval_curve_without_checkpoints_is_a_clear_error(tmp_path, capsys):
    heldout = write_shapes(tmp_path / "heldout", count=4, size=64)
    (tmp_path / "empty").mkdir()
    assert main(["eval-curve", str(tmp_path / "empty"), "--data", str(heldout), "--train-data", str(heldout),
                 "--out", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoints" in err and "Traceback" not in err
    assert not (tmp_path / "c.json").exists()
