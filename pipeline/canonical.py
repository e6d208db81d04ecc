"""The fast path for files exactly as memory writes them: one record a line in orjson's canonical form, read by
simdjson or orjson at hundreds of MB/s; at the first line that is anything else the strict readers (formats.py)
take over."""

from __future__ import annotations

import functools
import io
import itertools
import multiprocessing
import os
import re
from decimal import Decimal
from typing import IO, Any, Callable, Iterator

import orjson

from . import formats
from .errors import stream_errors
from .formats import CHECKSUM, HEADER_KEYS, Ended, Header, Section
from .parallel import Parser
from .records import Checker, Counted, checker
from .tables import BY_KEY

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
RUN = 1 << 18             # the lines read as one: less than twice this, so no line longer than FAST_LINE
PIECE = 1 << 16           # a read below: as the buffer under it reads, so a cut stream is met where line reads meet it
_JSONL_START, _JSONL_RECORD = b'{"table":"', b'","record":'
_JSONL_PREFIX = re.compile(rb'\{"table":"[^"\\\x00-\x1f]*","record":')    # a key orjson writes as it is
_OTHER_TABLE: dict[bytes, re.Pattern] = {}            # per prefix: a line that does not begin with it
_STATS_TYPES = {int}
_ODD = frozenset({float, list, dict})     # in a record: what the strict reader builds or words otherwise
# simdjson reads a run's records in about two thirds of the time orjson takes to read and write them again, and
# counts every field as written. Made at first use and used again (a new one for each run faults its memory in
# anew: validate took 30% longer), it keeps what the longest document read needed, about four times a run; a
# longer document (a line read alone) it refuses, and orjson reads.
SIMDJSON_MOST = 1 << 20
_simdjson: Any = None


def strict_only() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def reader(fmt: str, parser: Parser) -> Callable[[IO[bytes], Ended], tuple[Header, Iterator[Section]]]:
    """The reader of a layout: the fast one, its runs parsed by `parser`, unless STRICT_ENV says otherwise."""
    return formats.READERS[fmt] if strict_only() else functools.partial(READERS[fmt], parser=parser)


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


def read_jsonl(stream: IO[bytes], end: Ended = formats._nothing, parser: Parser | None = None
               ) -> tuple[Header, Iterator[Section]]:
    """The header line is read first: if it is not as memory writes it, the strict reader's line loop reads
    the file from its start (each line still read by orjson where it is canonical)."""
    line = formats.read_line(stream, longest=OTHER_LINE)
    header = canonical(line, 1) if line.endswith(b"}\n") else None
    if not _good_header(header) or "table" in header or "end" in header:
        return formats.read_jsonl(io.BufferedReader(_Chained(line, stream), 1 << 16), end, parsed_line)
    return header, formats.jsonl_sections(_jsonl_pieces(_Ahead(stream), end, parser or Parser(work)))


def _jsonl_pieces(reader: _Ahead, end: Ended, parser: Parser) -> Iterator[tuple[str, list]]:
    """(table, batch of its records), runs of lines at a time; a run that is not all as memory writes it is
    read a line at a time, as is a line longer than a run holds; from the first line that is not a record's as
    memory writes it (the end line), the line loop reads the rest of the file."""
    lineno = 1
    while (prefix := reader.jsonl_prefix()) is not None:
        try:
            key = prefix[len(_JSONL_START):-len(_JSONL_RECORD)].decode()
        except UnicodeDecodeError:
            break

        def next_run() -> bytes:
            run = reader.jsonl_run(prefix)
            reader.take(len(run))
            return run

        for run, records in parser.parsed(next_run, reader.unread, "jsonl", key):
            if records is None:     # the reader stands at its start. Where it holds another table's lines
                slow = run[: _jsonl_cut(prefix, run)]          # (or the end line), those come after it
                reader.take(len(slow))
                records = work("jsonl", key, parser.minor, parser.keep, slow) if len(slow) < len(run) else None
                if records is not None:
                    lineno += len(records)
                    yield key, records
                    slow = b""
                break
            lineno += len(records)
            yield key, records
        else:
            if reader.starts(prefix):       # a line longer than a run holds: read alone (as JSON's are), then
                line = _line(reader, FAST_LINE)     # runs again; one not as memory writes it, or longer than
                records = work("jsonl", key, parser.minor, parser.keep, line) if line.endswith(b"\n") else None
                if records is None:                 # FAST_LINE, and the rest go to the line loop
                    reader.unread(line)
                    break
                lineno += 1
                yield key, records
            continue                        # another table's lines, or the end line
        if slow:
            lines = formats.jsonl_lines(io.BytesIO(slow), parsed_line, lineno + 1)
            yield from formats.jsonl_pieces(lines, end, whole=False)
            lineno += slow.count(b"\n")
    lines = formats.jsonl_lines(reader.rest_stream(), parsed_line, lineno + 1)
    yield from formats.jsonl_pieces(lines, end)


