"""Backup sets: `memory list` of a folder, `memory import DIR` of its newest whole backup, and retention by
the calendar as restic's `forget` keeps (the expected sets written by hand, and by a reference of our own)."""

import json
import os
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zstandard
from conftest import SAMPLE, make_database, memory, snapshot

from pipeline.backup import Retention, backup_name, own_backups, rotate

DAY = datetime(2026, 11, 1, 3, 15, tzinfo=timezone.utc)
LOOK_ALIKES = ["notes.txt", "memory-latest.json", "memory-20261105T031500Z.json",
               "memory-20261105T031500.000000Z.json.bak", "Memory-20261105T031500.000000Z.json",
               "memory-20261105T031500.000000Z.json.zst.tmp"]
MISMATCH = ("the file changed after it was written (checksum mismatch); if you edited it on purpose, pass "
            "--ignore-checksum")


def exported(db: Path, path: Path) -> Path:
    result = memory("export", "--db", db, path)
    assert result.exit_code == 0, result.output
    return path


def named(folder: Path, days: int, ext: str) -> Path:
    return folder / f"memory-{(DAY + timedelta(days=days)).strftime('%Y%m%dT%H%M%S.%fZ')}{ext}"


def exported_at(path: Path) -> str:
    """exportedAt as the file's first bytes say it, read without the code under test."""
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    elif data[:2] == b"\x1f\x8b":
        import gzip
        data = gzip.decompress(data)
    return re.search(rb'"exportedAt":"([^"]+)"', data)[1].decode()


@pytest.fixture
def folder(tmp_path, sample_db):
    """Four backups of ours (the newest cut short, the next with a checksum mismatch, then two whole ones),
    a look-alike holding a real backup, other files and a directory with one of our names."""
    bigger = make_database(tmp_path / "bigger.db", sessions=3, messages_per_session=40)
    folder = tmp_path / "backups"
    folder.mkdir()
    files = {}
    files["A"] = exported(sample_db, named(folder, 0, ".json.zst"))
    files["B"] = exported(bigger, named(folder, 1, ".jsonl.gz"))
    plain = exported(sample_db, tmp_path / "plain.json").read_bytes()
    flipped = plain.replace(b"How do I back", b"How do I pack")
    assert flipped != plain
    files["C"] = named(folder, 2, ".json.zst")
    files["C"].write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(flipped))
    whole = exported(bigger, tmp_path / "whole.jsonl").read_bytes()
    files["D"] = named(folder, 3, ".jsonl")
    files["D"].write_bytes(whole[: len(whole) * 2 // 3])
    for name in LOOK_ALIKES:
        shutil.copyfile(files["A"] if name.endswith(".json") else SAMPLE, folder / name)
    (folder / "memory-20261106T031500.000000Z.json").mkdir()
    return folder, files


LINES = [   # newest first; the sizes as the fixture's files have them
    "2026-11-04 03:15:00 UTC  22.1 kB  3 sessions  120 messages  jsonl       memory-20261104T031500.000000Z.jsonl",
    "2026-11-03 03:15:00 UTC   1.4 kB  2 sessions    5 messages  json zstd   memory-20261103T031500.000000Z.json.zst",
    "2026-11-02 03:15:00 UTC   2.5 kB  3 sessions  120 messages  jsonl gzip  memory-20261102T031500.000000Z.jsonl.gz",
    "2026-11-01 03:15:00 UTC   1.4 kB  2 sessions    5 messages  json zstd   memory-20261101T031500.000000Z.json.zst",
]
CUT = ("messages[81]: the file is cut short or corrupt (line contains invalid json: Unterminated string starting "
       "at: line 1 column 110 (char 109) (line 86))")


def test_list_shows_exactly_our_backups_newest_first_reading_only_their_headers(folder):
    folder, _ = folder
    before = listing(folder)
    result = memory("list", folder)
    assert (result.exit_code, result.stderr) == (0, "")    # D is cut short and C changed: headers read only
    assert result.stdout.splitlines() == LINES
    assert listing(folder) == before


def test_list_json_gives_path_time_size_layout_and_counts(folder):
    folder, f = folder
    result = memory("list", "--json", folder)
    assert (result.exit_code, result.stderr) == (0, "")
    small = {"sessions": 2, "messages": 5, "toolUses": 2, "entities": 3, "links": 2, "sessionEntities": 2,
             "entityLinks": 1, "extractionStates": 2, "topics": 0}
    big = {"sessions": 3, "messages": 120, "toolUses": 3, "entities": 1, "links": 1, "sessionEntities": 1,
           "entityLinks": 0, "extractionStates": 0, "topics": 1}
    expected = [(f["D"], "jsonl", "none", big), (f["C"], "json", "zstd", small), (f["B"], "jsonl", "gzip", big),
                (f["A"], "json", "zstd", small)]
    assert json.loads(result.stdout) == [
        {"path": str(path), "exportedAt": exported_at(path), "bytes": path.stat().st_size, "format": fmt,
         "compression": compression, "version": "1.2", "stats": stats, "fault": None}
        for path, fmt, compression, stats in expected]


def test_list_check_marks_the_damaged_ones_and_exits_1(folder):
    folder, f = folder
    before = listing(folder)
    result = memory("list", "--check", folder)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {folder}: 2 of its 4 backups fail (marked BAD)\n"
    assert result.stdout.splitlines() == [
        LINES[0] + f"     BAD: {CUT}", LINES[1] + f"  BAD: {MISMATCH}", LINES[2] + "  ok", LINES[3] + "  ok"]
    data = json.loads(memory("list", "--check", "--json", folder).stdout)
    assert [(d["path"], d["fault"]) for d in data] == [
        (str(f["D"]), CUT), (str(f["C"]), MISMATCH), (str(f["B"]), None), (str(f["A"]), None)]
    assert listing(folder) == before


def test_list_marks_a_file_whose_header_cannot_be_read(tmp_path):
    (tmp_path / "memory-20261101T031500.000000Z.json.gz").write_bytes(b"")
    (tmp_path / "memory-20261102T031500.000000Z.json").write_bytes(b"[1, 2]")
    result = memory("list", tmp_path)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "2026-11-02 03:15:00 UTC  6 B  ?  ?  json       memory-20261102T031500.000000Z.json     BAD: not a memory "
        "backup: the JSON document is not an object",
        "2026-11-01 03:15:00 UTC  0 B  ?  ?  json gzip  memory-20261101T031500.000000Z.json.gz  BAD: the file is "
        "empty"]
    assert result.stderr == f"Error: {tmp_path}: 2 of its 2 backups cannot be read (marked BAD)\n"


def test_list_of_a_folder_without_backups_and_of_no_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = memory("list", tmp_path)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", f"{tmp_path} holds no backup of memory's\n")
    assert memory("list", "--json", tmp_path).stdout == "[]\n"
    result = memory("list", tmp_path / "none")
    assert result.exit_code == 2 and f"Directory '{tmp_path / 'none'}' does not exist" in result.stderr


@pytest.mark.parametrize("command", ["import", "restore"])
def test_import_dir_restores_the_newest_whole_backup_and_names_the_damaged_ones(tmp_path, folder, command):
    folder, f = folder
    expected = tmp_path / "expected.db"
    assert memory("import", "--db", expected, f["B"]).exit_code == 0
    before = listing(folder)
    result = memory(command, "--db", tmp_path / "restored.db", folder)
    assert result.exit_code == 0, result.output
    assert result.stdout == ("Imported 3 sessions, 120 messages, 3 tool uses, 1 entity, 1 link, 1 session entity, "
                             f"1 topic, 0 entity links, 0 extraction states (0 skipped) from {f['B']}\n")
    assert result.stderr == f"passed over {f['D']}: {CUT}\npassed over {f['C']}: {MISMATCH}\n"
    assert snapshot(tmp_path / "restored.db") == snapshot(expected)
    assert listing(folder) == before


def test_import_dir_follows_the_merge_and_clear_rules(tmp_path, folder, sample_db):
    folder, f = folder
    expected = tmp_path / "expected.db"
    memory("import", "--db", expected, f["B"])
    before = snapshot(sample_db)
    refused = memory("import", "--db", sample_db, folder)        # has data, no --yes, no terminal
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1] == (f"Error: {sample_db} already has 2 sessions and 5 messages; pass "
                                                "--yes to merge into it or --clear to replace it")
    assert snapshot(sample_db) == before
    cleared = memory("import", "--db", sample_db, "--clear", "--json", folder)
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(cleared.stdout)["path"] == str(f["B"])
    assert snapshot(sample_db) == snapshot(expected)


