"""Memory stays flat: the traced peak of export and import does not grow with the number of rows, nor that of
reading a compressed file with what its bytes expand to."""

import json
import sqlite3
import tracemalloc

import pytest
from conftest import SAMPLE, make_database, memory

from pipeline import canonical, ranges, records
from pipeline.database import new_database, open_for_reading, open_for_writing
from pipeline.errors import Refused
from pipeline.export import export
from pipeline.formats import compressed_writer, decompressed_reader, format_from_name
from pipeline.restore import load, open_backup


def peaks(tmp_path, messages_per_session: int, fmt: str) -> tuple[int, int]:
    source = make_database(tmp_path / f"{messages_per_session}.db", sessions=20,
                           messages_per_session=messages_per_session)
    backup = tmp_path / f"{messages_per_session}.{fmt}"
    conn = open_for_reading(source)
    tracemalloc.start()
    with open(backup, "wb") as out:
        export(conn, out, fmt)
    export_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    restored = tmp_path / f"restored-{messages_per_session}.db"
    with new_database(restored) as target:
        tracemalloc.start()
        with open(backup, "rb") as raw:
            load(target, open_backup(decompressed_reader(raw), fmt), create=True)
        import_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert open_for_reading(restored).execute("SELECT count(*) FROM messages_meta").fetchone()[0] == \
        20 * messages_per_session
    # A merge into another machine's database, whose message rowids 1 to 8 are taken: are those 8
    # renumbered? Only those: the renumbered ones go after the highest rowid, where no later record is.
    other = make_database(tmp_path / f"other-{messages_per_session}.db", sessions=2, name="other")
    target = open_for_writing(other)
    tracemalloc.start()
    with open(backup, "rb") as raw:
        report = load(target, open_backup(decompressed_reader(raw), fmt))
    merge_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.renumbered["messages"] == 8                # the rowids 1 to 8 other holds: no more
    return export_peak, import_peak, merge_peak


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_peak_memory_at_20x_rows_stays_within_a_batch_of_1x(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(records, "BATCH", 100)   # so 1x already spans many batches, and the test runs fast
    monkeypatch.setattr(canonical, "RUN", 16 << 10)     # and many of the fast reader's runs of lines
    # and an export's big tables spread (pipeline.ranges) at both sizes, over many ranges, with a held budget
    # of theirs filled at 1x already (it is the bound of a spread export: one batch and HELD bytes).
    monkeypatch.setenv(ranges.ENV, "1")
    monkeypatch.setattr(ranges, "RANGE", 50)
    monkeypatch.setattr(ranges, "HELD", 64 << 10)
    small = peaks(tmp_path, 50, fmt)        # 1,000 messages: ten batches
    large = peaks(tmp_path, 1_000, fmt)     # 20,000 messages
    for one, twenty in zip(small, large):
        assert twenty < one * 1.1 + 50_000, (small, large)


def merge_peak_with_a_fact_twice(tmp_path, messages_per_session: int) -> int:
    """A merge whose messages all wait to be renumbered (the target has every rowid) and whose file holds one
    message twice, last: the set-wise insert fails and the merge goes record by record through all of them,
    then refuses the file at the copy."""
    source = make_database(tmp_path / f"src-{messages_per_session}.db", sessions=20,
                           messages_per_session=messages_per_session, name="src")
    backup = tmp_path / f"twice-{messages_per_session}.json"
    with open(backup, "wb") as out:
        export(open_for_reading(source), out, "json")
    doc = json.loads(backup.read_bytes())
    doc["messages"].append(doc["messages"][0])
    doc["stats"]["messages"] += 1
    backup.write_text(json.dumps(doc))
    target = open_for_writing(make_database(tmp_path / f"t-{messages_per_session}.db", sessions=20,
                                            messages_per_session=messages_per_session, name="other"))
    tracemalloc.start()
    refused = rf"^messages\[{20 * messages_per_session}\]: the file holds id 'src-0-m0' twice"
    with open(backup, "rb") as raw, pytest.raises(Refused, match=refused):
        load(target, open_backup(decompressed_reader(raw), "json", ignore_checksum=True))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_merge_that_goes_record_by_record_stays_flat_too(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BATCH", 100)
    # The file is one line (json.dumps): the fast reader reads up to OTHER_LINE of it looking for the header's
    # end before handing it to the strict reader. A constant, lowered so both sizes are past it, as BATCH is.
    monkeypatch.setattr(canonical, "OTHER_LINE", 4096)
    small = merge_peak_with_a_fact_twice(tmp_path, 50)      # 1,000 messages
    large = merge_peak_with_a_fact_twice(tmp_path, 1_000)   # 20,000 messages
    # This peak moves with where the batches fall, not with the size: measured 0.32 to 0.63 MB at 1,000 to
    # 40,000 messages, in no order. Positions held in a list (the bug this guards) gave 0.43 MB against 2.2 MB.
    assert large < small * 1.5 + 50_000, (small, large)


def with_spaces(path, mib: int):
    """The sample with `mib` MiB of white space before its first array, compressed as the name says, a MiB at a
    time. Lines of spaces: on one line, the JSON reader's own reads grow to 16 MiB (formats._Growing takes it for
    a long string)."""
    text = SAMPLE.read_bytes()
    at = text.index(b'"sessions": [')
    with open(path, "wb") as raw, compressed_writer(raw, format_from_name(path.name)[1]) as out:
        out.write(text[:at])
        for _ in range(mib):
            out.write((b" " * 1023 + b"\n") * 1024)
        out.write(text[at:])
    return path


def validate_peak(path) -> int:
    tracemalloc.start()
    result = memory("validate", path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 0, result.output
    return peak


@pytest.mark.parametrize("name", ["b.json.zst", "b.json.gz"])
def test_what_a_small_file_expands_to_is_read_a_step_at_a_time(tmp_path, name):
    """Found by a review: a 16 KiB read of a .zst file was decompressed whole, and zstd's RLE blocks turn 4 bytes
    into 128 KiB: 32 KB of .json.zst holding 1 GiB of spaces took 1.1 GB to validate. gzip's deflate stops
    at about 1000:1, which still made 16 MB of one read."""
    small = validate_peak(with_spaces(tmp_path / f"0-{name}", 0))
    large = validate_peak(with_spaces(tmp_path / f"64-{name}", 64))
    assert (tmp_path / f"64-{name}").stat().st_size < 200_000       # zstd: 8 kB, gzip: 182 kB
    assert large < small + (4 << 20), (small, large)     # was 67 MB more for zstd, 25 MB for gzip; now 1 MB


def import_peak_of_long_messages(tmp_path, count: int, short: int = 0) -> int:
    """The traced peak of importing the export of export_peak_of_long_messages's database."""
    export_peak_of_long_messages(tmp_path, count, short)
    with new_database(tmp_path / f"imported-{count}-{short}.db") as target:
        tracemalloc.start()
        with open(tmp_path / f"long-{count}-{short}.json", "rb") as raw:
            load(target, open_backup(decompressed_reader(raw), "json"), create=True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def export_peak_of_long_messages(tmp_path, count: int, short: int = 0) -> int:
    """The traced peak of exporting a database whose `count` messages each hold 64 KiB of text, after `short`
    short ones."""
    db = make_database(tmp_path / f"long-{count}-{short}.db", sessions=1, messages_per_session=short + count)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE messages_meta SET content = replace(hex(zeroblob(32768)), '0', 'a') || rowid "
                     "WHERE rowid > ?", (short,))
    conn.close()
    conn = open_for_reading(db)
    tracemalloc.start()
    with open(tmp_path / f"long-{count}-{short}.json", "wb") as out:
        export(conn, out, "json")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    conn.close()
    return peak


def test_export_holds_about_a_batch_s_bytes_of_long_rows_not_a_batch_s_count(tmp_path, monkeypatch):
    """Export reads a batch of rows at a time: of short rows, ROWS; of long ones (a table of large tool results,
    found by review: 300 of 2 MiB held 640 MB, where reading a row at a time held 38 MB), as many as hold about
    HELD bytes. Here HELD is 256 KiB, four messages: 400 long messages take no more than 20."""
    monkeypatch.setattr(records, "HELD", 256 << 10)
    small = export_peak_of_long_messages(tmp_path, 20)
    large = export_peak_of_long_messages(tmp_path, 400)
    assert large < small * 1.3, (small, large)
    assert large < 8 << 20, large       # a batch of 256 such messages would be 16 MiB of text alone


def test_long_rows_right_after_short_ones_are_not_read_a_short_batch_s_count_at_once(tmp_path, monkeypatch):
    """Found in session 10's notes: the length of the rows of one batch sized the next, so after ROWS short rows
    the next ROWS were read at once however long they were (256 tool results of 2 MiB: 512 MB)."""
    monkeypatch.setattr(records, "HELD", 256 << 10)
    small = export_peak_of_long_messages(tmp_path, 20, short=600)
    large = export_peak_of_long_messages(tmp_path, 400, short=600)
    assert large < small * 1.3, (small, large)
    assert large < 8 << 20, large


@pytest.mark.parametrize("strict", ["0", "1"])
def test_import_holds_about_a_batch_s_bytes_of_long_rows_not_a_batch_s_count(tmp_path, monkeypatch, strict):
    """Import inserts rows a batch at a time: of short rows, BATCH; of long ones, as many as hold about HELD
    bytes (session 10's notes: 300 tool results of 2 MiB, 651 MB), on the fast reader and the strict one."""
    from pipeline import parallel, search_index
    monkeypatch.setenv(parallel.ENV, "0")
    monkeypatch.setenv(search_index.ENV, "0")
    monkeypatch.setenv(canonical.STRICT_ENV, strict)
    monkeypatch.setattr(records, "HELD", 256 << 10)
    small = import_peak_of_long_messages(tmp_path, 20, short=600)
    large = import_peak_of_long_messages(tmp_path, 400, short=600)
    assert large < small * 1.3, (small, large)
    assert large < 8 << 20, large


def test_a_batch_of_long_rows_is_bounded_where_a_text_column_holds_a_number_too(monkeypatch):
    """A drifted schema can leave a number in a column of text: it counted the batch's rows as short (session
    10's notes), so long ones beside it filled a batch of ROWS."""
    monkeypatch.setattr(records, "HELD", 1 << 20)
    rows = [(7 if i % 2 else "x" * (64 << 10), "y") for i in range(1000)]
    batches = list(records.batches(rows, lambda row: row, 256))
    assert sum(map(len, batches)) == 1000 and [r for b in batches for r in b] == rows
    assert max(map(len, batches)) <= 32, list(map(len, batches))      # 1 MiB: 16 long rows, a chunk more


@pytest.mark.parametrize("period", [2, 3, 4, 8])
@pytest.mark.parametrize("phase", [0, 1])
def test_a_batch_of_long_rows_is_bounded_where_long_and_short_rows_take_turns(monkeypatch, period, phase):
    """Found by review: the first row of each chunk of 8 was the one measured, so where every other row was
    long (a short message, then a long answer) none was ever measured: batches of 256 rows of 1 MiB."""
    monkeypatch.setattr(records, "HELD", 1 << 20)
    rows = [("x" * (64 << 10) if i % period == phase else "y",) for i in range(4000)]
    batches = list(records.batches(rows, lambda row: row, 256))
    assert [r for b in batches for r in b] == rows
    held = [sum(len(r[0]) for r in b) for b in batches]
    assert max(held) <= 3 << 20, (period, phase, max(held) >> 10, list(map(len, batches))[:5])
