"""How openhart writes, so that no user's file is ever lost or left half-written.

- `atomic_path`: a file is written under a temporary name next to it, fsynced, then renamed over
  the target, so it appears complete or not at all.
- `staged_folder`: a folder's files are built in a staging folder next to it. A new folder is
  renamed into place whole; into an existing one (`overwrite=True`) only the files openhart
  wrote are moved, so a user's other files in it stay. A lock file serialises writers of one
  destination (a second one is refused), and staging folders left by a killed run are removed by
  the next run on the same destination.
- `check_output_file` and `check_destination`: outputs that cannot or must not be written (a
  read-only file, a FIFO, a device, a folder; a destination that is, contains or lies inside the
  source) are refused before any work.
- `terminate_as_interrupt`: SIGTERM and SIGHUP unwind like Ctrl+C, so every staging folder and
  temporary file is removed on the way out.

Temporary and lock names are derived from the target's name but never exceed the file system's
name limit because of it: a long name is shortened and completed with a hash.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

NAME_MAX = 255  # bytes per file name on the file systems openhart runs on (ext4, APFS, NTFS, tmpfs)
RANDOM_CHARS = 8  # of tempfile's names: [a-z0-9_]{8}


class OutputError(ValueError):
    """An output that cannot or must not be written; reported as one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that cleanup runs as for Ctrl+C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ----- names ---------------------------------------------------------------------------------------

def short_name(name: str, extra: int) -> str:
    """`name`, shortened (with a hash of the whole) so that `extra` more bytes fit in NAME_MAX."""
    room = NAME_MAX - extra
    if len(name.encode("utf-8", "surrogateescape")) <= room:
        return name
    digest = "~" + hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    kept = name
    while len((kept + digest).encode("utf-8", "surrogateescape")) > room:
        kept = kept[:-1]
    return kept + digest


def _temp_prefix(path: Path) -> str:
    return "." + short_name(path.name, extra=len("..") + RANDOM_CHARS + len(".tmp")) + "."


def _stale_pattern(path: Path) -> re.Pattern:
    """Names of the staging folders and temporary files of `path` (`.NAME.XXXXXXXX.tmp|old`)."""
    return re.compile(re.escape(_temp_prefix(path)) + r"[a-z0-9_]{%d}\.(tmp|old)" % RANDOM_CHARS)


def _absolute(path: str | os.PathLike) -> Path:
    """The absolute, normalised path (`.` and `..` resolved without following links), so that a
    target named `.` or `dir/..` has a real name and parent."""
    return Path(os.path.normpath(os.path.abspath(path)))


# ----- checks --------------------------------------------------------------------------------------