def _jsonl_text(run: bytes, key: str) -> tuple[bytes, int] | None:
    """A run of lines, if each is '{"table":KEY,"record":{' ... '}' exactly as memory writes it, as one JSON
    array of their records, and how many lines it has; else None (see `work`). With the start of each line but
    its record's '{', and the '}' before each newline, taken out, the records joined with commas make the
    array. No newline must then be left, so every line began so and ended '}'; each comma that stands for a
    line break is followed by '{', so it is not inside an object, and not inside an array (`work` refuses
    records holding one): it is between two records. As many records as lines is then one to a line."""
    start = _JSONL_START + key.encode() + _JSONL_RECORD
    if not (run.startswith(start + b"{") and run.endswith(b"}\n")):
        return None
    joined = run.replace(b"}\n" + start + b"{", b",{")    # not at the run's ends: its first line's start is
    text = _bracketed(joined, len(start), 2)               # not after '}\n', its last '}\n' not before '{'
    if b"\n" in text:
        return None
    return text, (len(run) - len(joined)) // (len(start) + 1) + 1


def _jsonl_cut(prefix: bytes, run: bytes) -> int:
    """The length of the lines that begin with `prefix` at the start of `run`."""
    if prefix not in _OTHER_TABLE:
        _OTHER_TABLE[prefix] = re.compile(b"\n(?!" + re.escape(prefix) + b")")
    other = _OTHER_TABLE[prefix].search(run, 0, len(run) - 1)
    return other.start() + 1 if other else len(run)


def _jsonl_strictly(records: list[dict]) -> list | None:
    """The records if none holds an object (a typed value) or an array; else None: read a line at a time."""
    return records if {dict, list}.isdisjoint(map(type, itertools.chain.from_iterable(map(dict.values, records)))) \
        else None


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
_ARRAY_COMMA = (b'{"":[0,', 4)         # ... an item and a comma
_ARRAY_ITEM = (b'{"":[{}', 5)          # ... an item that ends as a record does: a 0 ran into a number's tail
                                        # ('.5', 'e1') on the line after (found by review)


def read_json(stream: IO[bytes], end: Ended = formats._nothing, parser: Parser | None = None
              ) -> tuple[Header, Iterator[Section]]:
    """The header and the first array's opening are read before the fast path is taken: if either is not as
    memory writes them (a header key on the next line, say), the strict reader reads the file from its start."""
    line = formats.read_line(stream, longest=OTHER_LINE)
    header = _header(line)
    if header is not None:
        opening = formats.read_line(stream, longest=OTHER_LINE)
        key, empty = _array_opening(opening)
        if key is not None:
            return header, _sections(_Ahead(stream), end, key, empty, parser or Parser(work))
        line += opening
    return formats.read_json(_Chained(line, stream), end)


def _header(line: bytes) -> Header | None:
    if not (line.startswith(b"{") and line.endswith(b",\n")):
        return None
    header = canonical(line[:-2] + b"}")
    return header if _good_header(header) else None


def _good_header(header: Any) -> bool:
    """A header with nothing the strict reader would word otherwise."""
    return (type(header) is dict and header.keys() <= set(HEADER_KEYS) and type(header.get("version")) is str
            and type(header.get("exportedAt", "")) is str and type(header.get("stats")) is dict
            and set(map(type, header["stats"].values())) <= _STATS_TYPES)


def _sections(reader: _Ahead, end: Ended, key: str, empty: bool, parser: Parser) -> Iterator[Section]:
    """The arrays from the first, whose opening line has been read."""
    while True:
        if empty:
            yield key, iter(())
        else:
            handed: list[formats.Events] = []
            yield key, _records(reader, key, handed, parser)
            if handed:
                yield from formats.json_rest(handed[0], end)
                return
        line = _line(reader, OTHER_LINE)
        key, empty = _array_opening(line)
        if key is None:
            yield from formats.json_rest(_strict(_AFTER_COMMA, line, reader), end)
            return


def _array_opening(line: bytes) -> tuple[str | None, bool]:
    """(key, whether empty) of a line that opens an array: '"key":[' or '"key":[],'; (None, False) if not."""
    for ending, empty in ((b":[\n", False), (b":[],\n", True)):
        if line.endswith(ending) and line.startswith(b'"'):
            key = canonical(line, len(ending))
            if type(key) is str and key not in HEADER_KEYS and key != CHECKSUM:
                return key, empty
    return None, False


