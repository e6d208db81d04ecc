"""Other processes and a full disk: a live writer during export, a held lock during import, no space left."""

import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pytest
from conftest import ROOT, SAMPLE, make_database, memory, snapshot

pytestmark = pytest.mark.usefixtures("export_path")   # every export on one core and on two

WRITER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    conn.execute("PRAGMA foreign_keys = ON")
    worst, n, stop = 0.0, 0, time.monotonic() + float(sys.argv[2])
    while time.monotonic() < stop:
        start = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        sid = f"live-{n}"
        conn.execute("INSERT INTO sessions (id, project_path_encoded, project_path_decoded, project_name, "
                     "start_time) VALUES (?, '-l', '/l', 'l', '2026-01-01T00:00:00Z')", (sid,))
        conn.executemany("INSERT INTO messages_meta (id, session_id, role, content, timestamp) "
                         "VALUES (?, ?, 'user', 'live message', '2026-01-01T00:00:00Z')",
                         [(f"{sid}-{m}", sid) for m in range(20)])
        conn.execute("COMMIT")
        worst, n = max(worst, time.monotonic() - start), n + 1
    print(n, worst)
""")


def test_export_under_a_live_writer_is_one_snapshot_and_does_not_block_it(tmp_path):
    db = make_database(tmp_path / "live.db", sessions=20, messages_per_session=1000)
    sqlite3.connect(db).execute("PRAGMA journal_mode = WAL").fetchone()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "4"], stdout=subprocess.PIPE, text=True)
    exports = 0
    while writer.poll() is None:
        out = tmp_path / f"snap-{exports}.json"
        assert memory("export", "--db", db, "-q", out).exit_code == 0
        assert memory("validate", "-q", out).exit_code == 0          # every count equals stats
        doc = json.loads(out.read_text())
        sessions = {s["id"] for s in doc["sessions"]}
        assert {m["sessionId"] for m in doc["messages"]} <= sessions
        assert {t["sessionId"] for t in doc["toolUses"]} <= sessions
        live = [s for s in sessions if s.startswith("live-")]
        assert len([m for m in doc["messages"] if m["sessionId"].startswith("live-")]) == 20 * len(live)
        exports += 1
    written, worst_commit = writer.communicate()[0].split()
    assert exports >= 2 and int(written) > 10
    assert float(worst_commit) < 1.0, f"the writer waited {worst_commit} s for a commit"


def test_import_waits_for_a_held_write_lock_then_fails_cleanly(tmp_path, sample_db):
    before = snapshot(sample_db)
    holder = sqlite3.connect(sample_db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = memory("import", "--db", sample_db, "--clear", SAMPLE)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (result.exit_code, result.stderr) == (1, "Error: cannot start a transaction: database is locked\n")
    assert snapshot(sample_db) == before


def limited(limit: int):
    """For a child process: files may not grow past `limit` bytes, and writing past it fails with EFBIG
    rather than killing the process, as a full disk fails a write."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("limit", [200_000, 700_000])
def test_export_onto_a_full_disk_keeps_the_old_backup_and_leaves_nothing(tmp_path, limit):
    """-X dev: Python says what a finalizer's flush raises (3.13 always does). Found by review: a disk filling at
    the checksum's last flush left a buffer over the closed file, whose flush at collection failed again."""
    db = make_database(tmp_path / "db.db", sessions=10, messages_per_session=500)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "b.json").write_bytes(b"the last good backup")
    run = subprocess.run([sys.executable, "-X", "dev", "-m", "pipeline", "export", "--db", str(db),
                          str(folder / "b.json")], cwd=ROOT, capture_output=True, text=True, preexec_fn=limited(limit))
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == f"Error: {folder / 'b.json'}: File too large\n"
    assert (folder / "b.json").read_bytes() == b"the last good backup"
    assert [p.name for p in folder.iterdir()] == ["b.json"]


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_export_to_stdout_onto_a_full_disk_fails(tmp_path, unbuffered):
    """Found by review: with PYTHONUNBUFFERED set (cron jobs, containers, this machine), stdout is a raw file that
    may take part of a write and say so by its count; the count was not read, so `memory export - > f.json` on a
    full disk left a cut backup, printed its summary and exited 0."""
    db = make_database(tmp_path / "db.db", sessions=10, messages_per_session=500)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | (
        {"PYTHONUNBUFFERED": unbuffered} if unbuffered else {})
    whole = len(memory("export", "-q", "--db", db, "-").stdout_bytes)
    assert whole > 1 << 20      # more than one write (of the 1 MiB buffer): the last is the one cut
    with open(tmp_path / "b.json", "wb") as out:
        run = subprocess.run([sys.executable, "-m", "pipeline", "export", "--db", str(db), "-"], cwd=ROOT, env=env,
                             stdout=out, stderr=subprocess.PIPE, text=True, preexec_fn=limited(whole - 1000))
    assert (run.returncode, run.stderr) == (1, "Error: stdout: File too large\n")


