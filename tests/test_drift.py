"""A database whose schema is not memory-nexus 0.1.2's: nothing is dropped or invented without being told."""

import json
import sqlite3

import pytest
from conftest import SAMPLE, make_database, memory, snapshot

from pipeline import export as export_module
from pipeline.database import open_for_reading
from pipeline.export import export, select_sql
from pipeline.tables import TABLES

pytestmark = pytest.mark.usefixtures("export_path")   # every export on one core and on two

NOT_OURS = "the database's schema is not memory-nexus 0.1.2's"


def altered(db, *statements):
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()
    return db


def files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("command", ["export", "backup"])
def test_a_missing_known_column_is_refused_by_name_not_written_as_its_name(tmp_path, command):
    db = altered(make_database(tmp_path / "x.db"), "ALTER TABLE sessions DROP COLUMN updated_at")
    before = db.read_bytes()
    out = tmp_path / ("out.json" if command == "export" else "backups")
    if command == "export":
        out.write_bytes(b"the old backup")
    result = memory(command, "--db", db, "--skip-unknown", out)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: sessions: column updated_at is missing: {NOT_OURS}\n")
    if command == "export":
        assert out.read_bytes() == b"the old backup" and files(tmp_path) == ["out.json", "x.db"]
    else:
        assert files(tmp_path) == ["backups", "x.db"] and files(out) == [".memory-backup.lock"]
    assert db.read_bytes() == before


def test_with_the_check_bypassed_no_query_can_read_a_missing_column_as_its_name(tmp_path, monkeypatch):
    """SQLite reads a bare "updated_at" that names no column as the string 'updated_at'; the export's
    SELECT qualifies every column, which SQLite never reads as a string."""
    db = altered(make_database(tmp_path / "x.db"), "ALTER TABLE sessions DROP COLUMN updated_at")
    monkeypatch.setattr(export_module, "check_for_export", lambda conn, skip: [])
    result = memory("export", "--db", db, tmp_path / "out.json")
    assert (result.exit_code, result.stderr) == (1, "Error: sessions: no such column: t.updated_at\n")
    assert files(tmp_path) == ["x.db"]
    conn = sqlite3.connect(db)
    for table in TABLES:      # every column of every SELECT is qualified, in the one place that builds them
        assert select_sql(table).startswith("SELECT " + ", ".join(f't."{c.name}"' for c in table.columns))
    assert conn.execute('SELECT "updated_at" FROM sessions').fetchone() == ("updated_at",)   # the trap itself


@pytest.mark.parametrize("statements, left_out", [
    (["ALTER TABLE sessions ADD COLUMN tags TEXT"], "column sessions.tags"),
    (["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)", "INSERT INTO notes VALUES (1, 'keep me')"],
     "table notes"),
    (["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)", "INSERT INTO notes VALUES (1, 'keep me')",
      "ALTER TABLE topics ADD COLUMN colour TEXT", "ALTER TABLE sessions ADD COLUMN tags TEXT"],
     "column sessions.tags, column topics.colour, table notes"),
])
def test_unknown_data_is_refused_by_name_and_left_out_only_when_asked_and_said(tmp_path, statements, left_out):
    db = altered(make_database(tmp_path / "x.db"), *statements)
    before = db.read_bytes()
    out = tmp_path / "out.json"
    out.write_bytes(b"the old backup")
    refused = memory("export", "--db", db, out)
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        1, "", "Error: the database holds what memory-nexus 0.1.2's schema has not, and a backup would leave it "
               f"out: {left_out}; pass --skip-unknown to back up without it\n")
    assert out.read_bytes() == b"the old backup" and files(tmp_path) == ["out.json", "x.db"]
    done = memory("export", "--db", db, "--skip-unknown", out)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("Exported 22 records (") and done.stdout.endswith(
        f"\n  topics                        1\nleft out, as --skip-unknown asked: {left_out}\n")
    as_json = memory("export", "--db", db, "--skip-unknown", "--json", out)
    assert json.loads(as_json.stdout)["leftOut"] == left_out.split(", ")
    assert db.read_bytes() == before


