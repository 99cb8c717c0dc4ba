"""Every input is bounded and every bad one is one line (issue #25, items 2-3): size caps before
reading, strict UTF-8, JSON depth, numeric flag ranges, dataset records, tar members."""

import io
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time

import pytest
from PIL import Image

from openhart.cli import main
from openhart.data import ImageCaptionFolder, TarShards
from openhart.inputs import MAX_JSON_DEPTH, InputError, parse_json, read_json, read_text
from openhart.loading import load_model, save_model
from openhart.serialization import CheckpointError
from openhart.train.train_config import TokenizerTrainConfig, load_train_config

from ..conftest import HART_TINY


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model(load_model(HART_TINY), tmp_path_factory.mktemp("m") / "model",
                      text_encoder={"kind": "random", "seed": 0})


def sparse(path, size):
    """A file of `size` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----- size caps -------------------------------------------------------------------------------------

def test_a_sparse_3_gb_config_is_refused_before_reading(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    sparse(folder / "config.json", 3 << 30)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"config.json is 3.0 GB, more than the 64.0 MB"):
        load_model(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KB: nothing was read


def test_a_sparse_prompts_file_is_one_line(tmp_path, capsys):
    prompts = sparse(tmp_path / "prompts.txt", 3 << 30)
    assert main(["generate", "--prompts-file", str(prompts), "--out", str(tmp_path / "x.png")]) == 2
    assert "prompts.txt is 3.0 GB" in one_line(capsys)


def test_a_sparse_metadata_file_is_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    sparse(tmp_path / "metadata.jsonl", 3 << 30)
    with pytest.raises(InputError, match="metadata.jsonl is 3.0 GB"):
        ImageCaptionFolder(tmp_path, 8)


def test_reading_a_pipe_is_bounded_too(tmp_path):
    read, write = os.pipe()
    os.write(write, b"x" * 100)
    os.close(write)
    with pytest.raises(InputError, match="holds more than the 10 bytes"):
        read_text(f"/dev/fd/{read}", limit=10)
    os.close(read)


# ----- text and JSON ---------------------------------------------------------------------------------

def test_invalid_utf8_and_a_bom(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"a cat\n\xff\xfe a dog\n")
    with pytest.raises(InputError, match=r"prompts.txt is not valid UTF-8 \(byte 6"):
        read_text(bad)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa red apple\n".encode())
    assert read_text(bom) == "a red apple\n"


def test_an_invalid_utf8_prompt_argument_is_one_line(tmp_path, capsys):
    prompt = b"a \xff cat".decode("utf-8", "surrogateescape")  # what Python makes of such an argv
    assert main(["generate", prompt, "--out", str(tmp_path / "x.png")]) == 2
    assert "not valid UTF-8" in one_line(capsys)
    assert not (tmp_path / "x.png").exists()


def test_an_invalid_utf8_prompts_file_names_it(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xc3\x28 broken\n")
    assert main(["generate", "--prompts-file", str(prompts), "--out", str(tmp_path / "x.png")]) == 2
    assert "prompts.txt is not valid UTF-8 (byte 0" in one_line(capsys)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper than"),
    ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"a": 1', "not valid JSON"),
])
def test_hostile_json(text, message):
    with pytest.raises(InputError, match=message):
        parse_json(text, "x.json")
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "ok.json") is not None


def test_deep_or_huge_numbers_in_a_model_config_are_one_line(tmp_path, model_dir, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    for text in ['{"model_type": ' + "[" * 50_000 + "]" * 50_000 + "}", '{"format_version": ' + "7" * 5000 + "}"]:
        (folder / "config.json").write_text(text)
        assert main(["generate", "a cat", "--model", str(folder), "--out", str(tmp_path / "x.png")]) == 2
        assert "config.json" in one_line(capsys)


def test_a_training_config_that_is_a_list_names_the_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="train.json must hold a JSON object, got list"):
        load_train_config(TokenizerTrainConfig, path)
    assert read_json(path, mapping=False) == [1, 2]


# ----- dataset records -------------------------------------------------------------------------------

@pytest.mark.parametrize("record, message", [
    ({"file_name": 7, "text": "a cat"}, "a 'file_name' and a 'text' string"),
    ({"file_name": None, "text": "a cat"}, "a 'file_name' and a 'text' string"),
    ({"file_name": "a.png", "text": ["a", "cat"]}, "a 'file_name' and a 'text' string"),
    ([1, 2], "a 'file_name' and a 'text' string"),
    ({"file_name": "../a.png", "text": "a cat"}, "must be a path inside"),
    ({"file_name": "/etc/passwd", "text": "a cat"}, "must be a path inside"),
])
def test_bad_metadata_records_name_the_line(tmp_path, record, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    lines = [json.dumps({"file_name": "a.png", "text": "fine"}), json.dumps(record)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"metadata.jsonl:2: .*{message}"):
        ImageCaptionFolder(tmp_path, 8)


def png_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_bad_tar_captions_are_skipped_and_counted(tmp_path):
    with tarfile.open(tmp_path / "0.tar", "w") as tar:
        for key, caption in [("a", b'{"text": "a red square"}'), ("b", b'["a", "list"]'), ("c", b'{"text": 5}'),
                             ("d", b"\xff\xfe")]:
            add(tar, f"{key}.png", png_bytes())
            add(tar, f"{key}.json" if key != "d" else f"{key}.txt", caption)
    shards = TarShards([tmp_path / "0.tar"], 8)
    captions = [s.caption for s in shards.iterate(0, 0)]
    assert captions == ["a red square"]
    assert shards.skipped == 3


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar makes the sparse shard")
def test_a_sparse_tar_bomb_is_skipped_without_reading_it(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    sparse(work / "bomb.png", 5 << 30)
    (work / "bomb.txt").write_text("a bomb")
    Image.new("RGB", (8, 8)).save(work / "ok.png")
    (work / "ok.txt").write_text("a black square")
    subprocess.run(["tar", "--sparse", "-cf", str(tmp_path / "0.tar"), "-C", str(work),
                    "bomb.png", "bomb.txt", "ok.png", "ok.txt"], check=True)
    assert (tmp_path / "0.tar").stat().st_size < 100_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    shards = TarShards([tmp_path / "0.tar"], 8)
    assert [s.caption for s in shards.iterate(0, 0)] == ["a black square"]
    assert shards.skipped == 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000  # KB
    assert time.perf_counter() - started < 30


# ----- numeric flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["edit", "i.png", "p", "--mask", "m.png", "--dilate", "1e12", "--out", "x.png"], "--dilate"),
    (["edit", "i.png", "p", "--outpaint", "9" * 400 + ",0,0,0", "--out", "x.png"], "--outpaint"),
    (["bench", "--matmul-size", "-5"], "--matmul-size"),
    (["bench", "--batch", "1e5"], "--batch"),
    (["eval", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["generate", "p", "--out", "x.png", "--seed", "1" + "0" * 400], "--seed"),
    (["generate", "p", "--out", "x.png", "--guidance-scale", "nan"], "--guidance-scale"),
    (["generate", "p", "--out", "x.png", "--top-p", "inf"], "--top-p"),
    (["generate", "p", "--out", "x.png", "--num-images", "0"], "--num-images"),
    (["vary", "i.png", "p", "--strength", "2", "--out", "x.png"], "--strength"),
    (["cache", "--data", "d", "--tokenizer", "t", "--text-encoder", "random", "--resolution", "64", "--out", "o",
      "--context-tokens", "1000000000"], "--context-tokens"),
    (["finetune", "--data", "d", "--out", "o", "--lr", "-1"], "--lr"),
    (["serve", "--port", "70000"], "--port"),
])
def test_numeric_flags_are_range_checked_at_parse_time(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    started = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    assert code == 2
    err = one_line(capsys)
    assert flag in err, err
    assert len(err) < 400
    assert time.perf_counter() - started < 5


def test_a_png_text_chunk_bomb_names_the_file(tmp_path):
    import struct
    import zlib

    from openhart.images import open_image

    Image.new("RGB", (16, 16)).save(tmp_path / "base.png")
    data = (tmp_path / "base.png").read_bytes()
    body = b"Comment\x00\x00" + zlib.compress(b"x" * (64 << 20))  # 64 KB that inflate to 64 MB
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    at = data.index(b"IDAT") - 4
    (tmp_path / "bomb.png").write_bytes(data[:at] + chunk + data[at:])
    with pytest.raises(ValueError, match=r"cannot read .*bomb.png safely: Decompressed data too large"):
        open_image(tmp_path / "bomb.png", str(tmp_path / "bomb.png"))


def test_an_official_tokenizer_config_error_names_its_own_file(tmp_path, capsys):
    official = tmp_path / "official"
    shutil.copytree(HART_TINY / "llm", official / "llm")
    shutil.copytree(HART_TINY / "tokenizer", official / "tokenizer")
    config = json.loads((official / "tokenizer" / "config.json").read_text())
    config["ch_mult"] = None
    (official / "tokenizer" / "config.json").write_text(json.dumps(config))
    assert main(["convert", str(official), str(tmp_path / "dst")]) == 2
    err = one_line(capsys)
    assert str(official / "tokenizer" / "config.json") in err and "ch_mult must be a non-empty list of integers" in err
