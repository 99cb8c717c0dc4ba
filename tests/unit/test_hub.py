"""Model names through `openhart.hub`: local folders, the shipped default, and Hub repo ids
downloaded from a local fake Hub (`tests/helpers/fake_hub.py`), then used offline from the cache.

The Hub tests run the command line in a child process, because huggingface_hub reads HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE when it is imported.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from openhart.hub import (OFFICIAL_TEXT_ENCODER, HubError, parse_hub_id, recorded_text_encoder,
                          resolve_model, resolve_text_encoder)

from ..helpers.fake_hub import FakeHub, StalledEndpoint

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "hart-tiny"
REPO = "mit-han-lab/hart-tiny"


# ----- names, without a network -----------------------------------------------------------------------

def test_hub_ids_are_told_from_other_names():
    assert parse_hub_id("mit-han-lab/hart-0.7b-1024px") == ("mit-han-lab/hart-0.7b-1024px", None)
    assert parse_hub_id("mit-han-lab/hart-0.7b-1024px@v1.0") == ("mit-han-lab/hart-0.7b-1024px", "v1.0")
    assert parse_hub_id("org/model@" + "a" * 40) == ("org/model", "a" * 40)
    for name in ("hart-0.7b-1024px", "a/b/c", "./model", "/abs/path", "org/../x", "org/model@", ""):
        assert parse_hub_id(name) is None, name


def test_local_folders_and_the_default_resolve_without_downloading(tmp_path):
    default = resolve_model(None)
    assert default.path.name == "openhart-emoji-64" and default.hub_id is None and not default.official
    assert default.text_encoder == "all-MiniLM-L6-v2"
    official = resolve_model(FIXTURE)
    assert official.official and official.path == FIXTURE and official.text_encoder == OFFICIAL_TEXT_ENCODER
    assert resolve_model(FIXTURE / "llm").official  # the llm/ folder itself
    with pytest.raises(HubError, match="model folder not found: .*nowhere"):
        resolve_model(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(HubError, match="is a file"):
        resolve_model(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="weights must be"):
        resolve_model(None, weights="best")
    assert resolve_text_encoder("random") == "random"
    assert resolve_text_encoder("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    with pytest.raises(HubError, match="text encoder not found"):
        resolve_text_encoder(str(tmp_path / "no-encoder"))


def test_a_malformed_text_encoder_entry_is_one_clear_error(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for bad in ([1, 2], {"kind": "huggingface"}, {"kind": "magic", "path": "x"}, "MiniLM"):
        (folder / "config.json").write_text(json.dumps({"model_type": "openhart.hart", "text_encoder": bad}))
        with pytest.raises(HubError, match="'text_encoder' must be"):
            recorded_text_encoder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(HubError, match="not valid JSON"):
        recorded_text_encoder(folder)


# ----- the download path, against a local fake Hub ---------------------------------------------------

@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """An official-layout model (raw and EMA weights, plus files no pipeline needs) and a tiny
    Qwen2 text encoder under the official encoder's name."""
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2Model

    from openhart.text.random_encoder import byte_tokenizer

    root = tmp_path_factory.mktemp("repos")
    model = root / "hart-tiny"
    shutil.copytree(FIXTURE / "llm", model / "llm")
    shutil.copytree(FIXTURE / "tokenizer", model / "tokenizer")
    ema = {k: v * 0.5 for k, v in load_file(FIXTURE / "llm" / "model.safetensors").items()}
    torch.save(ema, model / "llm" / "ema_model.bin")
    (model / "README.md").write_text("tiny HART in the official layout\n")
    (model / "samples").mkdir()
    (model / "samples" / "unneeded.bin").write_bytes(os.urandom(4096))

    encoder = root / "qwen"
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    Qwen2Model(config).save_pretrained(encoder)
    byte_tokenizer().save_pretrained(encoder)
    (encoder / "pytorch_model.bin").write_bytes(os.urandom(1024))  # pickled weights are never fetched
    return {"model": model, "encoder": encoder}


@pytest.fixture
def hub(repos):
    with FakeHub() as server:
        server.add_repo(REPO, repos["model"])
        server.add_repo(OFFICIAL_TEXT_ENCODER, repos["encoder"])
        yield server


