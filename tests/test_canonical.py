"""The fast reader takes nothing the strict one refuses: every bad file, laid out as memory writes files, gets
exactly the strict reader's answer, and a file memory wrote never reaches the strict reader's records."""

import json
import os

import orjson
import pytest
from conftest import SAMPLE, TYPED_SAMPLE, as_written, clock_free, memory, snapshot
from hypothesis import HealthCheck, given, settings
from test_bad_input import CASES, DB_CHECKS
from test_fuzz import EXAMPLES, mutated

from pipeline import formats, parallel
from pipeline.canonical import STRICT_ENV

DOC = json.loads(SAMPLE.read_bytes())
JSON, JSONL = as_written(DOC, "json"), as_written(DOC, "jsonl")


class Raw(str):
    """A number or constant as the file wrote it."""


def _pairs(text: str):
    """JSON read keeping what json.loads would lose: fields named twice, and numbers and NaN as written."""
    return json.loads(text, object_pairs_hook=lambda pairs: ("pairs", pairs), parse_float=Raw, parse_int=Raw,
                      parse_constant=Raw)


def _encoded(value) -> bytes:
    """orjson's canonical form of a value read by _pairs, fields named twice and odd numbers kept."""
    if isinstance(value, Raw):
        return value.encode()
    if isinstance(value, tuple):
        return b"{" + b",".join(_encoded(k) + b":" + _encoded(v) for k, v in value[1]) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(map(_encoded, value)) + b"]"
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:      # a lone surrogate: escaped, as the bad file has it
        return json.dumps(value).encode()


