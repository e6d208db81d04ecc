"""Opening the memory database the way memory-nexus does, creating it, counting it, and its full-text indexes."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import sqlite3
from contextlib import closing, contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

from . import portable
from .errors import DatabaseProblem
from .output import DATABASE_SUFFIXES, remove_leftovers, temp_beside
from .tables import TABLES, Table

COMMITTED = "the changes were committed before it"     # portable.DONE once a COMMIT wrote to the user's database
_UNSEEN: set[int] = set()       # id() of each connection to a new database not yet linked where the user asked

DEFAULT_PATH = Path("~/.memory-nexus/memory.db")
BUSY_TIMEOUT_MS = 5000
IMPORT_CACHE_KIB = 8 * 1024    # measured at N=100: see BENCHMARKS.md; 16 MiB took RSS to 72 MB
# The triggers that keep messages_fts in step row by row; a load into empty tables drops them and
# rebuilds the index once instead, inside the same transaction (see derived_rebuilt).
MESSAGE_TRIGGERS = ("messages_fts_insert", "messages_fts_delete", "messages_fts_update")
SQLITE_HEADER = b"SQLite format 3\0"     # what every SQLite database file starts with
# memory-nexus indexes a summary only on UPDATE OF summary; this mirrors it for the rows an import inserts,
# so a restored database finds the summaries the source found.
SUMMARY_ON_INSERT = """
CREATE TEMP TRIGGER IF NOT EXISTS memory_import_summary AFTER INSERT ON main.sessions
WHEN new.summary IS NOT NULL AND new.summary != ''
BEGIN
    INSERT INTO sessions_fts(session_id, summary) VALUES (new.id, new.summary);
END"""
# memory-nexus's own trigger leaves a summary in sessions_fts when an update clears it (to NULL or ''); a merge
# with --on-conflict replace can, so this drops it, as a restore of the merged database would not have it.
SUMMARY_CLEARED = """
CREATE TEMP TRIGGER IF NOT EXISTS memory_import_summary_cleared AFTER UPDATE OF summary ON main.sessions
WHEN new.summary IS NULL OR new.summary = ''
BEGIN
    DELETE FROM sessions_fts WHERE session_id = old.id;
