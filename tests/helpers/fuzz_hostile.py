"""The fuzz classes of issue #25 (tests/helpers/fuzz.py runs them): output targets, signals at
every stage of a write, concurrent writers, bombs, stalled Hub endpoints, type confusion in the
official layout's config files, doctored checkpoints and hostile dataset records.

Each generator returns (Case, prepare) pairs like those of fuzz.py; `prepare(folder)` builds the
case's inputs in its folder, and `Case.check` adds what the generic judge cannot know (a
protected file still intact, a destination that is either untouched or complete).
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import shutil
import signal
import stat
import sys
import tarfile
from pathlib import Path

from .fake_hub import StalledEndpoint
from .fuzz import HART_TINY, HOSTILE_VALUES, Case

PROTECTED = b"a file the user keeps"


# ----- helpers ---------------------------------------------------------------------------------------

def _fingerprint(path: Path):
    """What must not change about a protected path: kind, mode and content."""
    mode = path.lstat().st_mode
    data = path.read_bytes() if stat.S_ISREG(mode) else None
    return stat.S_IFMT(mode), stat.S_IMODE(mode), data


def _loadable(folder: Path) -> bool:
    from openhart.loading import load_model

    try:
        load_model(folder)
        return True
    except Exception:  # noqa: BLE001
        return False


def _keeps(paths: list[Path], fingerprints: dict) -> list[str]:
    return [f"{p.name} was changed" for p in paths if not (p.exists() or p.is_symlink()) or _fingerprint(p) != fingerprints[p]]


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


# ----- output targets --------------------------------------------------------------------------------

OUTPUT_TARGETS = ("read-only", "fifo", "folder", "dev-null", "symlink-to-read-only", "long-ok", "too-long",
                  "eval-out-is-file", "bench-json-fifo", "json-read-only")


def output_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Outputs that must be refused before any work (and left as they were), or written."""
    cases = []
    for i in range(count):
        target = OUTPUT_TARGETS[i % len(OUTPUT_TARGETS)]
        folder = work / f"outputs-{i}"
        out = {"long-ok": folder / ("o" * 246 + ".png"), "too-long": folder / ("o" * 256 + ".png"),
               "dev-null": Path(os.devnull), "folder": folder / "out.png"}.get(target, folder / "out.png")
        protected: list[Path] = []
        prints: dict = {}

        def prepare(_folder, target=target, out=out, protected=protected, prints=prints):
            _folder.mkdir(parents=True, exist_ok=True)
            if target in ("read-only", "json-read-only"):
                out.write_bytes(PROTECTED)
                out.chmod(0o444)
                protected.append(out)
            elif target in ("fifo", "bench-json-fifo"):
                os.mkfifo(out)
                protected.append(out)
            elif target == "folder":
                out.mkdir()
                (out / "keep.txt").write_bytes(PROTECTED)
                protected.append(out / "keep.txt")
            elif target == "symlink-to-read-only":
                real = _folder / "real.png"
                real.write_bytes(PROTECTED)
                real.chmod(0o444)
                out.symlink_to(real)
                protected.append(real)
            elif target == "eval-out-is-file":
                out.write_bytes(PROTECTED)
                protected.append(out)
            prints.update({p: _fingerprint(p) for p in protected})

        if target.startswith("bench") or target == "json-read-only":
            argv = ["bench", "--preset", "tiny", "--size", "256", "--repeats", "1", "--warmup", "0", "--json", str(out)]
        elif target == "eval-out-is-file":
            argv = ["eval", "--model", str(model), "--data", str(folder), "--out", str(out)]
        else:
            argv = ["generate", "a red apple", "--model", str(model), "--out", str(out), "--quiet", "--seed", "1",
                    "--head-steps", "1", "--dtype", "fp32"]

        def check(case, code, stderr, target=target, protected=protected, prints=prints):
            problems = _keeps(protected, prints)
            if target == "long-ok" and code != 0:
                problems.append("a 250-byte output name was refused")
            if target not in ("long-ok", "symlink-to-read-only") and code != 2:
                problems.append(f"exit {code} for an output that must be refused")
            return problems
        names = ("--out", "--json", "out.png", "o" * 20, "read-only", "folder", "regular file", os.devnull)
        cases.append((Case("outputs", target, folder, argv, names,
                           output=out if target == "long-ok" else None, size=128, check=check), prepare))
    return cases