def _records(reader: _Ahead, key: str, handed: list[formats.Events], parser: Parser) -> Iterator[list]:
    """The records of the array `key`, runs of lines at a time (see `_run`); the lines of a run that is not
    all as memory writes it, one at a time; the rest of the file's events go into `handed` if the strict
    reader takes over."""
    index = 0
    while True:
        ended = False

        def next_run() -> bytes:        # the runs of the array, up to its last record (no comma)
            nonlocal ended
            run = b"" if ended else reader.run()
            reader.take(len(run))
            ended = not run.endswith(b",\n")
            return run

        last = None        # the array's last run, once read
        slow = b""         # a run not as memory writes it, or none: the next line is not a run's
        for run, records in parser.parsed(next_run, reader.unread, "json", key):
            if records is None:     # the reader stands at its start. Where the array ends in it (its last
                end = run.find(b"}\n") + 2      # record's line, no comma), the lines up to there are one run
                records = work("json", key, parser.minor, parser.keep, run[:end]) if 2 <= end < len(run) else None
                if records is not None:
                    reader.take(end)
                    index += len(records)
                    yield records
                    last = run[:end]
                else:
                    slow = run
                break
            index += len(records)
            yield records
            if not run.endswith(b",\n"):
                last = run
        if last is not None:
            line = last
        else:
            records = []
            for _ in range(slow.count(b"\n") or 1):
                line = _line(reader, FAST_LINE)
                record = _record(line)
                if record is None:
                    if records:
                        yield records
                    handed.append(_strict(_ARRAY_COMMA if index else _ARRAY_START, line, reader))
                    yield from formats.array_rest(handed[0], key, index)
                    return
                records.append(record)
                index += 1
                if not line.endswith(b",\n"):
                    break
            yield records
        if not line.endswith(b",\n"):
            closing = _line(reader, OTHER_LINE)
            if closing != b"],\n":
                handed.append(_strict(_ARRAY_ITEM, closing, reader))
                yield from formats.array_rest(handed[0], key, index)
            return


def _line(reader: _Ahead, longest: int) -> bytes:
    """The next line; or, where the stream fails before the line ends (a cut gzip stream), b"", which is
    nothing the fast reader takes: the strict reader is handed the rest, meets the fault where it is and
    names the place as it would have from the start (found by review: cut just after a record's brace, it
    names the next record, where a line reader named the record cut)."""
    try:
        return reader.line(longest)
    except stream_errors():
        if reader.fault is None:        # not a fault held back: one the line's own read met
            raise
        return b""


def _record(line: bytes) -> dict | None:
    """The record a line holds as memory writes it, '{...},' or the array's last, '{...}'; else None."""
    more = line.endswith(b",\n")
    record = canonical(line, 2 if more else 1) if line.endswith(b"},\n" if more else b"}\n") else NOT_CANONICAL
    if type(record) is dict and not _ODD.isdisjoint(map(type, record.values())):
        record = _as_strict(record)
    return record if type(record) is dict else None


def _json_text(run: bytes, key: str) -> tuple[bytes, int] | None:
    """A run of record lines as one JSON array, '[' + the run + ']' (its last comma left out), and how many
    lines it has (see `_read`). (Not quite one record to a line: '{...},{"a":' then '1}' pass too, found by
    review; the records, and the places named after them, are the same.)"""
    if not run:
        return None
    text = _bracketed(run, 0, 2 if run.endswith(b",\n") else 1)
    return text, len(text) - len(text.replace(b"\n", b"")) + 1     # 10 times as quick as count() here


def _read(text: bytes, lines: int, quick: bool) -> list | None:
    """The records of a run's array (`_json_text`, `_jsonl_text`), if every line holds one record exactly as
    memory writes it (see `canonical`), read as one: one call for all of them, none per line. Else None.

    Written again by orjson, the array must be its text without the newlines (`quick`: or simdjson reads it
    with no field named twice, see `_objects`). Only whitespace can stand for a newline in JSON, so the
    records are exactly those the lines hold, as many as there are lines. They are not yet made as the
    strict reader makes them (see `work`)."""
    records = quick and _objects(text) or _written_as(text, text.replace(b"\n", b""))
    if records is None or len(records) != lines or set(map(type, records)) != {dict}:
        return None
    return records


def _written_as(text: bytes, written: bytes) -> Any:
    """The value of JSON `text` if orjson writes it as `written`, else None (see `canonical`)."""
    try:
        value = orjson.loads(text)
        return value if orjson.dumps(value) == written else None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None


