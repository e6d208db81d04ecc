"""Export then import gives back the same database: every row, every type, both full-text indexes."""

import json
import math
import re
import sqlite3
from contextlib import closing

import pytest
from conftest import (COMPAT_DB, COMPAT_EXPORT, SAMPLE, TYPED_SAMPLE, make_database, memory, needs_compat, snapshot,
                      values, without)

from pipeline import export
from pipeline.database import create_schema
from pipeline.tables import BY_KEY, TABLES

pytestmark = pytest.mark.usefixtures("parse_path")   # every test on the fast and the strict reader

NAMES = ["backup.json", "backup.jsonl", "backup.json.gz", "backup.jsonl.gz", "backup.json.zst"]


@pytest.mark.parametrize("name", NAMES)
def test_export_then_import_restores_every_row_and_search_result(tmp_path, name):
    source = make_database(tmp_path / "source.db")
    assert memory("export", "--db", source, tmp_path / name).exit_code == 0
    result = memory("import", "--db", tmp_path / "restored.db", tmp_path / name)
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path / "restored.db") == snapshot(source)


@pytest.mark.parametrize("merged", [False, True], ids=["empty", "merged"])
def test_import_into_a_utf16_database_keeps_every_text(tmp_path, sample_db, merged):
    """The reader's worker hands long texts on as UTF-8 bytes, which SQLite's CAST would read as UTF-16 here."""
    db = tmp_path / "utf16.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA encoding = 'UTF-16le'")
        create_schema(conn)
    if merged:
        assert memory("import", "--db", db, "-q", SAMPLE).exit_code == 0
    assert memory("export", "--db", sample_db, "-q", tmp_path / "a.json").exit_code == 0
    assert memory("import", "--db", db, "-q", "-y", "--on-conflict", "replace", tmp_path / "a.json").exit_code == 0
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA encoding").fetchone()[0] == "UTF-16le"
    assert snapshot(db) == snapshot(sample_db)


def test_sample_values_survive_two_round_trips_exactly(tmp_path, sample_db):
    """64-bit extremes, tiny floats, NUL, U+2028, astral characters and '' against NULL."""
    memory("export", "--db", sample_db, tmp_path / "a.json")
    memory("import", "--db", tmp_path / "b.db", tmp_path / "a.json")
    assert snapshot(tmp_path / "b.db") == snapshot(sample_db)
    state = snapshot(sample_db)
    content = "Emoji \U0001F680 and astral \U0001D11E, NUL \x00 inside, line separator \u2028 too"
    assert values(state, "messages_meta", "content")[2] == (content.encode(), b"text")
    assert values(state, "messages_meta", "tool_use_ids") == [
        (None, b"null"), (b'["toolu_01"]', b"text"), (None, b"null"), (b'["toolu_02"]', b"text"), (b"", b"text")]
    assert values(state, "extraction_state", "file_size") == [(-2**63, b"integer"), (None, b"null")]
    assert values(state, "sessions", "message_count") == [(3, b"integer"), (2**63 - 1, b"integer")]
    assert values(state, "entities", "confidence") == [
        (0.30000000000000004, b"real"), (5e-324, b"real"), (None, b"null")]


