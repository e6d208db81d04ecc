"""The export pipeline: one read snapshot, rows to records to the file, batch by batch."""

from __future__ import annotations

import functools
import itertools
import math
import operator
import sqlite3
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from . import ranges, records
from .database import counts, damaged, database_faults, quick_check, transaction
from .errors import DatabaseProblem
from .formats import WRITERS, Batches, Encoded, encoder
from .output import atomic_file, output_stack
from .records import records_of
from .schema_check import check_for_export
from .tables import FORMAT_VERSION, TABLES, Table
from .values import INFINITIES, PLAIN, tagged, text_or_raw
from .writeback import EarlyWriteback

ROWS = 256      # rows read, checked, made records and written as one (or records.HELD bytes of long rows):
                # 2,000 (records.BATCH) was 10% slower
_ROWID = operator.itemgetter(-1)
_NONE = type(None)


@dataclass
class Exported:
    counts: dict[str, int]      # rows per table, keyed as the file's stats are: what the file holds
    left_out: list[str]         # 'column sessions.tags', 'table notes': what --skip-unknown left out


def select_sql(table: Table) -> str:
    """The table's columns, then its rowid, in rowid order. Every column is qualified by the table: SQLite
    reads a bare double-quoted name that matches no column as a string ("updated_at"), a qualified one never."""
    columns = ", ".join(f't."{c.name}"' for c in table.columns)
    return f'SELECT {columns}, t.rowid FROM "{table.name}" AS t ORDER BY t.rowid'


def rows_from(conn: sqlite3.Connection, table: Table) -> Iterator[list[tuple]]:
    """The table's rows, each ending with its rowid, in rowid order (so a restore into an empty table gives
    them the same rowids), a batch at a time (see records.batches): every later stage works a batch at a time
    too, its loops in C, none per row in Python.

    sqlite3 fails on TEXT whose bytes are not UTF-8. From the row where it does, the rest of the table is read
    again, in the same read transaction, with a text factory that keeps such values as RawText."""
    with database_faults(conn, table.key):
        yield from _decoded(conn, select_sql(table), records.texts_of(table.columns))


def _decoded(conn: sqlite3.Connection, sql: str, texts: Callable[[tuple], tuple], params: tuple = (),
             size: int = ROWS) -> Iterator[list[tuple]]:
    read = 0
    try:
        for rows in records.batches(conn.execute(sql, params), texts, size):    # one that fails is read again below
            yield rows
            read += len(rows)
        return
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("Could not decode to UTF-8"):
            raise
    conn.text_factory = text_or_raw
    try:
        yield from records.batches(conn.execute(sql + " LIMIT -1 OFFSET ?", (*params, read)), texts, size)
    finally:
        conn.text_factory = str


class OutOfPlace(Exception):
    """Rows of a range that are not where the rowids say (a damaged b-tree): what one core reads is then told."""


def range_batches(conn: sqlite3.Connection, index: int, fmt: str, first: int, last: int, size: int
                  ) -> Iterator[Encoded]:
    """The rows of TABLES[index] whose rowids are first to last, written out as the file holds them, in
    batches of `size` rows (or of records.HELD bytes): what ranges.Spread does here."""
    for pieces, count, low, high in range_pieces(conn, index, fmt, first, last, size):
        yield Encoded(b"".join(pieces), count, low, high)


def range_pieces(conn: sqlite3.Connection, index: int, fmt: str, first: int, last: int, size: int
                 ) -> Iterator[Encoded]:
    """As range_batches, each batch's data in pieces (a list of bytes): what the worker sends, as they are."""
    table = TABLES[index]
    write = encoder(fmt, table.key)
    sql = select_sql(table).replace(" ORDER BY", " WHERE t.rowid BETWEEN ? AND ? ORDER BY")
    before = first - 1
    with database_faults(conn, table.key):
        for rows in typed(table, _decoded(conn, sql, records.texts_of(table.columns), (first, last), size)):
            rowids = list(map(_ROWID, rows))
            rowids.insert(0, before)
            if not (_ascending(rowids) and rowids[-1] <= last):
                raise OutOfPlace(f"rows of rowids {first} to {last} read out of order or out of that range")
            before = rowids[-1]
            yield Encoded(list(write(next(records_of(table, (rows,))))), len(rows), rowids[1], before)  # type: ignore


def intact(conn: sqlite3.Connection, table: Table, expected: int, batches: Iterable[list[tuple]]
           ) -> Iterator[list[tuple]]:
    """The batches, once each row is seen to follow the one before it and until the number read is the
    table's count. A b-tree page copied over another gives rows twice and loses others: the rowids step back
    where the copy begins, and the count, which SQLite takes from an index, differs. Rows keep their rowid,
    last, past the table's columns: records_of leaves it out."""
    last, read = None, 0
    for rows in batches:
        rowids = list(map(_ROWID, rows))
        if last is not None:
            rowids.insert(0, last)
        if not _ascending(rowids):
            before, rowid = next(p for p in itertools.pairwise(rowids) if p[0] >= p[1])
            raise damaged(conn, f"{table.key}: rowid {rowid} read after rowid {before}")
        last, read = rowids[-1], read + len(rows)
        yield rows
    if read != expected:
        raise damaged(conn, f"{table.key}: {read:,} rows read but the table counts {expected:,}")


def _ascending(rowids: list[int]) -> bool:
    return all(itertools.starmap(operator.lt, itertools.pairwise(rowids)))


