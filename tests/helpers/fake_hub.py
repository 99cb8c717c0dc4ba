"""Test helper: a Hugging Face Hub on 127.0.0.1 that serves local folders as model repos.

It answers the few endpoints `huggingface_hub.snapshot_download` calls, as the Hub does:

- GET  /api/models/{repo}/revision/{revision}   repo info: the commit sha of the revision
- GET  /api/models/{repo}/tree/{revision}       the recursive file listing (path, size, git oid)
- HEAD /{repo}/resolve/{revision}/{path}        X-Repo-Commit, ETag (the blob's git oid), size
- GET  /{repo}/resolve/{revision}/{path}        the bytes

Unknown repos answer 404 with `X-Error-Code: RepoNotFound`, unknown revisions
`RevisionNotFound`, unknown files `EntryNotFound`. `fail_paths` lists files that are listed but
whose download fails midway (half the bytes, then the connection closes); every request is
recorded in `requests`.

Use it with `HF_ENDPOINT=hub.url` in a child process (huggingface_hub reads it at import).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[str, tuple[str, Path]] = {}
        self.fail_paths: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo_id: str, folder: Path) -> str:
        """Serve `folder` as `repo_id` at branch main; returns its commit sha."""
        commit = hashlib.sha1(f"{repo_id}:{folder}".encode()).hexdigest()
        self.repos[repo_id] = (commit, Path(folder))
        return commit

    def downloads(self, repo_id: str) -> list[str]:
        """Paths of the files of `repo_id` fetched with GET so far."""
        prefix = f"/{repo_id}/resolve/"
        return [path[len(prefix):].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and path.startswith(prefix)]

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ----- files ---------------------------------------------------------------------------------

    def _files(self, folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def _lookup(self, repo_id: str, revision: str):
        """(commit, folder) or an error code."""
        if repo_id not in self.repos:
            return "RepoNotFound"
        commit, folder = self.repos[repo_id]
        if revision not in ("main", commit):
            return "RevisionNotFound"
        return commit, folder

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _error(self, status: int, code: str, message: str):
                payload = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _json(self, data):
                payload = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _serve(self, body: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo_id, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
                    found = hub._lookup(repo_id, revision)
                    if isinstance(found, str):
                        return self._error(404, found, f"{found}: {repo_id}@{revision}")
                    commit, folder = found
                    files = hub._files(folder)
                    if kind == "revision":
                        return self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                           "siblings": [{"rfilename": f.relative_to(folder).as_posix()}
                                                        for f in files]})
                    return self._json([{"type": "file", "path": f.relative_to(folder).as_posix(),
                                        "size": f.stat().st_size, "oid": git_blob_oid(f.read_bytes())}
                                       for f in files])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, revision, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    found = hub._lookup(repo_id, revision)
                    if isinstance(found, str):
                        return self._error(404, found, f"{found}: {repo_id}@{revision}")
                    commit, folder = found
                    file = folder / rel
                    if not file.is_file():
                        return self._error(404, "EntryNotFound", f"{rel} not found in {repo_id}")
                    data = file.read_bytes()
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", commit)
                    self.send_header("ETag", f'"{git_blob_oid(data)}"')
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    if body:
                        if (repo_id, rel) in hub.fail_paths:
                            self.wfile.write(data[: len(data) // 2])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        self.wfile.write(data)
                    return
                self._error(404, "NotFound", f"no route for {path}")

        return Handler


class StalledEndpoint:
    """A server on 127.0.0.1 that accepts connections and never answers ("silent"), or sends
    headers and then a byte every half second ("drip"): what a Hub client must time out on.
    Serves from daemon threads from construction on; `close()` (or the `with` block) stops it."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.socket.settimeout(0.2)
        while not self.stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection):
        with connection:
            try:
                connection.recv(65536)
                if self.behaviour == "drip":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: 100000\r\n\r\n")
                while not self.stop.wait(0.5):
                    if self.behaviour == "drip":
                        connection.sendall(b" ")
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.socket.close()

    def __enter__(self) -> "StalledEndpoint":
        return self

    def __exit__(self, *exc):
        self.close()
