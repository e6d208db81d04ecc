"""The export pipeline: one read snapshot, rows to records to the file, batch by batch."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timezone
from typing import IO, Callable, Iterable, Iterator

import orjson

from .database import counts, transaction
from .errors import Unexportable
from .formats import WRITERS
from .records import records_of
from .tables import FORMAT_VERSION, TABLES, Table


def rows_from(conn: sqlite3.Connection, table: Table) -> Iterator[tuple]:
    """The table's rows in rowid order, so a restore into an empty table gives them the same rowids.
    The cursor hands them over one at a time: no batch list is built here."""
    columns = ", ".join(f'"{c.name}"' for c in table.columns)
    return conn.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY rowid')


def holdable(table: Table, rows: Iterable[tuple]) -> Iterator[tuple]:
    """Rows, refusing what a 1.x file cannot hold rather than lose it: an infinite REAL (orjson would write
    null), TEXT that is not UTF-8 (sqlite3 cannot read it). BLOBs are refused where they are encoded."""
    numeric = [i for i, c in enumerate(table.columns) if c.type != "text"]
    n = -1
    try:
        for n, row in enumerate(rows):
            for i in numeric:
                if type(row[i]) is float and not math.isfinite(row[i]):
                    raise Unexportable(f"{table.name}[{n}]: {table.columns[i].name} is {row[i]}, which a "
                                       "JSON backup cannot hold; nothing was written")
            yield row
    except sqlite3.OperationalError as exc:
        raise Unexportable(f"{table.name}[{n + 1}]: {exc}; nothing was written") from exc


def export(conn: sqlite3.Connection, out: IO[bytes], fmt: str,
           progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Write the whole database to `out`; return the counts written. Counts and rows come from one read
    transaction, so the file is one snapshot while others write (in WAL mode they are not blocked)."""
    current: list[Table] = []

    def sections() -> Iterator[tuple[str, Iterator[dict]]]:
        for table in TABLES:
            current[:] = [table]
            yield table.key, records_of(table, holdable(table, rows_from(conn, table)))

    with transaction(conn, "DEFERRED"):
        stats = counts(conn)
        header = {"version": FORMAT_VERSION, "exportedAt": utc_now(), "stats": stats}
        try:
            WRITERS[fmt](out, header, sections(), progress)
        except orjson.JSONEncodeError as exc:          # a BLOB: bytes have no JSON form in 1.x
            raise Unexportable(f"{current[0].name}: a value is a BLOB, which a JSON backup cannot hold; "
                               "nothing was written") from exc
    return stats


def utc_now() -> str:
    """ISO 8601 in UTC with milliseconds, as memory-nexus writes exportedAt."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
