"""The export pipeline: one read snapshot, rows to records to the file, batch by batch."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import IO, Callable, Iterator

from .database import counts, transaction
from .formats import WRITERS
from .records import records_of
from .tables import FORMAT_VERSION, TABLES, Table


def rows_from(conn: sqlite3.Connection, table: Table) -> Iterator[tuple]:
    """The table's rows in rowid order, so a restore into an empty table gives them the same rowids.
    The cursor hands them over one at a time: no batch list is built here."""
    columns = ", ".join(f'"{c.name}"' for c in table.columns)
    return conn.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY rowid')


def export(conn: sqlite3.Connection, out: IO[bytes], fmt: str,
           progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Write the whole database to `out`; return the counts written. Counts and rows come from one read
    transaction, so the file is one snapshot while others write (in WAL mode they are not blocked)."""
    with transaction(conn, "DEFERRED"):
        stats = counts(conn)
        header = {"version": FORMAT_VERSION, "exportedAt": utc_now(), "stats": stats}
        sections = ((t.key, records_of(t, rows_from(conn, t))) for t in TABLES)
        WRITERS[fmt](out, header, sections, progress)
    return stats


def utc_now() -> str:
    """ISO 8601 in UTC with milliseconds, as memory-nexus writes exportedAt."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
