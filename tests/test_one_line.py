"""One line, never a traceback, in bounded memory: a database that cannot be made, lines that never end."""

import io
import itertools
import json
import os
import resource
import subprocess
import sys
import tracemalloc

import pytest
from conftest import ROOT, SAMPLE, memory

from pipeline import formats, report
from pipeline.errors import BadBackup
from pipeline.formats import read_jsonl
from test_bad_input import as_jsonl

pytestmark = pytest.mark.usefixtures("parse_path")   # every test on the fast and the strict reader

JSONL = as_jsonl(json.loads(SAMPLE.read_bytes()))
HEADER_END = JSONL.index(b"\n")


@pytest.mark.parametrize("where, reason", [
    ("file/x.db", "{tmp}/file is not a folder"),
    ("file/deeper/x.db", "Not a directory"),
    ("/proc/x.db", "unable to open database file"),
    ("/proc/none/x.db", "No such file or directory"),
])
def test_a_database_that_cannot_be_created_is_one_line(tmp_path, where, reason):
    (tmp_path / "file").write_bytes(b"a file, not a folder")
    db = tmp_path / where
    result = memory("import", "--db", db, SAMPLE)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: cannot create a database at {db}: {reason.format(tmp=tmp_path)}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert (tmp_path / "file").read_bytes() == b"a file, not a folder"


def limited(megabytes):
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, megabytes << 20))
    return preexec


def test_validate_of_dev_zero_is_refused_at_once_in_bounded_memory():
    """It grew to the 4 GB ulimit and died with MemoryError; here it has 300 MB of address space."""
    run = subprocess.run([sys.executable, "-m", "pipeline", "validate", "--format", "jsonl", "/dev/zero"],
                         preexec_fn=limited(300), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (run.returncode, run.stdout, run.stderr) == (
        1, "", "Error: line 1: not a memory backup header (version, exportedAt, stats)\n")


def test_an_endless_line_from_a_pipe_is_refused_in_bounded_memory():
    """'{' and then spaces for ever, from a generator, into a process with 300 MB of address space and the
    longest line lowered to 64 MiB: refused once the line passes it."""
    code = ("import sys; from pipeline import formats; formats.MAX_LINE = 64 << 20; "
            "from pipeline.cli import main; sys.argv = ['memory', 'validate', '--format', 'jsonl', '-']; main()")
    reader = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, preexec_fn=limited(300), cwd=ROOT)
    written = 0
    try:
        reader.stdin.write(b"{")
        while written < 4 << 30:      # 4 GiB: far past what it may hold
            reader.stdin.write(b" " * (1 << 20))
            written += 1 << 20
    except BrokenPipeError:
        pass
    out, err = reader.communicate(timeout=60)
    assert (reader.returncode, out, err.decode()) == (
        1, b"", "Error: line 1: longer than 67,108,864 bytes, the most a line may hold\n")
    assert 64 << 20 <= written < 1 << 30


class Endless(io.RawIOBase):
    """A stream that starts with `start` and then gives `fill` for ever."""

    def __init__(self, start: bytes, fill: bytes):
        self.start, self.fill = start, fill

    def readable(self):
        return True

    def readinto(self, buffer):
        n = len(buffer)
        data = (self.start + self.fill * n)[:n]
        self.start = self.start[n:]
        buffer[:n] = data
        return n


def peak_of(call):
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("start, fill, message", [
    (b"", b" ", "line 1: not a memory backup header (version, exportedAt, stats)"),
    (b"", b"\0", "line 1: not a memory backup header (version, exportedAt, stats)"),
    (b"{", b" ", "line 1: longer than 4,194,304 bytes, the most a line may hold"),
    (JSONL[:HEADER_END + 1], b" ", 'line 2: expected {"table": ..., "record": ...} or {"end": true}'),
    (JSONL[:HEADER_END + 1] + b'{"table": "sessions", "record": {"id": "', b"x",
     "line 2: longer than 4,194,304 bytes, the most a line may hold"),
])
def test_the_json_lines_reader_refuses_an_endless_stream_holding_at_most_one_line(monkeypatch, start, fill,
                                                                                   message):
    monkeypatch.setattr(formats, "MAX_LINE", 4 << 20)

    def read():
        header, sections = read_jsonl(io.BufferedReader(Endless(start, fill)))
        for _, records in sections:
            for _ in records:
                pass
    with pytest.raises(BadBackup) as refused:
        read()
    assert str(refused.value) == message
    assert peak_of(lambda: pytest.raises(BadBackup, read)) < 3 * (4 << 20)   # the line, a piece, the buffer


