"""Never destroy what is at the output path: the database and its files are refused, devices and FIFOs are
written through, a symbolic link stays one, a directory is named. Each runs on every simulated platform."""

import gzip
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, TYPED_SAMPLE, memory, snapshot

from pipeline.output import NotAFile, atomic_file


pytestmark = pytest.mark.usefixtures("platform")


def database_files(db: Path) -> tuple:
    """The database and its WAL byte for byte (a missing WAL as an empty one: a reader may make an empty one),
    and that no file of it holds a backup (the -shm is SQLite's shared index, whose read marks readers move)."""
    wal = Path(f"{db}-wal")
    ours = [p.name for p in db.parent.glob(db.name + "*") if p.read_bytes()[:1] == b"{"]
    return db.read_bytes(), wal.read_bytes() if wal.exists() else b"", ours


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def same_but_time(a: bytes, b: bytes) -> bool:
    """The same export but for its time, and so its checksum, which covers the time."""
    first, second = json.loads(a), json.loads(b)
    for key in ("exportedAt", "checksum"):
        first.pop(key), second.pop(key)
    return first == second


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
@pytest.mark.parametrize("how", ["name", "symlink", "hard link", "relative name"])
def test_an_output_that_is_the_database_or_its_files_is_refused(tmp_path, sample_db, suffix, how, monkeypatch):
    files = Path(f"{sample_db}{suffix}")
    live = sqlite3.connect(sample_db)            # memory-nexus has it open: its -wal and -shm are there
    live.execute("SELECT count(*) FROM sessions").fetchone()
    if how == "hard link" and suffix == "-journal":
        files.write_bytes(b"")                   # what a journal_mode=TRUNCATE database keeps between writes
    output = {"name": files, "relative name": Path(files.name), "symlink": tmp_path / "out" / "link.json",
              "hard link": tmp_path / "out" / "link.json"}[how]
    (tmp_path / "out").mkdir()
    if how == "symlink":
        output.symlink_to(files)          # the -journal does not exist yet: a link to where it would be
    elif how == "hard link":
        os.link(files, output)
    monkeypatch.chdir(tmp_path)
    state = snapshot(sample_db)
    before = database_files(sample_db)
    out_listing = listing(tmp_path / "out")
    result = memory("export", "--db", sample_db, "--format", "json", output)
    what = "the database" if not suffix else f"the database's {suffix[1:]} file"
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {output}: is {what} (")
    assert result.stderr.endswith("); writing the backup there would destroy it, so nothing was written: "
                                  "give another path\n")
    assert database_files(sample_db) == before and snapshot(sample_db) == state
    assert listing(tmp_path / "out") == out_listing
    live.close()



@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_the_files_of_the_database_by_another_of_its_names_are_refused(tmp_path, sample_db, suffix):
    """--db is a hard link to the database that memory-nexus opens by its own name: the -wal, -shm and
    -journal beside that name are the database's files too."""
    other = tmp_path / "other-name.db"
    os.link(sample_db, other)
    live = sqlite3.connect(sample_db)            # memory-nexus has it open: its -wal and -shm are there
    live.execute("SELECT count(*) FROM sessions").fetchone()
    output = Path(f"{sample_db}{suffix}")
    state, before, files = snapshot(sample_db), database_files(sample_db), listing(tmp_path)
    result = memory("export", "--db", other, "--format", "json", output)
    assert (result.exit_code, result.stderr) == (1, (
        f"Error: {output}: is the database's {suffix[1:]} file ({output}); writing the backup there would destroy "
        "it, so nothing was written: give another path\n"))
    assert database_files(sample_db) == before and snapshot(sample_db) == state
    # Reading the database by its other name gives that name a -wal and -shm of its own, as SQLite does
    assert [f for f in listing(tmp_path) if not f.startswith("other-name.db-")] == files
    live.close()

def test_backup_into_the_database_folder_is_allowed(tmp_path, sample_db):
    result = memory("backup", "--db", sample_db, "--json", tmp_path)
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.stdout)["path"]).parent == tmp_path


def test_a_character_device_is_written_through_not_replaced(tmp_path, sample_db):
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    before = null.lstat()
    result = memory("export", "--db", sample_db, "--format", "json", null)
    assert result.exit_code == 0, result.output
    after = null.lstat()
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == os.makedev(1, 3)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert listing(tmp_path) == ["null", "sample.db", "sample.db-shm", "sample.db-wal"]


def exported_through_fifo(fifo: Path, *args) -> tuple:
    """(the result of `memory export *args fifo`, what a reader of the FIFO made at `fifo` got)."""
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = memory("export", *args, fifo)
    reader.join(timeout=30)
    assert received, "the reader got nothing"
    return result, received[0]


