"""The `memory` command: thin click commands that open files, call the pipelines and report."""

from __future__ import annotations

import enum
import functools
import io
import json
import os
import sys
from contextlib import closing, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import click

from . import __version__
from .backup import Retention, dry_run, listing, new_backup, newest_whole
from .database import (
    DEFAULT_PATH,
    SQLITE_HEADER,
    counts,
    database_summary,
    new_database,
    open_for_reading,
    open_for_writing,
    require_memory_tables,
    scratch_database,
)
from .errors import PipelineError, Refused
from .export import export_to
from .formats import (COMPRESSIONS, FORMATS, IJSON_BACKEND, contradiction, decompressed_reader, format_from_name,
                      looked_ahead)
from .output import not_a_file, refuse_database_stdout, stdout_by_another_name
from .report import (Shown, imported, left_out, listed_data, listed_row, one_line, records, say, say_lines, size,
                     table, warn)
from .report import progress as _progress
from .report import report as _report
from .portable import DONE, Terminated, is_terminal, signals_as_interrupts
from .restore import CONFLICT_MODES, Backup, load, open_backup
from .restore import validate as validate_backup
from .schema_check import check_for_import


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1       # a bad file, a database fault, a refusal
    USAGE = 2         # click's UsageError
    INTERRUPTED = 130     # Ctrl-C (SIGINT); SIGTERM and SIGHUP exit 128 + their number: 143, 129
    BROKEN_PIPE = 141  # the reader of stdout went away: 128 + SIGPIPE, as the shell shows cat or gzip killed by it


class HelpSaid:
    """--help, the group's and each command's, printed as every result is, through report.say: a full stdout
    is named, a reader gone away left to end the run with 141 (_ended)."""

    def get_help_option(self, ctx: click.Context):
        option = super().get_help_option(ctx)
        if option is not None:      # click makes it once, with a callback of its own that echoes past say
            option.callback = _printed(click.Context.get_help)
        return option


class MemoryCommand(HelpSaid, click.Command):
    """Each of MemoryGroup's commands (cli.command makes them of this class)."""


class MemoryGroup(HelpSaid, click.Group):
    """Runs its parsing and its command inside _ended, where every way of ending but success is told."""

    command_class = MemoryCommand
    ALIASES = {"restore": "import"}

    def make_context(self, info_name, args, parent=None, **extra):
        with _ended():     # the group's --help and --version print here, as click parses, before invoke
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        DONE.set("")
        with _ended(), signals_as_interrupts():
            return super().invoke(ctx)      # a command's parsing (its --help) and the command

    def get_command(self, ctx: click.Context, name: str):
        return super().get_command(ctx, self.ALIASES.get(name, name))


@contextmanager
def _ended() -> Iterator[None]:
    """The library's errors and the system's become `Error: ...` and exit 1, click's usage errors exit 2, and
    Ctrl-C, SIGTERM and SIGHUP a rollback and exit 130, 143 or 129; a reader of stdout gone away ends the run
    with 141, saying nothing."""
    try:
        yield
    except BrokenPipeError:     # what stdout still holds is let go in main
        raise click.exceptions.Exit(Exit.BROKEN_PIPE) from None
    except click.ClickException as exc:
        _said(exc)
    except PipelineError as exc:
        _said(click.ClickException(f"{exc}{_and_what_stands()}"))
    except OSError as exc:
        if exc.errno is None:      # not the system saying no (a full disk, a missing file): a bug
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _said(click.ClickException(f"{where}{exc.strerror}{_and_what_stands()}"))
    except Terminated as exc:
        warn(f"Terminated by {exc.name}: {_what_stands()}")
        raise click.exceptions.Exit(exc.status) from None
    except KeyboardInterrupt:
        warn(f"Interrupted: {_what_stands()}")
        raise click.exceptions.Exit(Exit.INTERRUPTED) from None


