"""What the commands tell the user: reports readable at 80 columns, progress as a bar or as timestamped log lines."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import unicodedata
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import click

if TYPE_CHECKING:
    from .backup import Listed

PLAIN_EVERY = 5.0   # seconds between two plain progress lines
NUMBER_WIDTH = 12


def utc_now() -> str:
    """The time a log line starts with: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- progress ---------------------------------------------------------------------------------------------

class Progress:
    """Told how many records were done (called with a count) and which phase follows them; shows nothing."""

    def __call__(self, n: int) -> None:
        pass

    def phase(self, text: str) -> None:
        pass


class _Bar(Progress):
    """click's bar on a terminal, without a time estimate (it cannot know the phases after the records);
    each phase after the records gets a line of its own, so a long rebuild never looks like a frozen bar."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def phase(self, text: str) -> None:
        if not self.bar.hidden:
            self.bar.render_finish()
            self.bar.hidden = True      # so leaving the block does not end the line a second time
        click.echo(f"  {text}...", err=True)


class _Lines(Progress):
    """For a log (cron): a line every few seconds, each starting with the UTC time and naming the file."""

    def __init__(self, total: int, label: str, name: str):
        self.total, self.label, self.name, self.done, self.shown = total, label, name, 0, -1
        self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last >= PLAIN_EVERY:
            self.last = time.monotonic()
            self.print()

    def phase(self, text: str) -> None:
        self.print()
        log(f"{self.label} {self.name}: {text[0].lower()}{text[1:]}")

    def print(self) -> None:
        """The count, unless this count was the last line."""
        if self.done == self.shown:
            return
        self.shown = self.done
        share = f" ({self.done * 100 // self.total}%)" if self.total else ""
        log(f"{self.label} {self.name}: {self.done:,} of {self.total:,} records{share}")


def one_line(text: str) -> str:
    """`text` with each control character (a newline, a tab, an escape, DEL and C1's), each line or paragraph
    separator, each bidi control (a right-to-left override) and each byte of a name that is not UTF-8 (a lone
    surrogate in Python, which a stdout that encodes strictly cannot write) as Python writes it in a string
    literal (\\n, \\x1b, \\u2028, \\u202e, \\udcff): a file may be named with any of them, and a name is not to
    break a message in two, drive a terminal, show as another name or fail the report. Every other character is
    left as it is (a narrow no-break space in a macOS screenshot's name, the joiner in an emoji)."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if c in _BIDI or unicodedata.category(c) in _BREAKING else c for c in text)


_BREAKING = {"Cc", "Zl", "Zp", "Cs"}
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")   # Bidi_Control


def warn(text: str) -> None:
    """One line on stderr: a warning, or what a signal left."""
    click.echo(one_line(text), err=True)


def log(text: str) -> None:
    """One line of a log on stderr, stamped with the time."""
    warn(f"{utc_now()} {text}")


class Shown:
    """What progress to show: a bar on a terminal (not with --quiet or --json); with --progress, where stderr
    is not a terminal, log lines (--progress is asked for by name, so --quiet does not silence it)."""

    def __init__(self, silent: bool, plain: bool):
        self.silent, self.plain = silent, plain

    @property
    def logging(self) -> bool:
        return self.plain and not sys.stderr.isatty()


@contextmanager
def progress(total: int, label: str, name: str, shown: Shown) -> Iterator[Progress]:
    """Progress of `total` records of the file `name`: a first line, then as Progress says, then a last."""
    if shown.logging:
        lines = _Lines(total, label, name)
        lines.print()
        yield lines
        lines.print()
    elif not shown.silent and sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=False, show_pos=True,
                               show_percent=True) as bar:
            yield _Bar(bar)
    else:
        yield Progress()


# ---- reports ----------------------------------------------------------------------------------------------

def say_lines(lines: list[str], err: bool = False) -> None:
    """Lines to stdout (or stderr), each one line whatever names it holds (one_line)."""
    say("\n".join(map(one_line, lines)), err=err)


def say(text: str, err: bool = False) -> None:
    """Lines to stdout (or stderr); one that cannot be written (a full disk, /dev/full) is named as the
    place, as a file would be. A reader gone away (BrokenPipeError) is left as it is: it has its own exit.
    (Under PYTHONUNBUFFERED, cli.main puts a buffer under the streams, which writes all or fails.)"""
    try:
        if (sys.stderr if err else sys.stdout) is None:      # closed as the command started (>&-)
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        click.echo(text, err=err)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, "stderr" if err else "stdout") from exc


