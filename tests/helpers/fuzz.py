"""Seeded fuzzing of openhart's inputs: model folders, image files and command-line flags.

Each case is a command line run by `openhart.cli.main` in a forked child process (fast: the
parent has imported openhart once) under a memory limit (RLIMIT_AS) and a time limit. The only
outcomes allowed are:

- exit 0 and a valid output (a PNG of the model's size, or reconstructions);
- exit 2 and exactly one line on stderr that names the file or the flag at fault;

and in both cases nothing half-written: no `*.tmp` file or staging folder left in the case's
folder, and no output file after a failure. `tests/reliability/test_fuzz.py` runs a few hundred
cases in CI; `python scripts/fuzz.py --seed S --cases N` runs more.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HART_TINY = ROOT / "tests" / "fixtures" / "conformance" / "hart-tiny"
CASE_TIMEOUT_S = 60
MEMORY_HEADROOM = 3 << 30  # bytes a case may allocate beyond what the parent holds


@dataclass
class Case:
    kind: str                      # "config", "weights", "image", "flags", ... (see make_cases)
    name: str                      # what was mutated, for the report
    folder: Path                   # the case's own folder (model copy, inputs, outputs)
    argv: list[str]
    names: tuple[str, ...]         # a one-line error must mention one of these
    output: Path | None = None     # the image file a successful run must write
    size: int | None = None        # the side of that output
    env: dict | None = None        # run `python -m openhart` with this environment (exec, not fork)
    signal_after: tuple[int, float] | None = None  # (signal, seconds): sent to the running case
    signal_codes: tuple[int, ...] = ()  # exit codes of a stop by that signal: allowed, no message
    pair: bool = False             # run the command twice at once (two processes)
    check: Callable | None = None  # check(case, code, stderr) -> problems, after the run


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)


# ----- the base material ---------------------------------------------------------------------------

def base_model(folder: Path) -> Path:
    """The tiny model as an openhart folder that names a random text encoder."""
    from openhart.loading import load_model, save_model

    return save_model(load_model(HART_TINY), folder, text_encoder={"kind": "random", "seed": 0})


def base_image(path: Path) -> Path:
    from PIL import Image

    Image.radial_gradient("L").convert("RGB").resize((96, 80)).save(path)
    return path


# ----- mutations -----------------------------------------------------------------------------------

HOSTILE_VALUES = [None, True, -1, 0, 1, 3, 2**31, 10**9, 10**18, -1e9, 1e308, 0.5, float("nan"), float("inf"),
                  float("-inf"), "8", "", "x" * 10, [], [1, 2], {}, {"a": 1}]


def _leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(data, list) and data and all(isinstance(v, (int, float)) for v in data):
        yield path  # a list of numbers is one field
        for i in (0, len(data) - 1):
            yield path + (i,)
    else:
        yield path


def _set(data, path, value):
    for key in path[:-1]:
        data = data[key]
    if value is _DELETE:
        if isinstance(data, dict):
            del data[path[-1]]
        else:
            data.pop(path[-1])
    else:
        data[path[-1]] = value


_DELETE = object()


def config_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """`count` mutations of config.json: each leaf field (and whole sections) gets a hostile value."""
    config = json.loads((model / "config.json").read_text())
    paths = list(_leaves(config)) + [("config",), ("config", "tokenizer"), ("config", "transformer"),
                                     ("config", "head"), ("text_encoder",)]
    cases = []
    for i in range(count):
        path = paths[i % len(paths)] if i < len(paths) else rng.choice(paths)
        value = rng.choice(HOSTILE_VALUES + [_DELETE, "list-of-object"])
        mutated = copy.deepcopy(config)
        if value == "list-of-object":
            value = [1, 2, 3]
        _set(mutated, path, value)
        label = ".".join(map(str, path)) + f" = {'<deleted>' if value is _DELETE else repr(value)[:20]}"

        def prepare(folder, mutated=mutated):
            (folder / "config.json").write_text(json.dumps(mutated))  # NaN/Infinity as json writes them
        cases.append((_generate_case("config", label, work / f"config-{i}", ("config.json",)), prepare))
    if rng.random() < 1:  # the whole file: not JSON, a list, empty, binary
        for j, text in enumerate(["[1, 2]", "", "{not json", "\x00\xff" * 8, "null", "42"]):
            def prepare(folder, text=text):
                (folder / "config.json").write_text(text, encoding="latin-1")
            cases.append((_generate_case("config", f"config.json = {text[:10]!r}", work / f"config-file-{j}",
                                         ("config.json",)), prepare))
    return cases


def weight_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Truncations, bit flips, header edits and deletion of model.safetensors."""
    data = (model / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    tensors = [k for k in header if k != "__metadata__"]
    cases = []
    for i in range(count):
        kind = rng.choice(["truncate", "flip-header", "flip-data", "dtype", "shape", "offsets", "drop-key",
                           "header-length", "empty", "delete"])

        def prepare(folder, kind=kind, seed=rng.randrange(2**32)):
            r = random.Random(seed)
            path = folder / "model.safetensors"
            blob = bytearray(data)
            if kind == "truncate":
                blob = blob[:r.randrange(len(blob))]
            elif kind == "flip-header":
                for _ in range(r.randint(1, 4)):
                    blob[r.randrange(8, 8 + header_len)] ^= 1 << r.randrange(8)
            elif kind == "flip-data":
                for _ in range(r.randint(1, 64)):
                    blob[r.randrange(8 + header_len, len(blob))] ^= 1 << r.randrange(8)
            elif kind in ("dtype", "shape", "offsets", "drop-key"):
                edited = copy.deepcopy(header)
                key = r.choice(tensors)
                if kind == "dtype":
                    edited[key]["dtype"] = r.choice(["I64", "F16", "BF16", "U8", "BOOL", "F64", "XX"])
                elif kind == "shape":
                    edited[key]["shape"] = r.choice([[], [0], [10**12], [-1], [1, 2, 3, 4, 5]])
                elif kind == "offsets":
                    edited[key]["data_offsets"] = r.choice([[0, 10**15], [5, 2], [-1, 4], [0, 0]])
                else:
                    del edited[key]
                text = json.dumps(edited).encode()
                blob = bytearray(struct.pack("<Q", len(text)) + text + bytes(data[8 + header_len:]))
            elif kind == "header-length":
                blob[:8] = struct.pack("<Q", r.choice([0, 7, 10**12, len(blob) * 2]))
            elif kind == "empty":
                blob = bytearray()
            elif kind == "delete":
                path.unlink()
                return
            path.write_bytes(bytes(blob))
        cases.append((_generate_case("weights", kind, work / f"weights-{i}", ("model.safetensors",)), prepare))
    return cases


IMAGE_KINDS = ("thin", "huge", "bomb", "animated", "16-bit", "cmyk", "truncated", "empty", "random-bytes",
               "png-header-only", "palette", "grey-alpha", "tiny", "tiff-float")


def _write_image(kind: str, path: Path, r: random.Random) -> None:
    from PIL import Image

    if kind == "thin":
        Image.new("RGB", (r.choice([1, 2, 3]), r.choice([200, 5000, 16000]))).save(path, "PNG")
    elif kind == "huge":
        Image.new("1", (r.choice([17000, 20000, 30000]), r.choice([17000, 20000]))).save(path, "PNG")
    elif kind == "bomb":
        Image.new("1", (12000, r.choice([8000, 12000]))).save(path, "PNG")
    elif kind == "animated":
        frames = [Image.new("RGB", (64, 64), (r.randrange(256), 0, 0)) for _ in range(3)]
        frames[0].save(path, "GIF", save_all=True, append_images=frames[1:])
    elif kind == "16-bit":
        Image.new("I;16", (64, 48), r.randrange(65536)).save(path, "PNG")
    elif kind == "cmyk":
        Image.new("CMYK", (48, 64), (0, 255, 255, 0)).save(path, "JPEG")
    elif kind == "truncated":
        base_image(path)
        path.write_bytes(path.read_bytes()[:r.randrange(1, 200)])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(bytes(r.randrange(256) for _ in range(r.randrange(1, 4096))))
    elif kind == "png-header-only":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    elif kind == "palette":
        Image.new("P", (40, 40), 3).save(path, "PNG", transparency=3)
    elif kind == "grey-alpha":
        Image.new("LA", (50, 70), (100, 20)).save(path, "PNG")
    elif kind == "tiny":
        Image.new("RGB", (1, 1), (10, 20, 30)).save(path, "PNG")
    elif kind == "tiff-float":
        Image.new("F", (32, 32), 0.5).save(path, "TIFF")


def image_cases(rng: random.Random, work: Path, count: int) -> list[tuple[Case, callable]]:
    cases = []
    for i in range(count):
        kind = IMAGE_KINDS[i % len(IMAGE_KINDS)]
        folder = work / f"image-{i}"
        image = folder / "input.png"

        def prepare(_folder, kind=kind, image=image, seed=rng.randrange(2**32)):
            _write_image(kind, image, random.Random(seed))
        case = Case("image", kind, folder, ["reconstruct", str(image), "--out-dir", str(folder)], ("input.png",),
                    output=folder / "input.recon-continuous.png")
        cases.append((case, prepare))
    return cases


def edit_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    """Hostile images and masks given to `openhart edit` and `openhart vary`."""
    roles = ("image", "mask", "vary")
    cases = []
    for i in range(count):
        kind, role = IMAGE_KINDS[i % len(IMAGE_KINDS)], roles[(i // len(IMAGE_KINDS)) % len(roles)]
        folder = work / f"edit-{i}"
        hostile, good, out = folder / "hostile.png", folder / "good.png", folder / "out.png"

        def prepare(_folder, kind=kind, hostile=hostile, good=good, seed=rng.randrange(2**32)):
            base_image(good)
            _write_image(kind, hostile, random.Random(seed))
        common = ["--model", str(model), "--out", str(out), "--quiet", "--seed", "1", "--head-steps", "1",
                  "--dtype", "fp32"]
        argv = {"image": ["edit", str(hostile), "--mask", str(good), "a red apple", *common],
                "mask": ["edit", str(good), "--mask", str(hostile), "a red apple", *common],
                "vary": ["vary", str(hostile), "--strength", "0.5", *common]}[role]
        cases.append((Case("edit", f"{role}: {kind}", folder, argv, ("hostile.png",), output=out, size=128),
                      prepare))
    return cases


FLAG_VALUES = {
    "--num-images": ["-1", "0", "2", "100000", "1e3", "x"],
    "--seed": ["-1", str(2**64), str(2**63 - 1), "abc", "7"],
    "--guidance-scale": ["nan", "inf", "-1", "1e308", "0", "1001", "2.5"],
    "--top-k": ["-1", "0", "1", "1000000000", "2.5"],
    "--top-p": ["1.5", "nan", "-0.1", "0.9", "1"],
    "--head-steps": ["0", "1", "1000000000", "-3"],
    "--maskgit-iters": ["0", "1", "100000000", "2"],
    "--head-temperature": ["nan", "-1", "inf", "0", "1e300"],
    "--device": ["meta", "cuda:9", "xyz", "cpu", "mps"],
    "--dtype": ["fp8", "int8", "fp32", "bf16", "float32"],
    "--last-scale": ["official", "mine"],
    "--weights": ["raw", "best"],
    "--text-encoder": ["random", "/nonexistent/encoder", "owner/no-such-encoder@x"],
}


def flag_cases(rng: random.Random, model: Path, work: Path, count: int) -> list[tuple[Case, callable]]:
    flags = list(FLAG_VALUES)
    cases = []
    for i in range(count):
        flag = flags[i % len(flags)]
        value = rng.choice(FLAG_VALUES[flag])
        folder = work / f"flags-{i}"
        out = folder / "out.png"
        extra = [flag, value]
        if rng.random() < 0.3:  # a second hostile flag
            other = rng.choice(flags)
            extra += [other, rng.choice(FLAG_VALUES[other])]
        argv = ["generate", "a red apple", "--model", str(model), "--out", str(out), "--quiet", *extra]
        if "--head-steps" not in extra:
            argv += ["--head-steps", "1"]
        if "--dtype" not in extra:
            argv += ["--dtype", "fp32"]
        cases.append((Case("flags", f"{' '.join(extra)}", folder, argv, tuple(extra[0::2]) + ("seed", "guidance", "top",
                      "head", "maskgit", "device", "dtype", "text encoder", "weights", "last", "num-images", "cuda"),
                      output=out, size=128), lambda _folder: None))
    # the output path itself
    for j, target in enumerate(["dir.png", "missing/out.png", "out.jpg"]):
        folder = work / f"out-{j}"
        out = folder / target

        def prepare(_folder, out=out):
            if out.name == "dir.png":
                out.mkdir(parents=True)
        cases.append((Case("flags", f"--out {target}", folder, ["generate", "x", "--model", str(model), "--out",
                                                                 str(out), "--quiet"],
                           ("--out", target.split("/")[0], ".png")), prepare))
    return cases


def _generate_case(kind: str, name: str, folder: Path, names: tuple[str, ...]) -> Case:
    model = folder / "model"
    out = folder / "out.png"
    return Case(kind, name, folder, ["generate", "a red apple", "--model", str(model), "--out", str(out), "--seed",
                                     "1", "--head-steps", "1", "--quiet", "--dtype", "fp32"],
                names + (str(model),), output=out)


# Kinds of cases: those of this module, then those of issue #25 (fuzz_hostile.py); "web" requests
# run against one server after the others (fuzz_web.py).
KINDS = ("config", "weights", "image", "edit", "flags", "outputs", "signals", "concurrency", "bombs", "stalled",
         "official", "checkpoint", "records", "web")


def make_cases(seed: int, work: Path, model: Path, counts: dict[str, int]) -> list[tuple[Case, callable]]:
    from . import fuzz_hostile as hostile

    rng = random.Random(seed)
    cases = []
    cases += config_cases(rng, model, work, counts.get("config", 0))
    cases += weight_cases(rng, model, work, counts.get("weights", 0))
    cases += image_cases(rng, work, counts.get("image", 0))
    cases += edit_cases(rng, model, work, counts.get("edit", 0))
    cases += flag_cases(rng, model, work, counts.get("flags", 0))
    for kind, make in (("outputs", hostile.output_cases), ("signals", hostile.signal_cases),
                       ("concurrency", hostile.concurrency_cases), ("bombs", hostile.bomb_cases),
                       ("stalled", hostile.stalled_cases), ("official", hostile.official_cases),
                       ("checkpoint", hostile.checkpoint_cases), ("records", hostile.record_cases)):
        cases += make(rng, model, work, counts.get(kind, 0))
    return cases


# ----- running ---------------------------------------------------------------------------------------

def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def prepare_case(case: Case, prepare, model: Path) -> None:
    """The case's folder: a copy of the model for model mutations, then the mutation."""
    case.folder.mkdir(parents=True, exist_ok=True)
    if case.kind in ("config", "weights"):
        shutil.copytree(model, case.folder / "model")
        prepare(case.folder / "model")
    else:
        prepare(case.folder)


def start_case(case: Case) -> int:
    """Fork a child that runs the case under the limits; returns its pid."""
    stderr_path = case.folder / "stderr.txt"
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:  # the child: limits, stdout to /dev/null, stderr to a file, run, exit with the code
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        if case.env is not None:  # settings read at import (HF_ENDPOINT): a fresh interpreter
            os.execve(sys.executable, [sys.executable, "-m", "openhart", *case.argv], case.env)
        limit = _vm_size() + MEMORY_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.stdout = os.fdopen(1, "w")
        import torch

        torch.set_num_threads(1)
        from openhart.cli import main

        code = _run_pair(case.argv, stderr_path) if case.pair else main(case.argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - anything else is a crash
        import traceback

        traceback.print_exc()
        code = 99
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_pair(argv: list[str], stderr_path: Path) -> int:
    """Run `argv` in two processes at once; their exit codes go to codes.txt beside stderr.txt,
    their messages to stderr. Returns 0 (the judge reads codes.txt)."""
    from openhart.cli import main

    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 99
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    (stderr_path.parent / "codes.txt").write_text(" ".join(map(str, codes)))
    return 0


def _judge(case: Case, code: int, seconds: float, timed_out: bool = False) -> Outcome:
    stderr_path = case.folder / "stderr.txt"
    stderr = stderr_path.read_text(errors="replace") if stderr_path.is_file() else ""
    outcome = Outcome(case, code, stderr, seconds)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("openhart: WARNING")]
    folder = case.folder
    if timed_out:
        outcome.problems.append(f"no answer within {CASE_TIMEOUT_S} s")
    elif code in case.signal_codes:
        pass  # stopped by the signal it was sent: what it left behind is checked below
    elif case.pair:
        pass  # the two codes are judged by the case's check
    elif code == 0:
        output = case.output
        if output is not None and not output.exists():  # several images: -000, -001, ...
            output = output.with_name(f"{output.stem}-000{output.suffix}")
        if output is not None and not _valid_image(output, case.size):
            outcome.problems.append(f"exit 0 but no valid output at {case.output}")
    elif code == 2:
        if len(lines) != 1:
            outcome.problems.append(f"exit 2 with {len(lines)} lines on stderr")
        elif not any(name.lower() in lines[0].lower() for name in case.names):
            outcome.problems.append(f"the error names none of {case.names[:3]}")
        if case.output is not None and case.output.exists() and not case.output.is_dir():
            outcome.problems.append("an output was written by a failed run")
    else:
        outcome.problems.append(f"exit code {code}")
    leftovers = [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".old", ".lock"))
                 and not p.is_symlink() and not p.is_fifo()]
    if leftovers:
        outcome.problems.append(f"half-written files left: {[p.name for p in leftovers][:3]}")
    if case.check is not None and not timed_out:
        outcome.problems += case.check(case, code, stderr)
    return outcome


def _valid_image(path: Path, size: int | None) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.mode == "RGB" and (size is None or image.size == (size, size))
    except Exception:  # noqa: BLE001
        return False


def run(seed: int, work: Path, counts: dict[str, int], *, workers: int = 2,
        progress=None) -> tuple[list[Outcome], Counter]:
    """Make and run the cases, `workers` children at a time, from this (main) thread only;
    returns the outcomes and the number of cases per kind. Each case's folder is removed once
    judged (its model copy included)."""
    import torch

    torch.set_num_threads(1)  # no thread pool in the parent: forking stays safe
    importlib.import_module("openhart.cli")  # imported once here, inherited by every child

    work.mkdir(parents=True, exist_ok=True)
    model = base_model(work / "base-model")
    cases = make_cases(seed, work, model, counts)
    pending, running, outcomes, signalled = list(cases), {}, [], set()
    while pending or running:
        while pending and len(running) < workers:
            case, prepare = pending.pop(0)
            prepare_case(case, prepare, model)
            running[start_case(case)] = (case, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for pid, (case, started) in list(running.items()):
                if case.signal_after and pid not in signalled and now - started >= case.signal_after[1]:
                    signalled.add(pid)
                    os.kill(pid, case.signal_after[0])
                if now - started > CASE_TIMEOUT_S:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    del running[pid]
                    outcomes.append(_judge(case, -9, now - started, timed_out=True))
            time.sleep(0.01)
            continue
        case, started = running.pop(pid)
        outcome = _judge(case, os.waitstatus_to_exitcode(status), time.monotonic() - started)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
        if not outcome.problems:
            _remove(case.folder)
    from .fuzz_hostile import close_endpoints
    from .fuzz_web import run_web

    close_endpoints()
    web = run_web(seed, work, model, counts.get("web", 0), progress)
    return outcomes + web, Counter([c.kind for c, _ in cases] + ["web"] * len(web))


def _remove(folder: Path) -> None:
    """Remove a case's folder, read-only files and FIFOs included."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)
    shutil.rmtree(folder, ignore_errors=True)


def report(outcomes: list[Outcome], kinds: Counter) -> str:
    codes = Counter((o.case.kind, o.code) for o in outcomes)
    lines = [f"{len(outcomes)} fuzz cases: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
             "exit codes by kind: " + ", ".join(f"{k}/{c}: {n}" for (k, c), n in sorted(codes.items())),
             f"slowest case {max(o.seconds for o in outcomes):.1f} s"]
    bad = [o for o in outcomes if o.problems]
    for o in bad[:20]:
        lines.append(f"FAIL {o.case.kind} [{o.case.name}]: {'; '.join(o.problems)} | {o.stderr.strip()[-300:]}")
    return "\n".join(lines)
