"""kill -9 at many points: the last backup stays byte for byte with nothing beside it, and a database is
exactly as before. scripts/torture.py runs the same at many more points."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE, make_database, memory, snapshot
from platforms import command

from pipeline.output import _LEFTOVER

POINTS = int(os.environ.get("MEMORY_CRASH_POINTS", "6"))   # per case; scripts/torture.py runs hundreds
# Linux (O_TMPFILE), and the fallbacks of macOS (a hidden name) and Windows (that, and no fchmod, no directory
# fsync, a replace refused while the target is held), simulated by tests/platforms.py
PLATFORMS = ["linux", "macos", "windows"]


def memory_process(*args, platform: str = "linux") -> subprocess.Popen:
    return subprocess.Popen([*command(platform), *map(str, args)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def left_beside(folder: Path, keep: str, platform: str) -> list[str]:
    """What a killed run left beside `keep`: nothing with O_TMPFILE; elsewhere at most hidden temporary
    files of dead processes, which the next run removes."""
    left = sorted(n for n in os.listdir(folder) if n != keep)
    assert all(_LEFTOVER.fullmatch(n) for n in left), left
    if platform == "linux":
        assert left == []
    return left


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL after `seconds`; whether it was still running then."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def duration(*args, platform: str = "linux") -> float:
    start = time.perf_counter()
    proc = memory_process(*args, platform=platform)
    assert proc.wait() == 0, proc.stderr.read()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def big_db(tmp_path_factory) -> Path:
    return make_database(tmp_path_factory.mktemp("crash") / "big.db", sessions=10, messages_per_session=1500)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_killed_export_leaves_the_last_backup_untouched_and_nothing_beside_it(tmp_path, big_db, platform):
    target = tmp_path / "backup.json.gz"
    took = duration("export", "--db", big_db, "-q", tmp_path / "probe.json.gz", platform=platform)
    (tmp_path / "probe.json.gz").unlink()
    target.write_bytes(b"the last good backup")
    killed = 0
    for i in range(POINTS):
        killed += kill_after(memory_process("export", "--db", big_db, "-q", target, platform=platform),
                             took * (i + 0.5) / POINTS)
        left_beside(tmp_path, "backup.json.gz", platform)
        if target.read_bytes() != b"the last good backup":      # it got as far as the rename: a whole backup
            assert subprocess.run([sys.executable, "-m", "pipeline", "validate", "-q", str(target)],
                                  cwd=ROOT, capture_output=True).returncode == 0
            target.write_bytes(b"the last good backup")
    assert killed >= POINTS // 2, f"only {killed} of {POINTS} runs were killed while running"
    # the next run removes what the killed ones left
    assert memory_process("export", "--db", big_db, "-q", target, platform=platform).wait() == 0
    assert left_beside(tmp_path, "backup.json.gz", platform) == []


@pytest.mark.parametrize("clear, name", [(False, "session"), (False, "other"), (True, "session")],
                         ids=["merge", "renumbering-merge", "clear"])
def test_killed_import_leaves_the_database_as_it_was(tmp_path, big_db, clear, name):
    backup = tmp_path / "b.jsonl"
    assert subprocess.run([sys.executable, "-m", "pipeline", "export", "--db", str(big_db), "-q", str(backup)],
                          cwd=ROOT, capture_output=True).returncode == 0
    # "other": another machine's sessions, whose message rowids 1 to 6 the backup's first 6 messages have too
    target = make_database(tmp_path / "target.db", sessions=2, messages_per_session=3, name=name)
    pristine = target.read_bytes()
    before = snapshot(target)
    args = ["import", "--db", target, "--clear" if clear else "--yes", backup]
    took = duration(*args)
    after = snapshot(target)                                     # the whole import
    if name == "other":
        renumbered = sqlite3.connect(target).execute("SELECT count(*) FROM messages_meta WHERE rowid > 15000")
        assert renumbered.fetchone() == (6,)
    killed = 0
    for i in range(POINTS):
        for leftover in tmp_path.glob("target.db-*"):
            leftover.unlink()
        target.write_bytes(pristine)
        killed += kill_after(memory_process(*args), took * (i + 0.5) / POINTS)
        assert snapshot(target) in (before, after)              # all or nothing, never between
    assert killed >= POINTS // 2, f"only {killed} of {POINTS} runs were killed while running"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_killed_import_into_a_new_path_leaves_nothing_there(tmp_path, big_db, platform):
    backup = tmp_path / "b.json"
    subprocess.run([sys.executable, "-m", "pipeline", "export", "--db", str(big_db), "-q", str(backup)], cwd=ROOT)
    took = duration("import", "--db", tmp_path / "probe.db", backup, platform=platform)
    whole = snapshot(tmp_path / "probe.db")
    killed = 0
    for i in range(POINTS):
        target = tmp_path / "new" / "memory.db"
        killed += kill_after(memory_process("import", "--db", target, backup, platform=platform),
                             took * (i + 0.5) / POINTS)
        if target.exists():                                      # it got as far as the link: all of it
            assert snapshot(target) == whole
            for p in target.parent.glob("memory.db*"):
                p.unlink()
    assert killed >= POINTS // 2
    # what the killed runs left behind is removed by the next run
    assert memory_process("import", "-q", "--db", target, backup, platform=platform).wait() == 0
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.startswith("memory.db")) == []


def test_a_new_database_is_made_durable_where_it_is_linked_in(tmp_path, monkeypatch):
    """After the new database is linked in, its folder is fsynced, so a power cut cannot lose its name."""
    from pipeline import database, portable
    seen = []
    real_link, real_fsync_directory = os.link, portable.fsync_directory
    monkeypatch.setattr(database.os, "link", lambda *a, **k: (seen.append(("link", Path(a[1]))), real_link(*a, **k))[1])
    monkeypatch.setattr(portable, "fsync_directory", lambda d: (seen.append(("fsync", Path(d))), real_fsync_directory(d))[1])
    db = tmp_path / "new" / "m.db"
    assert memory("import", "--db", db, SAMPLE).exit_code == 0
    assert ("link", db) in seen and seen[seen.index(("link", db)) + 1:].count(("fsync", db.parent)) >= 1