def check_output_file(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail before any work when `path` cannot be written as a regular file: a missing or
    read-only folder, a folder of that name, a FIFO, socket or device, a read-only file, or a
    name longer than the file system allows."""
    path = Path(path)
    if len(path.name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise OutputError(f"{flag} {path.name[:40]}...: the file name is longer than {NAME_MAX} bytes; "
                          "choose a shorter name")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise OutputError(f"{flag} {path}: cannot inspect it ({error.strerror}); choose another path") from error
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise OutputError(f"{flag} {path} is a folder; name a file to write")
        if not stat.S_ISREG(mode):
            raise OutputError(f"{flag} {path} exists and is not a regular file (a FIFO, socket or device); "
                              "openhart writes only regular files: choose another path")
        if not mode & 0o222 or not os.access(path, os.W_OK):  # mode bits too: root may write anything
            raise OutputError(f"{flag} {path} is read-only; openhart does not replace read-only files: "
                              "choose another path or make it writable")
    if not path.parent.is_dir():
        raise OutputError(f"{flag}: output folder does not exist: {path.parent}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag}: cannot write into {path.parent}: permission denied; choose another folder")


def check_output_folder(path: str | os.PathLike, flag: str, *, overwrite: bool | None = None,
                        sources: Iterable[str | os.PathLike] = ()) -> None:
    """Fail before any work when folder `path` cannot be written: it is a file or a special
    file, it exists and `overwrite` is False (True: the command's --overwrite was given; None: the
    command has no --overwrite and an existing folder is fine), it is, contains or lies inside
    one of `sources`, or its name is too long."""
    path = Path(path)
    if len(_absolute(path).name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise OutputError(f"{flag}: the folder name is longer than {NAME_MAX} bytes; choose a shorter name")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"{flag} {path} exists and is not a folder; choose another path")
        if overwrite is False:
            raise OutputError(f"{flag} {path} already exists; choose a new folder or pass --overwrite")
    check_destination(path, sources, flag)


def check_destination(dst: str | os.PathLike, sources: Iterable[str | os.PathLike], flag: str = "the destination") -> None:
    """Refuse a destination folder that is a source, contains one or lies inside one: writing it
    would replace or mix with what is being read."""
    target = Path(os.path.realpath(dst))
    for source in sources:
        src = Path(os.path.realpath(source))
        if target == src:
            raise OutputError(f"{flag} {dst} is the source {source}; write to a new folder")
        if src.is_relative_to(target):
            raise OutputError(f"{flag} {dst} contains the source {source}; write to a folder outside it")
        if target.is_relative_to(src):
            raise OutputError(f"{flag} {dst} lies inside the source {source}; write to a folder outside it")


# ----- locks ---------------------------------------------------------------------------------------

# The destinations this process holds, by (path, thread): taking one again from the same thread
# (a fine-tuning run around its training loop) nests instead of refusing itself.
_held: set[tuple[Path, int]] = set()


@contextlib.contextmanager
def destination_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold `.NAME.lock` next to `path` for the block; a second writer of the same destination is
    refused with an OutputError. The lock file is removed on release; a lock left by a killed
    process is not held (the kernel releases it) and is taken over. The thread that holds it may
    take it again (nested blocks)."""
    path = _absolute(path)
    key = (path, threading.get_ident())
    if key in _held:  # an inner block: the outer one releases the lock
        yield
        return
    with _flock(path):
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    lock = path.parent / ("." + short_name(path.name, extra=len("..lock")) + ".lock")
    try:
        # lazy: POSIX only
        import fcntl
    except ImportError:  # Windows: no advisory locks; writers are not serialised there
        yield
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputError(f"another openhart process is writing {path}; wait for it to finish "
                                  f"or choose another destination (lock: {lock})") from None
            raise
        # the previous holder may have removed the file between our open and our lock: retry on
        # the file that is there now, so that two processes never hold locks on different files
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def remove_stale(path: str | os.PathLike) -> None:
    """Remove the staging folders and temporary files of `path` left by a killed run. Call it
    while holding `destination_lock(path)`: no live writer of `path` exists then."""
    path = _absolute(path)
    pattern = _stale_pattern(path)
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            if pattern.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


# ----- writing -------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`.

    A symbolic link at `path` is replaced by the file (its target is never written)."""
    path = _absolute(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        with signals_deferred():
            os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike, *, overwrite: bool = True, owned: Iterable[str] = (),
                  sources: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a new empty folder next to `path`, to fill; when the block succeeds, its contents
    reach `path`, and when it fails, `path` is left as it was and the staging folder is removed.

    Args:
        overwrite: whether an existing `path` may receive the files (checked under the lock).
            Into an existing folder, each file or subfolder of the staging folder replaces the
            entry of the same name; the user's other files stay.
        owned: names of the folder's format that this write replaces even when it did not
            produce them (e.g. a system prompt file of an earlier model): they are removed, so
            that no file of an earlier model is mixed with the new one.
        sources: folders being read; a `path` that is one, contains one or lies inside one is refused.
    """
    path = _absolute(path)
    check_destination(path, sources)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(f"{path} exists and is not a folder")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"parent folder does not exist: {path.parent}")
    with destination_lock(path):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; choose a new folder")
        remove_stale(path)
        staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual mode
        try:
            yield staging
            with signals_deferred():  # a signal waits until every file has moved
                if path.exists():
                    _move_into(staging, path, owned)
                else:
                    os.replace(staging, path)
            _fsync_dir(path.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_into(staging: Path, path: Path, owned: Iterable[str]) -> None:
    """Move the entries of `staging` into the existing folder `path`; what they replace, and the
    `owned` names they do not, go into a trash folder inside `staging` (removed with it)."""
    entries = sorted(e for e in staging.iterdir())
    for entry in entries:  # check every conflict before moving anything
        target = path / entry.name
        if target.is_symlink() or (target.exists() and target.is_dir() != entry.is_dir()):
            raise FileExistsError(f"{target} is in the way of the {'folder' if entry.is_dir() else 'file'} "
                                  "openhart writes there; move it away")
    trash = Path(tempfile.mkdtemp(prefix=".replaced.", dir=staging))
    written = {e.name for e in entries}
    for name in owned:
        target = path / name
        if name not in written and (target.exists() or target.is_symlink()):
            os.replace(target, trash / name)
    # files first, config.json last: a reader that races the move sees the old config with the
    # new weights only if the shapes agree (a strict load refuses anything else)
    for entry in sorted(entries, key=lambda e: (e.name == "config.json", e.name)):
        target = path / entry.name
        if entry.is_dir() and target.exists():
            os.replace(target, trash / entry.name)
        os.replace(entry, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----- signals -------------------------------------------------------------------------------------

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for the block (a few renames), so that a commit is never
    cut in half; they are delivered when it ends. A no-op where the platform cannot block them."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (a KeyboardInterrupt) in the main
    thread, so that `finally` blocks remove staging folders and temporary files as for Ctrl+C.
    Outside the main thread it does nothing (signals can only be handled there)."""
    wanted = [s for s in STOP_SIGNALS if s != signal.SIGINT]
    previous = {}

    def handler(signum, frame):
        raise Terminated(signum)

    try:
        for signum in wanted:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
