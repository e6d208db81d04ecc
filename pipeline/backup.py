"""Backup folders: the names of the backups `memory backup` writes (never any other file), listing them by
their headers, choosing the newest whole one, keeping them by count and by the calendar, the folder lock
that makes runs take turns, and the flow: write, read back, rotate."""

from __future__ import annotations

import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Hashable, Iterator

from .database import SQLITE_HEADER
from .errors import BadBackup, PipelineError
from .export import Exported, ProgressFor, export_to, no_progress
from .formats import decompressed_reader, format_from_name
from .portable import DONE, locked
from .restore import Backup, open_backup, opened, validate

EXTENSIONS = {("json", "none"): ".json", ("json", "gzip"): ".json.gz", ("json", "zstd"): ".json.zst",
              ("jsonl", "none"): ".jsonl", ("jsonl", "gzip"): ".jsonl.gz", ("jsonl", "zstd"): ".jsonl.zst"}
# memory-20261123T231500.123456Z.json.zst: microseconds, so names sort in time order and two runs in one
# second get two names.
_OURS = re.compile(r"memory-(\d{8}T\d{6}\.\d{6}Z)\.(jsonl?)(\.gz|\.zst)?")
_STAMP = "%Y%m%dT%H%M%S.%fZ"
LOCK_NAME = ".memory-backup.lock"      # not a name of ours: listing and rotation never see it
# A name later than now by more than this was written under a wrong clock: it is not trusted to be newest.
FUTURE_TOLERANCE = timedelta(hours=1)
DEFAULT_KEEP = 7          # --keep when no keep option is given: a week of nightly backups


class BackupFailed(PipelineError):
    """The new backup did not read back as written."""


class NothingToRestore(PipelineError):
    """A folder holds no backup of ours that reads whole."""


@dataclass(frozen=True)
class Retention:
    """Which of our backups a run keeps, as restic's `forget` does (internal/restic/snapshot_policy.go): each
    rule walks the backups newest first and keeps the newest of each of its first N buckets that have backups
    in them; a backup kept by any rule stays. `last` counts each backup as its own bucket. None: no such rule."""
    last: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None

    @classmethod
    def given(cls, last: int | None = None, daily: int | None = None, weekly: int | None = None,
              monthly: int | None = None) -> Retention:
        """The options as given; with none of them, --keep 7, as `memory backup` always kept."""
        if all(n is None for n in (last, daily, weekly, monthly)):
            return cls(last=DEFAULT_KEEP)
        return cls(last, daily, weekly, monthly)

    def __str__(self) -> str:
        """As the options say it: '--keep 7', '--keep-daily 7 --keep-monthly 12'."""
        rules = (("--keep", self.last), ("--keep-daily", self.daily), ("--keep-weekly", self.weekly),
                 ("--keep-monthly", self.monthly))
        return " ".join(f"{option} {n}" for option, n in rules if n is not None)


# The bucket of each calendar rule, of a name's UTC time: a day, an ISO week, a month.
CALENDAR: dict[str, Callable[[datetime], Hashable]] = {
    "daily": lambda t: t.date(),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
}


@dataclass
class Done:
    """What a backup run did: the file it wrote and kept, and what rotation removed and warns about."""
    path: Path
    bytes: int
    counts: dict[str, int]
    removed: list[Path] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)     # what --skip-unknown left out
    warnings: list[str] = field(default_factory=list)


@dataclass
class Listed:
    """One of our backups as its name and header tell it, and the fault found in it, if any."""
    path: Path
    time: datetime              # the UTC time in its name
    bytes: int
    fmt: str
    compression: str
    header: dict | None = None  # None: it could not be read
    fault: str | None = None


@dataclass
class Chosen:
    """The backup a folder restore takes, opened at its start."""
    path: Path
    backup: Backup


def backup_name(fmt: str, compression: str, now: datetime | None = None) -> str:
    return f"memory-{(now or datetime.now(timezone.utc)).strftime(_STAMP)}{EXTENSIONS[fmt, compression]}"


def own_backups(directory: Path) -> list[Path]:
    """This tool's backups in `directory`, oldest first by name; anything else there is not ours, nor is a
    SQLite database under a name of ours (rotation would remove it)."""
    found = [(m[1], p) for p in directory.iterdir()
             if p.is_file() and (m := _OURS.fullmatch(p.name)) and not _is_database(p)]
    return [p for _, p in sorted(found)]