_HELP_AS_ERROR = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _said(error: click.ClickException) -> NoReturn:
    """An error said here, not left to click's main: there a stderr that takes nothing (a full disk, a reader
    gone away) ends in a traceback and status 1. Nothing can be said then, but the status still tells a usage
    error (2) from a failure (1)."""
    if not isinstance(error, _HELP_AS_ERROR):      # click 8.2's help for a bare `memory` is many lines
        error.message = one_line(error.message)      # a name it holds may hold a newline
    with suppress(OSError):
        error.show()
    raise click.exceptions.Exit(error.exit_code)


def _printed(text: Callable[[click.Context], str]):
    """The callback of --help or --version, in place of click's: `text` through report.say, then the end."""
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            say(text(ctx))
            ctx.exit()
    return callback


def _and_what_stands() -> str:
    """After an error, what was done before it (an import's summary fails to print after its commit)."""
    return f"; {DONE.get()}" if DONE.get() else ""


def _what_stands() -> str:
    """After an interrupt, what it leaves: a signal that comes as an import commits, or as an export's file is
    put in place, is handled after it, and the user must not be told to import again what is in."""
    return DONE.get() or "nothing was changed"


class HomePath(click.Path):
    """A path option or argument with a leading ~ expanded before click checks it, as --db always was (a
    quoted or a crontab ~ reaches us as is)."""

    def convert(self, value, param, ctx):
        if value == "":
            self.fail(EMPTY_PATH, param, ctx)
        return super().convert(os.path.expanduser(value) if isinstance(value, str) else value, param, ctx)


EMPTY_PATH = "an empty path names nothing (an unset variable?)"


db_option = click.option(
    "--db", "db_path", type=HomePath(dir_okay=False, path_type=Path), envvar="MEMORY_DB",
    default=str(DEFAULT_PATH), show_default=True, help="The memory database (also $MEMORY_DB).")
format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS),
    help="json or jsonl, where the file name does not say; reading tells it from the bytes without it.")
quiet_option = click.option("--quiet", "-q", is_flag=True,
                            help="Print nothing on success (errors still go to stderr; the exit status is the same).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
ignore_checksum_option = click.option(
    "--ignore-checksum", is_flag=True,
    help="Read a file whose checksum no longer matches (or was removed), e.g. one you edited on purpose.")
skip_unknown_option = click.option(
    "--skip-unknown", is_flag=True,
    help="Back up even though the database has columns or tables (holding rows) that memory-nexus 0.1.2's "
         "schema has not; they are left out, and the report names them.")
progress_option = click.option(
    "--progress", "plain_progress", is_flag=True,
    help="Where stderr is not a terminal (cron), log progress there: a line every few seconds, each starting "
         "with the UTC time and naming the file, and a closing line.")


@click.group(cls=MemoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, help="Show the version and exit.",
              callback=_printed(lambda ctx: f"memory, version {__version__}"))
def cli() -> None:
    """Back up and restore a memory-nexus session-memory database, streaming."""


@cli.command(short_help="Write the database to a backup file or stdout.")
@click.argument("output")
@db_option
@format_option
@click.option("--compress", type=click.Choice(COMPRESSIONS),
              help="gzip, zstd or none, where the file name does not say (.gz, .zst).")
@skip_unknown_option
@click.option("--check", is_flag=True, help="Run PRAGMA quick_check on the database first (backup always does).")
@quiet_option
@json_option
@progress_option
def export(output: str, db_path: Path, fmt: str | None, compress: str | None, skip_unknown: bool, check: bool,
           quiet: bool, as_json: bool, plain_progress: bool) -> None:
    """Back up the database to OUTPUT, a path or - for stdout.

    The format comes from the name: .json, .jsonl, each optionally .gz or .zst.
    The file appears only once it is whole, readable by its owner only.

    \b
    Example:
      memory export ~/backups/memory.json.gz
      memory export --format jsonl - | ssh host 'cat > memory.jsonl'
    """
    output = _expanded(output)
    named = "stdout" if output == "-" else output      # as messages name it
    if output != "-" and stdout_by_another_name(output):      # written into, never replaced
        output = "-"
    fmt, compression = _format(output, fmt, compress)
    to_stdout = output == "-"
    if to_stdout and sys.stdout is None:     # closed (>&-)
        raise Refused("stdout is closed: give a file, or - with a pipe or a redirection")
    if to_stdout:
        refuse_database_stdout(db_path)
    if compression != "none" and (sys.stdout.isatty() if to_stdout else is_terminal(output)):
        raise Refused(f"{named} is a terminal: {compression}-compressed data is not "
                      "written there; redirect it to a file or a pipe")
    shown = Shown(quiet or as_json, plain_progress)
    with closing(open_for_reading(db_path)) as conn:
        exported, nbytes = export_to(conn, None if to_stdout else Path(output), fmt, compression,
                                     functools.partial(_progress, shown=shown),
                                     stream=sys.stdout.buffer if to_stdout else None, database=db_path,
                                     skip_unknown=skip_unknown, check=check)
    stats = exported.counts
    target = "stdout" if to_stdout else output
    _report(err=to_stdout, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": target, "database": str(db_path), "bytes": nbytes, "format": fmt,
                  "compression": compression, "counts": stats, "leftOut": exported.left_out},
            lines=[f"Exported {records(sum(stats.values()))} ({size(nbytes)})", f"to {target}",
                   f"from database {db_path}", *table({"records": stats}), *left_out(exported.left_out)])