def test_backup_refuses_unknown_data_and_names_what_skip_unknown_left_out(tmp_path):
    db = altered(make_database(tmp_path / "x.db"), "ALTER TABLE sessions ADD COLUMN tags TEXT")
    refused = memory("backup", "--db", db, tmp_path / "backups")
    assert (refused.exit_code, refused.stderr) == (
        1, "Error: the database holds what memory-nexus 0.1.2's schema has not, and a backup would leave it "
           "out: column sessions.tags; pass --skip-unknown to back up without it\n")
    assert files(tmp_path / "backups") == [".memory-backup.lock"]   # the folder's lock only: no backup
    done = memory("backup", "--db", db, "--skip-unknown", tmp_path / "backups")
    assert done.exit_code == 0, done.output
    (made,) = (tmp_path / "backups").glob("memory-*")
    assert done.stdout.startswith(f"Backed up 22 records ({made.stat().st_size} B)\nto {made}\nfrom database {db}\n")
    assert done.stdout.endswith("\nleft out, as --skip-unknown asked: column sessions.tags\n"
                                "removed 0 old backups (--keep 7)\n")


def test_empty_unknown_tables_and_the_indexes_own_tables_are_not_drift(tmp_path):
    db = altered(make_database(tmp_path / "x.db"), "CREATE TABLE scratch (x)", "ANALYZE",
                 "CREATE VIEW v AS SELECT id FROM sessions", "CREATE INDEX extra ON messages_meta(role)")
    result = memory("export", "--db", db, tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    assert "left out" not in result.stdout
    assert json.loads((tmp_path / "out.json").read_bytes())["stats"]["messages"] == 12


def test_the_library_reports_what_it_left_out(tmp_path):
    db = altered(make_database(tmp_path / "x.db"), "ALTER TABLE sessions ADD COLUMN tags TEXT")
    with open(tmp_path / "out.jsonl", "wb") as out:
        exported = export(open_for_reading(db), out, "jsonl", skip_unknown=True)
    assert exported.left_out == ["column sessions.tags"] and exported.counts["sessions"] == 3


# ---- importing into a database whose schema drifted -------------------------------------------------------

@pytest.mark.parametrize("flags", [["--yes"], ["--clear"], ["--yes", "--on-conflict", "replace"]])
def test_import_into_a_database_missing_a_known_column_is_refused_by_name(tmp_path, flags):
    db = altered(make_database(tmp_path / "x.db"), "ALTER TABLE sessions DROP COLUMN updated_at")
    before = db.read_bytes()
    result = memory("import", "--db", db, *flags, SAMPLE)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: sessions: column updated_at is missing: {NOT_OURS}\n")
    assert db.read_bytes() == before


REFERRING = "CREATE TABLE notes (id INTEGER PRIMARY KEY, session_id TEXT REFERENCES sessions(id){})"


@pytest.mark.parametrize("on_delete", [" ON DELETE CASCADE", ""])
def test_clear_is_refused_when_another_table_points_at_ours(tmp_path, on_delete):
    """With CASCADE, --clear of the database's own export emptied notes; without, it was a traceback."""
    db = altered(make_database(tmp_path / "x.db"), REFERRING.format(on_delete),
                 "INSERT INTO notes VALUES (1, 'session-0')")
    assert memory("export", "--db", db, "--skip-unknown", tmp_path / "own.json").exit_code == 0
    before, notes = snapshot(db), db.read_bytes()
    result = memory("import", "--db", db, "--clear", tmp_path / "own.json")
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", "Error: table notes refers to sessions by a foreign key: --clear would empty or break it; "
               "import without --clear to merge\n")
    assert db.read_bytes() == notes and snapshot(db) == before


