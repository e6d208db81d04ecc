"""What the operating system gives us, and what we do where it does not.

Each facility is looked up when it is used, never assumed: on Linux an unnamed O_TMPFILE given a name with
linkat, elsewhere (macOS, Windows) a hidden named file; F_FULLFSYNC on macOS; a directory fsync where a
directory can be opened (Windows refuses); mode 0600 by fchmod, else chmod by path, and on Windows the ACL
the file inherits; a folder lock by fcntl.flock or msvcrt.locking; SIGTERM everywhere, SIGHUP where it exists.
"""

from __future__ import annotations

import contextvars
import errno
import os
import signal
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import PipelineError

_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
# Windows refuses to replace a file another program holds open (an editor, a virus scanner, a sync client);
# it is usually let go within moments. Seconds to wait before each retry:
REPLACE_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8)


class FileHeld(PipelineError):
    """The target could not be replaced: another program holds it open (Windows), or the system says no."""


def is_terminal(path: str) -> bool:
    """Whether writing to `path` writes on a terminal (/dev/tty, or /dev/stdout when stdout is one): a
    character device opened to ask, without becoming our controlling terminal and without blocking."""
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        return os.isatty(fd)
    finally:
        os.close(fd)


# ---- creating a file that appears whole -------------------------------------------------------------------

def open_unnamed(directory: Path, fallback: Path) -> tuple[int, bool]:
    """(fd, whether it already has a name): an O_TMPFILE in `directory` where the system has one that can be
    linked (a crash then leaves nothing), else `fallback` created exclusively. Mode 0600 from the start."""
    if _unnamed_files_link(directory):
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600), False
    return os.open(fallback, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600), True


def _unnamed_files_link(directory: Path) -> bool:
    if not hasattr(os, "O_TMPFILE"):      # Linux only
        return False
    try:
        probe = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600)
    except OSError:
        return False
    name = directory / f".memory-link-probe.{os.getpid()}"
    try:
        with signals_held():       # named and unnamed again before a signal is let through (found: one left)
            link(probe, name)
            name.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(probe)


def link(fd: int, path: Path) -> None:
    """Give an O_TMPFILE a name: linkat(AT_EMPTY_PATH) where allowed, else through /proc/self/fd. Linux only:
    called only where open_unnamed gave an unnamed file."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return
    if ctypes.get_errno() == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


def make_private(fd: int, path: Path | None) -> None:
    """Mode 0600 whatever the umask. The file was created 0600, so a umask can only have taken bits away;
    this puts the owner's back. Without fchmod, chmod by name (`path` None: an unnamed file, whose creation
    mode already stands). On Windows modes do not exist: the file has the default ACL of the folder it is in,
    in the user's profile only its owner (and administrators) can read it."""
    if os.name == "nt":
        return
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)
    elif path is not None:
        os.chmod(path, 0o600)


def fsync(fd: int) -> None:
    """Data on the disk, not in a cache: fsync, and on macOS, where fsync leaves it in the drive's cache,
    F_FULLFSYNC (some filesystems refuse it: then fsync)."""
    try:
        import fcntl
    except ImportError:          # Windows: os.fsync is FlushFileBuffers
        fcntl = None
    if fcntl is not None and hasattr(fcntl, "F_FULLFSYNC"):
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in `directory` durable where the system lets a directory be opened; Windows
    refuses (its NTFS journal makes the rename durable with the file's metadata), so there it is skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except PermissionError:       # Windows: a directory cannot be opened as a file
        return
    try:
        fsync(fd)
    finally:
        os.close(fd)


def sqlite_temp_directory() -> tuple[str, str]:
    """(the folder SQLite writes its temporary files in, the variable that chose it or ""), found as SQLite
    finds it: on Unix the first of $SQLITE_TMPDIR, $TMPDIR, /var/tmp, /usr/tmp, /tmp, "." that is a folder it may
    write in (os_unix.c, unixTempFileDir); on Windows GetTempPath's: $TMP, $TEMP, else the user's profile."""
    if os.name == "nt":
        for variable in ("TMP", "TEMP", "USERPROFILE"):
            if os.path.isdir(os.environ.get(variable, "")):
                return os.environ[variable], variable
        return os.environ.get("SystemRoot", "C:\\Windows"), ""
    for folder, variable in ((os.environ.get("SQLITE_TMPDIR"), "SQLITE_TMPDIR"), (os.environ.get("TMPDIR"), "TMPDIR"),
                             ("/var/tmp", ""), ("/usr/tmp", ""), ("/tmp", "")):
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder, variable
    return ".", ""


def replace(source: Path, target: Path) -> None:
    """os.replace, retried briefly where the target is held open (Windows refuses then); if it stays held,
    one line naming `target`, which is untouched."""
    for wait in (*REPLACE_RETRIES, None):
        try:
            os.replace(source, target)
            return
        except PermissionError as exc:
            if wait is None:
                raise FileHeld(f"{target}: cannot replace it ({exc.strerror}): another program may hold it "
                               "open; the old file is untouched") from exc
            time.sleep(wait)


def alive(pid: int) -> bool:
    """Whether a process `pid` runs. POSIX: signal 0. Windows, where os.kill(pid, 0) would terminate it: ask
    for its exit code."""
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive_windows(pid: int) -> bool:
    import ctypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)        # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)     # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5               # ERROR_ACCESS_DENIED: it exists, not ours
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return code.value == 259                          # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# ---- the folder lock --------------------------------------------------------------------------------------