@cli.command(name="import", short_help="Restore a backup into the database (also: restore).")
@click.argument("input")
@db_option
@format_option
@click.option("--clear", is_flag=True, help="Replace everything in the database (in the same transaction).")
@click.option("--yes", "-y", "--force", "yes", is_flag=True, help="Merge into a database that has data, without asking.")
@click.option("--on-conflict", type=click.Choice(CONFLICT_MODES), default="skip", show_default=True,
              help="Merging, a record whose fact the database holds with other values (same natural key): keep "
                   "the database's, take the file's, or refuse the file.")
@click.option("--dry-run", is_flag=True,
              help="Do the whole import in its transaction, then roll it back: report what it would do.")
@ignore_checksum_option
@quiet_option
@json_option
@progress_option
def import_(input: str, db_path: Path, fmt: str | None, clear: bool, yes: bool, on_conflict: str, dry_run: bool,
            ignore_checksum: bool, quiet: bool, as_json: bool, plain_progress: bool) -> None:
    """Restore INPUT, a path, a folder of `memory backup`'s or - for stdin, into the database, all or nothing.

    The header is checked before anything is written; every record is checked as it streams; one
    transaction holds the whole import, --clear included, so any fault leaves the database as it was.
    A database that does not exist is created with the memory-nexus schema, and the report says so. Into a
    database that has data, a merge: records are matched to rows by natural keys, never by ids. From a
    folder, the newest of its backups that validates is restored; each newer one that does not is named on
    stderr. `memory restore` is another name for this command.

    \b
    Example:
      memory import --clear ~/backups/memory
      memory import --clear ~/backups/memory.json.gz
      memory import --yes --dry-run other-machine.json.gz
      zstd -dc backup.json.zst | memory import -
    """
    _warn_slow_parser()
    input = _expanded(input)
    new = not db_path.exists()
    shown = Shown(quiet or as_json, plain_progress)
    with _source(input, fmt, ignore_checksum, shown) as (source, backup), \
            _import_target(db_path, clear, clear or yes, stdin_is_data=input == "-", dry_run=dry_run) \
            as (conn, create), \
            _progress(sum(backup.stats.values()), "Importing", source, shown) as progress:
        report = load(conn, backup, clear=clear, on_conflict=on_conflict, create=create, dry_run=dry_run,
                      progress=progress, phase=progress.phase)
    tally = {"skipped": report.skipped, "updated": report.updated, "renumbered": report.renumbered}
    _report(err=False, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": source, "database": str(db_path), "created": new and not dry_run, "dryRun": dry_run,
                  "records": report.records, "inserted": report.inserted, **tally},
            lines=imported(report.records, report.inserted, tally, source, db_path, new, dry_run))


