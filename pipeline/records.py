"""Generator stages between the file and the database: check records, turn rows into records and back, batch."""

from __future__ import annotations

import collections
import functools
import math
import sys
from decimal import Decimal
from itertools import islice, repeat
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import BadBackup
from .tables import BY_KEY, INT64, Column, Record, Table
from .values import holds, tag_of, untagged

BATCH = 2000
HELD = 8 << 20      # but about this many bytes of long items (a table of large tool results): see `batches`
CHUNK = 8           # items taken at a time, one of them measured: measuring each cost 7% of an export

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
    if type(value) is int and value.bit_length() > 256:     # repr() of it takes time quadratic in its digits
        return f"an integer of about {value.bit_length() * 0.30103:,.0f} digits"
    text = str(value) if isinstance(value, Decimal) else repr(value)
    if len(text) > 60 and isinstance(value, Decimal) and value.is_finite():      # its exponent kept
        mantissa, exponent = format(value, "E").split("E")
        return f"{mantissa[:40]}...E{exponent}"
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
    if column.choices and value not in column.choices:
        allowed = " or ".join(repr(c) for c in column.choices) if len(column.choices) == 2 else \
            "one of " + ", ".join(repr(c) for c in column.choices)
        return f"{column.field} must be {allowed}, got {shown(value)}"
    if type(value) is Decimal and not math.isfinite(float(value)):
        return f"{column.field} must be a finite number, got {shown(value)}"
    if column.between and not column.between[0] <= value <= column.between[1]:
        return f"{column.field} must be between {column.between[0]:g} and {column.between[1]:g}, got {shown(value)}"
    if type(value) is int and not INT64[0] <= value <= INT64[1]:     # (a range says more, where there is one)
        return f"{column.field} must fit in 64 bits, got {shown(value)}"
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
        return f"unknown field {shown(unknown[0])}"
    return next(filter(None, (_problem(c, record[c.field]) for c in columns)), None)