# Values that break naive tools: SQLite lets a column hold another storage class than its own, and TEXT
# need not be UTF-8 (Python's sqlite3 raises when it fetches such TEXT). (SQL, the typed value in the file.)
ODD_VALUES = [
    ("UPDATE messages_meta SET tool_use_ids = x'00ff' WHERE rowid = 2", ("messages", 1, "toolUseIds"),
     {"$blob": "AP8="}),
    ("UPDATE messages_meta SET content = x'' WHERE rowid = 4", ("messages", 3, "content"), {"$blob": ""}),
    ("UPDATE messages_meta SET content = CAST(x'61ff62' AS TEXT) WHERE rowid = 3", ("messages", 2, "content"),
     {"$textBytes": "Yf9i"}),
    ("UPDATE messages_meta SET id = CAST(x'c0af' AS TEXT) WHERE rowid = 5", ("messages", 4, "id"),
     {"$textBytes": "wK8="}),                                         # an overlong '/'
    ("UPDATE sessions SET project_name = CAST(x'eda080' AS TEXT) WHERE rowid = 2", ("sessions", 1, "projectName"),
     {"$textBytes": "7aCA"}),                                         # a UTF-16 surrogate
    ("UPDATE sessions SET summary = x'736f6d65' WHERE rowid = 1", ("sessions", 0, "summary"), {"$blob": "c29tZQ=="}),
    ("UPDATE sessions SET message_count = 9e999 WHERE rowid = 1", ("sessions", 0, "messageCount"),
     {"$real": "Infinity"}),
    ("UPDATE sessions SET message_count = 'many' WHERE rowid = 2", ("sessions", 1, "messageCount"), {"$text": "many"}),
    ("UPDATE session_entities SET frequency = -9e999 WHERE rowid = 1", ("sessionEntities", 0, "frequency"),
     {"$real": "-Infinity"}),
    ("UPDATE session_entities SET frequency = CAST(x'ff' AS TEXT) WHERE rowid = 2", ("sessionEntities", 1, "frequency"),
     {"$textBytes": "/w=="}),
    ("UPDATE extraction_state SET file_size = 1.5 WHERE rowid = 2", ("extractionStates", 1, "fileSize"),
     {"$real": 1.5}),
    ("UPDATE extraction_state SET messages_extracted = x'01' WHERE rowid = 1", ("extractionStates", 0,
     "messagesExtracted"), {"$blob": "AQ=="}),
    ("UPDATE entities SET metadata = x'7b7d' WHERE rowid = 1", ("entities", 0, "metadata"), {"$blob": "e30="}),
]


@pytest.mark.parametrize("name", NAMES)
def test_odd_values_round_trip_byte_for_byte_through_typed_values(tmp_path, sample_db, name):
    """Every odd value at once, so the tables after a non-UTF-8 one are read as usual; then twice over."""
    conn = sqlite3.connect(sample_db, isolation_level=None)
    for sql, _, _ in ODD_VALUES:
        assert conn.execute(sql).rowcount == 1
    conn.close()
    assert memory("export", "--db", sample_db, tmp_path / name).exit_code == 0
    result = memory("import", "--db", tmp_path / "restored.db", tmp_path / name)
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path / "restored.db") == snapshot(sample_db)
    assert memory("export", "--db", tmp_path / "restored.db", tmp_path / ("again-" + name)).exit_code == 0
    assert memory("import", "--db", sample_db, "--clear", tmp_path / ("again-" + name)).exit_code == 0
    assert snapshot(sample_db) == snapshot(tmp_path / "restored.db")
    merged = memory("import", "--db", sample_db, "--yes", "--on-conflict", "replace", tmp_path / name)
    assert merged.exit_code == 0, merged.output
    assert snapshot(sample_db) == snapshot(tmp_path / "restored.db")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_export_writes_the_same_bytes_whatever_its_batches_hold(tmp_path, sample_db, monkeypatch, fmt):
    """Export reads, checks and types a batch of rows at a time (export.ROWS). Batches of one, two and three
    rows put the odd values first, inside and last in a batch, and the TEXT that is not UTF-8 (messages'
    rows 3 and 5, where Python's sqlite3 fails and the rest of the table is read again) in the second or a
    later batch: the file is the one a batch of all the rows gives."""
    conn = sqlite3.connect(sample_db, isolation_level=None)
    for sql, _, _ in ODD_VALUES:
        conn.execute(sql)
    conn.close()
    files = {}
    for rows in (1, 2, 3, 256):
        monkeypatch.setattr(export, "ROWS", rows)
        assert memory("export", "--db", sample_db, tmp_path / f"{rows}.{fmt}").exit_code == 0
        files[rows] = [line for line in unsummed((tmp_path / f"{rows}.{fmt}").read_bytes()).splitlines()
                       if b"exportedAt" not in line]
    assert files[1] == files[2] == files[3] == files[256]
    assert b"".join(files[1]).count(b'{"$') == len(ODD_VALUES)
    # the sample's 19 records (and the end line)
    assert sum(line.startswith(b"{\"") for line in files[1]) == 19 + (fmt == "jsonl")