def run_cli(args, hf_home, endpoint, **env):
    environment = dict(os.environ, HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1",
                       HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5", **env)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        if key not in env:
            environment.pop(key, None)
    return subprocess.run([sys.executable, "-m", "openhart", *args], capture_output=True, text=True,
                          env=environment, timeout=300)


def messages(stderr: str) -> list[str]:
    """stderr without huggingface_hub's progress bars."""
    return [line for line in stderr.strip().splitlines() if line.strip() and "it/s]" not in line and "%|" not in line]


def cached_files(hf_home: Path) -> list[Path]:
    return sorted(p for p in (hf_home / "hub").rglob("*") if p.is_file()) if (hf_home / "hub").exists() else []


def test_download_fetches_only_what_is_needed_and_generation_then_runs_offline(hub, repos, tmp_path):
    hf_home = tmp_path / "hf"
    done = run_cli(["download", REPO], hf_home, hub.url)
    assert done.returncode == 0, done.stderr
    assert sorted(hub.downloads(REPO)) == ["README.md", "llm/config.json", "llm/ema_model.bin",
                                           "tokenizer/config.json", "tokenizer/model.safetensors"]
    encoder_files = hub.downloads(OFFICIAL_TEXT_ENCODER)
    assert "model.safetensors" in encoder_files and "config.json" in encoder_files
    assert "pytorch_model.bin" not in encoder_files
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"model {REPO}: {hf_home}") and lines[1].startswith(f"text encoder {OFFICIAL_TEXT_ENCODER}: {hf_home}")

    # offline, from the cache: no request reaches the Hub, and the image equals the local folders'
    requests = len(hub.requests)
    out = tmp_path / "hub.png"
    done = run_cli(["generate", "a red apple", "--model", REPO, "--seed", "3", "--dtype", "fp32", "--out", str(out),
                    "--quiet"], hf_home, hub.url, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert len(hub.requests) == requests
    local = tmp_path / "local.png"
    done = run_cli(["generate", "a red apple", "--model", str(repos["model"]), "--text-encoder", str(repos["encoder"]),
                    "--seed", "3", "--dtype", "fp32", "--out", str(local), "--quiet"], tmp_path / "empty-hf", hub.url,
                   HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert Image.open(out).tobytes() == Image.open(local).tobytes()
    meta = json.loads(Image.open(out).text["openhart"])
    assert meta["model"] == REPO and meta["text_encoder"] == OFFICIAL_TEXT_ENCODER

    # a second download is served from the cache: nothing is fetched again
    fetched = len(hub.downloads(REPO))
    assert run_cli(["download", REPO], hf_home, hub.url).returncode == 0
    assert len(hub.downloads(REPO)) == fetched


def test_raw_weights_and_revisions(hub, tmp_path):
    hf_home = tmp_path / "hf"
    done = run_cli(["download", f"{REPO}@main", "--weights", "raw", "--text-encoder", "none"], hf_home, hub.url)
    assert done.returncode == 0, done.stderr
    fetched = hub.downloads(REPO)
    assert "llm/model.safetensors" in fetched and "llm/ema_model.bin" not in fetched
    assert hub.downloads(OFFICIAL_TEXT_ENCODER) == []
    done = run_cli(["download", f"{REPO}@v9"], hf_home, hub.url)
    assert done.returncode == 2 and "revision 'v9' not found" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("case", ["offline-empty-cache", "refused", "unknown-repo", "not-hart"])
def test_failures_are_one_line_with_the_fix_and_exit_code_2(hub, repos, tmp_path, case):
    hf_home = tmp_path / "hf"
    endpoint, env, name = hub.url, {}, REPO
    if case == "offline-empty-cache":
        env = {"HF_HUB_OFFLINE": "1"}
    elif case == "refused":
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    elif case == "unknown-repo":
        name = "someone/no-such-model"
    else:
        hub.add_repo("someone/llm-only", repos["model"] / "llm")  # config.json is not HART's layout
        name = "someone/llm-only"
    done = run_cli(["generate", "a cat", "--model", name, "--out", str(tmp_path / "x.png")], hf_home, endpoint, **env)
    assert done.returncode == 2, done.stderr
    lines = messages(done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    expected = {"offline-empty-cache": "offline mode is on", "refused": "openhart download",
                "unknown-repo": "not found on the Hub", "not-hart": "is not a HART model"}[case]
    assert expected in lines[0]
    assert not (tmp_path / "x.png").exists()
    assert not [p for p in cached_files(hf_home) if p.name.endswith(".incomplete")]


def test_a_broken_download_leaves_no_partial_file_and_a_retry_completes(hub, tmp_path):
    hf_home = tmp_path / "hf"
    hub.fail_paths.add((REPO, "tokenizer/model.safetensors"))
    done = run_cli(["download", REPO, "--text-encoder", "none"], hf_home, hub.url)
    assert done.returncode == 2, done.stderr
    assert len(messages(done.stderr)) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not [p for p in cached_files(hf_home) if p.name.endswith(".incomplete")]
    # offline, the incomplete snapshot is refused rather than half-loaded
    done = run_cli(["generate", "a cat", "--model", REPO, "--out", str(tmp_path / "x.png")], hf_home, hub.url,
                   HF_HUB_OFFLINE="1")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    hub.fail_paths.clear()
    done = run_cli(["download", REPO, "--text-encoder", "none"], hf_home, hub.url)
    assert done.returncode == 0, done.stderr


def test_adapters_come_from_the_hub_and_then_work_offline(tmp_path):
    from openhart.loading import load_model

    from .test_lora import random_adapter

    repo = random_adapter(load_model(FIXTURE), tmp_path / "upload")
    (repo / "checkpoints").mkdir()
    (repo / "checkpoints" / "ckpt-00000010.pt").write_bytes(os.urandom(4096))  # never fetched
    hf_home = tmp_path / "hf"
    common = ["--model", str(FIXTURE), "--text-encoder", "random", "--seed", "1", "--dtype", "fp32", "--quiet"]
    with FakeHub() as hub:
        hub.add_repo("me/hart-lora", repo)
        done = run_cli(["generate", "a red apple", *common, "--lora", "me/hart-lora:0.5", "--out",
                        str(tmp_path / "online.png")], hf_home, hub.url)
        assert done.returncode == 0, done.stderr
        assert sorted(hub.downloads("me/hart-lora")) == ["adapter_config.json", "adapter_model.safetensors",
                                                          "openhart_adapter.json"]
        requests = len(hub.requests)
        done = run_cli(["generate", "a red apple", *common, "--lora", "me/hart-lora:0.5", "--out",
                        str(tmp_path / "offline.png")], hf_home, hub.url, HF_HUB_OFFLINE="1")
        assert done.returncode == 0, done.stderr
        assert len(hub.requests) == requests
        done = run_cli(["generate", "a red apple", *common, "--lora", "me/no-such-lora", "--out",
                        str(tmp_path / "x.png")], hf_home, hub.url)
        assert done.returncode == 2 and len(messages(done.stderr)) == 1 and "not found" in done.stderr
    online, offline = Image.open(tmp_path / "online.png"), Image.open(tmp_path / "offline.png")
    assert online.tobytes() == offline.tobytes()
    adapters = json.loads(offline.text["openhart"])["adapters"]
    assert adapters[0]["source"] == "me/hart-lora" and adapters[0]["scale"] == 0.5


@pytest.mark.parametrize("behaviour", ["silent", "drip"])
def test_a_stalled_endpoint_ends_with_one_line_naming_it(tmp_path, behaviour):
    import time

    with StalledEndpoint(behaviour) as endpoint:
        started = time.monotonic()
        done = run_cli(["download", REPO], tmp_path / "hf", endpoint.url, OPENHART_HUB_TIMEOUT="2")
        seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = messages(done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert endpoint.url in lines[0] and "cannot be reached" in lines[0]
    assert seconds < 60


def test_a_bad_hub_timeout_setting_is_one_line(tmp_path):
    done = run_cli(["download", REPO], tmp_path / "hf", "http://127.0.0.1:9", OPENHART_HUB_TIMEOUT="soon")
    assert done.returncode == 2 and "OPENHART_HUB_TIMEOUT must be a number" in done.stderr
