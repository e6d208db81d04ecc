"""Exporting on two cores: a big table is cut into ranges of rowids; a worker process, reading the same snapshot
of the database, writes out some of them while this process writes out others, and this process puts them in
the file in order. The worker is only a way to be quick: where it cannot start, sees another snapshot, dies or
fails, the ranges it held are done here, as they would have been without it, and a fault in the database is
always raised here (export.py reads the table again as one core does, so the message is the same).

One snapshot: a connection of this process reads PRAGMA data_version before the export's read transaction
starts and again once the worker's has started. The same value both times means that no other connection
committed in between, so both transactions read the same database; a different one, and the worker is let go.
The same database: the worker opens it by its name, which another file may have been renamed over meanwhile
(found by review: a file half from each, exit 0), so the file the name leads to must be one this process has
open before the watching connection is opened, and one the worker has open once its snapshot is taken."""

from __future__ import annotations

import collections
import os
import sqlite3
import stat
from typing import Any, Callable, Iterator

from .database import connect_read_only, database_file
from .formats import Encoded
from .parallel import cores, started, stopped

ENV = "MEMORY_PARALLEL_EXPORT"   # "0": never start a worker; "1": for any table of two rows or more (the tests)
START = 8_000         # rows a table must hold to be spread (the worker, spawned, takes 0.1-0.2 s to be ready)
EARLY = 16 << 20      # bytes of a database whose export starts the worker at once, before its first big table
RANGE = 512           # rows of a range, about (measured: 500 and 1,000 alike; a range of messages is ~600 KB,
                      # within the 1 MiB a pipe to the worker holds)
AHEAD = 2             # ranges given to the worker at once
PENDING = 8           # ranges taken and not yet handed on
HELD = 8 << 20        # bytes of this process's own ranges held while the worker's, before them, is awaited
IOV = 512             # pieces written at once (POSIX promises 16 or more; Linux and macOS take 1,024)
WAIT = 60             # seconds the worker may be silent when it is waited for: then it is lost (found: stopped)

# work(conn, table, fmt, first rowid, last rowid, rows a batch) -> Encoded batches of the rows in that range,
# each one's data in pieces (a list of bytes): export.range_pieces
Work = Callable[..., Iterator[Encoded]]


class Spread:
    """One export's worker: started at once for a big database file, else for the first table big enough."""

    def __init__(self, conn: sqlite3.Connection, work: Work):
        self.work = work
        self.mode = os.environ.get(ENV, "")
        self.process: Any = None
        self.jobs: Any = None
        self.answers: Any = None
        self.ready = False
        self.answered = 0           # ranges the worker did
        self.sent: collections.deque[_Range] = collections.deque()     # ranges with the worker, in order
        self.held = 0               # bytes of batches made ahead of the file, here or by the worker
        self.watch: sqlite3.Connection | None = None
        self.path = ""
        self.file = (0, 0)          # (device, inode) of the database this process reads
        if self.mode == "0" or cores() < 2:
            return
        try:
            self.path = database_file(conn)
            if self.path:           # not a database in memory
                opened = open_files()
                found = os.stat(self.path)
                self.file = (found.st_dev, found.st_ino)
                if opened is None or self.file not in opened:   # the name leads elsewhere now, or cannot be told
                    return
                self.watch = connect_read_only(self.path)
                self.version = self._version()
                if self.mode == "1" or found.st_size >= EARLY:
                    self._start()   # now, to be ready by the first big table
        except (sqlite3.Error, OSError):
            self.close()

    def wanted(self, rows: int) -> bool:
        """Whether a table of `rows` rows is worth cutting into ranges."""
        return self.watch is not None and rows >= (2 if self.mode == "1" else START)

    def close(self) -> None:
        """The worker stopped (it holds nothing to keep: killed, not waited for to finish starting), and the
        watching connection closed."""
        self._stop()

    def batches(self, table: int, fmt: str, ranges: list[tuple[int, int]], rows: int, here: Work
                ) -> Iterator[Encoded]:
        """The Encoded batches of every range, in order: each range done by the worker, or here with
        here(table, fmt, first, last, rows)."""
        job = (table, fmt, rows, here)
        todo = collections.deque(ranges)
        pending: collections.deque[_Range] = collections.deque()      # ranges taken, in the file's order
        building: _Range | None = None      # this process's range made ahead of the file, while the worker's is awaited
        try:
            while todo or pending:
                if todo and self._free():
                    pending.append(_Range(*todo.popleft()))
                    self._send(pending[-1], job)
                    continue
                if self.sent and self.held < HELD and self._answered():     # what the worker sent, kept
                    self._receive(job)
                    continue
                if not pending:
                    pending.append(_Range(*todo.popleft()).start_here(job))
                    continue
                head = pending[0]
                if head.held:
                    batch = head.held.popleft()
                    self.held -= len(batch.data)
                    yield batch
                    continue
                if head.done:
                    pending.popleft()
                    continue
                if not head.away:           # this process's: made as it is written
                    batch = head.step()
                    if batch is not None:
                        yield batch
                    continue
                # The worker's, and nothing of it here yet: a later range is made here meanwhile.
                if self.held < HELD:
                    if building is not None and building.done:
                        building = None
                    if building is None and todo and len(pending) < PENDING:
                        building = _Range(*todo.popleft()).start_here(job)
                        pending.append(building)
                    if building is not None:
                        batch = building.step()
                        if batch is not None:
                            building.held.append(batch)
                            self.held += len(batch.data)
                        continue
                self._receive(job)          # waits for it
        except BaseException:       # a fault or a signal: what the worker holds, or half sent, is not wanted
            self._stop()
            raise
        finally:
            self.held = 0

    # ---- the worker -------------------------------------------------------------------------------------

    def _version(self) -> int:
        assert self.watch is not None
        return self.watch.execute("PRAGMA data_version").fetchall()[0][0]      # all: the read ends with it

    def _free(self) -> bool:
        if self.watch is None:
            return False
        if self.process is None:
            self._start()
            return False
        if not self.ready:
            if self.mode != "1" and not self._answered():      # "1": waited for, so that the tests see it work
                return False
            try:
                kind, files = self.answers.recv() if self.answers.poll(WAIT) else ("lost", ())
                same = kind == "ready" and self.file in files
                self.ready = same and self._version() == self.version
            except (EOFError, OSError, ValueError, sqlite3.Error):
                self.ready = False
            if not self.ready:      # it failed, or another connection committed meanwhile: not the same snapshot
                self._stop()
                return False
        return len(self.sent) < AHEAD

    def _start(self) -> None:
        try:
            # Spawned, not forked: SQLite's state in a forked copy of this process (its locks, its open files)
            # is not to be used again, and the worker opens the same database.
            self.process, self.jobs, self.answers, _ = started(_serve, (self.path, self.work), "memory-exporter",
                                                               "spawn")
        except Exception:        # no processes here (a sandbox, a frozen app): all done here
            self._stop()

    def _send(self, part: _Range, job: tuple) -> None:
        table, fmt, rows, here = job
        part.away = True
        self.sent.append(part)
        try:
            self.jobs.send((table, fmt, part.first, part.last, rows))
        except (OSError, ValueError):
            self._lost(job)

    def _answered(self) -> bool:
        try:
            return self.answers is not None and self.answers.poll()
        except (OSError, ValueError):
            return True         # _receive finds it broken

    def _receive(self, job: tuple) -> None:
        """The worker's next message, about the first range it holds: a batch, kept with the range, or the
        range's end. If the worker is lost, the rest of each range it held is done here."""
        part = self.sent[0]
        if self.answers is not None:
            try:
                if not self.answers.poll(WAIT):
                    raise EOFError      # stopped, or stuck
                message = self.answers.recv()
                if message[0] == "batch":
                    _, count, first, last, size = message
                    batch = Encoded(_read(self.answers.fileno(), size), count, first, last)
                    part.held.append(batch)
                    self.held += len(batch.data)
                    part.first = last + 1
                    return
                if message[0] == "end":
                    part.done = True
                    self.sent.popleft()
                    self.answered += 1
                    return
            except (EOFError, OSError, ValueError):
                pass
        self._lost(job)

    def _lost(self, job: tuple) -> None:
        """The worker failed: it is stopped, and the rest of each range it held is done here."""
        sent = list(self.sent)
        self._stop()
        for part in sent:
            part.away = False
            part.start_here(job)

    def _stop(self) -> None:
        if self.jobs is not None:
            stopped(self.process, self.jobs, self.answers)
        self.process = self.jobs = self.answers = None
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.ready = False
        self.sent.clear()