@cli.command(short_help="Check a backup file as import would.")
@click.argument("input")
@format_option
@ignore_checksum_option
@quiet_option
@json_option
@progress_option
def validate(input: str, fmt: str | None, ignore_checksum: bool, quiet: bool, as_json: bool,
             plain_progress: bool) -> None:
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
    with _backup_in(input, fmt, ignore_checksum) as backup:
        with _progress(sum(backup.stats.values()), "Validating", source, shown) as progress:
            report = validate_backup(backup, progress)
    version = backup.header["version"]
    _report(err=False, quiet=quiet, as_json=as_json, shown=shown,
            data={"path": source, "valid": True, "version": version, "counts": report.records},
            lines=[f"Validated {records(sum(report.records.values()))} (version {version}): a valid memory backup",
                   f"from {source}", *table({"records": report.records})])


@cli.command(short_help="Write a new checked backup into a folder; rotate.")
@click.argument("directory", type=HomePath(file_okay=False, path_type=Path))
@db_option
@click.option("--keep", type=click.IntRange(min=1), metavar="N",
              help="Keep the newest N of its own backups in DIRECTORY, the new one included "
                   "(7 when no --keep option is given).")
@click.option("--keep-daily", type=click.IntRange(min=1), metavar="N",
              help="Keep the newest backup of each of the last N UTC days that have backups.")
@click.option("--keep-weekly", type=click.IntRange(min=1), metavar="N",
              help="Keep the newest backup of each of the last N ISO weeks that have backups.")
@click.option("--keep-monthly", type=click.IntRange(min=1), metavar="N",
              help="Keep the newest backup of each of the last N months that have backups.")
@click.option("--dry-run", is_flag=True,
              help="Write nothing, remove nothing: open the database, print what a backup now would remove.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json or jsonl.")
@click.option("--compress", type=click.Choice(COMPRESSIONS), default="zstd", show_default=True,
              help="zstd, gzip or none (zstd: see BENCHMARKS.md for why).")
@skip_unknown_option
@quiet_option
@json_option
@progress_option
def backup(directory: Path, db_path: Path, keep: int | None, keep_daily: int | None, keep_weekly: int | None,
           keep_monthly: int | None, dry_run: bool, fmt: str, compress: str, skip_unknown: bool, quiet: bool,
           as_json: bool, plain_progress: bool) -> None:
    """Write a new backup into DIRECTORY, check it, then remove the old ones no --keep option keeps.

    The database is checked first (PRAGMA quick_check, in the backup's read transaction). The file is
    memory-<UTC time>.json.zst (or as --format and --compress say), written atomically and validated,
    checksum included, before any old backup is removed. The --keep options keep, as restic's forget does,
    the union of what each keeps; with none given, --keep 7. The new backup is never removed; one named for
    a time in the future is warned about and kept. Other files in DIRECTORY are never touched. Runs into
    one DIRECTORY take turns. Exit 0 only when the new backup was written and validated.

    From cron, give the command's full path (cron's PATH does not have it) and --quiet, so that cron
    mails you only a failure.

    \b
    Example (crontab, daily at 03:15; the README has the whole recipe):
      15 3 * * * $HOME/.local/memory/bin/memory backup -q $HOME/backups/memory
    """
    if str(directory) == "-":
        raise click.UsageError("backup writes into a folder, not to stdout: use `memory export -` for that")
    retention = Retention.given(keep, keep_daily, keep_weekly, keep_monthly)
    if dry_run:
        with closing(open_for_reading(db_path)):    # refused where the backup would be: a wrong --db, say
            _backup_dry_run(directory, retention, fmt, compress, quiet, as_json)
        return
    shown = Shown(quiet or as_json, plain_progress)
    with closing(open_for_reading(db_path)) as conn, \
            new_backup(conn, directory, retention, fmt, compress, functools.partial(_progress, shown=shown),
                       database=db_path, skip_unknown=skip_unknown) as done:
        for warning in done.warnings:    # the folder stays locked while this reports
            warn(f"warning: {warning}")
        removed = len(done.removed)
        _report(err=False, quiet=quiet, as_json=as_json, shown=shown,
                data={"path": str(done.path), "database": str(db_path), "bytes": done.bytes, "counts": done.counts,
                      "leftOut": done.left_out, "removed": [str(p) for p in done.removed]},
                lines=[f"Backed up {records(sum(done.counts.values()))} ({size(done.bytes)})", f"to {done.path}",
                       f"from database {db_path}", *table({"records": done.counts}), *left_out(done.left_out),
                       f"removed {removed} old backup{'' if removed == 1 else 's'} ({retention})",
                       *(f"  {p}" for p in done.removed)])


