"""Dask clusters that survive lost workers and report why they stopped.

- `local_cluster(...)`: a `LocalCluster` on 127.0.0.1 whose worker processes start like the client
  process as far as malloc goes: without the `MALLOC_TRIM_THRESHOLD_=65536` that Dask's nanny sets
  by default (`distributed.nanny.pre-spawn-environ`). Setting any malloc threshold switches off
  glibc's adaptive thresholds, so every temporary above 128 KiB becomes a fresh mmap (page faults,
  system time) and freed memory is trimmed after every block; glibc's adaptive defaults raise both
  thresholds to the sizes a unit actually uses (up to 32 / 64 MiB). Measured in benchmarks/faults.py.
- `resilient_map(client, fn, tasks, shared, ...)`: submits `fn(task, shared)` for a stream of tasks
  with a bounded number in flight. `shared` is scattered to *every* worker (`broadcast=True`), so
  it survives any worker but the last; each task's own data is scattered as its own piece of data
  (large task specs slow the scheduler down). When a worker dies, the scheduler reruns its tasks
  on the other workers (Dask's own resilience); a task whose scattered input died with the worker
  is cancelled by Dask, and is sent again from the client's copy (at most `resend` times; the
  shared inputs too, should every copy have died). So a run finishes with the same results as
  long as one worker lives. A task that raises is retried
  `retries` times by Dask. Dask's errors are translated into `kernelcert.endings` errors:
  `WorkerKilled` (a unit that killed `allowed-failures + 1` workers; "for memory" when the nanny
  restarted them for exceeding their memory limit, with the unit and the memory it needed) and
  `ClusterLost` (scheduler gone, or no worker left for `no_worker_timeout` seconds).
- `check_workers(client, expected, largest_unit_mb)`: every worker's `Provenance` must equal the
  client's, else `EnvironmentMismatch` naming the workers and the differences (workers that join
  later are checked by their first unit: `kernelcert.provenance.check_environment`); workers that
  all die during the check for memory (too small to load kernelcert) are `WorkerKilled` for memory.
- `quiet_reconnection()`: while a run uses a client, Dask's own log of a lost scheduler (its
  failed reconnection, and the traceback of the reconnection cancelled when the client closes)
  is dropped, so the run ends with its one line (`ReconnectionNoiseFilter`).
- `reset_worker_peaks(client)`: resets every worker's peak RSS, so that the per-worker memory a
  run reports is this run's peak.

Dask is imported inside the functions (it is a declared dependency, but importing it costs about
a second that in-process runs do not need).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .endings import ClusterLost, WorkerKilled
from .procmem import reset_peak_rss
from .provenance import EnvironmentMismatch, Provenance, current_environment

if TYPE_CHECKING:  # Dask is imported where it is used (see the module docstring)
    from distributed import Client, Future, LocalCluster

logger = logging.getLogger("kernelcert.cluster")

# environment variables removed from / added to Dask's pre-spawn environment of local workers
WORKER_ENVIRON_DROP = ("MALLOC_TRIM_THRESHOLD_",)
WORKER_ENVIRON: dict[str, str] = {}


def local_cluster(n_workers: int, threads_per_worker: int = 1, memory_limit: str | int = "auto",
                  environ: dict[str, str] | None = None) -> LocalCluster:
    """A `dask.distributed.LocalCluster` on the loopback interface, worker processes started with
    Dask's default pre-spawn environment less `WORKER_ENVIRON_DROP`, updated by `environ` (default
    `WORKER_ENVIRON`)."""
    import dask
    from dask.distributed import LocalCluster

    env = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
           if k not in WORKER_ENVIRON_DROP}
    env.update(WORKER_ENVIRON if environ is None else environ)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                            memory_limit=memory_limit, host="127.0.0.1", dashboard_address=None,
                            silence_logs=logging.CRITICAL)  # failures are reported by resilient_map


def _worker_provenance(device: str, dtype: str) -> dict[str, Any]:
    return current_environment(device, dtype).to_dict()


def check_workers(client: Client, expected: Provenance, largest_unit_mb: float | None = None) -> int:
    """Compare every worker's provenance with `expected`; return the number of workers checked.

    Raises `EnvironmentMismatch` naming each differing worker (and what differs), or naming the
    worker that could not even compute its provenance (e.g. 'gpu' asked of a worker without one).
    When every worker died during the check (e.g. killed for memory while loading kernelcert), raises
    `WorkerKilled` (for memory: with the memory reached, the workers' limit and `largest_unit_mb`,
    the memory the largest work unit will need) or `ClusterLost`.
    """
    limits = _memory_limits(client)  # before the check: a dead worker leaves the scheduler's list
    restarts_before = len(memory_restarts(client))
    try:
        found = client.run(_worker_provenance, expected.device, expected.dtype, on_error="return")
    except Exception as exc:  # noqa: BLE001 - any failure to run the check is reported as such
        raise ClusterLost(f"could not check the Dask workers' environments ({type(exc).__name__}: {exc})") from exc
    from distributed.comm.core import CommClosedError

    problems: list[str] = []
    died: list[str] = []
    for address, info in sorted(found.items()):
        if isinstance(info, (CommClosedError, OSError)):  # the worker died meanwhile: not its environment
            died.append(address)
            continue
        if isinstance(info, BaseException):
            problems.append(f"worker {address}: cannot compute on {expected.device} ({info})")
            continue
        diff = expected.differences(Provenance.from_dict(info))
        if diff:
            problems.append(f"worker {address}: " + "; ".join(d.replace(" there", " on the worker") for d in diff))
    if found and len(died) == len(found):
        events = _wait_memory_restarts(client, restarts_before)
        if events:
            rss = max(e.get("rss", 0) for e in events) / 2**20
            lim = [limits[a] for a in died if a in limits] or list(limits.values())
            of = f" of their {min(lim):,.0f} MiB limit" if lim else ""
            need = (f"; the largest work unit needs about {largest_unit_mb:,.0f} MiB on top of that"
                    if largest_unit_mb is not None else "")
            raise WorkerKilled(f"the Dask workers were killed for memory while loading kernelcert, before any unit "
                               f"ran (reaching {rss:,.0f} MiB{of}){need}: give the workers more memory (dask worker "
                               "--memory-limit)", unit="(worker start-up)", for_memory=True,
                               needed_mb=largest_unit_mb, limit_mb=min(lim) if lim else None)
        raise ClusterLost("lost the Dask cluster (every worker died while its environment was checked)")
    if problems:
        raise EnvironmentMismatch("refusing Dask workers whose environment differs from this client's (their "
                                  "results would not be bit-identical): " + " | ".join(problems))
    return len(found)


def reset_worker_peaks(client: Client) -> bool:
    """Reset the peak RSS of every current worker; False if any worker could not."""
    done = client.run(reset_peak_rss)
    return all(done.values())


def memory_restarts(client: Client) -> list[dict[str, Any]]:
    """The nanny's 'worker-restart-memory' events so far: dicts with worker, pid, rss (bytes)."""
    try:
        events = client.get_events("worker-restart-memory")
    except Exception:  # noqa: BLE001 - diagnostics only
        return []
    return [dict(e) for _, e in events if isinstance(e, dict)]