def _objects(text: bytes) -> list | None:
    """The items of JSON array `text` as simdjson reads them, if each is an object with no field named twice:
    simdjson counts a field as often as it is written, where orjson and json keep the last. Else None. Its
    strings, integers, true, false and null are those the strict reader reads; not so a float (that reader
    keeps a Decimal, as written, and checks a real's range on it: 1.0000000000000001 is out of 0 to 1, its
    float is not), nor an object's own objects (their fields are not counted here): `work` takes records read
    so only where they hold none."""
    read = _simdjson_read(text, lambda document: (list(map(len, document)), document.as_list()))
    if read is None:
        return None
    fields, items = read
    return items if set(map(type, items)) == {dict} and list(map(len, items)) == fields else None


def _counted(text: bytes, lines: int, check: Checker) -> Counted | None:
    """The count of the records of JSON array `text`, if there are `lines` and every one passes the fast
    checks; else None. Validate's way, which makes no string it need not: no field is named twice, and the
    text is JSON with valid UTF-8 and escapes (simdjson reads it, counting each field as written); each item
    is an object of the table's fields with values of their types (records.Checker.count)."""
    if _simdjson_read(text, lambda document: set(map(len, document))) != {len(check.columns)}:
        return None
    return Counted(lines) if check.count(text) == lines else None


def _simdjson_read(text: bytes, made: Callable[[Any], Any]) -> Any:
    """What `made` makes of the document simdjson reads in `text`, or None: not JSON, or longer than
    SIMDJSON_MOST, or not what `made` takes."""
    global _simdjson
    if _simdjson is None:
        import simdjson
        _simdjson = simdjson.Parser(max_capacity=SIMDJSON_MOST)
    document = None
    try:
        document = _simdjson.parse(text)
        return made(document)
    except (ValueError, RuntimeError, TypeError, AttributeError):   # not JSON, too long, not an array
        return None
    finally:
        document = None     # the parser is read again only once nothing points into what it read


def _bracketed(data: bytes, start: int, cut: int) -> bytes:
    """'[' + data[start:-cut] + ']', copied once (a slice and two '+' copy it three times: a run is 256 KiB,
    and both cores copy every run of a file)."""
    return b"".join((b"[", memoryview(data)[start:len(data) - cut], b"]"))


def _strictly(records: list[dict]) -> list | None:
    """The records as the strict reader builds them (see `_as_strict`), or None."""
    if not _ODD.isdisjoint(set().union(*map(map, itertools.repeat(type), map(dict.values, records)))):
        records = [_as_strict(r) if not _ODD.isdisjoint(map(type, r.values())) else r for r in records]
        if None in records:
            return None
    return records


def _as_strict(record: dict) -> dict | None:
    """The record as the strict reader builds it, or None where only the strict reader words the fault (an
    array anywhere in it). That reader gives numbers with a fraction or exponent as Decimal, as written
    (messages quote them so): the text orjson writes for a float is the text the line holds."""
    if _holds_array(record):
        return None
    return {k: Decimal(orjson.dumps(v).decode()) if type(v) is float else v for k, v in record.items()}


def _holds_array(value: dict) -> bool:
    return any(type(v) is list or type(v) is dict and _holds_array(v) for v in value.values())


_RUNS = {"json": (_json_text, _strictly), "jsonl": (_jsonl_text, _jsonl_strictly)}


def work(layout: str, key: str, minor: int, keep: bool, run: bytes) -> Any:
    """What a run of lines holds (see parallel.Work): None if it is not as memory writes it; else, if its
    records pass the fast checks (records.Checker.fast), them checked and made rows (records.Checked), or
    with `keep` false only their count (records.Counted); else the records, made as the strict reader makes
    them, for the reader to check one by one, which words what is wrong (records that pass hold no float
    outside a real column and no object or array, so none needs making so).

    A table with no real column is read by simdjson (see `_objects`): records that pass the fast checks hold
    no float, object or array. Those that do not are read again by orjson, exactly. Not so in an import's own
    process (its first runs, read before a worker pays): it holds SQLite's cache and sorter, at its peak of
    memory, which simdjson, its module and what it keeps, would raise by 3.5 MB (found: 63.3 MB of 64).
    Where only the count is wanted, such a table's records are first counted without being made (`_counted`)."""
    text_of, strictly = _RUNS[layout]
    made = text_of(run, key)
    if made is None:
        return None
    text, lines = made
    check = checker(key, minor) if key in BY_KEY else None
    quick = check is not None and not check.reals and (not keep or multiprocessing.parent_process() is not None)
    if quick and not keep:
        counted = _counted(text, lines, check)
        if counted is not None:
            return counted
    records = _read(text, lines, quick)
    if records is None:
        return None
    if check is not None and check.fast(records):
        return check.rows(records) if keep else Counted(len(records))
    if quick:
        records = _read(text, lines, False)
        if records is None:
            return None
    return strictly(records)