def _backup_dry_run(directory: Path, retention: Retention, fmt: str, compress: str, quiet: bool,
                    as_json: bool) -> None:
    removed, warnings = dry_run(directory, retention, fmt, compress)
    for warning in warnings:
        warn(f"warning: {warning}")
    if as_json:
        say(json.dumps({"dryRun": True, "wouldRemove": [str(p) for p in removed]}))
    elif not quiet:
        say_lines([f"would remove {p}" for p in removed] or ["would remove nothing"])


@cli.command(name="list", short_help="List a folder's backups, newest first.")
@click.argument("directory", type=HomePath(file_okay=False, exists=True, path_type=Path))
@click.option("--check", is_flag=True,
              help="Validate each backup whole, checksum included, and mark the bad ones; exit 1 if any is bad.")
@ignore_checksum_option
@click.option("--json", "as_json", is_flag=True, help="Print the backups as one JSON array.")
def list_(directory: Path, check: bool, ignore_checksum: bool, as_json: bool) -> None:
    """List memory's own backups in DIRECTORY, newest first: name (its UTC time, layout and compression), size,
    sessions, messages.

    Only each file's header is read, unless --check. Exit 1 if a backup cannot be read (with --check:
    if one fails validation).

    \b
    Example:
      memory list --check ~/backups/memory
    """
    entries = list(listing(directory, check, ignore_checksum))
    if as_json:
        say(json.dumps([listed_data(e) for e in entries]))
    else:
        rows = [listed_row(e, check) for e in entries]
        if rows:
            rows.insert(0, ["name", "size", "sessions", "messages", ""])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
        for row in rows:      # within 80 columns: the name says the time, layout and compression
            cells = [cell.rjust(width) if i in (1, 2, 3) else cell.ljust(width)
                     for i, (cell, width) in enumerate(zip(row, widths))]
            say("  ".join(cells).rstrip())
        if not rows:
            warn(f"{directory} holds no backup of memory's")
    bad = sum(1 for e in entries if e.fault)
    if bad:
        raise click.ClickException(f"{directory}: {bad} of its {len(entries)} backups "
                                   f"{'fail' if check else 'cannot be read'} (marked BAD)")


@cli.command(short_help="Show rows per table, size, newest session.")
@db_option
@json_option
def stats(db_path: Path, as_json: bool) -> None:
    """Show rows per table, the database size and the newest session: handy to check a restore.

    \b
    Example:
      memory stats --db /tmp/restored.db
    """
    with closing(open_for_reading(db_path)) as conn:
        summary = database_summary(conn, db_path)
    if as_json:
        say(json.dumps(summary))
        return
    say_lines([f"{db_path} ({size(summary['bytes'])})", *table({"rows": summary["counts"]}),
               f"newest session: {summary['newestSession'] or 'none'}"])


# ---- helpers of the commands ------------------------------------------------------------------------------