def _wait_memory_restarts(client: Client, before: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    """The nanny's memory-restart events after the first `before`, waiting up to `timeout` seconds
    for one to arrive (the nanny's event and the worker's disconnection reach the scheduler by
    different connections, in either order)."""
    deadline = time.monotonic() + timeout
    while True:
        events = memory_restarts(client)[before:]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def _memory_limits(client: Client) -> dict[str, float]:
    """{worker address: memory limit in MiB} of the workers that have one."""
    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}
    return {a: float(w["memory_limit"]) / 2**20 for a, w in workers.items() if w.get("memory_limit")}


def _killed(client: Client, exc: BaseException, unit: str, needed_mb: float | None, restarts_before: int,
            known_limits: dict[str, float], tries: int | None = None) -> WorkerKilled:
    """A clear WorkerKilled from Dask's KilledWorker (which only says the workers died), or from a
    unit whose input kept dying with its worker (`tries` sends)."""
    last = getattr(getattr(exc, "last_worker", None), "address", None)
    mem_events = memory_restarts(client)[restarts_before:]
    limits = {**known_limits, **_memory_limits(client)}  # the dead worker may be gone from the scheduler
    limit_mb = (limits.get(last) if last else None) or next(iter(limits.values()), None)
    for_memory = bool(mem_events) or (needed_mb is not None and limit_mb is not None and needed_mb > 0.95 * limit_mb)
    tries = tries if tries is not None else getattr(exc, "allowed_failures", 0) + 1
    need = f"; it needs about {needed_mb:,.0f} MiB" if needed_mb is not None else ""
    if for_memory:
        rss = max((e.get("rss", 0) for e in mem_events), default=0) / 2**20
        seen = f", reaching {rss:,.0f} MiB" if rss else ""
        lim = f" of their {limit_mb:,.0f} MiB limit" if limit_mb else ""
        workers = f"{tries} worker{'s' if tries > 1 else ''}"
        msg = (f"work unit {unit} was killed for memory on {workers}{seen}{lim}{need}: give the workers more "
               "memory (dask worker --memory-limit), or use more partitions (smaller units)")
    else:
        msg = (f"work unit {unit} killed {tries} workers (last {last}); they died without a memory-limit restart "
               f"(crash, or the operating system's out-of-memory killer){need}")
    return WorkerKilled(msg, unit=unit, for_memory=for_memory, needed_mb=needed_mb, limit_mb=limit_mb)


