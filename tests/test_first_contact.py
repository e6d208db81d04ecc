"""What a new user meets first: the README's recipes run as written (cron's too), names, pipes and terminals."""

import fcntl
import gzip
import io
import json
import os
import pty
import re
import select
import shutil
import sqlite3
import struct
import subprocess
import sys
import termios
from contextlib import closing
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE, clock_free, make_database, memory, snapshot

from pipeline.backup import own_backups
from pipeline.formats import sniffed_format

README = (ROOT / "README.md").read_text(encoding="utf-8")
INSTALLED = Path(sys.executable).parent / "memory"     # the console script `pip install` made for this Python
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "              # a log line's UTC time, ISO 8601
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    """`memory` in a process of its own, as from cron: no terminal, stdin closed."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], timeout=120, start_new_session=True,
                          **kwargs)


def on_terminal(*args, cwd: Path, typed: bytes = b"") -> tuple[int, str]:
    """`memory` with stdin, stdout and stderr on a pseudo-terminal 80 columns wide, `typed` typed at it:
    (status, what the screen got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "MEMORY_DB")}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    os.write(master, typed)
    screen = b""
    while True:
        if not select.select([master], [], [], 60)[0]:      # waiting for something it will not get
            proc.kill()
            pytest.fail(f"memory {' '.join(map(str, args))} hung on a terminal: {screen!r}")
        try:
            data = os.read(master, 1 << 16)
        except OSError:        # EIO: the other side is closed
            break
        if not data:
            break
        screen += data
    os.close(master)
    return proc.wait(timeout=120), screen.decode("utf-8", "replace").replace("\r\n", "\n")