def test_import_dir_without_backups_of_ours_fails_and_creates_nothing(tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir()
    for name in LOOK_ALIKES:
        shutil.copyfile(SAMPLE, folder / name)
    result = memory("import", "--db", tmp_path / "new.db", folder)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"Error: {folder}: no backup of memory's here (it restores the files memory backup "
                             "names memory-<UTC time>.json.zst and the like)\n")
    assert not (tmp_path / "new.db").exists()


def test_import_dir_with_only_damaged_backups_fails_naming_each(tmp_path, folder, sample_db):
    folder, f = folder
    f["A"].unlink(), f["B"].unlink()
    future = folder / "memory-20990101T000000.000000Z.json.zst"
    shutil.copyfile(f["C"], future)
    before = snapshot(sample_db)
    for db in (tmp_path / "new.db", sample_db):
        result = memory("import", "--db", db, "--clear", folder)
        assert (result.exit_code, result.stdout) == (1, "")
        assert result.stderr == (
            f"passed over {future}: named for a time in the future (was the clock wrong?), so not trusted to be "
            "the newest; restore it by its path if it is the one you want\n"
            f"passed over {f['D']}: {CUT}\npassed over {f['C']}: {MISMATCH}\n"
            f"Error: {folder}: none of its 3 backups can be restored; each is named above with its fault\n")
    assert not (tmp_path / "new.db").exists()
    assert snapshot(sample_db) == before


def listing(folder: Path) -> list:
    """Every name in the folder with its bytes, mode and modification time."""
    return sorted((p.name, p.is_dir(), p.is_dir() or p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
                  for p in folder.iterdir())
