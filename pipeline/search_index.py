"""The messages search index built on the second core: while this process inserts rows into empty tables, a
worker process indexes each batch of message texts in a scratch database of its own; at the end the index's
rows (FTS5's shadow tables, as `.dump` writes and restores them) go into the import's transaction in place of
a rebuild here, which was a third of an import. Only a way to be quick: wherever it cannot be sure to give
what a rebuild gives (the table is not memory-nexus's own, a text is not plain TEXT, the worker failed or
died), it stops and the index is rebuilt here as before."""

from __future__ import annotations

import os
import pickle
import queue
import sqlite3
import threading
from typing import Any, Sequence

from .database import schema_objects
from .parallel import cores, started, stopped
from .tables import Table

ENV = "MEMORY_PARALLEL_INDEX"   # "0": always rebuild here; "1": a worker from the first batch (the tests use it)
START = 8 << 20                 # message text (characters, or UTF-8 bytes, records.Checked) inserted before a
                                # worker pays for itself
SIDE_CACHE_KIB = 16 * 1024      # the scratch database's page cache: SQLite's 2 MiB made the build a third slower
CHUNK = 250                     # rows per message, either way: about 250 KB of texts, or 1 MB of the index
LONGEST = START                 # a longer text is indexed by a rebuild here. Sent, it is held again
                                # pickled, in the worker and in the index sent back, with nothing to overlap: one
                                # message of 10 / 100 MB took 0.61 s, 120 MB / 4.5 s, 900 MB, rebuilt here 0.48 s,
                                # 89 MB / 3.2 s, 703 MB
LOCKED = 2                      # seconds to wait for the queue's lock when stopping: it is only ever held briefly
QUEUED = 2                      # messages waiting to be sent, pickled (more compact than str objects), while
                                # the worker indexes the last: memory is a few of them
INDEX, TABLE, COLUMN = "messages_fts", "messages_meta", "content"
SETTINGS = {"version": 4}             # the index's settings, as memory-nexus leaves them ...
IGNORED_SETTINGS = {"automerge"}      # ... and one that only says how later writes merge: the build runs without
SHADOWS = {"messages_fts_data": ("id", "block"), "messages_fts_idx": ("segid", "term", "pgno"),
           "messages_fts_docsize": ("id", "sz")}


class SideIndex:
    """The rows inserted into `TABLE` are handed to add(), batch by batch, in the transaction that inserts
    them; written() then puts the index into the database, or says it has none (the caller rebuilds)."""

    def __init__(self, conn: sqlite3.Connection, table: Table, minor: int):
        self.conn = conn
        columns = [c.name for c in table.columns_in(minor)]
        self.rowid_at = columns.index("rowid") if "rowid" in columns else None
        self.content_at = columns.index(COLUMN)
        self.mode = os.environ.get(ENV, "")
        self.text = 0               # characters of message text inserted before the worker started
        self.sent = 0               # rows sent to the worker
        self.process: Any = None
        self.jobs: Any = None
        self.answers: Any = None
        self.queue: queue.Queue = queue.Queue(QUEUED)
        self.sender: threading.Thread | None = None     # sends what is queued, so inserting does not wait
        self.gone = False                               # the worker failed or was stopped: nothing more is sent
        self.off = self.mode == "0" or cores() < 2 or not _as_memory_nexus_makes_it(conn)

    def __enter__(self) -> SideIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, batch: Sequence[Sequence[Any]]) -> None:
        """The rows of `batch` were just inserted, every one (a load into empty tables inserts all or fails)."""
        if self.off:
            return
        contents = [row[self.content_at] for row in batch]
        text = bytes if self.content_at in getattr(batch, "encoded", ()) else str     # (records.Checked)
        lengths = [len(content) for content in contents if type(content) is text]
        if len(lengths) < len(contents) or lengths and max(lengths) > LONGEST:
            self.stop()         # not all text (a typed value), or one too long to be worth sending
            return
        if self.process is None:
            self.text += sum(lengths)
            if self.mode != "1" and self.text < START:
                return
            self._start()       # with every row so far, this batch's included, read back from the table
            return
        if self.rowid_at is not None:
            rowids = [row[self.rowid_at] for row in batch]
        else:           # given by AUTOINCREMENT, one after the other, in one transaction
            last = self.conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            rowids = list(range(last - len(batch) + 1, last + 1))
        for at in range(0, len(rowids), CHUNK):
            self._send(rowids[at:at + CHUNK], contents[at:at + CHUNK])

    def written(self) -> bool:
        """Put the worker's index into the database in place of what the index holds: True when done; False
        when there is none (the caller rebuilds the index)."""
        if self.process is None:
            return False
        try:
            if self._copied():
                return True
        except (EOFError, OSError, ValueError):     # it died
            pass
        finally:
            self.stop()
        # None or part of an index was put in, and the index's own records may be gone: FTS5's delete-all
        # makes it a sound empty index again (without them even its settings cannot be written).
        self.conn.execute(f"INSERT INTO {INDEX}({INDEX}) VALUES ('delete-all')")
        return False

    def _copied(self) -> bool:
        self.queue.put(None)
        self.sender.join()
        if self.gone:
            return False
        self.jobs.send(None)                     # the end of the rows: the worker answers
        # Through FTS5 first, so that this connection's FTS5 holds nothing of its own (no pending terms, no
        # totals, no cached structure) to write over what is put into its tables next.
        self.conn.execute(f"INSERT INTO {INDEX}({INDEX}) VALUES ('delete-all')")
        for name in SHADOWS:
            self.conn.execute(f"DELETE FROM {name}")
        while True:
            kind, body = self.answers.recv()
            if kind not in SHADOWS:
                rows = self.conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
                return kind == "done" and body == self.sent == rows
            columns = SHADOWS[kind]
            self.conn.executemany(f"INSERT INTO {kind} ({', '.join(columns)}) VALUES "
                                  f"({', '.join('?' * len(columns))})", body)

    def stop(self) -> None:
        """The worker stopped, if there is one: killed first, so that a send under way fails at once."""
        self.off = True
        if self.process is None:
            return
        self.gone = True
        self.process.kill()
        if self.sender is not None and self.sender.is_alive():     # None: a signal came before it was made
            if not self.queue.mutex.acquire(timeout=LOCKED):
                # A signal's exception came in a put() here between its taking the queue's lock and the block
                # that lets it go: the lock is held for ever, so neither this thread can put the end nor the
                # sender take it (found: an import that never ended after SIGTERM). The sender may be in a send,
                # so the pipe to the worker is left open (closed under it, its number could be another file's)
                # till this process ends.
                stopped(self.process, self.answers)
                self.process = None
                return
            self.queue.mutex.release()
            self.queue.put(None)
            self.sender.join()
        stopped(self.process, self.jobs, self.answers)
        self.process = None

    def _start(self) -> None:
        # Spawned, not forked: a fork would count the pages of this process, by now 50 MB or so, as its own.
        args = (schema_objects()[INDEX][1], SIDE_CACHE_KIB)
        try:
            self.process, self.jobs, self.answers, _ = started(_build, args, "memory-indexer", "spawn")
        except Exception:        # no processes here (a sandbox, a frozen app): rebuilt here
            self.off = True
            return
        self.sender = threading.Thread(target=self._sending, name="memory-indexer-sender", daemon=True)
        self.sender.start()
        # Read as bytes: TEXT that is not UTF-8 would raise in the sqlite3 module; _send stops on it, as on a BLOB.
        factory, self.conn.text_factory = self.conn.text_factory, bytes
        try:
            rows = self.conn.execute(f"SELECT rowid, {COLUMN}, typeof({COLUMN}) FROM {TABLE} ORDER BY rowid")
            while (chunk := rows.fetchmany(CHUNK)) and not self.off:
                contents = [text if kind == b"text" and _utf8(text) else None for _, text, kind in chunk]
                self._send([rowid for rowid, _, _ in chunk], contents)
        finally:
            self.conn.text_factory = factory

    def _send(self, rowids: list, contents: list) -> None:
        # A rowid that is not an integer, or a text that is none (None for a typed value, TEXT that is not UTF-8):
        # what a rebuild makes of it is not sure to be what an insert here makes of it. A text is str or its
        # UTF-8 bytes.
        if self.gone or not (all(type(r) is int for r in rowids) and all(type(c) in (str, bytes) for c in contents)):
            self.stop()
            return
        self.queue.put(pickle.dumps((rowids, contents), pickle.HIGHEST_PROTOCOL))
        self.sent += len(rowids)

    def _sending(self) -> None:
        while (job := self.queue.get()) is not None:
            if not self.gone:
                try:
                    self.jobs.send_bytes(job)
                except (OSError, ValueError):
                    self.gone = True