def test_a_fifo_is_written_through_and_its_reader_gets_the_whole_export(tmp_path, sample_db):
    fifo = tmp_path / "fifo"
    result, received = exported_through_fifo(fifo, "--db", sample_db, "--format", "json")
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert memory("export", "--db", sample_db, tmp_path / "plain.json").exit_code == 0
    assert same_but_time(received, (tmp_path / "plain.json").read_bytes())
    assert listing(tmp_path) == ["fifo", "plain.json", "sample.db", "sample.db-shm", "sample.db-wal"]


def test_dev_stdout_is_written_through(tmp_path, sample_db):
    done = subprocess.run([sys.executable, "-m", "pipeline", "export", "-q", "--db", str(sample_db),
                           "--format", "json", "/dev/stdout"], cwd=ROOT, capture_output=True)
    assert (done.returncode, done.stderr) == (0, b"")
    assert memory("export", "--db", sample_db, tmp_path / "plain.json").exit_code == 0
    whole = (tmp_path / "plain.json").read_bytes()
    assert same_but_time(done.stdout, whole)      # --quiet: the export and nothing else


def test_a_socket_is_refused_by_the_system_with_one_line_naming_it(tmp_path, sample_db):
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        result = memory("export", "--db", sample_db, "--format", "json", path)
    assert (result.exit_code, result.stderr) == (1, f"Error: {path}: No such device or address\n")
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_a_symlink_stays_a_link_and_what_it_points_to_is_replaced(tmp_path, sample_db):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target, link = tmp_path / "real" / "backup.json", tmp_path / "links" / "latest.json"
    target.write_bytes(b"the last good backup")
    link.symlink_to(target)
    result = memory("export", "--db", sample_db, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert memory("validate", "-q", target).exit_code == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert (listing(tmp_path / "real"), listing(tmp_path / "links")) == (["backup.json"], ["latest.json"])


def test_a_dangling_symlink_gets_its_target_written(tmp_path, sample_db):
    link, target = tmp_path / "latest.json", tmp_path / "made.json"
    link.symlink_to(target.name)
    assert memory("export", "--db", sample_db, link).exit_code == 0
    assert link.is_symlink() and memory("validate", "-q", target).exit_code == 0


def test_a_directory_as_output_is_named_with_a_hint(tmp_path, sample_db):
    folder = tmp_path / "adir"
    folder.mkdir()
    result = memory("export", "--db", sample_db, "--format", "json", folder)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (
        2, f"Error: {folder} is a directory; export writes one file (`memory backup {folder}` writes a new dated "
           "backup into a folder)")
    assert listing(folder) == []
    with pytest.raises(NotAFile, match=f"^{re.escape(str(folder))}: is a directory; `memory backup {folder}` "
                                       "writes a new backup into it$"):
        with atomic_file(folder):          # below the CLI, the same refusal
            pass
    assert listing(folder) == []


def test_errors_name_the_users_path_never_the_temporary_one(tmp_path, sample_db):
    output = tmp_path / "missing" / "b.json"
    result = memory("export", "--db", sample_db, output)
    assert (result.exit_code, result.stderr) == (1, f"Error: {output}: No such file or directory\n")



def test_an_import_into_a_dangling_symlink_creates_the_database_where_it_points(tmp_path):
    """~/.memory-nexus/memory.db linked to a folder that holds no database yet, as on a fresh machine: the
    database is made where the link points (where SQLite, and so memory-nexus, would make it), the link stays."""
    (tmp_path / "data").mkdir()
    link, target = tmp_path / "memory.db", tmp_path / "data" / "memory.db"
    link.symlink_to(Path("data") / "memory.db")
    result = memory("import", "--db", link, TYPED_SAMPLE)      # 1.1: every value in the file, no defaults
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(Path("data") / "memory.db")
    assert (listing(tmp_path), listing(tmp_path / "data")) == (["data", "memory.db"], ["memory.db"])
    memory("import", "--db", tmp_path / "direct.db", TYPED_SAMPLE)
    assert snapshot(target) == snapshot(tmp_path / "direct.db")


def test_an_output_that_is_not_a_file_is_written_as_json_unless_told_otherwise_as_stdout_is(tmp_path, sample_db):
    """Found by an audit of the README: `memory export /dev/null` was refused (exit 2: "cannot tell the format
    from the name"), where the README says a device, a FIFO or /dev/stdout is written into as `>` does. Their
    names never say a format: as for `-`, JSON unless --format says otherwise; --compress is taken as given."""
    assert (memory("export", "--db", sample_db, "-q", "/dev/null").exit_code, os.path.exists("/dev/null")) == (0, True)
    fifo = tmp_path / "fifo"
    result, received = exported_through_fifo(fifo, "--db", sample_db, "-q", "--compress", "gzip")
    assert (result.exit_code, result.output) == (0, "")
    assert memory("export", "--db", sample_db, tmp_path / "plain.json").exit_code == 0
    assert same_but_time(gzip.decompress(received), (tmp_path / "plain.json").read_bytes())
    done = subprocess.run([sys.executable, "-m", "pipeline", "export", "-q", "--db", str(sample_db), "--format",
                           "jsonl", "/dev/stdout"], cwd=ROOT, capture_output=True)
    assert (done.returncode, done.stderr, done.stdout[:13]) == (0, b"", b'{"version":"1')
    assert b'\n{"table":"sessions"' in done.stdout


def test_a_fifo_whose_name_says_a_format_is_written_in_it(tmp_path, sample_db):
    """Found by review of the change above: a FIFO named p.jsonl.zst got plain JSON."""
    fifo = tmp_path / "p.jsonl.gz"
    result, received = exported_through_fifo(fifo, "--db", sample_db, "-q")
    assert (result.exit_code, result.output) == (0, "")
    assert gzip.decompress(received).startswith(b'{"version":"1.2"')
    assert b'\n{"table":"sessions","record":' in gzip.decompress(received)


@pytest.mark.parametrize("redirect", [">", ">>"])
def test_dev_stdout_redirected_to_a_file_is_written_into_as_stdout_never_replaced(tmp_path, sample_db, redirect):
    """Found by review: `memory export /dev/stdout >> log.txt` replaced log.txt with a new file holding only the
    export (the path led to a regular file, which export replaces atomically), and `> out.txt` was refused for
    want of a format. /dev/stdout is stdout: written into, JSON unless told otherwise."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"precious log line\n")
    inode = log.stat().st_ino
    done = subprocess.run(f"{sys.executable} -m pipeline export -q --db {sample_db} /dev/stdout {redirect} {log}",
                          shell=True, cwd=ROOT, capture_output=True)
    assert (done.returncode, done.stderr) == (0, b"")
    assert log.stat().st_ino == inode
    kept = b"precious log line\n" if redirect == ">>" else b""
    assert log.read_bytes().startswith(kept + b'{"version":"1.2"')
    assert memory("export", "--db", sample_db, tmp_path / "plain.json").exit_code == 0
    assert same_but_time(log.read_bytes()[len(kept):], (tmp_path / "plain.json").read_bytes())


def shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=ROOT, capture_output=True)


@pytest.mark.parametrize("name", ["./mystdout", "/dev//stdout", "/proc/thread-self/fd/1"])
def test_any_name_of_stdout_that_leads_to_a_file_is_written_into(tmp_path, sample_db, name):
    """Found by review: only three exact names counted as stdout; others that lead to the same file (a link to
    /dev/stdout, /dev//stdout) still replaced a log opened with >>."""
    (tmp_path / "mystdout").symlink_to("/dev/stdout")
    log = tmp_path / "log.txt"
    log.write_bytes(b"precious log line\n")
    inode = log.stat().st_ino
    done = subprocess.run(f"cd {tmp_path} && {sys.executable} -m pipeline export -q --format json --db {sample_db} "
                          f"{name} >> {log}", shell=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True)
    assert (done.returncode, done.stderr) == (0, b"")
    assert log.stat().st_ino == inode and log.read_bytes().startswith(b'precious log line\n{"version":"1.2"')


@pytest.mark.parametrize("name", ["/dev/stderr", "/dev/fd/2"])
def test_an_output_that_is_the_file_stderr_goes_to_is_refused(tmp_path, sample_db, name):
    """Found by review: `memory export --format json /dev/stderr 2>>log.txt` replaced the log with the export."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"precious log line\n")
    inode = log.stat().st_ino
    done = shell(f"{sys.executable} -m pipeline export -q --format json --db {sample_db} {name} 2>>{log}")
    assert done.returncode == 1 and log.stat().st_ino == inode
    assert log.read_bytes() == b"precious log line\n" + (
        f"Error: {name}: is where this command's messages go (stderr, {log}); writing the backup there would "
        "destroy it, so nothing was written: give another path\n").encode()


@pytest.mark.parametrize("name", ["-", "/dev/stdout"])
def test_stdout_that_is_the_database_is_refused(tmp_path, sample_db, name):
    """Found by review: `memory export /dev/stdout >> memory.db` appended the export to the database (and `-`
    did, before): refused, as a path that is the database is."""
    before = sample_db.read_bytes()
    done = shell(f"{sys.executable} -m pipeline export -q --db {sample_db} {name} >> {sample_db}")
    assert (done.returncode, done.stderr.decode()) == (1, (
        f"Error: stdout: is the database ({sample_db}); writing the backup there would destroy it, so nothing was "
        "written: give another path\n"))
    assert sample_db.read_bytes() == before
