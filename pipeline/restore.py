"""The import and validate pipelines: header first, then every record checked, counted and inserted in one transaction."""

from __future__ import annotations

import functools
import io
import re
import sqlite3
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from .database import (
    IMPORT_CACHE_KIB,
    SUMMARY_CLEARED,
    SUMMARY_ON_INSERT,
    counts,
    create_schema,
    database_faults,
    derived_rebuilt,
    transaction,
)
from .canonical import reader, work
from .errors import BadBackup, DatabaseProblem, corrupt_as_bad_backup, rejected
from .formats import Section, decompressed_reader, sniffed_format
from .integrity import SINCE as CHECKSUM_SINCE
from .integrity import Summing
from .merge import Merge
from .parallel import Parser
from .records import Checked, checker, row_batches, shown, texts_of
from .search_index import TABLE, SideIndex
from .tables import BY_KEY, FORMAT_MAJOR, INT64, TABLES, Record, Table
from .values import NeedsCast, RawText

CONFLICT_MODES = ("skip", "replace", "fail")
NOTHING_IMPORTED = "; nothing was imported"
Progress = Callable[[int], None]
Phase = Callable[[str], None]      # told the name of each step after the records ("Checking foreign keys")


@dataclass
class Backup:
    """An opened backup whose header has been read and checked; its sections stream once."""
    header: dict
    minor: int
    sections: Iterator[Section]
    arrays_required: bool      # a JSON document has every array, if empty; JSON Lines has no line for those
    parser: Parser | None = None

    @property
    def stats(self) -> dict[str, int]:
        return self.header["stats"]

    def close(self) -> None:
        """Let the reader's worker process go, if one was started (it also goes once the sections are read)."""
        if self.parser is not None:
            self.parser.close()


@dataclass
class Report:
    """What an import or validation did, per table, keyed as the file's stats are."""
    records: dict[str, int] = field(default_factory=dict)     # in the file
    inserted: dict[str, int] = field(default_factory=dict)    # new rows in the database
    updated: dict[str, int] = field(default_factory=dict)     # rows given the file's values (--on-conflict replace)
    renumbered: dict[str, int] = field(default_factory=dict)  # of those inserted, given another id or rowid

    @property
    def skipped(self) -> dict[str, int]:
        """Records whose fact the database holds already and kept as it was."""
        return {k: n - self.inserted.get(k, 0) - self.updated.get(k, 0) for k, n in self.records.items()}


def open_backup(stream: IO[bytes], fmt: str | None = None, ignore_checksum: bool = False) -> Backup:
    """Read and check the header; nothing after it is read yet. The format, unless given, is told from the
    bytes (`stream` must then be able to peek). The checksum is checked when the sections have been read to
    their end (a file of version 1.2 on must have one), unless `ignore_checksum`."""
    parser = Parser(work)
    with _located(lambda: "the header"):
        if not fmt:
            fmt, stream = sniffed_format(stream)
        summing = Summing(stream, fmt, ignore_checksum)
        header, sections = reader(fmt, parser)(io.BufferedReader(summing, 1 << 16), summing.end)
    minor = check_header(header)
    summing.required = minor >= CHECKSUM_SINCE
    parser.minor = minor
    return Backup(header, minor, _closing(sections, parser), arrays_required=fmt == "json", parser=parser)


def _closing(sections: Iterator[Section], parser: Parser) -> Iterator[Section]:
    """The sections; the parser's worker let go once they are read, or given up."""
    try:
        yield from sections
    finally:
        parser.close()


@contextmanager
def opened(path: Path, fmt: str | None = None, ignore_checksum: bool = False) -> Iterator[Backup]:
    """The backup at `path`, its header read and checked, whatever it is compressed with."""
    with open(path, "rb") as raw:
        backup = open_backup(decompressed_reader(raw), fmt, ignore_checksum)
        try:
            yield backup
        finally:
            backup.close()


def check_header(header: dict) -> int:
    """The minor version of a header we can read, or BadBackup saying why not."""
    if "version" not in header:
        raise BadBackup("not a memory backup: no version in the header")
    version = header["version"]
    if type(version) is not str:
        raise BadBackup(f"version must be a string, got {shown(version)}")
    match = re.fullmatch(r"([0-9]{1,9})\.([0-9]{1,9})", version)
    if not match:
        raise BadBackup(f"version must look like \"1.0\", got {shown(version)}")
    major, minor = int(match[1]), int(match[2])
    if major > FORMAT_MAJOR:
        raise BadBackup(f"file version {version} is newer than this memory reads ({FORMAT_MAJOR}.x)")
    if major < FORMAT_MAJOR:
        raise BadBackup(f"file version {version} is older than this memory reads ({FORMAT_MAJOR}.x)")
    if "exportedAt" in header and type(header["exportedAt"]) is not str:
        raise BadBackup(f"exportedAt must be a string, got {shown(header['exportedAt'])}")
    stats = header.get("stats")
    if not isinstance(stats, dict):
        raise BadBackup(f"stats must be an object, got {shown(stats)}")
    for key, count in stats.items():
        if key not in BY_KEY:
            raise BadBackup(f"stats: unknown table {shown(key)}")
        if type(count) is not int or not 0 <= count <= INT64[1]:
            raise BadBackup(f"stats.{key} must be a count, got {shown(count)}")
    return minor


