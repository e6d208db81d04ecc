"""Backup folders: naming, listing and rotating the backups `memory backup` keeps (never any other file), the
folder lock that makes runs take turns, and the flow: write, read back, rotate."""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from .errors import PipelineError
from .export import Exported, ProgressFor, export_to, no_progress
from .restore import opened, validate

EXTENSIONS = {("json", "none"): ".json", ("json", "gzip"): ".json.gz", ("json", "zstd"): ".json.zst",
              ("jsonl", "none"): ".jsonl", ("jsonl", "gzip"): ".jsonl.gz", ("jsonl", "zstd"): ".jsonl.zst"}
# memory-20261123T231500.123456Z.json.zst: microseconds, so names sort in time order and two runs in one
# second get two names.
_OURS = re.compile(r"memory-(\d{8}T\d{6}\.\d{6}Z)\.(jsonl?)(\.gz|\.zst)?")
_STAMP = "%Y%m%dT%H%M%S.%fZ"
LOCK_NAME = ".memory-backup.lock"      # not a name of ours: listing and rotation never see it
# A name later than now by more than this was written under a wrong clock: it is not trusted to be newest.
FUTURE_TOLERANCE = timedelta(hours=1)


class BackupFailed(PipelineError):
    """The new backup did not read back as written."""


@dataclass
class Done:
    """What a backup run did: the file it wrote and kept, and what rotation removed and warns about."""
    path: Path
    bytes: int
    counts: dict[str, int]
    removed: list[Path] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)     # what --skip-unknown left out
    warnings: list[str] = field(default_factory=list)


def backup_name(fmt: str, compression: str, now: datetime | None = None) -> str:
    return f"memory-{(now or datetime.now(timezone.utc)).strftime(_STAMP)}{EXTENSIONS[fmt, compression]}"


def own_backups(directory: Path) -> list[Path]:
    """This tool's backups in `directory`, oldest first by name; anything else there is not ours."""
    found = [(m[1], p) for p in directory.iterdir() if p.is_file() and (m := _OURS.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _named_for(path: Path) -> datetime:
    stamp = _OURS.fullmatch(path.name)[1]  # type: ignore[index]
    return datetime.strptime(stamp, _STAMP).replace(tzinfo=timezone.utc)


def rotate(directory: Path, keep: int, new: Path, now: datetime | None = None) -> tuple[list[Path], list[Path]]:
    """Keep `new` and the newest `keep - 1` of our other backups; remove the rest. A backup named for a time
    in the future (a clock once set wrong) is neither counted nor removed. Returns (removed, future)."""
    limit = (now or datetime.now(timezone.utc)) + FUTURE_TOLERANCE
    others = [p for p in own_backups(directory) if p != new]
    future = [p for p in others if _named_for(p) > limit]
    past = [p for p in others if p not in future]
    removed = past[: max(len(past) - (keep - 1), 0)]
    for path in removed:
        path.unlink()
    return removed, future


@contextmanager
def folder_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder: runs into one folder wait for each other. The lock file
    stays (removing it would let two runs lock two different files)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)      # releases the lock


@contextmanager
def new_backup(conn: sqlite3.Connection, directory: Path, keep: int, fmt: str, compression: str,
               progress: ProgressFor = no_progress, now: datetime | None = None,
               skip_unknown: bool = False) -> Iterator[Done]:
    """Write a new backup into `directory`, read it back through every check (the checksum included), and
    only then rotate. The folder stays locked until the block ends, so what it reports of the new backup
    holds while it reports it: no other run can remove it before."""
    directory.mkdir(parents=True, exist_ok=True)
    with folder_lock(directory):
        path, exported, size = _written(conn, directory, fmt, compression, progress, now, skip_unknown)
        stats = exported.counts
        try:
            with opened(path, fmt) as written, progress(sum(stats.values()), "Checking") as step:
                report = validate(written, step)
            if report.records != stats:
                raise BackupFailed(f"{path} does not read back as written ({report.records} != {stats})")
        except PipelineError as exc:
            path.unlink(missing_ok=True)
            raise BackupFailed("the new backup failed its check and was removed; no old backup was touched: "
                               f"{exc}") from exc
        removed, future = rotate(directory, keep, path, now)
        yield Done(path, size, stats, removed, exported.left_out, [
            f"{p} is named for a time in the future; it is kept, not counted among the --keep newest: was the "
            "clock wrong? Remove it once you no longer need it" for p in future])


def _written(conn: sqlite3.Connection, directory: Path, fmt: str, compression: str, progress: ProgressFor,
             now: datetime | None, skip_unknown: bool) -> tuple[Path, Exported, int]:
    """The new backup, written under a name no other has; the database is checked first (quick_check)."""
    tries = 5      # a name is taken only by a run in the same microsecond (or a clock set back): take the next
    while True:
        path = directory / backup_name(fmt, compression, now)
        try:
            return (path, *export_to(conn, path, fmt, compression, progress, replace=False,
                                     skip_unknown=skip_unknown, check=True))
        except FileExistsError:
            tries -= 1
            if not tries:
                raise