@pytest.mark.parametrize("args", [["validate", "--json", str(SAMPLE)], ["validate", str(SAMPLE)], ["--help"]],
                         ids=["validate-json", "validate", "help"])
@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_report_to_stdout_onto_a_full_disk_fails(tmp_path, args, unbuffered):
    """Found by review, after the export's own writes were fixed: a report goes through click.echo, whose text
    layer, over a raw stdout (PYTHONUNBUFFERED), does not read how much a write took: `stats --json > s.json` on a
    full disk wrote half of it and exited 0. (Commands that open no database: the limit stands for a full disk
    for every file, SQLite's -shm too.)"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | (
        {"PYTHONUNBUFFERED": unbuffered} if unbuffered else {})
    whole = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True)
    assert (whole.returncode, whole.stderr) == (0, b"") and len(whole.stdout) > 200
    with open(tmp_path / "report", "wb") as out:
        run = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, stdout=out,
                             stderr=subprocess.PIPE, text=True, preexec_fn=limited(len(whole.stdout) // 2))
    assert (run.returncode, run.stderr) == (1, "Error: stdout: File too large\n")


def test_import_onto_a_full_disk_rolls_back(tmp_path, sample_db):
    big = make_database(tmp_path / "big.db", sessions=10, messages_per_session=2000)
    memory("export", "--db", big, tmp_path / "big.json")
    before = snapshot(sample_db)
    limit = sample_db.stat().st_size + 300_000
    run = subprocess.run([sys.executable, "-m", "pipeline", "import", "--db", str(sample_db), "--clear",
                          str(tmp_path / "big.json")], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=limited(limit))
    assert run.returncode == 1, run.stderr
    assert run.stderr == "Error: cannot commit: disk I/O error; nothing was changed\n"
    assert snapshot(sample_db) == before


def test_import_onto_a_full_disk_in_rollback_journal_mode_leaves_the_file_as_it_was(tmp_path, sample_db):
    """Found by review: SQLite rolls a failed write's transaction back only in name; the database file stayed
    grown and half written, with a hot -journal that the next connection would roll back. Said "nothing was
    imported", it was so only for SQLite: a copy of the file alone (cp, rsync, a disk backup) was corrupt."""
    big = make_database(tmp_path / "big.db", sessions=10, messages_per_session=4000)    # more than the import's page cache holds
    memory("export", "--db", big, tmp_path / "big.json")
    with sqlite3.connect(sample_db) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    conn.close()
    before = sample_db.read_bytes()
    run = subprocess.run([sys.executable, "-m", "pipeline", "import", "--db", str(sample_db), "--clear",
                          str(tmp_path / "big.json")], cwd=ROOT, capture_output=True, text=True,
                         preexec_fn=limited(len(before) + 300_000))
    assert (run.returncode, run.stdout, run.stderr) == (1, "", "Error: after topics: disk I/O error; nothing was "
                                                               "imported\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.db", "big.json", "sample.db"]
    assert sample_db.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, where the tests may mount one (as root): a disk that really fills. ENOSPC is SQLite's
    SQLITE_FULL, which it handles otherwise than RLIMIT_FSIZE's EFBIG (an I/O error)."""
    where = tmp_path / "small"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("how", ["--yes", "--clear"], ids=["merge", "clear"])
