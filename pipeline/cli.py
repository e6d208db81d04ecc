"""The `memory` command: thin click commands that open files, call the pipelines and report."""

from __future__ import annotations

import enum
import json
import sys
import time
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import click

from . import __version__
from .backup import backup_name, rotate
from .database import (
    DEFAULT_PATH,
    counts,
    database_summary,
    has_table,
    new_database,
    open_for_reading,
    open_for_writing,
)
from .errors import PipelineError, Refused
from .export import export as export_database
from .formats import COMPRESSIONS, FORMATS, IJSON_BACKEND, decompressed_reader, format_from_name
from .output import atomic_file, output_stack
from .portable import Terminated, signals_as_interrupts
from .restore import CONFLICT_MODES, Backup, load, open_backup
from .restore import validate as validate_backup
from .tables import TABLES


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1       # a bad file, a database fault, a refusal
    USAGE = 2         # click's UsageError
    INTERRUPTED = 130     # Ctrl-C (SIGINT); SIGTERM and SIGHUP exit 128 + their number: 143, 129


class MemoryGroup(click.Group):
    """Turns the library's errors into `Error: ...` and exit 1, and Ctrl-C, SIGTERM and SIGHUP into a
    rollback and exit 130, 143 or 129, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            with signals_as_interrupts():
                return super().invoke(ctx)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.errno is None:      # not the system saying no (a full disk, a missing file): a bug
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror}") from exc
        except Terminated as exc:
            click.echo(f"Terminated by {exc.name}: nothing was changed", err=True)
            ctx.exit(exc.status)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was changed", err=True)
            ctx.exit(Exit.INTERRUPTED)


db_option = click.option(
    "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), envvar="MEMORY_DB",
    default=str(DEFAULT_PATH), show_default=True, help="The memory database (also $MEMORY_DB).")
format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), help="json or jsonl, where the file name does not say.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Print only the path; nothing else.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
progress_option = click.option(
    "--progress", "plain_progress", is_flag=True,
    help="When stderr is not a terminal (cron), print a plain progress line to it every few seconds.")


@click.group(cls=MemoryGroup)
@click.version_option(__version__, prog_name="memory")
def cli() -> None:
    """Back up and restore a memory-nexus session-memory database, streaming."""


@cli.command()
@click.argument("output")
@db_option
@format_option
@click.option("--compress", type=click.Choice(COMPRESSIONS),
              help="gzip, zstd or none, where the file name does not say (.gz, .zst).")
@quiet_option
@json_option
@progress_option
def export(output: str, db_path: Path, fmt: str | None, compress: str | None, quiet: bool, as_json: bool,
           plain_progress: bool) -> None:
    """Back up the database to OUTPUT, a path or - for stdout.

    The format comes from the name: .json, .jsonl, each optionally .gz or .zst.
    The file appears only once it is whole, readable by its owner only.

    \b
    Example:
      memory export ~/backups/memory.json.gz
      memory export --format jsonl - | ssh host 'cat > memory.jsonl'
    """
    fmt, compression = _format(output, fmt, compress)
    db_path = db_path.expanduser()
    conn = open_for_reading(db_path)
    to_stdout = output == "-"
    stats, size = _export_to(conn, db_path, None if to_stdout else Path(output), fmt, compression,
                             _Shown(quiet or as_json, plain_progress))
    target = "stdout" if to_stdout else output
    _report(err=to_stdout, quiet=quiet, as_json=as_json, quiet_text=target,
            data={"path": target, "bytes": size, "format": fmt, "compression": compression, "counts": stats},
            text=f"Exported {_counts(stats)} to {target} ({_size(size)})")


@cli.command(name="import")
@click.argument("input")
@db_option
@format_option
@click.option("--clear", is_flag=True, help="Replace everything in the database (in the same transaction).")
@click.option("--yes", "-y", "--force", "yes", is_flag=True, help="Merge into a database that has data, without asking.")
@click.option("--on-conflict", type=click.Choice(CONFLICT_MODES), default="skip", show_default=True,
              help="What a record does when its row is already there: skip it, replace the row, or fail.")
@quiet_option
@json_option
@progress_option
def import_(input: str, db_path: Path, fmt: str | None, clear: bool, yes: bool, on_conflict: str,
            quiet: bool, as_json: bool, plain_progress: bool) -> None:
    """Restore INPUT, a path or - for stdin, into the database, all or nothing.

    The header is checked before anything is written; every record is checked as it streams; one
    transaction holds the whole import, --clear included, so any fault leaves the database as it was.
    A database that does not exist is created with the memory-nexus schema.

    \b
    Example:
      memory import --clear ~/backups/memory.json.gz
      zstd -dc backup.json.zst | memory import --format json -
    """
    _warn_slow_parser()
    db_path = db_path.expanduser()
    shown = _Shown(quiet or as_json, plain_progress)
    with _backup_in(input, fmt) as backup, \
            _import_target(db_path, clear or yes, stdin_is_data=input == "-") as (conn, create), \
            _progress(sum(backup.stats.values()), "Importing", shown) as progress:
        report = load(conn, backup, clear=clear, on_conflict=on_conflict, create=create, progress=progress)
    others = "replaced" if on_conflict == "replace" else "skipped"
    source = "stdin" if input == "-" else input
    _report(err=False, quiet=quiet, as_json=as_json, quiet_text=str(db_path),
            data={"path": source, "database": str(db_path), "inserted": report.inserted, others: report.others},
            text=f"Imported {_counts(report.inserted)} ({_others(report.others, others)}) from {source}")


@cli.command()
@click.argument("input")
@format_option
@quiet_option
@json_option
@progress_option
def validate(input: str, fmt: str | None, quiet: bool, as_json: bool, plain_progress: bool) -> None:
    """Check INPUT, a path or - for stdin, as import would, without touching any database.

    Exit 0 if every record passes; exit 1 with the first fault and where it is.

    \b
    Example:
      memory validate ~/backups/memory.json.gz
    """
    _warn_slow_parser()
    with _backup_in(input, fmt) as backup:
        with _progress(sum(backup.stats.values()), "Validating", _Shown(quiet or as_json, plain_progress)) \
                as progress:
            report = validate_backup(backup, progress)
    source = "stdin" if input == "-" else input
    _report(err=False, quiet=quiet, as_json=as_json, quiet_text=source,
            data={"path": source, "valid": True, "version": backup.header["version"], "counts": report.records},
            text=f"{source} is a valid memory backup (version {backup.header['version']}): {_counts(report.records)}")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@db_option
@click.option("--keep", type=click.IntRange(min=1), default=7, show_default=True,
              help="How many of its own backups to keep in DIRECTORY; older ones are removed.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json or jsonl.")
@click.option("--compress", type=click.Choice(COMPRESSIONS), default="zstd", show_default=True,
              help="zstd, gzip or none (zstd: see BENCHMARKS.md for why).")
@quiet_option
@json_option
@progress_option
def backup(directory: Path, db_path: Path, keep: int, fmt: str, compress: str, quiet: bool, as_json: bool,
           plain_progress: bool) -> None:
    """Write a new backup into DIRECTORY, check it, then drop the oldest beyond --keep.

    The file is memory-<UTC time>.json.zst (or as --format and --compress say), written atomically and
    validated before any old backup is removed. Other files in DIRECTORY are never touched.
    Exit 0 only when the new backup was written and validated.

    \b
    Example (crontab, daily at 03:15):
      15 3 * * * memory backup --keep 14 ~/backups/memory || echo "memory backup failed" | mail -s backup me
    """
    db_path = db_path.expanduser()
    conn = open_for_reading(db_path)
    directory.mkdir(parents=True, exist_ok=True)
    shown = _Shown(quiet or as_json, plain_progress)
    for attempt in range(5):   # a name is taken only by a run in the same microsecond; take the next
        path = directory / backup_name(fmt, compress)
        try:
            stats, size = _export_to(conn, db_path, path, fmt, compress, shown, replace=False)
            break
        except FileExistsError:
            if attempt == 4:
                raise
    try:
        with _backup_in(str(path), fmt) as written, _progress(sum(stats.values()), "Checking", shown) as progress:
            report = validate_backup(written, progress)
        if report.records != stats:
            raise BackupFailed(f"{path} does not read back as written ({report.records} != {stats})")
    except PipelineError as exc:
        path.unlink(missing_ok=True)
        raise BackupFailed(f"the new backup failed its check and was removed; no old backup was touched: {exc}")
    removed = rotate(directory, keep)
    _report(err=False, quiet=quiet, as_json=as_json, quiet_text=str(path),
            data={"path": str(path), "bytes": size, "counts": stats, "removed": [str(p) for p in removed]},
            text=str(path))


@cli.command()
@db_option
@json_option
def stats(db_path: Path, as_json: bool) -> None:
    """Show rows per table, the database size and the newest session: handy to check a restore.

    \b
    Example:
      memory stats --db /tmp/restored.db
    """
    db_path = db_path.expanduser()
    conn = open_for_reading(db_path)
    summary = database_summary(conn, db_path)
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{db_path} ({_size(summary['bytes'])})")
    width = max(len(_label(k)) for k in summary["counts"])
    for key, n in summary["counts"].items():
        click.echo(f"  {_label(key):<{width}}  {n:>12,}")
    click.echo(f"newest session: {summary['newestSession'] or 'none'}")


# ---- helpers of the commands ------------------------------------------------------------------------------

class BackupFailed(PipelineError):
    pass


def _export_to(conn, db_path: Path, path: Path | None, fmt: str, compression: str, shown: "_Shown",
               replace: bool = True) -> tuple[dict[str, int], int]:
    """Export to a file that appears whole or not at all (or to stdout, path None), never onto the database's
    own files: (counts, bytes)."""
    try:
        with (nullcontext(sys.stdout.buffer) if path is None else atomic_file(path, replace, db_path)) as raw:
            with output_stack(raw, compression) as (out, counted):
                with _progress(sum(counts(conn).values()), "Exporting", shown) as progress:
                    stats = export_database(conn, out, fmt, progress)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:   # a write failed: say which file
            raise OSError(exc.errno, exc.strerror, "stdout" if path is None else str(path)) from exc
        raise
    return stats, counted.bytes


def _format(name: str, fmt: str | None, compress: str | None) -> tuple[str, str]:
    named_fmt, named_compression = format_from_name(name) if name != "-" else ("json", "none")
    fmt = fmt or named_fmt
    if fmt is None:
        raise click.UsageError(f"cannot tell the format from the name {name!r}: pass --format json or jsonl")
    return fmt, compress or named_compression


@contextmanager
def _backup_in(name: str, fmt: str | None) -> Iterator[Backup]:
    """The backup at `name` (a path, or - for stdin), its header read and checked, whatever it is compressed
    with; the format from --format, else from the name."""
    fmt = _format(name, fmt, None)[0]
    if name == "-":
        yield open_backup(decompressed_reader(sys.stdin.buffer), fmt)
        return
    with open(name, "rb") as raw:
        yield open_backup(decompressed_reader(raw), fmt)


@contextmanager
def _import_target(db_path: Path, merge_allowed: bool, stdin_is_data: bool) -> Iterator[tuple]:
    """(connection, whether it needs the schema): a new database, which appears only once the import has
    committed, or an existing one that is empty or a memory database, the merge agreed to."""
    if not db_path.exists():
        with new_database(db_path) as conn:
            yield conn, True
        return
    with closing(open_for_writing(db_path)) as conn:
        empty = not conn.execute("SELECT 1 FROM sqlite_master").fetchone()
        if not empty:
            if not all(has_table(conn, t.name) for t in TABLES):
                raise Refused(f"{db_path} is not a memory database (no table {_missing_table(conn)})")
            _confirm_merge(conn, db_path, merge_allowed, stdin_is_data)
        yield conn, empty


def _confirm_merge(conn, db_path: Path, allowed: bool, stdin_is_data: bool) -> None:
    have = counts(conn)
    if allowed or not any(have.values()):
        return
    question = f"The database has {have['sessions']:,} sessions and {have['messages']:,} messages. Merge into it?"
    if not stdin_is_data and _terminal_stdin():
        if click.confirm(question, default=False, err=True):
            return
        raise Refused("nothing imported: the merge was declined")
    raise Refused(f"{db_path} already has {have['sessions']:,} sessions and {have['messages']:,} messages; "
                  "pass --yes to merge into it or --clear to replace it")


def _missing_table(conn) -> str:
    return next(t.name for t in TABLES if not has_table(conn, t.name))


class _Shown:
    """What progress to show: nothing (--quiet, --json), a bar on a terminal, or with --progress a plain
    line every few seconds where stderr is not a terminal."""

    def __init__(self, silent: bool, plain: bool):
        self.silent, self.plain = silent, plain


@contextmanager
def _progress(total: int, label: str, shown: _Shown) -> Iterator[Callable[[int], None]]:
    if shown.silent:
        yield lambda n: None
    elif sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            yield bar.update
    elif shown.plain:
        line = _PlainProgress(total, label)
        yield line.update
        line.finish()
    else:
        yield lambda n: None


class _PlainProgress:
    EVERY = 5.0   # seconds

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.EVERY:
            self.last = time.monotonic()
            self._print()

    def finish(self) -> None:
        self._print()

    def _print(self) -> None:
        share = f" ({self.done * 100 // self.total}%)" if self.total else ""
        click.echo(f"{self.label}: {self.done:,} of {self.total:,} records{share}", err=True)


def _report(*, err: bool, quiet: bool, as_json: bool, quiet_text: str, data: dict, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data), err=err)
    elif quiet:
        click.echo(quiet_text, err=err)
    else:
        click.echo(text, err=err)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {_label(key, n)}" for key, n in counts.items())


def _others(counts: dict[str, int], word: str) -> str:
    """'0 skipped', or '19 skipped: 2 sessions, 5 messages, ...' naming the tables."""
    total = sum(counts.values())
    if not total:
        return f"0 {word}"
    return f"{total:,} {word}: " + _counts({k: n for k, n in counts.items() if n})


def _label(key: str, n: int = 2) -> str:
    """toolUses -> tool uses; with n=1, tool use (entities -> entity)."""
    words = "".join(" " + ch.lower() if ch.isupper() else ch for ch in key)
    if n != 1:
        return words
    return words[:-3] + "y" if words.endswith("ies") else words[:-1]


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


_warned: list[bool] = []


def _warn_slow_parser() -> None:
    if IJSON_BACKEND != "yajl2_c" and not _warned:
        _warned.append(True)
        click.echo(f"warning: ijson runs on its {IJSON_BACKEND} backend, not yajl2_c; reading is several "
                   "times slower (reinstall ijson from a wheel)", err=True)


def main() -> None:
    cli(prog_name="memory")


def _terminal_stdin() -> bool:
    """Whether a person can answer a question; cron and pipes cannot."""
    return sys.stdin.isatty()
