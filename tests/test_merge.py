"""Merging another machine's backup: rows matched by natural keys, never by surrogate ids; every record and
every relation of both sides kept; one transaction; --dry-run."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import COMPAT_DB, memory, needs_compat, snapshot

from pipeline.database import create_schema
from pipeline.tables import BY_KEY

# Two machines, numbered independently: the same entity, topic, link ids and message rowids name different
# things on each. They share session s-shared (B holds one more message in it), entity ('term', 'shared'),
# topic 'cron', the link cron -> s-shared, tool use t-shared and extraction state x-shared, with other values.
MACHINES = {
    "a": {
        "sessions": [("s-shared", "shared session about wombats", None), ("a-1", "alpha only aardvark", "2026-01-02")],
        "messages": [("m-shared-1", "s-shared", "first shared message"), ("m-shared-2", "s-shared", "second shared"),
                     ("a-1-m1", "a-1", "alpha aardvark speaking")],
        "tool_uses": [("t-shared", "s-shared", "success"), ("t-a", "a-1", "pending")],
        "entities": [(1, "concept", "wombat", None), (2, "file", "a.py", None), (3, "term", "shared", "from a")],
        "topics": [(1, "backups"), (2, "cron")],
        "links": [(1, "topic", "1", "session", "a-1", 1.0), (2, "topic", "2", "session", "s-shared", 0.5),
                  (3, "session", "s-shared", "message", "m-shared-1", 0.5)],
        "session_entities": [("s-shared", 3, 2), ("a-1", 1, 1)],
        "entity_links": [(1, 3, "related", 0.5)],
        "extraction_state": [("x-a", "/pa", "complete"), ("x-shared", "/ps", "complete")],
    },
    "b": {
        "sessions": [("b-1", "beta quokka summary", None), ("s-shared", None, "2026-01-09")],
        "messages": [("b-1-m1", "b-1", "beta zebra quokka"), ("m-shared-1", "s-shared", "first shared message"),
                     ("m-shared-2", "s-shared", "second shared"), ("m-shared-3", "s-shared", "kangaroo arrives")],
        "tool_uses": [("t-shared", "s-shared", "error"), ("t-b", "b-1", "success")],
        "entities": [(1, "file", "b.py", "{}"), (2, "term", "shared", "from b"), (3, "concept", "quokka", None)],
        "topics": [(1, "cron"), (2, "zstd")],
        "links": [(1, "topic", "1", "session", "s-shared", 0.25), (2, "topic", "2", "session", "b-1", 1.0),
                  (3, "session", "s-shared", "message", "m-shared-3", 1.0)],
        "session_entities": [("s-shared", 2, 5), ("b-1", 3, 1), ("s-shared", 1, 1)],
        "entity_links": [(3, 2, "implies", 1.0), (1, 2, "related", 0.75)],
        "extraction_state": [("x-b", "/pb", "complete"), ("x-shared", "/ps", "error")],
    },
}
ONLY_B = "kangaroo"     # a word only B's messages hold


def machine(path: Path, name: str) -> Path:
    """One machine's database, made with plain SQL as memory-nexus would leave it."""
    data = MACHINES[name]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    create_schema(conn)
    for sid, summary, end in data["sessions"]:
        conn.execute("INSERT INTO sessions (id, project_path_encoded, project_path_decoded, project_name, start_time, "
                     "end_time, created_at, updated_at) VALUES (?, '-p', '/p', 'p', '2026-01-01', ?, 'c', 'u')",
                     (sid, end))
        conn.execute("UPDATE sessions SET summary = ? WHERE id = ?", (summary, sid))   # indexes it, as memory-nexus
    for mid, sid, content in data["messages"]:
        conn.execute("INSERT INTO messages_meta (id, session_id, role, content, timestamp) "
                     "VALUES (?, ?, 'user', ?, 't')", (mid, sid, content))
    for tid, sid, status in data["tool_uses"]:
        conn.execute("INSERT INTO tool_uses VALUES (?, ?, 'Bash', '{}', 't', ?, NULL)", (tid, sid, status))
    conn.executemany("INSERT INTO entities (id, type, name, metadata, created_at) VALUES (?, ?, ?, ?, 'c')",
                     data["entities"])
    conn.executemany("INSERT INTO topics (id, name, created_at) VALUES (?, ?, 'c')", data["topics"])
    conn.executemany("INSERT INTO links VALUES (?, ?, ?, ?, ?, 'related_to', ?)", data["links"])
    conn.executemany("INSERT INTO session_entities VALUES (?, ?, ?)", data["session_entities"])
    conn.executemany("INSERT INTO entity_links VALUES (?, ?, ?, ?)", data["entity_links"])
    conn.executemany("INSERT INTO extraction_state (id, session_path, started_at, status) VALUES (?, ?, 's', ?)",
                     data["extraction_state"])
    conn.execute("COMMIT")
    conn.close()
    return path


