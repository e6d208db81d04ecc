"""Early writeback hands a new backup to the disk every few MB, and changes none of its bytes."""

import os

import pytest
from conftest import memory

from pipeline import writeback
from pipeline.writeback import EarlyWriteback


@pytest.mark.skipif(writeback.START_WRITING is None, reason="Linux only")
def test_each_step_of_a_file_is_handed_to_the_disk_as_it_is_written(tmp_path, monkeypatch):
    calls = []
    real = writeback.START_WRITING
    monkeypatch.setattr(writeback, "START_WRITING", lambda fd, at, n, flags: (calls.append((at, n, flags)),
                                                                              real(fd, at, n, flags))[1])
    monkeypatch.setattr(writeback, "STEP", 1000)
    with open(tmp_path / "f", "wb") as raw:
        out = EarlyWriteback(raw)
        for _ in range(5):
            out.write(b"x" * 700)
    assert calls == [(0, 1400, writeback.SYNC_FILE_RANGE_WRITE), (1400, 1400, writeback.SYNC_FILE_RANGE_WRITE)]
    assert (tmp_path / "f").read_bytes() == b"x" * 3500


def test_a_pipe_is_only_written(monkeypatch):
    """sync_file_range refuses a pipe (ESPIPE): from then on it is not asked again."""
    monkeypatch.setattr(writeback, "STEP", 10)
    read, write = os.pipe()
    with os.fdopen(write, "wb") as raw:
        out = EarlyWriteback(raw)
        out.write(b"y" * 25)
        out.write(b"z")
    with os.fdopen(read, "rb") as back:
        assert back.read() == b"y" * 25 + b"z"


def test_an_export_with_writeback_is_the_export_without_it(tmp_path, monkeypatch, sample_db):
    assert memory("export", "--db", sample_db, tmp_path / "plain.jsonl").exit_code == 0
    monkeypatch.setattr(writeback, "STEP", 100)
    calls = []
    if writeback.START_WRITING is not None:
        monkeypatch.setattr(writeback, "START_WRITING", lambda *args: calls.append(args[1:]))
    assert memory("export", "--db", sample_db, tmp_path / "early.jsonl").exit_code == 0
    assert calls or writeback.START_WRITING is None
    plain, early = (tmp_path / "plain.jsonl").read_bytes(), (tmp_path / "early.jsonl").read_bytes()
    assert plain.split(b"\n")[1:-2] == early.split(b"\n")[1:-2]     # but the header's exportedAt and the checksum
    assert len(early) > 1000
