"""Writing a backup so a crash never leaves half a file where the last good one was."""

from __future__ import annotations

import errno
import io
import os
import re
import stat
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Iterator

from . import portable
from .errors import PipelineError, Refused

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.memory-tmp(-journal|-wal|-shm)?")
# The files SQLite keeps a database in: a backup written over any of them destroys committed rows.
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")


class NotAFile(PipelineError):
    """The output path is a directory."""


@contextmanager
def atomic_file(path: Path, replace: bool = True, database: Path | None = None) -> Iterator[IO[bytes]]:
    """A binary file that appears at `path`, mode 0600, only once the block has finished: written into an
    unnamed O_TMPFILE (or a hidden name where the system has none), fsynced, then renamed over `path`,
    or with replace=False linked there, failing with FileExistsError rather than replace anything.
    On any failure `path` is untouched and nothing is left beside it.

    Refused before anything is opened: `path` being `database` or one of its files (see refuse_database_files)
    or a directory. A symbolic link stays one: what it points to is replaced. A path that is neither a regular
    file nor a directory (a character device such as /dev/null, a FIFO) is written straight into, as a shell's
    `>` does: no temporary file, no rename. Errors name `path`, never the temporary name."""
    if database is not None:
        refuse_database_files(path, database)
    kind = _kind(path)
    if kind == "directory":
        raise NotAFile(f"{path}: is a directory; `memory backup {path}` writes a new backup into it")
    if kind == "special":
        if not replace:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        with _naming(path), open(path, "wb") as out:
            yield out
            out.flush()
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    directory = target.parent
    remove_leftovers(directory, target.name)
    temp = temp_beside(target)
    with _naming(path):
        fd, named = portable.open_unnamed(directory, temp)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            yield out
            out.flush()
        with _naming(path):
            portable.make_private(fd, temp if named else None)
            portable.fsync(fd)
            with portable.signals_held():       # once in place, its name is made durable before a signal ends us
                if not replace and named:
                    os.link(temp, target)
                elif not replace:
                    portable.link(fd, target)
                else:
                    if not named:
                        portable.link(fd, temp)
                        named = True
                    portable.replace(temp, target)
                portable.DONE.set(f"{path} was written before it")
                portable.fsync_directory(directory)
    finally:
        os.close(fd)
        if named:
            temp.unlink(missing_ok=True)


def refuse_database_files(path: Path, database: Path) -> None:
    """Refused: an output that is the database or its -wal, -shm or -journal file, by name or through a link
    (the same device and inode where it exists; the same resolved name where it does not yet: the -wal and
    -shm come and go). Checked before anything is opened for writing."""
    out = _resolved(path)
    for suffix in DATABASE_SUFFIXES:
        names = {Path(f"{database}{suffix}"), Path(f"{os.path.realpath(database)}{suffix}")}
        # The database may have other names (hard links), and SQLite keeps a -wal, -shm and -journal beside
        # each name a program opens it by: OUTPUT is one of those if, its suffix taken off, it is the database.
        if suffix and out.endswith(suffix) and _same_file(Path(out[: -len(suffix)]), database):
            names.add(Path(out))
        for name in names:
            if _resolved(name) == out or _same_file(path, name):
                what = "the database" if not suffix else f"the database's {suffix[1:]} file"
                raise Refused(f"{path}: is {what} ({name}); writing the backup there would destroy it, "
                              "so nothing was written: give another path")


STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def stdout_by_another_name(name: str) -> bool:
    """Whether OUTPUT `name` is this process's stdout: one of its names, or the regular file it writes to (see
    standard_stream). Refused: the file stderr writes to."""
    stream = 1 if name in STDOUT_NAMES else standard_stream(name)
    if stream == 2:
        raise Refused(f"{name}: is where this command's messages go (stderr, {os.path.realpath(name)}); writing "
                      "the backup there would destroy it, so nothing was written: give another path")
    return stream == 1


def not_a_file(name: str) -> bool:
    """An existing path that is no regular file: a device (/dev/null), a FIFO, a terminal."""
    try:
        return not stat.S_ISREG(os.stat(name).st_mode)
    except OSError:
        return False


def standard_stream(path: str) -> int | None:
    """1 or 2 where `path` is the regular file this process's stdout or stderr already writes to (opened by the
    shell: `> out.json`, `2>> log`), by whatever name (/dev/stdout, /dev/fd/2, a link to them); else None.
    Replaced as a path is, it would lose what the shell's `>>` kept (found: a log)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(found.st_mode):
        return None
    for fd in (1, 2):
        try:
            other = os.fstat(fd)
        except OSError:
            continue
        if os.path.samestat(found, other):
            return fd
    return None


def refuse_database_stdout(database: Path) -> None:
    """Refused: a stdout that is the database or one of its files (`memory export - >> memory.db`)."""
    try:
        out = os.fstat(1)
    except OSError:
        return
    for suffix in DATABASE_SUFFIXES:
        try:
            other = os.stat(f"{database}{suffix}")
        except OSError:
            continue
        if os.path.samestat(out, other):
            what = "the database" if not suffix else f"the database's {suffix[1:]} file"
            raise Refused(f"stdout: is {what} ({database}{suffix}); writing the backup there would destroy it, "
                          "so nothing was written: give another path")


def _resolved(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return os.path.samestat(first, second)


def _kind(path: Path) -> str:
    """"missing", "file", "directory" or "special" (a device, a FIFO, a socket), through symbolic links."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    if stat.S_ISDIR(mode):
        return "directory"
    return "file" if stat.S_ISREG(mode) else "special"


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A system error in the block names `path`, the user's name, not our temporary one."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc


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
        if match and match["name"] == name and not portable.alive(int(match["pid"])):
            Path(entry.path).unlink(missing_ok=True)


class Counted(io.RawIOBase):
    """The bottom of the output stack: counts the bytes that reach the file, and never closes it. Once the file
    is given up (`raw` None), what is written goes nowhere."""

    def __init__(self, raw: IO[bytes]):
        self.raw: IO[bytes] | None = raw
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        if self.raw is not None:
            self.bytes += written_whole(self.raw, data)
        return len(data)


def written_whole(raw: IO[bytes], data) -> int:
    """Write all of `data` (its size returned): a raw file (stdout under PYTHONUNBUFFERED, as a library caller may
    pass it) can take part of a write and say so only by its count (found: a cut export on a full disk, exit 0)."""
    view = memoryview(data).cast("B")
    size = len(view)
    while view:
        written = raw.write(view)
        if written is None:     # a non-blocking stdout that is full
            raise BlockingIOError(errno.EAGAIN, "write could not complete without blocking")
        view = view[written:]
    return size


@contextmanager
def output_stack(raw: IO[bytes], compression: str) -> Iterator[tuple[IO[bytes], Counted]]:
    """(what to write to, what counts the bytes): a compressor over a 1 MiB buffer over the file, so the
    file sees few large writes. The compressor's trailer is written only when the block ends well."""
    from .formats import compressed_writer
    counted = Counted(raw)
    buffered = io.BufferedWriter(counted, buffer_size=1 << 20)
    out = compressed_writer(buffered, compression)
    try:
        yield out, counted
        if out is not buffered:
            out.close()
        buffered.flush()
        raw.flush()
    except BaseException:
        # The file is given up: the compressor and the buffer are closed here, into nothing, not left to be
        # collected after the file is closed, when their flush fails and Python prints it (found on 3.13:
        # "Exception ignored in: <gzip ...>" and a traceback after the one-line error).
        counted.raw = None
        for stream in (out, buffered):
            with suppress(Exception):
                stream.close()
        raise
