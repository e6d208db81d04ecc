"""`memory backup` and `memory stats` as cron runs them: rotation, zstd, exit statuses, no terminal."""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zstandard as zstd
from conftest import SAMPLE, SAMPLE_TABLE, memory, snapshot
from platforms import command, lock_state

from pipeline import backup as backup_module
from pipeline.backup import Retention, backup_name, new_backup, own_backups, rotate

pytestmark = pytest.mark.usefixtures("platform")     # natively, and as on macOS and Windows (tests/platforms.py)


def test_backup_writes_a_validated_zstd_file_and_reports_it(tmp_path, sample_db):
    result = memory("backup", "--db", sample_db, tmp_path / "backups")
    assert result.exit_code == 0, result.output
    (path,) = own_backups(tmp_path / "backups")
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == [".memory-backup.lock", path.name]
    assert result.stdout == (f"Backed up 19 records ({path.stat().st_size / 1000:.1f} kB)\nto {path}\n"
                             f"from database {sample_db}\n" + SAMPLE_TABLE + "removed 0 old backups (--keep 7)\n")
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
    assert sorted(p.name for p in folder.iterdir() if p not in kept) == sorted(others + [".memory-backup.lock"])
    for name in others:
        assert (folder / name).read_text() == "not ours"



def test_a_database_named_as_a_backup_of_ours_is_never_removed_nor_listed(tmp_path, sample_db):
    """A database (this one, or any other) under a name of ours is not a backup: rotation leaves it, listing
    and a folder restore do not see it."""
    folder = tmp_path / "backups"
    folder.mkdir()
    database = folder / backup_name("json", "none", datetime(2020, 1, 1, tzinfo=timezone.utc))
    database.write_bytes(sample_db.read_bytes())
    pristine = database.read_bytes()
    result = memory("backup", "--db", database, "--keep", "1", "--json", folder)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"] == []
    assert database.read_bytes() == pristine
    assert own_backups(folder) == [Path(json.loads(result.stdout)["path"])]

