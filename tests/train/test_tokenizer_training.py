import pytest
import torch

from openhart.data.datasets import ImageCaptionFolder
from openhart.loading import load_tokenizer
from openhart.config import config_from_dict
from openhart.train.train_config import TokenizerTrainConfig
from openhart.metrics import psnr
from openhart.train.tokenizer_task import TokenizerTask, TokenizerTrainingModule
from openhart.train.trainer import train

from .conftest import metrics, tokenizer_config


def _train(config: dict):
    cfg = config_from_dict(TokenizerTrainConfig, config)
    from openhart.config import config_to_dict
    return train(TokenizerTask(cfg), cfg.run, cfg.optim, config_to_dict(cfg), quiet=True)


def _images(folder, resolution=32, count=4):
    data = ImageCaptionFolder(folder, resolution)
    return torch.stack([data.load(i).image for i in range(count)])


def reconstruction_metrics(tokenizer, images: torch.Tensor) -> dict[str, float]:
    """PSNR of the continuous and the discrete-only reconstructions of images in [-1, 1]."""
    with torch.no_grad():
        tokens = tokenizer.encode(images)
        target = (images + 1) / 2
        return {"psnr_continuous": float(psnr((tokenizer.decode_latent(tokens.latent) + 1) / 2, target).mean()),
                "psnr_discrete": float(psnr((tokenizer.decode_tokens(tokens.indices) + 1) / 2, target).mean())}


def test_a_tokenizer_overfits_a_few_images_and_gains_psnr(shapes_dir, tmp_path):
    config = tokenizer_config(tmp_path / "run", shapes_dir, run={"steps": 60, "log_every": 5},
                              optim={"lr": 1e-3, "warmup_steps": 3, "ema_decay": 0.0, "min_lr_ratio": 1.0},
                              data={"resolution": 32})
    torch.manual_seed(0)
    from openhart.config import tokenizer_tiny
    from openhart.tokenizer import HybridTokenizer
    before = reconstruction_metrics(HybridTokenizer(tokenizer_tiny()).eval(), _images(shapes_dir))
    exported = _train(config)
    after = reconstruction_metrics(load_tokenizer(exported), _images(shapes_dir))
    lines = metrics(tmp_path / "run")
    assert lines[-1]["l2"] < 0.65 * lines[0]["l2"], [m["l2"] for m in lines]
    assert after["psnr_continuous"] > before["psnr_continuous"] + 2, (before, after)
    assert after["psnr_discrete"] > before["psnr_discrete"] + 2, (before, after)
    assert 0 < lines[-1]["codebook_usage"] <= 1
    assert lines[-1]["dead_code_fraction"] == pytest.approx(1 - lines[-1]["codebook_usage"])
    # about half of the steps decoded the discrete-only latent
    discrete = sum(m["discrete_step"] * 5 for m in lines)
    assert 15 <= discrete <= 45


def test_decode_path_probability_is_respected(shapes_dir):
    from openhart.config import tokenizer_tiny
    from openhart.tokenizer import HybridTokenizer
    images = _images(shapes_dir)
    for prob, expected in ((0.0, 0.0), (1.0, 1.0)):
        cfg = config_from_dict(TokenizerTrainConfig, tokenizer_config(
            "unused", shapes_dir, losses={"discrete_prob": prob}))
        module = TokenizerTrainingModule(HybridTokenizer(tokenizer_tiny()), cfg, None)
        assert all(module(images, step)[1]["discrete_step"].item() == expected for step in range(4))


