"""The search index built beside the load (pipeline/search_index.py): what it puts into the database is, to
the last position of the last word, what a rebuild makes; wherever it cannot be sure of that, or its worker
fails, the index is rebuilt as before; and it ends with the import."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (COMPAT_EXPORT, ROOT, SAMPLE, TYPED_SAMPLE, as_written, clock_free, group, make_database, memory,
                      needs_compat, signalled, snapshot)

from pipeline import parallel, records, search_index
from pipeline.database import create_schema


@pytest.fixture
def outcomes(monkeypatch) -> list[bool]:
    """What each import's SideIndex.written returned: True where the index built beside was put in."""
    seen: list[bool] = []
    real = search_index.SideIndex.written
    monkeypatch.setattr(search_index.SideIndex, "written", lambda self: seen.append(real(self)) or seen[-1])
    monkeypatch.setattr(records, "BATCH", 250)      # many batches sent
    monkeypatch.delenv(parallel.ENV, raising=False)
    return seen


def index_of(path: Path) -> tuple:
    """Everything messages_fts holds, as a reader of it sees it: every (word, message, column, position), each
    message's length in words, the averages record, the settings; and FTS5's own check of it against the
    messages, which fails on any difference."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE VIRTUAL TABLE temp.words USING fts5vocab(main, messages_fts, instance)")
    state = (conn.execute("SELECT term, doc, col, offset FROM temp.words ORDER BY 1, 2, 3, 4").fetchall(),
             conn.execute("SELECT id, sz FROM messages_fts_docsize ORDER BY id").fetchall(),
             conn.execute("SELECT block FROM messages_fts_data WHERE id = 1").fetchall(),
             conn.execute("SELECT k, v FROM messages_fts_config ORDER BY k").fetchall())
    conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
    conn.close()
    return state


def imported(monkeypatch, mode: str, target: Path, *args) -> Path:
    monkeypatch.setenv(search_index.ENV, mode)
    result = memory("import", "-q", "--db", target, *args)
    assert result.exit_code == 0, result.stderr
    return target


def both_ways(tmp_path, monkeypatch, outcomes, *args, prepare=lambda path: None, seen=snapshot) -> tuple[Path, Path]:
    """`memory import ARGS` into two databases prepared alike: with the index built beside (mode 1), and rebuilt
    here (mode 0). Their indexes and contents must be the same. One is prepared and copied: prepared twice, rows
    that take the schema's DEFAULT CURRENT_TIMESTAMP differed when a second ended between the two (seen once in
    CI, on Python 3.10)."""
    side, here = tmp_path / "side.db", tmp_path / "here.db"
    prepare(side)
    if side.exists():
        shutil.copyfile(side, here)
    imported(monkeypatch, "1", side, *args)
    imported(monkeypatch, "0", here, *args)
    assert index_of(side) == index_of(here)
    assert seen(side) == seen(here)
    return side, here


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_the_index_built_beside_is_the_one_a_rebuild_makes(tmp_path, monkeypatch, outcomes, exports, fmt):
    side, _ = both_ways(tmp_path, monkeypatch, outcomes, exports[fmt])
    assert outcomes == [True, False]
    assert snapshot(side) == snapshot(exports["db"])
    assert len(index_of(side)[1]) == 3000


def test_a_1_0_file_without_rowids_gets_the_rowids_sqlite_gave(tmp_path, monkeypatch, outcomes):
    monkeypatch.setattr(records, "BATCH", 2)        # rowids worked out batch by batch from the last one
    side, _ = both_ways(tmp_path, monkeypatch, outcomes, SAMPLE, seen=clock_free)
    assert outcomes == [True, False]
    assert [row[0] for row in index_of(side)[1]] == [1, 2, 3, 4, 5]


@needs_compat
def test_memory_nexus_s_own_file_gets_the_index_a_rebuild_makes(tmp_path, monkeypatch, outcomes):
    both_ways(tmp_path, monkeypatch, outcomes, COMPAT_EXPORT, seen=clock_free)     # a 1.0 file, as SAMPLE
    assert outcomes == [True, False]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_text_that_is_not_plain_text_leaves_the_index_to_a_rebuild(tmp_path, monkeypatch, outcomes, fmt):
    """A BLOB or TEXT that is not UTF-8 as a message's text, deep in the file: what FTS5 makes of it on a rebuild
    is not sure to be what it makes of it inserted there, so the worker is stopped and the index rebuilt."""
    doc = json.loads(TYPED_SAMPLE.read_bytes())
    message = doc["messages"][0]
    doc["messages"] = [dict(message, id=f"m{i}", rowid=i + 1, content=f"message {i} about backups")
                       for i in range(2000)]
    doc["messages"][1234]["content"] = {"$textBytes": "bm90IHV0Zi04IFx4ZmY="}
    doc["messages"][1800]["content"] = {"$blob": "AAEC"}
    doc["stats"]["messages"] = 2000
    (tmp_path / f"typed.{fmt}").write_bytes(as_written(doc, fmt))
    both_ways(tmp_path, monkeypatch, outcomes, tmp_path / f"typed.{fmt}")
    assert outcomes == [False, False]


@pytest.mark.parametrize("at", [0, 1500])
def test_a_text_too_long_to_be_worth_sending_leaves_the_index_to_a_rebuild(tmp_path, monkeypatch, outcomes, at):
    """A text longer than LONGEST would be held again pickled, in the worker and in the index it sends back,
    with nothing to overlap: measured with one 100 MB message, 900 MB against 703 MB and 4.5 s against 3.2 s.
    First batch or deep in the file, the worker is not started or stopped, and the index rebuilt."""
    monkeypatch.setattr(search_index, "LONGEST", 1000)
    starts = []
    real_start = search_index.started
    monkeypatch.setattr(search_index, "started", lambda *args: starts.append(1) or real_start(*args))
    doc = json.loads(TYPED_SAMPLE.read_bytes())
    message = doc["messages"][0]
    doc["messages"] = [dict(message, id=f"m{i}", rowid=i + 1, content=f"message {i} about backups")
                       for i in range(2000)]
    doc["messages"][at]["content"] = "a long one " * 91         # 1,001 characters
    doc["stats"]["messages"] = 2000
    (tmp_path / "long.json").write_bytes(as_written(doc, "json"))
    both_ways(tmp_path, monkeypatch, outcomes, tmp_path / "long.json")
    assert outcomes == [False, False]
    assert starts == ([] if at == 0 else [1])


def test_replacing_with_clear_keeps_the_database_s_own_merge_setting(tmp_path, monkeypatch, outcomes, exports):
    def prepare(path):
        make_database(path, sessions=2, messages_per_session=50, name="old")
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', 8)")
        conn.close()
    side, _ = both_ways(tmp_path, monkeypatch, outcomes, "--clear", exports["json"], prepare=prepare)
    assert outcomes == [True, False]
    assert ("automerge", 8) in index_of(side)[3]
    assert snapshot(side) == snapshot(exports["db"])


def test_a_database_with_sessions_and_no_messages_is_merged_into_and_its_index_rebuilt(tmp_path, monkeypatch,
                                                                                         outcomes, exports):
    """Empty of messages, so loaded in bulk, but not empty: a merge, whose rows go through a staging table and
    get their rowids later. The rows sent to a worker would be the staged ones: none is sent."""
    def prepare(path):
        make_database(path, sessions=2, messages_per_session=0, name="other")
    side, _ = both_ways(tmp_path, monkeypatch, outcomes, "--yes", exports["json"], prepare=prepare)
    assert outcomes == [False, False]
    assert len(index_of(side)[1]) == 3000


@pytest.mark.parametrize("drift", [
    "tokenize='unicode61'",                   # another tokenizer: the same SQL would not make the same index
    "prefix='2'",                             # more to build
])
def test_an_index_not_as_memory_nexus_makes_it_is_rebuilt_here(tmp_path, monkeypatch, outcomes, exports, drift):
    def prepare(path):
        with sqlite3.connect(path) as conn:
            create_schema(conn)
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages_fts'").fetchone()[0]
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'messages_fts'",
                         (sql.replace("tokenize='porter unicode61'", drift),))
        conn.close()
    both_ways(tmp_path, monkeypatch, outcomes, "--clear", exports["jsonl"], prepare=prepare)
    assert outcomes == [False, False]


@pytest.fixture(scope="module")
def numeric_text(tmp_path_factory) -> Path:
    """An export whose message 2,500 (in a late batch) reads "1e5": TEXT, but a number to a NUMERIC column."""
    folder = tmp_path_factory.mktemp("numeric")
    db = make_database(folder / "source.db", sessions=10, messages_per_session=300)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE messages_meta SET content = '1e5' WHERE rowid = 2500")
    conn.close()
    assert memory("export", "-q", "--db", db, folder / "backup.jsonl").exit_code == 0
    return folder / "backup.jsonl"


def _numeric_content(conn):
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages_meta'").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'messages_meta'",
                 (sql.replace("content TEXT NOT NULL", "content NUMERIC NOT NULL"),))


@pytest.mark.parametrize("drift", [
    _numeric_content,
    lambda conn: conn.execute("CREATE TRIGGER redact AFTER INSERT ON messages_meta BEGIN "
                              "UPDATE messages_meta SET content = 'redacted' WHERE rowid = new.rowid; END"),
    lambda conn: conn.execute("CREATE TRIGGER redact AFTER INSERT ON tool_uses BEGIN "
                              "UPDATE messages_meta SET content = 'redacted' WHERE session_id = new.session_id; END"),
], ids=["a NUMERIC column", "a trigger on messages", "a trigger on tool uses"])
def test_a_database_that_stores_other_texts_than_it_is_given_gets_a_rebuild(tmp_path, monkeypatch, outcomes,
                                                                             numeric_text, drift):
    """What the worker indexes is what the file holds; what a rebuild indexes is what the table stores. Where
    they may differ (found by review: both gave "database disk image is malformed" to FTS5's check)."""
    def prepare(path):
        with sqlite3.connect(path) as conn:
            create_schema(conn)
            drift(conn)
        conn.close()
    both_ways(tmp_path, monkeypatch, outcomes, "--clear", numeric_text, prepare=prepare)
    assert outcomes == [False, False]


def test_a_setting_that_changes_how_the_index_is_built_leaves_it_to_a_rebuild(tmp_path, monkeypatch, outcomes,
                                                                                exports):
    def prepare(path):
        make_database(path, sessions=1, messages_per_session=1)
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('pgsz', 1000)")
        conn.close()
    both_ways(tmp_path, monkeypatch, outcomes, "--clear", exports["json"], prepare=prepare)
    assert outcomes == [False, False]


def _exits_after_the_first_batch(jobs, answers, sql, cache_kib):
    jobs.recv()
    os._exit(1)


def _fails_at_the_end(jobs, answers, sql, cache_kib):
    while jobs.recv() is not None:
        pass
    answers.send(("failed", "RuntimeError('a fault of ours')"))


def _dies_while_answering(jobs, answers, sql, cache_kib):
    """Some of a real index's rows, then nothing: what was put in must not stay."""
    search_index._build(jobs, _Cut(answers), sql, cache_kib)


class _Cut:
    def __init__(self, answers):
        self.answers, self.sent = answers, 0

    def send(self, message):
        if self.sent == 2:
            os._exit(1)
        self.sent += 1
        self.answers.send(message)


def _cannot_start(*args):
    raise OSError("no processes here")


@pytest.mark.parametrize("fault", [_exits_after_the_first_batch, _fails_at_the_end, _dies_while_answering,
                                   _cannot_start])
def test_a_worker_that_fails_leaves_the_index_to_a_rebuild(tmp_path, monkeypatch, outcomes, exports, fault):
    if fault is _cannot_start:
        monkeypatch.setattr(search_index, "started", fault)
    else:
        real = search_index.started
        monkeypatch.setattr(search_index, "started", lambda serve, args, name, method: real(fault, args, name, method))
    target = imported(monkeypatch, "1", tmp_path / "x.db", exports["jsonl"])
    assert outcomes == [False]
    assert snapshot(target) == snapshot(exports["db"])
    assert len(index_of(target)[1]) == 3000


def test_a_dry_run_changes_nothing(tmp_path, monkeypatch, outcomes, exports):
    target = make_database(tmp_path / "x.db", sessions=2, messages_per_session=40, name="old")
    before = snapshot(target), index_of(target)
    imported(monkeypatch, "1", target, "--clear", "--dry-run", exports["json"])
    assert outcomes == [True]
    assert (snapshot(target), index_of(target)) == before


# ---- the worker ends with the import -------------------------------------------------------------------------

def test_a_queue_lock_left_held_by_a_signal_does_not_hang_the_import(tmp_path, monkeypatch, exports):
    """A signal's exception raised in the queue's put() just after it took the queue's lock leaves the lock held
    (the with block that would let it go was not entered). Stopping then waited for ever to put the end on that
    queue: an import that never ended after SIGTERM, seen once in a full run. Held here by hand, then raised."""
    monkeypatch.setenv(parallel.ENV, "0")
    monkeypatch.setenv(search_index.ENV, "1")
    add = search_index.SideIndex.add
    seen = []

    def add_then_hold(self, batch):
        add(self, batch)
        if self.sender is not None and not seen:
            seen.append(self)
            self.queue.mutex.acquire()
            raise RuntimeError("as from a signal handler")
    monkeypatch.setattr(search_index.SideIndex, "add", add_then_hold)
    raised = []

    def run():
        try:
            memory("import", "--db", tmp_path / "new.db", exports["json"])
        except RuntimeError as exc:
            raised.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and len(raised) == 1
    assert seen[0].process is None
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("how, code", [("SIGTERM", 143), ("SIGINT", 130), ("SIGKILL", -9)])
def test_the_worker_ends_with_the_import_and_leaves_no_file(tmp_path, big, how, code):
    """Its scratch database is unlinked as SQLite opens it: even a kill -9 of both leaves no file behind."""
    target, scratch = tmp_path / "target.db", tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, parallel.ENV: "0", search_index.ENV: "1", "SQLITE_TMPDIR": str(scratch)}
    # A small page cache, so that the scratch database is soon written to its file (else held in memory).
    program = ("import sys; import pipeline.search_index as s; s.SIDE_CACHE_KIB = 64; "
               "from pipeline.cli import main; sys.argv[0] = 'memory'; main()")
    proc = subprocess.Popen([sys.executable, "-c", program, "import", "--db", str(target), str(big)], cwd=ROOT,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline, scratch_files = time.monotonic() + 30, []
    while not scratch_files and time.monotonic() < deadline:     # the worker has started, and has rows
        for pid in set(group(proc.pid)) - {proc.pid}:          # (the import's own temp files are there too)
            try:
                held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                continue
            scratch_files += [path for path in held if path.startswith(str(scratch))]   # (others: the tracker)
        time.sleep(0.01)
    assert scratch_files and all(path.endswith(" (deleted)") for path in scratch_files), proc.poll()
    signalled(proc, how, code, target)
    assert list(scratch.iterdir()) == []