def facts(db: Path) -> dict[str, dict]:
    """Every fact of a database named by its natural key, surrogate ids resolved to what they name."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    entity = "(SELECT json_array(type, name) FROM entities WHERE id = {})"
    topic_end = ("CASE WHEN {0}_type = 'topic' THEN (SELECT name FROM topics WHERE CAST(id AS TEXT) = {0}_id) "
                 "ELSE {0}_id END")
    queries = {
        "sessions": "SELECT id, * FROM sessions",
        "messages": "SELECT id, id, session_id, role, content, timestamp, tool_use_ids FROM messages_meta",
        "tool_uses": "SELECT id, * FROM tool_uses",
        "entities": "SELECT json_array(type, name), type, name, metadata, confidence, created_at FROM entities",
        "topics": "SELECT name, name, created_at FROM topics",
        "links": f"SELECT json_array(source_type, {topic_end.format('source')}, target_type, "
                 f"{topic_end.format('target')}, relationship), weight FROM links",
        "session_entities": f"SELECT json_array(session_id, {entity.format('entity_id')}), frequency "
                            "FROM session_entities",
        "entity_links": f"SELECT json_array({entity.format('source_id')}, {entity.format('target_id')}, relationship),"
                        " weight FROM entity_links",
        "extraction_state": "SELECT id, * FROM extraction_state",
    }
    found = {}
    for table, sql in queries.items():
        rows = conn.execute(sql).fetchall()
        found[table] = {row[0]: row[1:] for row in rows}
        assert len(found[table]) == len(rows), f"{table}: two rows with one natural key"
        assert None not in found[table], f"{table}: a relation points at nothing"
    conn.close()
    return found


def union(winner: dict, loser: dict) -> dict:
    return {table: {**loser[table], **winner[table]} for table in winner}


def search(db: Path, word: str) -> list[str]:
    conn = sqlite3.connect(db)
    found = conn.execute("SELECT m.id FROM messages_fts JOIN messages_meta AS m ON m.rowid = messages_fts.rowid "
                         "WHERE messages_fts MATCH ? ORDER BY m.id", (word,)).fetchall()
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    conn.close()
    return [row[0] for row in found]


def restored(db: Path, tmp_path: Path) -> dict:
    """A snapshot of what a restore of this database's export holds: every id and rowid kept."""
    memory("export", "--db", db, "-q", tmp_path / "again.json")
    (tmp_path / "again.db").unlink(missing_ok=True)
    assert memory("import", "--db", tmp_path / "again.db", "-q", tmp_path / "again.json").exit_code == 0
    return snapshot(tmp_path / "again.db")


@pytest.mark.parametrize("mode", ["skip", "replace"])
@pytest.mark.parametrize("into, other", [("a", "b"), ("b", "a")])
def test_merging_another_machine_keeps_the_union_of_both_by_natural_keys(tmp_path, into, other, mode):
    target, source = machine(tmp_path / f"{into}.db", into), machine(tmp_path / f"{other}.db", other)
    mine, theirs = facts(target), facts(source)
    memory("export", "--db", source, "-q", tmp_path / "other.json")
    result = memory("import", "--db", target, "--yes", "--on-conflict", mode, tmp_path / "other.json")
    assert result.exit_code == 0, result.output
    assert facts(target) == (union(theirs, mine) if mode == "replace" else union(mine, theirs))
    assert search(target, ONLY_B) == ["m-shared-3"]      # only B holds it, whichever side B is
    assert search(target, "aardvark") == ["a-1-m1"] and search(target, "zebra") == ["b-1-m1"]
    assert snapshot(target) == restored(target, tmp_path)     # both full-text indexes as a restore has them


