"""The `openhart` command line: gathers the commands (one module each in `openhart.commands`) and
turns their errors into exit codes.

Exit codes: 0 success, 2 bad usage or bad input (one-line message on stderr), 1 internal error,
128 + N when stopped by signal N (SIGINT, SIGTERM, SIGHUP), after removing what was half-written.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
import traceback

from huggingface_hub.utils import logging as hub_logging

from .allocator import keep_large_blocks
from .commands import (bench, cache, convert, data, download, edit, evaluate, export, finetune, generate,
                       reconstruct, serve, train)
from .commands.common import UsageError
from .outputs import terminate_as_interrupt
from .version import __version__

__all__ = ["main", "build_parser", "UsageError"]

EXIT_OK, EXIT_INTERNAL_ERROR, EXIT_BAD_INPUT = 0, 1, 2  # and 128 + N on signal N (130 on Ctrl+C)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="openhart: %(levelname)s: %(message)s", level=logging.WARNING)
    for noisy in ("transformers", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # huggingface_hub resets its logger when imported: its retry notices would bury the one-line
    # error of a failed download (its progress bars stay)

    hub_logging.set_verbosity_error()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    keep_large_blocks()  # openhart.allocator: large activations reuse the heap instead of fresh mappings
    try:
        with terminate_as_interrupt():  # SIGTERM and SIGHUP clean up like Ctrl+C
            return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        # CheckpointError and UsageError are ValueErrors too.
        print(f"openhart {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # the machine said no: permissions, a full disk, a read-only filesystem
        where = f"{error.filename}: " if error.filename else ""
        print(f"openhart {args.command}: error: {where}{error.strerror or error}; check the path, "
              "its permissions and the free disk space", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"openhart {args.command}: {'interrupted' if signum == signal.SIGINT else 'terminated'}; "
              "nothing was left half-written", file=sys.stderr)
        return 128 + signum
    except Exception:  # a bug, not the user's input: show where it happened
        traceback.print_exc()
        print(f"openhart {args.command}: internal error (a bug in openhart, not in your input); "
              "please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _one_line(error: BaseException) -> str:
    """An error message on one line (messages from libraries may span several)."""
    return " ".join(str(error).split())


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line that names the flag, with a pointer to --help (argparse prints
    the whole usage block otherwise)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="openhart",
        description="openhart: an open, trainable HART (Hybrid Autoregressive Transformer).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `openhart COMMAND --help` for the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"openhart {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (generate, edit, download, convert, reconstruct, bench, finetune, data, train, cache, export,
                   evaluate, serve):
        module.add_command(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