def _scheduler_address(client: Client) -> str:
    return str(getattr(client.scheduler, "address", None) or "(address unknown: the client is closed)")


class ReconnectionNoiseFilter(logging.Filter):
    """Drops the two records Dask's client logs when it gives up on a lost scheduler: 'Failed to
    reconnect to scheduler after N seconds, closing client' and the traceback of its reconnection
    attempt cancelled by `Client.close()` (an `asyncio.CancelledError`). Everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Failed to reconnect to scheduler"):
            return False
        exc = record.exc_info[1] if record.exc_info else record.msg
        return not isinstance(exc, asyncio.CancelledError)


@contextlib.contextmanager
def quiet_reconnection() -> Iterator[None]:
    """Inside the block, Dask's client ('distributed.client' logger) does not print its reconnection
    noise after a lost scheduler (`ReconnectionNoiseFilter`): the run ends with its own one-line
    message (`ClusterLost`) instead. The filter is removed on exit."""
    log = logging.getLogger("distributed.client")
    noise = ReconnectionNoiseFilter()
    log.addFilter(noise)
    try:
        yield
    finally:
        log.removeFilter(noise)


def resilient_map(client: Client, fn: Callable[[Any, Any], Any], tasks: Iterable[Any], shared: Any, *,
                  max_in_flight: int, retries: int = 1, resend: int = 3, tag: str = "run",
                  unit_name: Callable[[Any], str] = lambda t: str(getattr(t, "key", "task")),
                  unit_memory_mb: Callable[[Any], float] | None = None, poll_s: float = 1.0,
                  no_worker_timeout: float = 60.0) -> Iterator[tuple[Any, Any]]:
    """Yield (task, fn(task, shared)) in completion order, at most `max_in_flight` tasks submitted at once.

    See the module docstring for what happens when workers or the scheduler are lost.
    """
    from dask.distributed import wait
    from distributed.client import FutureCancelledError, FuturesCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    it = iter(tasks)
    address = _scheduler_address(client)  # named in the message if the scheduler is lost
    counter = itertools.count()
    pending: dict[Future, tuple[Any, int]] = {}
    restarts_before = len(memory_restarts(client))
    known_limits = _memory_limits(client)

    def scatter(data: Any, broadcast: bool = False, task: Any = None) -> Future:
        """client.scatter, waiting up to `no_worker_timeout` for a worker when none is there (all dead
        or restarting: Dask raises TimeoutError 'No valid workers found')."""
        for _ in range(5):
            try:
                return client.scatter(data, broadcast=broadcast, hash=False)
            except TimeoutError as exc:
                try:
                    client.wait_for_workers(1, timeout=no_worker_timeout)
                except TimeoutError:
                    if memory_restarts(client)[restarts_before:]:  # the workers keep dying for memory
                        need = unit_memory_mb(task) if unit_memory_mb is not None and task is not None else None
                        raise _killed(client, exc, unit_name(task) if task is not None else "(shared inputs)",
                                      need, restarts_before, known_limits,
                                      tries=len(memory_restarts(client)[restarts_before:])) from exc
                    break
            except (CommClosedError, OSError) as exc:  # e.g. the worker chosen to hold it just died
                if client.status != "running":
                    raise ClusterLost(f"lost the Dask cluster (the connection to the scheduler {address} was "
                                      "lost)") from exc
                time.sleep(poll_s)
                continue
        raise ClusterLost(f"lost the Dask cluster (no worker to send work to for {no_worker_timeout:.0f} s)")

    shared_f = scatter(shared, broadcast=True) if shared is not None else None

    def submit_next() -> bool:
        try:
            task = next(it)
        except StopIteration:
            return False
        submit(task, 0)
        return True

    def submit(task: Any, attempt: int) -> None:
        nonlocal shared_f
        if shared_f is not None and shared_f.status != "finished":  # every copy died with its workers
            shared_f = scatter(shared, broadcast=True, task=task)
        key = f"kernelcert-{unit_name(task)}-{tag}-{next(counter)}"
        # the task's data travels as its own piece of data (large task specs slow the scheduler down);
        # if the worker holding it dies, the client still has the task and sends it again
        task_f = scatter(task, task=task)
        pending[client.submit(fn, task_f, shared_f, key=key, pure=False, retries=retries)] = (task, attempt)

    def lost(why: str, exc: BaseException | None = None) -> ClusterLost:
        if client.status != "running":  # whatever failed, the cause is the lost scheduler connection
            why = f"the connection to the scheduler {address} was lost"
        err = ClusterLost(f"lost the Dask cluster ({why})")
        if exc is not None:
            err.__cause__ = exc
        return err

    no_workers_since = None
    try:
        for _ in range(max(1, max_in_flight)):
            if not submit_next():
                break
        while pending:
            try:
                done, _ = wait(list(pending), timeout=poll_s, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = ()
            except FuturesCancelledError:  # some futures were cancelled (input lost): handled one by one below
                done = [f for f in pending if f.done()]
            except (CommClosedError, OSError) as exc:
                raise lost(f"{type(exc).__name__}: {exc}", exc) from exc
            if not done:
                if client.status != "running":  # reconnecting or closed: every pending task is cancelled
                    raise lost("client status " + client.status)
                try:
                    n = len(client.scheduler_info().get("workers", {}))
                except Exception as exc:  # noqa: BLE001
                    raise lost(f"{type(exc).__name__}: {exc}", exc) from exc
                no_workers_since = None if n else (no_workers_since or time.monotonic())
                if no_workers_since is not None and time.monotonic() - no_workers_since > no_worker_timeout:
                    raise lost(f"no worker left for {no_worker_timeout:.0f} s")
                continue
            for fut in done:
                task, attempt = pending.pop(fut)
                try:
                    result = fut.result()
                except KilledWorker as exc:
                    need = unit_memory_mb(task) if unit_memory_mb is not None else None
                    raise _killed(client, exc, unit_name(task), need, restarts_before, known_limits) from exc
                except (FutureCancelledError, CommClosedError) as exc:
                    if client.status != "running" or getattr(exc, "reason", None) == "scheduler-connection-lost":
                        raise lost(f"the connection to the scheduler {address} was lost", exc) from exc
                    if attempt < resend:
                        # recovered here: a note (INFO), not a warning, so that a run that ends after it
                        # (e.g. its unit keeps killing workers for memory) still ends with one line under -q
                        logger.info("task %s lost its input with a worker: sending it again", unit_name(task))
                        submit(task, attempt + 1)
                        continue
                    if memory_restarts(client)[restarts_before:]:
                        need = unit_memory_mb(task) if unit_memory_mb is not None else None
                        raise _killed(client, exc, unit_name(task), need, restarts_before, known_limits,
                                      tries=attempt + 1) from exc
                    raise lost(f"task {unit_name(task)} was cancelled: {exc}", exc) from exc
                fut.release()
                submit_next()
                yield task, result
    finally:
        for fut in pending:
            fut.cancel()
        shared_f = None


__all__ = ["WORKER_ENVIRON", "WORKER_ENVIRON_DROP", "local_cluster", "resilient_map", "check_workers",
           "reset_worker_peaks", "memory_restarts", "quiet_reconnection", "ReconnectionNoiseFilter"]
