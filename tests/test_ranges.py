"""Export on two cores (pipeline.ranges): the same file as one core writes, from one snapshot, whatever becomes
of the worker."""

import os
import re
import signal
import sqlite3

import pytest
from conftest import exporting_on, make_database, memory

from pipeline import export, ranges


def body(path) -> bytes:
    """A file's bytes but for when it was written (and the checksum, which covers that)."""
    data = path.read_bytes()
    return re.sub(rb'"checksum":"[^"]*"', b"", re.sub(rb'"exportedAt":"[^"]*"', b"", data))


@pytest.fixture
def spreads(monkeypatch) -> list:
    """Every ranges.Spread made, to see what its worker did."""
    made = []
    init = ranges.Spread.__init__

    def recorded(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)
    monkeypatch.setattr(ranges.Spread, "__init__", recorded)
    return made


@pytest.fixture
def source(tmp_path):
    db = make_database(tmp_path / "source.db", sessions=6, messages_per_session=40)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    # Values a one-core export writes as typed values or raw text: they must come out the same from the worker.
    conn.execute("UPDATE messages_meta SET content = CAST(x'ff00fe' AS TEXT) WHERE rowid = 7")
    conn.execute("UPDATE messages_meta SET content = x'0102' WHERE rowid = 50")
    conn.execute("UPDATE messages_meta SET timestamp = 12 WHERE rowid = 90")
    conn.execute("UPDATE messages_meta SET timestamp = 1.5 WHERE rowid = 91")
    conn.close()
    return db


def one_core(db, tmp_path, fmt, monkeypatch) -> bytes:
    with monkeypatch.context() as m:
        exporting_on(False, m)
        out = tmp_path / f"one-core.{fmt}"
        result = memory("export", "-q", "--db", db, out)
        assert result.exit_code == 0, result.output
        return body(out)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_two_cores_write_the_file_one_core_writes(source, tmp_path, fmt, monkeypatch, spreads):
    expected = one_core(source, tmp_path, fmt, monkeypatch)
    exporting_on(True, monkeypatch)
    out = tmp_path / f"two-cores.{fmt}"
    result = memory("export", "-q", "--db", source, out)
    assert (result.exit_code, result.output) == (0, "")
    assert body(out) == expected
    assert spreads[-1].answered > 10        # of 49 ranges of messages and 2 of tool uses: not all done here
    assert memory("validate", "-q", out).exit_code == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_a_commit_before_the_worker_reads_lets_it_go(source, tmp_path, monkeypatch, spreads):
    """Another connection commits after this export's snapshot and before the worker's: the worker would read
    another database, so it is let go and the file is this export's snapshot, done here."""
    expected = one_core(source, tmp_path, "json", monkeypatch)
    exporting_on(True, monkeypatch)
    check = export.check_for_export         # the export's first read: its snapshot is taken

    def check_then_commit(*args):
        left_out = check(*args)
        other = sqlite3.connect(source, isolation_level=None)
        other.execute("INSERT INTO messages_meta (id, session_id, role, content, timestamp) "
                      "VALUES ('late', 'session-0', 'user', 'late', '2026-01-02T00:00:00Z')")
        other.close()
        return left_out
    monkeypatch.setattr(export, "check_for_export", check_then_commit)
    out = tmp_path / "two-cores.json"
    result = memory("export", "-q", "--db", source, out)
    assert (result.exit_code, result.output) == (0, "")
    assert body(out) == expected            # without the late message
    assert spreads[-1].answered == 0 and spreads[-1].process is None


@pytest.mark.parametrize("sent, after, fmt", [(signal.SIGKILL, 12, "jsonl"), (signal.SIGSTOP, 6, "json")])
def test_a_worker_killed_or_stuck_midway_leaves_its_ranges_to_this_process(source, tmp_path, monkeypatch, spreads,
                                                                           sent, after, fmt):
    """The worker dies, or stops answering (SIGSTOP: given up after ranges.WAIT seconds; found by review, the
    export waited for ever): the rest of its ranges are done here, and the file is one core's."""
    expected = one_core(source, tmp_path, fmt, monkeypatch)
    exporting_on(True, monkeypatch)
    monkeypatch.setattr(ranges, "WAIT", 1)
    receive = ranges.Spread._receive
    received = []

    def receive_then_signal(self, job):
        receive(self, job)
        received.append(1)
        if len(received) == after and self.process is not None:
            os.kill(self.process.pid, sent)
    monkeypatch.setattr(ranges.Spread, "_receive", receive_then_signal)
    out = tmp_path / f"two-cores.{fmt}"
    result = memory("export", "-q", "--db", source, out)
    assert (result.exit_code, result.output) == (0, "")
    assert body(out) == expected
    assert 0 < spreads[-1].answered and spreads[-1].process is None


