"""The commands as a user runs them: reports, prompts, conflicts, exit statuses."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import COMPAT_DB, ROOT, SAMPLE, SAMPLE_TABLE, make_database, memory, needs_compat, snapshot

from pipeline import cli as cli_module
from pipeline.output import atomic_file

# the sample as an import reports it, every record inserted or every record skipped
ALL_INSERTED = """\
                          records      inserted       skipped
  sessions                      2             2             0
  messages                      5             5             0
  tool uses                     2             2             0
  entities                      3             3             0
  links                         2             2             0
  session entities              2             2             0
  entity links                  1             1             0
  extraction states             2             2             0
"""
ALL_SKIPPED = """\
                          records      inserted       skipped
  sessions                      2             0             2
  messages                      5             0             5
  tool uses                     2             0             2
  entities                      3             0             3
  links                         2             0             2
  session entities              2             0             2
  entity links                  1             0             1
  extraction states             2             0             2
"""


@pytest.mark.parametrize("command", ["export", "import", "validate"])
def test_help_of_each_command_shows_an_example(command):
    result = memory(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout and f"memory {command} " in result.stdout
    assert "--json" in result.stdout and "--quiet" in result.stdout


def test_clear_replaces_everything(tmp_path, sample_db):
    memory("export", "--db", sample_db, tmp_path / "sample.json")
    other = make_database(tmp_path / "other.db")
    result = memory("import", "--db", other, "--clear", tmp_path / "sample.json")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("Imported 19 records: 19 inserted, 0 skipped\n"
                             f"from {tmp_path / 'sample.json'}\n"
                             f"into database {other}\n" + ALL_INSERTED +
                             "  topics                        0             0             0\n")
    assert snapshot(other) == snapshot(sample_db)


def test_merge_is_refused_without_a_terminal_and_nothing_changes(tmp_path, sample_db):
    before = snapshot(sample_db)
    result = memory("import", "--db", sample_db, SAMPLE)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {sample_db} already has 2 sessions and 5 messages; pass --yes to merge "
                             "into it or --clear to replace it\n")
    assert snapshot(sample_db) == before


def test_merge_is_refused_by_a_real_process_with_no_stdin(tmp_path, sample_db):
    """As from cron: no terminal, stdin closed; it must not wait for an answer."""
    run = subprocess.run([sys.executable, "-m", "pipeline", "import", "--db", str(sample_db), str(SAMPLE)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr.endswith("pass --yes to merge into it or --clear to replace it\n")


@pytest.mark.parametrize("answer, code", [("y\n", 0), ("n\n", 1), ("\n", 1)])
def test_merge_asks_on_a_terminal(tmp_path, monkeypatch, answer, code):
    db = make_database(tmp_path / "other.db")
    before = snapshot(db)
    monkeypatch.setattr(cli_module, "_terminal_stdin", lambda: True)
    result = memory("import", "--db", db, SAMPLE, input=answer)
    assert result.exit_code == code
    assert result.stderr.startswith(f"The database {db} has 3 sessions and 12 messages. Merge into it? [y/N]: ")
    if code:
        assert result.stderr.endswith("Error: nothing imported: the merge was declined\n")
        assert snapshot(db) == before
    else:
        assert result.stdout.startswith(f"Imported 19 records: 19 inserted, 0 skipped, 1 renumbered\nfrom {SAMPLE}\n"
                                        f"into database {db}\n")


def test_merge_skips_rows_already_there_and_counts_them(tmp_path, sample_db):
    result = memory("import", "--db", sample_db, "--yes", SAMPLE)
    assert result.exit_code == 0
    assert result.stdout == (f"Nothing imported: all 19 records are there already\nfrom {SAMPLE}\n"
                             f"into database {sample_db}\n" + ALL_SKIPPED)


def test_on_conflict_replace_overwrites_and_fail_refuses(tmp_path, sample_db):
    doc = json.loads(SAMPLE.read_text(encoding="utf-8"))
    doc["messages"][0]["content"] = "rewritten by the backup"
    (tmp_path / "changed.json").write_text(json.dumps(doc), encoding="utf-8")
    before = snapshot(sample_db)
    failed = memory("import", "--db", sample_db, "-y", "--on-conflict", "fail", tmp_path / "changed.json")
    assert (failed.exit_code, failed.stderr) == (
        1, "Error: messages[0]: id 'm-1' is in the database with other values; nothing was imported "
           "(--on-conflict skip keeps the database's, replace takes the file's)\n")
    assert snapshot(sample_db) == before
    replaced = memory("import", "--db", sample_db, "-y", "--on-conflict", "replace", "--json", tmp_path / "changed.json")
    report = json.loads(replaced.stdout)
    assert report["inserted"]["messages"] == 0 and report["updated"]["messages"] == 1
    assert report["skipped"]["messages"] == 4 and report["renumbered"]["messages"] == 0
    conn = sqlite3.connect(sample_db)
    assert conn.execute("SELECT content FROM messages_meta WHERE id = 'm-1'").fetchone() == ("rewritten by the backup",)
    assert conn.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'rewritten'").fetchall() == [(1,)]
    assert conn.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'cron'").fetchall() == []


def test_quiet_and_json_reports(tmp_path, sample_db):
    quiet = memory("export", "--db", sample_db, "--quiet", tmp_path / "a.json")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    assert json.loads((tmp_path / "a.json").read_text())["stats"]["messages"] == 5
    as_json = json.loads(memory("export", "--db", sample_db, "--json", tmp_path / "b.jsonl").stdout)
    assert as_json["counts"]["messages"] == 5 and as_json["format"] == "jsonl"
    assert as_json["bytes"] == (tmp_path / "b.jsonl").stat().st_size
    checked = json.loads(memory("validate", "--json", tmp_path / "b.jsonl").stdout)
    assert checked == {"path": str(tmp_path / "b.jsonl"), "valid": True, "version": "1.2",
                       "counts": as_json["counts"]}
    assert memory("validate", "-q", SAMPLE).stdout == ""
    imported = json.loads(memory("import", "--db", tmp_path / "n.db", "--json", SAMPLE).stdout)
    assert imported["inserted"]["toolUses"] == 2 and imported["skipped"]["toolUses"] == 0


def test_validate_reports_a_good_file(tmp_path):
    result = memory("validate", SAMPLE)
    assert (result.exit_code, result.stdout) == (0, "Validated 19 records (version 1.0): a valid memory backup\n"
                                                 f"from {SAMPLE}\n"
                                                 + SAMPLE_TABLE.replace("  topics                        0\n", ""))


def test_validate_of_a_missing_file(tmp_path):
    result = memory("validate", tmp_path / "nope.json")
    assert (result.exit_code, result.stderr) == (1, f"Error: {tmp_path / 'nope.json'}: No such file or directory\n")


def test_export_of_a_missing_database_writes_and_creates_nothing(tmp_path):
    result = memory("export", "--db", tmp_path / "none.db", tmp_path / "out.json")
    assert (result.exit_code, result.stderr) == (1, f"Error: no database at {tmp_path / 'none.db'}\n")
    assert list(tmp_path.iterdir()) == []


def test_export_to_an_unwritable_place(tmp_path, sample_db):
    result = memory("export", "--db", sample_db, tmp_path / "no" / "such" / "dir" / "out.json")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'no' / 'such' / 'dir' / 'out.json'}: No such file or directory\n"


def test_a_name_without_a_format_is_a_usage_error(tmp_path, sample_db):
    result = memory("export", "--db", sample_db, tmp_path / "out.bak")
    assert result.exit_code == 2
    assert "cannot tell the format from the name" in result.stderr
    assert memory("export", "--db", sample_db, "--format", "jsonl", tmp_path / "out.bak").exit_code == 0
    assert memory("validate", "--format", "jsonl", tmp_path / "out.bak").exit_code == 0


def test_memory_db_environment_variable(tmp_path, sample_db, monkeypatch):
    monkeypatch.setenv("MEMORY_DB", str(sample_db))
    assert memory("export", "-q", tmp_path / "env.json").exit_code == 0
    assert json.loads((tmp_path / "env.json").read_text())["stats"]["sessions"] == 2


def test_ctrl_c_during_import_exits_130_and_changes_nothing(tmp_path, sample_db, monkeypatch):
    before = snapshot(sample_db)
    real_insert = cli_module.load.__globals__["_insert"]

    def interrupted(conn, table, sql, batch, start):
        real_insert(conn, table, sql, batch, start)
        if table.key == "toolUses":
            raise KeyboardInterrupt
    monkeypatch.setitem(cli_module.load.__globals__, "_insert", interrupted)
    result = memory("import", "--db", sample_db, "--clear", SAMPLE)
    assert (result.exit_code, result.stderr) == (130, "Interrupted: nothing was changed\n")
    assert snapshot(sample_db) == before


def test_a_failed_write_leaves_the_old_backup_and_nothing_beside_it(tmp_path, platform):
    target = tmp_path / "backup.json"
    target.write_bytes(b"the last good backup")
    with pytest.raises(OSError):
        with atomic_file(target) as out:
            out.write(b"half a new one")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"the last good backup"
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]


@needs_compat
def test_a_created_database_has_the_memory_nexus_schema(tmp_path):
    memory("import", "--db", tmp_path / "new.db", SAMPLE)
    schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    ours = sqlite3.connect(tmp_path / "new.db").execute(schema).fetchall()
    theirs = sqlite3.connect(f"file:{COMPAT_DB}?mode=ro", uri=True).execute(schema).fetchall()
    assert ours == theirs


def test_foreign_keys_of_the_whole_database_are_checked_before_commit(tmp_path, sample_db):
    """A database that already holds a message without its session is not made worse silently."""
    conn = sqlite3.connect(sample_db, isolation_level=None)
    conn.execute("INSERT INTO messages_meta (id, session_id, role, content, timestamp) "
                 "VALUES ('orphan', 'gone', 'user', 'x', 't')")     # foreign_keys is off by default
    rowid = conn.execute("SELECT rowid FROM messages_meta WHERE id = 'orphan'").fetchone()[0]
    conn.close()
    before = snapshot(sample_db)
    result = memory("import", "--db", sample_db, "--yes", SAMPLE)
    assert (result.exit_code, result.stderr) == (
        1, f"Error: messages_meta row {rowid} points at a missing row of sessions; nothing was imported\n")
    assert snapshot(sample_db) == before
    assert memory("import", "--db", sample_db, "--clear", SAMPLE).exit_code == 0   # --clear removes it


def test_a_pure_python_ijson_is_warned_about_once(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_module, "IJSON_BACKEND", "python")
    monkeypatch.setattr(cli_module, "_warned", [])
    first, second = memory("validate", "-q", SAMPLE), memory("validate", "-q", SAMPLE)
    assert first.stderr == ("warning: ijson runs on its python backend, not yajl2_c; reading is several times "
                            "slower (reinstall ijson from a wheel)\n")
    assert (first.exit_code, second.exit_code, second.stderr) == (0, 0, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args, stands", [
    (["stats"], ""), (["stats", "--json"], ""), (["validate", "SAMPLE"], ""), (["list", "DIR"], ""),
    (["export", "-", "--db", "DB"], ""),
    (["import", "--db", "NEW", "SAMPLE"], "; the changes were committed before it"),
], ids=["stats", "stats-json", "validate", "list", "export", "import"])
@pytest.mark.parametrize("unbuffered", [{}, {"PYTHONUNBUFFERED": "1"}], ids=["buffered", "unbuffered"])
def test_a_stdout_that_cannot_be_written_is_named(tmp_path, sample_db, args, stands, unbuffered):
    """Found: `memory stats > /dev/full` said "Error: No space left on device", not where (export said
    "stdout: ..."). An import's summary comes after its commit: the error says the data is in. (--help and
    --version: test_click_s_own_output_to_a_full_stdout_is_named.) And, found once the tests ran without the
    PYTHONUNBUFFERED this machine sets: buffered, Python's own flush at exit failed again: 'Exception ignored'
    and exit 120."""
    (tmp_path / "dir").mkdir()
    memory("backup", "--db", sample_db, "-q", tmp_path / "dir")
    names = {"SAMPLE": str(SAMPLE), "DIR": str(tmp_path / "dir"), "DB": str(sample_db), "NEW": str(tmp_path / "n.db")}
    args = [names.get(a, a) for a in args]
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "pipeline", *args, *(["--db", str(sample_db)] * (args[0] == "stats"))],
                             stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                             env=os.environ | unbuffered)
    assert (run.returncode, run.stderr) == (1, f"Error: stdout: No space left on device{stands}\n")
    if args[0] == "import":
        assert sqlite3.connect(tmp_path / "n.db").execute("SELECT count(*) FROM messages_meta").fetchone() == (5,)


def test_a_report_to_a_stdout_that_says_ascii_is_written_as_click_writes_it(tmp_path):
    """Found before it landed: report.say encoding its text with the stream's own codec failed with a traceback on
    a path holding 'é' where stdout says ASCII (PYTHONIOENCODING=ascii, an old C locale, a Windows code page);
    click.echo, used before, writes UTF-8 there."""
    backup = tmp_path / "é.json"
    backup.write_bytes(SAMPLE.read_bytes())
    run = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(backup)], cwd=ROOT, capture_output=True,
                         env=os.environ | {"PYTHONIOENCODING": "ascii"}, timeout=60)
    assert (run.returncode, run.stderr) == (0, b"")
    assert run.stdout.splitlines()[1] == b"from " + str(backup).encode()


def test_output_still_held_at_the_end_that_cannot_be_written_fails_the_run(tmp_path):
    """The last flush, of what stdout still holds as the command ends, is made by main: where it fails on a status
    of 0, that is a failure, said, not Python's 'Exception ignored' and 120 (each report is flushed as it is said,
    so this stands in for one that was not)."""
    unflushed = ("import sys, pipeline.cli as cli\n"
                 "def command(**kwargs):\n    sys.stdout.write('a report')\n    sys.exit(0)\n"
                 "cli.cli = command\ncli.main()\n")
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-c", unflushed], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    assert (run.returncode, run.stderr) == (1, "Error: stdout: No space left on device\n")


# what click prints itself, as it parses: the group's help and version, every command's help (restore's too)
CLICKS_OWN = [["--help"], ["--version"],
              *([name, "--help"] for name in [*sorted(cli_module.cli.commands), "restore"])]


def _memory_into(args: list[str], stdout, stderr=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], stdin=subprocess.DEVNULL, stdout=stdout,
                          stderr=stderr, timeout=60)


def _closed_pipe() -> int:
    """The writing end of a pipe whose reader is gone before anything is written: EPIPE every time."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", CLICKS_OWN, ids=" ".join)
