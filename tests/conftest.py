"""Shared test helpers: fixture files as constants, a CLI runner, databases made and compared by content."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from platforms import PLATFORMS, take_away

from pipeline.cli import cli
from pipeline.database import create_schema
from pipeline.tables import TABLES

# The commands the tests start run with stdout and stderr buffered, as most users' do. Found: this machine sets
# PYTHONUNBUFFERED=1, under which every test passed while `memory stats > /dev/full` exited 120 for everyone
# else (Python's final flush failing again). Tests of the unbuffered case set it themselves.
os.environ.pop("PYTHONUNBUFFERED", None)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "fixtures" / "sample-1.0.json"
TYPED_SAMPLE = ROOT / "fixtures" / "sample-typed-1.1.json"   # sample-1.0 with odd values (ODD_VALUES)
COMPAT = ROOT.parent / "shared" / "compat"
COMPAT_DB = COMPAT / "memory-nexus.db"
COMPAT_EXPORT = COMPAT / "memory-nexus-export.json"

# The sample's counts per table as a report shows them (a version 1.0 file has no topics array).
SAMPLE_TABLE = """\
  sessions                      2
  messages                      5
  tool uses                     2
  entities                      3
  links                         2
  session entities              2
  entity links                  1
  extraction states             2
  topics                        0
"""

# A test that reads ../shared/compat: skipped in a fresh clone without it, a failure in CI (see `unavailable`).
needs_compat = pytest.mark.usefixtures("compat_files")


def _script(name: str):
    """A module of scripts/, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer_script = _script("peer")