def test_a_batch_is_typed_as_its_rows_would_be_one_by_one():
    """export.typed looks at a batch a column at a time and goes through it row by row only where a column
    holds something plain JSON would not give back as it is. An infinite REAL can only be in a REAL column
    without its CHECK (a drifted schema), which no database here has: the batches are built by hand."""
    table = BY_KEY["entities"]          # id (the rowid), type, name, metadata, confidence (REAL), created_at
    plain = [(1, "term", "a", None, 0.5, None), ("2", "term", "b", "{}", None, "t")]    # the rowid is not typed
    infinite = [(3, "term", "c", None, 0.25, None), (4, "term", "d", None, math.inf, None)]
    below = [(5, "term", "e", None, -math.inf, None)]
    text = [(6, "term", "f", None, "x", None)]
    assert list(export.typed(table, [plain, infinite, below, text, plain])) == [
        plain,
        [infinite[0], (4, "term", "d", None, {"$real": "Infinity"}, None)],
        [(5, "term", "e", None, {"$real": "-Infinity"}, None)],
        [(6, "term", "f", None, {"$text": "x"}, None)],
        plain]


def test_odd_values_are_written_as_documented_typed_values(tmp_path, sample_db):
    conn = sqlite3.connect(sample_db, isolation_level=None)
    for sql, _, _ in ODD_VALUES:
        conn.execute(sql)
    conn.close()
    memory("export", "--db", sample_db, tmp_path / "b.json")
    doc = json.loads((tmp_path / "b.json").read_bytes())
    for _, (key, index, field), typed in ODD_VALUES:
        assert doc[key][index][field] == typed
    assert sum(json.dumps(doc[key]).count('"$') for key in doc if isinstance(doc[key], list)) == len(ODD_VALUES)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_typed_sample_imports_and_exports_to_the_same_bytes(tmp_path, fmt):
    """fixtures/sample-typed-1.1.json is ODD_VALUES applied to the sample, as memory exported it."""
    source = TYPED_SAMPLE
    if fmt == "jsonl":
        memory("import", "--db", tmp_path / "first.db", TYPED_SAMPLE)
        memory("export", "--db", tmp_path / "first.db", tmp_path / "typed.jsonl")
        source = tmp_path / "typed.jsonl"
    assert memory("import", "--db", tmp_path / "t.db", source).exit_code == 0
    assert memory("export", "--db", tmp_path / "t.db", tmp_path / f"again.{fmt}").exit_code == 0
    body = [line for line in unsummed(source.read_bytes()).splitlines() if b"exportedAt" not in line]
    assert [line for line in unsummed((tmp_path / f"again.{fmt}").read_bytes()).splitlines()
            if b"exportedAt" not in line] == body
    assert b"".join(body).count(b'{"$') == len(ODD_VALUES)


def unsummed(data: bytes) -> bytes:
    """A file as version 1.1 ended, without the checksum (which covers exportedAt, so differs every time)."""
    return re.sub(rb'(,\n"checksum":"xxh3-128:[0-9a-f]{32}"\}|,"checksum":"xxh3-128:[0-9a-f]{32}"\})\n\Z', b"}\n", data)


def test_export_writes_version_stats_and_every_field(tmp_path, sample_db):
    assert memory("export", "--db", sample_db, tmp_path / "out.json").exit_code == 0
    doc = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert list(doc)[:3] == ["version", "exportedAt", "stats"]
    assert doc["version"] == "1.2"
    assert doc["stats"] == {"sessions": 2, "messages": 5, "toolUses": 2, "entities": 3, "links": 2,
                            "sessionEntities": 2, "entityLinks": 1, "extractionStates": 2, "topics": 0}
    for table in TABLES:
        assert len(doc[table.key]) == doc["stats"][table.key]
        for record in doc[table.key]:
            assert list(record) == [c.field for c in table.columns]
    assert {type(v) for r in doc["sessions"] for v in r.values()} == {str, int, type(None)}
    assert {type(r["confidence"]) for r in doc["entities"]} == {float, type(None)}


