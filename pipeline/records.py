"""Generator stages between the file and the database: check records, turn rows into records and back, batch."""

from __future__ import annotations

import math
import operator
import sys
from decimal import Decimal
from itertools import islice, product
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import BadBackup, corrupt_as_bad_backup
from .tables import INT64, Column, Record, Table
from .values import holds, tag_of, untagged

BATCH = 2000
_call = getattr(operator, "call", lambda function, value: function(value))     # operator.call: Python 3.11

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

    The fast path takes a record whose fields come in the table's order with plain values of their columns'
    types (one tuple of types looked up in a set), and tests only the values a CHECK or 64 bits limit. Any
    other record takes the slow path, which takes it too if it is good (fields in another order, typed
    values) and otherwise says what is wrong."""
    columns = table.columns_in(minor)
    order = tuple(c.field for c in columns)
    shapes = frozenset(product(*(_ACCEPTS[c.type] + ((type(None),) if c.nullable else ()) for c in columns)))
    tested = [c for c in columns if c.choices or c.between or c.type != "text"]
    tests, values_tested = [_test(c) for c in tested], itemgetter(*[c.field for c in tested]) if tested else None
    reals = [c.field for c in columns if c.type == "real"]
    index = -1
    with corrupt_as_bad_backup(lambda: f"{table.key}[{index + 1}]"):
        for index, record in enumerate(records):
            if type(record) is dict:
                types = tuple(map(type, record.values()))
                if types in shapes and tuple(record) == order and (
                        not tests or all(map(_call, tests, _as_tuple(values_tested(record), len(tests))))):
                    if Decimal in types:
                        _as_floats(record, reals)
                    yield record
                    continue
            yield _slowly_checked(table, columns, reals, index, record)


def _test(column: Column) -> Callable[[Any], bool]:
    """Whether a plain value of the column's type (or None where allowed) passes its CHECK or range: a quick
    yes for the fast path; a no sends the record to the slow path, which words it."""
    if column.choices:
        return frozenset(column.choices + ((None,) if column.nullable else ())).__contains__
    if column.type == "integer" and not column.nullable:
        return range(INT64[0], INT64[1] + 1).__contains__     # in C; the value is an int (not a bool) here
    low, high = column.between or (INT64 if column.type == "integer" else (-sys.float_info.max, sys.float_info.max))
    return lambda value: value is None or low <= value <= high


def _slowly_checked(table: Table, columns: Sequence[Column], reals: list[str], index: int, record: Any) -> Record:
    problem = _record_problem(columns, record)
    if problem:
        raise BadBackup(f"{table.key}[{index}]: {problem}")
    record = {c.field: untagged(c, record[c.field]) if type(record[c.field]) is dict else record[c.field]
              for c in columns}      # the record was good: fields in another order, or typed values
    _as_floats(record, reals)
    return record


def _as_tuple(value: Any, count: int) -> tuple:
    return value if count > 1 else (value,)


def _as_floats(record: dict, reals: list[str]) -> None:
    for field in reals:
        if type(record[field]) is Decimal:   # past FieldsOnce's guard against fields named twice
            dict.__setitem__(record, field, float(record[field]))


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
