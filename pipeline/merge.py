"""Matching rows by natural keys when merging a backup into a database that already has data."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Callable

from .errors import DatabaseProblem, Refused, rejected
from .records import shown
from .tables import TABLES, Column, Table
from .values import text_or_raw

# The tables whose surrogate ids other tables hold (entities, topics). Through the whole merge, each of the
# file's ids of theirs is mapped to the target's id of the same fact in a TEMP table, temp.merge_ids_<name>:
# on disk (temp_store = FILE), so memory does not grow with them; they grow with the entity and topic counts.
POINTED_AT = frozenset(c.points_at for t in TABLES for c in t.columns if c.points_at)
TWICE = "the file holds this fact twice, or its keys name two different rows of the database"


def staging_name(table: Table) -> str:
    return f'temp."merge_{table.name}"'


def _ids(key: str) -> str:
    return f'temp."merge_ids_{key}"'


def _met(table: Table) -> str:
    """The table's natural key as the database will hold it, ids mapped, for each record merged so far, with
    the first record's pos (see Statements.meets)."""
    return f'temp."merge_met_{table.name}"'


def _seen(table: Table, i: int) -> str:
    """The values of the table's unique key `i` (see Statements.once) that the file's records have held so far,
    each with the first record's pos: what the database's UNIQUE constraint on it is to an empty import."""
    return f'temp."merge_seen_{table.name}_{i}"'


