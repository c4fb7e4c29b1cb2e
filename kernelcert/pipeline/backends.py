"""Execution backends for the certification run: in-process (default) or Dask.

A backend maps a module-level function `fn(task, shared)` over work units and yields
`(task, result)` pairs as they finish (any order). The work unit of `kernelcert.pipeline` is one
partition (its Gram, its learners, its per-test certificates); the caller writes each result to
disk as soon as it arrives, so results do not accumulate in memory and a killed run loses only
the units in flight. The aggregation is mapped the same way, one block of test points of one
ensemble per task. Tasks may come from a generator: the Dask backend keeps only a bounded number
in flight.

- `InProcessBackend`: runs the units one after the other in this process.
- `DaskBackend`: a `dask.distributed.LocalCluster` with `n_workers` worker processes
  (`threads_per_worker=1`), or an existing scheduler (`address="tcp://host:port"`; its workers
  must have kernelcert installed). `shared` is scattered once to every worker (broadcast); a run
  survives lost workers and ends with a clear error when it cannot (`kernelcert.cluster`).

`prepare(provenance)` runs before the units: it resets the peak-memory mark of every process that
will compute units (so a run reports its own peak) and, on Dask, refuses workers whose environment
differs from the client's (`kernelcert.provenance`).

The unit computation is deterministic given its inputs, so every backend yields the same arrays,
bit for bit.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

from ..cluster import check_workers, local_cluster, quiet_reconnection, reset_worker_peaks, resilient_map
from ..procmem import reset_peak_rss
from ..provenance import Provenance

if TYPE_CHECKING:  # Dask is imported where it is used (about a second that in-process runs do not need)
    from distributed import Client, LocalCluster

logger = logging.getLogger("kernelcert.pipeline")


class ExecutionSettings(Protocol):
    """What `make_backend` reads of an `[execution]` config section (`schema.ExecutionConfig`)."""

    @property
    def backend(self) -> str: ...

    @property
    def workers(self) -> int: ...

    @property
    def scheduler(self) -> str | None: ...


class Backend(abc.ABC):
    """Maps `fn(task, shared)` over tasks; use as a context manager or call `close()`."""

    name: str = "backend"
    in_process: bool = False

    @abc.abstractmethod
    def map(self, fn: Callable[[Any, Any], Any], tasks: Iterable[Any], shared: Any,
            max_in_flight: int | None = None, unit_memory_mb: Callable[[Any], float] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """Yield (task, fn(task, shared)) for every task (a list or a generator), in completion order.
        `unit_memory_mb(task)`: an estimate of a task's memory, named when a task kills its workers."""

    @abc.abstractmethod
    def prepare(self, provenance: Provenance, largest_unit_mb: float | None = None) -> None:
        """Before a run's units: reset peak-memory marks; refuse workers unlike `provenance`.
        `largest_unit_mb`: the memory the largest unit to compute needs (named if workers die for memory)."""

    def close(self) -> None:
        """Release workers and connections (idempotent)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description for run summaries."""
        return {"name": self.name}

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessBackend(Backend):
    """Runs every task sequentially in the calling process (the aggregation stage runs its blocks on
    `[execution] workers` threads itself: `pipeline.aggregate.aggregation_threads`)."""

    name = "inprocess"
    in_process = True

    def map(self, fn: Callable[[Any, Any], Any], tasks: Iterable[Any], shared: Any,
            max_in_flight: int | None = None, unit_memory_mb: Callable[[Any], float] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        for task in tasks:
            yield task, fn(task, shared)

    def prepare(self, provenance: Provenance, largest_unit_mb: float | None = None) -> None:
        reset_peak_rss()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": 1}


class DaskBackend(Backend):
    """Dask distributed: a LocalCluster of `n_workers` processes, or an existing scheduler `address`.

    `threads_per_worker=1` by default, so each worker process computes one unit at a time (the
    kernels and BLAS inside a unit use their own threads). `memory_limit` is passed to the
    LocalCluster ("auto": total memory / n_workers; its workers start with `cluster.WORKER_ENVIRON`);
    `connect_timeout` bounds the wait for a scheduler.
    """

    name = "dask"

    def __init__(self, address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
                 memory_limit: str | int = "auto", connect_timeout: str = "20s") -> None:
        try:
            from dask.distributed import Client
        except ImportError as exc:  # pragma: no cover - dask is a declared dependency
            raise ValueError("the Dask backends need dask[distributed] installed") from exc
        if address is None:
            if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
                raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
            if (isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int)
                    or threads_per_worker < 1):
                raise ValueError(f"threads_per_worker must be a positive integer, got {threads_per_worker!r}")
        self.address = address
        self._tag = uuid.uuid4().hex[:8]
        self._cluster: LocalCluster | None = None
        self._client: Client | None = None
        self._quiet = contextlib.ExitStack()  # Dask's log of a lost scheduler, while this backend is open
        if address is None:
            self._cluster = local_cluster(n_workers, threads_per_worker, memory_limit)
            self._client = Client(self._cluster)
            self.kind = "dask-local"
        else:
            if not isinstance(address, str) or not address:
                raise ValueError(f"scheduler address must be a string like 'tcp://host:8786', got {address!r}")
            try:
                self._client = Client(address, timeout=connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"cannot connect to the Dask scheduler at {address!r}: {exc}") from None
            self.kind = "dask"
        self._quiet.enter_context(quiet_reconnection())  # a lost scheduler ends the run in one line

    @property
    def client(self) -> Client:
        """The connected Dask client (RuntimeError once closed)."""
        if self._client is None:
            raise RuntimeError("this Dask backend is closed")
        return self._client

    def n_workers(self) -> int:
        """Number of workers the scheduler knows now."""
        return len(self.client.scheduler_info().get("workers", {}))

    def map(self, fn: Callable[[Any, Any], Any], tasks: Iterable[Any], shared: Any,
            max_in_flight: int | None = None, unit_memory_mb: Callable[[Any], float] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """Submit tasks lazily, at most `max_in_flight` at a time (default 2 per worker + 1), so that a
        generator of tasks is never materialised; yields (task, result) in completion order
        (`kernelcert.cluster.resilient_map`: lost workers survived, clear errors otherwise)."""
        limit = max_in_flight if max_in_flight is not None else 2 * max(1, self.n_workers()) + 1
        yield from resilient_map(self.client, fn, tasks, shared, max_in_flight=limit, tag=self._tag,
                                 unit_memory_mb=unit_memory_mb)

    def prepare(self, provenance: Provenance, largest_unit_mb: float | None = None) -> None:
        check_workers(self.client, provenance, largest_unit_mb)
        reset_worker_peaks(self.client)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.kind,
                                "address": getattr(self._client.scheduler, "address", None) if self._client else None}
        try:
            info["workers"] = self.n_workers()
        except Exception:  # noqa: BLE001 - informational only
            info["workers"] = None
        return info

    def close(self) -> None:
        if self._client is not None:
            self._client.close()  # after a lost scheduler this cancels the reconnection: not printed
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        self._quiet.close()


def make_backend(execution: ExecutionSettings | None = None, *, kind: str | None = None, workers: int | None = None,
                 scheduler: str | None = None) -> Backend:
    """Backend from an `ExecutionConfig` (or from keyword arguments).

    kind "inprocess" (default), "dask-local" (LocalCluster with `workers` processes) or "dask"
    (connect to `scheduler`).
    """
    if execution is not None:
        kind = kind or execution.backend
        workers = workers if workers is not None else execution.workers
        scheduler = scheduler if scheduler is not None else execution.scheduler
    kind = kind or ("dask" if scheduler else "inprocess")
    if kind == "inprocess":
        return InProcessBackend()
    if kind == "dask-local":
        return DaskBackend(n_workers=int(workers or 2))
    if kind == "dask":
        if not scheduler:
            raise ValueError("backend 'dask' needs a scheduler address like 'tcp://host:8786'")
        return DaskBackend(address=scheduler)
    raise ValueError(f"unknown backend {kind!r}; use 'inprocess', 'dask-local' or 'dask'")


__all__ = ["Backend", "InProcessBackend", "DaskBackend", "make_backend"]
