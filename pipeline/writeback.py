"""Early writeback: a file being written is handed to the disk every few MB, so the fsync at its end has little left."""

from __future__ import annotations

import ctypes
import io
import os
import sys
from typing import IO, Any, Callable

STEP = 8 << 20      # as RocksDB's bytes_per_sync: large enough to write in big requests, small enough to overlap
SYNC_FILE_RANGE_WRITE = 2     # <linux/fs.h>: start writing the range's dirty pages; do not wait


def _sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """os.sync_file_range, or libc's where Python was built without it (as here); None off Linux."""
    if hasattr(os, "sync_file_range"):
        return os.sync_file_range
    if not sys.platform.startswith("linux"):
        return None
    call = ctypes.CDLL(None, use_errno=True).sync_file_range
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)

    def sync_file_range(fd: int, offset: int, count: int, flags: int) -> None:
        if call(fd, offset, count, flags) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    return sync_file_range


START_WRITING = _sync_file_range()


class EarlyWriteback(io.RawIOBase):
    """A writer over a regular file that, each STEP bytes, asks the kernel to start writing what it has
    (sync_file_range with SYNC_FILE_RANGE_WRITE: it does not wait, and promises nothing about durability;
    the fsync at the end still does). Where the call is missing (not Linux) or refused (a pipe, a terminal),
    it only writes. The file must be written from its start, as a new backup is."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.written = self.started = 0
        self.fd: int | None = None
        if START_WRITING is not None:
            try:
                self.fd = raw.fileno()
            except (OSError, ValueError, AttributeError):
                self.fd = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        self.raw.write(data)
        self.written += len(data)
        if self.fd is not None and self.written - self.started >= STEP:
            self.raw.flush()
            try:
                START_WRITING(self.fd, self.started, self.written - self.started, SYNC_FILE_RANGE_WRITE)
            except OSError:         # ESPIPE on a pipe, EINVAL on some file systems: then only write
                self.fd = None
            self.started = self.written
        return len(data)

    def flush(self) -> None:
        if not self.raw.closed:      # also called when this object is collected, maybe after the file closed
            self.raw.flush()