def spaces_file(path, start: bytes, megabytes: int, compression: str) -> None:
    """`start`, then that many MiB of spaces and a newline, compressed (or not) a MiB at a time."""
    with open(path, "wb") as raw, formats.compressed_writer(raw, compression) as out:
        for chunk in itertools.chain([start], itertools.repeat(b" " * (1 << 20), megabytes), [b"\n"]):
            out.write(chunk)


# A line is at most MAX_LINE (1 MiB here) and a piece; one step of the decompressor (Decompressed.STEP) comes on
# top, whatever the ratio: 256 MiB of spaces is 261 kB of gzip, 8 kB of zstd. Each step once decompressed all that
# 16 KiB of the file held: the peak was 48 MB for gzip, 272 MB for zstd.
@pytest.mark.parametrize("compression, megabytes, bound", [("none", 32, 4 << 20), ("gzip", 256, 5 << 20),
                                                           ("zstd", 256, 5 << 20)])
def test_a_file_of_spaces_is_refused_at_once_and_an_overlong_line_in_bounded_memory(tmp_path, monkeypatch,
                                                                                    compression, megabytes, bound):
    monkeypatch.setattr(formats, "MAX_LINE", 1 << 20)
    spaces_file(tmp_path / "spaces.jsonl", b"", megabytes, compression)
    spaces_file(tmp_path / "long.jsonl", JSONL[:HEADER_END], megabytes, compression)
    for name, message in (("spaces.jsonl", "line 1: not a memory backup header (version, exportedAt, stats)"),
                          ("long.jsonl", "line 1: longer than 1,048,576 bytes, the most a line may hold")):
        results = []
        peak = peak_of(lambda: results.append(memory("validate", tmp_path / name)))
        assert (results[0].exit_code, results[0].stdout, results[0].stderr) == (1, "", f"Error: {message}\n")
        assert peak < bound, peak


def test_a_line_of_exactly_the_longest_length_is_read(tmp_path, monkeypatch):
    header = JSONL[:HEADER_END]
    monkeypatch.setattr(formats, "MAX_LINE", 1000)
    for length, code in ((1000, 0), (1001, 1)):
        padded = header + b" " * (length - 1 - len(header)) + b"\n"
        (tmp_path / "x.jsonl").write_bytes(padded + JSONL[HEADER_END + 1:])
        result = memory("validate", tmp_path / "x.jsonl")
        assert result.exit_code == code, result.output
        if code:
            assert result.stderr == "Error: line 1: longer than 1,000 bytes, the most a line may hold\n"


# ---- names that hold a line break or a control character -------------------------------------------------
# A file may be named with any byte but '/' and NUL: a name holding a newline printed as it is broke a message
# in two (and one holding an escape sequence could drive the terminal). Such characters are written as Python
# writes them in a string literal, wherever a message or a report line shows them.

ODD = "odd\nname\x1b[2J\u2028.json"
ODD_SHOWN = "odd\\nname\\x1b[2J\\u2028.json"


def test_an_error_naming_a_file_with_a_newline_is_one_line(tmp_path):
    result = memory("validate", tmp_path / ODD)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", f"Error: {tmp_path}/{ODD_SHOWN}: No such file or directory\n")


def test_a_usage_error_naming_such_a_file_keeps_its_message_on_one_line(tmp_path):
    (tmp_path / ODD).mkdir()
    result = memory("export", "--db", tmp_path / "none.db", tmp_path / ODD)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: {tmp_path}/{ODD_SHOWN} is a directory; export writes one file (`memory backup "
        f"{tmp_path}/{ODD_SHOWN}` writes a new dated backup into a folder)")


def test_reports_and_progress_lines_show_such_names_on_one_line(tmp_path):
    db = tmp_path / f"db-{ODD}"
    assert memory("import", "--quiet", "--db", db, SAMPLE).exit_code == 0
    exported = memory("export", "--progress", "--db", db, tmp_path / ODD)
    assert exported.exit_code == 0
    assert exported.stdout.splitlines()[1:3] == [f"to {tmp_path}/{ODD_SHOWN}",
                                                 f"from database {tmp_path}/db-{ODD_SHOWN}"]
    assert exported.stdout.count("\n") == 12        # the first line, to, from, nine tables
    stamped = exported.stderr.splitlines()
    assert stamped and all(line[:2] == "20" and f"{tmp_path}/{ODD_SHOWN}" in line for line in stamped), stamped
    validated = memory("validate", tmp_path / ODD)
    assert validated.stdout.splitlines()[1] == f"from {tmp_path}/{ODD_SHOWN}"
    stats = memory("stats", "--db", db)
    assert stats.stdout.splitlines()[0].startswith(f"{tmp_path}/db-{ODD_SHOWN} (")
    again = memory("import", "--db", db, tmp_path / ODD)     # into a database with rows: refused, not asked
    assert (again.exit_code, again.stderr.count("\n")) == (1, 1), again.stderr
    assert f"{tmp_path}/db-{ODD_SHOWN} already has 2 sessions" in again.stderr


