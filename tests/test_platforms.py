"""pipeline/portable.py: each facility where the system has it, and its fallback where it does not (macOS and
Windows simulated by tests/platforms.py); export, backup, crash, signal and privacy tests run on every one."""

import errno
import fcntl
import ntpath
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path, PureWindowsPath
from types import SimpleNamespace

import pytest
from conftest import memory
from platforms import PLATFORMS, take_away

from pipeline import portable
from pipeline.database import DEFAULT_PATH
from pipeline.output import atomic_file, temp_beside


def test_the_fallback_is_the_one_taken(tmp_path, platform):
    """Where O_TMPFILE is missing the file is written under a hidden name beside the target; never left."""
    target = tmp_path / "b.json"
    with atomic_file(target) as out:
        out.write(b"whole")
        assert temp_beside(target).exists() == ("O_TMPFILE" in PLATFORMS[platform])
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["b.json"]


def test_a_target_held_open_is_retried_then_refused_with_one_line(tmp_path, sample_db, monkeypatch):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "b.json"
    target.write_bytes(b"the last good backup")
    tries = []

    def held(source, dest):
        tries.append(dest)
        raise PermissionError(errno.EACCES, "Access is denied", str(source), None, str(dest))
    monkeypatch.setattr(os, "replace", held)
    monkeypatch.setattr(portable, "REPLACE_RETRIES", (0.001, 0.001))
    result = memory("export", "--db", sample_db, target)
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {target}: cannot replace it (Access is denied): another program may hold it open; "
           "the old file is untouched\n")
    assert len(tries) == 3
    assert target.read_bytes() == b"the last good backup" and os.listdir(tmp_path / "out") == ["b.json"]


def test_a_directory_that_cannot_be_opened_is_not_synced(tmp_path, monkeypatch):
    refused = []

    def windows_open(path, flags, mode=0o777, **kwargs):
        if os.path.isdir(path):
            refused.append(path)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, **kwargs)
    real_open = os.open
    monkeypatch.setattr(os, "open", windows_open)
    portable.fsync_directory(tmp_path)
    assert refused == [tmp_path]


def test_macos_flushes_the_drive_cache_with_f_fullfsync(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd: asked.append(cmd))
    monkeypatch.setattr(os, "fsync", lambda fd: asked.append("fsync"))
    with atomic_file(tmp_path / "b.json") as out:
        out.write(b"whole")
    assert asked == [51, 51]          # the file, then its folder


def try_lock(path: Path, how: str) -> str:
    """From another process: whether `path` is locked, by flock or by an fcntl record lock on byte 0."""
    code = (f"import fcntl, sys\nf = open({str(path)!r}, 'r+')\ntry:\n"
            + ("    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n" if how == "flock" else
               "    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)\n")
            + "    print('free')\nexcept OSError:\n    print('locked')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()


def test_the_lock_is_exclusive_and_let_go_with_fcntl(tmp_path):
    path = tmp_path / "lock"
    path.write_bytes(b"")
    with open(path, "r+") as f:
        with portable.locked(f):
            assert try_lock(path, "flock") == "locked"
        assert try_lock(path, "flock") == "free"


def test_the_lock_by_msvcrt_locks_the_first_byte_and_waits(tmp_path, monkeypatch):
    """Windows: msvcrt.locking from the current position, LK_LOCK giving up with EDEADLOCK after 10 s.
    Simulated with fcntl record locks on the same bytes, the first try failing as a busy lock does."""
    calls = []

    def locking(fd, mode, nbytes):
        calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), nbytes))
        if len(calls) == 1:
            raise OSError(errno.EDEADLOCK, "Resource deadlock avoided")
        fcntl.lockf(fd, fcntl.LOCK_UN if mode == 0 else fcntl.LOCK_EX, nbytes, 0, os.SEEK_CUR)
    msvcrt = SimpleNamespace(LK_UNLCK=0, LK_LOCK=1, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    path = tmp_path / "lock"
    path.write_bytes(b"some bytes already")
    with open(path, "r+") as f:
        f.seek(0, os.SEEK_END)
        with portable.locked(f):
            assert try_lock(path, "record") == "locked"
        assert try_lock(path, "record") == "free"
    assert calls == [(1, 0, 1), (1, 0, 1), (0, 0, 1)]


def test_without_fcntl_or_msvcrt_the_block_runs_unlocked(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)
    ran = []
    with open(tmp_path / "lock", "w") as f, portable.locked(f):
        ran.append(True)
    assert ran == [True]


def test_the_lock_blocks_until_the_holder_lets_go(tmp_path):
    path = tmp_path / "lock"
    path.write_bytes(b"")
    order = []
    with open(path, "r+") as first:
        with portable.locked(first):
            def second():
                with open(path, "r+") as f, portable.locked(f):
                    order.append("second")
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.2)
            order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]