def test_no_worker_without_a_second_core(source, tmp_path, monkeypatch, spreads):
    expected = one_core(source, tmp_path, "json", monkeypatch)
    exporting_on(True, monkeypatch)
    monkeypatch.setattr(ranges, "cores", lambda: 1)
    out = tmp_path / "two-cores.json"
    assert memory("export", "-q", "--db", source, out).exit_code == 0
    assert body(out) == expected
    assert spreads[-1].answered == 0 and spreads[-1].watch is None


def test_only_big_tables_are_spread(monkeypatch):
    monkeypatch.setenv(ranges.ENV, "")
    conn = sqlite3.connect(":memory:")
    assert not ranges.Spread(conn, None).wanted(10 ** 6)        # no file: no second connection to it
    conn.close()


def test_ranges_cover_every_rowid_once():
    from pipeline.export import cut
    assert cut(None, None, 0) == []
    assert cut(1, 1, 1) == [(1, 1)]
    assert cut(1, 1000, 1000) == [(1, 500), (501, 1000)]        # 2 ranges of RANGE rows or fewer
    parts = cut(-5, 2 ** 63 - 1, 3000)
    assert parts[0][0] == -5 and parts[-1][1] == 2 ** 63 - 1 and len(parts) == 6
    assert all(a[1] + 1 == b[0] for a, b in zip(parts, parts[1:]))


def test_a_database_renamed_over_its_name_is_not_read_by_the_worker(tmp_path, monkeypatch, spreads):
    """The worker opens the database by its name: another file renamed over it after this export opened it
    would give a file half from each (found by review, exit 0). The worker is let go, the file is one core's."""
    db = make_database(tmp_path / "source.db", sessions=6, messages_per_session=40)
    other = make_database(tmp_path / "other.db", sessions=6, messages_per_session=40)
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE messages_meta SET content = 'from the other file'")
    conn.close()
    expected = one_core(db, tmp_path, "json", monkeypatch)
    exporting_on(True, monkeypatch)
    start = ranges.Spread._start

    def rename_then_start(self):
        os.replace(other, db)
        start(self)
    monkeypatch.setattr(ranges.Spread, "_start", rename_then_start)
    out = tmp_path / "two-cores.json"
    result = memory("export", "-q", "--db", db, out)
    assert (result.exit_code, result.output) == (0, "")
    assert body(out) == expected
    assert spreads[-1].answered == 0 and spreads[-1].process is None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, 9
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, i + 1
    raise AssertionError


def _same_length_varint(value: int, length: int) -> bytes:
    groups = [(value >> (7 * i)) & 0x7F for i in reversed(range(length))]
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


def test_a_wrong_key_on_an_interior_page_is_refused_on_two_cores(tmp_path, monkeypatch):
    """A key of the table's interior page lowered (found by review): one scan reads every row in order, and one
    core writes the file (exit 0); the ranges, which find their first row by those keys, miss rows, and two
    cores refuse the database as damaged, saying so. (Never a file with rows missing.)"""
    db = make_database(tmp_path / "source.db", sessions=4, messages_per_session=200)
    with sqlite3.connect(db) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages_meta'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * size)
        page = bytearray(f.read(size))
        start = 100 if root == 1 else 0
        assert page[start] == 5                              # an interior page of a table
        cells = int.from_bytes(page[start + 3:start + 5], "big")
        pointers = [int.from_bytes(page[start + 12 + 2 * i:start + 14 + 2 * i], "big") for i in range(cells)]
        keys = [(p, *_varint(page, p + 4)) for p in pointers]
        (_, before, _), (at, key, length) = keys[cells // 2 - 1], keys[cells // 2]
        page[at + 4:at + 4 + length] = _same_length_varint(before + (key - before) // 4, length)
        f.seek((root - 1) * size)
        f.write(page)
    exporting_on(False, monkeypatch)
    assert memory("export", "-q", "--db", db, tmp_path / "one-core.json").exit_code == 0
    exporting_on(True, monkeypatch)
    result = memory("export", "-q", "--db", db, tmp_path / "two-cores.json")
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: messages: \d+ rows read but the table counts 800, read by ranges of rowids, though "
                        r"one scan reads them all in order: the database is damaged; check it with sqlite3 .*\n",
                        result.output)
    assert not (tmp_path / "two-cores.json").exists()
