"""The web fuzz class: hostile HTTP requests to a running `openhart serve` (tests/helpers/fuzz.py).

One server is started for all cases (the tiny model, a random text encoder, port chosen free).
Each case is one request to the Gradio API (`/gradio_api/call/generate` or `/edit`): too few or
too many values, a hostile value in each position, bodies that are not what the API takes. The
only answers allowed are an HTTP 4xx with a JSON body, an `error` event with a message (never
`error: null`), or a completed generation; and the server log must hold no traceback.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .fuzz import Case, Outcome

GENERATE = ["a red apple", "", 1, 4.5, 1, None, 0.0, True, 1, True, 1.0, "consistent"]
EDIT = [None, "a red apple", "variation", 0.5, 0, None, 1, 4.5, 1]
HOSTILE = [None, True, -1, 0, 10**400, -(10**400), 1e308, "x" * 5000, [], {}, [[[[]]]], {"path": "/etc/passwd"},
           "a \udcff cat", "\x00", 2.5, "nan", {"background": {"path": "/etc/shadow"}, "layers": []}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _requests(rng: random.Random, count: int) -> list[tuple[str, str, object]]:
    """(name, endpoint, body) of `count` hostile requests; body bytes are sent as they are."""
    fixed = [("no values", "generate", {"data": []}), ("3 values", "generate", {"data": GENERATE[:3]}),
             ("11 values", "generate", {"data": GENERATE[:11]}), ("13 values", "generate", {"data": GENERATE + [1]}),
             ("data is an object", "generate", {"data": {"a": 1}}), ("no data", "generate", {}),
             ("not JSON", "generate", b"{nope"), ("a list body", "generate", b"[1, 2]"),
             ("edit with 1 value", "edit", {"data": [None]})]
    requests = fixed[:count]
    while len(requests) < count:
        endpoint, base = rng.choice([("generate", GENERATE), ("edit", EDIT)])
        position = rng.randrange(len(base))
        value = rng.choice(HOSTILE)
        data = list(base)
        data[position] = value
        requests.append((f"{endpoint}[{position}] = {repr(value)[:20]}", endpoint, {"data": data}))
    return requests


def _call(url: str, endpoint: str, body) -> tuple[str, str]:
    """('http', status and body) or ('event', the SSE stream's text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8", "surrogatepass")
    request = urllib.request.Request(f"{url}/gradio_api/call/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            event = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as error:
        return "http", f"{error.code} {error.read()[:300].decode(errors='replace')}"
    with urllib.request.urlopen(f"{url}/gradio_api/call/{endpoint}/{event}", timeout=120) as response:
        return "event", response.read().decode(errors="replace")


def _problems(kind: str, answer: str) -> list[str]:
    if kind == "http":
        status, _, body = answer.partition(" ")
        if not status.startswith("4"):
            return [f"HTTP {status}"]
        try:
            json.loads(body)
        except ValueError:
            return [f"HTTP {status} without a JSON body"]
        return []
    if "event: complete" in answer:
        return []
    if "event: error" not in answer:
        return [f"neither complete nor error: {answer[:120]!r}"]
    payload = answer.split("data:", 1)[1].strip().splitlines()[0]
    try:
        message = json.loads(payload).get("error") if payload != "null" else None
    except ValueError:
        message = None
    return [] if message else ["an error event without a message"]


def run_web(seed: int, work: Path, model: Path, count: int, progress=None) -> list[Outcome]:
    """Start a server on the tiny `model`, send `count` hostile requests, stop it with SIGTERM."""
    if count <= 0:
        return []
    folder = work / "web"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "wb") as handle:
        server = subprocess.Popen([sys.executable, "-m", "openhart", "serve", "--model", str(model), "--port",
                                   str(port), "--quiet", "--max-images", "2"], stdout=handle, stderr=handle, env=env)
    outcomes = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/gradio_api/info", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the web server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        for name, endpoint, body in _requests(random.Random(seed), count):
            seen = log.stat().st_size
            started = time.monotonic()
            kind, answer = _call(url, endpoint, body)
            case = Case("web", name, folder, [endpoint], ())
            outcome = Outcome(case, 0, answer[:300], time.monotonic() - started, _problems(kind, answer))
            with open(log, "rb") as handle:
                handle.seek(seen)
                if b"Traceback" in handle.read():
                    outcome.problems.append("a traceback in the server log")
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = -9
    if code not in (0, 128 + signal.SIGTERM) and outcomes:
        outcomes[-1].problems.append(f"the server exited {code} on SIGTERM")
    return outcomes