def test_two_backups_in_one_second_do_not_overwrite_each_other(tmp_path, sample_db):
    paths = {json.loads(memory("backup", "--db", sample_db, "--json", tmp_path).stdout)["path"] for _ in range(3)}
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
    run = subprocess.run([*command(platform), "backup", "--quiet", "--progress", str(tmp_path)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    path = own_backups(tmp_path)[0]
    assert run.stdout == ""
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "
    assert re.fullmatch(
        f"{stamp}Exporting {path}: 0 of 19 records \\(0%\\)\n{stamp}Exporting {path}: 19 of 19 records \\(100%\\)\n"
        f"{stamp}Checking {path}: 0 of 19 records \\(0%\\)\n{stamp}Checking {path}: 19 of 19 records \\(100%\\)\n"
        f"{stamp}Backed up 19 records \\([0-9.]+ kB\\); to {path}; from database {sample_db}; "
        "removed 0 old backups \\(--keep 7\\)\n", run.stderr), run.stderr


@pytest.mark.parametrize("name", ["b.json.zst", "b.jsonl.zst"])
def test_zstd_round_trip_through_export_validate_import(tmp_path, sample_db, name):
    assert memory("export", "--db", sample_db, tmp_path / name).exit_code == 0
    assert (tmp_path / name).read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert memory("validate", tmp_path / name).exit_code == 0
    assert memory("import", "--db", tmp_path / "r.db", tmp_path / name).exit_code == 0
    assert snapshot(tmp_path / "r.db") == snapshot(sample_db)


@pytest.mark.parametrize("name", ["b.json.zst", "b.jsonl.zst"])
@pytest.mark.parametrize("how", ["skippable-frame", "pzstd"])
def test_a_zstd_file_that_starts_with_a_skippable_frame_is_read(tmp_path, sample_db, name, how):
    """Found by review: pzstd (zstd's parallel tool) starts every file with a skippable frame (magic 0x184D2A50 to
    0x184D2A5F), which zstd -t and zstd -d read past; we looked only for the zstd frame's magic, read the file as
    plain JSON and refused it as corrupt."""
    plain = tmp_path / name.removesuffix(".zst")
    assert memory("export", "--db", sample_db, plain).exit_code == 0
    packed = tmp_path / name
    if how == "pzstd":
        if not shutil.which("pzstd"):
            pytest.skip("no pzstd here")
        subprocess.run(["pzstd", "-q", str(plain), "-o", str(packed)], check=True)
    else:
        frame = zstd.ZstdCompressor(write_checksum=True).compress(plain.read_bytes())
        packed.write_bytes(b"\x5e\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"notes" + frame)
    assert packed.read_bytes()[1:4] == b"\x2a\x4d\x18"
    assert memory("validate", "-q", packed).exit_code == 0
    result = memory("import", "-q", "--db", tmp_path / "r.db", packed)
    assert (result.exit_code, result.output) == (0, "")
    assert snapshot(tmp_path / "r.db") == snapshot(sample_db)


def test_without_a_zstd_reader_plain_files_still_read_and_a_zst_is_one_line(tmp_path, sample_db, monkeypatch):
    """Found by review: once zstd was read with backports.zstd, every reading error (a cut plain .json) first
    imported it, and an install that predates the requirement failed with a traceback, zstd or not."""
    for name in ("backports", "backports.zstd", "compression", "compression.zstd"):
        monkeypatch.setitem(sys.modules, name, None)      # import fails, as where it is not installed
    memory("export", "--db", sample_db, tmp_path / "b.json")
    memory("export", "--db", sample_db, tmp_path / "b.json.zst")
    data = (tmp_path / "b.json").read_bytes()
    (tmp_path / "cut.json").write_bytes(data[: len(data) // 2])
    assert memory("validate", "-q", tmp_path / "b.json").exit_code == 0
    cut = memory("validate", tmp_path / "cut.json")
    assert (cut.exit_code, cut.stdout, cut.stderr) == (1, "", "Error: toolUses[0]: the file is cut short or corrupt "
                                                             "(parse error: premature EOF)\n")
    zst = memory("validate", tmp_path / "b.json.zst")
    assert (zst.exit_code, zst.stdout, zst.stderr) == (1, "", "Error: cannot read zstd here: the backports.zstd "
                                                             "package is missing (pip install backports.zstd, or "
                                                             "pip install . again)\n")


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


def test_a_backup_named_in_the_future_is_warned_about_and_never_costs_the_new_one(tmp_path, sample_db):
    folder = tmp_path / "backups"
    folder.mkdir()
    future = folder / "memory-20990101T000000.000000Z.json.zst"
    future.write_text("written while the clock said 2099")
    before = []
    for _ in range(2):
        result = memory("backup", "--db", sample_db, "--keep", "1", "--json", folder)
        assert result.exit_code == 0, result.output
        path = own_backups(folder)[0]
        reported = json.loads(result.stdout)
        assert (reported["path"], reported["removed"]) == (str(path), [str(p) for p in before])
        assert path.exists() and path != future
        before = [path]
        assert result.stderr == (f"warning: {future} is named for a time in the future; it is kept, not counted "
                                 "by the --keep options: was the clock wrong? Remove it once you no longer "
                                 "need it\n")
        assert sorted(own_backups(folder)) == sorted([path, future])
        assert memory("validate", path).exit_code == 0


def test_with_the_clock_set_back_the_new_backup_is_kept(tmp_path, sample_db):
    folder = tmp_path / "backups"
    folder.mkdir()
    later = datetime.now(timezone.utc) + timedelta(minutes=10)   # written before the clock went back
    olds = [folder / backup_name("json", "zstd", later + timedelta(seconds=s)) for s in range(3)]
    for old in olds:
        old.write_text("old")
    result = memory("backup", "--db", sample_db, "--keep", "3", "--json", folder)
    assert result.exit_code == 0, result.output
    new = Path(json.loads(result.stdout)["path"])
    assert sorted(own_backups(folder)) == sorted([new, olds[1], olds[2]])
    assert result.stderr == ""


def test_concurrent_backups_into_one_folder_take_turns(tmp_path, sample_db):
    folder = tmp_path / "backups"
    env = {k: v for k, v in os.environ.items() if k != "MEMORY_DB"} | {"MEMORY_DB": str(sample_db)}
    runs = [subprocess.Popen([sys.executable, "-m", "pipeline", "backup", "--keep", "1", "--json", str(folder)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(8)]
    outcomes = [(run.wait(timeout=120), run.stdout.read(), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close(), run.stderr.close()
    assert [(code, err) for code, _, err in outcomes] == [(0, "")] * 8
    reports = [json.loads(out) for _, out, _ in outcomes]
    printed = {report["path"] for report in reports}
    removed = [p for report in reports for p in report["removed"]]
    assert len(printed) == 8
    (left,) = own_backups(folder)
    assert str(left) in printed
    assert sorted(removed) == sorted(printed - {str(left)})   # each once, by one run
    assert memory("validate", left).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted([left.name, ".memory-backup.lock"])
    assert (folder / ".memory-backup.lock").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("now_offset, keep, kept", [
    # names are minutes 0..3 of the day, the new backup's minute 1; "now" is set relative to minute 3
    (timedelta(0), 1, ["m1"]),
    (timedelta(0), 2, ["m1", "m3"]),
    (timedelta(0), 9, ["m0", "m1", "m2", "m3"]),
    (-timedelta(minutes=59), 2, ["m1", "m3"]),               # m3 is 2 minutes ahead: within the tolerance
    (-timedelta(hours=1, seconds=90), 1, ["m1", "m2", "m3"]),   # m2, m3 beyond it: kept, not counted
    (-timedelta(hours=1, seconds=90), 2, ["m0", "m1", "m2", "m3"]),
])
def test_rotation_keeps_the_new_backup_and_the_newest_others_and_never_counts_future_names(
        tmp_path, now_offset, keep, kept):
    day = datetime(2026, 5, 1, tzinfo=timezone.utc)
    names = {f"m{i}": tmp_path / backup_name("json", "zstd", day + timedelta(minutes=i)) for i in range(4)}
    for path in names.values():
        path.write_text("x")
    removed, future = rotate(tmp_path, Retention(last=keep), names["m1"], now=day + timedelta(minutes=3) + now_offset)
    assert own_backups(tmp_path) == [names[k] for k in kept]
    assert sorted(removed) == sorted(set(names.values()) - set(own_backups(tmp_path)))
    assert future == ([names["m2"], names["m3"]] if now_offset < -timedelta(hours=1) else [])


def test_the_backup_flow_runs_without_click_and_holds_the_folder_while_reporting(tmp_path, sample_db, platform):
    conn = sqlite3.connect(sample_db)
    folder = tmp_path / "b"
    with new_backup(conn, folder, Retention(last=1), fmt="jsonl", compression="gzip") as done:
        assert done.path.exists() and done.counts["messages"] == 5 and done.removed == []
        assert lock_state(folder / ".memory-backup.lock", platform) == "locked"    # another run would wait here
    assert lock_state(folder / ".memory-backup.lock", platform) == "free"
    assert memory("validate", done.path).exit_code == 0


def test_rotation_takes_a_backup_removed_by_hand_meanwhile_as_removed(tmp_path, monkeypatch):
    """Runs take turns, but a person may delete a file between the folder's listing and the removal."""
    folder = tmp_path / "b"
    folder.mkdir()
    names = [folder / backup_name("json", "zstd", datetime(2026, 1, d, tzinfo=timezone.utc)) for d in (1, 2, 3)]
    for name in names:
        name.write_text("ours")
    real_trusted = backup_module._trusted

    def listed_then_deleted(directory, now):
        found = real_trusted(directory, now)
        names[0].unlink()
        return found
    monkeypatch.setattr(backup_module, "_trusted", listed_then_deleted)
    removed, future = rotate(folder, Retention(last=1), names[2], datetime(2026, 1, 4, tzinfo=timezone.utc))
    assert (removed, future) == ([names[0], names[1]], [])
    assert sorted(folder.iterdir()) == [names[2]]


def test_a_backup_that_fails_its_check_is_removed_and_the_old_ones_stay(tmp_path, sample_db, monkeypatch):
    """The check reads the new file back; a fault there removes it, touches no old backup, and says so, and
    nothing says it was written (it was, before the check: the error must not add '...was written before it')."""
    folder = tmp_path / "backups"     # beside the database, whose -wal and -shm come and go
    assert memory("backup", "--db", sample_db, "-q", folder).exit_code == 0
    old = sorted(p.name for p in folder.iterdir())

    def damaged(backup, step):
        raise backup_module.BadBackup("messages[3]: the file is cut short or corrupt")
    monkeypatch.setattr(backup_module, "validate", damaged)
    result = memory("backup", "--db", sample_db, "--keep", "1", folder)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", (
        "Error: the new backup failed its check and was removed; no old backup was touched: messages[3]: the file is "
        "cut short or corrupt\n"))
    assert sorted(p.name for p in folder.iterdir()) == old


def test_a_backup_whose_read_back_fails_with_a_system_error_is_removed_too(tmp_path, sample_db, monkeypatch):
    """Found by review: only a PipelineError removed the new backup; an OSError while reading it back (EIO) left
    it in the folder unchecked, and the error said it 'was written'."""
    folder = tmp_path / "backups"     # beside the database, whose -wal and -shm come and go
    assert memory("backup", "--db", sample_db, "-q", folder).exit_code == 0
    old = sorted(p.name for p in folder.iterdir())

    def failing(backup, step):
        raise OSError(5, "Input/output error", str(folder / "x"))
    monkeypatch.setattr(backup_module, "validate", failing)
    result = memory("backup", "--db", sample_db, "--keep", "1", folder)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", (
        "Error: the new backup failed its check and was removed; no old backup was touched: "
        f"{folder / 'x'}: Input/output error\n"))
    assert sorted(p.name for p in folder.iterdir()) == old


def test_a_backup_whose_read_back_fails_with_anything_else_is_removed_too(tmp_path, sample_db, monkeypatch):
    """Found by review: an exception that is neither ours nor the system's (a MemoryError) during the read-back
    left the unchecked backup in the folder."""
    folder = tmp_path / "backups"     # beside the database, whose -wal and -shm come and go
    assert memory("backup", "--db", sample_db, "-q", folder).exit_code == 0
    old = sorted(p.name for p in folder.iterdir())

    def out_of_memory(backup, step):
        raise MemoryError
    monkeypatch.setattr(backup_module, "validate", out_of_memory)
    with pytest.raises(MemoryError), new_backup(sqlite3.connect(sample_db), folder, Retention(last=1), "json",
                                                 "zstd"):
        pass
    assert sorted(p.name for p in folder.iterdir()) == old
