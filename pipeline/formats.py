"""The two layouts of a backup file (one JSON document, or JSON Lines) and their compression, both ways."""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import io
import itertools
import json
import operator
import re
import sys
import zlib
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple, Tuple

import ijson
import orjson
from ijson.utils import sendable_list

from . import records
from .errors import BadBackup, PipelineError, stream_errors
from .integrity import Summed, trailer
from .tables import Record
from .values import tagged

Header = dict
Ended = Callable[[Any], None]                # told the checksum at the end of the file, once all is read
CHECKSUM = "checksum"                        # the key of the checksum, last in the file
Section = Tuple[str, Iterator[Any]]          # (array key, its records as they stream)
HEADER_KEYS = ("version", "exportedAt", "stats")
FORMATS = ("json", "jsonl")
COMPRESSIONS = ("gzip", "zstd", "none")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = b"\x2a\x4d\x18"     # after a byte 0x50-0x5F: a skippable frame, which pzstd starts its files with

# Imports are several times slower on a pure-Python backend; the CLI warns when this is not "yajl2_c".
IJSON_BACKEND = ijson.backend
_YAJL = ijson.get_backend(IJSON_BACKEND)
# Python converts no integer of more than 4,300 digits by default, and ijson's C backend does not handle the
# error: a segmentation fault (or a SystemError) where a file holds one. With no limit the number is read, and
# the column checks refuse it as any number out of range. The price: the conversion takes time quadratic in
# the digits, 0.05 s for 100,000 of them and 6 s for a million (measured, Python 3.11), before the refusal.
if hasattr(sys, "set_int_max_str_digits"):     # Python 3.10.7 on: before it, there was no limit
    sys.set_int_max_str_digits(0)
_DEFAULT_DIGITS = getattr(sys.int_info, "default_max_str_digits", 4300)


def _nothing(checksum: Any) -> None:
    return None


def encode(value: Any, option: int = 0) -> bytes:
    """orjson, with BLOBs and TEXT that is not UTF-8 (bytes, which it cannot write) as typed values: only
    such a value costs a call, so the common path stays in C."""
    return orjson.dumps(value, default=tagged, option=option)


# ---- names ------------------------------------------------------------------------------------------------

def format_from_name(name: str) -> tuple[str | None, str]:
    """(format, compression) that a file name says, e.g. 'x.jsonl.gz' -> ('jsonl', 'gzip'), in any case
    ('X.JSON.GZ' too: a name is not to be read one way by us and another by gzip or a file manager)."""
    name, compression = name.lower(), "none"
    for suffix, method in ((".gz", "gzip"), (".zst", "zstd")):
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], method
    for fmt in FORMATS:
        if name.endswith("." + fmt):
            return fmt, compression
    return None, compression


# Compressions this tool does not write: a name ending in one of these would be a lie.
OTHER_COMPRESSIONS = (".bz2", ".xz", ".lzma", ".lz", ".lz4", ".br", ".Z", ".zip", ".7z", ".tgz")


def contradiction(name: str, fmt: str | None, compression: str | None) -> str | None:
    """What is wrong when the options say one thing and the file name another (a file named .gz that is not
    gzip would mislead whoever reads it next), else None."""
    named_fmt, named_compression = format_from_name(name)
    other = next((s for s in OTHER_COMPRESSIONS if name.endswith(s)), None)
    if other:
        return f"{name!r} ends in {other}, which memory does not write: name it .gz or .zst (or neither)"
    if fmt and named_fmt and fmt != named_fmt:
        return f"--format {fmt} contradicts the name {name!r} (.{named_fmt}): change one of them"
    says_compression = name.lower().endswith((".gz", ".zst")) or named_fmt is not None    # x.json: not compressed
    if compression and says_compression and compression != named_compression:
        suffix = name[name.rindex("."):]
        return f"--compress {compression} contradicts the name {name!r} ({suffix}): change one of them"
    return None


# ---- compression ------------------------------------------------------------------------------------------

