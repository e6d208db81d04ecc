"""Reading on two cores: while this process inserts rows (or parses runs of its own), a worker process parses
and checks the runs of lines the fast reader hands it, ahead of it; what comes back is handed on in the
file's order. The worker is only a way to be quick: whatever goes wrong with it (it cannot start, it dies,
it fails), the runs it held are parsed here, as they would have been without it, and reading goes on."""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import signal
import threading
from typing import Any, Callable, Iterator

from . import portable

ENV = "MEMORY_PARALLEL_PARSE"   # "0": never start a worker; "1": from the first run (the tests use it)
START = 4 << 20                 # bytes read before a worker is started (a fork, 9-11 ms here): not for a small file
AHEAD = 2                       # runs the worker may hold at once, where the pipes hold PIPE (else one)
PIPE = 1 << 20                  # bytes a pipe to the worker holds, where it can be made to: AHEAD runs
PENDING = 6                     # runs read and not yet handed on: parsed here while the worker is busy
_AWAY = object()

# work(layout, key, minor, keep, run) -> None (not a run as memory writes it: read it line by line), a
# list of records, records.Checked (checked there), or records.Counted (checked, and only their count kept).
Work = Callable[..., Any]


class Parser:
    """One file's runs: parsed here, or by the worker once the file has proved long enough to pay for one."""

    def __init__(self, work: Work):
        self.work = work
        self.keep = True            # records are wanted (an import), not only their count (validate)
        self.minor = 0              # the file's version, 1.<minor>, once its header is read
        self.mode = os.environ.get(ENV, "")
        self.read = 0
        self.connection: Any = None     # the worker's answers; self.jobs, the runs sent to it
        self.jobs: Any = None
        self.process: Any = None
        self.away = 0               # runs sent to the worker and not yet received
        self.ahead = 1              # runs it may hold: AHEAD once its pipes are known to hold them
        self.answered = 0           # runs the worker parsed, and that were handed on
        self.broken = self.mode == "0" or cores() < 2

    def parsed(self, next_run: Callable[[], bytes], unread: Callable[[bytes], None], layout: str, key: str
               ) -> Iterator[tuple[bytes, Any]]:
        """(run, what work made of it) for each run `next_run` takes, in order, till it gives b"" or a run is
        not as memory writes it: that one is yielded with None after it and every run taken after it are
        given back with `unread`, so the reader stands at its start."""
        job = (layout, key, self.minor)
        pending: collections.deque = collections.deque()     # [run, outcome or _AWAY], in the file's order
        more = True
        try:
            while more or pending:
                # Hand on the runs that are ready, in order; and wait for the worker where this process should
                # not parse: while it holds all the runs it may of an import (this process has the database's
                # work), or when PENDING runs are read.
                while pending and (not more or pending[0][1] is not _AWAY or self._ready() or len(pending) > PENDING
                                   or self.keep and self.away >= self.ahead):
                    run, outcome = pending.popleft()
                    if outcome is _AWAY:
                        outcome = self._received(job, run)
                    if outcome is None:
                        unread(run + b"".join(r for r, _ in pending))
                        self._drop(sum(o is _AWAY for _, o in pending))
                        pending.clear()
                        yield run, None
                        return
                    yield run, outcome
                if more:
                    run = next_run()
                    if run:
                        self.read += len(run)
                        if self._free():
                            self._send(job, run)
                            pending.append([run, _AWAY])
                        else:        # parsed here: no worker (yet), or this process's share of a validation
                            pending.append([run, self.work(*job, self.keep, run)])
                    else:
                        more = False
        except GeneratorExit:     # reading stopped here: what the worker still holds is not wanted
            if self.away:
                self._lost()
            raise
        except BaseException:     # a fault or a signal: the pipe may hold half a message
            self._lost()
            raise

    def close(self) -> None:
        """Let the worker go: it ends when its end of the pipe is closed."""
        if self.connection is not None:
            self.jobs.close()
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.join(timeout=5)
            self.process = None
        self.broken = True

    # ---- the worker -------------------------------------------------------------------------------------

    def _free(self) -> bool:
        if self.broken or self.away >= self.ahead:
            return False
        if self.connection is None:
            if self.mode != "1" and self.read < START:
                return False
            self._start()
        return not self.broken

    def _start(self) -> None:
        try:
            self.process, self.jobs, self.connection, roomy = started(_serve, (self.work,), "memory-parser")
        except Exception:        # no processes here (a sandbox, a frozen app): parse here
            self.broken = True
            return
        # A second run is sent while the worker may be sending the first's answer: only when the pipe holds
        # it, or each waits for the other.
        self.ahead = AHEAD if roomy else 1

    def _send(self, job: tuple, run: bytes) -> None:
        try:
            # The run as it is, after what to do with it: pickled with it, it would be copied twice more on
            # each side (measured: 0.1-0.15 s of CPU for 440 MB, the receiving worker's most).
            self.jobs.send((*job, self.keep))
            self.jobs.send_bytes(run)
            self.away += 1
        except (OSError, ValueError):
            self._lost()

    def _ready(self) -> bool:
        try:
            return self.connection is not None and self.connection.poll()
        except (OSError, ValueError):
            return True         # _received finds it broken and parses here

    def _received(self, job: tuple, run: bytes) -> Any:
        if self.connection is not None:
            try:
                status, outcome = self.connection.recv()
                self.away -= 1
                if status == "done":
                    self.answered += 1
                    return outcome
            except (EOFError, OSError, ValueError):
                pass
            self._lost()
        return self.work(*job, self.keep, run)

    def _drop(self, count: int) -> None:
        """Receive and drop the outcomes of `count` runs given back to the reader."""
        for _ in range(count):
            if self.connection is None:
                return
            try:
                self.connection.recv()
                self.away -= 1
            except (EOFError, OSError, ValueError):
                self._lost()

    def _lost(self) -> None:
        """The worker failed, or its work is not wanted: it is stopped, and every run still with it is parsed
        here as it comes up."""
        if self.connection is not None:
            stopped(self.process, self.jobs, self.connection)
        self.connection = self.process = None
        self.broken = True
        self.away = 0


