"""The two layouts of a backup file (one JSON document, or JSON Lines) and their compression, both ways."""

from __future__ import annotations

import gzip
import io
import collections
import functools
import itertools
import operator
from typing import IO, Any, Callable, Iterable, Iterator, Tuple

import ijson
import jsonlines
import orjson
from ijson.utils import sendable_list

from .errors import BadBackup
from . import records
from .records import BATCH
from .tables import Record

Header = dict
Section = Tuple[str, Iterator[Any]]          # (array key, its records as they stream)
HEADER_KEYS = ("version", "exportedAt", "stats")
FORMATS = ("json", "jsonl")
COMPRESSIONS = ("gzip", "zstd", "none")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# Imports are several times slower on a pure-Python backend; the CLI warns when this is not "yajl2_c".
IJSON_BACKEND = ijson.backend
_YAJL = ijson.get_backend(IJSON_BACKEND)


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


# ---- names ------------------------------------------------------------------------------------------------

def format_from_name(name: str) -> tuple[str | None, str]:
    """(format, compression) that a file name says, e.g. 'x.jsonl.gz' -> ('jsonl', 'gzip')."""
    compression = "none"
    for suffix, method in ((".gz", "gzip"), (".zst", "zstd")):
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], method
    for fmt in FORMATS:
        if name.endswith("." + fmt):
            return fmt, compression
    return None, compression


# ---- compression ------------------------------------------------------------------------------------------

def compressed_writer(raw: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    return raw


def decompressed_reader(raw: IO[bytes]) -> IO[bytes]:
    """The plain bytes of a file, whatever it is compressed with: told by its first bytes, not its name."""
    if not hasattr(raw, "peek"):
        raw = io.BufferedReader(raw)  # type: ignore[arg-type]
    magic = raw.peek(4)[:4]
    if not magic:
        raise BadBackup("the file is empty")
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == ZSTD_MAGIC:
        import zstandard
        # Buffered, so JSON Lines can iterate it by line as it does a plain or gzip file.
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,
                                                                            closefd=False))
    return raw


# ---- writing ----------------------------------------------------------------------------------------------

def write_json(out: IO[bytes], header: Header, sections: Iterable[tuple[str, Iterable[Record]]],
               progress: Callable[[int], None]) -> None:
    """One JSON document in memory-nexus's key order: the header first, then one array per table,
    one record per line so the file reads and diffs well."""
    out.write(b"{" + b",".join(encode(k) + b":" + encode(header[k]) for k in HEADER_KEYS))
    for key, records in sections:
        out.write(b",\n" + encode(key) + b":[")
        separators = itertools.chain((b"\n",), itertools.repeat(b",\n"))
        count = _write_each(out, (s + encode(r) for s, r in zip(separators, records)), progress)
        out.write(b"\n]" if count else b"]")
    out.write(b"}\n")


def write_jsonl(out: IO[bytes], header: Header, sections: Iterable[tuple[str, Iterable[Record]]],
                progress: Callable[[int], None]) -> None:
    """JSON Lines: the header, then {"table": key, "record": {...}} per record, then {"end": true},
    so a file cut anywhere is told from a whole one."""
    writer = jsonlines.Writer(out, dumps=orjson.dumps)
    writer.write({k: header[k] for k in HEADER_KEYS})
    for key, records in sections:
        lines = (orjson.dumps({"table": key, "record": r}, option=orjson.OPT_APPEND_NEWLINE) for r in records)
        _write_each(out, lines, progress)
    writer.write({"end": True})


def _write_each(out: IO[bytes], chunks: Iterable[bytes], progress: Callable[[int], None]) -> int:
    """Write each encoded record at once: orjson's result holds a 4 KiB buffer, so keeping a batch of them
    would cost 8 MB. Progress is told once a batch."""
    count = 0
    for count, chunk in enumerate(chunks, 1):
        out.write(chunk)
        if count % BATCH == 0:
            progress(BATCH)
    progress(count % BATCH)
    return count


WRITERS = {"json": write_json, "jsonl": write_jsonl}


# ---- reading ----------------------------------------------------------------------------------------------