END"""


def _as_it_is(value: object) -> object:
    return value


# The sqlite3 module binds an int, float, str or bytearray as it is; any other value (None, bytes) it first
# offers to an adapter, and where none is registered it looks for one with getattr calls that fail: an
# AttributeError made, its message formatted, and dropped, for each such value bound (measured with
# scripts/instructions.py: 8% of an import's own process). Registered, these two are found at once and give
# the value back as it is. (For every connection of this process; a program that registers its own keeps it.)
for _type in (type(None), bytes):
    sqlite3.adapters.setdefault((_type, sqlite3.PrepareProtocol), _as_it_is)


# SQLite's own text for each result code told apart below (sqlite3_errstr), which its message starts with.
_CODE_TEXT = {"SQLITE_BUSY": "database is locked", "SQLITE_FULL": "database or disk is full"}


def result_code(exc: sqlite3.Error) -> str:
    """SQLite's primary result code of an error ('SQLITE_BUSY'), '' if not one told apart here: by the name
    Python 3.11's sqlite3 gives it, else by SQLite's text (found: 3.10's errors carry no name)."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is not None:
        return next((code for code in _CODE_TEXT if name == code or name.startswith(code + "_")), "")
    return next((code for code, text in _CODE_TEXT.items() if str(exc).startswith(text)), "")


def _configure(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_for_reading(path: Path) -> sqlite3.Connection:
    """A read-only connection; never creates a file."""
    if not path.is_file():
        raise DatabaseProblem(f"no database at {path}")
    _roll_back_hot_journal(path)
    try:
        conn = connect_read_only(str(path.resolve()))
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseProblem(f"cannot read {path}: {exc}") from exc
    require_memory_tables(conn, path)
    return conn


def connect_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to the database at `path` (an absolute name), with this tool's settings."""
    uri = f"file:{quote(os.fsencode(path))}?mode=ro"      # the bytes of the name, not UTF-8 text
    return _configure(sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False))


def require_memory_tables(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that lacks one of the tables memory-nexus keeps, naming the first missing."""
    missing = next((t.name for t in TABLES if not has_table(conn, t.name)), None)
    if missing:
        raise DatabaseProblem(f"{path} is not a memory database: no table {missing}")


def _roll_back_hot_journal(path: Path) -> None:
    """A writer killed mid-transaction in rollback-journal mode leaves a hot journal, which only a connection
    that may write can roll back: a read-only one fails with "attempt to write a readonly database". Where a
    -journal with content is there, open the database once read-write and read it, so SQLite rolls the
    journal back as any writer would (a journal of a writer still running is not hot: SQLite leaves it)."""
    journal = Path(f"{path}-journal")
    if not journal.is_file() or journal.stat().st_size == 0:
        return
    uri = f"file:{quote(os.fsencode(path.resolve()))}?mode=rw"
    try:
        with closing(_configure(sqlite3.connect(uri, uri=True, isolation_level=None))) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        # Locked: its writer is still at work (the journal is not hot), or a reader holds a killed writer's.
        if result_code(exc) == "SQLITE_BUSY":
            raise DatabaseProblem(f"cannot read {path}: another process holds a lock on it ({exc}; waited "
                                  f"{BUSY_TIMEOUT_MS / 1000:g} s); try again once it has let go") from exc
        raise DatabaseProblem(f"cannot read {path}: {journal} holds a transaction a killed writer left, and "
                              f"rolling it back failed ({exc}); run `sqlite3 {path} 'PRAGMA quick_check'` as a "
                              "user who may write the database and its folder, then try again") from exc


def open_for_writing(path: Path) -> sqlite3.Connection:
    """A connection to an existing database, for an import."""
    try:
        conn = _configure(sqlite3.connect(str(path), isolation_level=None))
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseProblem(f"cannot open {path}: {exc}") from exc
    return conn


def scratch_database() -> sqlite3.Connection:
    """A database in memory, opened as any other: what a dry run into a path that does not exist imports into."""
    return _configure(sqlite3.connect(":memory:", isolation_level=None))


@contextmanager
def new_database(path: Path) -> Iterator[sqlite3.Connection]:
    """A database made at a hidden name beside `path` and linked there only once the block has ended well,
    so a failed or killed import leaves nothing at `path` (the next run removes what a killed one left).
    It loads with a rollback journal, which for a new file holds next to nothing where WAL would write every
    page twice, and becomes WAL, as memory-nexus keeps it, once in place. A symbolic link at `path` that
    leads nowhere yet stays: the database is made where it points, as SQLite would make it."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    temp = temp_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path.parent, path.name)
        remove_database(temp)
        conn = _configure(sqlite3.connect(str(temp), isolation_level=None))
    except FileExistsError as exc:       # a part of the path is a file, not a folder
        raise DatabaseProblem(f"cannot create a database at {path}: {exc.filename} is not a folder") from exc
    except (OSError, sqlite3.OperationalError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DatabaseProblem(f"cannot create a database at {path}: {reason}") from exc
    try:
        os.chmod(temp, 0o600)
        _UNSEEN.add(id(conn))
        yield conn
        conn.close()
        with portable.signals_held():      # once linked in, it is finished before a signal is let through
            try:
                os.link(temp, path)          # link, not rename: never over a database that appeared meanwhile
            except FileExistsError as exc:
                raise DatabaseProblem(f"cannot create a database at {path}: something is there now (a database "
                                      "made meanwhile, or a link that leads nowhere); nothing was imported") from exc
            portable.DONE.set(COMMITTED)
            with closing(sqlite3.connect(str(path))) as placed:
                placed.execute("PRAGMA journal_mode = WAL")
            portable.fsync_directory(path.parent)      # the new name is durable, not only the file
    finally:
        _UNSEEN.discard(id(conn))
        conn.close()
        remove_database(temp)


def database_file(conn: sqlite3.Connection) -> str:
    """The main database's file name ("" for one in memory), as the system names it: read as bytes, since
    sqlite3 cannot decode a name that is not UTF-8 as text."""
    factory, conn.text_factory = conn.text_factory, bytes      # (a SELECT from pragma_database_list would read,
    try:                                                        # which a full disk can fail again)
        name = conn.execute("PRAGMA database_list").fetchone()[2]
    finally:
        conn.text_factory = factory
    return os.fsdecode(name or b"")


def damaged(conn: sqlite3.Connection, what: str) -> DatabaseProblem:
    """The one message for a database found damaged: what was seen, and what to run on it."""
    try:
        path = shlex.quote(database_file(conn) or ":memory:")
    except sqlite3.Error:       # never a second fault in place of the first
        path = "DB"
    return DatabaseProblem(f"{what}: the database is damaged; check it with sqlite3 {path} 'PRAGMA integrity_check' "
                           f"and save what can be read with sqlite3 {path} .recover")


@contextmanager
def database_faults(conn: sqlite3.Connection, where: str | Callable[[], str], then: str = "") -> Iterator[None]:
    """SQLite's faults as one line that says where, and `then` (what became of the work): damage with what to
    run on it; an OperationalError (I/O, a lock, a missing column) or an IntegrityError (a constraint of a
    table we do not know) as it is. The sqlite3 module raises damage ("database disk image is malformed",
    "file is not a database": SQLITE_CORRUPT, SQLITE_NOTADB) as DatabaseError itself, no subclass. Others
    (a ProgrammingError is our bug) pass."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        place = where() if callable(where) else where
        if type(exc) is sqlite3.DatabaseError:
            raise damaged(conn, f"{place}: {exc}{then}") from exc
        if isinstance(exc, (sqlite3.OperationalError, sqlite3.IntegrityError)):
            raise DatabaseProblem(f"{place}: {exc}{_room(conn, exc)}{then}") from exc
        raise


def _room(conn: sqlite3.Connection, exc: sqlite3.Error) -> str:
    """For a full disk (SQLITE_FULL): the room left on each disk SQLite writes to. Found: an import whose
    temporary files filled a small tmpfs said "database or disk is full" beside a database with gigabytes free."""
    if result_code(exc) != "SQLITE_FULL":
        return ""
    from .report import size
    temp, variable = portable.sqlite_temp_directory()
    try:       # never a second fault in place of the first
        folder = os.path.dirname(database_file(conn)) or "."
        beside, there = shutil.disk_usage(folder).free, shutil.disk_usage(temp).free
    except (OSError, sqlite3.Error):
        return ""
    return (f" (free: {size(beside)} beside the database, {size(there)} in SQLite's temporary directory {temp}"
            f"{f', set by {variable}' if variable else ''})")


def quick_check(conn: sqlite3.Connection) -> None:
    """PRAGMA quick_check (every page and b-tree; not the indexes against the rows), in the caller's transaction."""
    with database_faults(conn, "PRAGMA quick_check"):
        first = conn.execute("PRAGMA quick_check").fetchone()[0]
    if first != "ok":      # "*** in database main ***\nOn tree page 6 cell 1: Rowid 54 out of order": one line
        found = "; ".join(line for line in first.splitlines() if not line.startswith("***"))
        raise damaged(conn, f"PRAGMA quick_check: {found}")


def remove_database(path: Path) -> None:
    for suffix in DATABASE_SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    # COLLATE NOCASE: SQLite's own names are case-insensitive (TOPICS is the table topics)
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                        (name,)).fetchone() is not None


def create_schema(conn: sqlite3.Connection) -> None:
    """The memory-nexus 0.1.2 schema, in the caller's transaction."""
    sql = resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
    for statement in _statements(sql):
        conn.execute(statement)


@functools.lru_cache(maxsize=None)
def schema_objects() -> dict[str, tuple[str, str]]:
    """{name: (type, SQL)} of every table, index and trigger of the memory-nexus schema, as SQLite stores them."""
    with closing(sqlite3.connect(":memory:")) as conn:
        create_schema(conn)
        return {name: (kind, sql) for kind, name, sql in
                conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")}


def _statements(sql: str) -> Iterator[str]:
    buffer = ""
    for line in sql.splitlines(keepends=True):
        if not buffer and line.startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""


def counts(conn: sqlite3.Connection, tables: tuple[Table, ...] = TABLES) -> dict[str, int]:
    """Rows per table, keyed as the file's stats are."""
    with database_faults(conn, "counting rows"):
        return {t.key: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0] for t in tables}


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE", commit: bool = True,
                changed: Callable[[], bool] | None = None) -> Iterator[sqlite3.Connection]:
    """One transaction: COMMIT when the block ends (ROLLBACK where `commit` is false: a dry run), ROLLBACK on
    any exception, Ctrl-C included. A COMMIT that changed the user's database is noted in portable.DONE:
    `changed()` says whether it did, where given (the connection's count of changes also counts rows written to
    TEMP tables)."""
    try:
        conn.execute(f"BEGIN {mode}")
    except sqlite3.OperationalError as exc:
        raise DatabaseProblem(f"cannot start a transaction: {exc}") from exc
    changes = conn.total_changes
    try:
        yield conn
    except BaseException:
        _rolled_back(conn)
        raise
    if not commit:
        conn.rollback()
        return
    try:
        with portable.signals_held():     # a signal during COMMIT must find DONE as it is
            conn.execute("COMMIT")
            if (changed() if changed else conn.total_changes != changes) and id(conn) not in _UNSEEN:
                portable.DONE.set(COMMITTED)
    except sqlite3.OperationalError as exc:
        _rolled_back(conn)
        raise DatabaseProblem(f"cannot commit: {exc}{_room(conn, exc)}; nothing was changed") from exc


def _rolled_back(conn: sqlite3.Connection) -> None:
    """ROLLBACK, and the database file as it was. Found: a write failing on a full disk in rollback-journal mode
    ends the transaction only in name; the file stays grown and half written beside a hot -journal, till a
    connection next reads it (closing does not), so a copy of the file alone was corrupt. Reading plays the
    journal back now; where that keeps failing, the next connection to open the database does."""
    conn.rollback()
    for _ in range(3):      # the first read after a full disk gives its error again; the next plays back (seen)
        with suppress(sqlite3.Error):
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return


@contextmanager
def derived_rebuilt(conn: sqlite3.Connection, phase: Callable[[str], None] = lambda text: None,
                    index_written: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Within a transaction: drop what is derived from the rows (the messages_fts triggers and the tables'
    non-unique indexes), and on the way out build each once and put it back from its own SQL: far cheaper
    than upkeep row by row. messages_fts is rebuilt unless `index_written()` put one in (search_index.py).
    For loads into empty tables. No finally: on an exception the transaction's ROLLBACK brings them back as
    they were."""
    placeholders = ",".join("?" * len(MESSAGE_TRIGGERS))
    triggers = conn.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({placeholders})",
                            MESSAGE_TRIGGERS).fetchall()
    indexes = [row for t in TABLES for row in conn.execute(
        "SELECT l.name, m.sql FROM pragma_index_list(?) AS l JOIN sqlite_master AS m ON m.name = l.name "
        "WHERE l.origin = 'c' AND NOT l.\"unique\"", (t.name,))]
    for name, _ in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    yield
    phase("Rebuilding indexes")
    for _, sql in indexes:
        conn.execute(sql)
    phase("Rebuilding the search index")
    if not index_written():
        # With FTS5's automerge off while it builds, a fifth less time (crisis merges still bound the segments);
        # the setting is put back as it was (no row: the default), so memory-nexus's later writes merge as ever.
        before = conn.execute("SELECT v FROM messages_fts_config WHERE k = 'automerge'").fetchone()
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', 0)")
        conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
        if before is None:
            conn.execute("DELETE FROM messages_fts_config WHERE k = 'automerge'")
        else:
            conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', ?)", before)
    for _, sql in triggers:
        conn.execute(sql)


def database_summary(conn: sqlite3.Connection, path: Path) -> dict:
    """Rows per table, bytes on disk (with the WAL), and the newest session's start time."""
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    # Shown, not restored: TEXT that is not UTF-8 is shown with U+FFFD; typed oddities are left out.
    with database_faults(conn, "the newest session"):
        newest = conn.execute("SELECT CAST(max(s.start_time) AS BLOB) FROM sessions AS s "
                              "WHERE typeof(s.start_time) = 'text'").fetchone()[0]
    newest = newest.decode("utf-8", "replace") if newest is not None else None
    return {"path": str(path), "bytes": size, "counts": counts(conn), "newestSession": newest}
