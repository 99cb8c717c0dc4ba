"""Reading the small text files people give openhart (configs, prompts, captions, metadata) with
bounds: a size cap checked before reading, strict UTF-8 with the offending byte named, a JSON
nesting limit, and one error line that names the file.

A 3 GB sparse `config.json` or a prompts file of binary junk is then one line, not a 3 GB read
and a MemoryError traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_TEXT_BYTES = 64 << 20  # configs, prompts files, metadata.jsonl, captions, manifests
MAX_JSON_DEPTH = 64  # nesting of objects and lists; openhart's own files nest 4 deep


class InputError(ValueError):
    """A file or value that openhart cannot read; one line naming it, exit code 2."""


def read_bytes(path: str | os.PathLike, what: str = "file", *, limit: int = MAX_TEXT_BYTES,
               error: type[ValueError] = InputError) -> bytes:
    """The bytes of `path`, refused before reading when the file is larger than `limit` (and
    while reading, for pipes and files that grow)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise error(f"{path} is {_size(size)}, more than the {_size(limit)} openhart reads from a {what}; "
                            "check that it is the right file")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder; expected a {what}") from None
    if len(data) > limit:
        raise error(f"{path} holds more than the {_size(limit)} openhart reads from a {what}; check that it is "
                    "the right file")
    return data


def decode_utf8(data: bytes, source: str, *, error: type[ValueError] = InputError) -> str:
    """`data` as UTF-8 text, without a leading byte-order mark; invalid bytes are an error that
    names `source` and the offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as failure:
        raise error(f"{source} is not valid UTF-8 (byte {failure.start}: {data[failure.start:failure.start + 4]!r}); "
                    "save it as UTF-8 text") from None
    return text.removeprefix("\ufeff")


def check_text(text: str, source: str, *, error: type[ValueError] = InputError) -> str:
    """`text` if it is valid Unicode; command-line arguments with invalid UTF-8 bytes reach
    Python as lone surrogates, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as failure:
        raise error(f"{source} is not valid UTF-8 text (character {failure.start} is an undecodable byte); "
                    "pass UTF-8 text") from None
    return text


def read_text(path: str | os.PathLike, what: str = "file", *, limit: int = MAX_TEXT_BYTES,
              error: type[ValueError] = InputError) -> str:
    """A UTF-8 text file, bounded by `limit` bytes (`read_bytes`, `decode_utf8`)."""
    return decode_utf8(read_bytes(path, what, limit=limit, error=error), str(path), error=error)


def parse_json(text: str | bytes, source: str, *, error: type[ValueError] = InputError):
    """The JSON value of `text`; malformed JSON, numbers beyond Python's digit limit and nesting
    deeper than MAX_JSON_DEPTH are errors that name `source`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as failure:  # JSONDecodeError, and int() beyond sys.get_int_max_str_digits()
        raise error(f"{source} is not valid JSON ({_first_line(failure)})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def read_json(path: str | os.PathLike, what: str = "JSON file", *, limit: int = MAX_TEXT_BYTES,
              error: type[ValueError] = InputError, mapping: bool = True):
    """A JSON file (bounded, UTF-8, depth-limited); with `mapping`, it must hold an object."""
    value = parse_json(read_text(path, what, limit=limit, error=error), str(path), error=error)
    if mapping and not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in item)
    return deepest


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
