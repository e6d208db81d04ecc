"""The `memory` command: thin click commands that open files, call the pipelines and report."""

from __future__ import annotations

import enum
import json
import os
import sys
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

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
from .formats import (COMPRESSIONS, FORMATS, IJSON_BACKEND, contradiction, decompressed_reader,
                      format_from_name)
from .output import atomic_file, output_stack
from .report import Shown, records, size, table
from .report import progress as _progress
from .report import report as _report
from .restore import CONFLICT_MODES, Backup, load, open_backup
from .restore import validate as validate_backup
from .tables import TABLES


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1       # a bad file, a database fault, a refusal
    USAGE = 2         # click's UsageError
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # the reader of stdout went away: 128 + SIGPIPE, as the shell shows cat or gzip killed by it


class MemoryGroup(click.Group):
    """Turns the library's errors into `Error: ...` and exit 1, and Ctrl-C into exit 130, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(Exit.BROKEN_PIPE)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.errno is None:      # not the system saying no (a full disk, a missing file): a bug
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror}") from exc
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was changed", err=True)
            ctx.exit(Exit.INTERRUPTED)

    ALIASES = {"restore": "import"}

    def get_command(self, ctx: click.Context, name: str):
        return super().get_command(ctx, self.ALIASES.get(name, name))


db_option = click.option(
    "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), envvar="MEMORY_DB",
    default=str(DEFAULT_PATH), show_default=True, help="The memory database (also $MEMORY_DB).")
format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS),
    help="json or jsonl, where the file name does not say; reading tells it from the bytes without it.")
quiet_option = click.option("--quiet", "-q", is_flag=True,
                            help="Print nothing on success (errors still go to stderr; the exit status is the same).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
progress_option = click.option(
    "--progress", "plain_progress", is_flag=True,
    help="Where stderr is not a terminal (cron), log progress there: a line every few seconds, each starting "
         "with the UTC time and naming the file, and a closing line.")


@click.group(cls=MemoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memory")
def cli() -> None:
    """Back up and restore a memory-nexus session-memory database, streaming."""


@cli.command(short_help="Write the database to a backup file or stdout.")
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
    output = _expanded(output)
    fmt, compression = _format(output, fmt, compress)
    db_path = db_path.expanduser()
    to_stdout = output == "-"
    if to_stdout and compression != "none" and sys.stdout.isatty():
        raise Refused(f"stdout is a terminal: {compression}-compressed data is not written there; "
                      "redirect it to a file or a pipe")
    conn = open_for_reading(db_path)
    shown = Shown(quiet or as_json, plain_progress)
    stats, nbytes = _export_to(conn, None if to_stdout else Path(output), fmt, compression, shown)
    target = "stdout" if to_stdout else output
    _report(err=to_stdout, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": target, "database": str(db_path), "bytes": nbytes, "format": fmt,
                  "compression": compression, "counts": stats},
            lines=[f"Exported {records(sum(stats.values()))} ({size(nbytes)}) to {target}",
                   f"from database {db_path}", *table({"records": stats})])


@cli.command(name="import", short_help="Restore a backup into the database (also: restore).")
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
    A database that does not exist is created with the memory-nexus schema, and the report says so.
    `memory restore` is another name for this command.

    \b
    Example:
      memory import --clear ~/backups/memory.json.gz
      zstd -dc backup.json.zst | memory import -
    """
    _warn_slow_parser()
    input, db_path = _expanded(input), db_path.expanduser()
    new = not db_path.exists()
    shown = Shown(quiet or as_json, plain_progress)
    source = "stdin" if input == "-" else input
    with _backup_in(input, fmt) as backup, \
            _import_target(db_path, clear or yes, stdin_is_data=input == "-") as (conn, create), \
            _progress(sum(backup.stats.values()), "Importing", source, shown) as progress:
        report = load(conn, backup, clear=clear, on_conflict=on_conflict, create=create, progress=progress,
                      phase=progress.phase)
    others = "replaced" if on_conflict == "replace" else "skipped"
    into = f"into {'new ' if new else ''}database {db_path}"
    total, inserted = sum(report.records.values()), sum(report.inserted.values())
    _report(err=False, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": source, "database": str(db_path), "created": new, "records": report.records,
                  "inserted": report.inserted, others: report.others},
            lines=[f"Imported {records(total)} from {source}: {inserted:,} inserted, {total - inserted:,} {others}",
                   into, *table({"records": report.records, "inserted": report.inserted, others: report.others})])


@cli.command(short_help="Check a backup file as import would.")
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
    input = _expanded(input)
    source = "stdin" if input == "-" else input
    shown = Shown(quiet or as_json, plain_progress)
    with _backup_in(input, fmt) as backup:
        with _progress(sum(backup.stats.values()), "Validating", source, shown) as progress:
            report = validate_backup(backup, progress)
    version = backup.header["version"]
    _report(err=False, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": source, "valid": True, "version": version, "counts": report.records},
            lines=[f"{source} is a valid memory backup (version {version}, {records(sum(report.records.values()))})",
                   *table({"records": report.records})])