def screen_lines(screen: str) -> list[str]:
    """The lines as a terminal shows them: escape codes dropped, each \r starting the line over."""
    return [part for line in ANSI.sub("", screen).split("\n") for part in line.split("\r")]


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    return README[start: README.find("\n## ", start + 1)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


# ---- cron -------------------------------------------------------------------------------------------------

def crontab_jobs() -> list[tuple[dict, str]]:
    """(environment lines, command) of each job in the README's crontab blocks, as cron reads them."""
    jobs = []
    for block in blocks(README, "crontab"):
        env = {}
        for line in block.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", line)
            if assignment:
                env[assignment[1]] = assignment[2]
            else:
                jobs.append((env, line.split(None, 5)[5]))
    return jobs


@pytest.fixture
def cron_home(tmp_path):
    """A home as the README's setup leaves it: memory installed where the recipe says, a memory database at
    the default path. The install is this test run's own console script, linked where the README puts it."""
    if not INSTALLED.exists():
        pytest.skip(f"no console script at {INSTALLED}: install the package (pip install -e '.[test]')")
    home = tmp_path / "home"
    (home / ".local" / "memory" / "bin").mkdir(parents=True)
    (home / ".local" / "memory" / "bin" / "memory").symlink_to(INSTALLED)
    (home / "backups" / "memory").mkdir(parents=True)         # the install line's mkdir -p ~/backups/memory
    (home / ".memory-nexus").mkdir()
    memory("import", "--db", home / ".memory-nexus" / "memory.db", SAMPLE)
    return home


def as_cron(home: Path, env: dict, command: str) -> subprocess.CompletedProcess:
    """What cron does with a job: /bin/sh -c, an environment of HOME, LOGNAME, SHELL and PATH=/usr/bin:/bin
    (plus the crontab's own lines), no terminal (a new session), nothing on stdin."""
    cron_env = [f"{k}={v}" for k, v in {"HOME": str(home), "LOGNAME": "me", "SHELL": "/bin/sh", **env}.items()]
    return subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", *cron_env, "/bin/sh", "-c", command],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          start_new_session=True)


def test_the_readme_has_the_crontab_recipes_this_file_runs():
    commands = [command for _, command in crontab_jobs()]
    assert len(commands) == 2
    assert all(c.startswith("$HOME/.local/memory/bin/memory backup --quiet ") for c in commands)
    assert ("\npython3 -m venv ~/.local/memory && ~/.local/memory/bin/pip install -q . && mkdir -p ~/backups/memory\n"
            in README)


def test_each_crontab_recipe_runs_as_cron_runs_it_and_says_nothing_on_success(cron_home):
    folder = cron_home / "backups" / "memory"
    for number, (env, command) in enumerate(crontab_jobs(), 1):
        job = as_cron(cron_home, env, command)
        assert (job.returncode, job.stdout, job.stderr) == (0, "", ""), command    # cron mails nothing
        assert len(own_backups(folder)) == number
    memory("import", "--db", cron_home / "restored.db", own_backups(folder)[-1])
    assert snapshot(cron_home / "restored.db") == snapshot(cron_home / ".memory-nexus" / "memory.db")
    log = (folder / "backup.log").read_text()
    newest = own_backups(folder)[-1]
    assert re.fullmatch(
        f"{STAMP}Exporting {newest}: 0 of 19 records \\(0%\\)\n{STAMP}Exporting {newest}: 19 of 19 records \\(100%\\)\n"
        f"{STAMP}Checking {newest}: 0 of 19 records \\(0%\\)\n{STAMP}Checking {newest}: 19 of 19 records \\(100%\\)\n"
        f"{STAMP}Backed up 19 records \\([0-9.]+ kB\\); to {newest}; from database {cron_home}/.memory-nexus/memory.db; "
        "removed 0 old backups \\(--keep-daily 7 --keep-weekly 4 --keep-monthly 12\\)\n", log), log


def test_a_failed_crontab_job_says_so_where_cron_mails_it(cron_home):
    (cron_home / ".memory-nexus" / "memory.db").unlink()
    (quiet_env, quiet), (logged_env, logged) = crontab_jobs()
    job = as_cron(cron_home, quiet_env, quiet)
    database = cron_home / ".memory-nexus" / "memory.db"
    assert (job.returncode, job.stdout, job.stderr) == (1, "", f"Error: no database at {database}\n")
    job = as_cron(cron_home, logged_env, logged)
    log = cron_home / "backups" / "memory" / "backup.log"
    assert (job.returncode, job.stdout, job.stderr) == (0, f"memory backup failed: see {log}\n", "")
    assert log.read_text() == f"Error: no database at {database}\n"


def test_backup_on_a_terminal_shows_counts_size_and_what_it_removed(tmp_path, sample_db):
    folder = tmp_path / "b"
    memory("backup", "--db", sample_db, "--keep", "1", folder)
    old = own_backups(folder)[0]
    status, screen = on_terminal("backup", "--db", "sample.db", "--keep", "1", "b", cwd=tmp_path)
    new = own_backups(folder)[0]
    lines = screen_lines(screen)
    report = lines[next(i for i, line in enumerate(lines) if line.startswith("Backed up")):]
    assert status == 0 and old != new and not old.exists()
    assert report[0:2] == [f"Backed up 19 records ({new.stat().st_size / 1000:.1f} kB)", f"to b/{new.name}"]
    assert report[2:4] == ["from database sample.db", "  sessions                      2"]
    assert report[-3:] == ["removed 1 old backup (--keep 1)", f"  b/{old.name}", ""]


# ---- --quiet and --progress ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("export", "--db", "{db}", "{tmp}/x.json"), ("validate", "{sample}"),
                                  ("import", "--db", "{tmp}/new.db", "{sample}"),
                                  ("import", "--db", "{db}", "--clear", "{sample}"),
                                  ("backup", "--db", "{db}", "{tmp}/b")])