# ---- a worker process, for any role that wants one ---------------------------------------------------------

def cores() -> int:
    """The CPUs this process may run on: under taskset or a container's cpuset, fewer than the machine has
    (found by review: pinned to one, a worker made an import a fifth slower)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # macOS, Windows
        return os.cpu_count() or 1


def started(serve: Callable[..., None], args: tuple, name: str, method: str | None = None
            ) -> tuple[Any, Any, Any, bool]:
    """A worker process running serve(jobs, answers, *args): (the process, the pipe end that sends it jobs,
    the one its answers come from, whether both pipes hold PIPE bytes). `method`: multiprocessing's start
    method, if not the system's own. Raises what starting raises."""
    context = multiprocessing.get_context(method)
    their_jobs, jobs = context.Pipe(duplex=False)
    answers, their_answers = context.Pipe(duplex=False)
    roomy = _roomy(jobs) and _roomy(their_answers)
    forked = context.get_start_method() == "fork"
    process = None
    try:
        # A signal's exception raised midway through start() broke multiprocessing's bookkeeping (a Finalize
        # made but for its key: "Exception ignored ... AttributeError" once the run had ended; seen in CI).
        with portable.signals_held(), _born_blocking_ctrl_c(context) as mask:
            process = context.Process(target=_worker, args=(serve, their_jobs, their_answers, forked, mask, *args),
                                      daemon=True, name=name)
            process.start()
    except BaseException:
        for end in (their_jobs, jobs, answers, their_answers):
            end.close()
        if process is not None and process.pid is not None:      # started, then a signal held meanwhile came
            stopped(process)
        raise
    their_jobs.close()
    their_answers.close()
    return process, jobs, answers, roomy


def stopped(process: Any, *connections: Any) -> None:
    """The worker killed, and waited for, its pipes closed: for when its work is not wanted or it failed."""
    for connection in connections:
        connection.close()
    if process is not None:
        process.kill()
        process.join()


@contextlib.contextmanager
def _born_blocking_ctrl_c(context: Any) -> Iterator[set[int] | None]:
    """For the block (a worker's start): SIGINT blocked in this thread; gives the mask it had before, for the worker to
    set back (None where nothing was blocked: not the main thread, or no signal masks). Ctrl-C reaches the whole
    process group, the worker too, which ignores it (this process unwinds), but only once _worker runs: a spawned
    worker first starts Python and imports this package again (0.2 s), and a Ctrl-C then printed its
    KeyboardInterrupt traceback (found by review). The mask goes through fork and exec: the worker is born with
    SIGINT blocked, one that comes meanwhile waits, and _worker, which ignores SIGINT (dropping it) before it sets
    the parent's mask back, never sees it. Blocked, not ignored here: setting SIG_IGN drops a pending one, another
    thread (the indexer's sender) takes one the main thread blocks and would drop it, and macOS drops an ignored
    signal even blocked; this process's handler (signals_held's recorder) takes it when the mask is put back.
    Starting the resource tracker unblocks SIGINT: it is started first."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield None
        return
    if context.get_start_method() != "fork":
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        yield before
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _worker(serve: Callable[..., None], jobs: Any, answers: Any, forked: bool, mask: set[int] | None, *args: Any
            ) -> None:
    if forked:      # it holds every file the parent had open: the parent's ends of its own pipes (which would
        keep = sorted({jobs.fileno(), answers.fileno()})     # never end), another worker's, the database
        for low, high in zip([3] + [fd + 1 for fd in keep], keep + [os.sysconf("SC_OPEN_MAX")]):
            os.closerange(low, high)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C reaches the whole group: the parent unwinds
    for name in ("SIGTERM", "SIGHUP", "SIGPIPE"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)    # the parent's, less what it held as this started
    serve(jobs, answers, *args)


def _serve(jobs: Any, answers: Any, work: Work) -> None:
    """The parsing worker: a run in (what to do with it, then its bytes), what `work` made of it out, till the
    reader closes its end of the pipe."""
    while True:
        try:
            job = jobs.recv()
            run = jobs.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            answer = ("done", work(*job, run))
        except Exception as exc:       # a fault of ours: the reader parses the run itself
            answer = ("failed", repr(exc))
        try:
            answers.send(answer)
        except (OSError, ValueError):
            return


def _roomy(connection: Any) -> bool:
    """Whether the pipe now holds PIPE bytes (Linux lets it be made so, up to /proc/sys/fs/pipe-max-size), so
    that a run can be sent while the worker is busy: orjson holds the GIL while it parses, so a thread in the
    worker could not take runs in meanwhile. Elsewhere a pipe holds 64 KiB or so, and one run at a time is sent."""
    try:
        import fcntl
        return fcntl.fcntl(connection.fileno(), getattr(fcntl, "F_SETPIPE_SZ"), PIPE) >= PIPE
    except (ImportError, AttributeError, OSError):
        return False
