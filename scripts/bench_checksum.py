#!/usr/bin/env python3
"""A/B: what the checksum costs export and validate. Each run is its own process; "off" replaces the hash with
one that does nothing (validate then reads with --ignore-checksum in both modes, which still hashes "on"),
alternating on and off for 3 rounds, medians compared. Takes the database scripts/bench.py grew:

    python scripts/bench_checksum.py [DB [WORK]]     # default bench-data/grown-100.db
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
code = r'''
import sys, time
from pipeline import integrity
if sys.argv[1] == "off":
    class Nothing:
        def update(self, data): pass
        def hexdigest(self): return "0" * 32
    integrity._NEW = Nothing
from pipeline.cli import cli
t = time.perf_counter()
try:
    cli(sys.argv[2:], prog_name="memory")
except SystemExit as e:
    code = e.code
print(f"{time.perf_counter() - t:.3f}", file=sys.stderr)
'''
db = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "bench-data" / "grown-100.db")
out = str(Path(sys.argv[2] if len(sys.argv) > 2 else Path(db).parent) / "checksum-ab.json")
res = {}
for r in range(3):
    for mode in ("on", "off"):
        for task, args in (("export", ["export", "-q", "--db", db, out]), ("validate", ["validate", "-q", "--ignore-checksum", out])):
            p = subprocess.run([sys.executable, "-c", code, mode, *args], capture_output=True, text=True, cwd=ROOT)
            res.setdefault((task, mode), []).append(float(p.stderr.strip().splitlines()[-1]))
import statistics
for task in ("export", "validate"):
    on, off = statistics.median(res[task, "on"]), statistics.median(res[task, "off"])
    print(f"{task}: with checksum {on:.2f} s, without {off:.2f} s: {100 * (on - off) / off:+.1f}%  (runs on {res[task,'on']}, off {res[task,'off']})")