def test_the_report_counts_per_table_and_merging_again_changes_nothing_and_says_so(tmp_path):
    target, source = machine(tmp_path / "a.db", "a"), machine(tmp_path / "b.db", "b")
    memory("export", "--db", source, "-q", tmp_path / "b.json")
    first = json.loads(memory("import", "--db", target, "-y", "--on-conflict", "replace", "--json",
                              tmp_path / "b.json").stdout)
    # Worked out by hand from MACHINES: b's rowid 1 and entity, topic and link ids 1 to 3 are a's too.
    assert {k: first[k] for k in ("inserted", "skipped", "updated", "renumbered")} == {
        "inserted": {"sessions": 1, "messages": 2, "toolUses": 1, "entities": 2, "links": 2, "sessionEntities": 2,
                     "entityLinks": 2, "extractionStates": 1, "topics": 1},
        "skipped": {"sessions": 0, "messages": 2, "toolUses": 0, "entities": 0, "links": 0, "sessionEntities": 0,
                    "entityLinks": 0, "extractionStates": 0, "topics": 1},
        "updated": {"sessions": 1, "messages": 0, "toolUses": 1, "entities": 1, "links": 1, "sessionEntities": 1,
                    "entityLinks": 0, "extractionStates": 1, "topics": 0},
        "renumbered": {"sessions": 0, "messages": 1, "toolUses": 0, "entities": 2, "links": 2, "sessionEntities": 0,
                       "entityLinks": 0, "extractionStates": 0, "topics": 1}}
    merged = snapshot(target)
    for mode in ("skip", "replace", "fail"):
        again = memory("import", "--db", target, "-y", "--on-conflict", mode, tmp_path / "b.json")
        assert (again.exit_code, again.stdout) == (0, (
            "Nothing imported: all 23 records are there already\n"
            f"from {tmp_path / 'b.json'}\n"
            f"into database {target}\n"
            "                          records      inserted       skipped\n"
            "  sessions                      2             0             2\n"
            "  messages                      4             0             4\n"
            "  tool uses                     2             0             2\n"
            "  entities                      3             0             3\n"
            "  links                         3             0             3\n"
            "  session entities              3             0             3\n"
            "  entity links                  2             0             2\n"
            "  extraction states             2             0             2\n"
            "  topics                        2             0             2\n"))
        assert snapshot(target) == merged


def test_fail_refuses_the_first_fact_held_with_other_values_and_changes_nothing(tmp_path):
    target, source = machine(tmp_path / "a.db", "a"), machine(tmp_path / "b.db", "b")
    memory("export", "--db", source, "-q", tmp_path / "b.json")
    before = snapshot(target)
    result = memory("import", "--db", target, "-y", "--on-conflict", "fail", tmp_path / "b.json")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", (
        "Error: sessions[1]: id 's-shared' is in the database with other values; nothing was imported "
        "(--on-conflict skip keeps the database's, replace takes the file's)\n"))
    assert snapshot(target) == before


def both_ways_with(tmp_path: Path, edit) -> tuple[Path, Path]:
    """Machine a, and b's backup changed by `edit(doc)`."""
    target, source = machine(tmp_path / "a.db", "a"), machine(tmp_path / "b.db", "b")
    memory("export", "--db", source, "-q", tmp_path / "b.json")
    doc = json.loads((tmp_path / "b.json").read_text())
    edit(doc)
    del doc["checksum"]                  # edited by hand: a file of the version before checksums
    doc["version"] = "1.1"
    (tmp_path / "b.json").write_text(json.dumps(doc))
    return target, tmp_path / "b.json"


def refused(target: Path, backup: Path, message: str, *options: str) -> None:
    """Merging `backup` into `target` fails with exactly `message`, and the database is as it was."""
    before = snapshot(target)
    result = memory("import", "--db", target, "-y", *options, backup)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")
    assert snapshot(target) == before


def extraction_states(db: Path) -> list[tuple]:
    return sqlite3.connect(db).execute("SELECT id, session_path, status FROM extraction_state ORDER BY id").fetchall()


