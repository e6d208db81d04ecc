"""The one description of the memory database's tables, read by export, import and validation alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

Record = Dict[str, Any]

FORMAT_MAJOR = 1
FORMAT_MINOR = 2          # 1.0 is memory-nexus 0.1.2's; 1.1 adds what 1.0 leaves out; 1.2 adds the checksum
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
INT64 = (-(2**63), 2**63 - 1)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class Column:
    name: str                                  # SQL column
    type: str                                  # "text", "integer" or "real"
    nullable: bool = False
    choices: tuple[str, ...] = ()              # mirrors a CHECK (col IN (...))
    between: tuple[float, float] | None = None  # mirrors a CHECK (col >= lo AND col <= hi)
    since: int = 0                             # the 1.x minor version whose files carry it
    rowid: bool = False                        # INTEGER PRIMARY KEY: an alias of the rowid, integers only
    points_at: str = ""                        # the table (its key) whose surrogate id this column holds
    where: str = ""                            # ... only in rows where this SQL condition holds
    field: str = ""                            # the key in the file: the name in camelCase

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", _camel(self.name))


@dataclass(frozen=True)
class Table:
    key: str                      # the array in the file and its count in "stats"
    name: str                     # the SQL table
    columns: tuple[Column, ...]
    # What names the fact a row holds, when merging (never a surrogate id): one key or more, a row of the
    # file is the target's row that matches it on any of them; pointing columns compare after mapping.
    natural: tuple[tuple[str, ...], ...]
    since: int = 0                # files of this minor version on must hold the array

    def columns_in(self, minor: int) -> tuple[Column, ...]:
        """The columns a file of version 1.<minor> carries, each exactly once."""
        return tuple(c for c in self.columns if c.since <= min(minor, FORMAT_MINOR))


def text(name: str, **kw: Any) -> Column:
    return Column(name, "text", **kw)


def integer(name: str, **kw: Any) -> Column:
    return Column(name, "integer", **kw)


def real(name: str, **kw: Any) -> Column:
    return Column(name, "real", **kw)


UNIT = (0.0, 1.0)

# Parents before children, in memory-nexus's order, so foreign keys hold as rows arrive.
TABLES: tuple[Table, ...] = (
    Table("sessions", "sessions", (
        text("id"),
        text("project_path_encoded"),
        text("project_path_decoded"),
        text("project_name"),
        text("start_time"),
        text("end_time", nullable=True),
        integer("message_count", nullable=True),
        text("summary", nullable=True),
        text("created_at", nullable=True, since=1),
        text("updated_at", nullable=True, since=1),
    ), natural=(("id",),)),
    Table("messages", "messages_meta", (
        integer("rowid", since=1, rowid=True),
        text("id"),
        text("session_id"),
        text("role", choices=("user", "assistant")),
        text("content"),
        text("timestamp"),
        text("tool_use_ids", nullable=True),
    ), natural=(("id",),)),
    Table("toolUses", "tool_uses", (
        text("id"),
        text("session_id"),
        text("name"),
        text("input"),
        text("timestamp"),
        text("status", choices=("pending", "success", "error")),
        text("result", nullable=True),
    ), natural=(("id",),)),
    Table("entities", "entities", (
        integer("id", rowid=True),
        text("type", choices=("concept", "file", "decision", "term")),
        text("name"),
        text("metadata", nullable=True),
        real("confidence", nullable=True, between=UNIT),
        text("created_at", nullable=True, since=1),
    ), natural=(("type", "name"),)),
    Table("links", "links", (
        integer("id", since=1, rowid=True),
        text("source_type", choices=("session", "message", "topic")),
        text("source_id", points_at="topics", where="source_type = 'topic'"),
        text("target_type", choices=("session", "message", "topic")),
        text("target_id", points_at="topics", where="target_type = 'topic'"),
        text("relationship", choices=("mentions", "related_to", "continues")),
        real("weight", nullable=True, between=UNIT),
    ), natural=(("source_type", "source_id", "target_type", "target_id", "relationship"),)),
    Table("sessionEntities", "session_entities", (
        text("session_id"),
        integer("entity_id", points_at="entities"),
        integer("frequency", nullable=True),
    ), natural=(("session_id", "entity_id"),), since=1),
    Table("entityLinks", "entity_links", (
        integer("source_id", points_at="entities"),
        integer("target_id", points_at="entities"),
        text("relationship", choices=("related", "implies", "contradicts")),
        real("weight", nullable=True, between=UNIT),
    ), natural=(("source_id", "target_id", "relationship"),), since=1),
    Table("extractionStates", "extraction_state", (
        text("id"),
        text("session_path"),
        text("started_at"),
        text("status", choices=("pending", "in_progress", "complete", "error")),
        text("completed_at", nullable=True),
        integer("messages_extracted", nullable=True),
        text("error_message", nullable=True),
        text("file_mtime", nullable=True),
        integer("file_size", nullable=True),
    ), natural=(("id",), ("session_path",)), since=1),   # memory-nexus looks a state up by its path
    Table("topics", "topics", (
        integer("id", rowid=True),
        text("name"),
        text("created_at", nullable=True),
    ), natural=(("name",),), since=1),
)

BY_KEY: dict[str, Table] = {t.key: t for t in TABLES}