def test_click_s_own_output_to_a_full_stdout_is_named(args):
    """Found: `memory import --help > /dev/full` said "Error: No space left on device" without naming stdout,
    where `memory --help` named it (a command's help is printed inside MemoryGroup.invoke, the group's before it);
    before that, the group's help and version ended in a traceback."""
    with open("/dev/full", "w") as full:
        run = _memory_into(args, stdout=full)
    assert (run.returncode, run.stderr) == (1, b"Error: stdout: No space left on device\n")


@pytest.mark.parametrize("args", CLICKS_OWN, ids=" ".join)
def test_click_s_own_output_to_a_closed_pipe_ends_with_141(args):
    """Found: `memory --help | true` ended with status 1, silently (click's own EPIPE handling), where every
    other output a reader left ends with 141, the status of a tool killed by SIGPIPE."""
    pipe = _closed_pipe()
    run = _memory_into(args, stdout=pipe)
    os.close(pipe)
    assert (run.returncode, run.stderr) == (141, b"")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("stderr", ["full", "closed pipe"])
@pytest.mark.parametrize("args, status", [
    ([], 2), (["import"], 2), (["import", "--bogus", "x"], 2), (["frobnicate"], 2), (["export", "--db"], 2),
    (["stats", "--db", "MISSING"], 1),
], ids=["no-args", "missing-argument", "unknown-option", "unknown-command", "option-without-value", "failure"])
def test_an_error_to_a_stderr_that_takes_nothing_keeps_its_status(tmp_path, args, status, stderr):
    """Nothing can be said where stderr takes nothing (a full disk, a reader gone): the status still tells a
    usage error from a failure. Found: `memory import 2>/dev/full` ended with 1 (a traceback nobody saw), not 2.
    `memory` alone prints its help as a usage error does: on stderr, status 2. A traceback, unseen, exits 99."""
    args = [str(tmp_path / "missing.db") if a == "MISSING" else a for a in args]
    code = "import os, sys; sys.excepthook = lambda *exc: os._exit(99); from pipeline.cli import main; main()"
    with open("/dev/full", "w") as full:
        pipe = _closed_pipe()
        run = subprocess.run([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=full if stderr == "full" else pipe, timeout=60)
        os.close(pipe)
    assert (run.returncode, run.stdout) == (status, b"")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", [1, 3, 10])
@pytest.mark.parametrize("name", ["b.jsonl", "b.json", "b.jsonl.gz", "b.json.zst"])
def test_a_pipe_that_brings_the_file_in_pieces_is_read_as_the_whole(tmp_path, sample_db, name, cut):
    """Found: `memory validate -` fed a JSON Lines backup whose first piece held no whole line (a slow writer,
    ssh) took it for JSON, and refused it ("the header: ... trailing garbage"); a compressed one whose first
    piece is shorter than its magic number was taken for plain bytes."""
    memory("export", "--db", sample_db, "-q", tmp_path / name)
    data = (tmp_path / name).read_bytes()
    for args in (["validate", "-q", "-"], ["import", "-q", "--db", str(tmp_path / f"{cut}.db"), "-"]):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(data[:cut])
        proc.stdin.flush()
        time.sleep(0.3)            # the process reads the first piece alone
        proc.stdin.write(data[cut:])
        proc.stdin.close()
        assert (proc.wait(timeout=60), proc.stdout.read(), proc.stderr.read()) == (0, b"", b"")
    assert snapshot(tmp_path / f"{cut}.db") == snapshot(sample_db)