@pytest.mark.parametrize("mode, states", [
    ("skip", [("x-a", "/pa", "complete"), ("x-b", "/pb", "complete"), ("x-shared", "/ps", "complete")]),
    ("replace", [("x-a", "/pa", "complete"), ("x-b", "/pb", "complete"), ("x-other", "/ps", "error")]),
])
def test_an_extraction_state_of_the_same_session_path_under_another_id_is_the_same_fact(tmp_path, mode, states):
    """memory-nexus looks a state up by its session_path (INSERT OR REPLACE): the path names the fact too."""
    target, backup = both_ways_with(tmp_path, lambda d: d["extractionStates"][1].update(id="x-other"))
    result = memory("import", "--db", target, "-y", "--on-conflict", mode, "--json", backup)
    assert result.exit_code == 0, result.output
    assert extraction_states(target) == states
    report = json.loads(result.stdout)
    assert (report["inserted"]["extractionStates"], report["skipped"]["extractionStates"],
            report["updated"]["extractionStates"]) == ((1, 1, 0) if mode == "skip" else (1, 0, 1))


def test_fail_refuses_an_extraction_state_of_the_same_path_under_another_id(tmp_path):
    target = machine(tmp_path / "a.db", "a")
    memory("export", "--db", target, "-q", tmp_path / "a.json")
    doc = json.loads((tmp_path / "a.json").read_text())
    doc["extractionStates"][1]["id"] = "x-other"                 # the rest of the file is a's own, as it is
    (tmp_path / "a.json").write_text(json.dumps(doc))
    before = snapshot(target)
    result = memory("import", "--db", target, "-y", "--on-conflict", "fail", tmp_path / "a.json")
    assert (result.exit_code, result.stderr) == (1, (
        "Error: extractionStates[1]: id 'x-other' is in the database with other values; nothing was imported "
        "(--on-conflict skip keeps the database's, replace takes the file's)\n"))
    assert snapshot(target) == before


@pytest.mark.parametrize("mode", ["skip", "replace"])
def test_a_file_that_names_a_state_by_id_and_another_by_path_is_refused(tmp_path, mode):
    """x-a of the file has x-shared's path, and x-shared is in the file too: the file holds the state of /ps
    twice (an import into an empty database refuses it: UNIQUE session_path). Refused, naming both, and
    nothing changes."""
    target, backup = both_ways_with(tmp_path, lambda d: d["extractionStates"].__setitem__(
        0, {**d["extractionStates"][0], "id": "x-a", "sessionPath": "/ps"}))
    refused(target, backup, "extractionStates[1]: the file holds sessionPath '/ps' twice (as extractionStates[0]); "
            "nothing was imported", "--on-conflict", mode)


@pytest.mark.parametrize("table", ["sessionEntities", "entityLinks", "links", "messages"])
def test_a_fact_twice_is_named_by_the_file_s_own_values(tmp_path, table):
    """Found by review of a first form of the check: it named the database's ids (entity 3 for the file's 2)."""
    def twice(doc):
        doc[table].append(dict(doc[table][0]))
        doc["stats"][table] += 1
    target, backup = both_ways_with(tmp_path, twice)
    doc = json.loads(backup.read_text())
    columns = {c.name: c.field for c in BY_KEY[table].columns}
    named = ", ".join(f"{columns[name]} {doc[table][0][columns[name]]!r}" for name in BY_KEY[table].natural[0])
    refused(target, backup, f"{table}[{len(doc[table]) - 1}]: the file holds {named} twice (as {table}[0]); "
            "nothing was imported")


@pytest.mark.parametrize("table", ["topics", "entities", "messages"])
def test_a_file_that_gives_one_id_to_two_records_is_refused(tmp_path, table):
    """An empty import refuses it (PRIMARY KEY); merging, the other tables' ids of entities and topics would name
    either (found by review: refused only later, naming the TEMP table merge_ids_topics)."""
    place = next(c.field for c in BY_KEY[table].columns if c.rowid)
    def twice(doc):
        doc[table].append({**doc[table][0], "id": "m-another"} if table == "messages" else
                          {**doc[table][0], "name": "another"})
        doc[table][-1][place] = doc[table][0][place]
        doc["stats"][table] += 1
    target, backup = both_ways_with(tmp_path, twice)
    doc = json.loads(backup.read_text())
    assert memory("import", "--db", tmp_path / "empty.db", backup).exit_code == 1
    refused(target, backup, f"{table}[{len(doc[table]) - 1}]: the file holds {place} {doc[table][0][place]!r} "
            f"twice (as {table}[0]); nothing was imported")


