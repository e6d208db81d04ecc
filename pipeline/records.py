"""Generator stages between the file and the database: check records, turn rows into records and back, batch."""

from __future__ import annotations

import math
from decimal import Decimal
from itertools import islice
from operator import itemgetter
from typing import Any, Iterable, Iterator, Sequence

from .errors import BadBackup, corrupt_as_bad_backup
from .tables import INT64, Column, Record, Table
from .values import holds, tag_of, untagged

BATCH = 2000

_ACCEPTS = {"text": (str,), "integer": (int,), "real": (float, int, Decimal)}
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
          type(None): "null", dict: "an object", list: "an array"}
_WANTS = {"text": "a string", "integer": "an integer", "real": "a number"}


def shown(value: Any) -> str:
    """A value as a message quotes it: short, and JSON-like."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Decimal):
        return str(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(column: Column, value: Any) -> str | None:
    """What is wrong with one value, or None; the slow path, run only once a record has failed the fast one."""
    if value is None:
        return None if column.nullable else f"{column.field} must not be null"
    if type(value) is dict:
        if tag_of(value) is None:
            typed = " or a typed value ($blob, $text, $textBytes, $real)" if holds(column) else ""
            return f"{column.field} must be {_WANTS[column.type]}{typed}, got an object"
        try:
            untagged(column, value)
        except ValueError as exc:
            return str(exc)
        return None
    if type(value) not in _ACCEPTS[column.type]:
        return f"{column.field} must be {_WANTS[column.type]}, got {shown(value)}"
    if type(value) is int and not INT64[0] <= value <= INT64[1]:
        return f"{column.field} must fit in 64 bits, got {value}"
    if column.choices and value not in column.choices:
        allowed = " or ".join(repr(c) for c in column.choices) if len(column.choices) == 2 else \
            "one of " + ", ".join(repr(c) for c in column.choices)
        return f"{column.field} must be {allowed}, got {shown(value)}"
    if type(value) is Decimal and not math.isfinite(float(value)):
        return f"{column.field} must be a finite number, got {value}"
    if column.between and not column.between[0] <= value <= column.between[1]:
        return f"{column.field} must be between {column.between[0]:g} and {column.between[1]:g}, got {shown(value)}"
    return None


def _record_problem(columns: Sequence[Column], record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"expected an object, got {_NAMES.get(type(record), shown(record))}"  # "a string", "an array"
    fields = [c.field for c in columns]
    missing = [f for f in fields if f not in record]
    if missing:
        return f"missing field {missing[0]!r}"
    unknown = [k for k in record if k not in fields]
    if unknown:
        return f"unknown field {unknown[0]!r}"
    return next(filter(None, (_problem(c, record[c.field]) for c in columns)), None)


def checked(table: Table, minor: int, records: Iterable[Any]) -> Iterator[Record]:
    """Yield each record once it has exactly the table's fields with allowed values; raise at the first that has not.

    The fast path is one key comparison and one type lookup per field; the slow path says what is wrong."""
    columns = table.columns_in(minor)
    fields = frozenset(c.field for c in columns)
    plain = [(c.field, frozenset(_ACCEPTS[c.type]) | ({type(None)} if c.nullable else set()))
             for c in columns]
    exact = [c for c in columns if c.choices or c.between or c.type != "text"]
    reals = [c.field for c in columns if c.type == "real"]
    index = -1
    with corrupt_as_bad_backup(lambda: f"{table.key}[{index + 1}]"):
        for index, record in enumerate(records):
            yield _checked_one(table, columns, fields, plain, exact, reals, index, record)


def _checked_one(table: Table, columns: Sequence[Column], fields: frozenset, plain: list, exact: list,
                 reals: list[str], index: int, record: Any) -> Record:
    ok = isinstance(record, dict) and record.keys() == fields
    if ok:
        for field, accepts in plain:
            if type(record[field]) not in accepts:
                ok = False
                break
    if ok:
        ok = all(_problem(c, record[c.field]) is None for c in exact)
    if not ok:
        problem = _record_problem(columns, record)
        if problem:
            raise BadBackup(f"{table.key}[{index}]: {problem}")
        record = {c.field: untagged(c, record[c.field]) if type(record[c.field]) is dict else record[c.field]
                  for c in columns}      # the record was good: it holds typed values
    for field in reals:
        if type(record[field]) is Decimal:   # past FieldsOnce's guard against fields named twice
            dict.__setitem__(record, field, float(record[field]))
    return record


def rows_of(table: Table, minor: int, records: Iterable[Record]) -> Iterator[tuple]:
    """Records from the file as tuples in the order of the table's columns."""
    fields = [c.field for c in table.columns_in(minor)]
    pick = itemgetter(*fields)
    if len(fields) == 1:
        return ((pick(r),) for r in records)
    return map(pick, records)


def records_of(table: Table, rows: Iterable[Sequence[Any]]) -> Iterator[Record]:
    """Rows from the database as records keyed by the file's field names."""
    fields = [c.field for c in table.columns]
    return (dict(zip(fields, row)) for row in rows)


def batches(items: Iterable[Any], size: int | None = None) -> Iterator[list]:
    """Lists of at most `size` (BATCH) items: the unit of memory, of executemany and of progress."""
    size = size or BATCH
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
