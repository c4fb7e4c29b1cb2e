"""Clear endings of a run: every expected way a run stops becomes one line and a documented exit status.

A run stops early for a handful of reasons outside the code's control. Each becomes an `Ending`:
the problem in words, how many work units are saved (they are reused by the next run, which
therefore resumes), and the exit status of the `kernelcert` command:

| status | ending |
|---|---|
| 0 | finished |
| 1 | an unexpected error (a bug: the traceback is printed) |
| 2 | bad config, bad arguments or missing data (nothing computed) |
| 3 | the run directory is locked by another client (`kernelcert.runlock`) |
| 4 | a worker's environment differs from the client's (`kernelcert.provenance`) |
| 5 | disk full (ENOSPC, EDQUOT) |
| 6 | permission denied (EACCES, EPERM, EROFS) |
| 7 | out of memory (this process, or a worker killed for memory) |
| 8 | the Dask cluster was lost (scheduler gone, every worker gone, a unit killing its workers) |
| 130 | interrupted (Ctrl-C / SIGINT; SIGTERM too) |

`clear_ending(total, saved, run_dir)` wraps the part of a run that computes and writes units and
turns those exceptions into `RunStopped` (an Exception) or `RunInterrupted` (a KeyboardInterrupt,
so that callers that stop on Ctrl-C still do), both carrying the `Ending`.

`InterruptGuard` makes SIGINT always stop a run: its handler records the signal and raises
KeyboardInterrupt, except inside a garbage-collector callback or a `__del__` method (where Python
would only print and discard it); `check()` (called by the run between units) raises it then, and
also if a KeyboardInterrupt was swallowed on the way.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import signal
import threading
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Union

# what signal.signal accepts and returns: a handler, SIG_DFL / SIG_IGN, or None (not set from Python)
SignalHandler = Union[Callable[[int, Union[FrameType, None]], Any], int, signal.Handlers, None]


class ExitStatus(IntEnum):
    """Exit statuses of the `kernelcert` command (see the table in the module docstring)."""

    OK = 0
    ERROR = 1
    CONFIG = 2
    LOCKED = 3
    ENVIRONMENT = 4
    DISK_FULL = 5
    PERMISSION = 6
    MEMORY = 7
    CLUSTER = 8
    INTERRUPTED = 130


class ClusterLost(RuntimeError):
    """The execution backend lost its scheduler or all of its workers."""


class WorkerKilled(RuntimeError):
    """Workers died while running one unit (`unit`); `for_memory` when they were killed for memory.

    `needed_mb`: an estimate of the unit's memory, `limit_mb`: the worker's memory limit (None when
    unknown)."""

    def __init__(self, message: str, *, unit: str, for_memory: bool, needed_mb: float | None = None,
                 limit_mb: float | None = None) -> None:
        super().__init__(message)
        self.unit, self.for_memory, self.needed_mb, self.limit_mb = unit, for_memory, needed_mb, limit_mb


class Interrupted(KeyboardInterrupt):
    """Raised by `InterruptGuard`'s handler; `signum` is the signal received."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Ending:
    """Why a run stopped early: `problem` (words), exit `status`, `saved` of `total` units on disk."""

    problem: str
    status: ExitStatus
    saved: int
    total: int
    run_dir: str

    def message(self) -> str:
        """One line: the problem, the units saved, that a rerun resumes, and the exit status."""
        return (f"stopped: {self.problem}; {self.saved} of {self.total} work units are saved in {self.run_dir}; "
                f"rerun the same command to resume (exit status {int(self.status)})")


class RunStopped(RuntimeError):
    """A run ended early for a known reason; `ending` says which. str() is the one-line message."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.message())
        self.ending = ending


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM; `ending` says how much is saved. str() is the one-line message."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.message())
        self.ending = ending


DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def classify(exc: BaseException) -> tuple[str, ExitStatus] | None:
    """(problem in words, exit status) for the expected ways a run stops, None for anything else."""
    if isinstance(exc, Interrupted):
        name = signal.Signals(exc.signum).name
        return (f"interrupted by {name}" + (" (Ctrl-C)" if exc.signum == signal.SIGINT else ""),
                ExitStatus.INTERRUPTED)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)", ExitStatus.INTERRUPTED
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS | PERMISSION_ERRNOS:
        where = f" while writing {exc.filename}" if exc.filename else ""
        if exc.errno in DISK_FULL_ERRNOS:
            return f"disk full{where} ({exc.strerror or 'no space left on device'})", ExitStatus.DISK_FULL
        return f"permission denied{where} ({exc.strerror or 'permission denied'})", ExitStatus.PERMISSION
    if isinstance(exc, MemoryError):
        detail = f": {exc}" if str(exc) else ""
        return f"out of memory in the client process{detail}", ExitStatus.MEMORY
    if isinstance(exc, WorkerKilled):
        return str(exc), ExitStatus.MEMORY if exc.for_memory else ExitStatus.CLUSTER
    if isinstance(exc, ClusterLost):
        return str(exc), ExitStatus.CLUSTER
    return None


@contextlib.contextmanager
def clear_ending(total: int, saved: Callable[[], int], run_dir: str | Path) -> Iterator[None]:
    """Convert the expected stops inside the block into `RunStopped` / `RunInterrupted`.

    `saved()` is called after the stop to count the units on disk; anything unexpected propagates
    unchanged (with its traceback).
    """
    try:
        yield
    except BaseException as exc:
        known = classify(exc)
        if known is None:
            raise
        problem, status = known
        problem = " ".join(problem.split())  # one line, whatever the underlying message held
        ending = Ending(problem=problem, status=status, saved=int(saved()), total=int(total), run_dir=str(run_dir))
        if status == ExitStatus.INTERRUPTED:
            raise RunInterrupted(ending) from exc
        raise RunStopped(ending) from exc


def _in_finalizer(frame: FrameType | None) -> bool:
    """True when `frame` runs inside a garbage-collector callback or a `__del__` method, where an
    exception is printed and discarded instead of propagating."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code in callbacks:
            return True
        frame = frame.f_back
    return False


class InterruptGuard:
    """SIGINT and SIGTERM always stop the run (a context manager; a no-op off the main thread).

    The handler records the signal and raises `Interrupted`; `check()` raises it again if it was
    recorded but swallowed on the way (the run calls it between units). The previous handlers are
    restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, SignalHandler] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if _in_finalizer(frame):  # raised there it would only be printed ("Exception ignored in ...")
            return  # `check()` raises it at the next unit boundary
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise `Interrupted` if a signal arrived (whether or not its first raise got through)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


__all__ = ["ExitStatus", "Ending", "RunStopped", "RunInterrupted", "ClusterLost", "WorkerKilled", "Interrupted",
           "classify", "clear_ending", "InterruptGuard"]
