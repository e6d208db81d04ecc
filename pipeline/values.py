"""The typed encoding: SQLite values that plain JSON cannot carry, or would give back as something else, as
one-key objects: {"$blob": base64}, {"$text": string}, {"$textBytes": base64}, {"$real": number or "Infinity"}.

SQLite lets most columns hold any storage class (a BLOB in a TEXT column, TEXT in an INTEGER column) and TEXT
whose bytes are not UTF-8. A value of its column's own type is written as plain JSON, as memory-nexus
writes it; anything else is tagged with its storage class, so an import stores exactly what was read."""

from __future__ import annotations

import base64
import binascii
import math
from decimal import Decimal
from typing import Any

from .tables import Column

PLAIN = {"text": str, "integer": int, "real": float}     # what a column's own values are in Python
INFINITIES = {math.inf: "Infinity", -math.inf: "-Infinity"}
INFINITIES_BACK = {name: number for number, name in INFINITIES.items()}
TAGS = {"$blob": "blob", "$text": "text", "$textBytes": "text", "$real": "real"}   # tag -> storage class
# The storage classes SQLite keeps as they are under each column affinity (see `holds`).
_KEPT = {"text": frozenset({"text", "blob"}), "integer": frozenset({"real", "text", "blob"}),
                  "real": frozenset({"real", "text", "blob"})}


class NeedsCast(Exception):
    """Raised by sqlite3 when asked to bind a RawText as it is: the row must be inserted with CAST(? AS TEXT)."""


class RawText(bytes):
    """TEXT whose bytes are not UTF-8. sqlite3 cannot fetch it as str, and would bind bytes as a BLOB, so it
    refuses to be bound (sqlite3 asks __conform__ of any subclass) and its row is inserted with a CAST."""

    def __conform__(self, protocol: Any) -> Any:
        raise NeedsCast


def text_or_raw(data: bytes) -> str | RawText:
    """A text factory that keeps TEXT which is not UTF-8 as its bytes rather than fail the whole read."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return RawText(data)


def tagged(value: bytes | str | float) -> dict:
    """A value that is not of its column's type, or an infinite REAL, as the file holds it."""
    if type(value) is RawText:
        return {"$textBytes": base64.b64encode(value).decode("ascii")}
    if type(value) is bytes:
        return {"$blob": base64.b64encode(value).decode("ascii")}
    if type(value) is str:
        return {"$text": value}
    if type(value) is float:
        return {"$real": INFINITIES.get(value, value)}
    raise TypeError(f"no typed form for {type(value).__name__}")


def holds(column: Column) -> frozenset[str]:
    """The storage classes a typed value may bring into `column`. None where the column is a rowid alias
    (integers only) or has a CHECK (which only plain values of its type can meet); otherwise what SQLite
    keeps as it is under the column's affinity (a REAL put into a TEXT column would become text)."""
    if column.rowid or column.choices or column.between:
        return frozenset()
    return _KEPT[column.type]


def untagged(column: Column, value: dict) -> Any:
    """The value a typed object (one that has a `tag_of`) in `column` stands for: bytes, str, RawText or
    float. ValueError says what is wrong, naming the field."""
    (tag, inner), = value.items()
    if TAGS[tag] not in holds(column):
        raise ValueError(f"{column.field} cannot hold a typed {tag} value")
    if tag == "$text":
        if type(inner) is not str:
            raise ValueError(f"{column.field}: $text must hold a string")
        return inner
    if tag == "$real":
        number = INFINITIES_BACK.get(inner) if type(inner) is str else \
            _float(inner) if type(inner) in (int, float, Decimal) else None
        if number is None or (math.isinf(number) and type(inner) is not str):    # 1e400 is not "Infinity"
            raise ValueError(f"{column.field}: $real must hold a finite number, \"Infinity\" or \"-Infinity\"")
        return number
    try:
        data = base64.b64decode(inner, validate=True) if type(inner) is str else None
    except binascii.Error:
        data = None
    if data is None:
        raise ValueError(f"{column.field}: {tag} must hold base64")
    return data if tag == "$blob" else text_or_raw(data)


def _float(number: int | float | Decimal) -> float:
    """The number as a float; one past a float's range as an infinity (float() of such an int raises)."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def tag_of(value: dict) -> str | None:
    """The tag of a typed object, or None if `value` is not one."""
    tag = next(iter(value), None) if len(value) == 1 else None
    return tag if tag in TAGS else None