def test_quiet_success_prints_nothing_at_all_and_errors_still_speak(tmp_path, sample_db, args):
    done = run(*[a.format(db=sample_db, tmp=tmp_path, sample=SAMPLE) for a in args], "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    missing = tmp_path / "missing"
    failed = run(*[a.format(db=missing, tmp=tmp_path, sample=missing) for a in args], "--quiet", text=True)
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr in (f"Error: no database at {missing}\n", f"Error: {missing}: No such file or directory\n")


def test_import_progress_logs_each_phase_after_the_records_with_the_time_and_the_file(tmp_path):
    done = run("import", "--progress", "--db", tmp_path / "new.db", SAMPLE, text=True)
    assert done.returncode == 0, done.stderr
    phases = ["rebuilding indexes", "rebuilding the search index", "checking foreign keys", "committing"]
    assert re.fullmatch(f"{STAMP}Importing {SAMPLE}: 0 of 19 records \\(0%\\)\n"
                        f"{STAMP}Importing {SAMPLE}: 19 of 19 records \\(100%\\)\n"
                        + "".join(f"{STAMP}Importing {SAMPLE}: {p}\n" for p in phases) +
                        f"{STAMP}Imported 19 records: 19 inserted, 0 skipped; from {SAMPLE}; "
                        f"into new database {tmp_path / 'new.db'}\n", done.stderr), done.stderr
    assert done.stdout.startswith("Imported 19 records")


def test_import_on_a_terminal_shows_the_phases_after_the_bar_and_no_time_estimate(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "sample.json")
    status, screen = on_terminal("import", "--db", "new.db", "sample.json", cwd=tmp_path)
    assert status == 0, screen
    lines = [line for line in screen_lines(screen) if line.strip()]
    bar_end = max(i for i, line in enumerate(lines) if line.startswith("Importing") and "100%" in line)
    assert lines[bar_end + 1: bar_end + 5] == ["  Rebuilding indexes...", "  Rebuilding the search index...",
                                               "  Checking foreign keys...", "  Committing..."]
    assert lines[bar_end + 5: bar_end + 8] == ["Imported 19 records: 19 inserted, 0 skipped", "from sample.json",
                                               "into new database new.db"]
    assert not re.search(r"\d\d:\d\d:\d\d", screen)      # no estimate, so none that lies


# ---- reports at 80 columns, naming the database -----------------------------------------------------------

@pytest.mark.parametrize("args", [("export", "--db", "sample.db", "x.json"), ("validate", "x.json"), ("import", "--db", "new.db", "x.json"),
                                  ("restore", "--db", "sample.db", "--yes", "x.json"),
                                  ("backup", "--db", "sample.db", "b"), ("stats", "--db", "sample.db"),
                                  ("--help",), ("import", "-h"), ("backup", "-h")])
def test_terminal_output_fits_80_columns(tmp_path, sample_db, args):
    memory("export", "--db", sample_db, tmp_path / "x.json")
    status, screen = on_terminal(*args, cwd=tmp_path)
    assert status == 0, screen
    assert all(len(line) <= 80 for line in screen_lines(screen)), screen


@pytest.mark.parametrize("args", [("backup", "~/backups/memory"), ("import", "--clear", "~/backups/memory"),
                                  ("export", "~/backups/memory.json.gz"), ("validate", "{newest}")])
def test_the_readme_recipes_on_a_terminal_put_each_long_path_on_a_line_of_its_own(tmp_path, monkeypatch, args):
    """The default database and the README's folder: a line wider than 80 columns is only ever a path with
    a short word before it, never a sentence that wraps mid-word."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".memory-nexus").mkdir()
    shutil.copy(SAMPLE, tmp_path / "sample.json")
    assert memory("import", "-q", "sample.json".join([str(tmp_path) + "/", ""])).exit_code == 0
    assert memory("backup", "-q", "~/backups/memory").exit_code == 0
    newest = own_backups(tmp_path / "backups" / "memory")[-1]
    status, screen = on_terminal(*[a.format(newest=newest) for a in args], cwd=tmp_path)
    assert status == 0, screen
    lines = screen_lines(screen)
    report = lines[next(i for i, line in enumerate(lines) if re.match("Backed up|Imported|Exported|Validated", line)):]
    assert len(report) >= 3 and len(report[0]) <= 80 and "/" not in report[0], screen
    words = ("to ", "from ", "from database ", "into database ")
    long = [line for line in report if len(line) > 80]
    assert long and all(any(line == word + path for word in words for path in re.findall(r"/\S+", line))
                        for line in long), screen


def test_list_fits_80_columns_with_a_real_sized_database(tmp_path):
    """A folder of backups of a database with thousands of sessions and messages, on a terminal, with and
    without --check."""
    make_database(tmp_path / "big.db", sessions=1200, messages_per_session=3)
    assert memory("backup", "--db", tmp_path / "big.db", "-q", "--compress", "none", "--format", "jsonl",
                  tmp_path / "b").exit_code == 0
    for args in (("list", "b"), ("list", "--check", "b")):
        status, screen = on_terminal(*args, cwd=tmp_path)
        lines = screen_lines(screen)
        assert status == 0 and "1,200" in screen and "3,600" in screen and ".jsonl" in screen, screen
        assert all(len(line) <= 80 for line in lines), screen


def test_import_into_a_new_database_says_so_and_the_prompt_names_the_database(tmp_path, sample_db):
    first = memory("import", "--db", tmp_path / "typo" / "m.db", SAMPLE)
    assert first.stdout.splitlines()[2] == f"into new database {tmp_path / 'typo' / 'm.db'}"
    again = memory("import", "--db", tmp_path / "typo" / "m.db", "--clear", SAMPLE)
    assert again.stdout.splitlines()[2] == f"into database {tmp_path / 'typo' / 'm.db'}"
    assert json.loads(memory("import", "--db", tmp_path / "j.db", "--json", SAMPLE).stdout)["created"] is True
    status, screen = on_terminal("import", "--db", "sample.db", str(SAMPLE), cwd=tmp_path, typed=b"n\n")
    assert status == 1       # (the terminal echoes the typed answer before the question appears)
    assert "\nThe database sample.db has 2 sessions and 5 messages. Merge into it? [y/N]: " in screen


# ---- names, formats, directories --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["b.jsonl.zst", "b.jsonl.gz", "b.jsonl", "b.json.zst", "b.json"])
def test_the_layout_is_told_from_the_bytes_whatever_the_name(tmp_path, sample_db, name):
    memory("export", "--db", sample_db, tmp_path / name)
    (tmp_path / name).rename(tmp_path / "backup.bak")
    assert memory("validate", tmp_path / "backup.bak").exit_code == 0
    piped = memory("import", "--db", tmp_path / "piped.db", "-", input=(tmp_path / "backup.bak").read_bytes())
    assert piped.exit_code == 0, piped.output
    assert memory("restore", "--db", tmp_path / "named.db", tmp_path / "backup.bak").exit_code == 0
    assert snapshot(tmp_path / "piped.db") == snapshot(tmp_path / "named.db") == snapshot(sample_db)


@pytest.mark.parametrize("first_bytes, layout", [
    (b'{"version":"1.2","exportedAt":"t","stats":{"sessions":0}}\n{"end":true}\n', "jsonl"),
    (b'{"version":"1.2","exportedAt":"t","stats":{"sessions":0},\n"sessions":[]}\n', "json"),   # ours
    (b'{\n  "version": "1.0",\n', "json"),                                                          # memory-nexus's
    (b'{"version":"1.0","stats":{},"sessions":[]}\n', "json"),            # a whole document on one line (jq -c)
    (b'{"version":"1.2","stats":{}}', "json"),                            # no newline: not a JSON Lines header
    (b"\xff\xfe not json\n", "json"),                                     # left to the JSON reader to refuse
])
def test_sniffed_format_reads_the_first_line_and_gives_every_byte_back(first_bytes, layout):
    layout_found, stream = sniffed_format(io.BufferedReader(io.BytesIO(first_bytes)))
    assert layout_found == layout
    assert stream.read() == first_bytes


@pytest.mark.parametrize("args, message", [
    (("--compress", "none", "y.json.gz"), "--compress none contradicts the name 'y.json.gz' (.gz): change one of them"),
    (("--compress", "gzip", "y.json"), "--compress gzip contradicts the name 'y.json' (.json): change one of them"),
    (("--format", "jsonl", "z.json"), "--format jsonl contradicts the name 'z.json' (.json): change one of them"),
    (("--format", "json", "b.jsonl.zst"),
     "--format json contradicts the name 'b.jsonl.zst' (.jsonl): change one of them"),
    (("--compress", "none", "y.json.GZ"), "--compress none contradicts the name 'y.json.GZ' (.GZ): change one of them"),
    (("--format", "json", "--compress", "none", "y.ZST"),
     "--compress none contradicts the name 'y.ZST' (.ZST): change one of them"),
    (("--format", "jsonl", "z.JSON"), "--format jsonl contradicts the name 'z.JSON' (.json): change one of them"),
    (("--format", "json", "backup.json.bz2"),
     "'backup.json.bz2' ends in .bz2, which memory does not write: name it .gz or .zst (or neither)"),
])
def test_a_name_contradicting_the_options_is_a_usage_error_and_writes_nothing(tmp_path, sample_db, monkeypatch,
                                                                             args, message):
    monkeypatch.chdir(tmp_path)
    result = memory("export", "--db", sample_db, *args)
    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.db"]


@pytest.mark.parametrize("args", [("validate", "sample.db"), ("import", "--db", "new.db", "sample.db"),
                                  ("import", "--db", "new.db", "-")])
def test_a_database_given_where_a_backup_belongs_says_so(tmp_path, sample_db, monkeypatch, args):
    """`memory import ~/.memory-nexus/memory.db`: the database passed as the backup, a new user's slip."""
    monkeypatch.chdir(tmp_path)
    before = sample_db.read_bytes()
    result = memory(*args, input=before if args[-1] == "-" else None)
    said = ("stdin is an SQLite database, not a backup" if args[-1] == "-" else
            "sample.db is an SQLite database, not a backup: restore into it with --db sample.db, or back it up "
            "with memory export --db sample.db FILE")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {said}\n")
    assert sample_db.read_bytes() == before and not (tmp_path / "new.db").exists()


def test_options_that_agree_with_the_name_or_a_name_that_says_nothing_are_taken(tmp_path, sample_db):
    for args in (("--compress", "gzip", "a.json.gz"), ("--format", "jsonl", "b.jsonl"),
                 ("--format", "jsonl", "--compress", "gzip", "c.bak")):
        assert memory("export", "--db", sample_db, *args[:-1], tmp_path / args[-1]).exit_code == 0
    assert gzip.decompress((tmp_path / "c.bak").read_bytes()).startswith(b'{"version":"1.2"')
    for name, magic in (("UPPER.JSON.GZ", b"\x1f\x8b"), ("Upper.Json.Zst", b"\x28\xb5\x2f\xfd"),
                        ("UPPER.JSONL", b'{"version":"1.2","exportedAt"')):
        assert memory("export", "--db", sample_db, tmp_path / name).exit_code == 0, name    # the name says it
        assert (tmp_path / name).read_bytes().startswith(magic), name
        assert memory("validate", tmp_path / name).exit_code == 0, name
    assert b'\n{"table":' in (tmp_path / "UPPER.JSONL").read_bytes()


def test_export_to_a_directory_says_so_and_points_at_backup(tmp_path, sample_db):
    (tmp_path / "adir").mkdir()
    result = memory("export", "--db", sample_db, tmp_path / "adir")
    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: {tmp_path / 'adir'} is a directory; export writes one file "
                                  f"(`memory backup {tmp_path / 'adir'}` writes a new dated backup into a folder)\n")
    assert list((tmp_path / "adir").iterdir()) == []


