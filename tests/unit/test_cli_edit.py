"""`openhart edit` and `openhart vary`: PNGs with their edit's metadata, a note for every input
that had to be adapted, and one line with exit code 2 for input that cannot be used."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from openhart.cli import main

from ..conftest import HART_TINY

SIDE = 128
MODEL = ["--model", str(HART_TINY), "--text-encoder", "random", "--dtype", "fp32", "--quiet", "--seed", "0"]


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[32:96, 32:96] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[::2, ::2] // 2 + 100).save(tmp_path / "grey-small-mask.png")  # 64 px, values 100..227
    Image.fromarray(np.zeros((SIDE, SIDE), dtype=np.uint8)).save(tmp_path / "empty.png")
    return tmp_path


def _edit(record):
    return json.loads(Image.open(record).text["openhart"])["edit"]


def test_edit_with_a_mask_writes_pngs_with_the_edit(files, capsys):
    out = files / "out.png"
    assert main(["edit", str(files / "image.png"), "--mask", str(files / "mask.png"), "red apple",
                 "--num-images", "2", "--feather", "2", "--out", str(out), *MODEL]) == 0
    for path in (files / "out-000.png", files / "out-001.png"):
        edit = _edit(path)
        assert edit["kind"] == "inpaint" and edit["feather"] == 2 and edit["mask_coverage"] == 0.25
    assert "out-001.png" in capsys.readouterr().out


def test_outpaint_and_vary(files):
    assert main(["edit", str(files / "image.png"), "--outpaint", "64,0,0,64", "red apple",
                 "--out", str(files / "o.png"), *MODEL]) == 0
    assert _edit(files / "o.png")["placement"] == [43, 0, 85, 85]  # a 192-px canvas scaled to 128
    assert main(["vary", str(files / "image.png"), "--strength", "0.4", "--out", str(files / "v.png"), *MODEL]) == 0
    edit = _edit(files / "v.png")
    assert edit["kind"] == "vary" and edit["strength"] == 0.4 and edit["kept_scales"] == round(0.6 * edit["num_scales"])
    assert Image.open(files / "v.png").text["prompt"] == ""


def test_inputs_that_are_adapted_get_a_note(files, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["edit", str(files / "wide.png"), "--mask", str(files / "grey-small-mask.png"), "red apple",
                     "--out", str(files / "n.png"), *MODEL]) == 0
    notes = caplog.text
    assert "120x80: resized and center-cropped" in notes
    assert "the mask was resized to the image" in notes and "thresholded at 0.5" in notes
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["edit", str(files / "image.png"), "--mask", str(files / "empty.png"), "red apple",
                     "--out", str(files / "e.png"), *MODEL]) == 0
    assert "the mask is empty" in caplog.text and "reconstruction" in caplog.text


@pytest.mark.parametrize("argv, message", [
    (["edit", "{missing}", "--mask", "{mask}", "x"], "image not found"),
    (["edit", "{image}", "--mask", "{missing}", "x"], "mask not found"),
    (["edit", "{image}", "--outpaint", "1,2", "x"], "four pixel counts"),
    (["edit", "{image}", "--outpaint", "0,0,0,0", "x"], "nothing to outpaint"),
    (["edit", "{image}", "--mask", "{mask}", "x", "--dilate", "-1"], "argument --dilate: must be between 0 and 16384"),
    (["edit", "{image}", "--mask", "{mask}", "   "], "prompt is empty"),
    (["edit", "{image}", "--mask", "{not_an_image}", "x"], "cannot read"),
    (["vary", "{image}", "--strength", "1.5"], "argument --strength: must be a number between 0 and 1"),
    (["edit", "{image}", "x"], "one of the arguments --mask --outpaint is required"),
])
def test_unusable_input_is_one_line_and_exit_code_2(files, capsys, argv, message):
    (files / "not-an-image.png").write_text("hello")
    paths = {"missing": files / "nope.png", "mask": files / "mask.png", "image": files / "image.png",
             "not_an_image": files / "not-an-image.png"}
    argv = [a.format(**paths) for a in argv] + ["--out", str(files / "x.png"), *MODEL]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (files / "x.png").exists()


@pytest.mark.parametrize("command", ["edit", "vary"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out