class _Range:
    """A range of rowids: with the worker (away), or made here, a batch at a time; the batches come ahead of
    the file are held."""

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.away = False
        self.made: Iterator[Encoded] = iter(())
        self.held: collections.deque[Encoded] = collections.deque()
        self.done = False

    def start_here(self, job: tuple) -> _Range:
        """Made here from now on: the rows from `first` (past what the worker sent) to `last`."""
        table, fmt, rows, here = job
        if self.first <= self.last:
            self.made = here(table, fmt, self.first, self.last, rows)
        return self

    def step(self) -> Encoded | None:
        batch = next(self.made, None)
        self.done = batch is None
        return batch


def open_files() -> set[tuple[int, int]] | None:
    """(device, inode) of each regular file this process has open; None where its descriptors cannot be listed."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            descriptors = os.listdir(folder)
        except OSError:
            continue
        found = set()
        for name in descriptors:
            try:
                status = os.fstat(int(name))
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(status.st_mode):
                found.add((status.st_dev, status.st_ino))
        return found
    return None


# A batch's bytes go through the pipe as the worker encoded them, record by record, after the message that
# gives their length; they are read here into one buffer. Found by review: with rows of 2-6 MB, joining them
# there and multiprocessing's recv_bytes here (which gathers a message in a BytesIO and copies it out) held
# 1.7 times what one core holds.

def _write(fd: int, pieces: list[bytes]) -> None:
    views = [memoryview(piece) for piece in pieces]
    at = 0
    while at < len(views):
        written = os.writev(fd, views[at:at + IOV])
        while written:      # all of them, but where a signal cut the write short
            if written >= len(views[at]):
                written -= len(views[at])
                at += 1
            else:
                views[at], written = views[at][written:], 0


def _read(fd: int, size: int) -> bytearray:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        read = os.readv(fd, [view[got:]])
        if read == 0:
            raise EOFError
        got += read
    return data


def _serve(jobs: Any, answers: Any, path: str, work: Work) -> None:
    """The worker: a read transaction on the database at `path`, then each range in, its batches out."""
    try:
        conn = connect_read_only(path)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()      # the snapshot is taken here
        answers.send(("ready", open_files() or set()))
        while True:
            try:
                table, fmt, first, last, rows = jobs.recv()
            except EOFError:
                return
            for pieces, count, low, high in work(conn, table, fmt, first, last, rows):
                answers.send(("batch", count, low, high, sum(map(len, pieces))))
                _write(answers.fileno(), pieces)
            answers.send(("end",))
    except (EOFError, OSError):         # the exporter is gone, or its pipe: nothing to answer
        return
    except Exception as exc:            # a fault in the database, or of ours: the range is done there
        try:
            answers.send(("failed", repr(exc)))
        except (OSError, ValueError):
            pass
