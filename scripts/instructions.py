#!/usr/bin/env python3
"""Instructions, not seconds: `memory export/import/validate` and sqlite3's `.dump` and its restore, each run once
under valgrind's cachegrind, every process counted (memory's workers included).

Wall time on this VM moves 20-40% from one half-hour to the next, so a change of 5% cannot be seen in it even
over many rounds; the instructions a run executes move by less than 0.5%. They are not time (a cache miss, a
wait for the other core, a page written cost none), so this is for telling whether a change does less work,
beside scripts/bench.py, which says how long it takes. Under cachegrind a run is about 50 times slower: use a
small database (N=5, 22 MB of JSON, takes about two minutes in all).

    python scripts/instructions.py --n 5                      # grows ../shared/compat/memory-nexus.db 5-fold
    python scripts/instructions.py --db some.db --base ../old-clone     # and the same tasks with another copy
"""

from __future__ import annotations

import argparse
import compileall
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import COMPAT_DB, grow  # noqa: E402


def counted(argv: list[str], work: Path, code: Path | None = None, stdin: Path | None = None,
            stdout: Path | None = None) -> dict[str, int]:
    """Instructions of each process of one run of `argv` (its command line, shortened: the first is the
    run's own). `code`: the folder whose pipeline/ memory runs from (the run starts there)."""
    out = Path(tempfile.mkdtemp(dir=work))
    fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
    fout = open(stdout, "wb") if stdout else subprocess.DEVNULL
    try:
        done = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--trace-children=yes",
                               f"--cachegrind-out-file={out}/cg.%p", "-q", *argv],
                              stdin=fin, stdout=fout, stderr=subprocess.PIPE, cwd=code or work)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        counts = {}
        for path in sorted(out.iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[1])):
            text = path.read_text(errors="replace")
            command = re.search(r"^cmd: (.*)$", text, re.M)[1]
            name = "spawned worker" if "spawn_main" in command else Path(command.split()[0]).name
            while name in counts:
                name += "'"
            counts[name] = int(re.search(r"^summary: (\d+)$", text, re.M)[1])
        return counts
    finally:
        for f in (fin, fout):
            if hasattr(f, "close"):
                f.close()
        shutil.rmtree(out, ignore_errors=True)


def tasks(db: Path, work: Path, code: Path) -> dict[str, dict[str, int]]:
    compileall.compile_dir(code / "pipeline", quiet=1)     # else each run compiles the package first
    memory = [sys.executable, "-m", "pipeline"]
    backup, restored, dump, redone = work / "backup.json", work / "restored.db", work / "dump.sql", work / "redone.db"
    for path in (backup, restored, dump, redone):
        path.unlink(missing_ok=True)
    results = {
        "export json": counted([*memory, "export", "--db", str(db), "-q", str(backup)], work, code),
        "sqlite3 .dump": counted(["sqlite3", str(db), ".dump"], work, stdout=dump),
        "import json into a new database": counted([*memory, "import", "--db", str(restored), "-q", str(backup)],
                                                   work, code),
        "sqlite3 restore of the dump": counted(["sqlite3", str(redone)], work, stdin=dump),
        "validate json": counted([*memory, "validate", "-q", str(backup)], work, code),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="grow the compat database N-fold (default 5)")
    parser.add_argument("--db", type=Path, help="count with this database instead of a grown one")
    parser.add_argument("--base", type=Path, help="also count a copy of this project at this path (another commit)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-data", help="scratch folder (default bench-data/)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    args.work.mkdir(parents=True, exist_ok=True)
    db = args.db
    if db is None:
        db = args.work / f"grown-{args.n}.db"
        if not db.exists():
            grow(COMPAT_DB, db, args.n)
    copies = [("this", ROOT)] + ([("base", args.base.resolve())] if args.base else [])
    runs = {label: tasks(db, args.work, code) for label, code in copies}
    print(f"Instructions (millions), one run each under cachegrind, database {db.name} "
          f"({db.stat().st_size / 1e6:.0f} MB)\n")
    print("| task | " + " | ".join(label for label, _ in copies) + " |")
    print("| --- |" + " --- |" * len(copies))
    for task in runs["this"]:
        cells = []
        for label, _ in copies:
            counts = runs[label][task]
            parts = " + ".join(f"{n / 1e6:,.0f}" for n in counts.values())
            cells.append(f"{sum(counts.values()) / 1e6:,.0f}" + (f" ({parts})" if len(counts) > 1 else ""))
        print(f"| {task} | " + " | ".join(cells) + " |")
    for label, _ in copies:
        r = {task: sum(c.values()) for task, c in runs[label].items()}
        print(f"\n{label}: export / .dump {r['export json'] / r['sqlite3 .dump']:.2f}x, import / restore "
              f"{r['import json into a new database'] / r['sqlite3 restore of the dump']:.2f}x (instructions, "
              "all processes; not time)")


if __name__ == "__main__":
    main()