def test_backup_to_stdout_is_refused(tmp_path, sample_db, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = memory("backup", "--db", sample_db, "-")
    assert result.exit_code == 2
    assert result.stderr.endswith("Error: backup writes into a folder, not to stdout: use `memory export -` for that\n")
    assert not (tmp_path / "-").exists()


def test_a_tilde_is_expanded_in_every_path_as_in_db(tmp_path, sample_db, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert memory("backup", "--db", "~/sample.db", "-q", "~/bk").exit_code == 0
    assert len(own_backups(tmp_path / "bk")) == 1 and not (tmp_path / "~").exists()
    listed = memory("list", "~/bk")
    assert (listed.exit_code, listed.stderr) == (0, "") and str(own_backups(tmp_path / "bk")[0].name) in listed.stdout
    assert memory("list", "--check", "~/bk").exit_code == 0
    assert memory("backup", "--db", "~/sample.db", "--dry-run", "-q", "~/bk").exit_code == 0
    assert memory("export", "--db", "~/sample.db", "-q", "~/x.json").exit_code == 0
    assert memory("validate", "-q", "~/x.json").exit_code == 0
    assert memory("import", "--db", "~/new.db", "-q", "~/x.json").exit_code == 0
    assert snapshot(tmp_path / "new.db") == snapshot(sample_db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "new.db", "sample.db", "x.json"]


@pytest.mark.parametrize("args", [("backup", "--db", "sample.db", ""), ("backup", "--db", "sample.db", "--dry-run", ""),
                                  ("export", "--db", "sample.db", ""), ("validate", ""), ("import", "--db", "n.db", ""),
                                  ("import", "--db", "", "x.json"), ("stats", "--db", ""), ("list", "")])
def test_an_empty_path_is_a_usage_error_never_the_current_folder(tmp_path, sample_db, monkeypatch, args):
    """`memory backup "$DIR"` with DIR unset must not back up into (and rotate) whatever folder cron is in."""
    monkeypatch.chdir(tmp_path)
    memory("export", "--db", sample_db, "-q", "x.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = memory(*args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.endswith("an empty path names nothing (an unset variable?)\n"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---- terminals and pipes ----------------------------------------------------------------------------------

def test_compressed_output_is_not_written_to_a_terminal(tmp_path, sample_db):
    for compress in ("zstd", "gzip"):
        status, screen = on_terminal("export", "--db", "sample.db", "--compress", compress, "-", cwd=tmp_path)
        assert (status, screen) == (1, f"Error: stdout is a terminal: {compress}-compressed data is not written "
                                       "there; redirect it to a file or a pipe\n")
    status, screen = on_terminal("export", "--db", "sample.db", "-", cwd=tmp_path)    # plain JSON is text
    assert status == 0 and '\n{"version":"1.2"' in screen


@pytest.mark.parametrize("path", ["/dev/stdout", "/dev/stderr"])   # (/dev/tty: this terminal is no controlling one)
def test_compressed_output_to_a_terminal_named_by_its_path_is_refused_too(tmp_path, sample_db, path):
    status, screen = on_terminal("export", "--db", "sample.db", "--format", "json", "--compress", "zstd", path,
                                 cwd=tmp_path)
    assert (status, screen) == (1, f"Error: {path} is a terminal: zstd-compressed data is not written there; "
                                   "redirect it to a file or a pipe\n")
    status, screen = on_terminal("export", "--db", "sample.db", "--format", "json", "-q", path, cwd=tmp_path)
    assert status == 0 and screen.startswith('{"version":"1.2"')


@pytest.mark.parametrize("args", [("validate", "-"), ("import", "--db", "new.db", "-")])
def test_reading_stdin_that_is_a_terminal_is_refused_not_waited_on(tmp_path, args):
    """`memory import -` typed by mistake would sit waiting for a backup typed by hand, as gzip -d refuses to."""
    status, screen = on_terminal(*args, cwd=tmp_path)
    assert (status, screen) == (1, "Error: stdin is a terminal: pipe a backup into it "
                                   "(zstd -dc backup.json.zst | memory import -)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, closed, message", [
    (("export", "--db", "{db}", "-"), ">&-", "Error: stdout is closed: give a file, or - with a pipe or a redirection\n"),
    (("import", "--db", "{tmp}/new.db", "-"), "<&-",
     "Error: stdin is closed: pipe a backup into it (zstd -dc backup.json.zst | memory import -)\n"),
    (("validate", "-"), "<&-", "Error: stdin is closed: pipe a backup into it (zstd -dc backup.json.zst | memory import -)\n")])
def test_a_closed_stdin_or_stdout_is_one_line_not_a_traceback(tmp_path, sample_db, args, closed, message):
    command = " ".join(f"'{a.format(db=sample_db, tmp=tmp_path)}'" for a in args)
    done = subprocess.run(["/bin/sh", "-c", f"'{sys.executable}' -m pipeline {command} {closed}"], capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stderr) == (1, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.db"]


@pytest.mark.parametrize("args, closed, status, out, err", [
    (("validate", "{sample}"), "2>&-", 0, "Validated", ""),
    (("validate", "-q", "{tmp}/nothing.json"), "2>&-", 1, "", ""),
    (("export", "--db", "{db}", "{tmp}/b.json"), "2>&-", 0, "Exported", ""),
    (("import", "--db", "{db}", "{sample}"), "<&-", 1, "",
     "Error: {db} already has 2 sessions and 5 messages; pass --yes to merge into it or --clear to replace it\n"),
    (("stats", "--db", "{db}"), ">&-", 1, "", "Error: stdout: Bad file descriptor\n"),
    (("--version",), ">&-", 1, "", "Error: stdout: Bad file descriptor\n"),
])
def test_a_closed_standard_stream_changes_no_verdict(tmp_path, sample_db, args, closed, status, out, err):
    """Found by review: with stderr closed (2>&-) every command that reports on it (validate, export, import)
    exited 1 saying nothing, its work done; with stdin closed, an import into a database that holds data ended in
    a traceback (is it a terminal?); with stdout closed, a report went nowhere with exit 0, where cat fails."""
    command = " ".join(f"'{a.format(db=sample_db, tmp=tmp_path, sample=SAMPLE)}'" for a in args)
    done = subprocess.run(["/bin/sh", "-c", f"'{sys.executable}' -m pipeline {command} {closed}"], capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode, done.stdout.split(" ")[0] if done.stdout else "", done.stderr) == (
        status, out, err.format(db=sample_db))
    made = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("sample.db"))    # its -wal: the fixture's
    assert made == ["b.json"] * (args[0] == "export")


@pytest.mark.parametrize("args", [("export", "-"), ("export", "--compress", "zstd", "-"), ("stats",)])
def test_a_closed_pipe_ends_quietly_with_the_status_of_a_tool_killed_by_sigpipe(tmp_path, sample_db, args):
    read_end, write_end = os.pipe()
    os.close(read_end)                        # the reader is gone before anything is written
    done = run(args[0], "--db", sample_db, *args[1:], stdout=write_end, stderr=subprocess.PIPE, capture_output=False)
    os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")


def test_export_into_head_ends_quietly(tmp_path):
    db = make_database(tmp_path / "big.db", sessions=20, messages_per_session=500)    # far beyond a pipe's buffer
    script = f'"{sys.executable}" -m pipeline export --db "{db}" - | head -c 100; echo " ${{PIPESTATUS[0]}}"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stderr == ""
    assert done.stdout.startswith('{"version":"1.2"') and done.stdout.endswith(" 141\n")


def test_h_is_help_everywhere_and_restore_is_import(tmp_path):
    for args in ((), ("export",), ("import",), ("restore",), ("validate",), ("backup",), ("stats",)):
        short, long = memory(*args, "-h"), memory(*args, "--help")
        assert (short.exit_code, short.stdout) == (0, long.stdout) and "Usage: " in short.stdout
    assert memory("restore", "-h").stdout.replace("cli restore", "cli import") == memory("import", "-h").stdout


def test_the_command_list_has_whole_short_summaries():
    listing = memory("--help").stdout.split("Commands:\n")[1].splitlines()
    assert [line.split()[0] for line in listing] == ["backup", "export", "import", "list", "stats", "validate"]
    assert all(line.endswith(".") and not line.endswith("...") for line in listing), listing


# ---- the README -------------------------------------------------------------------------------------------

def test_the_quick_start_runs_twice_and_keeps_its_files_in_an_ignored_folder(tmp_path):
    """Run as written, past the install (this test's own install stands in for it), in a copy of the clone's
    fixtures; then a second time."""
    command = blocks(section("## Quick start"), "sh")[0].strip()
    setup, sep, rest = command.partition("pip install -q . && ")
    assert sep and setup == "python3 -m venv .venv && . .venv/bin/activate && ", command
    shutil.copytree(ROOT / "fixtures", tmp_path / "fixtures")
    env = os.environ | {"PATH": f"{INSTALLED.parent}:{os.environ['PATH']}"}
    for _ in range(2):
        done = subprocess.run(["/bin/sh", "-c", rest], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.iterdir())
    assert made == [".sample", "fixtures"]
    assert {".sample/memory.db", ".sample/memory.json.gz"} <= {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert "/.sample/" in (ROOT / ".gitignore").read_text().splitlines()
    memory("import", "--db", tmp_path / "direct.db", SAMPLE)
    assert clock_free(tmp_path / ".sample" / "memory.db") == clock_free(tmp_path / "direct.db")


def test_ci_runs_the_readme_test_command_word_for_word():
    command = blocks(section("## Quick start"), "sh")[1].strip()
    assert command == "pip install -q -e '.[test]' && python -m pytest -q"
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_guarantees_resting_on_tests_that_need_shared_say_so():
    skipping = {"test_a_created_database_has_the_memory_nexus_schema",
                "test_memory_nexus_export_imports_and_matches_its_database",
                "test_our_export_carries_every_key_memory_nexus_writes",
                "test_compat_database_round_trips_exactly",
                "test_the_real_memory_nexus_database_merges_into_another_machines",
                "test_the_real_database_with_a_messages_page_copied_over_another",
                "test_memory_nexus_s_own_file_gets_the_index_a_rebuild_makes",
                "test_files_without_a_checksum_still_import"}       # one of its sources: unavailable(...) inline
    found = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        text = path.read_text()
        found |= set(re.findall(r"@needs_compat\n(?:@.*\n)*def (test_\w+)", text))
        found |= {re.match(r"\w+", body)[0] for body in text.split("\ndef ")[1:]
                  if body.startswith("test_") and "unavailable(" + '"../shared/compat' in body}
    assert found == skipping
    note = README[README.index("They skip without `../shared`"):]
    note = note[: note.index("\n\n")]
    assert all(f"`{name}`" in note for name in skipping), note


@pytest.mark.parametrize("args", [("stats",), ("export", "x.json"), ("backup", "b"), ("import", "{sample}"),
                                  ("import", "--clear", "{sample}"), ("import", "--yes", "--dry-run", "{sample}")])
def test_a_sqlite_file_that_is_not_a_memory_database_is_one_line_the_same_everywhere(tmp_path, monkeypatch, args):
    db = tmp_path / "other.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE notes (x)")
        conn.execute("INSERT INTO notes VALUES (1)")
    before = db.read_bytes()
    monkeypatch.chdir(tmp_path)
    result = memory(*[a.format(sample=SAMPLE) for a in args], "--db", db)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: {db} is not a memory database: no table sessions\n")
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