def _utf8(text: bytes) -> bool:
    try:
        text.decode()
    except UnicodeDecodeError:
        return False
    return True


def _as_memory_nexus_makes_it(conn: sqlite3.Connection) -> bool:
    """Whether a rebuild would index what the rows were inserted with, as the worker does: the index and the
    messages table are memory-nexus's own (a NUMERIC content column stores "1e5" as 100000), no trigger but
    its own (one could rewrite a message's text, from any table), and no setting that changes how the index
    is built (pgsz, prefix, ...)."""
    ours = schema_objects()
    stored = {name: (kind, sql) for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")}
    if any(stored.get(name) != ours[name] for name in (INDEX, TABLE)):
        return False
    if any(kind == "trigger" and ours.get(name) != (kind, sql) for name, (kind, sql) in stored.items()):
        return False
    settings = dict(conn.execute(f"SELECT k, v FROM {INDEX}_config"))
    return {k: v for k, v in settings.items() if k not in IGNORED_SETTINGS} == SETTINGS


def _build(jobs: Any, answers: Any, sql: str, cache_kib: int) -> None:
    """The worker: (rowids, texts) in, till None; then the index's shadow rows out, and ("done", rows)."""
    try:
        side = sqlite3.connect("", isolation_level=None)    # on disk, unlinked as opened, private (0600)
        side.execute(f"PRAGMA cache_size = -{cache_kib}")
        side.execute("PRAGMA journal_mode = OFF")           # scratch: nothing to roll back to
        side.execute(sql)
        side.execute("BEGIN")
        # As a rebuild here runs (database.derived_rebuilt): a fifth less time; crisis merges still bound it.
        side.execute(f"INSERT INTO {INDEX}({INDEX}, rank) VALUES ('automerge', 0)")
        indexed = 0
        while (job := jobs.recv()) is not None:
            rowids, contents = job
            side.executemany(f"INSERT INTO {INDEX}(rowid, {COLUMN}) VALUES (?, CAST(? AS TEXT))",    # (bytes: UTF-8)
                             zip(rowids, contents))
            indexed += len(rowids)
        side.execute("COMMIT")          # FTS5 writes its pending terms and totals at commit
        for name, columns in SHADOWS.items():
            rows = side.execute(f"SELECT {', '.join(columns)} FROM {name}")
            while chunk := rows.fetchmany(CHUNK):
                answers.send((name, chunk))
        answers.send(("done", indexed))
    except (EOFError, OSError):         # the importer is gone, or its pipe: nothing to answer
        return
    except Exception as exc:            # a fault of ours (or the scratch disk full): rebuilt there
        try:
            answers.send(("failed", repr(exc)))
        except (OSError, ValueError):
            pass
