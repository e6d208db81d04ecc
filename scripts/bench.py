#!/usr/bin/env python3
"""Side-by-side benchmark: `memory export/import/validate` against `sqlite3 .dump` and restoring that dump.

Grows ../shared/compat/memory-nexus.db N-fold with fresh ids (or takes --db), then runs each pair A, B, A, B ...
for several rounds so drift hits both alike, and reports median wall time, the ratio to sqlite3 and the peak
RSS of each process. Writes the table into BENCHMARKS.md.

    python scripts/bench.py                 # N=100: about 303,000 messages, ~590 MB
    python scripts/bench.py --n 10 --rounds 3
    python scripts/bench.py --db ~/.memory-nexus/memory.db
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.database import create_schema, derived_rebuilt  # noqa: E402

COMPAT_DB = ROOT.parent / "shared" / "compat" / "memory-nexus.db"
MEMORY = [sys.executable, "-m", "pipeline"]

# One copy of every table, ids made fresh with a suffix (text keys) or an offset (integer keys).
GROW = """
INSERT INTO sessions SELECT id || :s, project_path_encoded, project_path_decoded, project_name, start_time,
    end_time, message_count, summary, created_at, updated_at FROM src.sessions ORDER BY rowid;
INSERT INTO messages_meta (id, session_id, role, content, timestamp, tool_use_ids)
    SELECT id || :s, session_id || :s, role, content, timestamp, tool_use_ids FROM src.messages_meta ORDER BY rowid;
INSERT INTO tool_uses SELECT id || :s, session_id || :s, name, input, timestamp, status, result
    FROM src.tool_uses ORDER BY rowid;
INSERT INTO entities (id, type, name, metadata, confidence, created_at)
    SELECT id + :entity_offset, type, name || :s, metadata, confidence, created_at FROM src.entities;
INSERT INTO topics (id, name, created_at) SELECT id + :topic_offset, name || :s, created_at FROM src.topics;
INSERT INTO links (source_type, source_id, target_type, target_id, relationship, weight)
    SELECT source_type,
           CASE source_type WHEN 'topic' THEN CAST(CAST(source_id AS INTEGER) + :topic_offset AS TEXT)
                ELSE source_id || :s END,
           target_type,
           CASE target_type WHEN 'topic' THEN CAST(CAST(target_id AS INTEGER) + :topic_offset AS TEXT)
                ELSE target_id || :s END,
           relationship, weight FROM src.links ORDER BY id;
INSERT INTO session_entities SELECT session_id || :s, entity_id + :entity_offset, frequency FROM src.session_entities;
INSERT INTO entity_links SELECT source_id + :entity_offset, target_id + :entity_offset, relationship, weight
    FROM src.entity_links;
INSERT INTO extraction_state SELECT id || :s, session_path || :s, started_at, status, completed_at,
    messages_extracted, error_message, file_mtime, file_size FROM src.extraction_state;
"""


def grow(source: Path, target: Path, n: int) -> None:
    """`target` holds `n` copies of `source`, each with its own ids, both full-text indexes in step."""
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    conn = sqlite3.connect(partial, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("ATTACH DATABASE ? AS src", (str(source),))
    entity_step = conn.execute("SELECT coalesce(max(id), 0) FROM src.entities").fetchone()[0]
    topic_step = conn.execute("SELECT coalesce(max(id), 0) FROM src.topics").fetchone()[0]
    conn.execute("BEGIN")
    create_schema(conn)
    with derived_rebuilt(conn):
        for i in range(n):
            params = {"s": f"~{i}" if i else "", "entity_offset": i * entity_step, "topic_offset": i * topic_step}
            for statement in GROW.split(";"):
                if statement.strip():
                    conn.execute(statement, params)
    conn.execute("INSERT INTO sessions_fts (session_id, summary) SELECT id, summary FROM sessions "
                 "WHERE summary IS NOT NULL AND summary != ''")
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE src")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    partial.rename(target)


def run(argv: list[str], stdin: Path | None = None, stdout: Path | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one process. The peak is VmHWM read from /proc every 10 ms:
    getrusage's ru_maxrss would include the RSS of this Python process, which the child had before exec."""
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    fout = open(stdout, "wb") if stdout else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=subprocess.PIPE, cwd=ROOT)
        peak = 0
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            peak = max(peak, _high_water(status))
            time.sleep(0.01)
        wall = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        for f in (fin, fout):
            if hasattr(f, "close"):
                f.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {err.strip()}")
    return wall, peak