def _strict(state: tuple[bytes, int], line: bytes, reader: _Ahead) -> formats.Events:
    """The strict reader's events for `line` and the rest of the file, its parser put in `state` first."""
    prefix, made = state
    events = formats.json_events(reader.rest_stream(prefix + bytes(line)))
    for _ in itertools.islice(events, made):
        pass
    return events


class _Ahead:
    """The stream, with what was read ahead of the line reached: runs of record lines are read RUN bytes at
    a time. A fault below is kept till the lines before it are taken, so it is met where it is, as reading
    line by line meets it."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.read_below = getattr(stream, "read1", stream.read)
        self.held, self.at = b"", 0
        self.fault: BaseException | None = None

    def run(self) -> bytes:
        """Whole lines from the line reached, about RUN bytes of them, the first beginning with '{' (else
        b""). Where the array ends among them, they are not a run as memory writes it (see `_run`)."""
        self._fill()
        return self._lines() if self.starts(b"{") else b""

    def take(self, size: int) -> None:
        self.at += size

    def unread(self, data: bytes) -> None:
        """Put back what was taken last (runs a worker held when a run before them was not as memory
        writes it)."""
        self.held, self.at = data + self.held[self.at:], 0

    def jsonl_prefix(self) -> bytes | None:
        """'{"table":KEY,"record":' if the next line begins so (KEY written as orjson writes it)."""
        self._fill()
        start = _JSONL_PREFIX.match(self.held, self.at)
        return start.group() if start else None

    def starts(self, prefix: bytes) -> bool:
        return self.held.startswith(prefix, self.at)

    def jsonl_run(self, prefix: bytes) -> bytes:
        """Whole lines, about RUN bytes of them, the first beginning with `prefix` (as `run`)."""
        self._fill()
        return self._lines() if self.starts(prefix) else b""

    def _lines(self) -> bytes:
        """The whole lines held from the line reached, at most twice RUN bytes of them (after `unread` more is
        held): what a pipe to the worker takes at once (parallel.PIPE)."""
        return self.held[self.at: self.held.rfind(b"\n", self.at, self.at + 2 * RUN) + 1]

    def rest_stream(self, head: bytes = b"") -> IO[bytes]:
        """`head`, what is held ahead, then the stream, and a fault met below where the stream ends."""
        return io.BufferedReader(_Chained(head + self.rest(), self.stream, self.fault), 1 << 16)

    def line(self, longest: int) -> bytes:
        """One line as formats.read_line reads it."""
        if self.at < len(self.held):
            end = self.held.find(b"\n", self.at, self.at + longest + 1)
            if end >= 0:
                line, self.at = self.held[self.at: end + 1], end + 1
                return line
            if len(self.held) - self.at > longest:
                line, self.at = self.held[self.at: self.at + longest + 1], self.at + longest + 1
                return line
        head = self.rest()
        if self.fault is not None:
            if head:
                self.held = head
            raise self.fault
        return head + formats.read_line(self.stream, longest=longest - len(head))

    def rest(self) -> bytes:
        """What is held ahead, now taken."""
        rest, self.held, self.at = self.held[self.at:], b"", 0
        return rest

    def _fill(self) -> None:
        """Read ahead, unless RUN bytes are held already or a fault below was met."""
        if len(self.held) - self.at >= RUN or self.fault is not None:
            return
        pieces = [self.rest()]
        try:
            formats._filled(pieces, lambda size: self.read_below(min(size, PIECE)), RUN - len(pieces[0]))
        except stream_errors() as exc:
            self.fault = exc
        self.held = b"".join(pieces)


class _Chained(io.RawIOBase):
    """`head`, then the rest of `stream`, what it holds before it reads below (read1, not readinto1, which
    also reads below and loses what it held if that read fails), so a fault below is met where it is."""

    def __init__(self, head: bytes, stream: IO[bytes], fault: BaseException | None = None):
        self.head = memoryview(head)
        self.read_below = getattr(stream, "read1", stream.read)
        self.fault = fault

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        if self.fault is not None:
            raise self.fault
        data = self.read_below(len(buffer))
        buffer[: len(data)] = data
        return len(data)


READERS = {"json": read_json, "jsonl": read_jsonl}