def test_an_import_filling_a_real_disk_in_rollback_journal_mode_leaves_the_file_as_it_was(tmp_path, small_disk,
                                                                                          how):
    """Found by review, after the read that plays a hot journal back: on a disk really full (not RLIMIT_FSIZE), that
    read gave the disk's error again, and a merge left the file grown beside a hot -journal."""
    big = make_database(tmp_path / "big.db", sessions=10, messages_per_session=4000)   # beyond the page cache
    memory("export", "--db", big, tmp_path / "big.json")
    db = make_database(small_disk / "t.db", sessions=4, messages_per_session=200)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 500_000))
    before = db.read_bytes()
    run = subprocess.run([sys.executable, "-m", "pipeline", "import", how, "--db", str(db), str(tmp_path / "big.json")],
                         cwd=ROOT, capture_output=True, text=True, env=os.environ | {"SQLITE_TMPDIR": str(tmp_path)})
    assert run.returncode == 1 and re.fullmatch(r"Error: after \w+: database or disk is full \(free: .*\); nothing "
                                                r"was imported\n", run.stderr), run.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "t.db"]
    assert db.read_bytes() == before


READER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sessions").fetchone()
    print("reading", flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("args", [["-y"], ["--clear"]], ids=["merge", "clear"])
def test_import_into_a_rollback_journal_database_another_process_reads_fails_after_the_busy_timeout(
        tmp_path, sample_db, big, args):
    """Found: with a reader holding a read transaction on a database in rollback-journal mode, an import waited
    the busy timeout at each spill of its page cache (each needs the exclusive lock) and ran on for minutes, a
    signal heeded only between waits. The exclusive lock is now taken first: the busy timeout, then one line."""
    sqlite3.connect(sample_db).execute("PRAGMA journal_mode = DELETE").fetchone()
    before = snapshot(sample_db)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(sample_db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "reading\n"
        start = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "pipeline", "import", "--db", str(sample_db), *args, str(big)],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        took = time.monotonic() - start
    finally:
        reader.communicate("")
    assert (run.returncode, run.stdout, run.stderr) == (1, "", "Error: cannot start a transaction: database is locked\n")
    assert took < 20, f"{took:.0f} s"
    assert snapshot(sample_db) == before


def test_a_full_disk_says_how_much_room_is_left_beside_the_database_and_in_sqlite_s_temporary_directory(
        tmp_path, sample_db, monkeypatch):
    """Found: an import of 440 MB with SQLite's temporary directory on a 5 MB tmpfs (SQLITE_TMPDIR) said
    "database or disk is full" while the database's own disk had gigabytes free. SQLite's own page limit stands
    in for the full disk here."""
    from pipeline import database
    (tmp_path / "scratch").mkdir()
    monkeypatch.setenv("SQLITE_TMPDIR", str(tmp_path / "scratch"))
    configure = database._configure

    def limited_to_30_pages(conn):
        configure(conn).execute("PRAGMA max_page_count = 30")
        return conn
    monkeypatch.setattr(database, "_configure", limited_to_30_pages)
    memory("export", "--db", make_database(tmp_path / "big.db", sessions=5, messages_per_session=200), "-q",
           tmp_path / "b.json")
    before = snapshot(sample_db)
    result = memory("import", "--db", sample_db, "--clear", tmp_path / "b.json")
    assert result.exit_code == 1
    assert re.fullmatch(
        r"Error: .*: database or disk is full \(free: [0-9.,]+ [kMG]?B beside the database, [0-9.,]+ [kMG]?B in "
        rf"SQLite's temporary directory {re.escape(str(tmp_path / 'scratch'))}, set by SQLITE_TMPDIR\); nothing was "
        r"imported\n", result.stderr), result.stderr
    assert snapshot(sample_db) == before


WRITER_MIDWAY = textwrap.dedent("""
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE sessions SET summary = 'being changed'")
    print("writing", flush=True)
    sys.stdin.read()
    conn.execute("ROLLBACK")
""")


@pytest.mark.parametrize("args", [["stats"], ["export", "-q", "OUT"], ["backup", "-q", "DIR"]])
def test_reading_a_rollback_journal_database_a_live_writer_holds_says_so_not_a_killed_writer(tmp_path, sample_db,
                                                                                             args):
    """Found by review: while an import (or any writer) held a rollback-journal database, `stats`, `export` and
    `backup` found its -journal, took it for a killed writer's, and said to run quick_check."""
    sqlite3.connect(sample_db).execute("PRAGMA journal_mode = DELETE").fetchone()
    args = [{"OUT": str(tmp_path / "o.json"), "DIR": str(tmp_path / "bk")}.get(a, a) for a in args]
    (tmp_path / "bk").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER_MIDWAY, str(sample_db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        assert (tmp_path / "sample.db-journal").stat().st_size > 0
        run = subprocess.run([sys.executable, "-m", "pipeline", *args, "--db", str(sample_db)], cwd=ROOT,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    finally:
        writer.communicate("")
    assert (run.returncode, run.stdout, run.stderr) == (1, "", (
        f"Error: cannot read {sample_db}: another process holds a lock on it (database is locked; waited 5 s); "
        "try again once it has let go\n"))
    assert sorted(os.listdir(tmp_path)) == ["bk", "sample.db"]


def test_a_database_locked_by_another_process_is_told_without_python_3_11_s_error_names(tmp_path, sample_db,
                                                                                         monkeypatch):
    """Found running the suite on Python 3.10: its sqlite3 errors carry no sqlite_errorname (3.11 added it), and
    a lock held by another process was told as a killed writer's transaction to roll back, with quick_check."""
    from pipeline import database
    from pipeline.errors import DatabaseProblem
    (tmp_path / "sample.db-journal").write_bytes(b"\0" * 512)

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")     # as Python 3.10 raises SQLITE_BUSY
    monkeypatch.setattr(database.sqlite3, "connect", locked)
    with pytest.raises(DatabaseProblem) as refused:
        database.open_for_reading(sample_db)
    assert str(refused.value) == (f"cannot read {sample_db}: another process holds a lock on it (database is "
                                  "locked; waited 5 s); try again once it has let go")


class _FullAtCommit:
    """A connection whose COMMIT fails as SQLite's does on a full disk (SQLITE_FULL); `named`: the error carries
    its name, as Python 3.11's sqlite3 sets it (3.10's does not)."""

    def __init__(self, conn, named=True):
        self.conn, self.named = conn, named

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def execute(self, sql, *args):
        if sql == "COMMIT":
            error = sqlite3.OperationalError("database or disk is full")
            if self.named:
                error.sqlite_errorname = "SQLITE_FULL"
            raise error
        return self.conn.execute(sql, *args)


@pytest.mark.parametrize("named", [True, False], ids=["python-3.11-error", "python-3.10-error"])
def test_a_full_disk_at_commit_says_how_much_room_is_left_too(tmp_path, sample_db, monkeypatch, named):
    """Found by review: the note was added where rows are written, not where a COMMIT fails. And running the suite
    on Python 3.10, whose sqlite3 errors carry no name: no note at all."""
    from pipeline.database import transaction
    from pipeline.errors import DatabaseProblem
    monkeypatch.setenv("SQLITE_TMPDIR", str(tmp_path))
    conn = sqlite3.connect(sample_db, isolation_level=None)
    with pytest.raises(DatabaseProblem) as refused:
        with transaction(_FullAtCommit(conn, named)):
            conn.execute("DELETE FROM tool_uses")
    assert re.fullmatch(r"cannot commit: database or disk is full \(free: [0-9.,]+ [kMG]?B beside the database, "
                        rf"[0-9.,]+ [kMG]?B in SQLite's temporary directory {re.escape(str(tmp_path))}, set by "
                        r"SQLITE_TMPDIR\); nothing was changed", str(refused.value)), str(refused.value)
    assert conn.execute("SELECT count(*) FROM tool_uses").fetchone() == (2,)