def test_files_are_written_for_the_owner_only_whatever_the_umask(tmp_path, sample_db, platform):
    import os
    old = os.umask(0)
    try:
        memory("export", "--db", sample_db, tmp_path / "out.json.gz")
    finally:
        os.umask(old)
    assert (tmp_path / "out.json.gz").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json.gz", "sample.db", "sample.db-shm", "sample.db-wal"]


def test_export_to_stdout_keeps_the_report_off_stdout(tmp_path, sample_db):
    result = memory("export", "--db", sample_db, "-")
    doc = json.loads(result.stdout)
    assert doc["stats"]["messages"] == 5
    assert result.stderr.startswith(f"Exported 19 records ({len(result.stdout_bytes) / 1000:.1f} kB)\nto stdout\n"
                                    f"from database {sample_db}\n  sessions                      2\n")


def test_import_from_stdin(tmp_path):
    result = memory("import", "--db", tmp_path / "new.db", "-", input=SAMPLE.read_bytes())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Imported 19 records: 19 inserted, 0 skipped\nfrom stdin\n"
                                    f"into new database {tmp_path / 'new.db'}\n")


@needs_compat
def test_memory_nexus_export_imports_and_matches_its_database(tmp_path):
    """The peer's own file restores every row its database has in the columns 1.0 carries, and what
    both full-text indexes find."""
    result = memory("import", "--db", tmp_path / "peer.db", COMPAT_EXPORT)
    assert result.exit_code == 0, result.output
    ours, theirs = snapshot(tmp_path / "peer.db"), snapshot(COMPAT_DB)
    assert {k: v for k, v in ours.items() if ":" in k} == {k: v for k, v in theirs.items() if ":" in k}
    left_out = {"sessions": ("created_at", "updated_at"), "entities": ("created_at",), "links": ("id",)}
    for table in TABLES:
        if table.name == "topics":                                   # 1.0 has no topics
            assert ours["topics"] == []
            continue
        cut = left_out.get(table.name, ())
        assert without(ours, table.name, cut) == without(theirs, table.name, cut), table.name


@needs_compat
def test_our_export_carries_every_key_memory_nexus_writes(tmp_path):
    memory("export", "--db", COMPAT_DB, tmp_path / "ours.json")
    ours = json.loads((tmp_path / "ours.json").read_text(encoding="utf-8"))
    theirs = json.loads(COMPAT_EXPORT.read_text(encoding="utf-8"))
    assert list(ours)[: len(theirs)] == list(theirs)
    assert set(theirs["stats"].items()) <= set(ours["stats"].items())
    for key, records in theirs.items():
        if isinstance(records, list):
            assert set(records[0]) <= set(ours[key][0]), key
            assert len(records) == len(ours[key])


@needs_compat
def test_compat_database_round_trips_exactly(tmp_path):
    memory("export", "--db", COMPAT_DB, tmp_path / "b.jsonl.gz")
    memory("import", "--db", tmp_path / "r.db", tmp_path / "b.jsonl.gz")
    assert snapshot(tmp_path / "r.db") == snapshot(COMPAT_DB)


def test_the_search_index_settings_are_left_as_they_were(tmp_path, sample_db):
    """The rebuild runs with FTS5's automerge off, for speed; the setting is put back: no row in a new database
    (memory-nexus's default), and a database's own value kept through --clear."""
    def config(path):
        with sqlite3.connect(path) as conn:
            return dict(conn.execute("SELECT k, v FROM messages_fts_config"))
    memory("export", "--db", sample_db, tmp_path / "a.json")
    assert memory("import", "--db", tmp_path / "new.db", tmp_path / "a.json").exit_code == 0
    assert config(tmp_path / "new.db") == config(sample_db) == {"version": 4}
    with sqlite3.connect(sample_db) as conn:
        conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('automerge', 8)")
    assert memory("import", "--db", sample_db, "--clear", tmp_path / "a.json").exit_code == 0
    assert config(sample_db) == {"version": 4, "automerge": 8}
