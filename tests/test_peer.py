"""Compatibility proven with the real memory-nexus 0.1.2 (scripts/peer.py), on the real memory-nexus database
and on a database grown from it: each program reads what the other writes, row for row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import COMPAT_DB, SAMPLE, TYPED_SAMPLE, memory, peer_script, unavailable

from pipeline import search_index
from pipeline.tables import TABLES

# The arrays memory-nexus 0.1.2 writes and reads: all but topics (test_the_peer_writes_the_tables_compared
# holds it to that). Of each, the columns a 1.0 file carries.
PEER_TABLES = tuple(t for t in TABLES if t.key != "topics")
# Words found in the real database (by 2, 104 and 158 messages) and one only in the grown one; the peer starts
# once per word, so a few.
WORDS = ("linter", "Elixir", "LiveView", "grown")
SEARCH_LIMIT = 20
TYPED_VALUE_REFUSED = "Error: Binding expected string, TypedArray, boolean, number, bigint or null\n"

GROW = """
-- every session from the fifth on again, under new ids, with its messages, tool uses and extraction state
INSERT INTO sessions (id, project_path_encoded, project_path_decoded, project_name, start_time, end_time,
                      message_count, summary)
    SELECT 'grown-' || id, project_path_encoded, project_path_decoded, 'grown ' || project_name, start_time,
           end_time, message_count, summary FROM sessions WHERE rowid >= 5 ORDER BY rowid;
INSERT INTO messages_meta (id, session_id, role, content, timestamp, tool_use_ids)
    SELECT 'grown-' || id, 'grown-' || session_id, role, content || ' (grown copy)', timestamp, tool_use_ids
    FROM messages_meta WHERE 'grown-' || session_id IN (SELECT id FROM sessions) ORDER BY rowid;
INSERT INTO tool_uses SELECT 'grown-' || id, 'grown-' || session_id, name, input, timestamp, status, result
    FROM tool_uses WHERE 'grown-' || session_id IN (SELECT id FROM sessions) ORDER BY rowid;
INSERT INTO extraction_state SELECT 'grown-' || id, session_path || '.grown', started_at, status, completed_at,
    messages_extracted, error_message, file_mtime, file_size FROM extraction_state ORDER BY rowid;
-- gaps in the message rowids, which a 1.0 file does not carry
DELETE FROM messages_meta WHERE rowid BETWEEN 100 AND 110;
-- NULL wherever a column allows it, and text that trips naive tools
INSERT INTO sessions VALUES ('grown-nulls', '-grown', '/grown', 'grown', '2026-11-24T00:00:00Z', NULL, NULL,
                             NULL, NULL, NULL);
INSERT INTO messages_meta (id, session_id, role, content, timestamp, tool_use_ids) VALUES
    ('grown-odd-1', 'grown-nulls', 'user', 'grown: 🙂 astral, U+2028 [' || char(8232) || '], tab [' || char(9)
     || '], "quotes" \\ backslash, CRLF' || char(13, 10) || 'end', '2026-11-24T00:00:01Z', NULL),
    ('grown-odd-2', 'grown-nulls', 'assistant', '', '2026-11-24T00:00:02Z', '["a","b"]');
INSERT INTO tool_uses VALUES ('grown-tool', 'grown-nulls', 'Bash', '{"command":"ls"}', '2026-11-24T00:00:03Z',
                              'pending', NULL);
INSERT INTO entities (type, name, metadata, confidence) VALUES
    ('term', 'grown term', NULL, NULL), ('file', 'grown/ファイル.py', '{"lines":1}', 0.0),
    ('decision', 'grown decision', '{}', 1.0);
INSERT INTO links (source_type, source_id, target_type, target_id, relationship, weight) VALUES
    ('session', 'grown-nulls', 'message', 'grown-odd-1', 'mentions', NULL),
    ('message', 'grown-odd-2', 'topic', '2', 'related_to', 0.0);
