"""`memory backup` and `memory stats` as cron runs them: rotation, zstd, exit statuses, no terminal."""

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from conftest import SAMPLE, memory, snapshot
from platforms import command

from pipeline.backup import backup_name, own_backups

pytestmark = pytest.mark.usefixtures("platform")     # natively, and as on macOS and Windows (tests/platforms.py)


def test_backup_writes_a_validated_zstd_file_and_prints_its_path(tmp_path, sample_db):
    result = memory("backup", "--db", sample_db, tmp_path / "backups")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "backups").iterdir()
    assert result.stdout == f"{path}\n"
    assert path.name.startswith("memory-") and path.name.endswith(".json.zst")
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert path.stat().st_mode & 0o777 == 0o600
    memory("import", "--db", tmp_path / "restored.db", path)
    assert snapshot(tmp_path / "restored.db") == snapshot(sample_db)


def test_rotation_keeps_exactly_n_and_never_touches_other_files(tmp_path, sample_db):
    folder = tmp_path / "backups"
    folder.mkdir()
    others = ["notes.txt", "memory-latest.json", "memory-20200101T000000Z.json", "other.json.zst"]
    for name in others:
        (folder / name).write_text("not ours")
    old = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for day in range(4):   # four older backups of ours, as earlier runs left them
        (folder / backup_name("json", "zstd", old + timedelta(days=day))).write_text("old")
    result = memory("backup", "--db", sample_db, "--keep", "3", "--json", folder)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [os.path.basename(p) for p in report["removed"]] == [
        backup_name("json", "zstd", old + timedelta(days=d)) for d in range(2)]
    kept = own_backups(folder)
    assert [p.name for p in kept][:2] == [backup_name("json", "zstd", old + timedelta(days=d)) for d in (2, 3)]
    assert str(kept[-1]) == report["path"] and report["counts"]["messages"] == 5
    assert sorted(p.name for p in folder.iterdir() if p not in kept) == sorted(others)
    for name in others:
        assert (folder / name).read_text() == "not ours"


def test_two_backups_in_one_second_do_not_overwrite_each_other(tmp_path, sample_db):
    paths = {memory("backup", "--db", sample_db, "-q", tmp_path).stdout for _ in range(3)}
    assert len(paths) == 3 and len(own_backups(tmp_path)) == 3


def test_the_newest_backup_restores_exactly_with_clear(tmp_path, sample_db):
    for fmt, compress in (("jsonl", "gzip"), ("json", "none"), ("jsonl", "zstd")):
        memory("backup", "--db", sample_db, "--format", fmt, "--compress", compress, tmp_path / "b")
    newest = own_backups(tmp_path / "b")[-1]
    assert newest.name.endswith(".jsonl.zst")
    other = tmp_path / "other.db"
    memory("import", "--db", other, SAMPLE)
    assert memory("import", "--db", other, "--clear", newest).exit_code == 0
    assert snapshot(other) == snapshot(sample_db)


def test_backup_of_a_missing_database_fails_and_writes_nothing(tmp_path):
    result = memory("backup", "--db", tmp_path / "none.db", tmp_path / "b")
    assert (result.exit_code, result.stderr) == (1, f"Error: no database at {tmp_path / 'none.db'}\n")
    assert not (tmp_path / "b").exists()


def test_backup_from_cron_no_terminal_no_stdin(tmp_path, sample_db, platform):
    env = {k: v for k, v in os.environ.items() if k != "MEMORY_DB"} | {"MEMORY_DB": str(sample_db)}
    run = subprocess.run([*command(platform), "backup", "--progress", str(tmp_path)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{own_backups(tmp_path)[0]}\n"
    assert run.stderr == "Exporting: 19 of 19 records (100%)\nChecking: 19 of 19 records (100%)\n"


@pytest.mark.parametrize("name", ["b.json.zst", "b.jsonl.zst"])
def test_zstd_round_trip_through_export_validate_import(tmp_path, sample_db, name):
    assert memory("export", "--db", sample_db, tmp_path / name).exit_code == 0
    assert (tmp_path / name).read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert memory("validate", tmp_path / name).exit_code == 0
    assert memory("import", "--db", tmp_path / "r.db", tmp_path / name).exit_code == 0
    assert snapshot(tmp_path / "r.db") == snapshot(sample_db)


def test_zstd_piped_through_stdin(tmp_path, sample_db):
    memory("export", "--db", sample_db, tmp_path / "b.json.zst")
    result = memory("import", "--db", tmp_path / "r.db", "--format", "json", "-",
                    input=(tmp_path / "b.json.zst").read_bytes())
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path / "r.db") == snapshot(sample_db)


def test_a_cut_zstd_file_is_refused(tmp_path, sample_db):
    memory("export", "--db", sample_db, tmp_path / "b.json.zst")
    data = (tmp_path / "b.json.zst").read_bytes()
    (tmp_path / "cut.json.zst").write_bytes(data[: len(data) // 2])
    result = memory("validate", tmp_path / "cut.json.zst")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "cut short or corrupt" in result.stderr
    assert result.stderr.count("\n") == 1


def test_stats(tmp_path, sample_db):
    result = memory("stats", "--db", sample_db)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{sample_db} (") and lines[0].endswith(" kB)")
    assert lines[1:] == [
        "  sessions                      2",
        "  messages                      5",
        "  tool uses                     2",
        "  entities                      3",
        "  links                         2",
        "  session entities              2",
        "  entity links                  1",
        "  extraction states             2",
        "  topics                        0",
        "newest session: 2026-11-02T14:00:00.000Z"]
    data = json.loads(memory("stats", "--db", sample_db, "--json").stdout)
    assert data["counts"]["messages"] == 5 and data["newestSession"] == "2026-11-02T14:00:00.000Z"
    assert data["bytes"] >= sample_db.stat().st_size


@pytest.mark.parametrize("odd, shown", [("CAST(x'32303237ff' AS TEXT)", "2027\ufffd"), ("x'3230323801'", None)])
def test_stats_shows_a_start_time_that_is_not_utf8_or_a_blob_without_failing(tmp_path, sample_db, odd, shown):
    sqlite3.connect(sample_db, isolation_level=None).execute(f"UPDATE sessions SET start_time = {odd} WHERE rowid = 1")
    result = memory("stats", "--db", sample_db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["newestSession"] == (shown or "2026-11-02T14:00:00.000Z")


def test_stats_of_a_missing_database(tmp_path):
    result = memory("stats", "--db", tmp_path / "x.db")
    assert (result.exit_code, result.stderr) == (1, f"Error: no database at {tmp_path / 'x.db'}\n")
    assert not (tmp_path / "x.db").exists()