def read_json(stream: IO[bytes]) -> tuple[Header, Iterator[Section]]:
    """The header of a JSON backup, read before anything else, and the arrays that follow it as streams.

    Only the top level is walked in Python; each array's records are built by ijson's C backend."""
    # Not use_float=True: with it yajl overflows on -2**63 (ijson issue #153). Reals arrive as Decimal
    # and `checked` turns them into floats, exactly.
    # 256 KiB at the default batch: measured faster than 64 KiB and 1 MiB. Tied to BATCH like all buffers.
    events = ijson.parse(stream, buf_size=records.BATCH * 128)
    first = next(events, None)
    if first is None:
        raise BadBackup("the file is empty")
    if first[1] != "start_map":
        raise BadBackup("not a memory backup: the JSON document is not an object")
    header: Header = {}
    for _, event, key in events:
        if event == "end_map":
            return header, iter(())
        if key not in HEADER_KEYS:
            break
        if key in header:
            raise BadBackup(f"duplicate key {key!r} in the header")
        header[key] = _value(events, key)
    else:
        raise BadBackup("the file ends inside the header")
    missing = [k for k in ("version", "stats") if k not in header]
    if missing:
        raise BadBackup(f"no {missing[0]!r} in the header before the data starts at {key!r}: a backup begins with "
                        "version, exportedAt and stats (was it re-ordered, e.g. by jq -S?)")
    return header, _json_sections(events, key)


def _json_sections(events: Iterator[tuple], key: str) -> Iterator[Section]:
    while True:
        yield key, _array_items(events, key)
        prefix, event, key = next(events)
        if event == "end_map":
            for _ in events:   # let the parser see anything after the document
                raise BadBackup("data after the end of the JSON document")
            return
        if key in HEADER_KEYS:
            raise BadBackup(f"{key!r} comes after the data; the header must come first")


def _array_items(events: Iterator[tuple], key: str) -> Iterator[Any]:
    prefix, event, value = next(events)
    if event != "start_array":
        raise BadBackup(f"{key} must be an array, got {event.replace('start_map', 'an object')}")
    # Only the array's own end_array event has the bare key as prefix and 'end_array' as event; takewhile
    # stops there (consuming it) without a Python frame per event.
    inside = itertools.takewhile(functools.partial(operator.ne, (key, "end_array", None)), events)
    return _built(inside, f"{key}.item")


def _built(events: Iterator[tuple], prefix: str) -> Iterator[Any]:
    """The objects at `prefix`, built by ijson's C items coroutine. Events are fed a chunk at a time through
    map() and a zero-length deque, so no Python frame runs per event (ijson.items over an event iterable
    runs one): 125 MB/s instead of 89 here. Memory: one chunk of events (about half a batch of records)
    and the records built from it."""
    chunk = records.BATCH * 8
    built = sendable_list()
    send = _YAJL.items_basecoro(built, prefix).send
    while True:
        events_chunk = list(itertools.islice(events, chunk))
        whole = len(events_chunk) == chunk
        collections.deque(map(send, events_chunk), maxlen=0)
        del events_chunk             # before the next chunk is built, not after
        yield from built
        built.clear()
        if not whole:
            return


def _value(events: Iterator[tuple], key: str) -> Any:
    """One whole (small) value: a header field."""
    builder = ijson.ObjectBuilder()
    depth = 0
    for _, event, value in events:
        builder.event(event, value)
        depth += event in ("start_map", "start_array")
        depth -= event in ("end_map", "end_array")
        if depth == 0:
            return builder.value
    raise BadBackup(f"the file ends inside {key!r}")


def read_jsonl(stream: IO[bytes]) -> tuple[Header, Iterator[Section]]:
    """The header line of a JSON Lines backup, and its records grouped by table as they stream."""
    reader = jsonlines.Reader(stream, loads=orjson.loads)
    header = next(iter(reader), None)
    if header is None:
        raise BadBackup("the file is empty")
    if not isinstance(header, dict) or "table" in header or "end" in header:
        raise BadBackup("line 1: not a memory backup header (version, exportedAt, stats)")
    unknown = [k for k in header if k not in HEADER_KEYS]
    if unknown:
        raise BadBackup(f"line 1: unknown header key {unknown[0]!r}")
    tagged = _tagged(reader)
    return header, ((key, (record for _, record in group))
                    for key, group in itertools.groupby(tagged, key=lambda pair: pair[0]))


def _tagged(reader: jsonlines.Reader) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(reader, start=2):
        if type(line) is dict and line.keys() == {"table", "record"} and type(line["table"]) is str:
            yield line["table"], line["record"]
        elif line == {"end": True}:
            extra = next(iter(reader), None)
            if extra is not None:
                raise BadBackup(f"line {lineno + 1}: data after the end line")
            return
        else:
            raise BadBackup(f'line {lineno}: expected {{"table": ..., "record": ...}} or {{"end": true}}')
    raise BadBackup("the file is cut short: no end line")


READERS = {"json": read_json, "jsonl": read_jsonl}
