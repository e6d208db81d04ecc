"""Checking a database's tables and columns against tables.py before its rows are read, added to or replaced."""

from __future__ import annotations

import sqlite3
from typing import Iterator

from .database import database_faults
from .errors import Refused
from .tables import TABLES, Table

SCHEMA = "memory-nexus 0.1.2"
SKIP_OPTION = "--skip-unknown"
# Tables of the schema that hold nothing of their own: the full-text indexes, rebuilt from the rows, with the
# shadow tables FTS5 keeps for each; and SQLite's own (sqlite_sequence, sqlite_stat1...), which start "sqlite_".
DERIVED = ("messages_fts", "sessions_fts")
FTS5_SHADOWS = ("data", "idx", "content", "docsize", "config")
_OURS = {t.name.lower() for t in TABLES} | {d.lower() for d in DERIVED} | {
    f"{d}_{s}".lower() for d in DERIVED for s in FTS5_SHADOWS}


def columns_of(conn: sqlite3.Connection, table: str) -> list[str]:
    """The table's columns as the database has them, generated ones included (table_xinfo)."""
    return [row[0] for row in conn.execute("SELECT name FROM pragma_table_xinfo(?)", (table,))]


def missing_column(conn: sqlite3.Connection, table: Table) -> str | None:
    have = {name.lower() for name in columns_of(conn, table.name)}
    return next((c.name for c in table.columns if c.name.lower() not in have), None)


def refuse_missing_columns(conn: sqlite3.Connection) -> None:
    """A known column missing is refused by name: nothing could fill it but an invention."""
    for table in TABLES:
        missing = missing_column(conn, table)
        if missing:
            raise Refused(f"{table.name}: column {missing} is missing: the database's schema is not {SCHEMA}'s")


def unknown_columns(conn: sqlite3.Connection) -> Iterator[str]:
    """'table.column' for each column of a known table that tables.py does not describe."""
    for table in TABLES:
        known = {c.name.lower() for c in table.columns}
        yield from (f"{table.name}.{name}" for name in columns_of(conn, table.name) if name.lower() not in known)


def other_tables(conn: sqlite3.Connection) -> Iterator[str]:
    """Tables that are neither described by tables.py, nor derived from them, nor SQLite's own."""
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        if name.lower() not in _OURS and not name.lower().startswith("sqlite_"):
            yield name


def holds_rows(conn: sqlite3.Connection, table: str) -> bool:
    """Whether the table has a row; one whose rows cannot be read (a virtual table of a module this SQLite
    lacks) is taken to hold some."""
    quoted = table.replace('"', '""')
    try:
        return conn.execute(f'SELECT 1 FROM "{quoted}" LIMIT 1').fetchone() is not None
    except sqlite3.OperationalError:
        return True


def beyond_schema(conn: sqlite3.Connection) -> list[str]:
    """What a backup would leave out: 'column sessions.tags', 'table notes' (only tables holding rows)."""
    return ([f"column {name}" for name in unknown_columns(conn)] +
            [f"table {name}" for name in other_tables(conn) if holds_rows(conn, name)])


def check_for_export(conn: sqlite3.Connection, skip_unknown: bool) -> list[str]:
    """Before reading: refuse a known column missing; refuse data a backup would leave out unless
    `skip_unknown`, and then return it, so the report can say what was left out."""
    with database_faults(conn, "checking the schema"):
        refuse_missing_columns(conn)
        left_out = beyond_schema(conn)
    if left_out and not skip_unknown:
        raise Refused(f"the database holds what {SCHEMA}'s schema has not, and a backup would leave it out: "
                      f"{', '.join(left_out)}; pass {SKIP_OPTION} to back up without it")
    return left_out


def check_for_import(conn: sqlite3.Connection, clear: bool) -> None:
    """Before writing into an existing memory database: refuse a known column missing; with --clear, refuse
    what emptying the known tables would take with them (their unknown columns) or break (other tables
    pointing at them by a foreign key: ON DELETE CASCADE would empty those too)."""
    with database_faults(conn, "checking the schema"):
        refuse_missing_columns(conn)
        if clear:
            _refuse_what_clear_would_take(conn)


def _refuse_what_clear_would_take(conn: sqlite3.Connection) -> None:
    extra = next(unknown_columns(conn), None)
    if extra:
        raise Refused(f"{extra}: --clear would empty this column, which is not {SCHEMA}'s and no backup holds; "
                      "import without --clear to merge, or drop the column first")
    known = {t.name.lower() for t in TABLES}
    for other in other_tables(conn):
        for row in conn.execute("SELECT * FROM pragma_foreign_key_list(?)", (other,)):
            parent = row[2]       # id, seq, table, from, to, on_update, on_delete, match
            if parent.lower() in known:
                raise Refused(f"table {other} refers to {parent} by a foreign key: --clear would empty or break "
                              "it; import without --clear to merge")