@contextmanager
def locked(file: IO) -> Iterator[None]:
    """An exclusive advisory lock on an open file for the block, waiting for it as long as it takes:
    fcntl.flock on POSIX, msvcrt.locking of its first byte on Windows. Where neither exists the block runs
    unlocked (no such platform is supported; the README says so)."""
    fd = file if isinstance(file, int) else file.fileno()
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return
    try:
        import msvcrt
    except ImportError:
        yield
        return
    _msvcrt_lock(msvcrt, fd)
    try:
        yield
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _msvcrt_lock(msvcrt, fd: int) -> None:
    """msvcrt locks bytes from the current position, and LK_LOCK gives up after 10 tries a second apart
    (EDEADLOCK): lock byte 0 and keep trying."""
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            return
        except OSError as exc:
            if exc.errno != errno.EDEADLOCK:
                raise


# ---- signals ----------------------------------------------------------------------------------------------

# What the command has done that stands, for the message a signal ends it with ("" while nothing has: "nothing
# was changed"): set where the change is made (a COMMIT, a file put in place), inside signals_held, so that a
# signal coming then finds it as it is. The CLI clears it for each command.
DONE: contextvars.ContextVar[str] = contextvars.ContextVar("done", default="")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so it unwinds as Ctrl-C does: the transaction rolls
    back, temporary files go. Exit status 128 + the signal's number, as a shell reports a killed command."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def status(self) -> int:
        return 128 + self.signum


def terminating_signals() -> list[int]:
    """SIGTERM (Windows has the name, sent only by the program itself), SIGHUP where it exists (not Windows),
    and SIGBREAK (Ctrl-Break, Windows only)."""
    return [getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)]


@contextmanager
def signals_held() -> Iterator[None]:
    """For the block: Ctrl-C and the terminating signals wait till it ends, then do what they would have
    done, so that a step which must not be cut in two (a COMMIT, and noting that it was made) is not. A signal
    that comes while SQLite commits (C code) is handled only as the COMMIT returns: without this, between it
    and the next line."""
    came: list[int] = []
    try:
        with _handled([signal.SIGINT, *terminating_signals()], lambda signum, frame: came.append(signum)):
            yield
    finally:
        for signum in dict.fromkeys(came):
            signal.raise_signal(signum)     # its handler runs before this returns; the first that raises ends it


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """For the block: each terminating signal raises Terminated (once; a repeat during the clean-up is
    ignored)."""
    def handler(signum, frame):
        for s in terminating_signals():
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)
    with _handled(terminating_signals(), handler):
        yield


@contextmanager
def _handled(signums: list[int], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """For the block: `handler` for each of `signums`, then the handlers they had. One ignored stays so:
    `nohup memory import ...` must not stop when the terminal goes, nor a job a script put in the background
    at Ctrl-C (found by review). Handlers are set and put back with the signals blocked, so one that comes
    meanwhile waits for all of them (found by review: a recorder left in place swallowed every later
    Ctrl-C). Handlers can only be set from the main thread; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [s for s in signums if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.getsignal(s) for s in signums}
    try:
        with _blocked(signums):
            for s in signums:
                signal.signal(s, handler)
        yield
    finally:
        with _blocked(signums):
            for s, old in previous.items():
                signal.signal(s, old if old is not None else signal.SIG_DFL)


@contextmanager
def _blocked(signums: list[int]) -> Iterator[None]:
    """The signals kept pending for the block, where the system can (not Windows: there the few bytecodes of
    setting handlers stay open to them)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)     # what was pending is handled here