# ----- signals and concurrent writers ----------------------------------------------------------------

def signal_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """`convert` and `export`-like folder writes stopped by SIGTERM, SIGHUP or SIGINT at a random
    moment: the destination is either as it was or complete, and nothing is left behind."""
    cases = []
    for i in range(count):
        signum = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)[i % 3]
        existing = i % 2 == 1
        delay = rng.uniform(0.0, 1.2)
        folder = work / f"signals-{i}"
        dst = folder / "dst"
        prints: dict = {}

        def prepare(_folder, dst=dst, existing=existing, prints=prints):
            _folder.mkdir(parents=True, exist_ok=True)
            if existing:
                shutil.copytree(model, dst)
                (dst / "notes.txt").write_bytes(PROTECTED)
                prints.update({p: _fingerprint(p) for p in dst.iterdir()})

        def check(case, code, stderr, dst=dst, existing=existing, prints=prints):
            problems = []
            if existing:
                notes = dst / "notes.txt"
                if not notes.is_file() or notes.read_bytes() != PROTECTED:
                    problems.append("the user's file in the destination was lost")
                if not _loadable(dst):
                    problems.append("the destination is neither the old model nor the new one")
            elif dst.exists() and not _loadable(dst):
                problems.append("a half-written destination was left")
            return problems
        argv = ["convert", str(model), str(dst)] + (["--overwrite"] if existing else [])
        cases.append((Case("signals", f"{signal.Signals(signum).name} after {delay:.2f} s"
                           + (" (existing)" if existing else ""), folder, argv, ("dst",),
                           signal_after=(signum, delay), signal_codes=(128 + signum,), check=check), prepare))
    return cases


