"""Backup sets: `memory list` of a folder, `memory import DIR` of its newest whole backup, and retention by
the calendar as restic's `forget` keeps (the expected sets written by hand, and by a reference of our own)."""

import json
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


LINES = [   # a header, then newest first; the sizes as the fixture's files have them; within 80 columns
    "name                                        size  sessions  messages",
    "memory-20261104T031500.000000Z.jsonl     22.1 kB         3       120",
    "memory-20261103T031500.000000Z.json.zst   1.4 kB         2         5",
    "memory-20261102T031500.000000Z.jsonl.gz   2.5 kB         3       120",
    "memory-20261101T031500.000000Z.json.zst   1.4 kB         2         5",
]
CUT = ("line 86: the file is cut short or corrupt (line contains invalid json: Unterminated string starting "
       "at: line 1 column 110 (char 109))")


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
        LINES[0], LINES[1] + f"  BAD: {CUT}", LINES[2] + f"  BAD: {MISMATCH}", LINES[3] + "  ok", LINES[4] + "  ok"]
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
        "name                                    size  sessions  messages",
        "memory-20261102T031500.000000Z.json      6 B         ?         ?  BAD: not a memory backup: the JSON "
        "document is not an object",
        "memory-20261101T031500.000000Z.json.gz   0 B         ?         ?  BAD: the file is empty"]
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
    assert result.stdout.startswith(f"Imported 130 records: 130 inserted, 0 skipped\nfrom {f['B']}\n"
                                    f"into new database {tmp_path / 'restored.db'}\n")
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


# ---- retention ----------------------------------------------------------------------------------------------

def at(day: str, hour: int) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc)


# Written by hand. 2026-02-04 is a Wednesday of ISO week 6; Sunday 2026-02-01 belongs to week 5 (with Jan 26-31);
# 2025-12-30 to ISO week 1 of 2026. Nothing was written on Feb 2: restic counts days that have backups.
SMALL = {"n": at("2026-02-04", 3),                                   # the new backup: week 6, February
         "a": at("2026-02-03", 20), "b": at("2026-02-03", 3),       # two on one day
         "c": at("2026-02-01", 3),                                   # week 5, February
         "d": at("2026-01-31", 22), "e": at("2026-01-31", 3),       # week 5, January
         "f": at("2026-01-28", 3),
         "g": at("2026-01-25", 3), "h": at("2026-01-20", 3),        # week 4
         "i": at("2025-12-30", 3), "j": at("2025-12-01", 3)}        # December


@pytest.mark.parametrize("retention, kept", [
    (Retention(daily=3), "n a c"),              # Feb 4, Feb 3 (its newest), Feb 1: not Feb 2, which has none
    (Retention(weekly=2), "n c"),               # week 6, and week 5's newest is Sunday Feb 1
    (Retention(monthly=3), "n d i"),            # February, January, December: each its newest
    (Retention(monthly=5), "n d i j"),          # only 3 months: counts left, so the oldest is kept too (restic)
    (Retention(daily=30), "n a c d f g h i j"),  # 9 days have backups: the newest of each
    (Retention(last=2), "n a"),
    (Retention(last=2, daily=2, weekly=3), "n a c g"),
    (Retention(daily=3, weekly=2, monthly=3), "n a c d i"),
    (Retention.given(), "n a b c d e f"),       # no option given: --keep 7, as before
])
def test_retention_keeps_what_restics_forget_keeps_small_case_by_hand(tmp_path, retention, kept):
    paths = {key: tmp_path / backup_name("json", "zstd", time) for key, time in SMALL.items()}
    future = tmp_path / "memory-20990101T000000.000000Z.json.zst"
    for path in [*paths.values(), future]:
        path.write_text("x")
    removed, warned = rotate(tmp_path, retention, paths["n"], now=SMALL["n"])
    assert sorted(own_backups(tmp_path)) == sorted([paths[k] for k in kept.split()] + [future])
    assert removed == sorted(p for k, p in paths.items() if k not in kept.split())     # oldest first
    assert warned == [future]


def test_retention_always_keeps_the_new_backup_even_named_older_by_a_clock_set_back(tmp_path):
    paths = {key: tmp_path / backup_name("json", "zstd", time) for key, time in SMALL.items()}
    for path in paths.values():
        path.write_text("x")
    rotate(tmp_path, Retention(daily=1), paths["h"], now=SMALL["n"])
    assert own_backups(tmp_path) == [paths["h"], paths["n"]]


def reference(times: dict[Path, datetime], new: Path, retention: Retention) -> set[Path]:
    """What restic's rules keep, put another way than the code: group the backups by day (ISO week, month),
    take the newest of each of the N newest groups, and the oldest backup too when there are fewer than N
    groups. --keep N: the new backup and the N-1 newest others. The new backup always."""
    oldest_first = sorted(times, key=lambda p: times[p])
    kept = {new}
    if retention.last:
        kept |= set(([new] + [p for p in reversed(oldest_first) if p != new])[: retention.last])
    for count, key in ((retention.daily, lambda t: t.date()), (retention.weekly, lambda t: t.isocalendar()[:2]),
                       (retention.monthly, lambda t: (t.year, t.month))):
        if count:
            groups: dict = {}
            for path in oldest_first:
                groups.setdefault(key(times[path]), []).append(path)
            kept |= {groups[bucket][-1] for bucket in sorted(groups, reverse=True)[:count]}
            if len(groups) < count:
                kept.add(oldest_first[0])
    return kept