INSERT INTO session_entities VALUES ('grown-nulls', 6, NULL), ('grown-nulls', 7, 12);
INSERT INTO entity_links VALUES (6, 7, 'related', NULL), (7, 8, 'contradicts', 1.0);
INSERT INTO extraction_state VALUES ('grown-state', '/grown.jsonl', '2026-11-24T00:00:00Z', 'error', NULL, NULL,
                                     'disk full', NULL, NULL);
"""


def copy_database(source: Path, target: Path) -> Path:
    """A whole copy through SQLite's backup API (the source may be read-only, or have a WAL beside it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return target


def peer_home(folder: Path, database: Path | None = None) -> Path:
    """A HOME for the peer, holding a copy of `database` where the peer looks for it (or nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    if database is not None:
        copy_database(database, peer_script.database(folder))
    return folder


def rows_in_1_0(db: Path) -> dict[str, list[tuple]]:
    """Every row of the tables memory-nexus carries, in rowid order, as (value, SQLite type) of each column a
    1.0 file carries."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = {}
    for table in PEER_TABLES:
        columns = ", ".join(f'"{c.name}", typeof("{c.name}")' for c in table.columns_in(0))
        rows[table.name] = conn.execute(f'SELECT {columns} FROM "{table.name}" ORDER BY rowid').fetchall()
    conn.close()
    return rows


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    found = {t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0] for t in TABLES}
    found["messages_fts"] = conn.execute("SELECT count(*) FROM messages_fts_docsize").fetchone()[0]
    conn.close()
    return found


def searches(peer, home: Path) -> dict[str, list[dict]]:
    """What the peer's `search --json` finds for each of WORDS."""
    found = {}
    for word in WORDS:
        code, out, err = peer.search(home, word, limit=SEARCH_LIMIT)
        assert (code, err) == (0, ""), (word, out, err)
        found[word] = json.loads(out)
    return found


def records(export: Path) -> dict:
    """A peer export file without the moment it was written."""
    content = json.loads(export.read_text(encoding="utf-8"))
    del content["exportedAt"]
    return content


# Module-scoped: each database below is set up once per source and only read by the tests.

@pytest.fixture(scope="module", params=["real", "grown"])
def source(request, tmp_path_factory) -> Path:
    """../shared/compat/memory-nexus.db, or a copy grown by GROW."""
    if not COMPAT_DB.exists():
        unavailable("../shared/compat is not beside the project")
    db = copy_database(COMPAT_DB, tmp_path_factory.mktemp(request.param) / "source.db")
    if request.param == "grown":
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.executescript(GROW)
        conn.close()
    return db


@pytest.fixture(scope="module")
def ours(source) -> Path:
    """Our `memory export` of the source."""
    path = source.parent / "ours.json"
    result = memory("export", "--db", source, path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def peer_on_source(peer, source) -> Path:
    """A HOME in which the peer opens a copy of the source."""
    return peer_home(source.parent / "home-source", source)


@pytest.fixture(scope="module")
def peer_import_of_ours(peer, ours) -> Path:
    """A HOME in which the peer imported our export into a new database."""
    home = peer_home(ours.parent / "home-ours")
    code, out, err = peer.import_(home, ours)
    assert (code, err) == (0, ""), out
    return home


@pytest.fixture(scope="module")
def peer_export(peer, peer_on_source) -> Path:
    """The peer's own export of the source."""
    path = peer_on_source.parent / "theirs.json"
    code, out, err = peer.export(peer_on_source, path)
    assert (code, err) == (0, ""), out
    return path


@pytest.fixture(scope="module")
def searched_on_source(peer, source, peer_on_source) -> dict[str, list[dict]]:
    found = searches(peer, peer_on_source)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as conn:    # no vacuous comparison
        for word in WORDS:
            matches = conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (word,))
            assert len(found[word]) == min(SEARCH_LIMIT, matches.fetchone()[0]), word
    conn.close()
    assert all(found[word] for word in WORDS[:-1])
    return found


def test_the_peer_writes_the_tables_compared(peer_export):
    with open(peer_export, encoding="utf-8") as file:
        keys = list(json.load(file))
    assert keys == ["version", "exportedAt", "stats", *(t.key for t in PEER_TABLES)]