class Checker:
    """Checks a table's records a batch at a time: a record must have exactly the table's fields with allowed
    values. Returns the batch once each record is good, raises at the first that is not.

    The fast path takes a batch whose records all have exactly the table's fields (as many keys as it has
    fields, and each found) holding plain values of their columns' types, and tests only the columns that a
    CHECK or 64 bits limit: a column at a time, every loop in C, no Python frame per record. A batch that
    fails it is checked a record at a time, in order, each as the fast path would or else the slow path,
    which takes a good record too (typed values) and otherwise says what is wrong."""

    def __init__(self, table: Table, minor: int):
        self.table = table
        self.columns = table.columns_in(minor)
        self.kinds = [(itemgetter(c.field), frozenset(_ACCEPTS[c.type] + ((type(None),) if c.nullable else ())))
                      for c in self.columns]
        tested = [c for c in self.columns if c.choices or c.between or c.type != "text"]
        self.tests = [(_test(c), itemgetter(c.field)) for c in tested]
        self.reals = [c.field for c in self.columns if c.type == "real"]
        pick = itemgetter(*(c.field for c in self.columns))
        # record -> its row: its values in the order of the table's columns (of the file's version)
        self.row: Callable[[Record], tuple] = (lambda r: (pick(r),)) if len(self.columns) == 1 else pick
        self.encoded = tuple(i for i, c in enumerate(self.columns) if c.name in LONG_TEXTS)
        self.encoders = [(c.field, _utf8 if c.nullable else str.encode) for c in self.columns if c.name in LONG_TEXTS]

    def rows(self, batch: list[Record]) -> Checked:
        """A batch that passed the fast path (its records are spent) as rows, their long texts as UTF-8."""
        for field, encode in self.encoders:
            texts = map(encode, map(itemgetter(field), batch))
            collections.deque(map(dict.__setitem__, batch, repeat(field), texts), 0)
        return Checked(map(self.row, batch), self.encoded)

    def __call__(self, batch: list[Any], start: int = 0) -> list[Record]:
        if self.fast(batch):
            return batch
        return [self.one(record, index) for index, record in enumerate(batch, start)]

    def fast(self, batch: list[Any]) -> bool:
        """Whether the whole batch passes the fast path (its reals, where read as Decimal, are then floats)."""
        if not batch or set(map(type, batch)) != {dict} or set(map(len, batch)) != {len(self.columns)}:
            return False
        try:
            kinds = [set(map(type, map(value, batch))) for value, _ in self.kinds]
        except KeyError:
            return False
        if not (all(map(frozenset.issuperset, (accepts for _, accepts in self.kinds), kinds)) and all(
                all(map(test, map(value, batch))) for test, value in self.tests)):
            return False
        if any(Decimal in kind for kind in kinds):
            for record in batch:
                _as_floats(record, self.reals)
        return True

    def count(self, text: bytes) -> int | None:
        """How many records JSON array `text` holds, if every one is an object holding the table's fields and no
        other, each with a value that passes the fast path (as msgspec reads them); else None. A field named
        twice msgspec reads once: the caller rules that out, and checks the text's UTF-8 and escapes
        (canonical._counted). The long texts are not made strings (msgspec.Raw, the value as written): each
        must begin as a string does, or be null where allowed. For validate: making them was half its time."""
        import msgspec
        decode, long_texts = self._typed
        try:
            records = decode(text)
        except (msgspec.MsgspecError, ValueError, RecursionError):
            return None
        for value, starts in long_texts:
            if not starts.issuperset(map(_first, map(memoryview, map(value, records)))):
                return None
        return len(records)

    @functools.cached_property
    def _typed(self) -> tuple[Callable[[bytes], list], list[tuple[Callable[[Any], Any], frozenset[int]]]]:
        """msgspec's decoder of an array of this table's records (see `count`), and each long text's getter
        with the first bytes its value may have."""
        import msgspec
        from typing import Annotated, Literal, Optional
        fields, long_texts = [], []
        for c in self.columns:
            kind: Any
            if c.choices:
                kind = Literal[c.choices]
            elif c.type == "integer":
                kind = Annotated[int, msgspec.Meta(ge=INT64[0], le=INT64[1])]
            elif c.type == "real":
                raise ValueError("counted only where the table has no real column")
            elif c.name in LONG_TEXTS:
                kind = msgspec.Raw
                long_texts.append((attrgetter(c.name), frozenset(b'"n' if c.nullable else b'"')))
            else:
                kind = str
            if c.nullable and kind is not msgspec.Raw:
                kind = Optional[kind]
            fields.append((c.name, kind, msgspec.field(name=c.field)))
        record = msgspec.defstruct(self.table.key, fields, forbid_unknown_fields=True, gc=False)
        return msgspec.json.Decoder(list[record]).decode, long_texts

    def one(self, record: Any, index: int) -> Record:
        """One record, as the fast path would take it or else the slow path; `index` names it in a message."""
        if self.fast([record]):
            return record
        return _slowly_checked(self.table, self.columns, self.reals, index, record)


@functools.lru_cache(maxsize=None)
def checker(key: str, minor: int) -> Checker:
    return Checker(BY_KEY[key], minor)


LONG_TEXTS = {"content", "input", "result"}      # messages', tool uses': most of a file's bytes


