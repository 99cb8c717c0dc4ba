import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openhart import __version__
from openhart.cli import main

from ..conftest import HART_TINY

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.png"


def exit_code(argv) -> int:
    """main's exit code, usage errors (argparse's SystemExit at parse time) included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "openhart reconstruct assets/sample.png" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "reconstruct" in capsys.readouterr().out


def test_reconstruct_with_official_tokenizer(tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    shutil.copy(SAMPLE, tmp_path / "src.png")
    Image.open(tmp_path / "src.png").convert("RGB").save(image)
    assert main(["reconstruct", str(image), "--tokenizer", str(HART_TINY / "tokenizer")]) == 0
    out = capsys.readouterr().out
    assert "continuous path: PSNR" in out and "discrete path: PSNR" in out
    for name in ("continuous", "discrete"):
        with Image.open(tmp_path / f"photo.recon-{name}.png") as recon:
            assert recon.size == (128, 128) and recon.mode == "RGB"


def test_reconstruct_random_preset_says_so(tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    image = tmp_path / "small.png"
    Image.open(SAMPLE).resize((64, 64)).save(image)
    assert main(["reconstruct", str(image), "--out-dir", str(out_dir), "--size", "64"]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == ["small.recon-continuous.png",
                                                         "small.recon-discrete.png"]


@pytest.mark.parametrize("args, message", [
    (["reconstruct", "missing.png"], "image not found: missing.png"),
    (["reconstruct", str(SAMPLE), "--tokenizer", "/nonexistent"], "tokenizer folder not found"),
    (["reconstruct", str(SAMPLE), "--size", "100"], "cannot take 100x100"),
    (["reconstruct", str(SAMPLE), "--out-dir", "/nonexistent"], "output folder does not exist"),
    (["reconstruct", str(SAMPLE), "--device", "tpu"], "unknown device"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_not_an_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    assert main(["reconstruct", str(bad), "--tokenizer", str(HART_TINY)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "openhart", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "reconstruct" in result.stdout


def _generate(tmp_path, *extra):
    return main(["generate", "a red apple", "--model", str(HART_TINY), "--text-encoder", "random",
                 "--out", str(tmp_path / "img.png"), "--quiet", *extra])


def test_generate_writes_png_with_metadata(tmp_path, capsys):
    assert _generate(tmp_path, "--seed", "5", "--cfg", "3") == 0
    with Image.open(tmp_path / "img.png") as image:
        assert image.size == (128, 128)
        assert image.text["prompt"] == "a red apple" and image.text["seed"] == "5"
        assert '"guidance_scale": 3.0' in image.text["openhart"]
    first = (tmp_path / "img.png").read_bytes()
    assert _generate(tmp_path, "--seed", "5", "--cfg", "3") == 0
    assert (tmp_path / "img.png").read_bytes() == first, "same seed must give a byte-identical PNG"


def test_generate_sampling_flags_reach_the_sampler_and_the_metadata(tmp_path):
    import json

    assert _generate(tmp_path, "--seed", "5", "--head-temperature", "0.25", "--last-scale", "consistent",
                     "--no-residual", "--top-p", "0.5") == 0
    with Image.open(tmp_path / "img.png") as image:
        sampling = json.loads(image.text["openhart"])["sampling"]
    assert sampling["head_temperature"] == 0.25 and sampling["last_scale"] == "consistent"
    assert sampling["use_residual"] is False and sampling["top_p"] == 0.5
    with pytest.raises(SystemExit) as exit_info:  # a usage error, at parse time
        _generate(tmp_path, "--head-temperature", "-1")
    assert exit_info.value.code == 2


def test_generate_uses_the_model_folders_defaults(tmp_path):
    import json

    from openhart.config import SamplingConfig
    from openhart.loading import load_model, save_model

    folder = save_model(load_model(HART_TINY), tmp_path / "model",
                        sampling=SamplingConfig(guidance_scale=2.0, head_temperature=0.5, last_scale="consistent"))
    assert main(["generate", "a red apple", "--model", str(folder), "--text-encoder", "random",
                 "--out", str(tmp_path / "d.png"), "--quiet", "--seed", "1", "--cfg", "3"]) == 0
    with Image.open(tmp_path / "d.png") as image:
        sampling = json.loads(image.text["openhart"])["sampling"]
    assert sampling["guidance_scale"] == 3.0  # told
    assert sampling["head_temperature"] == 0.5 and sampling["last_scale"] == "consistent"  # the folder's


def test_generate_several_images_and_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("flag: Japan\n\nred apple\n")
    assert main(["generate", "--prompts-file", str(prompts), "--model", str(HART_TINY),
                 "--text-encoder", "random", "--out", str(tmp_path / "g.png"), "--num-images", "2",
                 "--quiet", "--seed", "0"]) == 0
    assert sorted(p.name for p in tmp_path.glob("g-*.png")) == [f"g-00{i}.png" for i in range(4)]


@pytest.mark.parametrize("args, message", [
    (["generate", "x", "--model", "/nonexistent", "--text-encoder", "random", "--out", "o.png"],
     "model folder not found"),
    (["generate", "x", "--model", str(HART_TINY), "--text-encoder", "random", "--out", "/nonexistent/o.png"],
     "output folder does not exist"),
    (["generate", "--model", str(HART_TINY), "--text-encoder", "random", "--out", "o.png"],
     "no prompt given"),
    (["generate", "x", "--model", str(HART_TINY), "--text-encoder", "random", "--out", "o.jpg"],
     "must name a .png"),
    (["generate", "x", "--model", str(HART_TINY), "--text-encoder", "random", "--out", "o.png",
      "--top-k", "-3"], "argument --top-k: must be between 0 and 1048576"),
    (["generate", "x", "--model", str(HART_TINY), "--text-encoder", "random", "--out", "o.png",
      "--dtype", "int8"], "unknown dtype"),
])
def test_generate_bad_input(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert exit_code(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


def test_convert_round_trip(tmp_path, capsys):
    dst = tmp_path / "converted"
    assert main(["convert", str(HART_TINY), str(dst), "--dtype", "bf16"]) == 0
    assert "reloaded it and verified every tensor" in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert main(["convert", str(HART_TINY), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "from-converted.png"
    assert main(["generate", "a", "--model", str(dst), "--text-encoder", "random", "--out", str(out),
                 "--quiet", "--dtype", "bf16"]) == 0
    assert out.is_file()


# ----- polish: help examples, exit codes, grid ------------------------------------------------------

def _subcommands():
    from openhart.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_help_shows_an_example_whose_files_exist(name, capsys):
    import re

    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    assert re.search(rf"^\s+(torchrun .*-m )?openhart {name}\b", text, re.M), text
    root = Path(__file__).resolve().parents[2]
    for path in re.findall(r"(?:configs|tests/fixtures|assets)/[\w./-]+", text):
        assert (root / path.rstrip(".")).exists(), f"{name} --help names {path}, which does not exist"


def test_version_and_no_command(capsys):
    from openhart import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    assert main([]) == 2


def test_exit_codes_bad_usage_2_internal_error_1(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--no-such-option"])
    assert exit_info.value.code == 2

    import openhart.commands.convert as convert_command

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(convert_command, "run", broken)
    assert main(["convert", "a", "b"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "internal error" in err

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_command, "run", interrupted)
    assert main(["convert", "a", "b"]) == 130


def test_generate_writes_a_grid_for_several_prompts(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "a red apple", "a blue sky", "--model", str(HART_TINY), "--text-encoder",
                 "random", "--num-images", "3", "--grid", "--seed", "5", "--out", str(out),
                 "--head-steps", "2"]) == 0
    grid = Image.open(out)
    size = 128  # hart-tiny
    assert grid.size == (3 * size + 2 * 2, 2 * size + 2)
    assert grid.text["prompt"] == "a red apple | a blue sky"
    images = json.loads(grid.text["images"])
    # one pipeline call per prompt (at most 8 images each): index and seed regenerate each image
    assert [m["index"] for m in images] == [0, 1, 2, 0, 1, 2] and all(m["seed"] == 5 for m in images)
    assert not list(tmp_path.glob("grid-*.png"))
    # the grid's cells are the images that one file per image would hold
    single = tmp_path / "one.png"
    assert main(["generate", "a red apple", "a blue sky", "--model", str(HART_TINY), "--text-encoder",
                 "random", "--num-images", "3", "--seed", "5", "--out", str(single), "--head-steps", "2"]) == 0
    fourth = Image.open(tmp_path / "one-004.png")  # second prompt, second image
    cell = grid.crop((size + 2, size + 2, 2 * size + 2, 2 * size + 2))
    assert np.array_equal(np.asarray(cell), np.asarray(fourth.convert("RGB")))


def test_many_images_are_drawn_in_chunks_with_their_own_seeds(tmp_path):
    out = tmp_path / "many.png"
    assert main(["generate", "a red apple", "--model", str(HART_TINY), "--text-encoder", "random",
                 "--num-images", "10", "--seed", "5", "--out", str(out), "--head-steps", "1", "--quiet"]) == 0
    seeds = [json.loads(Image.open(tmp_path / f"many-{i:03d}.png").text["openhart"])["seed"] for i in range(10)]
    assert seeds == [5] * 8 + [6] * 2


@pytest.mark.parametrize("argv, message", [
    (["--num-images", "100000"], "argument --num-images: must be between 1 and 1024"),
    (["--seed", str(2**64)], "argument --seed: must be between 0 and 9223372036854775807"),
    (["--seed", "-1"], "argument --seed: must be between 0 and"),
    (["--guidance-scale", "inf"], "argument --guidance-scale/--cfg: must be a number between 0 and 1000"),
    (["--cfg", "1e308"], "argument --guidance-scale/--cfg: must be a number between 0 and 1000"),
    (["--cfg", "7.5"], None),
    (["--maskgit-iters", "100000000"], "argument --maskgit-iters: must be between 1 and 1048576"),
    (["--maskgit-iters", "1000"], "maskgit_iters (1000) cannot exceed the 64 tokens"),
    (["--device", "meta"], "device 'meta' cannot run openhart"),
])
def test_generate_flags_are_checked_with_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = exit_code(["generate", "a red apple", "--model", str(HART_TINY), "--text-encoder", "random",
                      "--head-steps", "1", "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and out.is_file()
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_an_unwritable_output_is_refused_before_generating(tmp_path, capsys):
    folder = tmp_path / "image.png"
    folder.mkdir()
    assert main(["generate", "a red apple", "--model", "/nonexistent", "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
        assert main(["generate", "a red apple", "--model", "/nonexistent", "--out", str(locked / "x.png")]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_seed_without_room_for_its_chunks_is_refused_before_any_work(tmp_path, capsys):
    """Chunk c of --num-images is drawn with seed + c: the largest seed fits one chunk only."""
    from openhart.seeding import MAX_SEED

    out = tmp_path / "x.png"
    assert main(["generate", "a red apple", "--model", "/nonexistent", "--seed", str(MAX_SEED), "--num-images", "9",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "leaves no room for the 2 chunks of 9 images" in err and f"<= {MAX_SEED - 1}" in err
    assert not list(tmp_path.iterdir())


def test_fresh_seeds_come_from_one_place_and_survive_json():
    from openhart.seeding import FRESH_SEED_BOUND, new_seed

    seeds = {new_seed() for _ in range(100)}
    assert len(seeds) == 100 and all(0 <= s < FRESH_SEED_BOUND for s in seeds)
    assert all(int(float(s)) == s for s in seeds)  # exact as a double (JavaScript, JSON readers)