def checked_sections(backup: Backup, progress: Progress) -> Iterator[tuple[Table, Iterator[list[Record]]]]:
    """Each table's records in batches, checked and counted against stats; then that every array the version
    requires was there."""
    seen: set[str] = set()
    for key, records in backup.sections:
        table = BY_KEY.get(key)
        if table is None:
            raise BadBackup(f"unknown array {shown(key)}")
        if key in seen:
            raise BadBackup(f"{key} appears twice")
        seen.add(key)
        if key not in backup.stats:
            raise BadBackup(f"stats has no count for {key}")
        yield table, _checked(table, backup.minor, backup.stats[key], records, progress)
    for table in TABLES:
        if table.key not in seen and table.since <= backup.minor and backup.arrays_required:
            raise BadBackup(f"no {table.key} array")
        if table.key not in seen and backup.stats.get(table.key, 0):
            raise BadBackup(f"stats says {backup.stats[table.key]} {table.key} but the file has no {table.key} array")


def _checked(table: Table, minor: int, expected: int, pieces: Iterable[list], progress: Progress) -> Iterator[list[Record]]:
    """Batches of checked records. The first record past the count stats gives is checked, then refused: a
    bad record is named before a count that is wrong. A fault in the bytes is placed at the record it is in:
    a reader hands on the records before it first."""
    check = checker(table.key, minor)
    count = 0
    with corrupt_as_bad_backup(lambda: f"{table.key}[{count}]"):
        for batch in pieces:
            if count + len(batch) > expected:
                batch = batch[: expected - count + 1]
            if type(batch) is list:        # not checked already by the reader's worker (records.Checked)
                batch = check(batch, count)
            count += len(batch)
            if count > expected:
                raise BadBackup(f"{table.key}: more records than stats says ({expected})")
            progress(len(batch))
            yield batch
    if count != expected:
        raise BadBackup(f"{table.key}: the file holds {count} records but stats says {expected}")


def validate(backup: Backup, progress: Progress = lambda n: None) -> Report:
    """Stream every record through the import's checks, touching no database."""
    if backup.parser is not None:
        backup.parser.keep = False         # a worker sends back how many records passed, not the records
    report = Report()
    with _located(_position(report)):
        for table, records in checked_sections(backup, progress):
            report.records[table.key] = 0
            for batch in records:
                report.records[table.key] += len(batch)
    return _with_empty_tables(report, backup)