def concurrency_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Two `convert`s into one destination at once: one writes it, the other is refused (or, with
    --overwrite, waits its turn by being refused); never two "verified" with one lost."""
    cases = []
    for i in range(count):
        overwrite = i % 2 == 1
        folder = work / f"concurrency-{i}"
        dst = folder / "dst"

        def check(case, code, stderr, dst=dst):
            codes_file = case.folder / "codes.txt"
            if not codes_file.is_file():
                return ["the pair did not report its exit codes"]
            codes = sorted(int(c) for c in codes_file.read_text().split())
            problems = []
            if 0 not in codes or any(c not in (0, 2) for c in codes):
                problems.append(f"exit codes {codes}")
            if codes == [0, 0] and "--overwrite" not in case.argv:
                problems.append("both writers of a new folder said they wrote it")
            refusals = [line for line in stderr.splitlines() if "error:" in line]
            if codes.count(2) != len(refusals) or not all(
                    "another openhart process" in r or "already exists" in r for r in refusals):
                problems.append(f"unclear refusal: {refusals}")
            if not _loadable(dst):
                problems.append("the destination is not a complete model")
            return problems
        argv = ["convert", str(model), str(dst)] + (["--overwrite"] if overwrite else [])
        cases.append((Case("concurrency", "two converts" + (" --overwrite" if overwrite else ""), folder, argv,
                           ("dst",), pair=True, check=check), lambda _folder: _folder.mkdir(parents=True, exist_ok=True)))
    return cases


# ----- bombs -----------------------------------------------------------------------------------------

BOMBS = ("sparse-config", "sparse-prompts", "sparse-metadata", "tar-member", "deep-json-config", "digits-config",
         "context-tokens", "sparse-training-config")


def bomb_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Small files that claim (or expand to) gigabytes, and absurd sizes: one line, no big read."""
    cases = []
    for i in range(count):
        bomb = BOMBS[i % len(BOMBS)]
        folder = work / f"bombs-{i}"
        copy_model, out = folder / "model", folder / "out.png"
        generate = ["generate", "a red apple", "--model", str(copy_model), "--out", str(out), "--quiet",
                    "--head-steps", "1", "--dtype", "fp32"]
        cache = ["cache", "--data", str(folder / "data"), "--tokenizer", str(model), "--text-encoder", "random",
                 "--resolution", "128", "--context-tokens", "8", "--out", str(folder / "cache")]
        argv, names = {
            "sparse-config": (generate, ("config.json",)),
            "sparse-prompts": (["generate", "--prompts-file", str(folder / "prompts.txt"), "--model", str(model),
                                "--out", str(out)], ("prompts.txt",)),
            "sparse-metadata": (cache, ("metadata.jsonl",)),
            "tar-member": (cache[:2] + [str(folder / "data" / "0.tar")] + cache[3:], ("0.tar",)),
            "deep-json-config": (generate, ("config.json",)),
            "digits-config": (generate, ("config.json",)),
            "context-tokens": (cache[:-4] + ["--context-tokens", "1000000000", "--out", str(folder / "cache")],
                               ("--context-tokens",)),
            "sparse-training-config": (["train", "tokenizer", "--config", str(folder / "train.json")],
                                       ("train.json",)),
        }[bomb]

        def prepare(_folder, bomb=bomb):
            _folder.mkdir(parents=True, exist_ok=True)
            if bomb in ("sparse-config", "deep-json-config", "digits-config"):
                shutil.copytree(model, _folder / "model")
            data = _folder / "data"
            if bomb == "sparse-config":
                _sparse(_folder / "model" / "config.json", 3 << 30)
            elif bomb == "deep-json-config":
                (_folder / "model" / "config.json").write_text("[" * 200_000 + "]" * 200_000)
            elif bomb == "digits-config":
                config = json.loads((model / "config.json").read_text())
                config["format_version"] = "DIGITS"
                text = json.dumps(config).replace('"DIGITS"', "9" * 6000)
                (_folder / "model" / "config.json").write_text(text)
            elif bomb == "sparse-prompts":
                _sparse(_folder / "prompts.txt", 3 << 30)
            elif bomb == "sparse-metadata":
                data.mkdir()
                _png(data / "a.png")
                _sparse(data / "metadata.jsonl", 3 << 30)
            elif bomb == "tar-member":
                data.mkdir()
                big = tarfile.TarInfo("bomb.png")
                big.size = 5 << 30  # declared, never present: a reader must not trust it
                (data / "0.tar").write_bytes(big.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
            elif bomb == "sparse-training-config":
                _sparse(_folder / "train.json", 3 << 30)
        cases.append((Case("bombs", bomb, folder, argv, names, check=_exit_2), prepare))
    return cases


def _exit_2(case, code, stderr):
    return [] if code == 2 else [f"exit {code}, expected a refusal"]


def _png(target) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(target, format="PNG")


# ----- stalled endpoints -----------------------------------------------------------------------------

ENDPOINTS: dict[str, StalledEndpoint] = {}


def stalled_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """`download` and `generate --model owner/name` against endpoints that stall: one line naming
    the endpoint, within a few timeouts."""
    cases = []
    for i in range(count):
        behaviour = ("silent", "drip")[i % 2]
        if behaviour not in ENDPOINTS:  # one server per behaviour, shared by its cases
            ENDPOINTS[behaviour] = StalledEndpoint(behaviour)
        endpoint = ENDPOINTS[behaviour]
        folder = work / f"stalled-{i}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENHART_HUB"))}
        env.update(HF_ENDPOINT=endpoint.url, HF_HOME=str(folder / "hf"), OPENHART_HUB_TIMEOUT="2",
                   HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=os.pathsep.join(sys.path))
        argv = (["download", "someone/some-model"] if i % 4 < 2 else
                ["generate", "a cat", "--model", "someone/some-model", "--out", str(folder / "x.png")])
        cases.append((Case("stalled", f"{behaviour}: {argv[0]}", folder, argv, (endpoint.url,), env=env,
                           check=_exit_2), lambda _folder: _folder.mkdir(parents=True, exist_ok=True)))
    return cases