def test_the_first_record_in_the_file_that_repeats_a_key_is_named_whatever_the_key(tmp_path):
    """Found by review: keys were asked one after the other, so a later record repeating the first key was named
    before an earlier one repeating the second (an empty import names the earlier)."""
    def edit(doc):
        states = doc["extractionStates"]
        doc["extractionStates"] = [*states, {**states[1], "id": "x-new"}, {**states[0], "sessionPath": "/new"}]
        doc["stats"]["extractionStates"] = 4
    target, backup = both_ways_with(tmp_path, edit)
    path = json.loads(backup.read_text())["extractionStates"][1]["sessionPath"]
    refused(target, backup, f"extractionStates[2]: the file holds sessionPath {path!r} twice (as "
            "extractionStates[1]); nothing was imported")


def test_a_key_that_is_not_utf_8_named_twice_is_named_by_its_bytes(tmp_path):
    """Found by review: the message was SQLite's failure to decode it ("Could not decode to UTF-8 column")."""
    raw = {"$textBytes": base64.b64encode(b"a-\xff").decode()}
    def edit(doc):
        doc["sessions"] += [{**doc["sessions"][1], "id": raw}, {**doc["sessions"][1], "id": raw}]
        doc["stats"]["sessions"] += 2
    target, backup = both_ways_with(tmp_path, edit)
    at = len(json.loads(backup.read_text())["sessions"]) - 1
    refused(target, backup, f"sessions[{at}]: the file holds id b'a-\\xff' twice (as sessions[{at - 1}]); nothing "
            "was imported")


@pytest.mark.parametrize("mode", ["skip", "replace"])
def test_two_states_of_the_file_that_meet_one_row_through_different_keys_are_not_a_fact_twice(tmp_path, mode):
    """Found by review of a first form of the check (which refused them, skipping): x-a moved to /pz, and a new
    state x-new at x-a's old path /pa. The file holds no key twice; each meets a's row of x-a, one by id, one by
    path: skip keeps the database's row, replace takes the file's x-a and then x-new is new."""
    def moved(doc):
        doc["extractionStates"] = [{**doc["extractionStates"][0], "id": "x-a", "sessionPath": "/pz"},
                                   {**doc["extractionStates"][0], "id": "x-new", "sessionPath": "/pa"}]
        doc["stats"]["extractionStates"] = 2
    target, backup = both_ways_with(tmp_path, moved)
    assert memory("import", "--db", tmp_path / "empty.db", "-q", backup).exit_code == 0
    result = memory("import", "--db", target, "-y", "-q", "--on-conflict", mode, backup)
    assert (result.exit_code, result.stderr) == (0, "")
    assert [row[:2] for row in extraction_states(target)] == (
        [("x-a", "/pa"), ("x-shared", "/ps")] if mode == "skip" else [("x-a", "/pz"), ("x-new", "/pa"),
                                                                      ("x-shared", "/ps")])


@pytest.mark.parametrize("batch", [2000, 1], ids=["one-batch", "batch-by-batch"])
@pytest.mark.parametrize("same", [True, False], ids=["copied", "other-text"])
@pytest.mark.parametrize("mode", ["skip", "replace"])
def test_a_file_that_holds_one_fact_twice_is_refused_as_an_import_into_an_empty_database_is(tmp_path, monkeypatch,
                                                                                             batch, same, mode):
    """Found: a merge took one of the two records (skip the first, replace the second) and said nothing, where an
    import into an empty database refuses the file; the other record was lost. A file memory or memory-nexus
    writes never holds a fact twice (the schema's UNIQUE constraints): such a file was made or damaged by hand."""
    monkeypatch.setattr("pipeline.records.BATCH", batch)
    def twice(doc):
        first = doc["messages"][0]
        doc["messages"].append({**first, "rowid": 999} if same else {**first, "rowid": 999, "content": "other"})
        doc["stats"]["messages"] += 1
    target, backup = both_ways_with(tmp_path, twice)
    at = len(json.loads(backup.read_text())["messages"]) - 1
    first = json.loads(backup.read_text())["messages"][0]["id"]
    refused(target, backup, f"messages[{at}]: the file holds id {first!r} twice (as messages[0]); nothing was "
            "imported", "--on-conflict", mode)
    empty = memory("import", "--db", tmp_path / "empty.db", backup)
    assert empty.exit_code == 1 and "the file holds this row twice" in empty.stderr


