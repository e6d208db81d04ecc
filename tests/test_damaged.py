"""A damaged database: never an exit-0 export, never a traceback; one line that says what to run on it."""

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline import export
from conftest import COMPAT_DB, ROOT, SAMPLE, make_database, memory, needs_compat

pytestmark = pytest.mark.usefixtures("export_path")   # every export on one core and on two

HINT = "the database is damaged; check it with sqlite3 {db} 'PRAGMA integrity_check' and save what can be read " \
       "with sqlite3 {db} .recover"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Enough messages for many leaf pages in the table and in its indexes."""
    return make_database(tmp_path_factory.mktemp("source") / "source.db", sessions=4, messages_per_session=200)


def leaves(db, name):
    """(page number, cells) of each leaf page of a table or index b-tree, by the dbstat virtual table."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                            "ORDER BY pageno", (name,)).fetchall()


def page_size(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA page_size").fetchone()[0]


def damage(source, db, name, pick):
    """A copy of `source` at `db` with one leaf page of `name` overwritten: pick(leaves, size) -> (page, bytes)."""
    shutil.copy(source, db)
    size = page_size(db)
    with open(db, "r+b") as f:
        def read(page):
            f.seek((page - 1) * size)
            return f.read(size)
        target, data = pick(leaves(db, name), size, read)
        f.seek((target - 1) * size)
        f.write(data)
    return db


def copied_over_other_count(pages, size, read):      # rows twice, others lost, and the count differs
    a = next(p for p, n in pages if n == 27)
    b = next(p for p, n in pages if n == 26 and p > a)
    return b, read(a)


def copied_over_same_count(pages, size, read):       # the same number of rows: only their order tells
    same = [p for p, n in pages if n == 26]
    return same[3], read(same[1])


def index_page_copied(pages, size, read):            # the table is whole; the count SQLite takes differs
    a, b = next((a, b) for a in pages for b in pages if a[1] > b[1])
    return b[0], read(a[0])


def garbage(pages, size, read):
    return pages[5][0], bytes(range(256)) * (size // 256)


DAMAGE = [
    ("copied-page", "messages_meta", copied_over_other_count, "messages: rowid 1 read after rowid 54"),
    ("copied-page-same-count", "messages_meta", copied_over_same_count, "messages: rowid 81 read after rowid 106"),
    ("index-page", "idx_messages_timestamp", index_page_copied, "messages: 800 rows read but the table counts 816"),
    ("garbage", "messages_meta", garbage, "messages: database disk image is malformed"),
]


@pytest.mark.parametrize("name, btree, pick, seen", DAMAGE, ids=[d[0] for d in DAMAGE])
@pytest.mark.parametrize("fmt", ["json", "jsonl.gz"])
def test_export_of_a_damaged_database_fails_and_leaves_the_old_backup(tmp_path, source, name, btree, pick, seen,
                                                                         fmt):
    db = damage(source, tmp_path / "x.db", btree, pick)
    before = db.read_bytes()
    old = tmp_path / f"backup.{fmt}"
    old.write_bytes(b"yesterday's backup")
    result = memory("export", "--db", db, old)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {seen}: {HINT.format(db=db)}\n")
    assert old.read_bytes() == b"yesterday's backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([old.name, "x.db"])
    new = memory("export", "--db", db, tmp_path / "new.json")
    assert new.exit_code == 1 and not (tmp_path / "new.json").exists()
    assert db.read_bytes() == before


@pytest.mark.parametrize("rows", [1, 53, 54, 55])
@pytest.mark.parametrize("name, btree, pick, seen", DAMAGE[:3], ids=[d[0] for d in DAMAGE[:3]])
def test_damage_is_seen_where_it_falls_between_two_batches(tmp_path, source, monkeypatch, rows, name, btree, pick,
                                                           seen):
    """Export reads a batch of rows at a time (export.ROWS) and checks each batch's rowids in one go: the step
    back is seen as well where it falls between two batches (rowid 54 the last of one, rowid 1 the first of the
    next) as within one."""
    monkeypatch.setattr(export, "ROWS", rows)
    db = damage(source, tmp_path / "x.db", btree, pick)
    result = memory("export", "--db", db, tmp_path / "b.json")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {seen}: {HINT.format(db=db)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_a_damaged_database_whose_name_is_not_utf8_is_named_in_one_line(tmp_path, source):
    """Found by review: the message read the database's name back from SQLite (PRAGMA database_list), which
    sqlite3 could not decode: a traceback in place of the one line saying what to run."""
    db = Path(os.fsdecode(os.fsencode(tmp_path) + b"/x\xff.db"))
    damage(source, db, "messages_meta", garbage)
    result = memory("export", "--db", db, tmp_path / "b.json")
    shown = shlex.quote(str(db)).replace("\udcff", "\\udcff")
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: messages: database disk image is malformed: {HINT.format(db=shown)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]


@pytest.mark.parametrize("name", ["b.json", "b.json.gz", "b.jsonl.zst"])
def test_a_failed_export_leaves_nothing_for_python_s_finalizers_to_say(tmp_path, source, name):
    """Found running the suite on Python 3.13: an export failing midway left its compressor and buffer unclosed
    over the closed file; when they were collected, their flush failed and Python printed 'Exception ignored in:
    <gzip ...>' and a traceback after the one-line error. 3.13 reports what a finalizer's close() raises; 3.11
    does in development mode (-X dev), as here."""
    db = damage(source, tmp_path / "x.db", "messages_meta", garbage)
    run = subprocess.run([sys.executable, "-X", "dev", "-m", "pipeline", "export", "--db", str(db),
                          str(tmp_path / name)], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (
        1, "", f"Error: messages: database disk image is malformed: {HINT.format(db=db)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


QUICK_CHECK = {
    "copied-page": "PRAGMA quick_check: On tree page 6 cell 1: Rowid 54 out of order",
    "copied-page-same-count": "PRAGMA quick_check: On tree page 6 cell 3: Rowid 106 out of order",
    "garbage": "PRAGMA quick_check: database disk image is malformed",
}


@pytest.mark.parametrize("name, btree, pick, seen", [d for d in DAMAGE if d[0] in QUICK_CHECK],
                         ids=list(QUICK_CHECK))
def test_backup_and_export_check_run_quick_check_first(tmp_path, source, name, btree, pick, seen):
    db = damage(source, tmp_path / "x.db", btree, pick)
    before = db.read_bytes()
    for command in (["export", "--check", tmp_path / "out.json"], ["backup", tmp_path / "backups"]):
        result = memory(*command, "--db", db)
        assert (result.exit_code, result.stdout, result.stderr) == (
            1, "", f"Error: {QUICK_CHECK[name]}: {HINT.format(db=db)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "x.db"]
    # Only the folder's lock, which runs into it take turns on (never removed): no backup.
    assert [p.name for p in (tmp_path / "backups").iterdir()] == [".memory-backup.lock"]
    assert db.read_bytes() == before


def test_an_index_whole_but_disagreeing_is_not_seen_by_quick_check_but_by_the_counts(tmp_path, source):
    db = damage(source, tmp_path / "x.db", "idx_messages_timestamp", index_page_copied)
    result = memory("backup", "--db", db, tmp_path / "backups")
    assert (result.exit_code, result.stderr) == (
        1, f"Error: messages: 800 rows read but the table counts 816: {HINT.format(db=db)}\n")
    assert [p.name for p in (tmp_path / "backups").iterdir()] == [".memory-backup.lock"]   # the folder's lock only


@pytest.mark.parametrize("btree, command, seen", [
    ("idx_messages_timestamp", ["stats"], "counting rows: database disk image is malformed"),
    ("idx_messages_timestamp", ["import", "--yes", SAMPLE], "counting rows: database disk image is malformed"),
    ("idx_messages_timestamp", ["import", "--clear", SAMPLE], "counting rows: database disk image is malformed"),
    ("messages_meta", ["import", "--yes", SAMPLE],
     "checking foreign keys: database disk image is malformed; nothing was imported"),
    ("messages_meta", ["import", "--clear", SAMPLE],
     "emptying the database (--clear): database disk image is malformed; nothing was imported"),
])
def test_stats_and_import_of_a_malformed_database_are_one_line(tmp_path, source, btree, command, seen):
    db = damage(source, tmp_path / "x.db", btree, garbage)
    before = db.read_bytes()
    result = memory(*command, "--db", db)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {seen}: {HINT.format(db=db)}\n")
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


@needs_compat
def test_the_real_database_with_a_messages_page_copied_over_another(tmp_path):
    """As in the report: memory-nexus's own database, a messages page over another; exit 0 before, with 3,033
    messages written for 3,032."""
    def pick(pages, size, read):
        (a, na), (b, nb) = next((x, y) for x in pages for y in pages if x[1] > y[1])
        return b, read(a)
    db = damage(COMPAT_DB, tmp_path / "x.db", "messages_meta", pick)
    before = db.read_bytes()
    result = memory("export", "--db", db, tmp_path / "out.json")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith("Error: messages: rowid ")
    assert result.stderr.endswith(f": {HINT.format(db=db)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"] and db.read_bytes() == before
