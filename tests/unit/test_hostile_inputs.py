"""Hostile but realistic inputs: each is refused with one line naming the file or the flag, and
nothing good is damaged (docs/reliability.md)."""

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from openhart.cli import main
from openhart.loading import load_model, save_model
from openhart.serialization import CheckpointError

from ..conftest import HART_TINY


@pytest.fixture
def model_dir(tmp_path):
    """An openhart folder of the tiny model, with a recorded text encoder and a model card."""
    folder = save_model(load_model(HART_TINY), tmp_path / "model",
                        text_encoder={"kind": "random", "seed": 0})
    (folder / "README.md").write_text("# tiny model card\n")
    return folder


def edit_weights(folder, change):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("change, message", [
    (lambda t: t["transformer.head.weight"].fill_(float("nan")), "NaN or infinite values in transformer.head.weight"),
    (lambda t: t["tokenizer.decoder.conv_out.weight"].view(-1)[0:1].fill_(float("inf")),
     "NaN or infinite values in tokenizer.decoder.conv_out.weight"),
    (lambda t: t.__setitem__("transformer.head.bias", t["transformer.head.bias"].to(torch.int64)),
     r"wrong tensor kinds: transformer.head.bias \(torch.int64"),
])
def test_broken_weights_are_refused_by_name(model_dir, change, message):
    edit_weights(model_dir, change)
    with pytest.raises(CheckpointError, match=message):
        load_model(model_dir)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(format_version=99), "format_version 99 is not one this openhart reads"),
    (lambda c: c["config"]["transformer"].update(context_tokens=10**9), "context_tokens must be between"),
    (lambda c: c["config"]["head"].update(num_train_timesteps=10**11), "num_train_timesteps must be between"),
    (lambda c: c["config"]["transformer"].update(norm_eps=float("nan")), "norm_eps must be between"),
    (lambda c: c["config"]["head"].update(residual_scale=float("inf")), "residual_scale must be between"),
])
def test_hostile_config_values_are_refused_before_building(model_dir, edit, message):
    config = json.loads((model_dir / "config.json").read_text())
    edit(config)
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(model_dir)


def test_a_json_list_config_names_the_file(model_dir, capsys):
    (model_dir / "config.json").write_text("[1, 2]")
    assert main(["generate", "x", "--model", str(model_dir), "--out", str(model_dir.parent / "x.png")]) == 2
    err = capsys.readouterr().err
    assert str(model_dir / "config.json") in err and "JSON object" in err


def test_convert_never_replaces_a_good_destination_with_a_broken_source(model_dir, tmp_path, capsys):
    good = tmp_path / "good"
    assert main(["convert", str(model_dir), str(good)]) == 0
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    edit_weights(broken, lambda t: t["transformer.head.weight"].fill_(float("nan")))
    assert main(["convert", str(broken), str(good), "--overwrite"]) == 2
    assert "NaN or infinite values" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"