@pytest.mark.parametrize("batch", [2000, 1], ids=["one-batch", "batch-by-batch"])
def test_with_on_conflict_fail_a_fact_held_twice_is_named_as_the_file_s_own(tmp_path, monkeypatch, batch):
    """Not "in the database with other values": the other values are the file's (a's data and b's share no
    fact here, so nothing else clashes)."""
    monkeypatch.setattr("pipeline.records.BATCH", batch)
    target = machine(tmp_path / "a.db", "a")
    memory("export", "--db", machine(tmp_path / "b.db", "b"), "-q", tmp_path / "b.json")
    doc = json.loads((tmp_path / "b.json").read_text())
    del doc["checksum"]
    doc["version"] = "1.1"
    doc = {k: [r for r in v if "shared" not in json.dumps(r)] if isinstance(v, list) else v for k, v in doc.items()}
    doc["stats"] = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
    doc["messages"].append({**doc["messages"][0], "rowid": 999, "content": "other"})
    doc["stats"]["messages"] += 1
    (tmp_path / "b.json").write_text(json.dumps(doc))
    refused(target, tmp_path / "b.json", f"messages[{len(doc['messages']) - 1}]: the file holds id "
            f"{doc['messages'][0]['id']!r} twice (as messages[0]); nothing was imported", "--on-conflict", "fail")


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
@pytest.mark.parametrize("args", [["-y"], ["-y", "--on-conflict", "replace"], ["--clear"]],
                         ids=["skip", "replace", "clear"])
def test_dry_run_leaves_the_database_byte_for_byte_and_reports_what_a_real_run_then_does(tmp_path, wal, args):
    target, source = machine(tmp_path / "a.db", "a"), machine(tmp_path / "b.db", "b")
    if wal:
        sqlite3.connect(target).execute("PRAGMA journal_mode = WAL").fetchone()
    memory("export", "--db", source, "-q", tmp_path / "b.json")
    pristine, files = target.read_bytes(), sorted(p.name for p in tmp_path.iterdir())
    dry = memory("import", "--db", target, *args, "--dry-run", "--json", tmp_path / "b.json")
    assert dry.exit_code == 0, dry.output
    assert target.read_bytes() == pristine          # the main file; and no -wal, -shm or -journal left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    real = memory("import", "--db", target, *args, "--json", tmp_path / "b.json")
    assert json.loads(dry.stdout) == {**json.loads(real.stdout), "dryRun": True}
    assert any(json.loads(real.stdout)["inserted"].values())


def test_dry_run_into_a_new_path_creates_nothing(tmp_path):
    machine(tmp_path / "b.db", "b")
    memory("export", "--db", tmp_path / "b.db", "-q", tmp_path / "b.json")
    dry = memory("import", "--db", tmp_path / "new" / "m.db", "--dry-run", tmp_path / "b.json")
    assert dry.stdout.startswith("Would import 23 records: 23 inserted, 0 skipped\n"
                                 f"from {tmp_path / 'b.json'}\n"
                                 f"would go into new database {tmp_path / 'new' / 'm.db'}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db", "b.json"]
    real = memory("import", "--db", tmp_path / "new" / "m.db", tmp_path / "b.json")
    assert real.stdout == dry.stdout.replace("Would import", "Imported").replace("would go into", "into")


def test_merging_with_an_sqlite_older_than_3_33_is_refused_saying_so(tmp_path, monkeypatch):
    target, source = machine(tmp_path / "a.db", "a"), machine(tmp_path / "b.db", "b")
    memory("export", "--db", source, "-q", tmp_path / "b.json")
    before = snapshot(target)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    result = memory("import", "--db", target, "-y", tmp_path / "b.json")
    assert (result.exit_code, result.stderr) == (
        1, "Error: merging needs SQLite 3.33 or newer (UPDATE ... FROM); this Python has 3.31.1\n")
    assert snapshot(target) == before


