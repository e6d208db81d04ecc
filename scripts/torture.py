#!/usr/bin/env python3
"""The long runs behind the README's guarantees: the crash tests at many kill points and the fuzz test at
10,000+ cases, plus the bad-file corpus, with the counts that were run.

    python scripts/torture.py                      # 100 kill points per case, 10,000 fuzz cases
    python scripts/torture.py --kills 20 --fuzz 500
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pytest(tests: str, env: dict[str, str]) -> tuple[bool, str, float]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests], cwd=ROOT,
                         env=os.environ | env, capture_output=True, text=True)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr.strip()
    return run.returncode == 0, last, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="kill -9 points per crash case (default 100)")
    parser.add_argument("--fuzz", type=int, default=10_000, help="hypothesis cases (default 10,000)")
    args = parser.parse_args()
    runs = [
        (f"kill -9 at {args.kills} points in each of 5 cases "
         "(export; import merge, renumbering merge, --clear, new path)",
         "tests/test_crash.py", {"MEMORY_CRASH_POINTS": str(args.kills)}),
        (f"{args.fuzz:,} mutated files (flipped, deleted, inserted bytes, truncation; json and jsonl; the sample and the typed sample)",
         "tests/test_fuzz.py", {"MEMORY_FUZZ_EXAMPLES": str(args.fuzz)}),
        ("the bad-file corpus: hand-made cases and every 2% cut, by validate and import",
         "tests/test_bad_input.py", {}),
    ]
    failed = False
    for what, tests, env in runs:
        ok, last, took = pytest(tests, env)
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {last} ({took:.0f} s)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