def test_decoder_only_finetuning_keeps_the_encoder_and_codebook(shapes_dir, tiny_tokenizer_dir, tmp_path):
    config = tokenizer_config(tmp_path / "run", shapes_dir, init_from=str(tiny_tokenizer_dir),
                              train="decoder", run={"steps": 3})
    exported = _train(config)
    before, after = load_tokenizer(tiny_tokenizer_dir), load_tokenizer(exported)
    for name in ("encoder", "quant_conv", "quantizer"):
        for (key, a), b in zip(getattr(before, name).state_dict().items(), getattr(after, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} changed"
    assert not torch.equal(before.decoder.conv_out.weight, after.decoder.conv_out.weight)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_patchgan_starts_after_its_warmup_and_perceptual_loss_uses_local_weights(shapes_dir, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3))
    torch.jit.script(net).save(str(tmp_path / "features.pt"))
    config = tokenizer_config(tmp_path / "run", shapes_dir, run={"steps": 4, "checkpoint_every": 2},
                              losses={"gan": 0.1, "gan_start_step": 2, "perceptual": 0.5,
                                      "perceptual_weights": str(tmp_path / "features.pt")})
    _train(config)
    lines = metrics(tmp_path / "run")
    assert "gan_d" not in lines[1] and "gan_d" in lines[2] and "gan_g" in lines[3]
    assert all(m["perceptual"] > 0 for m in lines)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "ckpt-00000004.pt", weights_only=True)
    assert "discriminator" in checkpoint["extra"]


def test_missing_perceptual_weights_fail_before_training(shapes_dir, tmp_path):
    config = tokenizer_config(tmp_path / "run", shapes_dir,
                              losses={"perceptual": 1.0, "perceptual_weights": str(tmp_path / "vgg.pt")})
    with pytest.raises(ValueError, match="never downloads"):
        _train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_image_size_the_tokenizer_cannot_take_fails_before_compute(shapes_dir, tmp_path):
    cfg = config_from_dict(TokenizerTrainConfig, tokenizer_config(tmp_path, shapes_dir, data={"resolution": 40}))
    with pytest.raises(ValueError, match="cannot take 40x40"):
        TokenizerTask(cfg)


def test_training_reads_webdataset_tar_shards(shapes_dir, tmp_path):
    import tarfile
    shards = tmp_path / "shards"
    shards.mkdir()
    images = sorted(shapes_dir.glob("*.png"))
    for index, chunk in enumerate((images[:4], images[4:])):
        with tarfile.open(shards / f"shard-{index:03d}.tar", "w") as tar:
            for path in chunk:
                tar.add(path, arcname=f"{path.stem}.png")
                caption = tmp_path / f"{path.stem}.txt"
                caption.write_text("a shape")
                tar.add(caption, arcname=f"{path.stem}.txt")
    config = tokenizer_config(tmp_path / "run", shards, run={"steps": 2, "tensorboard": True})
    _train(config)  # tensorboard is not installed: a warning, not a failure
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2]


def test_dead_codes_restart_onto_looked_up_vectors(shapes_dir, tmp_path):
    config = tokenizer_config(tmp_path / "run", shapes_dir, run={"steps": 4},
                              losses={"restart_dead_codes_every": 2})
    exported = _train(config)
    lines = metrics(tmp_path / "run")
    assert lines[-1]["restarted_codes"] > 0 and lines[0]["restarted_codes"] == 0
    from openhart.config import tokenizer_tiny
    from openhart.tokenizer import HybridTokenizer
    torch.manual_seed(0)
    fresh = HybridTokenizer(tokenizer_tiny())
    moved = (load_tokenizer(exported).quantizer.codebook.weight - fresh.quantizer.codebook.weight).norm(dim=1)
    assert (moved > 0.1).sum() >= lines[-1]["restarted_codes"] * 0.5


def test_skipped_images_are_counted_across_a_resume(shapes_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    for i in range(2):  # two files that cannot be read
        (data / f"broken-{i}.png").write_bytes(b"not an image")
    if (data / "metadata.jsonl").is_file():
        with open(data / "metadata.jsonl", "a") as f:
            for i in range(2):
                f.write(f'{{"file_name": "broken-{i}.png", "text": "broken"}}\n')
    first = tokenizer_config(tmp_path / "run", data, run={"steps": 3, "checkpoint_every": 3, "batch_size": 4})
    _train(first)
    skipped_first = metrics(tmp_path / "run")[-1]["skipped_images"]
    assert skipped_first >= 1
    _train(tokenizer_config(tmp_path / "run", data, run={"steps": 6, "checkpoint_every": 3, "batch_size": 4}))
    assert metrics(tmp_path / "run")[-1]["skipped_images"] > skipped_first  # counted on from the checkpoint
