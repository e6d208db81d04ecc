"""The exceptions the library raises (the CLI turns each into one line and exit status 1), and the one place
where faults from below (ijson, gzip, zstd) become them."""

from __future__ import annotations

from typing import Any, Callable


class PipelineError(Exception):
    """Base of everything this tool refuses or fails at on purpose: a bad file, a database fault, a refusal."""


class BadBackup(PipelineError):
    """The backup file is malformed, of a version we do not read, or disagrees with its own stats."""


class DatabaseProblem(PipelineError):
    """The database is missing, locked, full, or rejected a row."""


class Refused(PipelineError):
    """The user's data would be touched in a way they did not ask for."""


def rejected(exc: Exception, twice: str = "the file holds this row twice") -> str:
    """What the database's refusal of one record (an IntegrityError) means, in the file's terms."""
    text = str(exc)
    if text.startswith("FOREIGN KEY"):
        return f"{text}: it names a row that is neither in the database nor earlier in the file"
    if text.startswith("UNIQUE"):
        return f"{text}: {twice}"
    return text


class corrupt_as_bad_backup:
    """Turn a fault in the file's bytes (bad JSON, a cut gzip or zstd stream, bad UTF-8) into one BadBackup
    line that says where reading had got to. Every other exception passes through untouched."""

    def __init__(self, where: Callable[[], str]):
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and not isinstance(exc, PipelineError) and isinstance(exc, stream_errors()):
            text = exc.args[0] if exc.args else ""
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            lines = text.strip().splitlines()
            detail = lines[0] if lines else type(exc).__name__
            if isinstance(exc, ArithmeticError):    # decimal.InvalidOperation: ijson's Decimal of 1e1000000000000000000
                detail = "a number's exponent is out of range"
            place = self.where()
            if isinstance(exc, _invalid_line_error()):     # a JSON Lines line that does not parse: its number,
                place = f"line {exc.lineno}"              # not the record after the last one read, whose table
                detail = detail.removesuffix(f" (line {exc.lineno})")      # (sessions[2]) it may not be of
            raise BadBackup(f"{place}: the file is cut short or corrupt ({detail})") from exc
        return False


def _invalid_line_error() -> type[Exception]:
    import jsonlines
    return jsonlines.InvalidLineError


def stream_errors() -> tuple[type[BaseException], ...]:
    import decimal
    import gzip
    import zlib

    import ijson
    import jsonlines

    from .formats import CutShort, NotText, zstd_reading
    errors = (ijson.JSONError, jsonlines.InvalidLineError, EOFError, CutShort, gzip.BadGzipFile, zlib.error,
              UnicodeDecodeError, decimal.InvalidOperation, NotText)
    try:
        return errors + (zstd_reading().ZstdError,)
    except PipelineError:       # no zstd reader here: a plain or gzip file still reads, and fails, as it is
        return errors