@dataclass
class Merge:
    """A merge in progress, in the import's transaction. The import inserts each batch of records into the
    table's TEMP staging table (`stage`); `merge_staged` then merges into the database, set-wise, the records
    whose fact it holds and those whose id or rowid is free there, and forgets them. Those whose id or rowid
    is taken by another fact stay staged (on disk) until the table ends, and are then inserted after the
    database's highest id: inserted at once, each would take an id that a later record of the file has, and
    the renumbering would run on through the file. A table that holds ids of a table not yet read (links
    come before topics in the file) stays staged whole, and is merged by `finish`."""
    conn: sqlite3.Connection
    minor: int
    on_conflict: str
    updated: dict[str, int] = field(default_factory=dict)
    renumbered: dict[str, int] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)        # tables whose records have all been read
    waiting: list[Table] = field(default_factory=list)
    sql: dict[str, Statements] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)    # the last pos the first phase has seen
    checked: dict[str, int] = field(default_factory=dict)  # the last pos _once has seen

    def __post_init__(self) -> None:
        if sqlite3.sqlite_version_info < (3, 33):
            raise DatabaseProblem(f"merging needs SQLite 3.33 or newer (UPDATE ... FROM); this Python has "
                                  f"{sqlite3.sqlite_version}")
        for key in sorted(POINTED_AT):
            self.conn.execute(f"CREATE TEMP TABLE {_ids(key)} "
                              "(file_id INTEGER PRIMARY KEY, target_id INTEGER NOT NULL)")

    def stage(self, table: Table) -> str:
        """A staging table for the table's records, in the file's order (pos - 1 is the record's index)."""
        columns = ", ".join(f'"{c.name}" {c.type.upper()}' for c in table.columns_in(self.minor))
        self.conn.execute(f"CREATE TEMP TABLE {staging_name(table)} (pos INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
        self.updated[table.key] = self.renumbered[table.key] = self.done[table.key] = self.checked[table.key] = 0
        self.sql[table.key] = sql = Statements(table, self.minor)
        for create in sql.created.values():
            self.conn.execute(create)
        if any(c.points_at not in self.read for c in table.columns_in(self.minor) if c.points_at):
            self.waiting.append(table)
        return staging_name(table)

    def merge_staged(self, table: Table) -> None:
        self._once(table)
        if table not in self.waiting:
            self._merge(table, self._in_place)

    def _once(self, table: Table) -> None:
        """Refused: a record just staged that holds an earlier record's fact (a natural key's values, as the file
        gives them) or its id. A file memory or memory-nexus writes never does (the schema's UNIQUE
        constraints), and an import into an empty database refuses it; a merge would take one of the two. The
        first such record in the file's order is named, by the key it repeats."""
        first = self.checked[table.key] + 1
        once = self.sql[table.key].once
        for insert, _, _ in once:
            self.conn.execute(insert, (first,))
        found = [(row, key) for _, twice, key in once if (row := self._as_given(twice, (first,)))]
        if found:
            (pos, earlier, *values), key = min(found, key=lambda pair: pair[0][0])
            named = ", ".join(f"{c.field} {shown(v)}" for c, v in zip(key, values))
            raise Refused(f"{table.key}[{pos - 1}]: the file holds {named} twice (as {table.key}[{earlier - 1}]); "
                          "nothing was imported")
        self.checked[table.key] = self.conn.execute(
            f"SELECT coalesce(max(pos), 0) FROM {staging_name(table)}").fetchone()[0]

    def _mapped_once(self, table: Table, first: int) -> None:
        """Refused: a record staged from pos `first` that is, once the file's ids are mapped to the database's,
        an earlier record's fact. Only a record naming an id the file does not hold can be: such an id is kept
        as it is, and may be the database's id of what the file's other id is mapped to. An import into an
        empty database keeps both records (links: topic ids have no foreign key) or refuses the file (entity
        ids); a merge would take one of the two."""
        sql = self.sql[table.key]
        if not sql.meets:
            return
        note, twice, pointing = sql.meets
        self.conn.execute(note, (first, 2**62))
        found = self._as_given(twice, (first, 2**62))
        if not found:
            return
        pos, earlier, *given = found
        here, there = given[:2 * len(pointing)], given[2 * len(pointing):]
        whose = [("its", here), (f"{table.key}[{earlier - 1}]'s", there)]
        lacking = next((f"{who} {c.field} {shown(value)} is not in the file's {c.points_at} and is kept as it is"
                        for who, values in whose for c, value, lacks in zip(pointing, values[::2], values[1::2])
                        if lacks), "")
        raise Refused(f"{table.key}[{pos - 1}]: once the file's ids are mapped to the database's, it is the same as "
                      f"{table.key}[{earlier - 1}]{': ' * bool(lacking)}{lacking}; nothing was imported")

    def _as_given(self, statement: str, params: tuple) -> tuple | None:
        """The first row the statement finds, TEXT that is not UTF-8 read as its bytes (as the file gave it), not
        a failure to decode."""
        factory, self.conn.text_factory = self.conn.text_factory, text_or_raw
        try:
            return self.conn.execute(statement, params).fetchone()
        finally:
            self.conn.text_factory = factory

    def ended(self, table: Table) -> None:
        self.read.add(table.key)
        if table not in self.waiting:
            self._merge(table, self._elsewhere)

    def finish(self) -> None:
        """Merge the tables that waited, in the file's table order; drop the TEMP tables."""
        for table in TABLES:
            if table in self.waiting:
                self._merge(table, self._in_place)
                self._merge(table, self._elsewhere)
        for table in TABLES:
            self.conn.execute(f"DROP TABLE IF EXISTS {staging_name(table)}")
        for sql in self.sql.values():
            for name in sql.created:
                self.conn.execute(f"DROP TABLE {name}")
        for key in sorted(POINTED_AT):
            self.conn.execute(f"DROP TABLE {_ids(key)}")

    def _merge(self, table: Table, phase: Callable[[Table, Statements, int, int], tuple[int, int]]) -> None:
        """One phase over what is staged, set-wise; then forget the records whose fact the database now holds.
        Where the set-wise statements fail (two records that are one fact only once their ids are mapped: a
        file's fact twice as it gives it is refused as it is staged, see `_once`; or the database refuses a
        record), the phase runs record by record in the file's order: a fact met again then does what a row
        already there does, and a record the database refuses is named."""
        sql = self.sql[table.key]
        # The first phase sees each record once: those it leaves staged wait for the second.
        first = self.done[table.key] + 1 if phase == self._in_place else 1
        if not self.conn.execute(f"SELECT 1 FROM {staging_name(table)} WHERE pos >= ? LIMIT 1", (first,)).fetchone():
            return      # an INSERT of no rows would still write a row of sqlite_sequence for the table
        if phase == self._in_place:
            self._mapped_once(table, first)
        self.conn.execute("SAVEPOINT merge")
        try:
            counted = phase(table, sql, first, 2**62)
        except sqlite3.IntegrityError:
            self.conn.execute("ROLLBACK TO merge")
            counted = (0, 0)
            # Read as it goes, not fetched whole: the records waiting to be renumbered can be every message.
            # The phases write to the database and the id maps, never to the staging table being read.
            for (pos,) in self.conn.execute(f"SELECT pos FROM {staging_name(table)} WHERE pos >= ? ORDER BY pos",
                                            (first,)):
                try:
                    counted = tuple(map(sum, zip(counted, phase(table, sql, pos, pos))))
                except sqlite3.IntegrityError as error:
                    raise DatabaseProblem(f"{table.key}[{pos - 1}]: {rejected(error, TWICE)}") from error
        last = self.conn.execute(f"SELECT coalesce(max(pos), 0) FROM {staging_name(table)}").fetchone()[0]
        self.done[table.key] = last
        self.conn.execute(sql.forget, (first, 2**62))
        self.conn.execute("RELEASE merge")
        self.updated[table.key] += counted[0]
        self.renumbered[table.key] += counted[1]

    def _in_place(self, table: Table, sql: Statements, first: int, last: int) -> tuple[int, int]:
        """The staged records from pos `first` to `last` whose fact the database holds, and the new ones whose
        id or rowid is free there: (rows updated, 0)."""
        if self.on_conflict == "fail":
            clash = self.conn.execute(sql.clash, (first, last)).fetchone()
            if clash:
                pos, *key = clash
                named = ", ".join(f"{c.field} {shown(v)}" for c, v in zip(sql.key, key))
                raise Refused(f"{table.key}[{pos - 1}]: {named} is in the database with other values; nothing was "
                              "imported (--on-conflict skip keeps the database's, replace takes the file's)")
        updated = self._run(sql.update, first, last) if self.on_conflict == "replace" else 0
        self._run(sql.insert_in_place, first, last)
        self._run(sql.map_ids, first, last)
        return updated, 0

    def _elsewhere(self, table: Table, sql: Statements, first: int, last: int) -> tuple[int, int]:
        """The rest: new facts whose id or rowid is taken, inserted with new ones: (0, rows renumbered)."""
        renumbered = self._run(sql.insert_elsewhere, first, last)
        self._run(sql.map_ids, first, last)
        return 0, renumbered

    def _run(self, statement: str, first: int, last: int) -> int:
        if not statement:
            return 0
        self.conn.execute(statement, (first, last))
        return self.conn.execute("SELECT changes()").fetchone()[0]   # rowcount is -1 after WITH ...


class Statements:
    """The SQL that merges a table's staged records (those with pos between ? and ?) into the database."""

    def __init__(self, table: Table, minor: int):
        columns = table.columns_in(minor)
        place = next((c for c in columns if c.rowid), None)
        self.place = place
        self.key = [c for c in columns if c.name in table.natural[0]]
        values = [c for c in columns if c is not place]
        name = f'main."{table.name}"'
        picked = ", ".join(f'{_mapped(c, i)} AS "{c.name}"' for i, c in enumerate(columns))
        joins = "".join(f" LEFT JOIN {_ids(c.points_at)} AS j{i} ON {_where(c)}j{i}.file_id = {_as_id(c)}"
                        for i, c in enumerate(columns) if c.points_at)
        source = f"FROM {staging_name(table)} AS s{joins} WHERE s.pos BETWEEN ? AND ?"
        rows = f"WITH r AS (SELECT s.pos, {picked} {source}) "
        match = " OR ".join("(" + " AND ".join(f't."{k}" = r."{k}"' for k in key) + ")" for key in table.natural)
        same = " AND ".join(f't."{c.name}" IS r."{c.name}"' for c in values)

        def insert(cols: list[Column], where: str) -> str:
            names = [f'"{c.name}"' for c in cols]
            return (f"{rows}INSERT INTO {name} ({', '.join(names)}) SELECT {', '.join('r.' + n for n in names)} "
                    f"FROM r WHERE {where} ORDER BY r.pos")

        key_values = ", ".join(f'r."{c.name}"' for c in self.key)
        self.clash = (f"{rows}SELECT r.pos, {key_values} FROM r WHERE EXISTS "
                      f"(SELECT 1 FROM {name} AS t WHERE ({match}) AND NOT ({same})) ORDER BY r.pos LIMIT 1")
        sets = ", ".join(f'"{c.name}" = r."{c.name}"' for c in values)
        self.update = f"{rows}UPDATE {name} AS t SET {sets} FROM r WHERE ({match}) AND NOT ({same})"
        there = f"EXISTS (SELECT 1 FROM {name} AS t WHERE {match})"
        free = f'NOT EXISTS (SELECT 1 FROM {name} AS t WHERE t."{place.name}" = r."{place.name}")' if place else "1"
        self.insert_in_place = insert(list(columns), f"NOT {there} AND {free}")
        self.insert_elsewhere = insert(values, f"NOT {there}") if place else ""
        self.map_ids = ""
        if table.key in POINTED_AT:
            first = " AND ".join(f't."{k}" = r."{k}"' for k in table.natural[0])
            self.map_ids = (f"{rows}INSERT INTO {_ids(table.key)} (file_id, target_id) "
                            f'SELECT r."{place.name}", t."{place.name}" FROM r JOIN {name} AS t ON {first} '
                            "ORDER BY r.pos")
        self.forget = (f"{rows}DELETE FROM {staging_name(table)} WHERE pos IN (SELECT r.pos FROM r WHERE {there})")
        self.created: dict[str, str] = {}      # the TEMP tables the checks below keep: name -> CREATE
        # Per natural key, and the file's own id or rowid (an empty import's PRIMARY KEY; the other tables name
        # entities and topics by it): (note the values of the records staged from pos ? in its seen table, the
        # first of them that an earlier record held, the key's columns). As the file gives them, not mapped.
        self.once = []
        stage = staging_name(table)
        unique = list(table.natural) + ([(place.name,)] if place and (place.name,) not in table.natural else [])
        for i, natural in enumerate(unique):
            cols = [c for c in columns if c.name in natural]
            names = ", ".join(f'"{c.name}"' for c in cols)
            typed = ", ".join(f'"{c.name}" {c.type.upper()}' for c in cols)
            same = " AND ".join(f'd."{c.name}" = s."{c.name}"' for c in cols)
            held = ", ".join(f's."{c.name}"' for c in cols)
            self.created[_seen(table, i)] = (f"CREATE TEMP TABLE {_seen(table, i)} ({typed}, pos INTEGER NOT NULL, "
                                             f"PRIMARY KEY ({names}))")
            self.once.append((
                f"INSERT OR IGNORE INTO {_seen(table, i)} ({names}, pos) SELECT {names}, pos FROM {stage} "
                "WHERE pos >= ? ORDER BY pos",
                f"SELECT s.pos, d.pos, {held} FROM {stage} AS s JOIN {_seen(table, i)} AS d ON {same} "
                "AND d.pos <> s.pos WHERE s.pos >= ? ORDER BY s.pos LIMIT 1",
                cols))
        # The natural key once ids are mapped: (note the records from pos ? to ? in its table, the first of them
        # that an earlier record met, the pointing columns in the key), for tables whose key holds ids.
        self.meets: tuple = ()
        pointing = [c for c in self.key if c.points_at]
        if pointing:
            met = _met(table)
            names = ", ".join(f'"{c.name}"' for c in self.key)
            typed = ", ".join(f'"{c.name}" {c.type.upper()}' for c in self.key)
            at = {c.name: i for i, c in enumerate(columns)}
            # Each pointing column as the file gives it, and whether it names an id the file does not hold.
            given = ", ".join(f's."{c.name}" AS "given_{c.name}", '
                              f'({_where(c)}j{at[c.name]}.target_id IS NULL) AS "lacks_{c.name}"' for c in pointing)
            extra = [f'"{kind}_{c.name}"' for c in pointing for kind in ("given", "lacks")]
            mapped = f"WITH r AS (SELECT s.pos, {picked}, {given} {source}) "
            same = " AND ".join(f'd."{c.name}" = r."{c.name}"' for c in self.key)
            self.created[met] = (f"CREATE TEMP TABLE {met} ({typed}, pos INTEGER NOT NULL, {', '.join(extra)}, "
                                 f"PRIMARY KEY ({names}))")
            self.meets = (
                f"{mapped}INSERT OR IGNORE INTO {met} ({names}, pos, {', '.join(extra)}) "
                f"SELECT {names}, pos, {', '.join(extra)} FROM r ORDER BY pos",
                f"{mapped}SELECT r.pos, d.pos, {', '.join('r.' + e for e in extra)}, {', '.join('d.' + e for e in extra)} "
                f"FROM r JOIN {met} AS d ON {same} AND d.pos <> r.pos ORDER BY r.pos LIMIT 1",
                pointing)


def _mapped(column: Column, i: int) -> str:
    """The column's value in the target's terms: a file's id of an entity or topic becomes the target's id of
    the same fact; one the file does not hold stays as it is (a 1.0 file has no topics)."""
    if not column.points_at:
        return f's."{column.name}"'
    target = f"CAST(j{i}.target_id AS TEXT)" if column.type == "text" else f"j{i}.target_id"
    return f'coalesce({target}, s."{column.name}")'


def _as_id(column: Column) -> str:
    """The id a column holds as an integer; links hold topic ids as TEXT, and only '12', not '012' or ' 12',
    names topic 12."""
    value = f's."{column.name}"'
    if column.type == "text":
        return f"CASE WHEN CAST(CAST({value} AS INTEGER) AS TEXT) = {value} THEN CAST({value} AS INTEGER) END"
    return value


def _where(column: Column) -> str:
    return f"{column.where} AND " if column.where else ""    # the only table in the join with such columns
