"""Writing a backup so a crash never leaves half a file where the last good one was."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.memory-tmp(-journal|-wal|-shm)?")


@contextmanager
def atomic_file(path: Path, replace: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that appears at `path`, mode 0600, only once the block has finished: written into an
    unnamed O_TMPFILE (or a hidden name where the filesystem has none), fsynced, then renamed over `path`,
    or with replace=False linked there, failing with FileExistsError rather than replace anything.
    On any failure `path` is untouched and nothing is left beside it."""
    directory = path.parent
    remove_leftovers(directory, path.name)
    temp = temp_beside(path)
    try:
        fd, named = _open_unnamed(directory, temp)
    except OSError as exc:   # name the file the user asked for, not our temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            yield out
            out.flush()
        os.fchmod(fd, 0o600)
        os.fsync(fd)
        if not replace and named:
            os.link(temp, path)
        elif not replace:
            _link(fd, path)
        else:
            if not named:
                _link(fd, temp)
                named = True
            os.replace(temp, path)
        _fsync_directory(directory)
    finally:
        os.close(fd)
        if named:
            temp.unlink(missing_ok=True)


def _open_unnamed(directory: Path, fallback: Path) -> tuple[int, bool]:
    """(fd, whether it already has a name). O_TMPFILE has none until linked, so a crash leaves nothing;
    it is used only where a throwaway one can be linked, so the data never has to be copied."""
    if _unnamed_files_link(directory):
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600), False
    return os.open(fallback, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), True


def _unnamed_files_link(directory: Path) -> bool:
    if not hasattr(os, "O_TMPFILE"):
        return False
    try:
        probe = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:
        return False
    name = directory / f".memory-link-probe.{os.getpid()}"
    try:
        _link(probe, name)
    except OSError:
        return False
    else:
        name.unlink()
        return True
    finally:
        os.close(probe)


def _link(fd: int, path: Path) -> None:
    """Give an O_TMPFILE a name: linkat(AT_EMPTY_PATH) where allowed, else through /proc/self/fd."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return
    if ctypes.get_errno() == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


def temp_beside(path: Path) -> Path:
    """The hidden name this process works under before `path` appears; `remove_leftovers` knows it."""
    return path.parent / f".{path.name}.{os.getpid()}.memory-tmp"


def remove_leftovers(directory: Path, name: str) -> None:
    """Remove what a killed earlier run left for `name`: a temporary backup (only where O_TMPFILE is
    missing) or a database being created, with its journal."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = _LEFTOVER.fullmatch(entry.name)
        if match and match["name"] == name and not _alive(int(match["pid"])):
            Path(entry.path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Counted(io.RawIOBase):
    """The bottom of the output stack: counts the bytes that reach the file, and never closes it."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.raw.write(data)
        self.bytes += len(data)
        return len(data)


@contextmanager
def output_stack(raw: IO[bytes], compression: str) -> Iterator[tuple[IO[bytes], Counted]]:
    """(what to write to, what counts the bytes): a compressor over a 1 MiB buffer over the file, so the
    file sees few large writes. The compressor's trailer is written only when the block ends well."""
    from .formats import compressed_writer
    counted = Counted(raw)
    buffered = io.BufferedWriter(counted, buffer_size=1 << 20)
    out = compressed_writer(buffered, compression)
    yield out, counted
    if out is not buffered:
        out.close()
    buffered.flush()
    raw.flush()
