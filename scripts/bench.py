#!/usr/bin/env python3
"""Side-by-side benchmark: `memory export/import/validate` against `sqlite3 .dump` and restoring that dump.

Grows ../shared/compat/memory-nexus.db N-fold with fresh ids (or takes --db), then runs each task of ours and
sqlite3's A, B, A, B ... for several rounds so drift hits both alike, and reports median wall time, the ratio to
sqlite3 (export against `.dump > file` and against `.dump > file && sync file`, which like our export puts the
file on disk), CPU time (user + system, which load on the machine moves less) and the peak RSS of each process,
for each layout. --big-message builds databases holding one message of that many MB and reports time per MB.
Writes the tables into BENCHMARKS.md with --write.

    python scripts/bench.py                                  # N=100: about 303,000 messages, ~570 MB
    python scripts/bench.py --n 10,100,300 --rounds 5 --write BENCHMARKS.md
    python scripts/bench.py --n 1 --rounds 1                 # a quick check that it runs
    python scripts/bench.py --big-message 10,100,300 --write BENCHMARKS.md
    python scripts/bench.py --db ~/.memory-nexus/memory.db
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
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


Run = tuple[float, float, int, int]     # (wall seconds, CPU seconds, peak RSS bytes, its worker's peak RSS)


def run(argv: list[str], stdin: Path | None = None, stdout: Path | None = None) -> Run:
    """(wall seconds, CPU seconds, peak RSS in bytes, the largest peak RSS of its children) of one process. CPU
    time is the rusage wait4 gives (it counts the children the process waited for: `sh -c` counts sqlite3 and
    sync, memory counts its worker process). The peaks are VmHWM read from /proc every 10 ms: getrusage's
    ru_maxrss would include the RSS of this Python process, which the child had before exec (for `sh -c` it
    is the shell's, so the table leaves it out). memory's children are its parsing worker and (import) its indexing
    worker, where they run: the larger peak is kept."""
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    fout = open(stdout, "wb") if stdout else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=fin, stdout=fout, stderr=subprocess.PIPE, cwd=ROOT)
        peak, children = 0, 0
        status = Path(f"/proc/{proc.pid}/status")
        while True:
            peak = max(peak, _high_water(status))
            if argv[:len(MEMORY)] == MEMORY:
                children = max([children] + [_high_water(Path(f"/proc/{child}/status"))
                                             for child in _children(proc.pid)])
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(code)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        for f in (fin, fout):
            if hasattr(f, "close"):
                f.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, peak, children


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


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


def bench(db: Path, work: Path, rounds: int, formats: list[str]) -> dict[str, list[Run]]:
    """Each task, round after round, ours beside sqlite3's."""
    dump, restored_a, restored_b = work / "dump.sql", work / "restored-sqlite3.db", work / "restored-memory.db"
    results: dict[str, list[Run]] = {}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
        steps = [("dump", lambda: run(["sqlite3", str(db), ".dump"], stdout=dump)),
                 ("dump+sync", lambda: run(["sh", "-c", 'sqlite3 "$1" .dump > "$2" && sync "$2"', "sh", str(db),
                                            str(dump)]))]
        for fmt in formats:
            backup = work / f"backup.{fmt}"
            steps.append((f"export {fmt}", lambda b=backup: run(MEMORY + ["export", "--db", str(db), "--quiet",
                                                                          str(b)])))
        steps.append(("restore", lambda: (clean(restored_a), run(["sqlite3", "-bail", str(restored_a)],
                                                                   stdin=dump))[1]))
        for fmt in formats:
            backup = work / f"backup.{fmt}"
            steps.append((f"import {fmt}", lambda b=backup: (clean(restored_b), run(
                MEMORY + ["import", "--db", str(restored_b), "--quiet", str(b)]))[1]))
            steps.append((f"validate {fmt}", lambda b=backup: run(MEMORY + ["validate", "--quiet", str(b)])))
        for name, step in steps:
            results.setdefault(name, []).append(step())
            wall, cpu, _, _ = results[name][-1]
            print(f"  {name}: {wall:.2f} s, CPU {cpu:.2f} s", file=sys.stderr)     # each round's, beside the medians
    clean(restored_a, restored_b)
    return results


def rows(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    names = ["sessions", "messages_meta", "tool_uses", "entities", "links", "topics"]
    return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names}


def _median(runs: list[Run]) -> Run:
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            max(r[2] for r in runs), max(r[3] for r in runs))


