"""`openhart eval` end to end on a tiny trained model, with a small stand-in feature network."""

import json

import pytest
import torch

from openhart.cli import main
from openhart.config import config_to_dict
from openhart.data.synthetic import write_shapes
from openhart.train.config import TransformerTrainConfig, train_config_from_dict
from openhart.train.trainer import train
from openhart.train.transformer_task import TransformerTask

from .conftest import transformer_config


@pytest.fixture(scope="module")
def tiny_model_dir(latent_cache, tmp_path_factory):
    cfg = train_config_from_dict(TransformerTrainConfig, transformer_config(
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


def test_eval_writes_results_and_a_contact_sheet(tiny_model_dir, features_net, tmp_path, capsys):
    heldout = write_shapes(tmp_path / "heldout", count=100, size=64)
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(heldout), "--out", str(tmp_path / "ev"),
                 "--inception", str(features_net), "--long-steps", "12", "--batch-size", "50"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["images"] == 100
    assert set(results["reconstruction"]) == {"continuous", "discrete_only"}
    assert set(results["generation"]) == {"hybrid", "discrete_only", "hybrid_12_steps"}
    rec = results["reconstruction"]
    assert rec["continuous"]["psnr"] > rec["discrete_only"]["psnr"]  # the residual carries detail
    assert all(m["fid"] >= 0 for m in results["generation"].values())
    from PIL import Image
    sheet = Image.open(tmp_path / "ev" / "contact_sheet.png")
    assert sheet.size == (6 * 64 + 5 * 2, 8 * 64 + 7 * 2)
    assert "| reconstruction | rFID" in capsys.readouterr().out


def test_a_set_below_the_fid_minimum_says_so(tiny_model_dir, features_net, tmp_path, capsys):
    heldout = write_shapes(tmp_path / "small", count=20, size=64)
    code = main(["eval", "--model", str(tiny_model_dir), "--data", str(heldout), "--out", str(tmp_path / "ev"),
                 "--inception", str(features_net)])
    assert code == 2 and "has 20 images; FID and KID need at least 100" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
