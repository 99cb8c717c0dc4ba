"""openhart.outputs: no user's file is lost or left half-written (issue #25, item 1;
docs/reliability.md)."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from openhart.cli import main
from openhart.loading import load_model, save_model
from openhart.outputs import (
    NAME_MAX,
    OutputError,
    atomic_path,
    check_destination,
    check_output_file,
    destination_lock,
    short_name,
    staged_folder,
)

from ..conftest import HART_TINY


def leftovers(folder):
    """Hidden staging, temporary, old and lock entries next to outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny_state():
    return load_model(HART_TINY)


@pytest.fixture
def model_dir(tmp_path, tiny_state):
    return save_model(tiny_state, tmp_path / "model", text_encoder={"kind": "random", "seed": 0})


# ----- staged folders --------------------------------------------------------------------------------

def test_overwrite_replaces_only_the_files_openhart_writes(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    (dst / "photos").mkdir()
    (dst / "photos" / "a.jpg").write_bytes(b"jpg")
    (dst / "config.json").write_text("old")
    (dst / "hart_system_prompt.txt").write_text("old prompt")
    with staged_folder(dst, owned=("config.json", "model.safetensors", "hart_system_prompt.txt")) as staging:
        (staging / "config.json").write_text("new")
        (staging / "model.safetensors").write_text("weights")
    assert (dst / "notes.txt").read_text() == "mine"
    assert (dst / "photos" / "a.jpg").read_bytes() == b"jpg"
    assert (dst / "config.json").read_text() == "new"
    assert (dst / "model.safetensors").read_text() == "weights"
    assert not (dst / "hart_system_prompt.txt").exists()  # an owned file of the earlier model
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_destination_as_it_was(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "config.json").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(dst) as staging:
        (staging / "config.json").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in dst.iterdir()] == ["config.json"]
    assert (dst / "config.json").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_a_new_folder_is_refused_if_it_appeared_without_overwrite(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(FileExistsError, match="already exists"), staged_folder(dst, overwrite=False):
        pass
    assert leftovers(tmp_path) == []


def test_a_file_in_the_way_of_a_written_folder_is_refused_before_any_move(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "tokenizer").write_text("a user's file")
    (dst / "config.json").write_text("old")
    with pytest.raises(FileExistsError, match="in the way"), staged_folder(dst) as staging:
        (staging / "config.json").write_text("new")
        (staging / "tokenizer").mkdir()
    assert (dst / "tokenizer").read_text() == "a user's file"
    assert (dst / "config.json").read_text() == "old"


def test_stale_staging_of_a_killed_run_is_removed_and_others_are_not(tmp_path):
    dst = tmp_path / "dst"
    stale = [tmp_path / ".dst.ab12cd_9.tmp", tmp_path / ".dst.zzzzzzzz.old"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_text("half")
    (tmp_path / ".dst.lock").write_text("")  # a lock file left by SIGKILL, not held by anyone
    others = [tmp_path / ".dst.x.ab12cd_9.tmp", tmp_path / ".dstx.ab12cd_9.tmp", tmp_path / ".dst.short.tmp"]
    for folder in others:
        folder.mkdir()
    with staged_folder(dst) as staging:
        (staging / "config.json").write_text("{}")
    assert leftovers(tmp_path) == sorted(p.name for p in others)


def _write_in_thread(dst) -> BaseException | None:
    """staged_folder(dst) from another thread; what it raised."""
    raised = []

    def write():
        try:
            with staged_folder(dst) as staging:
                (staging / "config.json").write_text("{}")
        except BaseException as error:  # noqa: BLE001 (handed back to the test)
            raised.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(30)
    return raised[0] if raised else None


def test_a_second_writer_of_one_destination_is_refused(tmp_path):
    dst = tmp_path / "dst"
    with destination_lock(dst):
        error = _write_in_thread(dst)
    assert isinstance(error, OutputError) and "another openhart process is writing" in str(error)
    assert not dst.exists()
    assert leftovers(tmp_path) == []  # the lock file is removed on release


def test_the_holder_of_a_lock_may_take_it_again(tmp_path):
    """A fine-tuning run holds its folder's lock around the training loop, which takes it too."""
    dst = tmp_path / "dst"
    with destination_lock(dst):
        with destination_lock(dst):
            pass
        assert (tmp_path / ".dst.lock").exists()  # still held after the inner block
        assert isinstance(_write_in_thread(dst), OutputError)
    assert leftovers(tmp_path) == [] and _write_in_thread(dst) is None and (dst / "config.json").exists()


def _hold_lock(path, ready, release):
    with staged_folder(path) as staging:
        (staging / "config.json").write_text("first")
        ready.set()
        release.wait(30)


def test_concurrent_processes_writing_one_folder_one_is_refused(tmp_path):
    dst = tmp_path / "dst"
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    child = context.Process(target=_hold_lock, args=(dst, ready, release))
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(OutputError, match="another openhart process"), staged_folder(dst):
            pass
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0
    assert (dst / "config.json").read_text() == "first"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_a_destination_that_is_in_or_around_the_source_is_refused(tmp_path, where):
    source = tmp_path / "src"
    (source / "llm").mkdir(parents=True)
    dst = {"same": source, "inside": source / "converted", "contains": tmp_path}[where]
    with pytest.raises(OutputError, match={"same": "is the source", "inside": "lies inside the source",
                                           "contains": "contains the source"}[where]):
        check_destination(dst, [source])


def test_a_long_destination_name_gets_short_staging_names(tmp_path):
    name = "m" * NAME_MAX
    with staged_folder(tmp_path / name) as staging:
        assert len(staging.name) <= NAME_MAX
        (staging / "config.json").write_text("{}")
    assert (tmp_path / name / "config.json").is_file()
    assert short_name("é" * 200, extra=20).encode().__len__() <= NAME_MAX - 20


# ----- files -----------------------------------------------------------------------------------------

def test_a_250_character_output_name_is_written(tmp_path):
    path = tmp_path / ("p" * 246 + ".png")
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"x")
    assert path.read_bytes() == b"x"
    assert leftovers(tmp_path) == []


def test_special_read_only_and_overlong_outputs_are_refused(tmp_path):
    read_only = tmp_path / "keep.png"
    read_only.write_bytes(b"precious")
    read_only.chmod(0o444)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cases = {read_only: "is read-only", fifo: "not a regular file", tmp_path: "is a folder",
             tmp_path / ("n" * 256 + ".png"): "longer than 255 bytes",
             tmp_path / "missing" / "x.png": "does not exist"}
    if os.path.exists("/dev/null"):
        cases[os.path.join("/dev", "null")] = "not a regular file"
    for path, message in cases.items():
        with pytest.raises(OutputError, match=message):
            check_output_file(path)
    assert read_only.read_bytes() == b"precious"
    assert oct(read_only.stat().st_mode & 0o777) == "0o444"
    assert fifo.is_fifo()


@pytest.mark.parametrize("command", [
    ["generate", "a cat", "--out"], ["edit", "image.png", "a cat", "--mask", "mask.png", "--out"],
    ["vary", "image.png", "--prompt", "a cat", "--strength", "0.5", "--out"], ["bench", "--preset", "tiny", "--size", "256", "--json"],
])
def test_commands_refuse_special_outputs_before_any_work(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "image.png").write_bytes(b"not read before the check")
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    started = time.perf_counter()
    code = main([*command, str(fifo)] + (["--model", str(tmp_path / "no-such-model")] if command[0] != "bench" else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "not a regular file" in err and str(fifo) in err
    assert time.perf_counter() - started < 5  # nothing was loaded or generated
    assert fifo.is_fifo()


def test_generate_checks_every_image_file_it_will_write(tmp_path, capsys):
    out = tmp_path / "cat.png"
    (tmp_path / "cat-001.png").write_bytes(b"keep")
    (tmp_path / "cat-001.png").chmod(0o444)
    assert main(["generate", "a cat", "--num-images", "3", "--out", str(out)]) == 2
    assert "cat-001.png is read-only" in capsys.readouterr().err


# ----- convert and export ----------------------------------------------------------------------------

def test_convert_overwrite_keeps_the_users_other_files(model_dir, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "my-notes.md").write_text("notes")
    (dst / "hart_system_prompt.txt").write_text("stale prompt of another model")
    assert main(["convert", str(model_dir), str(dst), "--overwrite"]) == 0
    assert (dst / "my-notes.md").read_text() == "notes"
    assert not (dst / "hart_system_prompt.txt").exists()
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "my-notes.md"]
    load_model(dst)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target", [".", ".."])
def test_convert_into_dot_or_dotdot_leaves_nothing_behind(model_dir, tmp_path, monkeypatch, target):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["convert", str(model_dir), target, "--overwrite"]) == 0
    written = work if target == "." else work.parent
    assert {"config.json", "model.safetensors"} <= {p.name for p in written.iterdir()}
    assert all(leftovers(folder) == [] for folder in (tmp_path, tmp_path / "a", work))


def test_eval_refuses_an_existing_file_as_its_folder_before_any_work(tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("a file")
    started = time.perf_counter()
    assert main(["eval", "--data", str(tmp_path), "--out", str(out)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("target", ["same", "inside", "dot"])
def test_convert_onto_or_into_its_source_is_refused(tmp_path, capsys, monkeypatch, target):
    import shutil

    official = tmp_path / "official"
    shutil.copytree(HART_TINY, official)
    before = sorted(str(p.relative_to(official)) for p in official.rglob("*"))
    dst = {"same": str(official), "inside": str(official / "converted"), "dot": "."}[target]
    monkeypatch.chdir(official if target == "dot" else tmp_path)
    assert main(["convert", str(official), dst, "--overwrite"]) == 2
    assert "source" in capsys.readouterr().err
    assert sorted(str(p.relative_to(official)) for p in official.rglob("*")) == before
    assert leftovers(tmp_path) == [] and leftovers(official) == []


def test_export_of_a_run_onto_itself_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-00000010.pt").write_bytes(b"a checkpoint")
    assert main(["export", str(run), str(run), "--overwrite"]) == 2
    assert "contains the source" in capsys.readouterr().err
    assert (run / "checkpoints" / "ckpt-00000010.pt").read_bytes() == b"a checkpoint"


def test_a_model_with_nan_weights_is_never_written(tmp_path, tiny_state):
    import copy

    broken = copy.deepcopy(tiny_state)
    with torch.no_grad():
        broken.transformer.head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        save_model(broken, tmp_path / "broken")
    assert list(tmp_path.iterdir()) == []


# ----- signals ---------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from openhart.outputs import staged_folder, terminate_as_interrupt
    try:
        with terminate_as_interrupt(), staged_folder(sys.argv[1]) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            print("ready", flush=True)
            time.sleep(60)
    except KeyboardInterrupt as error:
        sys.exit(128 + error.signum)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_remove_the_staging_folder(tmp_path, signum):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "dst")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    child.send_signal(signum)
    assert child.wait(30) == 128 + signum
    assert list(tmp_path.iterdir()) == []


def test_the_cli_turns_sigterm_into_a_clean_exit(tmp_path, capsys, monkeypatch):
    import argparse

    import openhart.cli as cli

    def handler(args):
        with staged_folder(tmp_path / "dst") as staging:
            (staging / "config.json").write_text(json.dumps({}))
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return 0

    def parser():
        p = argparse.ArgumentParser(prog="openhart")
        sub = p.add_subparsers(dest="command")
        sub.add_parser("slow").set_defaults(handler=handler)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["slow"]) == 128 + signal.SIGTERM
    assert "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # restored for the caller