def _utf8(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


class Checked(list):
    """A batch checked already (by the reader's worker), made rows there (Checker.rows): not to be checked or
    made rows again. Rows pickle and unpickle at about half the cost of records (no keys): the worker's
    answers are most of what an import reads. The long texts (at the places `encoded` names) are their UTF-8
    bytes, which the import binds as TEXT (CAST), exactly the text: as str, each was made from UTF-8 where
    it was unpickled, and made UTF-8 again where it was bound, here and in the search index's worker (measured
    at N=5: 10% of the importing process's instructions and 8% of the indexer's)."""

    def __init__(self, rows: Iterable[tuple] = (), encoded: tuple[int, ...] = ()):
        super().__init__(rows)
        self.encoded = encoded

    def __getitem__(self, index: Any) -> Any:
        part = list.__getitem__(self, index)
        return Checked(part, self.encoded) if isinstance(index, slice) else part


class Counted:
    """A batch checked already, of which only the count was kept: what validate needs."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: slice) -> "Counted":
        return Counted(len(range(self.count)[index]))

    def __iter__(self) -> Iterator[Record]:
        raise TypeError("only the count of these records was kept")


_first = itemgetter(0)


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


def _as_floats(record: dict, reals: list[str]) -> None:
    for field in reals:
        if type(record[field]) is Decimal:   # past FieldsOnce's guard against fields named twice
            dict.__setitem__(record, field, float(record[field]))


def row_batches(table: Table, minor: int, pieces: Iterable[list], texts: Callable[[tuple], Iterable]
                ) -> Iterator[list[tuple]]:
    """Batches of checked records from the file as batches of tuples in the order of the table's columns:
    Checked ones as they are, others as `batches` makes them (sized by the row's `texts`)."""
    row = checker(table.key, minor).row
    for piece in pieces:
        if type(piece) is Checked:
            yield piece
        else:
            yield from batches(map(row, piece), texts)


def records_of(table: Table, batches: Iterable[Sequence[Sequence[Any]]]) -> Iterator[list[Record]]:
    """Batches of rows from the database as batches of records keyed by the file's field names. A row may
    hold more values than the table has columns (its rowid, last): those are left out."""
    fields = [c.field for c in table.columns]
    for rows in batches:
        yield list(map(dict, map(zip, repeat(fields), rows)))


def batches(items: Iterable[Any], values: Callable[[Any], Iterable], size: int | None = None) -> Iterator[list]:
    """Lists of at most `size` (BATCH) items: the unit of memory, of executemany and of progress. Where items are
    long (a table of large tool results), of about HELD bytes of them: items are taken CHUNK at a time and one
    of each is measured, by the text and bytes among values(item), so a list ends within a chunk of HELD
    however short the items before them were (when one list's items sized the next, 256 rows of 2 MiB could
    follow 256 short ones). Items taken before a fault are dropped with it."""
    return _batches(iter(items), size or BATCH, values, hand_on=False)


def read_in_batches(items: Iterable[Any], size: int | None = None) -> Iterator[list]:
    """Records as a reader yields them, in lists as `batches` makes them. Where reading one raises, the records
    read before it are handed on first, so each is checked, and the fault placed, as if read one by one."""
    return _batches(iter(items), size or BATCH, _record_values, hand_on=True)


def _batches(items: Iterator[Any], size: int, values: Callable[[Any], Iterable], hand_on: bool) -> Iterator[list]:
    chunks = 0
    while True:
        batch: list = []
        held = 0
        try:
            while len(batch) < size and held < HELD:
                taken = len(batch)
                batch.extend(islice(items, min(CHUNK, size - taken)))     # keeps what was read before a fault
                if len(batch) == taken:
                    break
                # The row measured takes each place of a chunk in turn (0, 5, 2, 7, 4, 1, 6, 3 of 8): always
                # the first missed every long one where long rows and short took turns (found by review).
                held += _length(values(batch[taken + chunks * 5 % (len(batch) - taken)])) * CHUNK
                chunks += 1
        except Exception:
            if hand_on and batch:
                yield batch
            raise
        if not batch:
            return
        yield batch


def _length(values: Iterable) -> int:
    """The length of the text and bytes among `values` (numbers and null count for nothing)."""
    values = list(filter(None, values))
    try:
        return sum(map(len, values))
    except TypeError:
        return sum(len(v) for v in values if isinstance(v, (str, bytes)))


def texts_of(columns: Sequence[Column]) -> Callable[[tuple], tuple]:
    """A row's values in the columns of text (by their places): what `batches` measures of a row."""
    at = [i for i, c in enumerate(columns) if c.type == "text"]
    return itemgetter(*at) if len(at) > 1 else lambda row: tuple(row[i] for i in at)


def _record_values(record: Any) -> Iterable:
    return record.values() if type(record) is dict else ()