def test_only_characters_that_break_a_line_or_drive_a_terminal_are_escaped():
    """Found by review: escaping all that str.isprintable refuses also escaped the narrow no-break space of a
    macOS screenshot's name, a no-break space, and the joiners of an emoji and of Persian words."""
    kept = "Screenshot 10.00.00\u202fAM \u00a0\U0001F469\u200d\U0001F4BB \u0645\u200c\u06cc.png"
    assert report.one_line(kept) == kept
    assert report.one_line("a\tb\rc\x00d\x7fe\x85f\u2029g") == "a\\tb\\rc\\x00d\\x7fe\\x85f\\u2029g"
    # A byte of a name that is not UTF-8 (a lone surrogate in Python) cannot be written to a strict stdout.
    assert report.one_line("x\udcff.db") == "x\\udcff.db"


def test_a_name_cannot_reorder_how_a_message_reads(tmp_path):
    """A right-to-left override in a name ("invoice\u202efdp.json" shows as "invoicenosj.pdf") would make an
    error name another file than the one it is about: the Unicode bidi controls are escaped, and the Arabic
    and Hebrew letters they would reorder are not."""
    controls = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    assert report.one_line(f"a{controls}b") == "a" + "".join(f"\\u{ord(c):04x}" for c in controls) + "b"
    assert report.one_line("\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627.json") == \
        "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627.json"
    result = memory("validate", tmp_path / "invoice\u202efdp.json")
    assert (result.exit_code, result.stderr) == (1, f"Error: {tmp_path}/invoice\\u202efdp.json: No such file or "
                                                    "directory\n")


def test_the_bare_command_still_prints_its_help_on_many_lines(tmp_path):
    """Found by review: click (from 8.2) shows the help of a bare `memory` as a usage error whose message is the
    help itself; escaping it as one line printed the whole help on one line of '\\n's."""
    run = subprocess.run([sys.executable, "-m", "pipeline"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode in (0, 2)          # click 8.1 exits 0 there, 8.2 and later 2
    shown = run.stdout + run.stderr
    assert shown.startswith("Usage: memory [OPTIONS] COMMAND [ARGS]...\n\n")
    assert "\\n" not in shown and shown.count("\n") > 10 and "  export " in shown


@pytest.mark.parametrize("encoding", ["", "utf-8:strict"])
def test_a_database_whose_name_is_not_utf8_is_read_as_it_is_written(tmp_path, encoding):
    """Found by review: `import` made such a database, but `stats`, `export` and `backup` failed on it with a
    traceback (UnicodeEncodeError in the URI made to open it read-only): history that went in could not come out.
    Then (review): printed as it is, the name's byte failed where stdout encodes strictly (en_US.UTF-8, macOS;
    PYTHONIOENCODING stands in for such a locale here), after the export was written: it is escaped (\\udcff)."""
    db = os.fsencode(tmp_path) + b"/memory-\xff.db"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                              timeout=60, env={**os.environ, "PYTHONIOENCODING": encoding})
    assert run("import", "--quiet", "--db", db, str(SAMPLE)).returncode == 0
    stats = run("stats", "--db", db)
    assert (stats.returncode, stats.stderr) == (0, b""), stats.stderr
    assert stats.stdout.startswith(os.fsencode(tmp_path) + b"/memory-\\udcff.db (")
    exported = run("export", "--db", db, str(tmp_path / "b.json"))
    assert (exported.returncode, exported.stderr) == (0, b""), exported.stderr
    assert f"from database {tmp_path}/memory-\\udcff.db\n".encode() in exported.stdout
    backed = run("backup", "--db", db, str(tmp_path / "set"))
    assert (backed.returncode, backed.stderr) == (0, b""), backed.stderr
    again = run("import", "--quiet", "--db", str(tmp_path / "again.db"), str(tmp_path / "b.json"))
    assert again.returncode == 0
    assert len(json.loads((tmp_path / "b.json").read_bytes())["messages"]) == 5