def _rss(run: Run) -> str:
    """memory's peak RSS, and its worker's where one ran."""
    return f"{run[2] / 1e6:.1f} MB" + (f" + worker {run[3] / 1e6:.1f} MB" if run[3] else "")


def table(db: Path, work: Path, formats: list[str], results: dict[str, list[Run]], label: str) -> str:
    med = {k: _median(v) for k, v in results.items()}
    mb = 1e6
    counts = rows(db)
    sizes = ", ".join(f"{fmt} {(work / f'backup.{fmt}').stat().st_size / mb:,.0f} MB" for fmt in formats)
    lines = [
        f"### {label}",
        "",
        f"Database {db.stat().st_size / mb:,.0f} MB ({', '.join(f'{v:,} {k}' for k, v in counts.items())}); "
        f"dump {(work / 'dump.sql').stat().st_size / mb:,.0f} MB; our files: {sizes}. Median of "
        f"{len(results['dump'])} alternating rounds (wall and CPU = user + system); peak RSS is the largest seen.",
        "",
        "| task | sqlite3 | memory | ratio | target | sqlite3 peak RSS | memory peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(run: Run) -> str:
        return f"{run[0]:.2f} s (CPU {run[1]:.2f} s)"

    for fmt in formats:
        ours = med[f"export {fmt}"]
        for ref, name, target in (("dump", "`.dump > file`", ""), ("dump+sync", "`.dump > file && sync file`",
                                                                     "≤ 1.2x")):
            ratio = ours[0] / med[ref][0]
            verdict = f"{target}: {'met' if ratio <= 1.2 else '**not met**'}" if target else ""
            rss = f"{med['dump'][2] / mb:.1f} MB" if ref == "dump" else ""
            lines.append(f"| export {fmt} vs {name} | {cell(med[ref])} | {cell(ours)} | {ratio:.2f}x | {verdict} "
                         f"| {rss} | {_rss(ours)} |")
        ours, ref = med[f"import {fmt}"], med["restore"]
        ratio = ours[0] / ref[0]
        lines.append(f"| import {fmt} into a new database vs restoring the dump | {cell(ref)} | {cell(ours)} | "
                     f"{ratio:.2f}x | ≤ 1.3x: {'met' if ratio <= 1.3 else '**not met**'} | {ref[2] / mb:.1f} MB | "
                     f"{_rss(ours)} |")
        ours = med[f"validate {fmt}"]
        plain = _plain_size(work / f"backup.{fmt}")
        rate, cpu_rate = plain / mb / ours[0], plain / mb / ours[1]
        lines.append(f"| validate {fmt} | | {cell(ours)} | {rate:.0f} MB/s of JSON (CPU: {cpu_rate:.0f} MB/s) | "
                     f"≥ 300 MB/s: {'met' if rate >= 300 else '**not met**'} | | {_rss(ours)} |")
    ours_only = [r for k, r in med.items() if not k.startswith(("dump", "restore"))]
    peak = max(max(r[2], r[3]) for r in ours_only)
    together = max(r[2] + r[3] for r in ours_only)
    lines += ["", f"Peak RSS of any one memory process, all tasks: {peak / mb:.1f} MB (target ≤ 64 MB: "
                  f"{'met' if peak <= 64e6 else '**not met**'}); with its worker, together: {together / mb:.1f} MB."]
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


def with_big_message(source: Path, target: Path, megabytes: int) -> None:
    """`source` with its first message's content made `megabytes` MB of text (some of it not ASCII)."""
    if target.exists():
        return
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    unit = "the streaming backup of one very long message, café \u00e9t\u00e9 \"quoted\" \\ and a new line\n"
    text = unit * (megabytes * 1_000_000 // len(unit.encode()) + 1)
    conn = sqlite3.connect(partial, isolation_level=None)
    conn.execute("UPDATE messages_meta SET content = ? WHERE rowid = (SELECT min(rowid) FROM messages_meta)", (text,))
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
    conn.close()
    partial.rename(target)


def big_message(sizes: list[int], work: Path, rounds: int) -> str:
    """Export, validate and import of databases that hold one message of each size: time per MB and peak RSS."""
    lines = ["### One big message", "",
             f"{COMPAT_DB.name} with its first message made N MB long; json layout; median of {rounds} rounds. "
             "Time per MB of the file, and peak RSS against the message's size.", "",
             "| message | file | task | wall | CPU | wall per MB | peak RSS | RSS / message |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    per_mb: dict[str, list[float]] = {}
    for size in sizes:
        db, backup, restored = work / f"big-{size}.db", work / f"big-{size}.json", work / f"big-{size}-restored.db"
        print(f"one message of {size} MB", file=sys.stderr)
        with_big_message(COMPAT_DB, db, size)
        runs: dict[str, list[Run]] = {}
        for _ in range(rounds):
            runs.setdefault("export", []).append(run(MEMORY + ["export", "--db", str(db), "--quiet", str(backup)]))
            runs.setdefault("validate", []).append(run(MEMORY + ["validate", "--quiet", str(backup)]))
            clean(restored)
            runs.setdefault("import", []).append(run(MEMORY + ["import", "--db", str(restored), "--quiet",
                                                               str(backup)]))
        clean(restored)
        file_mb = backup.stat().st_size / 1e6
        for task, task_runs in runs.items():
            wall, cpu, peak, worker = _median(task_runs)
            peak = max(peak, worker)
            per_mb.setdefault(task, []).append(wall / file_mb)
            lines.append(f"| {size} MB | {file_mb:,.0f} MB | {task} | {wall:.2f} s | {cpu:.2f} s | "
                         f"{wall / file_mb * 1000:.1f} ms | {peak / 1e6:.0f} MB | {peak / (size * 1e6):.1f}x |")
    if len(sizes) > 1:
        lines += ["", "Time per MB of the largest against the smallest (linear: within 3x): " + ", ".join(
            f"{task} {values[-1] / values[0]:.2f}x" for task, values in per_mb.items()) + "."]
    return "\n".join(lines) + "\n"


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=_numbers, default=[100],
                        help="copies of the compat database to grow, e.g. 10,100,300 (default 100)")
    parser.add_argument("--db", type=Path, help="benchmark this database instead of a grown one")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--formats", default="json,jsonl", help="layouts, e.g. json,jsonl,json.zst (default json,jsonl)")
    parser.add_argument("--big-message", type=_numbers, metavar="MB,...",
                        help="instead: databases with one message of each size in MB, e.g. 10,100,300")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-data", help="scratch folder (default bench-data/)")
    parser.add_argument("--write", type=Path, help="append the tables to this Markdown file (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    args.work.mkdir(exist_ok=True)
    # memory as pip installs it, byte-compiled: where PYTHONDONTWRITEBYTECODE is set (this VM sets it), every run
    # would compile the package's changed modules from source again (10-20 ms a run, before any work).
    compileall.compile_dir(ROOT / "pipeline", quiet=1)
    formats = [f for f in args.formats.split(",") if f]
    if not args.db and not COMPAT_DB.exists():
        raise SystemExit(f"no {COMPAT_DB}: pass --db")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    stamp = f"Commit `{commit.stdout.strip()}`, {time.strftime('%Y-%m-%d %H:%M')}, load average " \
            f"{os.getloadavg()[0]:.2f} before the run."
    texts = []
    if args.big_message:
        texts.append(big_message(args.big_message, args.work, args.rounds))
    elif args.db:
        db = args.db.expanduser()
        texts.append(table(db, args.work, formats, bench(db, args.work, args.rounds, formats), db.name))
    else:
        for n in args.n:
            db = args.work / f"grown-{n}.db"
            if not db.exists():
                print(f"growing {COMPAT_DB.name} {n}-fold into {db} ...", file=sys.stderr)
                grow(COMPAT_DB, db, n)
            texts.append(table(db, args.work, formats, bench(db, args.work, args.rounds, formats),
                               f"compat database x{n}"))
    text = "\n".join(texts) + "\n" + stamp + "\n"
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
