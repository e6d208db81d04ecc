"""macOS and Windows simulated on Linux: each takes away the POSIX-only facilities that platform lacks, for
real (the attribute or module is gone, so calling it would fail), in this process through pytest's
monkeypatch, or in a child: `python tests/platforms.py PLATFORM ARGS...` runs `memory ARGS...` without them.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

_real_open, _real_replace, _real_context = os.open, os.replace, multiprocessing.get_context


def _directory_refused(path, flags, mode=0o777, *, dir_fd=None):
    """Windows: a directory cannot be opened as a file."""
    if os.path.isdir(path) and not flags & getattr(os, "O_TMPFILE", 0):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return _real_open(path, flags, mode, dir_fd=dir_fd)


class _HeldOpen:
    """Windows: os.replace onto a file another program holds open fails until it lets go; here each target
    is held for its first `times` attempts."""

    def __init__(self, times: int):
        self.times, self.tries = times, {}

    def __call__(self, source, target, **kwargs):
        seen = self.tries[str(target)] = self.tries.get(str(target), 0) + 1
        if os.path.exists(target) and seen <= self.times:
            raise PermissionError(errno.EACCES, "Access is denied", str(source), None, str(target))
        return _real_replace(source, target, **kwargs)


def _locking(fd, mode, nbytes):
    """Windows's msvcrt.locking (LK_LOCK and LK_UNLCK, from the current position), done with fcntl record
    locks on the same bytes: Windows takes fcntl away and gives this instead."""
    fcntl.lockf(fd, fcntl.LOCK_UN if mode == 0 else fcntl.LOCK_EX, nbytes, 0, os.SEEK_CUR)


def _windows_locks(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(sys.modules, "fcntl", None)             # import fcntl fails
    mp.setitem(sys.modules, "msvcrt", SimpleNamespace(LK_UNLCK=0, LK_LOCK=1, locking=_locking))


# facility -> how to take it away (mp: a pytest MonkeyPatch)
TAKE_AWAY = {
    "O_TMPFILE": lambda mp: mp.delattr(os, "O_TMPFILE"),               # macOS, Windows
    "fchmod": lambda mp: mp.delattr(os, "fchmod"),                     # Windows before Python 3.13
    "fcntl": _windows_locks,                                           # Windows: msvcrt's locks instead
    "SIGHUP": lambda mp: mp.delattr(signal, "SIGHUP"),                 # Windows
    "directory open": lambda mp: mp.setattr(os, "open", _directory_refused),   # Windows
    "replace while held": lambda mp: mp.setattr(os, "replace", _HeldOpen(times=2)),   # Windows
    # macOS, Windows: a worker process is spawned (a fresh interpreter), not forked
    "fork": lambda mp: mp.setattr(multiprocessing, "get_context", lambda method=None: _real_context("spawn")),
}
PLATFORMS = {"linux": ()} | {f"no {name}": (name,) for name in TAKE_AWAY} | {
    "macos": ("O_TMPFILE", "fork"),
    "windows": tuple(TAKE_AWAY),
}


def take_away(platform: str, mp: pytest.MonkeyPatch) -> None:
    for name in PLATFORMS[platform]:
        TAKE_AWAY[name](mp)


def lock_state(path, platform: str) -> str:
    """From another process: whether `path` is locked ('locked' or 'free') as `platform` locks it: flock, or
    (where fcntl is taken away) msvcrt's byte-range lock on byte 0, simulated by an fcntl record lock."""
    how = ("fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)" if "fcntl" in PLATFORMS[platform] else
           "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    code = f"import fcntl\nf = open({str(path)!r}, 'r+')\ntry:\n    {how}\n    print('free')\nexcept OSError:\n    print('locked')\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()


def command(platform: str) -> list[str]:
    """The start of a command line that runs `memory` as on `platform`."""
    if platform == "linux":
        return [sys.executable, "-m", "pipeline"]
    return [sys.executable, os.path.abspath(__file__), platform]


if __name__ == "__main__":
    take_away(sys.argv[1], pytest.MonkeyPatch())
    sys.argv = ["memory", *sys.argv[2:]]
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