def _format(name: str, fmt: str | None, compress: str | None) -> tuple[str, str]:
    """The format and compression to write `name` in: the options, else what the name says; never both
    saying different things."""
    if name != "-" and Path(name).is_dir():
        raise click.UsageError(f"{name} is a directory; export writes one file (`memory backup {name}` writes "
                               "a new dated backup into a folder)")
    named_fmt, named_compression = format_from_name(name) if name != "-" else (None, "none")
    # stdout, a device, a FIFO: JSON where the name says no format; a name that says nothing (/dev/null) is
    # not held against --compress
    stream = name == "-" or not_a_file(name)
    says_nothing = named_fmt is None and named_compression == "none"
    problem = contradiction(name, fmt, compress) if not (stream and says_nothing) else None
    if problem:
        raise click.UsageError(problem)
    fmt = fmt or named_fmt or ("json" if stream else None)
    if fmt is None:
        raise click.UsageError(f"cannot tell the format from the name {name!r}: pass --format json or jsonl")
    return fmt, compress or named_compression


def _expanded(name: str) -> str:
    """A path argument with ~ expanded, as --db and MEMORY_DB are (a quoted or a crontab ~ reaches us as is);
    never "", which Path would read as the current folder."""
    if not name:
        raise click.UsageError(EMPTY_PATH)
    return name if name == "-" else os.path.expanduser(name)


@contextmanager
def _backup_in(name: str, fmt: str | None, ignore_checksum: bool = False) -> Iterator[Backup]:
    """The backup at `name` (a path, or - for stdin), its header read and checked, whatever it is compressed
    with; the layout from --format, else from a name that says it (.json, .jsonl), else told from the bytes,
    as the compression is. A name is trusted over the bytes so that a damaged file is refused for what it
    claims to be."""
    if name == "-" and (sys.stdin is None or sys.stdin.isatty()):    # None: closed (<&-)
        raise Refused(f"stdin is {'closed' if sys.stdin is None else 'a terminal'}: pipe a backup into it "
                      "(zstd -dc backup.json.zst | memory import -)")
    fmt = fmt or (format_from_name(name)[0] if name != "-" else None)
    with (nullcontext(sys.stdin.buffer) if name == "-" else open(name, "rb")) as raw:
        first, raw = looked_ahead(raw, len(SQLITE_HEADER))
        if first == SQLITE_HEADER:     # the database given as the backup
            raise Refused("stdin is an SQLite database, not a backup" if name == "-" else
                          f"{name} is an SQLite database, not a backup: restore into it with --db {name}, or back "
                          f"it up with memory export --db {name} FILE")
        backup = open_backup(decompressed_reader(raw), fmt, ignore_checksum)
        try:
            yield backup
        finally:
            backup.close()


@contextmanager
def _source(name: str, fmt: str | None, ignore_checksum: bool, shown: Shown) -> Iterator[tuple[str, Backup]]:
    """(what to call it, the backup): stdin, a file, or the newest whole backup of a folder, naming on stderr
    each newer one passed over."""
    if name == "-" or not Path(name).is_dir():
        with _backup_in(name, fmt, ignore_checksum) as backup:
            yield ("stdin" if name == "-" else name), backup
        return
    if fmt:
        raise click.UsageError("--format does not apply to a folder: its backups' names say theirs")

    def passed_over(path: Path, fault: str) -> None:
        warn(f"passed over {path}: {fault}")

    with newest_whole(Path(name), passed_over, ignore_checksum, functools.partial(_progress, shown=shown)) \
            as chosen:
        yield str(chosen.path), chosen.backup


@contextmanager
def _import_target(db_path: Path, clear: bool, merge_allowed: bool, stdin_is_data: bool,
                   dry_run: bool) -> Iterator[tuple]:
    """(connection, whether it needs the schema): a new database, which appears only once the import has
    committed (in memory, for a dry run), or an existing one that is empty or a memory database whose schema
    takes the import, the merge agreed to."""
    if not db_path.exists() and dry_run:
        with closing(scratch_database()) as conn:
            yield conn, True
        return
    if not db_path.exists():
        with new_database(db_path) as conn:
            yield conn, True
        return
    with closing(open_for_writing(db_path)) as conn:
        empty = not conn.execute("SELECT 1 FROM sqlite_master").fetchone()
        if not empty:
            require_memory_tables(conn, db_path)
            check_for_import(conn, clear)
            _confirm_merge(conn, db_path, merge_allowed, stdin_is_data)
        yield conn, empty


