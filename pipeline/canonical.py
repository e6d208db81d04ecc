"""The fast path for files exactly as memory writes them: one record a line in orjson's canonical form, read by
orjson at hundreds of MB/s; at the first line that is anything else the strict readers (formats.py) take over."""

from __future__ import annotations

import io
import itertools
import os
from decimal import Decimal
from typing import IO, Any, Iterator

import orjson

from . import formats
from .formats import CHECKSUM, HEADER_KEYS, Ended, Header, Section

# Set (to anything but "" or "0") to read every file through the strict readers alone; CI runs the
# correctness tests both ways.
STRICT_ENV = "MEMORY_STRICT_PARSE"
NOT_CANONICAL = object()
BIG = 1 << 16
OTHER_LINE = 1 << 20      # the longest header, or line around an array, the fast path reads
# The longest record line it reads: orjson holds the line, the value and the value written again, about three
# times the line, where the strict reader streams (a string it holds once, twice while yajl builds it). A longer
# line, and the rest of the file, go to the strict reader, which reads a long value in linear time too.
FAST_LINE = 16 << 20
_STATS_TYPES = {int}
_ODD = frozenset({float, list, dict})     # in a record: what the strict reader builds or words otherwise


def strict_only() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def readers() -> dict:
    """The readers of each layout: the fast ones, unless STRICT_ENV says otherwise."""
    return formats.READERS if strict_only() else READERS


def canonical(line: bytes, cut: int = 0) -> Any:
    """The value `line` holds, leaving out its last `cut` bytes, if it is exactly what orjson writes for that
    value, else NOT_CANONICAL. Writing it again and comparing rules out whatever the strict readers see
    differently: a field named twice (orjson keeps one), NaN, numbers orjson cannot hold exactly (2**64
    becomes a float), lone surrogates, and any spacing, escaping or number form other than orjson's."""
    length = len(line) - cut
    # A slice is a copy, which a long line should not cost; for short ones it is faster than a memoryview.
    text = line[:length] if length < BIG else memoryview(line)[:length]
    try:
        value = orjson.loads(text)
        written = orjson.dumps(value)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return NOT_CANONICAL
    return value if len(written) == length and line.startswith(written) else NOT_CANONICAL


# ---- JSON Lines -------------------------------------------------------------------------------------------

def parsed_line(line: bytes) -> Any:
    """A JSON Lines line as the strict reader would read it: orjson where the line is canonical. Where it is,
    json.loads gives the same value (the same floats, ints and strings, and no field twice to refuse)."""
    if line.endswith(b"\n"):
        value = canonical(line, 1)
        if value is not NOT_CANONICAL:
            return value
    return formats.strict_line(line)


def read_jsonl(stream: IO[bytes], end: Ended = formats._nothing) -> tuple[Header, Iterator[Section]]:
    return formats.read_jsonl(stream, end, parsed_line)


# ---- one JSON document ------------------------------------------------------------------------------------
# The layout formats.write_json writes, line by line:
#   {"version":...,"exportedAt":...,"stats":{...},      the header
#   "sessions":[                                        an array (or "topics":[], when it is empty)
#   {...},                                              its records, the last without its comma
#   {...}
#   ],
#   "checksum":"xxh3-128:..."}                          left to the strict reader: one line
# At any other line the strict reader is handed the rest of the file behind a few bytes that put its parser
# in the state the document had reached there (inside the top object, after a comma; inside an array, at its
# start, after a comma or after an item), whose own events are then dropped. It then reads, checks and
# places every fault exactly as it would have from the start.
_AFTER_COMMA = (b'{"":0,', 3)          # (bytes, events they make): start_map, map_key, number
_ARRAY_START = (b'{"":[', 3)           # start_map, map_key, start_array
_ARRAY_COMMA = (b'{"":[0,', 4)         # ... and an item
_ARRAY_ITEM = (b'{"":[0', 4)


def read_json(stream: IO[bytes], end: Ended = formats._nothing) -> tuple[Header, Iterator[Section]]:
    """The header and the first array's opening are read before the fast path is taken: if either is not as
    memory writes them (a header key on the next line, say), the strict reader reads the file from its start."""
    line = formats.read_line(stream, longest=OTHER_LINE)
    header = _header(line)
    if header is not None:
        opening = formats.read_line(stream, longest=OTHER_LINE)
        key, empty = _array_opening(opening)
        if key is not None:
            return header, _sections(stream, end, key, empty)
        line += opening
    return formats.read_json(_Chained(line, stream), end)