def test_convert_overwrite_leaves_no_stale_files_and_carries_the_card_and_encoder(model_dir, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "hart_system_prompt.txt").write_text("stale")
    assert main(["convert", str(model_dir), str(dst), "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((dst / "config.json").read_text())["text_encoder"] == {"kind": "random", "seed": 0}
    assert stat.S_IMODE(dst.stat().st_mode) == 0o777 & ~_umask()
    assert main(["generate", "a red apple", "--model", str(dst), "--out", str(tmp_path / "a.png"),
                 "--head-steps", "1", "--quiet"]) == 0


def test_non_finite_results_are_an_error_not_a_black_image():
    from openhart.pipeline import HARTPipeline

    pipe = HARTPipeline.from_pretrained(HART_TINY, text_encoder="random", dtype=torch.float32)
    with torch.no_grad():  # weights that broke after loading (loading refuses NaN)
        pipe.model.tokenizer.decoder.conv_out.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="produced NaN or infinite values"):
        pipe("a red apple", seed=0, head_steps=1)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----- images ------------------------------------------------------------------------------------

def _write(kind, path):
    """An image file of a hostile kind; returns the error expected (None: it must be read)."""
    from PIL import Image

    if kind == "thin":
        Image.new("RGB", (2, 10000)).save(path)
        return "thinner than 16:1"
    if kind == "huge":
        Image.new("1", (20000, 20000)).save(path)  # a few kB on disk: Pillow's bomb check
        return "too large to decode safely"
    if kind == "bomb":
        Image.new("1", (16000, 6000)).save(path)  # 96 M pixels: past Pillow's warning threshold
        return "too large to decode safely"
    if kind == "long":
        Image.new("1", (16500, 2000)).save(path)
        return "at most 16384 per side"
    if kind == "truncated":
        Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
        path.write_bytes(path.read_bytes()[:60])
        return "cannot read"
    if kind == "not-an-image":
        path.write_bytes(b"GIF89a but not really")
        return "cannot read"
    if kind == "animated":
        frames = [Image.new("RGB", (48, 48), c) for c in ((255, 0, 0), (0, 0, 255))]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    elif kind == "16-bit":
        Image.new("I;16", (48, 40), 40000).save(path)
    elif kind == "cmyk":
        Image.new("CMYK", (40, 48), (0, 255, 255, 0)).save(path.with_suffix(".jpg"))
        path.with_suffix(".jpg").rename(path)
    return None


IMAGE_KINDS = ["thin", "huge", "bomb", "long", "truncated", "not-an-image", "animated", "16-bit", "cmyk"]


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_reconstruct_reads_or_refuses_each_image_kind_with_one_line(kind, tmp_path, capsys):
    path = tmp_path / "input.png"
    expected = _write(kind, path)
    code = main(["reconstruct", str(path), "--out-dir", str(tmp_path)])
    captured = capsys.readouterr()
    if expected is None:
        assert code == 0, captured.err
        assert (tmp_path / "input.recon-continuous.png").is_file()
    else:
        assert code == 2 and expected in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
        assert not list(tmp_path.glob("*.recon-*"))


def test_a_dataset_skips_hostile_images_and_keeps_going(tmp_path):
    from PIL import Image

    from openhart.data.datasets import ImageCaptionFolder

    folder = tmp_path / "data"
    folder.mkdir()
    for i, kind in enumerate(IMAGE_KINDS):
        _write(kind, folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(kind)
    Image.new("RGB", (80, 64), (0, 200, 0)).save(folder / "good.png")
    (folder / "good.txt").write_text("a green square")
    dataset = ImageCaptionFolder(folder, 32)
    samples = [dataset.load(i) for i in range(len(dataset))]
    read = sorted(s.caption for s in samples if s is not None)
    assert read == ["16-bit", "a green square", "animated", "cmyk"]
    assert dataset.skipped == 6
    assert all(s.image.shape == (3, 32, 32) for s in samples if s is not None)


def test_a_model_larger_than_the_free_memory_is_refused_before_allocating(model_dir, monkeypatch):
    import openhart.loading as loading

    monkeypatch.setattr(loading, "available_memory", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(CheckpointError, match="GiB are available here"):
        load_model(model_dir)


def test_a_full_disk_during_convert_is_one_line_and_damages_nothing(model_dir, tmp_path, monkeypatch, capsys):
    import errno

    import openhart.serialization as serialization

    good = tmp_path / "good"
    assert main(["convert", str(model_dir), str(good)]) == 0
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(good))

    monkeypatch.setattr(serialization, "save_file", full)
    assert main(["convert", str(model_dir), str(good), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_text_encoder_folder_with_pickled_weights_is_one_line(tmp_path):
    import pickle

    from transformers import Qwen2Config

    from openhart.text.encoder import load_prompt_encoder
    from openhart.text.random_encoder import byte_tokenizer

    folder = tmp_path / "encoder"
    Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)

    class Payload:  # what a hostile pytorch_model.bin would run on unpickling
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": Payload()}))
    with pytest.raises(ValueError, match="cannot load the text encoder from .*never runs pickled code"):
        load_prompt_encoder(folder, max_length=8)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_files_left_by_a_killed_writer_are_removed(tmp_path):
    from openhart.train.checkpoint import save_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".ckpt-00000100.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(folder, 200, {"model": {"w": torch.zeros(2)}})
    assert not stale.exists() and (folder / "ckpt-00000200.pt").is_file()


def test_finite_but_huge_weights_are_one_line_not_a_multinomial_crash(model_dir, tmp_path, capsys):
    """A flipped exponent bit gives a finite weight of ~1e38: the strict load accepts it, the
    logits overflow, and torch.multinomial would fail with an opaque RuntimeError."""
    edit_weights(model_dir, lambda t: t["transformer.head.weight"].view(-1)[:64].fill_(3e38))
    assert main(["generate", "a cat", "--model", str(model_dir), "--out", str(tmp_path / "x.png"), "--seed", "1",
                 "--head-steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "produced NaN or infinite values" in err and str(model_dir) in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