def _confirm_merge(conn, db_path: Path, allowed: bool, stdin_is_data: bool) -> None:
    have = counts(conn)
    if allowed or not any(have.values()):
        return
    question = (f"The database {db_path} has {have['sessions']:,} sessions and {have['messages']:,} messages. "
                "Merge into it?")
    if not stdin_is_data and _terminal_stdin():
        if click.confirm(one_line(question), default=False, err=True):
            return
        raise Refused("nothing imported: the merge was declined")
    raise Refused(f"{db_path} already has {have['sessions']:,} sessions and {have['messages']:,} messages; "
                  "pass --yes to merge into it or --clear to replace it")


_warned: list[bool] = []


def _warn_slow_parser() -> None:
    if IJSON_BACKEND != "yajl2_c" and not _warned:
        _warned.append(True)
        click.echo(f"warning: ijson runs on its {IJSON_BACKEND} backend, not yajl2_c; reading is several "
                   "times slower (reinstall ijson from a wheel)", err=True)


def main() -> None:
    _closed_standard_fds_held()
    _standard_streams_written_whole()
    try:
        cli(prog_name="memory")
    except SystemExit as end:
        failed = _let_go_of_standard_streams()
        if failed is not None and end.code in (0, None):     # not seen: each report is flushed as it is said
            name, error = failed
            if name == "stdout" and isinstance(error, BrokenPipeError):
                raise SystemExit(Exit.BROKEN_PIPE) from None
            with suppress(OSError, ValueError, AttributeError):
                click.echo(f"Error: {name}: {error.strerror}", err=True)
            raise SystemExit(Exit.FAILURE) from None
        raise


def _closed_standard_fds_held() -> None:
    """A standard stream closed as the command starts (`2>&-`), which Python leaves None: its fd is opened on
    /dev/null, so no file opened later takes that number (a backup opened as fd 2 would take whatever anything
    writes to stderr: the worker's, SQLite's). stderr then writes nothing (found: with it None, every command that
    reports there failed, saying nothing); stdin and stdout stay None, which `import -` and `export -` refuse, and
    a report to stdout fails, as cat does (report.say)."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        if getattr(sys, name) is None:
            _on_devnull(fd)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def _standard_streams_written_whole() -> None:
    """Under PYTHONUNBUFFERED (python -u) stdout and stderr are text over the raw file, and a raw file may take
    part of a write and say so only by its count, which the text layer does not read (found: a report, and an
    export, cut on a full disk, exit 0; to a full non-blocking pipe, dropped). A buffer is put between them,
    which writes all or fails; every report is flushed as it is said (click.echo), so none waits in it."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and isinstance(getattr(stream, "buffer", None), io.FileIO):
            setattr(sys, name, io.TextIOWrapper(io.BufferedWriter(stream.buffer), encoding=stream.encoding,
                                                errors=stream.errors, newline=None if os.name == "nt" else "\n",
                                                write_through=True))


def _let_go_of_standard_streams() -> tuple[str, OSError] | None:
    """What stdout and stderr still hold, written now; where it cannot be (a full disk, a reader gone away: the
    error said already), the stream pointed at /dev/null, else Python's own flush at exit fails again, prints
    'Exception ignored' and exits 120 (found: `memory stats > /dev/full` without PYTHONUNBUFFERED)."""
    failed = None
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        if stream is None:      # closed when the command started
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            failed = failed or ((name, exc) if isinstance(exc, OSError) else None)
            with suppress(ValueError):      # a stream with no fd
                _on_devnull(stream.fileno())
    return failed


def _on_devnull(fd: int) -> None:
    """File descriptor `fd` pointed at /dev/null (opened there, where it was closed)."""
    with suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)


def _terminal_stdin() -> bool:
    """Whether a person can answer a question; cron, pipes and a closed stdin cannot."""
    return sys.stdin is not None and sys.stdin.isatty()