def four_months(folder: Path, end: datetime, content: bytes) -> dict[Path, datetime]:
    """A backup at 03:15 each day for four months before `end`, a second at 21:40 every third day, and none
    on every eleventh day."""
    times = {}
    for day in range(1, 122):
        if day % 11 == 0:
            continue
        date = (end - timedelta(days=day)).replace(hour=3, minute=15, second=0, microsecond=0)
        for time in [date] + ([date.replace(hour=21, minute=40)] if day % 3 == 0 else []):
            path = folder / backup_name("json", "zstd", time)
            path.write_bytes(content)
            times[path] = time
    return times


POLICIES = [Retention(daily=7), Retention(weekly=5), Retention(monthly=3), Retention(monthly=6),
            Retention(daily=200), Retention(last=5), Retention(last=3, daily=10, weekly=6, monthly=12),
            Retention(daily=7, weekly=4, monthly=3)]


@pytest.mark.parametrize("retention", POLICIES)
def test_retention_over_four_months_keeps_what_an_independent_reference_keeps(tmp_path, retention):
    now = datetime(2026, 5, 6, 3, 15, 0, 1234, tzinfo=timezone.utc)     # a Wednesday
    times = four_months(tmp_path, now, b"x")
    assert len(times) == 147 and len({t.date() for t in times.values()}) == 110
    new = tmp_path / backup_name("json", "zstd", now)
    new.write_bytes(b"x")
    times[new] = now
    expected = reference(times, new, retention)
    assert 1 < len(expected) < len(times)
    removed, _ = rotate(tmp_path, retention, new, now=now)
    assert set(own_backups(tmp_path)) == expected
    assert removed == sorted(set(times) - expected)


def test_backup_with_calendar_retention_and_its_dry_run(tmp_path, sample_db):
    folder = tmp_path / "backups"
    folder.mkdir()
    content = exported(sample_db, tmp_path / "one.json.zst").read_bytes()
    times = four_months(folder, datetime.now(timezone.utc), content)
    (folder / "notes.txt").write_text("not ours")
    options = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "3"]
    before = listing(folder)
    dry = memory("backup", "--db", sample_db, *options, "--dry-run", folder)
    assert (dry.exit_code, dry.stderr) == (0, "")
    assert listing(folder) == before                      # nothing written, nothing removed, no lock file
    would = [line.removeprefix("would remove ") for line in dry.stdout.splitlines()]
    result = memory("backup", "--db", sample_db, *options, "--json", folder)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    new = Path(report["path"])
    times[new] = datetime.strptime(new.name[7:30], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
    expected = reference(times, new, Retention(daily=7, weekly=4, monthly=3))
    assert set(own_backups(folder)) == expected and 7 < len(expected) < len(times)
    assert report["removed"] == [str(p) for p in sorted(set(times) - expected)] == would
    assert (folder / "notes.txt").read_text() == "not ours"


def test_dry_run_json_and_quiet_and_an_empty_folder(tmp_path, sample_db):
    folder = tmp_path / "backups"
    folder.mkdir()
    old = [folder / backup_name("json", "zstd", datetime(2026, 1, d, tzinfo=timezone.utc)) for d in (1, 2, 3)]
    for path in old:
        path.write_text("x")
    result = memory("backup", "--db", sample_db, "--keep", "2", "--dry-run", "--json", folder)
    assert json.loads(result.stdout) == {"dryRun": True, "wouldRemove": [str(old[0]), str(old[1])]}
    assert memory("backup", "--db", sample_db, "--keep", "2", "--dry-run", "-q", folder).stdout == ""   # --quiet
    assert memory("backup", "--db", sample_db, "--dry-run", folder).stdout == "would remove nothing\n"
    assert memory("backup", "--db", sample_db, "--dry-run", tmp_path / "none").stdout == "would remove nothing\n"
    assert own_backups(folder) == old and not (tmp_path / "none").exists()


@pytest.mark.parametrize("db, message", [("missing.db", "no database at {}"),
                                         ("words.db", "cannot read {}: file is not a database")])
def test_a_dry_run_is_refused_where_the_backup_would_be(tmp_path, db, message):
    """A wrong --db (a typo in a crontab being tried out) fails the dry run as it fails the backup, with the
    same message, and creates nothing (found by review: the dry run said "would remove nothing", exit 0)."""
    (tmp_path / "words.db").write_text("not a database")
    folder = tmp_path / "backups"
    for dry in (["--dry-run"], []):
        result = memory("backup", "--db", tmp_path / db, *dry, folder)
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message.format(tmp_path / db)}\n")
    assert not folder.exists()


@pytest.mark.parametrize("args, message", [
    (["backup", "--keep-daily", "0"], "Invalid value for '--keep-daily': 0 is not in the range x>=1."),
    (["backup", "--keep-monthly", "x"], "Invalid value for '--keep-monthly': 'x' is not a valid integer range."),
    (["import", "--format", "json"], "--format does not apply to a folder: its backups' names say theirs"),
])
def test_usage_errors_of_the_folder_options(tmp_path, args, message):
    result = memory(*args, tmp_path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"Error: {message}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("list",), ("list", "--check"), ("list", "--json")])
def test_a_backup_rotated_away_while_list_reads_the_folder_is_left_out(tmp_path, sample_db, monkeypatch, args):
    """`memory list` while the nightly `memory backup` removes old backups: the folder was read, then a file went."""
    import pipeline.backup
    old, kept = exported(sample_db, named(tmp_path, 0, ".json")), exported(sample_db, named(tmp_path, 1, ".json"))
    read_folder = pipeline.backup.own_backups

    def rotated_meanwhile(directory):
        found = read_folder(directory)
        old.unlink()
        return found

    monkeypatch.setattr(pipeline.backup, "own_backups", rotated_meanwhile)
    result = memory(*args, tmp_path)
    assert (result.exit_code, result.stderr) == (0, "")
    assert kept.name in result.stdout and old.name not in result.stdout
