"""macOS and Windows simulated on Linux: each takes away the POSIX-only facilities that platform lacks, for
real (the attribute or module is gone, so calling it would fail), in this process through pytest's
monkeypatch, or in a child: `python tests/platforms.py PLATFORM ARGS...` runs `memory ARGS...` without them.
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys

import pytest

_real_open, _real_replace = os.open, os.replace


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


# facility -> how to take it away (mp: a pytest MonkeyPatch)
TAKE_AWAY = {
    "O_TMPFILE": lambda mp: mp.delattr(os, "O_TMPFILE"),               # macOS, Windows
    "fchmod": lambda mp: mp.delattr(os, "fchmod"),                     # Windows before Python 3.13
    "fcntl": lambda mp: mp.setitem(sys.modules, "fcntl", None),        # Windows: import fcntl fails
    "SIGHUP": lambda mp: mp.delattr(signal, "SIGHUP"),                 # Windows
    "directory open": lambda mp: mp.setattr(os, "open", _directory_refused),   # Windows
    "replace while held": lambda mp: mp.setattr(os, "replace", _HeldOpen(times=2)),   # Windows
}
PLATFORMS = {"linux": ()} | {f"no {name}": (name,) for name in TAKE_AWAY} | {
    "macos": ("O_TMPFILE",),
    "windows": tuple(TAKE_AWAY),
}


def take_away(platform: str, mp: pytest.MonkeyPatch) -> None:
    for name in PLATFORMS[platform]:
        TAKE_AWAY[name](mp)


def command(platform: str) -> list[str]:
    """The start of a command line that runs `memory` as on `platform`."""
    if platform == "linux":
        return [sys.executable, "-m", "pipeline"]
    return [sys.executable, os.path.abspath(__file__), platform]


if __name__ == "__main__":
    take_away(sys.argv[1], pytest.MonkeyPatch())
    sys.argv = ["memory", *sys.argv[2:]]
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