def _header(line: bytes) -> Header | None:
    if not (line.startswith(b"{") and line.endswith(b",\n")):
        return None
    header = canonical(line[:-2] + b"}")
    if (type(header) is not dict or not header.keys() <= set(HEADER_KEYS) or type(header.get("version")) is not str
            or type(header.get("exportedAt", "")) is not str or type(header.get("stats")) is not dict
            or not set(map(type, header["stats"].values())) <= _STATS_TYPES):
        return None          # the strict reader says what is wrong, as it words it
    return header


def _sections(stream: IO[bytes], end: Ended, key: str, empty: bool) -> Iterator[Section]:
    """The arrays from the first, whose opening line has been read."""
    while True:
        if empty:
            yield key, iter(())
        else:
            handed: list[Iterator[tuple]] = []
            yield key, _records(stream, key, handed)
            if handed:
                yield from formats.json_rest(handed[0], end)
                return
        line = formats.read_line(stream, longest=OTHER_LINE)
        key, empty = _array_opening(line)
        if key is None:
            yield from formats.json_rest(_strict(_AFTER_COMMA, line, stream), end)
            return


def _array_opening(line: bytes) -> tuple[str | None, bool]:
    """(key, whether empty) of a line that opens an array: '"key":[' or '"key":[],'; (None, False) if not."""
    for ending, empty in ((b":[\n", False), (b":[],\n", True)):
        if line.endswith(ending) and line.startswith(b'"'):
            key = canonical(line, len(ending))
            if type(key) is str and key not in HEADER_KEYS and key != CHECKSUM:
                return key, empty
    return None, False


def _records(stream: IO[bytes], key: str, handed: list[Iterator[tuple]]) -> Iterator[Any]:
    """The records of the array `key`; the rest of the file's events go into `handed` if the strict reader
    takes over."""
    for index in itertools.count():
        line = formats.read_line(stream, longest=FAST_LINE)
        more = line.endswith(b",\n")
        record = canonical(line, 2 if more else 1) if line.endswith(b"},\n" if more else b"}\n") else NOT_CANONICAL
        if type(record) is dict and not _ODD.isdisjoint(map(type, record.values())):
            record = _as_strict(record)
        if type(record) is not dict:
            handed.append(_strict(_ARRAY_COMMA if index else _ARRAY_START, line, stream))
            yield from formats.array_rest(handed[0], key, index)
            return
        yield record
        if not more:
            closing = formats.read_line(stream, longest=OTHER_LINE)
            if closing != b"],\n":
                handed.append(_strict(_ARRAY_ITEM, closing, stream))
                yield from formats.array_rest(handed[0], key, index + 1)
            return


def _as_strict(record: dict) -> dict | None:
    """The record as the strict reader builds it, or None where only the strict reader words the fault (an
    array anywhere in it). That reader gives numbers with a fraction or exponent as Decimal, as written
    (messages quote them so): the text orjson writes for a float is the text the line holds."""
    if _holds_array(record):
        return None
    return {k: Decimal(orjson.dumps(v).decode()) if type(v) is float else v for k, v in record.items()}


def _holds_array(value: dict) -> bool:
    return any(type(v) is list or type(v) is dict and _holds_array(v) for v in value.values())


def _strict(state: tuple[bytes, int], line: bytes, stream: IO[bytes]) -> Iterator[tuple]:
    """The strict reader's events for `line` and the rest of `stream`, its parser put in `state` first."""
    prefix, made = state
    events = formats.json_events(_Chained(prefix + bytes(line), stream))
    for _ in itertools.islice(events, made):
        pass
    return events


class _Chained(io.RawIOBase):
    """`head`, then the rest of `stream`, what it holds before it reads below (read1, not readinto1, which
    also reads below and loses what it held if that read fails), so a fault below is met where it is."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self.head = memoryview(head)
        self.read_below = getattr(stream, "read1", stream.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.read_below(len(buffer))
        buffer[: len(data)] = data
        return len(data)


READERS = {"json": read_json, "jsonl": read_jsonl}
