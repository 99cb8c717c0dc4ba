"""The small emoji model that ships in the repository: present, small, loadable, usable offline."""

import json

import pytest
import numpy as np
import torch

from openhart import default_model
from openhart.cli import main
from openhart.pipeline import HARTPipeline


def test_the_shipped_model_is_complete_and_small():
    folder = default_model.default_model_dir()
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= 25 * 2**20, f"{total / 2**20:.1f} MB"
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # safetensors only
    config = json.loads((folder / "config.json").read_text())
    assert config["text_encoder"]["path"] == "all-MiniLM-L6-v2"
    assert (folder / "README.md").read_text().count("##") >= 4  # a model card with its sections


def test_generate_uses_the_shipped_model_by_default(tmp_path, capsys):
    assert main(["generate", "red apple", "--seed", "0", "--out", str(tmp_path / "apple.png"), "--quiet"]) == 0
    from PIL import Image
    image = Image.open(tmp_path / "apple.png")
    assert image.size == (64, 64)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
    assert pixels.std() > 10  # not a blank image


def test_the_pipeline_defaults_to_it_and_is_deterministic():
    pipe = HARTPipeline.from_pretrained()
    a = pipe(["red apple", "flag: Japan"], seed=3).images
    b = pipe(["red apple", "flag: Japan"], seed=3).images
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    assert a[0].tobytes() != a[1].tobytes()


def test_a_missing_shipped_file_says_how_to_restore_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(default_model, "__file__", str(tmp_path / "default_model.py"))
    with pytest.raises(FileNotFoundError, match="git checkout -- src/openhart/models"):
        default_model.default_model_dir()
    assert main(["generate", "red apple", "--out", str(tmp_path / "x.png")]) == 2
    assert "shipped default model is incomplete" in capsys.readouterr().err