def _high_water(status: Path) -> int:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def clean(*paths: Path) -> None:
    for path in paths:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def bench(db: Path, work: Path, rounds: int, fmt: str) -> dict[str, list[tuple[float, int]]]:
    dump, backup = work / "dump.sql", work / f"backup.{fmt}"
    restored_a, restored_b = work / "restored-sqlite3.db", work / "restored-memory.db"
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in
                                                   ("dump", "export", "restore", "import", "validate")}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
        results["dump"].append(run(["sqlite3", str(db), ".dump"], stdout=dump))
        results["export"].append(run(MEMORY + ["export", "--db", str(db), "--quiet", str(backup)]))
        clean(restored_a)
        results["restore"].append(run(["sqlite3", "-bail", str(restored_a)], stdin=dump))
        clean(restored_b)
        results["import"].append(run(MEMORY + ["import", "--db", str(restored_b), "--quiet", str(backup)]))
        results["validate"].append(run(MEMORY + ["validate", "--quiet", str(backup)]))
    return results


def rows(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    names = ["sessions", "messages_meta", "tool_uses", "entities", "links", "topics"]
    return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names}


def table(db: Path, work: Path, fmt: str, results: dict, label: str) -> str:
    med = {k: (statistics.median(w for w, _ in v), max(m for _, m in v)) for k, v in results.items()}
    mb = 1e6
    backup_size = (work / f"backup.{fmt}").stat().st_size
    counts = rows(db)
    lines = [
        f"### {label}",
        "",
        f"Database {db.stat().st_size / mb:,.0f} MB ({', '.join(f'{v:,} {k}' for k, v in counts.items())}); "
        f"dump {(work / 'dump.sql').stat().st_size / mb:,.0f} MB; our {fmt} file {backup_size / mb:,.0f} MB. "
        f"Median of {len(results['dump'])} alternating rounds; peak RSS is the largest seen.",
        "",
        "| task | sqlite3 | memory | ratio (memory / sqlite3) | sqlite3 peak RSS | memory peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, ref, ours in (("export", "dump", "export"), ("import into a new database", "restore", "import")):
        (rw, rm), (ow, om) = med[ref], med[ours]
        lines.append(f"| {task} | {rw:.2f} s | {ow:.2f} s | {ow / rw:.2f}x | {rm / mb:.1f} MB | {om / mb:.1f} MB |")
    vw, vm = med["validate"]
    plain = _plain_size(work / f"backup.{fmt}")
    rate = f"{backup_size / mb / vw:.0f} MB/s of file" + (f", {plain / mb / vw:.0f} MB/s of JSON"
                                                          if plain != backup_size else "")
    lines.append(f"| validate | | {vw:.2f} s ({rate}) | | | {vm / mb:.1f} MB |")
    return "\n".join(lines) + "\n"


def _plain_size(path: Path) -> int:
    """The size of a backup once decompressed."""
    from pipeline.formats import decompressed_reader
    size = 0
    with open(path, "rb") as raw:
        reader = decompressed_reader(raw)
        while chunk := reader.read(1 << 20):
            size += len(chunk)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="copies of the compat database to grow (default 100)")
    parser.add_argument("--db", type=Path, help="benchmark this database instead of a grown one")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--format", default="json", help="json, jsonl, json.gz, ... (default json)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-data", help="scratch folder (default bench-data/)")
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    args.work.mkdir(exist_ok=True)
    if args.db:
        db, label = args.db.expanduser(), f"{args.db.name}, {args.format}"
    else:
        if not COMPAT_DB.exists():
            raise SystemExit(f"no {COMPAT_DB}: pass --db")
        db, label = args.work / f"grown-{args.n}.db", f"compat database x{args.n}, {args.format}"
        if not db.exists():
            print(f"growing {COMPAT_DB.name} {args.n}-fold into {db} ...", file=sys.stderr)
            grow(COMPAT_DB, db, args.n)
    results = bench(db, args.work, args.rounds, args.format)
    text = table(db, args.work, args.format, results, label)
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
