"""The `memory` command: thin click commands that open files, call the pipelines and report."""

from __future__ import annotations

import enum
import io
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import click

from . import __version__
from .database import DEFAULT_PATH, counts, has_table, open_for_reading, open_for_writing, remove_database
from .errors import PipelineError, Refused
from .export import export as export_database
from .formats import COMPRESSIONS, FORMATS, IJSON_BACKEND, decompressed_reader, format_from_name
from .output import atomic_file, output_stack
from .restore import CONFLICT_MODES, Report, load, open_backup, validate as validate_backup
from .tables import TABLES


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1       # a bad file, a database fault, a refusal
    USAGE = 2         # click's UsageError
    INTERRUPTED = 130


class MemoryGroup(click.Group):
    """Turns the library's errors into `Error: ...` and exit 1, and Ctrl-C into exit 130, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:
                raise click.ClickException(exc.strerror or str(exc)) from exc
            raise click.ClickException(f"{exc.filename}: {exc.strerror}") from exc
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
def export(output: str, db_path: Path, fmt: str | None, compress: str | None, quiet: bool, as_json: bool) -> None:
    """Back up the database to OUTPUT, a path or - for stdout.

    The format comes from the name: .json, .jsonl, each optionally .gz or .zst.
    The file appears only once it is whole, readable by its owner only.

    \b
    Example:
      memory export ~/backups/memory.json.gz
      memory export --format jsonl - | ssh host 'cat > memory.jsonl'
    """
    fmt, compression = _format(output, fmt, compress)
    conn = open_for_reading(db_path.expanduser())
    to_stdout = output == "-"
    with (nullcontext(sys.stdout.buffer) if to_stdout else atomic_file(Path(output))) as raw:
        with output_stack(raw, compression) as (out, counted):
            with _progress(sum(counts(conn).values()), "Exporting", quiet or as_json) as progress:
                stats = export_database(conn, out, fmt, progress)
    target = "stdout" if to_stdout else output
    _report(err=to_stdout, quiet=quiet, as_json=as_json, quiet_text=target,
            data={"path": target, "bytes": counted.bytes, "format": fmt, "compression": compression, "counts": stats},
            text=f"Exported {_counts(stats)} to {target} ({_size(counted.bytes)})")


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
def import_(input: str, db_path: Path, fmt: str | None, clear: bool, yes: bool, on_conflict: str,
            quiet: bool, as_json: bool) -> None:
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
    with _input(input) as raw:
        backup = open_backup(decompressed_reader(raw), _format(input, fmt, None, reading=True)[0])
        conn, created = open_for_writing(db_path)
        try:
            if not created and has_table(conn, "sessions"):
                _confirm_merge(conn, db_path, clear or yes, stdin_is_data=input == "-")
            fresh = created or not conn.execute("SELECT 1 FROM sqlite_master").fetchone()
            if not fresh and not all(has_table(conn, t.name) for t in TABLES):
                raise Refused(f"{db_path} is not a memory database (no table {_missing_table(conn)})")
            with _progress(sum(backup.stats.values()), "Importing", quiet or as_json) as progress:
                report = load(conn, backup, clear=clear, on_conflict=on_conflict, create=fresh, progress=progress)
        except BaseException:
            conn.close()
            if created:
                remove_database(db_path)
            raise
        conn.close()
    others = "replaced" if on_conflict == "replace" else "skipped"
    source = "stdin" if input == "-" else input
    _report(err=False, quiet=quiet, as_json=as_json, quiet_text=str(db_path),
            data={"path": source, "database": str(db_path), "inserted": report.inserted, others: report.others},
            text=f"Imported {_counts(report.inserted)} ({sum(report.others.values()):,} {others}) from {source}")


@cli.command()
@click.argument("input")
@format_option
@quiet_option
@json_option
def validate(input: str, fmt: str | None, quiet: bool, as_json: bool) -> None:
    """Check INPUT, a path or - for stdin, as import would, without touching any database.

    Exit 0 if every record passes; exit 1 with the first fault and where it is.

    \b
    Example:
      memory validate ~/backups/memory.json.gz
    """
    _warn_slow_parser()
    with _input(input) as raw:
        backup = open_backup(decompressed_reader(raw), _format(input, fmt, None, reading=True)[0])
        with _progress(sum(backup.stats.values()), "Validating", quiet or as_json) as progress:
            report = validate_backup(backup, progress)
    source = "stdin" if input == "-" else input
    _report(err=False, quiet=quiet, as_json=as_json, quiet_text=source,
            data={"path": source, "valid": True, "version": backup.header["version"], "counts": report.records},
            text=f"{source} is a valid memory backup (version {backup.header['version']}): {_counts(report.records)}")


# ---- helpers of the commands ------------------------------------------------------------------------------

def _format(name: str, fmt: str | None, compress: str | None, reading: bool = False) -> tuple[str, str]:
    named_fmt, named_compression = format_from_name(name) if name != "-" else ("json", "none")
    fmt = fmt or named_fmt
    if fmt is None:
        raise click.UsageError(f"cannot tell the format from the name {name!r}: pass --format json or jsonl")
    return fmt, compress or named_compression


@contextmanager
def _input(name: str) -> Iterator[io.BufferedReader]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as raw:
        yield raw


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


@contextmanager
def _progress(total: int, label: str, silent: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr, only when stderr is a terminal."""
    if silent or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _report(*, err: bool, quiet: bool, as_json: bool, quiet_text: str, data: dict, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data), err=err)
    elif quiet:
        click.echo(quiet_text, err=err)
    else:
        click.echo(text, err=err)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {_label(key)}" for key, n in counts.items())


def _label(key: str) -> str:
    """toolUses -> tool uses"""
    return "".join(" " + ch.lower() if ch.isupper() else ch for ch in key)


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