def typed(table: Table, batches: Iterable[list[tuple]]) -> Iterator[list[tuple]]:
    """Rows with each value in a numeric column that plain JSON would not give back as it is (TEXT, a BLOB,
    a REAL in an INTEGER column, an infinity: orjson writes that as null) as a typed value. In TEXT columns
    only bytes can be odd, and the encoder tags those itself. A batch is looked at a column at a time; only
    one that holds such a value is gone through row by row."""
    odd = [(i, PLAIN[c.type]) for i, c in enumerate(table.columns) if c.type != "text" and not c.rowid]
    for rows in batches:
        if not all(_plain(rows, i, plain) for i, plain in odd):
            rows = [_typed_row(row, odd) for row in rows]
        yield rows


def _plain(rows: list[tuple], i: int, plain: type) -> bool:
    values = list(map(operator.itemgetter(i), rows))
    return {plain, _NONE}.issuperset(map(type, values)) and not (
        plain is float and (math.inf in values or -math.inf in values))


def _typed_row(row: tuple, odd: list[tuple[int, type]]) -> tuple:
    for i, plain in odd:
        value = row[i]
        if value is not None and (type(value) is not plain or value in INFINITIES):
            row = row[:i] + (tagged(value),) + row[i + 1:]
    return row


def export(conn: sqlite3.Connection, out: IO[bytes], fmt: str, progress: Callable[[int], None] = lambda n: None,
           *, skip_unknown: bool = False, check: bool = False) -> Exported:
    """Write the whole database to `out`. The schema check, PRAGMA quick_check when `check` is set, the counts
    and the rows come from one read transaction, so the file is one snapshot while others write (in WAL mode
    they are not blocked). Rows that disagree with the counts raise inside the writer: the caller's atomic
    file is then never linked in. A big table is done on two cores (ranges.Spread) where there are two."""
    spread = ranges.Spread(conn, range_pieces)       # before the read transaction: see ranges
    try:
        with transaction(conn, "DEFERRED"):
            left_out = check_for_export(conn, skip_unknown)
            if check:
                quick_check(conn)
            stats = counts(conn)
            header = {"version": FORMAT_VERSION, "exportedAt": utc_now(), "stats": stats}
            sections = ((table.key, section(conn, spread, fmt, index, stats[table.key]))
                        for index, table in enumerate(TABLES))
            WRITERS[fmt](out, header, sections, progress)
    finally:
        spread.close()
    return Exported(stats, left_out)


def section(conn: sqlite3.Connection, spread: ranges.Spread, fmt: str, index: int, expected: int) -> Batches:
    """A table's batches: records made here from one scan of the table, or, for a big table, Encoded
    batches of ranges of it (see ranges)."""
    table = TABLES[index]
    if not spread.wanted(expected):
        return records_of(table, typed(table, intact(conn, table, expected, rows_from(conn, table))))
    return _spread(conn, spread, fmt, index, expected)


def _spread(conn: sqlite3.Connection, spread: ranges.Spread, fmt: str, index: int, expected: int
            ) -> Iterator[Encoded]:
    table = TABLES[index]
    last, read = None, 0
    try:
        with database_faults(conn, table.key):
            low, high = conn.execute(f'SELECT min(rowid), max(rowid) FROM "{table.name}"').fetchone()
        here = functools.partial(range_batches, conn)
        for batch in spread.batches(index, fmt, cut(low, high, expected), ROWS, here):
            if last is not None and batch.first <= last:
                raise OutOfPlace(f"rowid {batch.first} read after rowid {last}")
            last, read = batch.last, read + batch.count
            yield batch
        if read != expected:
            raise OutOfPlace(f"{read:,} rows read but the table counts {expected:,}")
    except (OutOfPlace, DatabaseProblem, sqlite3.Error) as exc:
        # Damage: said as one core's export says it, from one scan of the whole table (found by it first).
        for _ in intact(conn, table, expected, rows_from(conn, table)):
            pass
        if isinstance(exc, OutOfPlace):     # one scan reads them all: a page that finds rows by rowid is wrong,
            raise damaged(conn, f"{table.key}: {exc}, read by ranges of rowids, though one scan reads them all "
                                f"in order") from exc       # which one core's export would not have seen
        raise


def cut(low: int | None, high: int | None, rows: int) -> list[tuple[int, int]]:
    """Ranges of rowids from `low` to `high` of about ranges.RANGE rows each, where `rows` are spread evenly."""
    if low is None or high is None:
        return []
    width = -(-(high - low + 1) // max(1, -(-rows // ranges.RANGE)))
    return [(first, min(first + width - 1, high)) for first in range(low, high + 1, width)]


Progress = Callable[[int], None]
# (total, label, file name) -> where to count
ProgressFor = Callable[[int, str, str], AbstractContextManager[Progress]]


def no_progress(total: int, label: str, name: str) -> AbstractContextManager[Progress]:
    return nullcontext(lambda n: None)


def export_to(conn: sqlite3.Connection, path: Path | None, fmt: str, compression: str,
              progress: ProgressFor = no_progress, replace: bool = True,
              stream: IO[bytes] | None = None, database: Path | None = None,
              **checks: bool) -> tuple[Exported, int]:
    """Export to a file that appears whole or not at all (or, with path None, to `stream`): (what, bytes).
    With replace=False an existing file is never replaced: FileExistsError. Never onto `database`'s own files
    (output.atomic_file). `checks` go to `export`."""
    try:
        with (nullcontext(stream) if path is None else atomic_file(path, replace, database)) as raw:
            with output_stack(raw if path is None else EarlyWriteback(raw), compression) as (out, counted):
                name = "stdout" if path is None else str(path)
                with progress(sum(counts(conn).values()), "Exporting", name) as step:
                    exported = export(conn, out, fmt, step, **checks)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:   # a write failed: say which file
            raise OSError(exc.errno, exc.strerror, "stdout" if path is None else str(path)) from exc
        raise
    return exported, counted.bytes


def utc_now() -> str:
    """ISO 8601 in UTC with milliseconds, as memory-nexus writes exportedAt."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