def rewritten(name: str, data: bytes) -> bytes:
    """A bad file of the corpus laid out one record a line as memory writes files; faults in the bytes are
    made again on JSON laid out so."""
    if name.endswith(".jsonl"):
        return b"".join(_encoded(_pairs(line)) + b"\n" for line in data.splitlines())
    byte_faults = {"half.json": JSON[: len(JSON) // 2], "cut-in-header.json": JSON[:40], "trailing.json": JSON + b"{}",
                   "bad-utf8.json": JSON.replace(b"loom", b"lo\xffm", 1),
                   "cut-in-pair.json": JSON.replace(b'"content":"', b'"content":"\\ud83d\\ude00', 1).split(
                       b"\\ude00")[0],
                   "deep.json": JSON.replace(b'"weight":0.125', b'"weight":' + b"[" * 100_000 + b"]" * 100_000)}
    if name in byte_faults:
        return byte_faults[name]
    _, pairs = _pairs(data.decode())
    out = b"{"
    arrays = False
    for i, (key, value) in enumerate(pairs):
        arrays = arrays or isinstance(value, list)
        out += (b",\n" if arrays else b",") if i else b""
        if isinstance(value, list):
            items = b",\n".join(map(_encoded, value))
            out += _encoded(key) + (b":[\n" + items + b"\n]" if items else b":[]")
        else:
            out += _encoded(key) + b":" + _encoded(value)
    return out + b"}\n"


REWRITTEN = [(name, rewritten(name, data), message) for name, data, message in CASES
             if name.endswith((".json", ".jsonl")) and name not in ("empty.json", "words.json", "array.json")]


def both(monkeypatch, *args):
    """(exit code, stdout, stderr) through the fast reader, and through the strict one."""
    results = []
    for strict in ("0", "1"):
        monkeypatch.setenv(STRICT_ENV, strict)
        result = memory(*args)
        results.append((result.exit_code, result.stdout, result.stderr))
    return results


@pytest.mark.parametrize("name, data, message", REWRITTEN, ids=[c[0] for c in REWRITTEN])
def test_every_bad_file_laid_out_as_memory_writes_gets_the_strict_answer(tmp_path, monkeypatch, name, data,
                                                                         message):
    (tmp_path / name).write_bytes(data)
    fast, strict = both(monkeypatch, "validate", tmp_path / name)
    assert fast == strict
    if name not in DB_CHECKS:
        assert strict == (1, "", f"Error: {message}\n")


@pytest.mark.parametrize("name, data, message", REWRITTEN, ids=[c[0] for c in REWRITTEN])
def test_every_bad_file_laid_out_as_memory_writes_changes_nothing(tmp_path, monkeypatch, sample_db, name, data,
                                                                  message):
    (tmp_path / name).write_bytes(data)
    before = snapshot(sample_db)
    fast, strict = both(monkeypatch, "import", "--db", sample_db, "--clear", tmp_path / name)
    assert fast == strict == (1, "", f"Error: {message}\n")
    assert snapshot(sample_db) == before


def _line_edited(fmt: str, table: str, index: int, edit: bytes) -> bytes:
    """The sample as memory writes it with one record's line made `edit` ({} stands for the record's fields)."""
    text = as_written(DOC, fmt)
    line = orjson.dumps(DOC[table][index] if fmt == "json" else {"table": table, "record": DOC[table][index]})
    fields = orjson.dumps(DOC[table][index])[1:-1]
    new = edit.replace(b"{}", fields)
    assert text.count(line) == 1
    return text.replace(line, orjson.dumps({"table": table})[:-1] + b',"record":' + new + b"}" if fmt == "jsonl"
                        else new)


_SESSION = (b'{"id":"9f0c1d2e-0000-4000-8000-000000000002","projectPathEncoded":"e","projectPathDecoded":"d",'
            b'"projectName":"n","startTime":"t","endTime":null,')

_MESSAGE = b'{"id":"m-3","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","role":"user",'
_TOOL_USE = b'{"id":"t","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","name":"n",'

# Records the strict reader refuses, each on a line of its own, canonical but for what makes it bad.
REFUSED = [
    ("twice", "messages", 2, b'{{},"role":"user"}', "field 'role' appears twice"),
    ("nan", "entityLinks", 0, b'{"sourceId":1,"targetId":2,"relationship":"related","weight":NaN}', None),
    ("2**64", "sessions", 1, b'{{},"extra":18446744073709551616}', "unknown field 'extra'"),
    ("2**64 in a column", "extractionStates", 1, b'{"id":"x","sessionPath":"p","startedAt":"t","status":"complete",'
     b'"completedAt":null,"messagesExtracted":18446744073709551616,"errorMessage":null,"fileMtime":null,'
     b'"fileSize":null}', "messagesExtracted must fit in 64 bits, got 18446744073709551616"),
    ("2**64-1", "extractionStates", 1, b'{"id":"x","sessionPath":"p","startedAt":"t","status":"complete",'
     b'"completedAt":null,"messagesExtracted":18446744073709551615,"errorMessage":null,"fileMtime":null,'
     b'"fileSize":null}', "messagesExtracted must fit in 64 bits, got 18446744073709551615"),
    ("float in text", "messages", 3, b'{"id":"m","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","role":"user",'
     b'"content":1e+16,"timestamp":"t","toolUseIds":null}', "content must be a string, got 1E+16"),
    ("a tagged object that is not typed", "messages", 1,
     b'{"id":"m","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","role":"user","content":{"$blob":"AA==",'
     b'"x":1},"timestamp":"t","toolUseIds":null}', "content must be a string or a typed value ($blob, $text, "
     "$textBytes, $real), got an object"),
    ("a field renamed", "messages", 3, b'{"id":"m","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","role":"user",'
     b'"contents":"c","timestamp":"t","toolUseIds":null}', "missing field 'content'"),
    ("a field left out, one added", "messages", 3, b'{"id":"m","sessionId":"9f0c1d2e-0000-4000-8000-000000000001",'
     b'"role":"user","timestamp":"t","toolUseIds":null,"extra":"c"}', "missing field 'content'"),
    ("a typed value where none may be", "messages", 1,
     b'{"id":"m","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","role":{"$text":"user"},"content":"c",'
     b'"timestamp":"t","toolUseIds":null}', "role cannot hold a typed $text value"),
    ("typed twice", "sessions", 0, b'{"id":"s","projectPathEncoded":"e","projectPathDecoded":"d","projectName":"n",'
     b'"startTime":"t","endTime":null,"messageCount":{"$real":1,"$real":2},"summary":null}',
     "field '$real' appears twice"),
    ("an array", "sessions", 1, b'{"id":"s","projectPathEncoded":"e","projectPathDecoded":"d","projectName":"n",'
     b'"startTime":"t","endTime":null,"messageCount":[1],"summary":null}', None),
    ("weight out of range", "links", 1, b'{"sourceType":"topic","sourceId":"1","targetType":"session",'
     b'"targetId":"x","relationship":"mentions","weight":1.0000000000000002}',
     "weight must be between 0 and 1, got 1.0000000000000002"),
    # Tables with no real column are read by simdjson (canonical._objects), not written again by orjson.
    ("twice, the second escaped", "messages", 2, b'{{},"r\\u006fle":"user"}', "field 'role' appears twice"),
    ("twice, the same value", "messages", 2, b'{{},"role":"user"}', "field 'role' appears twice"),
    ("twice, spaced", "sessions", 1, b'{{} , "summary" : null}', "field 'summary' appears twice"),
    ("a float in an integer column", "sessions", 1, _SESSION + b'"messageCount":1.50,"summary":null}',
     "messageCount must be an integer, got 1.50"),
    ("a whole float in an integer column", "sessions", 1, _SESSION + b'"messageCount":1E2,"summary":null}',
     "messageCount must be an integer, got 1E+2"),
    ("true in an integer column", "sessions", 1, _SESSION + b'"messageCount":true,"summary":null}',
     "messageCount must be an integer, got true"),
    ("below 64 bits", "sessions", 1, _SESSION + b'"messageCount":-9223372036854775809,"summary":null}',
     "messageCount must fit in 64 bits, got -9223372036854775809"),
    ("a string for a record", "messages", 2, b'"{}"', "expected an object, got a string"),
    # The long texts a validation counts without making them (records.Checker.count): only their first byte
    # is looked at, the rest simdjson checks.
    ("null in a long text", "messages", 2, _MESSAGE + b'"content":null,"timestamp":"t","toolUseIds":null}',
     "content must not be null"),
    ("a number in a long text", "toolUses", 0, _TOOL_USE + b'"input":12,"timestamp":"t","status":"success",'
     b'"result":null}', "input must be a string, got 12"),
    ("true in a long text that may be null", "toolUses", 0, _TOOL_USE + b'"input":"i","timestamp":"t",'
     b'"status":"success","result":true}', "result must be a string, got true"),
    ("an array in a long text", "messages", 2, _MESSAGE + b'"content":["c"],"timestamp":"t","toolUseIds":null}',
     None),
    ("a lone surrogate in a long text", "messages", 2, _MESSAGE + b'"content":"a\\ud800b","timestamp":"t",'
     b'"toolUseIds":null}', None),
    ("a control character in a long text", "messages", 2, _MESSAGE + b'"content":"a\x01b","timestamp":"t",'
     b'"toolUseIds":null}', None),
    ("bad UTF-8 in a long text", "toolUses", 0, _TOOL_USE + b'"input":"a\xc0\xafb","timestamp":"t",'
     b'"status":"success","result":null}', None),
    ("a bad escape in a long text", "toolUses", 0, _TOOL_USE + b'"input":"i","timestamp":"t","status":"success",'
     b'"result":"a\\xb"}', None),
    ("a role not among the choices", "messages", 2, _MESSAGE.replace(b'"user"', b'"system"') + b'"content":"c",'
     b'"timestamp":"t","toolUseIds":null}', "role must be 'user' or 'assistant', got 'system'"),
]


@pytest.fixture(params=["here", "worker"])
def reading(request, monkeypatch):
    """Runs read in this process (an import's reads orjson, a validation's simdjson), or all by a worker (which
    reads simdjson for both)."""
    monkeypatch.setenv(parallel.ENV, "0" if request.param == "here" else "1")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("what, table, index, edit, problem", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_record_the_strict_reader_refuses_does_not_get_in_through_the_fast_one(tmp_path, monkeypatch, sample_db,
                                                                                 reading, fmt, what, table, index,
                                                                                 edit, problem):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(_line_edited(fmt, table, index, edit))
    before = snapshot(sample_db)
    fast, strict = both(monkeypatch, "import", "--db", sample_db, "--clear", path)
    assert fast == strict
    assert both(monkeypatch, "validate", path)[0][::2] == (strict[0], strict[2])
    assert strict[0] == 1 and strict[2].startswith("Error: ")
    if problem and fmt == "json":
        assert strict[2] == f"Error: {table}[{index}]: {problem}\n"
    assert snapshot(sample_db) == before


# Records both readers take, not as orjson writes them: the fast reader takes some through simdjson and must
# store what the strict one stores.
TAKEN = [
    ("spaced", "messages", 2, b'{ "id" : "m-3" , "sessionId":"9f0c1d2e-0000-4000-8000-000000000001",'
     b'"role":"user","content":"c","timestamp":"t", "toolUseIds" : null }'),
    ("escaped", "messages", 2, b'{"id":"m-3","sessionId":"9f0c1d2e-0000-4000-8000-000000000001","r\\u006fle":"user",'
     b'"content":"\\/\\u0041\\u00e9\\ud83d\\ude80\\u0000\\b\\f","timestamp":"t","toolUseIds":null}'),
    ("minus zero", "sessions", 1, _SESSION + b'"messageCount":-0,"summary":null}'),
    ("the least integer", "sessions", 1, _SESSION + b'"messageCount":-9223372036854775808,"summary":null}'),
    ("raw DEL and a line separator", "messages", 2, b'{"id":"m-3","sessionId":"9f0c1d2e-0000-4000-8000-000000000001",'
     b'"role":"user","content":"a\x7fb\xe2\x80\xa8c","timestamp":"t","toolUseIds":null}'),
    ("fields in another order", "toolUses", 0, b'{"status":"success","id":"t","sessionId":'
     b'"9f0c1d2e-0000-4000-8000-000000000001","name":"n","input":"x","timestamp":"t","result":null}'),
    ("reals written otherwise", "links", 1, b'{"sourceType":"topic","sourceId":"1","targetType":"session",'
     b'"targetId":"x","relationship":"mentions","weight":5.0E-1}'),
    ("a real's least step", "entities", 0, b'{"id":1,"type":"concept","name":"n","metadata":null,'
     b'"confidence":4.9406564584124654e-324}'),
    ("minus zero, a real", "entities", 0, b'{"id":1,"type":"concept","name":"n","metadata":null,"confidence":-0.0}'),
]


@pytest.mark.parametrize("table, index, edit, problem", [
    ("links", 1, b'{"sourceType":"topic","sourceId":"1","targetType":"session","targetId":"x",'
     b'"relationship":"mentions","weight":1.0000000000000001}', "weight must be between 0 and 1, got 1.0000000000000001"),
    ("entities", 0, b'{"id":1,"type":"concept","name":"n","metadata":null,"confidence":-1e-400}',
     "confidence must be between 0 and 1, got -1E-400"),
])
def test_a_real_out_of_range_by_less_than_a_float_s_step_is_refused_by_both_readers(tmp_path, monkeypatch, reading,
                                                                                   table, index, edit, problem):
    """The strict JSON reader checks the number as written (a Decimal); simdjson rounds it to 1.0 or -0.0,
    within range (found by review: validate, and an import through a worker, took and stored it)."""
    path = tmp_path / "in.json"
    path.write_bytes(_line_edited("json", table, index, edit))
    for args in (("validate", path), ("import", "--db", tmp_path / "new.db", path)):
        fast, strict = both(monkeypatch, *args)
        assert fast == strict == (1, "", f"Error: {table}[{index}]: {problem}\n")
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("run", [200, 400, 800, 1 << 18])
def test_a_record_over_two_lines_is_read_as_the_strict_reader_reads_it(tmp_path, monkeypatch, reading, run):
    """JSON takes it (a newline is white space); a JSON Lines line is one whole value, and a run of them read as
    one array must not let a record's own newline through (found by a mutation of canonical._jsonl_run). Runs
    made short, so that one holds the record's two lines and the lines around them, of its table alone."""
    from pipeline import canonical
    monkeypatch.setattr(canonical, "RUN", run)
    answers = {}
    for fmt in ("json", "jsonl"):
        path = tmp_path / f"in.{fmt}"
        path.write_bytes(_line_edited(fmt, "messages", 2, b'{"id":"m-3","sessionId":'
                                      b'"9f0c1d2e-0000-4000-8000-000000000001","role":"user","content":\n"c",'
                                      b'"timestamp":"t","toolUseIds":null}'))
        for args in (("validate", path), ("import", "--clear", "--db", tmp_path / f"{fmt}.db", path)):
            fast, strict = both(monkeypatch, *args)
            assert fast[::2] == strict[::2]
            answers[fmt, args[0]] = strict[::2]
    assert answers == {("json", "validate"): (0, ""), ("json", "import"): (0, ""),
                       ("jsonl", "validate"): (1, _SPLIT), ("jsonl", "import"): (1, _SPLIT)}


_SPLIT = ("Error: line 6: the file is cut short or corrupt (line contains invalid json: Expecting value: line 2 "
          "column 1 (char 117))\n")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("what, table, index, edit", TAKEN, ids=[c[0] for c in TAKEN])
def test_a_record_both_readers_take_is_stored_alike(tmp_path, monkeypatch, reading, fmt, what, table, index, edit):
    path = tmp_path / f"in.{fmt}"
    path.write_bytes(_line_edited(fmt, table, index, edit))
    for strict in ("0", "1"):
        monkeypatch.setenv(STRICT_ENV, strict)
        result = memory("import", "--db", tmp_path / f"{strict}.db", path)
        assert (result.exit_code, result.stderr) == (0, ""), (strict, result.stderr)
        assert memory("validate", path).exit_code == 0
    assert clock_free(tmp_path / "0.db") == clock_free(tmp_path / "1.db")     # a 1.0 file: times from the clock


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_typed_value_on_the_fast_path_is_stored_as_the_strict_path_stores_it(tmp_path, monkeypatch, fmt):
    doc = json.loads(TYPED_SAMPLE.read_bytes())
    (tmp_path / f"in.{fmt}").write_bytes(as_written(doc, fmt))
    states = []
    for strict in ("0", "1"):
        monkeypatch.setenv(STRICT_ENV, strict)
        db = tmp_path / f"{strict}.db"
        assert memory("import", "--db", db, tmp_path / f"in.{fmt}").exit_code == 0
        states.append(snapshot(db))
    assert states[0] == states[1]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_records_with_their_fields_in_another_order_are_stored_as_in_order(tmp_path, monkeypatch, fmt):
    doc = json.loads(SAMPLE.read_bytes())
    turned = {k: [dict(reversed(r.items())) for r in v] if isinstance(v, list) else v for k, v in doc.items()}
    states = []
    for name, data in (("in-order", doc), ("turned", turned)):
        (tmp_path / f"{name}.{fmt}").write_bytes(as_written(data, fmt))
        for strict in ("0", "1"):
            monkeypatch.setenv(STRICT_ENV, strict)
            db = tmp_path / f"{name}-{strict}.db"
            assert memory("import", "--db", db, tmp_path / f"{name}.{fmt}").exit_code == 0
            states.append(clock_free(db))
    assert states[0] == states[1] == states[2] == states[3]
    assert states[0]["messages_meta"]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_file_memory_wrote_never_reaches_the_strict_readers_records(tmp_path, monkeypatch, sample_db, fmt):
    """Else every test of the fast path above would pass by falling back."""
    assert memory("export", "--db", sample_db, tmp_path / f"out.{fmt}").exit_code == 0

    def refused(*args, **kwargs):
        raise AssertionError("the strict reader was asked for records")
    monkeypatch.setattr(formats, "array_rest", refused)
    monkeypatch.setattr(formats, "strict_line", lambda line: refused() if not line.startswith(b'{"end"') else
                        json.loads(line))
    monkeypatch.setenv(STRICT_ENV, "0")
    result = memory("validate", tmp_path / f"out.{fmt}")
    assert (result.exit_code, result.stderr) == (0, "")
    assert memory("import", "--db", tmp_path / "new.db", tmp_path / f"out.{fmt}").exit_code == 0
    assert snapshot(tmp_path / "new.db") == snapshot(sample_db)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_validation_counts_the_records_of_a_file_memory_wrote_without_making_them(tmp_path, monkeypatch, sample_db,
                                                                                    reading, fmt):
    """Else the tests of the counting above would pass by falling back to records made and checked (a table
    with a real column is read as an import reads it: a float's range is checked on the number as written)."""
    from pipeline.records import Checker
    assert memory("export", "--db", sample_db, tmp_path / f"out.{fmt}").exit_code == 0
    fast = Checker.fast

    def made(self, batch):
        assert self.reals, f"{self.table.key}: records made to be counted"
        return fast(self, batch)
    monkeypatch.setattr(Checker, "fast", made)
    monkeypatch.setenv(STRICT_ENV, "0")
    result = memory("validate", tmp_path / f"out.{fmt}")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.startswith("Validated 19 records (version 1.2): a valid memory backup\n")


def _many_messages(count: int) -> dict:
    doc = json.loads(SAMPLE.read_bytes())
    first = doc["messages"][0]
    doc["messages"] = [dict(first, id=f"m-{i}") for i in range(count)]
    doc["stats"]["messages"] = count
    return doc


@pytest.mark.parametrize("fmt", ["json", "pretty.json"])
def test_a_fault_deep_in_a_big_array_is_placed_at_its_record_on_both_readers(tmp_path, monkeypatch, fmt):
    """The strict reader builds records a chunk of 16,000 events at a time; a fault in the bytes is placed at
    the record it is in (here past the first chunks), not where its chunk began, as the fast reader places it."""
    doc = _many_messages(3000)
    text = as_written(doc, "json") if fmt == "json" else json.dumps(doc, indent=2).encode()
    at = text.index(b'"m-2500"')
    (tmp_path / "in.json").write_bytes(text[:at] + b"\x01" + text[at:])
    fast, strict = both(monkeypatch, "validate", tmp_path / "in.json")
    assert fast == strict == (1, "", "Error: messages[2500]: the file is cut short or corrupt "
                                     "(lexical error: invalid char in json text.)\n")


@pytest.mark.parametrize("what, edit, message", [
    ("a header key after the header line", lambda text: text.replace(b',"exportedAt":"2026-11-20T08:30:00.000Z"', b"", 1)
     .replace(b'},\n"sessions":[', b'},\n"exportedAt":"2026-11-20T08:30:00.000Z",\n"sessions":[', 1), None),
    ("the same header key twice", lambda text: text.replace(b'},\n"sessions":[', b'},\n"version":"1.0",\n"sessions":[',
                                                           1), "duplicate key 'version' in the header"),
    ("a header key between arrays", lambda text: text.replace(b'],\n"messages":[', b'],\n"version":"1.0",\n'
                                                               b'"messages":[', 1),
     "'version' comes after the data; the header must come first"),
    ("an array two objects down", lambda text: text.replace(b'"messageCount":3', b'"messageCount":{"$real":{"x":[1]}}',
                                                             1),
     "sessions[0]: a field holds an array; values are strings, numbers or null"),
    ("an empty array, then one that is not", lambda text: text.replace(b'"entityLinks":[\n', b'"topics":[],\n'
                                                                       b'"entityLinks":[\n', 1)
     .replace(b'"extractionStates":2}', b'"extractionStates":2,"topics":0}', 1), None),
    # Found by review: the strict reader was handed the line after an array's last record behind '{"":[0', whose
    # 0 ran into '.5' or 'e1' there: a number, and the file was taken.
    ("a number's tail after an array's last record", lambda text: text.replace(b'"related_to","weight":0}\n],',
                                                                               b'"related_to","weight":0}\n.5],', 1),
     "links[2]: the file is cut short or corrupt (lexical error: invalid char in json text.)"),
    ("an exponent after an array's last record", lambda text: text.replace(b'"related_to","weight":0}\n],',
                                                                           b'"related_to","weight":0}\ne1],', 1),
     "links[2]: the file is cut short or corrupt (lexical error: invalid char in json text.)"),
    ("a record over two lines, then a number's tail", lambda text: text.replace(
        b'"weight":1.0},\n{"sourceType":"topic"', b'"weight":1.0},{"sourceType":\n"topic"', 1)
     .replace(b'"related_to","weight":0}\n],', b'"related_to","weight":0}\n.5],', 1),
     "links[2]: the file is cut short or corrupt (lexical error: invalid char in json text.)"),
])
def test_a_layout_a_line_away_from_memory_s_gets_the_strict_answer(tmp_path, monkeypatch, what, edit, message):
    text = as_written(DOC, "json")
    (tmp_path / "in.json").write_bytes(edit(text))
    assert edit(text) != text
    fast, strict = both(monkeypatch, "validate", tmp_path / "in.json")
    assert fast == strict
    assert strict[2] == (f"Error: {message}\n" if message else "")


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_a_compressed_file_cut_anywhere_is_placed_alike_by_both_readers(tmp_path, monkeypatch, compress):
    """A cut stream is found when the bytes before the cut have been read: both readers hand those on first, so
    both name the record the cut falls in (the strict reader's large reads once named an earlier one)."""
    import gzip

    import zstandard
    text = as_written(_many_messages(3000), "json")
    data = gzip.compress(text) if compress == "gz" else zstandard.ZstdCompressor(write_checksum=True).compress(text)
    places = set()
    for eighth in range(1, 8):
        (tmp_path / f"cut.json.{compress}").write_bytes(data[: len(data) * eighth // 8])
        fast, strict = both(monkeypatch, "validate", tmp_path / f"cut.json.{compress}")
        assert fast == strict
        assert strict[2].endswith(": the file is cut short or corrupt (the compressed stream is cut short)\n")
        places.add(strict[2])
    assert len(places) >= 4     # zstd decompresses a block (up to 128 KiB) at a time: some cuts end alike


def test_a_record_line_longer_than_the_fast_reader_takes_is_read_by_the_strict_one(tmp_path, monkeypatch):
    from pipeline import canonical
    monkeypatch.setattr(canonical, "FAST_LINE", 1000)
    monkeypatch.setattr(canonical, "RUN", 400)       # a run holds less than twice RUN: below FAST_LINE
    doc = json.loads(SAMPLE.read_bytes())
    doc["messages"][1]["content"] = "long " * 1000
    (tmp_path / "in.json").write_bytes(as_written(doc, "json"))
    taken = []
    real = formats.array_rest
    monkeypatch.setattr(formats, "array_rest", lambda events, key, done=0: (taken.append((key, done)),
                                                                             real(events, key, done))[1])
    monkeypatch.setenv(STRICT_ENV, "0")
    assert memory("import", "--db", tmp_path / "x.db", tmp_path / "in.json").exit_code == 0
    assert taken == [("messages", 1)] + [(key, 0) for key in ("toolUses", "entities", "links", "sessionEntities",
                                                              "entityLinks", "extractionStates")]
    assert memory("export", "--db", tmp_path / "x.db", tmp_path / "out.json").exit_code == 0
    assert json.loads((tmp_path / "out.json").read_bytes())["messages"][1]["content"] == "long " * 1000


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=mutated())
def test_a_mutated_file_gets_the_same_answer_from_both_readers(tmp_path_factory, case):
    """Differential: whatever the bytes, validate says the same, word for word, on either reader."""
    fmt, data = case
    path = tmp_path_factory.mktemp("diff") / ("in." + fmt.rpartition(".")[2])
    path.write_bytes(data)
    results = []
    for strict in ("0", "1"):
        os.environ[STRICT_ENV] = strict
        try:
            result = memory("validate", path)
        finally:
            del os.environ[STRICT_ENV]
        results.append((result.exit_code, result.stdout, result.stderr))
    assert results[0] == results[1]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_file_memory_wrote_is_read_in_runs_of_lines_not_a_line_at_a_time(tmp_path, monkeypatch, sample_db, fmt):
    """Each array's last run (which holds its end, and what follows it) too: up to the array's end its lines
    are read as one run, as JSON Lines reads a table's lines up to the next table's."""
    from pipeline import canonical
    assert memory("export", "--db", sample_db, tmp_path / f"out.{fmt}").exit_code == 0

    def one_at_a_time(line):
        raise AssertionError(f"a line read alone: {line[:40]!r}")
    monkeypatch.setattr(canonical, "_record", one_at_a_time)
    monkeypatch.setattr(canonical, "parsed_line", lambda line: one_at_a_time(line) if not line.startswith(
        b'{"end"') else json.loads(line))
    monkeypatch.setenv(STRICT_ENV, "0")
    result = memory("validate", tmp_path / f"out.{fmt}")
    assert (result.exit_code, result.stderr) == (0, "")
    assert memory("import", "--db", tmp_path / "new.db", tmp_path / f"out.{fmt}").exit_code == 0
    assert snapshot(tmp_path / "new.db") == snapshot(sample_db)


@pytest.mark.parametrize("part", [1, 2, 3])
def test_a_field_named_twice_after_a_typed_value_is_refused_wherever_a_chunk_of_events_ends(tmp_path, monkeypatch,
                                                                                            part):
    """Found by review (older than chunks that end by the bytes read, which made it likelier: any 128 events
    once 8 MiB were read): the strict reader took a chunk's records to end at its last end_map, which can close
    a typed value inside the record still open; counting the fields of those records then missed one named
    twice after it, and the last value was imported. Here a chunk ends every `part` events once a read was
    made, and reads are 1 to 39 bytes."""
    from pipeline import records
    monkeypatch.setenv(STRICT_ENV, "1")
    monkeypatch.setattr(records, "HELD", 1)
    monkeypatch.setattr(formats, "_PART", part)
    twice = JSON.replace(b'"messageCount":3,', b'"messageCount":{"$real":3},"endTime":null,', 1)
    (tmp_path / "in.json").write_bytes(twice)
    read = formats._Growing.read
    outcomes = set()
    for cap in range(1, 40):
        monkeypatch.setattr(formats._Growing, "read", lambda self, size, cap=cap: read(self, min(size, cap)))
        result = memory("validate", tmp_path / "in.json")
        outcomes.add((result.exit_code, result.stderr))
    assert outcomes == {(1, "Error: sessions[0]: field 'endTime' appears twice\n")}


def _cut_gzip(text: bytes, at: int) -> bytes:
    """A gzip stream of `text` that decompresses to exactly text[:at], then is cut short."""
    import zlib
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(text[:at]) + compressor.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("where", ["after a record's brace", "after an array's last brace", "after an array's end",
                                   "after a whole line", "after the document's end", "after a header's brace"])
def test_a_stream_cut_right_after_a_brace_is_placed_alike_by_both_readers(tmp_path, monkeypatch, where):
    """Found by review: cut where a record's (or the document's) last brace was read but not the line's end, the
    strict reader names the next record ('after extractionStates'), the fast one, reading lines, named the
    record whose line was cut ('extractionStates[2]')."""
    text = as_written(_many_messages(50), "json")
    at = {"after a record's brace": text.index(b'"m-20"'), "after an array's last brace": text.index(b"\n],") - 1,
          "after an array's end": text.index(b"\n],") + 2, "after a whole line": text.index(b'{"id":"m-20"'),
          "after the document's end": len(text), "after a header's brace": text.index(b"\n") - 1}[where]
    at = text.index(b"}", at) + 1 if where == "after a record's brace" else at
    (tmp_path / "cut.json.gz").write_bytes(_cut_gzip(text, at))
    fast, strict = both(monkeypatch, "validate", tmp_path / "cut.json.gz")
    assert fast == strict
    assert strict[2].endswith(": the file is cut short or corrupt (the compressed stream is cut short)\n")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_after_a_line_longer_than_a_run_the_lines_are_read_in_runs_again(tmp_path, monkeypatch, sample_db, fmt):
    """A record line longer than a run of lines holds (a tool result of 600 KB) is read alone; the lines
    after it are runs again. JSON Lines sent the rest of the file to the line loop: one such line early in a
    452 MB file made validate 2.7 times as slow (3.49 s against 1.30 s)."""
    import sqlite3

    from pipeline import canonical
    conn = sqlite3.connect(sample_db)
    with conn:
        conn.execute("UPDATE messages_meta SET content = ? WHERE rowid = (SELECT min(rowid) FROM messages_meta)",
                     ("long " * 120_000,))
    conn.close()
    assert memory("export", "--db", sample_db, tmp_path / f"out.{fmt}").exit_code == 0
    alone = []

    def one_at_a_time(line):
        alone.append(line[:40])
        return json.loads(line)
    monkeypatch.setattr(canonical, "parsed_line", one_at_a_time)
    monkeypatch.setenv(STRICT_ENV, "0")
    result = memory("validate", tmp_path / f"out.{fmt}")
    assert (result.exit_code, result.stderr) == (0, "")
    assert [line[:7] for line in alone] == ([b'{"end":'] if fmt == "jsonl" else [])
    assert memory("import", "--db", tmp_path / "new.db", tmp_path / f"out.{fmt}").exit_code == 0
    assert snapshot(tmp_path / "new.db") == snapshot(sample_db)