def test_the_peer_imports_our_export_into_a_new_database(source, peer_import_of_ours):
    assert rows_in_1_0(peer_script.database(peer_import_of_ours)) == rows_in_1_0(source)
    assert counts(source)["topics"] == 3 and counts(peer_script.database(peer_import_of_ours))["topics"] == 0


def test_the_peer_imports_our_export_with_clear_over_an_existing_database(peer, source, ours, tmp_path):
    home = peer_home(tmp_path)
    assert peer.import_(home, SAMPLE)[0] == 0
    assert counts(peer_script.database(home))["sessions"] > 0
    code, out, err = peer.import_(home, ours, clear=True)
    assert (code, err) == (0, "")
    n = counts(source)
    assert out.splitlines()[0] == f"Replaced {n['sessions']} sessions, {n['messages_meta']} messages from {ours}"
    assert rows_in_1_0(peer_script.database(home)) == rows_in_1_0(source)


def test_the_peer_finds_the_same_messages_in_its_import_of_ours(peer, peer_import_of_ours, searched_on_source):
    assert searches(peer, peer_import_of_ours) == searched_on_source


def test_the_peer_export_imports_into_ours_equal_to_the_source(source, peer_export, tmp_path):
    result = memory("import", "--db", tmp_path / "ours.db", peer_export)
    assert result.exit_code == 0, result.output
    assert rows_in_1_0(tmp_path / "ours.db") == rows_in_1_0(source)


@pytest.mark.parametrize("index", ["0", "1"], ids=["index rebuilt", "index built beside"])
def test_the_peer_opens_searches_and_exports_a_database_we_restored(peer, ours, peer_export, searched_on_source,
                                                                  tmp_path, monkeypatch, index):
    monkeypatch.setenv(search_index.ENV, index)
    home = tmp_path / "home"
    result = memory("import", "--db", peer_script.database(home), ours)
    assert result.exit_code == 0, result.output
    assert searches(peer, home) == searched_on_source
    code, out, err = peer.export(home, tmp_path / "again.json")
    assert (code, err) == (0, "")
    assert records(tmp_path / "again.json") == records(peer_export)


@pytest.fixture(params=["typed sample", "our export of a BLOB"])
def typed_file(request, source, tmp_path) -> Path:
    """A file holding typed values: the hand-made sample, or our export of the source with one BLOB in it."""
    if request.param == "typed sample":
        return TYPED_SAMPLE
    db = copy_database(source, tmp_path / "blob.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE messages_meta SET tool_use_ids = x'00ff' WHERE rowid = (SELECT max(rowid) "
                     "FROM messages_meta)")
    conn.close()
    assert memory("export", "--db", db, tmp_path / "blob.json").exit_code == 0
    assert '{"$blob":"AP8="}' in (tmp_path / "blob.json").read_text(encoding="utf-8")
    return tmp_path / "blob.json"


def test_the_peer_refuses_typed_values_and_its_clear_then_empties_its_database(peer, source, typed_file, tmp_path):
    new = peer_home(tmp_path / "new")
    assert peer.import_(new, typed_file) == (1, "", TYPED_VALUE_REFUSED)
    assert set(counts(peer_script.database(new)).values()) == {0}      # its one transaction rolled back
    existing = peer_home(tmp_path / "existing", source)
    before = rows_in_1_0(peer_script.database(existing))
    assert peer.run(existing, "import", typed_file, "--force") == (1, "", TYPED_VALUE_REFUSED)
    assert rows_in_1_0(peer_script.database(existing)) == before                # merging: rolled back
    assert counts(peer_script.database(existing))["messages_meta"] > 0
    assert peer.import_(existing, typed_file, clear=True) == (1, "", TYPED_VALUE_REFUSED)
    # What memory-nexus 0.1.2 does, and README warns of: it deleted everything outside that transaction.
    assert set(counts(peer_script.database(existing)).values()) == {0}