def test_clear_is_refused_when_it_would_empty_an_unknown_column(tmp_path):
    db = altered(make_database(tmp_path / "x.db"), "ALTER TABLE sessions ADD COLUMN tags TEXT",
                 "UPDATE sessions SET tags = 'mine'")
    before = db.read_bytes()
    result = memory("import", "--db", db, "--clear", SAMPLE)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", "Error: sessions.tags: --clear would empty this column, which is not memory-nexus 0.1.2's and no "
               "backup holds; import without --clear to merge, or drop the column first\n")
    assert db.read_bytes() == before


def test_merging_beside_unknown_tables_and_columns_keeps_them(tmp_path):
    db = altered(make_database(tmp_path / "x.db"), REFERRING.format(" ON DELETE CASCADE"),
                 "INSERT INTO notes VALUES (1, 'session-0')", "ALTER TABLE sessions ADD COLUMN tags TEXT",
                 "UPDATE sessions SET tags = 'mine'")
    result = memory("import", "--db", db, "--yes", SAMPLE)
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM notes").fetchall() == [(1, "session-0")]
    assert conn.execute("SELECT count(*), count(tags) FROM sessions").fetchone() == (5, 3)


def test_a_merge_never_renames_what_another_tables_foreign_key_points_at(tmp_path):
    """notes points at topics by name. A file whose topic 1 has another name once renamed topic 1 under the
    note (a foreign-key break); a merge matches topics by name, so 'renamed' is a new topic and 'cron' stays."""
    db = altered(make_database(tmp_path / "x.db"),
                 "CREATE TABLE notes (id INTEGER PRIMARY KEY, topic TEXT REFERENCES topics(name))",
                 "INSERT INTO notes VALUES (1, 'cron')")
    doc = json.loads(SAMPLE.read_text())
    doc.update(version="1.1", topics=[{"id": 1, "name": "renamed", "createdAt": None}])
    doc["stats"]["topics"] = 1
    for key in ("sessionEntities", "entityLinks", "extractionStates"):
        doc.setdefault(key, [])
    for record in doc["sessions"]:
        record.update(createdAt=None, updatedAt=None)
    for key, field in (("messages", "rowid"), ("links", "id")):
        for n, record in enumerate(doc[key], 100):
            record[field] = n
    for record in doc["entities"]:
        record["createdAt"] = None
    (tmp_path / "in.json").write_text(json.dumps(doc))
    result = memory("import", "--db", db, "--yes", "--on-conflict", "replace", tmp_path / "in.json")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT id, name FROM topics ORDER BY id").fetchall() == [(1, "cron"), (2, "renamed")]
    assert conn.execute("SELECT * FROM notes").fetchall() == [(1, "cron")]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_stats_of_a_database_without_a_column_it_shows_is_one_line(tmp_path):
    db = altered(make_database(tmp_path / "x.db"), "DROP INDEX idx_sessions_start_time",
                 "ALTER TABLE sessions DROP COLUMN start_time")
    result = memory("stats", "--db", db)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", "Error: the newest session: no such column: s.start_time\n")


def test_a_table_whose_name_differs_only_in_case_is_still_the_table(tmp_path):
    """SQLite's names are case-insensitive: TOPICS is topics, so the database is a memory database."""
    db = make_database(tmp_path / "x.db")
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE topics RENAME TO renaming")
    conn.execute("ALTER TABLE renaming RENAME TO TOPICS")
    conn.commit()
    conn.close()
    result = memory("export", "--db", db, "--json", tmp_path / "out.json")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert json.loads(result.stdout)["counts"]["topics"] == 1
    restored = memory("import", "--db", tmp_path / "back.db", tmp_path / "out.json")
    assert restored.exit_code == 0, restored.output
    assert sqlite3.connect(tmp_path / "back.db").execute("SELECT name FROM topics").fetchall() == [("cron",)]
