"""Mutated backups hold one invariant: exit 0 with exactly the file's data, or exit 1 with one line and
the database unchanged. No traceback, ever. MEMORY_FUZZ_EXAMPLES sets the count (scripts/torture.py: 10,000).
Each runs on the fast reader and the strict one; the "canonical" sources are laid out as memory writes files."""

import base64
import json
import os
import shutil

import pytest
from conftest import SAMPLE, TYPED_SAMPLE, as_written, memory, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import as_jsonl

pytestmark = pytest.mark.usefixtures("parse_path")   # every test on the fast and the strict reader

EXAMPLES = int(os.environ.get("MEMORY_FUZZ_EXAMPLES", "60"))
SOURCES = {"json": SAMPLE.read_bytes(), "jsonl": as_jsonl(json.loads(SAMPLE.read_bytes())),
           "typed.json": TYPED_SAMPLE.read_bytes(), "typed.jsonl": as_jsonl(json.loads(TYPED_SAMPLE.read_bytes())),
           "canonical.json": as_written(json.loads(SAMPLE.read_bytes()), "json"),
           "canonical.jsonl": as_written(json.loads(SAMPLE.read_bytes()), "jsonl"),
           "canonical-typed.json": as_written(json.loads(TYPED_SAMPLE.read_bytes()), "json")}


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(SOURCES)))
    data = bytearray(SOURCES[fmt])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"{", b"}", b"[", b"]", b",", b'"', b"\\", b"null", b"1e999", b"-", b'"x":1,']))
        elif kind == "truncate":
            del data[at:]
    return fmt, bytes(data)


def loads(data: bytes):
    """Python's reading of JSON, plus the one leniency of yajl (which memory reads with): vertical tab and
    form feed count as white space between tokens. Documented in the README."""
    try:
        return json.loads(data)
    except ValueError:
        return json.loads(data.replace(b"\x0b", b" ").replace(b"\x0c", b" "))


def records_of(fmt: str, data: bytes) -> dict:
    """The records a valid file holds, per table, by the file's own reading."""
    if fmt.endswith("json"):
        doc = loads(data)
        return {k: v for k, v in doc.items() if isinstance(v, list)}
    tables: dict = {}
    for line in data.splitlines()[1:-1]:
        item = loads(line)
        tables.setdefault(item["table"], []).append(item["record"])
    return tables


def stored(value):
    """A value of the file as SQLite stores it, so the file's form and the export's compare: a REAL column
    keeps the file's 0 as 0.0 and an INTEGER column a typed 1e5 as 100000, rightly; typed values decoded."""
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$real":
            value = float({"Infinity": "inf", "-Infinity": "-inf"}.get(inner, inner))
        elif tag in ("$blob", "$textBytes"):
            data = base64.b64decode(inner)
            try:
                return data.decode() if tag == "$textBytes" else ("blob", data)
            except UnicodeDecodeError:
                return ("text", data)
        elif tag == "$text":
            return inner
    if type(value) is float and value.is_integer() and -2**63 <= value < 2**63:
        return int(value)
    return value


def rows(records: list[dict], fields: list[str]) -> list[dict]:
    """As rows, in any order: export lists them by rowid, which a mutated id can reorder."""
    return sorted(({f: stored(r[f]) for f in fields} for r in records), key=repr)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=mutated())
def test_mutated_file_imports_exactly_or_changes_nothing(tmp_path_factory, case):
    fmt, data = case
    folder = tmp_path_factory.mktemp("fuzz")
    db = folder / "target.db"
    shutil.copy(SAMPLE, folder / "same.json")
    assert memory("import", "--db", db, folder / "same.json").exit_code == 0
    before = snapshot(db)
    name = "in." + fmt.rpartition(".")[2]
    (folder / name).write_bytes(data)
    result = memory("import", "--db", db, "--clear", folder / name)
    if result.exit_code == 0:
        memory("export", "--db", db, folder / "out.json")
        ours = json.loads((folder / "out.json").read_bytes())
        for key, records in records_of(fmt, data).items():
            fields = list(records[0]) if records else []
            assert rows(ours[key], fields) == rows(records, fields), key
    else:
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
        assert snapshot(db) == before