@needs_compat
@pytest.mark.parametrize("mode", ["skip", "replace"])
def test_the_real_memory_nexus_database_merges_into_another_machines(tmp_path, mode):
    """Its backup as memory writes it (1.1: with topics), into machine a, whose topic 1 is also 'backups'."""
    memory("export", "--db", COMPAT_DB, "-q", tmp_path / "real.json")
    target = machine(tmp_path / "a.db", "a")
    mine, theirs = facts(target), facts(COMPAT_DB)
    result = memory("import", "--db", target, "-y", "--on-conflict", mode, tmp_path / "real.json")
    assert result.exit_code == 0, result.output
    assert facts(target) == (union(theirs, mine) if mode == "replace" else union(mine, theirs))
    assert snapshot(target) == restored(target, tmp_path)


DANGLING = {   # b's backup plus one record naming an id of b that is not in the file; merged into a, that id is
    # kept as it is and names what another record of b names once b's ids are mapped to a's.
    "links": (3, {"id": 9, "sourceType": "topic", "sourceId": "3", "targetType": "session", "targetId": "b-1",
                  "relationship": "related_to", "weight": 1.0},
              "links[3]: once the file's ids are mapped to the database's, it is the same as links[1]: its sourceId "
              "'3' is not in the file's topics and is kept as it is; nothing was imported"),
    "sessionEntities": (0, {"sessionId": "b-1", "entityId": 5, "frequency": 7},
                        "sessionEntities[2]: once the file's ids are mapped to the database's, it is the same as "
                        "sessionEntities[0]: sessionEntities[0]'s entityId 5 is not in the file's entities and is "
                        "kept as it is; nothing was imported"),
    "entityLinks": (2, {"sourceId": 5, "targetId": 2, "relationship": "implies", "weight": 0.5},
                    "entityLinks[2]: once the file's ids are mapped to the database's, it is the same as "
                    "entityLinks[0]: its sourceId 5 is not in the file's entities and is kept as it is; nothing was "
                    "imported"),
}


@pytest.mark.parametrize("batch", [2000, 1], ids=["one-batch", "batch-by-batch"])
@pytest.mark.parametrize("mode", ["skip", "replace"])
@pytest.mark.parametrize("table", sorted(DANGLING))
def test_a_record_naming_an_id_the_file_lacks_that_meets_another_once_ids_are_mapped_is_refused(
        tmp_path, monkeypatch, table, mode, batch):
    """Found by review: a's topic 3 is what b's topic 2 ('zstd') becomes, and b's link '2' -> b-1 then is the
    link '3' -> b-1 the file also holds (topic 3 is not in it); the merge kept one of the two and said nothing,
    where an import into an empty database keeps both (links hold topic ids as text, with no foreign key). The
    same with entity ids (b's 3, 'quokka', becomes a's 5), which an empty import refuses (a foreign key): the
    merge took one of the two records."""
    monkeypatch.setattr("pipeline.records.BATCH", batch)
    at, record, message = DANGLING[table]
    def edit(doc):
        doc[table].insert(at, record)
        doc["stats"][table] += 1
    target, backup = both_ways_with(tmp_path, edit)
    empty = memory("import", "--db", tmp_path / "empty.db", "-q", backup)
    assert (empty.exit_code, empty.stderr) == ((0, "") if table == "links" else (1, (
        f"Error: {table}[{at}]: FOREIGN KEY constraint failed: it names a row that is neither in the database nor "
        "earlier in the file\n")))
    refused(target, backup, message, "--on-conflict", mode)


@pytest.mark.parametrize("mode", ["skip", "replace"])
def test_a_link_naming_a_topic_the_file_lacks_that_meets_no_other_is_merged_as_it_is(tmp_path, mode):
    """The check above refuses only a meeting: a topic id the file does not hold is kept as it is, as before."""
    link = {**DANGLING["links"][1], "sourceId": "7"}
    def edit(doc):
        doc["links"].append(link)
        doc["stats"]["links"] += 1
    target, backup = both_ways_with(tmp_path, edit)
    result = memory("import", "--db", target, "-y", "-q", "--on-conflict", mode, backup)
    assert (result.exit_code, result.stderr) == (0, "")
    assert sqlite3.connect(target).execute("SELECT source_type, source_id, target_id FROM links WHERE source_id = '7'"
                                           ).fetchall() == [("topic", "7", "b-1")]
