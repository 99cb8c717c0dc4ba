"""`openhart serve`: the web UI over a model folder (the shipped emoji model by default)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from ..web.app import ImageService, build_app, import_gradio, launch
from ..web.limits import ServeLimits
from .common import UsageError, add_device_arguments, add_model_arguments, load_pipeline
from .ranges import integer

SERVE_EXAMPLES = """\
examples:
  openhart serve
      the small emoji model that ships with openhart, at http://127.0.0.1:7860
  openhart serve --model hart-0.7b-1024px --text-encoder Qwen2-VL-1.5B-Instruct --max-images 4
  openhart serve --host 0.0.0.0 --port 8080
      reachable from other machines (no authentication: only on a network you trust)
"""

LOOPBACK_NAMES = ("localhost",)


def add_command(commands) -> None:
    p = commands.add_parser(
        "serve", help="start the web UI (Gradio) on this machine",
        description="Serve a Gradio page for text-to-image with a HART model: prompt, negative "
                    "prompt, seed, guidance, sampling settings and a gallery of PNGs with their "
                    "metadata. One worker per model and a bounded queue; limits are enforced on "
                    "the server. Binds to 127.0.0.1 unless --host says otherwise.",
        epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=integer(1, 65535), default=7860, help="port (default 7860)")
    add_device_arguments(p)
    p.add_argument("--max-images", type=integer(1, 1024), default=8, help="images per request at most (default 8)")
    p.add_argument("--max-prompt-chars", type=integer(1, 100_000), default=300,
                   help="longest prompt in characters (default 300)")
    p.add_argument("--queue-size", type=integer(1, 10_000), default=16,
                   help="requests that may wait at once (default 16)")
    p.add_argument("--quiet", action="store_true", help="no start-up banner")
    p.set_defaults(handler=run_serve)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host {host!r} is not an address of this machine ({error})") from error
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as error:
            raise UsageError(f"cannot listen on {host}:{port} ({error.strerror}): the port is in use "
                             "or not allowed; pass another --port") from error


def run_serve(args: argparse.Namespace) -> int:
    limits = ServeLimits(max_prompt_chars=args.max_prompt_chars, max_images=args.max_images,
                         queue_size=args.queue_size)
    import_gradio()  # fail before loading the model if Gradio is missing
    check_port_free(args.host, args.port)
    if not is_loopback(args.host):
        logging.getLogger("openhart").warning(
            "binding to %s: anyone who can reach this machine on port %d can use the app and its "
            "compute (there is no authentication); use --host 127.0.0.1 to keep it local",
            args.host, args.port)
    pipe = load_pipeline(args)
    output_dir = Path(tempfile.mkdtemp(prefix="openhart-serve-"))
    signal.signal(signal.SIGTERM, _stop)  # a service manager's stop cleans up like Ctrl+C
    try:
        app = build_app(ImageService(pipe, output_dir), limits)
        if not args.quiet:
            print(f"openhart serve: model {pipe.name} on {pipe.device} ({str(pipe.dtype).removeprefix('torch.')}); "
                  f"open http://{args.host}:{args.port} (Ctrl+C stops)", file=sys.stderr, flush=True)
        launch(app, args.host, args.port, output_dir, quiet=args.quiet)
    except OSError as error:  # lost a race for the port after the check above
        raise UsageError(f"cannot serve on {args.host}:{args.port}: the port is in use; pass another "
                         "--port") from error
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return 0