def load(conn: sqlite3.Connection, backup: Backup, *, clear: bool = False, on_conflict: str = "skip",
         create: bool = False, dry_run: bool = False, progress: Progress = lambda n: None,
         phase: Phase = lambda text: None) -> Report:
    """Insert the backup in ONE transaction: any fault, Ctrl-C included, leaves the database as it was. Into a
    database that has rows, a merge: records are matched to rows by natural keys (see merge.py). A dry run
    does all of it, then rolls back."""
    report = Report()
    conn.execute(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    conn.execute("PRAGMA temp_store = FILE")       # a merge's staging and id maps stay out of memory

    def changed() -> bool:      # the database holds what it did not (a merge's staging in TEMP tables is not that)
        return create or clear or any(report.inserted.values()) or any(report.updated.values())
    # In rollback-journal mode, writing pages out (each spill of the cache, the COMMIT) needs the exclusive lock,
    # which another process's read holds off: taken at the start, it costs one busy timeout and a clean
    # refusal, not one per spill (found: minutes). In WAL mode readers never stand in the way.
    mode = "IMMEDIATE" if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal" else "EXCLUSIVE"
    with transaction(conn, mode, commit=not dry_run, changed=changed), _located(_position(report), conn):
        if create:
            create_schema(conn)
        conn.execute(SUMMARY_ON_INSERT)
        conn.execute(SUMMARY_CLEARED)
        bulk = clear or not conn.execute("SELECT 1 FROM messages_meta LIMIT 1").fetchone()
        utf8 = conn.execute("PRAGMA encoding").fetchone()[0] == "UTF-8"   # (CAST reads bytes in the database's)
        # Into empty tables: indexes built once at the end, the search index beside the load (search_index.py).
        search = SideIndex(conn, BY_KEY["messages"], backup.minor) if bulk else None
        derived = derived_rebuilt(conn, phase, search.written) if search else nullcontext()
        with search or nullcontext(), derived:
            if clear:
                with database_faults(conn, "emptying the database (--clear)", NOTHING_IMPORTED):
                    _clear(conn)
            before = counts(conn)
            # Into an empty database every id and rowid is kept, and nothing can collide but the file with
            # itself: that is a bad file.
            merge = Merge(conn, backup.minor, on_conflict) if any(before.values()) else None
            for table, records in checked_sections(backup, progress):
                report.records[table.key] = 0
                sql = functools.partial(insert_sql, table, backup.minor, into=merge.stage(table) if merge else None)
                texts = texts_of(table.columns_in(backup.minor))       # what a batch of long rows is sized by
                for batch in row_batches(table, backup.minor, records, texts):
                    if not utf8 and type(batch) is Checked and batch.encoded:
                        batch = Checked(map(_decoded, batch))   # bound as str, which SQLite stores in its encoding
                    _insert(conn, table, sql, batch, report.records[table.key])
                    report.records[table.key] += len(batch)
                    if search and not merge and table.name == TABLE:     # a merge stages rows: rowids come later
                        search.add(batch)
                    if merge:
                        merge.merge_staged(table)
                if merge:
                    merge.ended(table)
            if merge:
                merge.finish()
                report.updated, report.renumbered = merge.updated, merge.renumbered
        phase("Checking foreign keys")
        with database_faults(conn, "checking foreign keys", NOTHING_IMPORTED):
            _check_foreign_keys(conn)
        after = counts(conn)
        report.inserted = {k: after[k] - before[k] for k in report.records}
        if not merge:
            _check_counts(report.records, report.inserted)
        conn.execute("DROP TRIGGER temp.memory_import_summary")
        conn.execute("DROP TRIGGER temp.memory_import_summary_cleared")
        phase("Rolling back (--dry-run)" if dry_run else "Committing")
    return _with_empty_tables(report, backup)


def _with_empty_tables(report: Report, backup: Backup) -> Report:
    """Tables the stats count but the file has no records of (JSON Lines writes no line for them)."""
    for key in backup.stats:
        for counted in (report.records, report.inserted, report.updated, report.renumbered):
            counted.setdefault(key, 0)
    return report


def insert_sql(table: Table, minor: int, casts: Iterable[bool] = (), into: str | None = None) -> str:
    """INSERT for one row of the table's columns, into the table or `into` (a merge's staging table); where
    `casts` says so, the value is bytes to store as TEXT."""
    columns = [c.name for c in table.columns_in(minor)]
    quoted = ", ".join(f'"{c}"' for c in columns)
    casts = list(casts) or [False] * len(columns)
    values = ", ".join("CAST(? AS TEXT)" if cast else "?" for cast in casts)
    into = into or f'"{table.name}"'
    return f"INSERT INTO {into} ({quoted}) VALUES ({values})"


def _insert(conn: sqlite3.Connection, table: Table, sql: Callable[..., str], batch: list[tuple], start: int) -> None:
    """executemany one batch. When the database rejects a row, insert them one by one to find which and say
    so; when a row holds TEXT that is not UTF-8 (RawText refuses to be bound), to CAST its bytes. A Checked
    batch's long texts are UTF-8 bytes, CAST too."""
    encoded = batch.encoded if type(batch) is Checked and batch else ()
    conn.execute("SAVEPOINT batch")
    try:
        conn.executemany(sql(casts=[i in encoded for i in range(len(batch[0]))]) if encoded else sql(), batch)
    except (sqlite3.IntegrityError, NeedsCast) as exc:
        conn.execute("ROLLBACK TO batch")
        for offset, row in enumerate(batch):
            casts = [type(value) is RawText or i in encoded for i, value in enumerate(row)]
            try:
                if any(casts):
                    conn.execute(sql(casts=casts), [bytes(v) if cast and v is not None else v
                                                    for v, cast in zip(row, casts)])
                else:
                    conn.execute(sql(), row)
            except sqlite3.IntegrityError as error:
                raise DatabaseProblem(f"{table.key}[{start + offset}]: {rejected(error)}") from error
        if isinstance(exc, sqlite3.IntegrityError):
            raise        # the batch failed but no row alone did: not something to paper over
    conn.execute("RELEASE batch")


def _decoded(row: tuple) -> tuple:
    return tuple(v.decode() if type(v) is bytes else v for v in row)


def _clear(conn: sqlite3.Connection) -> None:
    """Empty every table, children first, in the import's transaction. messages_fts is rebuilt after the load."""
    conn.execute("DELETE FROM sessions_fts")
    for table in reversed(TABLES):
        conn.execute(f'DELETE FROM "{table.name}"')
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table.name,))


def _check_counts(records: dict[str, int], inserted: dict[str, int]) -> None:
    """Into empty tables every record must have become a row: checked before COMMIT."""
    for key, count in records.items():
        if inserted[key] != count:
            raise DatabaseProblem(f"{key}: {inserted[key]} rows after the import but the file holds {count}; "
                                  "nothing was imported")


def _check_foreign_keys(conn: sqlite3.Connection) -> None:
    problem = conn.execute("PRAGMA foreign_key_check").fetchone()
    if problem:
        child, rowid, parent, _ = problem
        raise DatabaseProblem(f"{child} row {rowid} points at a missing row of {parent}; nothing was imported")


def _position(report: Report) -> Callable[[], str]:
    """Where reading is, between arrays: record-level places are named by `checked`."""
    return lambda: f"after {list(report.records)[-1]}" if report.records else "the header"


@contextmanager
def _located(where: Callable[[], str], conn: sqlite3.Connection | None = None) -> Iterator[None]:
    faults = database_faults(conn, where, NOTHING_IMPORTED) if conn else nullcontext()
    with corrupt_as_bad_backup(where), faults:
        yield
