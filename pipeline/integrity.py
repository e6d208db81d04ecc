"""Checking a file's integrity: the checksum of its whole content that every backup ends with, written and read back."""

from __future__ import annotations

import io
import re
from typing import IO, Any

import xxhash

from .errors import BadBackup
from .records import shown

# xxh3-128, not sha256: this guards against bytes changed on a disk or in transit, not against someone who
# forges a file, and at 25 GB/s it costs about 1% of a validate where sha256 (1.4 GB/s here) would cost 20%.
# The name goes into the value, so another algorithm can follow.
ALGORITHM = "xxh3-128"
_NEW = xxhash.xxh3_128
_VALUE = re.compile(re.escape(ALGORITHM) + ":[0-9a-f]{32}")
SINCE = 2                 # files of version 1.<SINCE> on carry a checksum; memory-nexus's 1.0 and our 1.1 do not

# What ends each layout. The checksum covers every byte before it, and it is of fixed length, so a reader
# knows which bytes to leave out before it has parsed them.
TRAILERS = {"json": ',\n"checksum":"{}"}}\n', "jsonl": '{{"end":true,"checksum":"{}"}}\n'}
_HINT = "; if you edited it on purpose, pass --ignore-checksum"
MISMATCH = "the file changed after it was written (checksum mismatch)" + _HINT


def trailer(fmt: str, value: str) -> bytes:
    return TRAILERS[fmt].format(value).encode()


class Summed(io.RawIOBase):
    """A writer that sums what passes through it. It sits under a buffer, so it sees few large writes."""

    def __init__(self, out: IO[bytes]):
        self.out: IO[bytes] | None = out
        self.sum = _NEW()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        if self.out is not None:
            self.sum.update(data)
            self.out.write(data)
        return len(data)

    def value(self) -> str:
        return f"{ALGORITHM}:{self.sum.hexdigest()}"


class Summing(io.RawIOBase):
    """A reader that sums every byte it hands on but the last trailer's length of them, which it keeps back:
    at the end of the document `end` compares those with the trailer the parsed value makes, and the sum
    with the value. Whether a file must have a checksum is known only once its header is read: `required`."""

    def __init__(self, stream: IO[bytes], fmt: str, ignore: bool = False):
        self.stream, self.fmt, self.ignore = stream, fmt, ignore
        # One read below per read here, as the reader above asks: reading ahead would move where a fault is seen.
        self.read_below = getattr(stream, "readinto1", stream.readinto)
        self.sum = _NEW()
        self.kept = len(trailer(fmt, ALGORITHM + ":" + "0" * 32))
        self.tail = b""
        self.required = True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.read_below(buffer)
        view = memoryview(buffer)[:n]
        if n >= self.kept:
            self.sum.update(self.tail)
            self.sum.update(view[: n - self.kept])
            self.tail = bytes(view[n - self.kept:])
        else:
            held = self.tail + bytes(view)
            self.sum.update(held[: max(len(held) - self.kept, 0)])
            self.tail = held[-self.kept:]
        return n

    def end(self, value: Any) -> None:
        """Called by the layout's reader once it has read to the end of the file, with the checksum it found
        (None if none): before an import's COMMIT, as the end of the file comes first."""
        if self.ignore:
            return
        if value is None:
            if self.required:
                raise BadBackup(f"the file has no checksum, though version 1.{SINCE} files end with one: it was "
                                f"removed after it was written{_HINT}")
            return
        if type(value) is not str:
            raise BadBackup(f"checksum must be a string, got {shown(value)}")
        if not _VALUE.fullmatch(value):
            raise BadBackup(f"checksum must be '{ALGORITHM}:' and 32 hex digits, got {shown(value)}")
        if self.tail != trailer(self.fmt, value) or value != f"{ALGORITHM}:{self.sum.hexdigest()}":
            raise BadBackup(MISMATCH)