@cli.command(short_help="Write a new checked backup into a folder; rotate.")
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

    From cron, give the command's full path (cron's PATH does not have it) and --quiet, so that cron
    mails you only a failure.

    \b
    Example (crontab, daily at 03:15):
      15 3 * * * $HOME/.local/memory/bin/memory backup -q $HOME/backups/memory
    """
    if str(directory) == "-":
        raise click.UsageError("backup writes into a folder, not to stdout: use `memory export -` for that")
    directory, db_path = directory.expanduser(), db_path.expanduser()
    conn = open_for_reading(db_path)
    directory.mkdir(parents=True, exist_ok=True)
    shown = Shown(quiet or as_json, plain_progress)
    for attempt in range(5):   # a name is taken only by a run in the same microsecond; take the next
        path = directory / backup_name(fmt, compress)
        try:
            stats, nbytes = _export_to(conn, path, fmt, compress, shown, replace=False)
            break
        except FileExistsError:
            if attempt == 4:
                raise
    try:
        with _backup_in(str(path), fmt) as written, \
                _progress(sum(stats.values()), "Checking", str(path), shown) as progress:
            report = validate_backup(written, progress)
        if report.records != stats:
            raise BackupFailed(f"{path} does not read back as written ({report.records} != {stats})")
    except PipelineError as exc:
        path.unlink(missing_ok=True)
        raise BackupFailed(f"the new backup failed its check and was removed; no old backup was touched: {exc}")
    removed = rotate(directory, keep)
    _report(err=False, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": str(path), "database": str(db_path), "bytes": nbytes, "counts": stats,
                  "removed": [str(p) for p in removed]},
            lines=[f"Backed up {records(sum(stats.values()))} ({size(nbytes)}) to {path}",
                   f"from database {db_path}", *table({"records": stats}),
                   f"removed {len(removed)} old backup{'' if len(removed) == 1 else 's'} (--keep {keep})"
                   + "".join(f"\n  {p}" for p in removed)])


@cli.command(short_help="Show rows per table, size, newest session.")
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
    click.echo(f"{db_path} ({size(summary['bytes'])})")
    click.echo("\n".join(table({"rows": summary["counts"]})))
    click.echo(f"newest session: {summary['newestSession'] or 'none'}")


# ---- helpers of the commands ------------------------------------------------------------------------------

class BackupFailed(PipelineError):
    pass


def _export_to(conn, path: Path | None, fmt: str, compression: str, shown: Shown,
               replace: bool = True) -> tuple[dict[str, int], int]:
    """Export to a file that appears whole or not at all (or to stdout, path None): (counts, bytes)."""
    try:
        with (nullcontext(sys.stdout.buffer) if path is None else atomic_file(path, replace)) as raw:
            with output_stack(raw, compression) as (out, counted):
                with _progress(sum(counts(conn).values()), "Exporting", str(path or "stdout"), shown) as progress:
                    stats = export_database(conn, out, fmt, progress)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:   # a write failed: say which file
            raise OSError(exc.errno, exc.strerror, "stdout" if path is None else str(path)) from exc
        raise
    return stats, counted.bytes


def _format(name: str, fmt: str | None, compress: str | None) -> tuple[str, str]:
    """The format and compression to write `name` in: the options, else what the name says; never both
    saying different things."""
    if name != "-" and Path(name).is_dir():
        raise click.UsageError(f"{name} is a directory; export writes one file (`memory backup {name}` writes "
                               "a new dated backup into a folder)")
    problem = contradiction(name, fmt, compress) if name != "-" else None
    if problem:
        raise click.UsageError(problem)
    named_fmt, named_compression = format_from_name(name) if name != "-" else ("json", "none")
    fmt = fmt or named_fmt
    if fmt is None:
        raise click.UsageError(f"cannot tell the format from the name {name!r}: pass --format json or jsonl")
    return fmt, compress or named_compression


def _expanded(name: str) -> str:
    """A path argument with ~ expanded, as --db and MEMORY_DB are (a quoted or a crontab ~ reaches us as is)."""
    return name if name == "-" else os.path.expanduser(name)


@contextmanager
def _backup_in(name: str, fmt: str | None) -> Iterator[Backup]:
    """The backup at `name` (a path, or - for stdin), its header read and checked, whatever it is compressed
    with; the format from --format, else told from the bytes, as the compression is."""
    with (nullcontext(sys.stdin.buffer) if name == "-" else open(name, "rb")) as raw:
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
    question = (f"The database {db_path} has {have['sessions']:,} sessions and {have['messages']:,} messages. "
                "Merge into it?")
    if not stdin_is_data and _terminal_stdin():
        if click.confirm(question, default=False, err=True):
            return
        raise Refused("nothing imported: the merge was declined")
    raise Refused(f"{db_path} already has {have['sessions']:,} sessions and {have['messages']:,} messages; "
                  "pass --yes to merge into it or --clear to replace it")


def _missing_table(conn) -> str:
    return next(t.name for t in TABLES if not has_table(conn, t.name))


_warned: list[bool] = []


def _warn_slow_parser() -> None:
    if IJSON_BACKEND != "yajl2_c" and not _warned:
        _warned.append(True)
        click.echo(f"warning: ijson runs on its {IJSON_BACKEND} backend, not yajl2_c; reading is several "
                   "times slower (reinstall ijson from a wheel)", err=True)


def main() -> None:
    cli(prog_name="memory")


def _quiet_stdout() -> None:
    """After the reader of stdout has gone: point it at /dev/null, so that flushing what is still buffered
    (at exit) does not fail a second time and print a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _terminal_stdin() -> bool:
    """Whether a person can answer a question; cron and pipes cannot."""
    return sys.stdin.isatty()