def report(*, err: bool, quiet: bool, as_json: bool, shown: Shown, data: dict, lines: list[str]) -> None:
    """The result: one JSON object with --json, nothing with --quiet, else `lines`; with --progress in a log,
    also its unindented lines as one, stamped, to close the run on the stream its progress went to."""
    if as_json:
        say(json.dumps(data), err=err)
    elif not quiet:
        say_lines(lines, err=err)
    if shown.logging:
        log("; ".join(line for line in lines if not line.startswith(" ")))


def table(columns: dict[str, dict[str, int]]) -> list[str]:
    """Counts per table, one row each, one column per entry of `columns` (headed when more than one)."""
    keys = list(dict.fromkeys(k for column in columns.values() for k in column))
    width = max(len(label(k)) for k in keys) if keys else 0
    rows = []
    if len(columns) > 1:
        rows.append(" " * (2 + width) + "".join(f"  {name:>{NUMBER_WIDTH}}" for name in columns))
    for key in keys:
        numbers = "".join(f"  {column.get(key, 0):>{NUMBER_WIDTH},}" for column in columns.values())
        rows.append(f"  {label(key):<{width}}{numbers}")
    return rows


def records(n: int) -> str:
    return f"{n:,} record{'' if n == 1 else 's'}"


def label(key: str, n: int = 2) -> str:
    """toolUses -> tool uses; with n=1, tool use (entities -> entity)."""
    words = "".join(" " + ch.lower() if ch.isupper() else ch for ch in key)
    if n != 1:
        return words
    return words[:-3] + "y" if words.endswith("ies") else words[:-1]


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{int(n):,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---- the commands' reports -------------------------------------------------------------------------------

def imported(records_: dict[str, int], inserted: dict[str, int], tally: dict[str, dict[str, int]], source: str,
             db_path: Path, new: bool, dry_run: bool) -> list[str]:
    """The import's report: what it did in one line (or that a merge changed nothing), from which file and
    into which database each on a line of its own (a long path wraps no sentence), and per table the records,
    inserted and skipped, and updated and renumbered where any were."""
    total, done = sum(records_.values()), sum(inserted.values())
    said = ", ".join(f"{sum(counts.values()):,} {word}" for word, counts in tally.items()
                     if word == "skipped" or any(counts.values()))
    if done or any(tally["updated"].values()) or not total:
        first = f"{'Would import' if dry_run else 'Imported'} {records(total)}: {done:,} inserted, {said}"
    else:
        first = f"Nothing {'would be ' if dry_run else ''}imported: all {records(total)} are there already"
    into = f"{'would go ' if dry_run else ''}into {'new ' if new else ''}database {db_path}"
    columns = {"records": records_, "inserted": inserted, "skipped": tally["skipped"],
               **{word: counts for word, counts in tally.items() if word != "skipped" and any(counts.values())}}
    return [first, f"from {source}", into, *table(columns)]


def left_out(left_out: list[str]) -> list[str]:
    return [f"left out, as --skip-unknown asked: {', '.join(left_out)}"] if left_out else []


def listed_row(entry: Listed, check: bool) -> list[str]:
    """name (its UTC time, layout and compression), size, sessions and messages; the fault last, or with
    --check "ok"."""
    stats = (entry.header or {}).get("stats", {})
    counted = [f"{stats[key]:,}" if key in stats else "?" for key in ("sessions", "messages")]
    mark = f"BAD: {entry.fault}" if entry.fault else ("ok" if check else "")
    return [one_line(entry.path.name), size(entry.bytes), *counted, one_line(mark)]     # aligned as shown


def listed_data(entry: Listed) -> dict:
    header = entry.header or {}
    return {"path": str(entry.path), "exportedAt": header.get("exportedAt"), "bytes": entry.bytes,
            "format": entry.fmt, "compression": entry.compression, "version": header.get("version"),
            "stats": header.get("stats"), "fault": entry.fault}