@pytest.mark.parametrize("platform, expected", [("linux", ["SIGTERM", "SIGHUP"]), ("windows", ["SIGTERM"])])
def test_only_signals_that_exist_get_a_handler(monkeypatch, platform, expected):
    take_away(platform, monkeypatch)
    assert [signal.Signals(s).name for s in portable.terminating_signals()] == expected
    with portable.signals_as_interrupts():
        assert all(signal.getsignal(s) not in (signal.SIG_DFL, None) for s in portable.terminating_signals())
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_default_database_is_where_memory_nexus_keeps_it_on_each_platform(monkeypatch):
    """memory-nexus: join(homedir(), ".memory-nexus", "memory.db"); Node's homedir() is $HOME on POSIX and
    %USERPROFILE% on Windows, as Python's expanduser."""
    monkeypatch.setenv("HOME", "/home/me")
    assert DEFAULT_PATH.expanduser() == Path("/home/me/.memory-nexus/memory.db")
    monkeypatch.setenv("USERPROFILE", r"C:\Users\me")
    assert ntpath.expanduser(str(PureWindowsPath(DEFAULT_PATH))) == r"C:\Users\me\.memory-nexus\memory.db"


@pytest.mark.parametrize("opened, last_error, exit_code, alive", [
    (7, 0, 259, True),        # STILL_ACTIVE
    (7, 0, 0, False),         # it has exited
    (0, 87, None, False),     # ERROR_INVALID_PARAMETER: no such process
    (0, 5, None, True),       # ERROR_ACCESS_DENIED: another user's, running
], ids=["running", "exited", "no such process", "another user's"])
def test_whether_a_leftovers_owner_runs_is_asked_without_os_kill_on_windows(monkeypatch, opened, last_error,
                                                                            exit_code, alive):
    """On Windows os.kill(pid, 0) would terminate the process: OpenProcess and GetExitCodeProcess instead
    (ctypes simulated here; what the Win32 calls return is as documented)."""
    import ctypes
    closed = []

    def get_exit_code(handle, code):
        code._obj.value = exit_code
        return 1
    kernel32 = SimpleNamespace(OpenProcess=lambda access, inherit, pid: opened, GetExitCodeProcess=get_exit_code,
                               CloseHandle=closed.append)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error: kernel32, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: last_error, raising=False)
    monkeypatch.setattr(os, "kill", lambda pid, sig: pytest.fail("os.kill on Windows"))
    monkeypatch.setattr(os, "name", "nt")
    is_alive = portable.alive(4242)
    monkeypatch.undo()
    assert is_alive is alive and closed == ([opened] if opened else [])


def test_sqlite_s_temporary_directory_on_windows_is_get_temp_path_s(tmp_path, monkeypatch):
    """Found by review: on Windows the folder came from tempfile (which tries TMPDIR first), where SQLite asks
    GetTempPath: TMP, then TEMP, then the user's profile."""
    from pipeline import portable
    (tmp_path / "tmp").mkdir()
    (tmp_path / "temp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("TMP", str(tmp_path / "tmp"))
    monkeypatch.setenv("TEMP", str(tmp_path / "temp"))
    monkeypatch.setattr(portable.os, "name", "nt")
    assert portable.sqlite_temp_directory() == (str(tmp_path / "tmp"), "TMP")
    monkeypatch.delenv("TMP")
    assert portable.sqlite_temp_directory() == (str(tmp_path / "temp"), "TEMP")