# ----- the official layout ---------------------------------------------------------------------------

def official_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Hostile values (null, lists, objects, bools, NaN/Inf, huge numbers, strings) in the fields
    of the official llm/config.json and tokenizer/config.json, converted with `convert`."""
    files = {name: json.loads((HART_TINY / name / "config.json").read_text()) for name in ("llm", "tokenizer")}
    fields = [(name, key) for name, data in files.items() for key in sorted(data)
              if key not in ("architectures", "transformers_version", "torch_dtype")]
    cases = []
    for i in range(count):
        name, key = fields[i % len(fields)] if i < len(fields) else rng.choice(fields)
        value = rng.choice(HOSTILE_VALUES + [[1.5, "x"], 10**30, -(10**30), "llama"])
        mutated = copy.deepcopy(files[name])
        mutated[key] = value
        folder = work / f"official-{i}"

        def prepare(_folder, name=name, mutated=mutated):
            shutil.copytree(HART_TINY / "llm", _folder / "official" / "llm")
            shutil.copytree(HART_TINY / "tokenizer", _folder / "official" / "tokenizer")
            (_folder / "official" / name / "config.json").write_text(json.dumps(mutated))

        def check(case, code, stderr):
            dst = case.folder / "dst"
            return [] if code != 0 or _loadable(dst) else ["exit 0 but the converted folder does not load"]
        cases.append((Case("official", f"{name}/config.json {key} = {repr(value)[:20]}", folder,
                           ["convert", str(folder / "official"), str(folder / "dst")], ("config.json", "model.safetensors"),
                           check=check),
                      prepare))
    return cases


# ----- training checkpoints --------------------------------------------------------------------------

DOCTORINGS = ("drop:optimizer", "drop:rng", "drop:data_positions", "drop:model", "drop:config", "drop:kind",
              "drop:step", "type:model", "type:step", "type:config", "nan:model", "drop-section:config",
              "type:ema", "type:data_positions")


def checkpoint_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Doctored training checkpoints given to `export` (and to `export --weights raw`)."""
    cases = []
    for i in range(count):
        doctoring = DOCTORINGS[i % len(DOCTORINGS)]
        folder = work / f"checkpoint-{i}"
        ckpt = folder / "run" / "checkpoints" / "ckpt-00000010.pt"

        def prepare(_folder, doctoring=doctoring, ckpt=ckpt):
            import torch

            state = _tokenizer_checkpoint()
            what, _, key = doctoring.partition(":")
            if what == "drop":
                state.pop(key)
            elif what == "type":
                state[key] = {"model": [1, 2], "step": "ten", "config": [1], "ema": 5,
                              "data_positions": {"epoch": 0}}[key]
            elif what == "nan":
                first = next(iter(state["model"]))
                state["model"][first] = state["model"][first].clone().fill_(float("nan"))
                state["ema"] = None
            elif what == "drop-section":
                state["config"] = {}
            ckpt.parent.mkdir(parents=True)
            torch.save(state, ckpt)
        weights = "raw" if doctoring.startswith("nan") else "ema"

        def check(case, code, stderr, doctoring=doctoring):
            out = case.folder / "out"
            if doctoring in ("drop:optimizer", "drop:rng", "drop:data_positions", "type:data_positions"):
                # what export does not need: it exports
                return [] if code == 0 and (out / "config.json").is_file() else [f"exit {code}"]
            return [] if code == 2 and not out.exists() else [f"exit {code} for a doctored checkpoint"]
        cases.append((Case("checkpoint", doctoring, folder, ["export", str(folder / "run"), str(folder / "out"),
                                                            "--weights", weights],
                           ("ckpt-00000010.pt", "checkpoint"), check=check), prepare))
    return cases


