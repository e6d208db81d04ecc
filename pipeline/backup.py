"""Naming and rotating the backups that `memory backup` keeps in a folder; it never touches other files."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

EXTENSIONS = {("json", "none"): ".json", ("json", "gzip"): ".json.gz", ("json", "zstd"): ".json.zst",
              ("jsonl", "none"): ".jsonl", ("jsonl", "gzip"): ".jsonl.gz", ("jsonl", "zstd"): ".jsonl.zst"}
# memory-20261123T231500.123456Z.json.zst: microseconds, so names sort in time order and two runs in one
# second get two names.
_OURS = re.compile(r"memory-(\d{8}T\d{6}\.\d{6}Z)\.(jsonl?)(\.gz|\.zst)?")


def backup_name(fmt: str, compression: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"memory-{stamp}{EXTENSIONS[fmt, compression]}"


def own_backups(directory: Path) -> list[Path]:
    """This tool's backups in `directory`, oldest first; anything else there is not ours."""
    found = [(m[1], p) for p in directory.iterdir() if p.is_file() and (m := _OURS.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def rotate(directory: Path, keep: int) -> list[Path]:
    """Remove the oldest of our backups beyond the newest `keep`; return what was removed."""
    backups = own_backups(directory)
    removed = backups[: max(len(backups) - keep, 0)]
    for path in removed:
        path.unlink()
    return removed