def _is_database(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:      # removed meanwhile (list and a folder restore take no lock), or unreadable: as before
        return False


def _layout(path: Path) -> tuple[str, str]:
    """(format, compression) of one of our backups: its name says both."""
    fmt, compression = format_from_name(path.name)
    assert fmt, path      # _OURS matches only names that end .json or .jsonl, compressed or not
    return fmt, compression


def _named_for(path: Path) -> datetime:
    stamp = _OURS.fullmatch(path.name)[1]  # type: ignore[index]
    return datetime.strptime(stamp, _STAMP).replace(tzinfo=timezone.utc)


def _trusted(directory: Path, now: datetime | None = None) -> tuple[list[Path], list[Path]]:
    """(our backups named up to now, oldest first; those named for a time in the future, which a clock once
    set wrong wrote and which are never trusted to be newest)."""
    limit = (now or datetime.now(timezone.utc)) + FUTURE_TOLERANCE
    ours = own_backups(directory) if directory.is_dir() else []
    future = [p for p in ours if _named_for(p) > limit]
    return [p for p in ours if p not in future], future


def rotate(directory: Path, retention: Retention, new: Path, now: datetime | None = None,
           dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """Keep `new` and what `retention` keeps of our other backups; remove the rest (with `dry_run`, only say
    which). `new` need not exist: a dry run asks about a backup written now. A backup named for a time in the
    future is neither counted nor removed. Returns (removed, future), oldest first."""
    past, future = _trusted(directory, now)
    others = [p for p in past if p != new]
    kept = kept_by(retention, [(_named_for(p), p) for p in others], new, _named_for(new))
    removed = [p for p in others if p not in kept]
    if not dry_run:
        for path in removed:
            path.unlink(missing_ok=True)      # removed by hand meanwhile: gone all the same
    return removed, future


def kept_by(retention: Retention, others: list[tuple[datetime, Path]], new: Path, new_time: datetime) -> set[Path]:
    """What `retention` keeps of `others` (oldest first) and the new backup, the new one always. --keep counts
    the new one first even when a clock set back named it older; the calendar rules see it at its time."""
    newest_first = others[::-1]
    kept = {new}
    if retention.last:      # each backup its own bucket
        kept |= _restic_rule(list(enumerate([new] + [p for _, p in newest_first])), retention.last)
    by_time = sorted(newest_first + [(new_time, new)], key=lambda e: (e[0], e[1].name), reverse=True)
    for name, bucket in CALENDAR.items():
        count = getattr(retention, name)
        if count:
            kept |= _restic_rule([(bucket(time), path) for time, path in by_time], count)
    return kept


def _restic_rule(newest_first: list[tuple[Hashable, Path]], count: int) -> set[Path]:
    """restic's rule over (bucket, backup) pairs: walking newest first, keep a backup whose bucket differs from
    the last one kept, until `count` are kept; the oldest backup too while count is left (restic 0.17 on),
    which keeps the longest history a young folder has."""
    kept: set[Path] = set()
    last: Hashable = object()
    for at, (value, path) in enumerate(newest_first):
        if count == 0:
            break
        if value != last or at == len(newest_first) - 1:
            kept.add(path)
            last = value
            count -= 1
    return kept


def listing(directory: Path, check: bool = False, ignore_checksum: bool = False,
            progress: ProgressFor = no_progress) -> Iterator[Listed]:
    """Our backups in `directory`, newest first by name, each read as far as its header; with `check`, every
    record and the checksum too. A file that cannot be read is listed with its fault."""
    for path in reversed(own_backups(directory)):
        try:
            entry = Listed(path, _named_for(path), path.stat().st_size, *_layout(path))
            with opened(path, entry.fmt, ignore_checksum) as backup:
                entry.header = backup.header
                if check:
                    with progress(sum(backup.stats.values()), "Checking", str(path)) as step:
                        validate(backup, step)
        except FileNotFoundError:       # a backup run's rotation removed it since the folder was read
            continue
        except BadBackup as exc:
            entry.fault = str(exc)
        yield entry


@contextmanager
def newest_whole(directory: Path, passed_over: Callable[[Path, str], None], ignore_checksum: bool = False,
                 progress: ProgressFor = no_progress, now: datetime | None = None) -> Iterator[Chosen]:
    """The newest of our backups in `directory` that validates, checksum included, opened again at its start
    for an import. Each is read through one open file, so a run rotating it away meanwhile cannot take it
    from under the import. Newer ones that fail are passed over, and so are those named in the future: each
    is told to `passed_over` with why, as it is."""
    past, future = _trusted(directory, now)
    for path in reversed(future):
        passed_over(path, "named for a time in the future (was the clock wrong?), so not trusted to be the newest; "
                    "restore it by its path if it is the one you want")
    for path in reversed(past):
        fmt = _layout(path)[0]
        try:
            raw = open(path, "rb")
        except FileNotFoundError:       # a backup run's rotation removed it since the folder was read
            continue
        with raw:
            try:
                backup = open_backup(decompressed_reader(raw), fmt, ignore_checksum)
                try:
                    with progress(sum(backup.stats.values()), "Checking", str(path)) as step:
                        validate(backup, step)
                finally:
                    backup.close()
            except BadBackup as exc:
                passed_over(path, str(exc))
                continue
            raw.seek(0)
            chosen = open_backup(decompressed_reader(raw), fmt, ignore_checksum)
            try:
                yield Chosen(path, chosen)
            finally:
                chosen.close()
            return
    if not past and not future:
        raise NothingToRestore(f"{directory}: no backup of memory's here (it restores the files memory backup "
                               "names memory-<UTC time>.json.zst and the like)")
    raise NothingToRestore(f"{directory}: none of its {len(past) + len(future)} backups can be restored; each "
                           "is named above with its fault")


@contextmanager
def folder_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder: runs into one folder wait for each other. The lock file
    stays (removing it would let two runs lock two different files)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with locked(fd):          # fcntl or msvcrt: portable.py
            yield
    finally:
        os.close(fd)


@contextmanager
def new_backup(conn: sqlite3.Connection, directory: Path, retention: Retention, fmt: str, compression: str,
               progress: ProgressFor = no_progress, now: datetime | None = None,
               database: Path | None = None, skip_unknown: bool = False) -> Iterator[Done]:
    """Write a new backup into `directory`, read it back through every check (the checksum included), and
    only then rotate. The folder stays locked until the block ends, so what it reports of the new backup
    holds while it reports it: no other run can remove it before."""
    directory.mkdir(parents=True, exist_ok=True)
    with folder_lock(directory):
        path, exported, size = _written(conn, directory, fmt, compression, progress, now, database, skip_unknown)
        stats = exported.counts
        try:
            with opened(path, fmt) as written, progress(sum(stats.values()), "Checking", str(path)) as step:
                report = validate(written, step)
            if report.records != stats:
                raise BackupFailed(f"{path} does not read back as written ({report.records} != {stats})")
        except (PipelineError, OSError) as exc:     # the file, or the disk under it (EIO)
            _unchecked_removed(path)
            why = str(exc)
            if isinstance(exc, OSError):
                why = (f"{exc.filename}: " if exc.filename else "") + (exc.strerror or why)
            raise BackupFailed(f"the new backup failed its check and was removed; no old backup was touched: {why}"
                               ) from exc
        except BaseException:      # Ctrl-C, SIGTERM, SIGHUP, a bug: an unchecked backup goes as a half-written one
            _unchecked_removed(path)
            raise
        DONE.set(f"{path} was written before it; it was removing the old backups the --keep options let go")
        removed, future = rotate(directory, retention, path, now)
        DONE.set(f"{path} was written before it" + (", and the old backups the --keep options let go removed"
                                                    if removed else ""))
        yield Done(path, size, stats, removed, exported.left_out, future_warnings(future))


def dry_run(directory: Path, retention: Retention, fmt: str, compression: str,
            now: datetime | None = None) -> tuple[list[Path], list[str]]:
    """(what a backup run now would remove, its warnings), writing and removing nothing, taking no lock."""
    new = directory / backup_name(fmt, compression, now)
    removed, future = rotate(directory, retention, new, now, dry_run=True)
    return removed, future_warnings(future)


def future_warnings(future: list[Path]) -> list[str]:
    return [f"{p} is named for a time in the future; it is kept, not counted by the --keep options: was the "
            "clock wrong? Remove it once you no longer need it" for p in future]


def _written(conn: sqlite3.Connection, directory: Path, fmt: str, compression: str, progress: ProgressFor,
             now: datetime | None, database: Path | None, skip_unknown: bool) -> tuple[Path, Exported, int]:
    """The new backup, written under a name no other has; the database is checked first (quick_check)."""
    tries = 5      # a name is taken only by a run in the same microsecond (or a clock set back): take the next
    while True:
        path = directory / backup_name(fmt, compression, now)
        try:
            return (path, *export_to(conn, path, fmt, compression, progress, replace=False, database=database,
                                     skip_unknown=skip_unknown, check=True))
        except FileExistsError:
            tries -= 1
            if not tries:
                raise
        except KeyboardInterrupt:      # as it was put in place (portable.DONE says it was): unchecked, it goes
            if DONE.get():
                _unchecked_removed(path)
            raise


def _unchecked_removed(path: Path) -> None:
    """A backup that is not known good goes: and with it what portable.DONE said of it."""
    path.unlink(missing_ok=True)
    DONE.set("")