def unavailable(reason: str) -> None:
    """What a test does when something it needs from ../shared is missing: in CI (CI set) it fails, so a
    compatibility check can never quietly stop running; elsewhere, as in a fresh clone, it is skipped."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def peer():
    """The real memory-nexus 0.1.2 (scripts/peer.py), set up once, or found set up in its cache folder."""
    try:
        return peer_script.setup()
    except peer_script.PeerUnavailable as exc:
        reason = f"memory-nexus 0.1.2 cannot be set up: {exc}"
    unavailable(reason)


def memory(*args: str, input: bytes | str | None = None):
    """Run the `memory` command in-process; stdout and stderr apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def snapshot(path: Path) -> dict:
    """Everything a user could see in a database: every row of every table with the type SQLite stored,
    the AUTOINCREMENT counters, and what both full-text indexes find."""
    conn = sqlite3.connect(path)
    conn.text_factory = bytes
    state = {}
    for table in TABLES:
        columns = ", ".join(f'"{c.name}", typeof("{c.name}")' for c in table.columns)
        state[table.name] = conn.execute(f'SELECT rowid, {columns} FROM "{table.name}" ORDER BY rowid').fetchall()
    state["sqlite_sequence"] = sorted(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    conn.text_factory = lambda data: data.decode("utf-8", "replace")     # TEXT need not be UTF-8
    words = set()
    for (content,) in conn.execute("SELECT content FROM messages_meta UNION ALL SELECT summary FROM sessions "
                                   "WHERE typeof(summary) = 'text'"):
        if isinstance(content, str):                                     # not a BLOB
            words.update(re.findall(r"[A-Za-z]{4,}", content)[:20])
    for word in sorted(words):
        state[f"messages_fts:{word}"] = conn.execute(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid", (f'"{word}"',)).fetchall()
        state[f"sessions_fts:{word}"] = conn.execute(
            "SELECT session_id FROM sessions_fts WHERE sessions_fts MATCH ? ORDER BY session_id",
            (f'"{word}"',)).fetchall()
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    conn.close()
    return state


def values(state: dict, table_name: str, column: str) -> list[tuple]:
    """(value, SQLite type) of one column, row by row, out of a snapshot."""
    table = next(t for t in TABLES if t.name == table_name)
    at = 1 + 2 * [c.name for c in table.columns].index(column)
    return [row[at:at + 2] for row in state[table_name]]


def without(state: dict, table_name: str, columns: tuple[str, ...]) -> list[tuple]:
    """A table's rows out of a snapshot, leaving out the rowid and some columns."""
    table = next(t for t in TABLES if t.name == table_name)
    keep = [1 + 2 * i + j for i, c in enumerate(table.columns) if c.name not in columns for j in (0, 1)]
    return [tuple(row[i] for i in keep) for row in state[table_name]]


def clock_free(path: Path) -> dict:
    """A snapshot without the times a 1.0 file (the sample, memory-nexus's export) leaves to the database's
    clock, datetime('now'): two imports of one such file a second apart differ only there."""
    state = snapshot(path)
    for table, columns in (("sessions", ("created_at", "updated_at")), ("entities", ("created_at",)),
                           ("topics", ("created_at",))):
        state[table] = without(state, table, columns)
    return state


def make_database(path: Path, sessions: int = 3, messages_per_session: int = 4, name: str = "session") -> Path:
    """A small memory database made with plain SQL, as memory-nexus would leave it. Two made with different
    names share no session or message, but their message rowids are the same numbers, as two machines' are."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    create_schema(conn)
    for s in range(sessions):
        sid = f"{name}-{s}"
        conn.execute("INSERT INTO sessions (id, project_path_encoded, project_path_decoded, project_name, "
                     "start_time, message_count) VALUES (?, '-p', '/p', 'p', '2026-01-01T00:00:00Z', ?)",
                     (sid, messages_per_session))
        conn.execute("UPDATE sessions SET summary = ? WHERE id = ?", (f"summary number {s} about backups", sid))
        conn.executemany(
            "INSERT INTO messages_meta (id, session_id, role, content, timestamp) VALUES (?, ?, ?, ?, ?)",
            [(f"{sid}-m{m}", sid, "user" if m % 2 else "assistant",
              f"message {m} of session {s}: restore the streaming backup " + "lorem ipsum " * (m % 7),
              f"2026-01-01T00:{m % 60:02d}:00Z") for m in range(messages_per_session)])
        conn.execute("INSERT INTO tool_uses VALUES (?, ?, 'Bash', '{}', '2026-01-01T00:00:00Z', 'success', NULL)",
                     (f"{sid}-t", sid))
    conn.execute("INSERT INTO entities (type, name, confidence) VALUES ('concept', 'backups', 0.5)")
    conn.execute("INSERT INTO topics (name) VALUES ('cron')")
    conn.execute("INSERT INTO links (source_type, source_id, target_type, target_id, relationship) "
                 "VALUES ('topic', '1', 'session', ?, 'related_to')", (f"{name}-0",))
    conn.execute("INSERT INTO session_entities VALUES (?, 1, 2)", (f"{name}-0",))
    conn.execute("COMMIT")
    conn.close()
    return path


@pytest.fixture
def sample_db(tmp_path: Path) -> Path:
    """The hand-made sample file restored into a fresh database."""
    db = tmp_path / "sample.db"
    result = memory("import", "--db", db, SAMPLE)
    assert result.exit_code == 0, result.output
    return db


@pytest.fixture
def compat_files() -> None:
    if not COMPAT_DB.exists() or not COMPAT_EXPORT.exists():
        unavailable("../shared/compat is not beside the project")



@pytest.fixture(params=list(PLATFORMS))
def platform(request, monkeypatch) -> str:
    """The test runs once natively and once with each POSIX-only facility taken away, as on macOS or Windows
    (tests/platforms.py)."""
    take_away(request.param, monkeypatch)
    return request.param

@pytest.fixture(params=["fast", "parallel", "strict"])
def parse_path(request, monkeypatch):
    """Run a test through the fast reader (files as memory writes them), through it with a worker process
    parsing its runs of lines from the first (pipeline.parallel), runs made small so that a file holds many,
    and another building the search index from the first message (pipeline.search_index), and through the
    strict readers alone (pipeline.canonical.STRICT_ENV): every check is seen to hold on each. Exports are
    made on one core, but for "parallel": on two (see export_path)."""
    from pipeline import canonical, parallel, search_index
    monkeypatch.setenv(canonical.STRICT_ENV, "1" if request.param == "strict" else "0")
    monkeypatch.setenv(parallel.ENV, "1" if request.param == "parallel" else "0")
    monkeypatch.setenv(search_index.ENV, "1" if request.param == "parallel" else "0")
    if request.param == "parallel":
        monkeypatch.setattr(canonical, "RUN", 4096)
    exporting_on(request.param == "parallel", monkeypatch)
    return request.param


@pytest.fixture(params=["one core", "two cores"])
def export_path(request, monkeypatch):
    """Run a test with exports made on one core, and on two (pipeline.ranges): a worker for every table of two
    rows or more, ranges of 5 rows, batches of 3, so that a table is many ranges and a range many batches."""
    exporting_on(request.param == "two cores", monkeypatch)
    return request.param


def exporting_on(two_cores: bool, monkeypatch) -> None:
    from pipeline import export, ranges
    monkeypatch.setenv(ranges.ENV, "1" if two_cores else "0")
    if two_cores:
        monkeypatch.setattr(ranges, "RANGE", 5)
        monkeypatch.setattr(export, "ROWS", 3)


def as_written(doc: dict, fmt: str) -> bytes:
    """A document laid out exactly as memory writes files (one record a line, orjson's canonical form), but
    without a checksum, so edits to it are read through (its version, 1.0 or 1.1, needs none)."""
    arrays = [k for k, v in doc.items() if isinstance(v, list)]
    header = {k: v for k, v in doc.items() if k not in arrays}
    if fmt == "jsonl":
        lines = [header] + [{"table": k, "record": r} for k in arrays for r in doc[k]] + [{"end": True}]
        return b"".join(orjson.dumps(line) + b"\n" for line in lines)
    out = orjson.dumps(header)[:-1]
    for key in arrays:
        items = b",\n".join(map(orjson.dumps, doc[key]))
        out += b",\n" + orjson.dumps(key) + (b":[\n" + items + b"\n]" if items else b":[]")
    return out + b"}\n"


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A database of 3,000 messages ("db"), and its export in each layout ("json", "jsonl"; about 700 KB, so
    many runs of 4 KiB and many batches)."""
    folder = tmp_path_factory.mktemp("exports")
    db = make_database(folder / "source.db", sessions=10, messages_per_session=300)
    out = {"db": db}
    for fmt in ("json", "jsonl"):
        out[fmt] = folder / f"backup.{fmt}"
        assert memory("export", "-q", "--db", db, out[fmt]).exit_code == 0
    return out


@pytest.fixture(scope="session")
def big(tmp_path_factory) -> Path:
    """An export of 60,000 messages: an import of it runs long enough to be signalled midway."""
    folder = tmp_path_factory.mktemp("big")
    db = make_database(folder / "big.db", sessions=20, messages_per_session=3000)
    path = folder / "big.json"
    assert memory("export", "-q", "--db", db, path).exit_code == 0
    return path


def group(leader: int) -> list[int]:
    """The processes of the process group `leader` leads (a command started with start_new_session=True):
    the command and its workers, forked or spawned, even once the command is gone and they are orphans."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader and fields[0] != b"Z":      # state, ppid, pgrp; a zombie has ended
            found.append(int(pid))
    return found


def gone(leader: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while group(leader) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not group(leader)


def signalled(proc, how: str, code: int, target: Path) -> None:
    """Signal a running `memory import` as a user would (Ctrl-C reaches its whole process group): it ends with
    `code`, saying nothing was changed (but for kill -9), and leaves no process of its own nor a new database."""
    if how == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(getattr(signal, how))
    assert proc.wait(timeout=60) == code
    if how != "SIGKILL":
        assert proc.stderr.read().decode().endswith("nothing was changed\n")
    assert gone(proc.pid)
    assert not target.exists()