_CHECKPOINT = {}


def _tokenizer_checkpoint() -> dict:
    """A complete checkpoint of the tiny tokenizer, as `openhart train tokenizer` writes it."""
    import torch

    if not _CHECKPOINT:
        from openhart.config import config_to_dict, tokenizer_tiny
        from openhart.tokenizer import HybridTokenizer
        from openhart.train.checkpoint import FORMAT, FORMAT_VERSION

        tokenizer = HybridTokenizer(tokenizer_tiny())
        weights = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
        _CHECKPOINT.update(format=FORMAT, format_version=FORMAT_VERSION, step=10, kind="tokenizer",
                           config={"tokenizer": config_to_dict(tokenizer.config)}, model=weights,
                           ema={k: v.clone() for k, v in weights.items()},
                           optimizer={"state": {}, "param_groups": []}, scheduler={}, world_size=1,
                           data_positions=[{"epoch": 0, "offset": 3}], rng=[{"torch_global": torch.get_rng_state()}],
                           extra={})
    return copy.deepcopy(_CHECKPOINT)


# ----- dataset records -------------------------------------------------------------------------------

RECORDS = [{"file_name": 7, "text": "a cat"}, {"file_name": None, "text": "a cat"}, {"file_name": ["a.png"], "text": "x"},
           {"file_name": "a.png", "text": ["a", "list"]}, {"file_name": "a.png", "text": 5}, {"file_name": "a.png"},
           {"file_name": "../a.png", "text": "a cat"}, {"file_name": "/etc/passwd", "text": "a cat"},
           {"file_name": "a.png", "text": ""}, [1, 2], "just a string", {"file_name": "", "text": "a cat"}]
TAR_CAPTIONS = [b'["a", "list"]', b'{"text": 5}', b"\xff\xfe\x00", b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                b"null", b'{"no": "text"}']


def record_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Hostile metadata.jsonl records (exit 2 naming file and line) and tar captions (skipped and
    counted: the cache still holds the good example)."""
    cases = []
    for i in range(count):
        folder = work / f"records-{i}"
        data = folder / "data"
        tar = i % 2 == 1
        argv = ["cache", "--data", str(data / "0.tar") if tar else str(data), "--tokenizer", str(model),
                "--text-encoder", "random", "--resolution", "128", "--context-tokens", "8", "--out",
                str(folder / "cache")]
        if tar:
            caption = TAR_CAPTIONS[(i // 2) % len(TAR_CAPTIONS)]

            def prepare(_folder, caption=caption, data=data):
                data.mkdir(parents=True)
                buffer = io.BytesIO()
                _png(buffer)
                with tarfile.open(data / "0.tar", "w") as shard:
                    for key, text in (("good", b"a red square"), ("bad", caption)):
                        for ext, blob in (("png", buffer.getvalue()), ("txt" if key == "good" else "json", text)):
                            info = tarfile.TarInfo(f"{key}.{ext}")
                            info.size = len(blob)
                            shard.addfile(info, io.BytesIO(blob))

            def check(case, code, stderr):
                return [] if code == 0 else [f"exit {code}: a bad tar caption must be skipped and counted"]
            cases.append((Case("records", f"tar caption {caption[:20]!r}", folder, argv, ("0.tar",), check=check),
                          prepare))
        else:
            record = RECORDS[(i // 2) % len(RECORDS)]

            def prepare(_folder, record=record, data=data):
                data.mkdir(parents=True)
                _png(data / "a.png")
                lines = [json.dumps({"file_name": "a.png", "text": "a red square"}), json.dumps(record)]
                (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
            cases.append((Case("records", f"metadata {json.dumps(record)[:30]}", folder, argv,
                               ("metadata.jsonl:2",), check=_exit_2), prepare))
    return cases


def close_endpoints() -> None:
    for endpoint in ENDPOINTS.values():
        endpoint.close()
    ENDPOINTS.clear()