def compressed_writer(raw: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard
        # The frame's own content checksum too: without it, flipped bytes can decompress to other data.
        return zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(raw, closefd=False)
    return raw


def looked_ahead(stream: IO[bytes], size: int, stop: bytes = b"") -> tuple[bytes, IO[bytes]]:
    """The first `size` bytes of a stream (fewer only at its end, or once they hold `stop`, one byte), and a
    stream that reads them again, then the rest. A pipe brings what its writer has written so far: one peek
    may hold a piece of a line, or of a magic number (found: a JSON Lines backup from a slow writer, taken
    for JSON). Where the first peek holds them (a file, most pipes), it is the stream itself."""
    if not hasattr(stream, "peek"):
        stream = io.BufferedReader(stream)  # type: ignore[arg-type]
    head = stream.peek(size)[:size]
    if len(head) == size or stop and stop in head:
        return head, stream
    pieces: list[bytes] = []
    _filled(pieces, stream.read1, size, stop)  # type: ignore[attr-defined]
    head = b"".join(pieces)
    return head, io.BufferedReader(_Replayed(head, stream), 1 << 16)  # type: ignore[arg-type]


def _filled(pieces: list[bytes], read: Callable[[int], bytes], size: int, stop: bytes = b"") -> None:
    """Adds to `pieces` what `read` gives, till they hold `size` bytes, or one holds `stop`, or the end is
    reached. What was read before a fault stays in `pieces`."""
    got = 0
    while got < size:
        piece = read(size - got)
        if not piece:
            return
        pieces.append(piece)
        got += len(piece)
        if stop and stop in piece:
            return


class _Replayed(io.RawIOBase):
    """`head`, then the rest of `stream`."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self.head, self.stream = memoryview(head), stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.head:
            data = self.stream.read1(len(buffer))  # type: ignore[attr-defined]
        else:
            data, self.head = self.head[:len(buffer)], self.head[len(buffer):]
        buffer[:len(data)] = data
        return len(data)


def decompressed_reader(raw: IO[bytes]) -> IO[bytes]:
    """The plain bytes of a file, whatever it is compressed with: told by its first bytes, not its name."""
    magic, raw = looked_ahead(raw, 4)
    if not magic:
        raise BadBackup("the file is empty")
    if magic.startswith(GZIP_MAGIC):
        return io.BufferedReader(Decompressed(raw, lambda: zlib.decompressobj(wbits=31), padding=b"\0"), 1 << 16)
    if magic == ZSTD_MAGIC or magic[1:] == ZSTD_SKIPPABLE and magic[0] >> 4 == 0x5:
        return io.BufferedReader(Decompressed(raw, zstd_reading().ZstdDecompressor), 1 << 16)
    return raw


def zstd_reading() -> Any:
    """The zstd module whose decompressor takes max_length, as zlib's does: compression.zstd from Python 3.14,
    backports.zstd before. zstandard (which writes our files) cannot read them so: its decompressobj takes no
    max_length, and its stream_reader and read_to_iter, bounded, say nothing of a frame cut short."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[no-redef]
        except ImportError as exc:     # an install older than this requirement (setup.cfg), not reinstalled
            raise PipelineError("cannot read zstd here: the backports.zstd package is missing (pip install "
                                "backports.zstd, or pip install . again)") from exc
    return zstd


def sniffed_format(stream: IO[bytes]) -> tuple[str, IO[bytes]]:
    """The layout of a decompressed stream, told from its first line, and the stream to read from its start:
    a JSON Lines backup starts with a whole header object on a line of its own; a JSON document's first
    line either does not close (ours goes on to the arrays, memory-nexus's is a lone "{") or holds more than
    a header. Looks 64 KiB ahead at most: a first line longer than that is taken for JSON."""
    first, stream = looked_ahead(stream, 1 << 16, b"\n")
    line, newline, _ = first.partition(b"\n")
    if newline:
        try:
            value = json.loads(line)
        except ValueError:
            return "json", stream
        if type(value) is dict and value and all(k in HEADER_KEYS for k in value):
            return "jsonl", stream
    return "json", stream


class CutShort(OSError):
    """A compressed stream that ends inside a member. Not EOFError: jsonlines takes that for a normal end."""


class Decompressed(io.RawIOBase):
    """gzip or zstd, member after member (as `cat a.gz b.gz` makes), refusing a stream that ends inside one:
    gzip.GzipFile's EOFError is swallowed by jsonlines, and zstandard's readers say nothing at all. zlib also
    checks each gzip member's CRC and length, zstd each frame's content checksum. `padding`: a byte that may
    follow a member, any number of times, and is skipped: gzip's zeros (a tape's, `dd conv=sync`'s), as gzip and
    Python's gzip skip them.

    A step makes STEP bytes at most, whatever its data expands to. Found: a 16 KiB read was decompressed whole,
    and zstd's RLE blocks turn 4 bytes into 128 KiB, so 32 kB of .json.zst holding 1 GiB of spaces took 1.1 GB
    to validate (deflate stops near 1000:1: 16 MiB). A step is one call, so a fault it raises comes after the
    bytes of the steps before it (junk after a small file's last member was once placed at 'the header')."""

    READ = 1 << 14   # compressed bytes read at a time
    STEP = 1 << 19   # plain bytes a step makes at most (at 1 << 18, zstd was slower: 0.54 s, not 0.39 s, a 440 MB file)

    def __init__(self, raw: IO[bytes], new: Callable[[], Any], padding: bytes = b""):
        self.raw, self.new, self.padding = raw, new, padding
        self.member = new()
        self.data = b""             # read, and not yet taken by the member
        self.full = False           # the last step made STEP bytes: the member may hold more, with no more data
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            if not self.data and not self.full:
                self.data = self.raw.read(self.READ)
                if not self.data:
                    if not self.member.eof:
                        raise CutShort("the compressed stream is cut short")
                    return 0
            self.pending = memoryview(self._step())
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def _step(self) -> bytes:
        """At most STEP bytes of what the member makes of the data. zlib hands back what it did not take
        (unconsumed_tail); zstd keeps it, and is then called with none."""
        if self.member.eof:         # between members: the padding skipped, what follows starts a new one
            self.data = self.data.lstrip(self.padding)       # b"": nothing stripped
            if not self.data:
                return b""
            self.member = self.new()
        out = self.member.decompress(self.data, self.STEP)
        self.full = len(out) == self.STEP and not self.member.eof
        self.data = self.member.unused_data if self.member.eof else getattr(self.member, "unconsumed_tail", b"")
        return out


# ---- writing ----------------------------------------------------------------------------------------------

class Encoded(NamedTuple):
    """A batch of records already written out (by `encoder`, maybe in another process), and the rowids of the
    first and last of them."""
    data: bytes
    count: int
    first: int
    last: int


# A section's batches: records, or Encoded ones.
Batches = Iterable["list[Record] | Encoded"]


def encoder(fmt: str, key: str) -> Callable[[list[Record]], Iterator[bytes]]:
    """What a batch of a section's records is in the layout, in pieces, each record encoded as they are taken:
    in a .json file each record after ",\n" (the writer makes the first of an array's "\n"), in a .jsonl file
    each a line. The one description of a record's place in a file, for both writers and the export's worker."""
    if fmt == "json":
        return lambda batch: itertools.chain.from_iterable(zip(itertools.repeat(b",\n"), map(_ENCODE, batch)))
    start = b'{"table":' + encode(key) + b',"record":'       # as orjson writes {"table":, "record":}
    return lambda batch: itertools.chain.from_iterable(zip(itertools.repeat(start), map(_ENCODE, batch),
                                                           itertools.repeat(b"}\n")))


def write_json(out: IO[bytes], header: Header, sections: Iterable[tuple[str, Batches]],
               progress: Callable[[int], None]) -> None:
    """One JSON document in memory-nexus's key order: the header first, then one array per table,
    one record per line so the file reads and diffs well, and last the checksum of all that."""
    with summed(out, "json") as out:
        out.write(b"{" + b",".join(encode(k) + b":" + encode(header[k]) for k in HEADER_KEYS))
        for key, batches in sections:
            out.write(b",\n" + encode(key) + b":[")
            count = 0
            write = encoder("json", key)
            for batch in batches:
                count += _write_batch(out, batch, write, progress, None if count else b"\n")
            out.write(b"\n]" if count else b"]")


def write_jsonl(out: IO[bytes], header: Header, sections: Iterable[tuple[str, Batches]],
                progress: Callable[[int], None]) -> None:
    """JSON Lines: the header, then {"table": key, "record": {...}} per record, then {"end": true} with the
    checksum of all that, so a file cut anywhere, or changed, is told from a whole one."""
    with summed(out, "jsonl") as out:
        out.write(encode({k: header[k] for k in HEADER_KEYS}, orjson.OPT_APPEND_NEWLINE))
        for key, batches in sections:
            write = encoder("jsonl", key)
            for batch in batches:
                _write_batch(out, batch, write, progress)


@contextlib.contextmanager
def summed(out: IO[bytes], fmt: str) -> Iterator[IO[bytes]]:
    """What to write the body to; when the block ends well, the layout's trailer with the body's checksum.
    The sum is taken under a 1 MiB buffer: per record it would cost more than the hashing itself."""
    checksummed = Summed(out)
    body = io.BufferedWriter(checksummed, buffer_size=1 << 20)
    try:
        yield body
        body.flush()
        out.write(trailer(fmt, checksummed.value()))
    except BaseException:
        checksummed.out = None      # the file is given up: what the buffer still holds goes nowhere, now, not
        with contextlib.suppress(Exception):    # when it is collected (found: a full disk at the last flush)
            body.close()
        raise


_ENCODE = functools.partial(orjson.dumps, default=tagged)      # encode(), without a Python call per record


def _write_batch(out: IO[bytes], batch: "list[Record] | Encoded", write: Callable[[list[Record]], Iterator[bytes]],
                 progress: Callable[[int], None], first: bytes | None = None) -> int:
    """Write a batch, records (each as soon as it is encoded: orjson's result holds a 4 KiB buffer, a batch of
    them kept would cost 8 MB) or Encoded, in pieces the buffer above the file gathers; then tell progress. Where
    `first` is given, it goes in place of the separator the batch starts with (",\n"). Gives the records' count."""
    if type(batch) is Encoded:
        data, count = memoryview(batch.data), batch.count
        if first is not None:
            out.write(first)
            data = data[2:]
        out.write(data)
    else:
        pieces, count = write(batch), len(batch)
        if first is not None:
            next(pieces, None)
            out.write(first)
        out.writelines(pieces)
    progress(count)
    return count


WRITERS = {"json": write_json, "jsonl": write_jsonl}


# ---- reading ----------------------------------------------------------------------------------------------

def read_json(stream: IO[bytes], end: Ended = _nothing) -> tuple[Header, Iterator[Section]]:
    """The header of a JSON backup, read before anything else, and the arrays that follow it as streams;
    once the whole file is read, `end` is given the checksum that closes the document (None if none).

    Only the top level is walked in Python; each array's records are built by ijson's C backend."""
    # basic_parse, not parse: parse keeps a prefix string per level of nesting, so memory grows with the
    # square of the depth (20,000 nested arrays took 1 GB). Reals arrive as Decimal, not float
    # (use_float=True overflows on -2**63, ijson issue #153); `checked` turns them into floats, exactly.
    # 256 KiB reads at the default batch: measured faster than 64 KiB and 1 MiB.
    events = json_events(stream)
    first = next(events, None)
    if first is None:
        raise BadBackup("the file is empty")
    if first[0] != "start_map":
        raise BadBackup("not a memory backup: the JSON document is not an object")
    header: Header = {}
    for event, key in events:
        if event == "end_map":
            return header, _json_end(events, None, end)
        if key not in HEADER_KEYS:
            break
        if key in header:
            raise BadBackup(f"duplicate key {records.shown(key)} in the header")
        header[key] = _value(events, key)
    else:
        raise BadBackup("the file ends inside the header")
    missing = [k for k in ("version", "stats") if k not in header]
    if missing:
        raise BadBackup(f"no {missing[0]!r} in the header before the data starts at {records.shown(key)}: a backup "
                        "begins with version, exportedAt and stats (was it re-ordered, e.g. by jq -S?)")
    return header, _json_sections(events, key, end)


def _json_sections(events: Events, key: str, end: Ended) -> Iterator[Section]:
    if key != CHECKSUM:
        yield key, _array_items(events, key)
        yield from json_rest(events, end)
    else:
        yield from _json_checksum(events, key, end)


def json_rest(events: Events, end: Ended) -> Iterator[Section]:
    """The arrays after one has ended (the next event is a key or the document's end), then the checksum."""
    while True:
        event, key = next(events)
        if event == "end_map":
            yield from _json_end(events, None, end)
            return
        if key in HEADER_KEYS:
            raise BadBackup(f"{records.shown(key)} comes after the data; the header must come first")
        if key == CHECKSUM:
            yield from _json_checksum(events, key, end)
            return
        yield key, _array_items(events, key)


def _json_checksum(events: Events, key: str, end: Ended) -> Iterator[Section]:
    checksum = _value(events, key)
    event, key = next(events)
    if event != "end_map":
        raise BadBackup(f"{records.shown(key)} comes after the checksum; the checksum must be last")
    yield from _json_end(events, checksum, end)


def json_events(stream: IO[bytes]) -> Events:
    return Events(stream)


class Events:
    """ijson's events of the JSON document in `stream`. Iterating over it iterates over ijson's own
    iterator, in C; `next` on it is for the few events of the top level."""

    def __init__(self, stream: IO[bytes]):
        self.source = _Growing(stream)
        self.events = ijson.basic_parse(self.source, buf_size=records.BATCH * 128)

    def __iter__(self) -> Iterator[tuple]:
        return self.events

    def __next__(self) -> tuple:
        return next(self.events)


class _Growing:
    """Reads of the size asked for, but twice as large each time (up to GROW_TO) while they lie inside one
    string: no newline, and every quote escaped. yajl lexes a token that spans reads again from its start at
    every read, so one string of 300 MB read 256 KiB at a time was lexed 1,200 times over (83 s); growing
    reads make that linear. Other reads, a minified file's too, stay as asked (so memory stays as it was).
    A fault below (a cut gzip stream), or an escaped surrogate that is not half of a pair (see
    `_lone_surrogate_at`), is raised once the bytes before it are handed on, so that it is placed at the
    record it is in, as the fast reader, which reads line by line, places it."""

    GROW_TO = 16 << 20

    def __init__(self, stream: IO[bytes]):
        self.read_below = getattr(stream, "read1", stream.read)
        self.ask = 0
        self.fault: BaseException | None = None
        self.ended = False          # the document has ended: at the end of the file, a newline is read (below)
        self.taken = 0              # bytes handed to the parser
        self.held = b""             # read, not yet handed on: an escape may go on in the next read
        self.escaping = 0           # 1: what was handed on ends in a backslash that escapes what comes next

    def read(self, size: int) -> bytes:
        if self.fault is not None:
            raise self.fault
        size = max(size, self.ask)
        pieces, self.held = [self.held], b""
        whole = True            # every escape in what is handed on can be judged: nothing of it follows
        end = False             # the file ends with what is handed on
        try:
            while True:
                got = len(pieces)
                _filled(pieces, self.read_below, size)
                data = b"".join(pieces)
                if sum(map(len, pieces[got:])) < size:      # fewer bytes than asked: the end
                    end = True
                    break
                cut = _unfinished_escape(data)
                if cut == len(data):
                    break
                if cut > 0:
                    data, self.held = data[:cut], data[cut:]
                    break
                pieces = [data]
        except stream_errors() as exc:
            data = b"".join(pieces)
            if not data:
                raise
            self.fault, whole = exc, False
        lone = _lone_surrogate_at(data, self.escaping, len(data) if whole else _unfinished_escape(data), end)
        if lone is not None:
            self.fault = NotText(f"a lone surrogate, \\u{int(data[lone + 2:lone + 6], 16):04x}, is not text")
            data, self.held = data[:lone], b""
            if not data:
                raise self.fault
        run = _backslashes_before(data, len(data))
        self.escaping = (run + (self.escaping if run == len(data) else 0)) % 2
        self.taken += len(data)
        inside_a_string = b"\n" not in data and data.count(b'"') == data.count(b'\\"')
        self.ask = min(size * 2, self.GROW_TO) if inside_a_string else 0
        # yajl takes a document followed by a string that never closes ('}\n"x}') as if nothing followed it:
        # it waits for more of the string. Once the document has ended, the end of the file reads as one
        # newline more: no string may hold one (nor may an escape, '"x\\' ending in a backslash), so yajl
        # refuses such a string as it refuses any other data after the document ("trailing garbage"); after
        # white space only, it is white space. (A quote, tried first, was escaped by such a backslash.)
        if not data and self.ended:
            self.ended = False
            return b"\n"
        return data


class NotText(ValueError):
    """A string of the file holds what no text holds: an escaped surrogate that is not half of a pair."""


_HIGH_AT = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW_AT = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
# What may be an escaped surrogate alone: a high one not followed by a low one, a low one not preceded by a high
# one that follows no backslash (so surely an escape). A pair is no match: where it is most of a file (Python's
# json.dumps escapes every emoji so), the scan stays in C (a Python step per pair made such a file 6x slower).
_LONE = re.compile(rb"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                   rb"|[c-fC-F][0-9a-fA-F]{2}"
                   rb"(?<!(?<![\\])[\\]u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}))")
_CUT_LOW = re.compile(rb"(?:\\(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]?)?)?)?)?")    # its start, cut by the file's end


def _unfinished_escape(data: bytes) -> int:
    """Where, near the end of `data`, an escaped surrogate or a pair of them (12 bytes) may begin that the
    bytes after `data` would finish, or len(data): from there on, it is judged with them."""
    cut = data.find(b"\\", max(len(data) - 11, 0))
    if cut < 0:
        return len(data)
    return cut - 6 if cut >= 6 and _HIGH_AT.match(data, cut - 6) else cut     # a pair is not cut in two


def _lone_surrogate_at(data: bytes, escaping: int, until: int, end: bool) -> int | None:
    """Where `data` holds an escaped surrogate (\\ud800 to \\udfff) that is not half of a pair, a high one
    followed at once by an escaped low one, or None; escapes from `until` on are not judged. yajl makes a
    high one alone '?', and one followed by another escape a character of the two; a low one alone, bytes
    that are not UTF-8. A backslash begins an escape after an even run of them (the others are escaped
    backslashes: "\\\\ud800" is text); `escaping`: whether a backslash before `data` escapes its first byte.
    `end`: the file ends with `data`; a high one that it cuts short of its low one is left to the parser,
    which says the file is cut short."""
    if b"\\u" not in data:
        return None
    for found in _LONE.finditer(data, 0, until + 5):
        at = found.start()
        if not _escape_at(data, at, escaping):
            continue            # an escaped backslash, then text
        if data[at + 3] in b"89abAB":
            if end and _CUT_LOW.fullmatch(data, at + 6):
                continue
            return at
        if at < 6 or not _HIGH_AT.match(data, at - 6) or not _escape_at(data, at - 6, escaping):
            return at           # (else the low half of a pair whose high one follows backslashes)
    return None


def _escape_at(data: bytes, at: int, escaping: int) -> bool:
    """Whether the backslash at `at` begins an escape: an even run of backslashes comes before it."""
    run = _backslashes_before(data, at)
    return (run + (escaping if run == at else 0)) % 2 == 0


def _backslashes_before(data: bytes, at: int) -> int:
    """How many backslashes come in a row just before `at` (read back in growing steps: a read of a string
    of backslashes is 16 MiB of them)."""
    start, step = at, 64
    while start > 0:
        piece = data[max(start - step, 0):start]
        kept = len(piece.rstrip(b"\\"))
        if kept:
            return at - (start - len(piece) + kept)
        start, step = start - len(piece), step * 2
    return at


def _json_end(events: Events, checksum: Any, end: Ended) -> Iterator[Section]:
    """After the document's last brace: nothing may follow, and the whole file has then been read."""
    events.source.ended = True
    for _ in events:   # let the parser see anything after the document
        raise BadBackup("data after the end of the JSON document")
    end(checksum)
    yield from ()


_PART = 128         # events taken at a time (8 records or so), between which the bytes read are counted
_DEPTH = {"start_map": 1, "start_array": 1, "end_map": -1, "end_array": -1}.get
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_NOT_END = functools.partial(operator.ne, ("end_array", None))


def _array_items(events: Iterator[tuple], key: str) -> Iterator[Any]:
    event, _ = next(events)
    if event != "start_array":
        raise BadBackup(f"{key} must be an array, got {event.replace('start_map', 'an object')}")
    return array_rest(events, key)


def array_rest(events: Events, key: str, done: int = 0) -> Iterator[Any]:
    """The items of the array `key` from its item number `done` on, the events standing just before it."""
    # Records are flat, so in a good file the first end_array is the array's own end: takewhile stops
    # there in C, with no Python frame per event. `_built` checks that every container it saw was closed,
    # which tells a record holding an array apart. Each event gets the prefix "item": ijson's builder reads
    # prefixes only between objects, where "item" is right.
    inside = itertools.takewhile(_NOT_END, events)
    return _built(map(operator.add, itertools.repeat(("item",)), inside), key, done, events.source)


class DuplicateField(ValueError):
    """Raised from inside a JSON builder when an object names a field twice (a ValueError, so that
    jsonlines hands it on with its line number)."""


class FieldsOnce(dict):
    """The objects a backup's JSON is built into: a field named twice is refused, not silently overwritten
    (both ijson's builder and orjson keep the last)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self:
            raise DuplicateField(key)
        dict.__setitem__(self, key, value)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateField(key)
            seen.add(key)
    return record


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _built(events: Iterator[tuple], key: str, done: int, source: _Growing) -> Iterator[Any]:
    """The items of the array `key`, built by ijson's C items coroutine. Events are fed a chunk at a time
    through map() and a zero-length deque, so no Python frame runs per event (ijson.items over an event
    iterable runs one): 125 MB/s instead of 89 here. Memory: one chunk of events, a batch of them or those of
    about records.HELD bytes of the file (long records: a chunk of 16,000 events held 1,000 tool results),
    and the records built from it. A fault in the bytes is raised once the records before it are handed on,
    so it is placed at the record it is in, not at the start of its chunk."""
    chunk = records.BATCH * 8
    built = sendable_list()
    send = _YAJL.items_basecoro(built, "item").send
    tail: list[tuple] = []        # the events of the record still open at the end of the last chunk
    opened = 0                    # containers opened and not yet closed
    while True:
        events_chunk: list[tuple] = []
        fault = None
        whole = True
        start = source.taken
        try:
            while len(events_chunk) < chunk and source.taken - start < records.HELD:
                asked, before = min(_PART, chunk - len(events_chunk)), len(events_chunk)
                events_chunk.extend(itertools.islice(events, asked))   # keeps the events before a fault
                if len(events_chunk) - before < asked:
                    whole = False       # the array's end
                    break
        except stream_errors() as exc:
            fault = exc
        collections.deque(map(send, events_chunk), maxlen=0)
        opened += sum(map(_DEPTH, map(_SECOND, events_chunk), itertools.repeat(0)))
        try:
            tail = _no_field_twice(key, done, built, tail, events_chunk, opened)
        except _Twice as twice:      # the records before it are handed on first, to be checked, as a fault is
            if twice.before:
                yield built[: twice.before]
            raise
        del events_chunk             # before the next chunk is built, not after
        done += len(built)
        if built:
            yield list(built)
            built.clear()
        if fault is not None:
            raise fault
        if not whole:
            if opened:
                raise BadBackup(f"{key}[{done}]: a field holds an array; values are strings, numbers or null")
            return


class _Twice(BadBackup):
    """A record names a field twice; `before`: the records of its chunk before it."""

    def __init__(self, message: str, before: int):
        super().__init__(message)
        self.before = before


def _no_field_twice(key: str, done: int, built: list, tail: list[tuple], chunk: list[tuple], opened: int
                    ) -> list[tuple]:
    """ijson's builder keeps the last of a field named twice. Catch it by counting: the map_key events of
    the records completed in this chunk must equal the fields they hold (counted in C), and those of the
    typed values in them (counted in Python, only then). Where they do not, the chunk is built again with
    FieldsOnce, which names the record; if it finds no field twice, the difference was deeper nesting,
    which `checked` refuses. `opened`: the containers open at the chunk's end. Returns the events of the
    record left open."""
    # The last record completed ends where, going back from the chunk's end, no container is open: not at the
    # chunk's last end_map, which may close a typed value in the record still open (found by review: a field
    # named twice after one was then not counted, and its last value imported).
    last_end = len(chunk) - 1
    while opened and last_end >= 0:
        opened -= _DEPTH(chunk[last_end][1], 0)
        last_end -= 1
    closed = tail + chunk[: last_end + 1]
    keys = sum(map(operator.eq, map(_SECOND, closed), itertools.repeat("map_key")))
    if keys != sum(len(r) for r in built if type(r) is dict) and keys != sum(map(_fields, built)):
        strict = sendable_list()
        send = _YAJL.items_basecoro(strict, "item", map_type=FieldsOnce).send
        try:
            collections.deque(map(send, closed), maxlen=0)
        except DuplicateField as exc:
            twice = f"{key}[{done + len(strict)}]: field {records.shown(exc.args[0])} appears twice"
            raise _Twice(twice, len(strict)) from None
    return chunk[last_end + 1:] if last_end >= 0 else tail + chunk


def _fields(record: Any) -> int:
    """The fields of a record and of the objects in it."""
    if type(record) is not dict:
        return 0
    return len(record) + sum(len(v) for v in record.values() if type(v) is dict)


def _value(events: Iterator[tuple], key: str) -> Any:
    """One whole (small) value: a header field."""
    builder = ijson.ObjectBuilder(map_type=FieldsOnce)
    depth = 0
    for event, value in events:
        try:
            builder.event(event, value)
        except DuplicateField as exc:
            raise BadBackup(f"{key}: field {records.shown(exc.args[0])} appears twice") from None
        depth += event in ("start_map", "start_array")
        depth -= event in ("end_map", "end_array")
        if depth == 0:
            return builder.value
    raise BadBackup(f"the file ends inside {records.shown(key)}")


# The longest line a JSON Lines backup may hold (one record: SQLite's own limit on one value is 1,000,000,000
# bytes). A line is read a piece at a time, so a longer one is refused having held at most this much.
MAX_LINE = 1 << 30
LINE_PIECE = 1 << 20
NOT_A_HEADER = "line 1: not a memory backup header (version, exportedAt, stats)"
NOT_A_RECORD = 'line {}: expected {{"table": ..., "record": ...}} or {{"end": true}}'


def read_jsonl(stream: IO[bytes], end: Ended = _nothing,
               parse: Callable[[bytes], Any] | None = None) -> tuple[Header, Iterator[Section]]:
    """The header line of a JSON Lines backup, and its records grouped by table as they stream; once the
    whole file is read, `end` is given the checksum of the end line (None if none). `parse` reads one line
    (strict_line unless the fast path gives its own)."""
    lines = jsonl_lines(stream, parse or strict_line)
    lineno, header = next(lines, (1, None))
    if header is None:
        raise BadBackup("the file is empty")
    if not isinstance(header, dict) or "table" in header or "end" in header:
        raise BadBackup(NOT_A_HEADER)
    unknown = [k for k in header if k not in HEADER_KEYS]
    if unknown:
        raise BadBackup(f"line 1: unknown header key {records.shown(unknown[0])}")
    return header, jsonl_sections(jsonl_pieces(lines, end))


def jsonl_sections(pieces: Iterator[tuple[str, list]]) -> Iterator[Section]:
    """Sections from (table, batch) pieces: the batches of one table's consecutive lines."""
    return ((key, map(_SECOND, group)) for key, group in itertools.groupby(pieces, key=_FIRST))


def jsonl_pieces(lines: Iterator[tuple[int, Any]], end: Ended, whole: bool = True) -> Iterator[tuple[str, list]]:
    """(table, batch of its records) from the lines, to the end line; `whole`: the lines are the rest of the
    file, which must have its end line."""
    for key, group in itertools.groupby(_tagged(lines, end, whole), key=_FIRST):
        for batch in records.read_in_batches(map(_SECOND, group)):
            yield key, batch


def strict_line(line: bytes) -> Any:
    # json, not orjson: its object_pairs_hook lets a field named twice be refused (orjson keeps the last).
    value = _LOADS(line.decode("utf-8"))
    if _SURROGATE.search(line):     # json.loads keeps "\ud800" alone, which no UTF-8 text can hold
        lone = _lone_surrogate(value)
        if lone:
            raise ValueError(f"a lone surrogate, \\u{ord(lone):04x}, is not text")
    return value


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")      # an escaped surrogate, paired or alone


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in the strings of a value json.loads made, or None."""
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return value[exc.start]
        return None
    items = itertools.chain.from_iterable(value.items()) if type(value) is dict else value
    return next(filter(None, map(_lone_surrogate, items)), None) if type(value) in (dict, list) else None


def jsonl_lines(stream: IO[bytes], parse: Callable[[bytes], Any], first: int = 1) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each line, the first numbered `first`. A field named twice becomes a BadBackup
    naming the line; JSON that does not parse, a jsonlines.InvalidLineError, which the caller places."""
    for lineno, line in _raw_lines(stream, first):
        try:
            yield lineno, parse(line)
        except DuplicateField as exc:
            raise BadBackup(f"line {lineno}: field {records.shown(exc.args[0])} appears twice") from None
        except UnicodeDecodeError as exc:
            raise _invalid_line(f"line is not valid utf-8: {exc}", line, lineno) from exc
        except ValueError as exc:
            raise _invalid_line(f"line contains invalid json: {exc}", line, lineno) from exc


def _invalid_line(message: str, line: bytes, lineno: int) -> Exception:
    # Imported only for a file that fails: jsonlines, with attrs, cost every process 1 MB and 15 ms at start.
    import jsonlines
    return jsonlines.InvalidLineError(message, line, lineno)


def _raw_lines(stream: IO[bytes], first: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line, never more than MAX_LINE of one line (its newline counted). Every
    line of a backup is one object, so a line that does not start with '{' (a file of spaces, of zero bytes)
    is refused at its first piece."""
    for lineno in itertools.count(first):
        line = read_line(stream, lambda: BadBackup(NOT_A_HEADER if lineno == 1 else NOT_A_RECORD.format(lineno)))
        if not line:
            return
        if len(line) > MAX_LINE:
            raise BadBackup(f"line {lineno}: longer than {MAX_LINE:,} bytes, the most a line may hold")
        yield lineno, line


def read_line(stream: IO[bytes], not_an_object: Callable[[], Exception] | None = None,
              longest: int | None = None) -> bytes:
    """One line, read LINE_PIECE at a time and never more than `longest` + 1 bytes of it: it lacks its newline
    only at the end of the file or when it is longer than that. With `not_an_object`, raised at once when the
    line does not start with '{'. `longest` is MAX_LINE unless given."""
    longest = MAX_LINE if longest is None else longest
    line = stream.readline(min(LINE_PIECE, longest + 1))
    if not_an_object is not None and line and not line.startswith(b"{"):
        raise not_an_object()
    if line.endswith(b"\n") or not line:
        return line
    longer = bytearray(line)
    while not longer.endswith(b"\n") and len(longer) <= longest:
        piece = stream.readline(min(LINE_PIECE, longest + 1 - len(longer)))
        if not piece:
            break
        longer += piece
    return longer    # type: ignore[return-value]


def _tagged(lines: Iterator[tuple[int, Any]], end: Ended, whole: bool = True) -> Iterator[tuple[str, Any]]:
    for lineno, line in lines:
        if type(line) is dict and line.keys() == {"table", "record"} and type(line["table"]) is str:
            yield line["table"], line["record"]
        elif type(line) is dict and line.get("end") is True and line.keys() <= {"end", CHECKSUM}:
            for extra, _ in lines:
                raise BadBackup(f"line {extra}: data after the end line")
            end(line.get(CHECKSUM))
            return
        else:
            raise BadBackup(NOT_A_RECORD.format(lineno))
    if whole:
        raise BadBackup("the file is cut short: no end line")


def _integer(text: str) -> int:
    """int(text) as json.loads makes it, but for a number longer than Python converts by default (4,300
    digits; see set_int_max_str_digits above), which would take time quadratic in its length: one as long, its
    first 18 digits its own and the rest zeros, made in linear time. Every check refuses it as past 64 bits,
    and a message gives only its number of digits (records.shown)."""
    if len(text) <= _DEFAULT_DIGITS:
        return int(text)
    return int(text[:19]) * 10 ** (len(text) - 19)


_LOADS = functools.partial(json.loads, object_pairs_hook=_unique_object, parse_constant=_no_constants,
                           parse_int=_integer)
READERS = {"json": read_json, "jsonl": read_jsonl}
