"""Aggregation: every registered method on every (learner, aggregation target), in blocks of test points.

Each block is one backend task (`AggTask`) carrying the block's rows of its target's unit files in
their compact stored dtypes, so a Dask worker needs no access to the run directory; on the
in-process backend a task carries where its rows lie instead (`StoredRows`) and the thread that
runs it reads them, so the blocks' reading runs in parallel too. `aggregate_block` decodes the rows
into stacked `Evidence` and calls each method's certificate function from the registry
(`kernelcert.pipeline.methods`). Radii are capped at the number of
training labels (a sentinel radius means no relabelling at all changes the prediction).

On the in-process backend the blocks run on `aggregation_threads` threads of this process (the
`[execution] workers` count, at most the CPUs it may use): the certificates' heavy parts are numpy
calls and numba kernels that release the GIL. Every block's result depends on its rows alone and
lands in its own slice, so the results are the same, bit for bit, for any number of threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..evidence import FIELD_LEVEL
from .backends import Backend
from .config import ExecutionConfig, RunConfig
from .methods import REGISTRY
from .plan import AggregationTarget, RunPlan
from .progress import progress
from .store import UnitFile, decode_block, read_stored_block
from .unit import rows_per_block


@dataclass(frozen=True)
class MethodResult:
    """Per-test-point result of one (learner, target size, method): prediction, radius, exact (t,)
    and radius_upper (t,) for methods that bound the radius from both sides; exact_before (t,) where
    a refinement step ran (`kernelcert.pipeline.exactness`): exact before it."""

    learner: str
    num_partitions: int
    method: str
    prediction: np.ndarray
    radius: np.ndarray
    exact: np.ndarray
    radius_upper: np.ndarray | None = None
    exact_before: np.ndarray | None = None


@dataclass(frozen=True)
class StoredRows:
    """Where an aggregation block's rows lie: rows start..stop of learner `learner`'s evidence
    `fields` in each of `files` (a target's unit files, in member order); `read()` =
    `store.read_stored_block` (thread-safe: each read opens its own file descriptors)."""

    files: tuple[UnitFile, ...]
    learner: int
    start: int
    stop: int
    fields: tuple[str, ...]

    def read(self) -> dict[str, np.ndarray]:
        return read_stored_block(self.files, self.learner, self.start, self.stop, self.fields)


@dataclass(frozen=True)
class AggTask:
    """One aggregation work item: learner `learner` on target (`kind`, `num_partitions`), test points
    start..stop; `arrays` maps evidence fields to stored rows stacked over the target's units, or,
    when `source` is set (in-process backends), is empty and the rows are read from `source` by
    `aggregate_block`."""

    learner: int
    num_partitions: int
    kind: str
    start: int
    stop: int
    methods: tuple[str, ...]
    num_classes: int
    n_train: int
    arrays: dict[str, np.ndarray] = field(repr=False)
    shifts: np.ndarray | None = field(default=None, repr=False)
    source: StoredRows | None = field(default=None, repr=False)


def agg_block_rows(num_models: int, num_classes: int, ex: ExecutionConfig) -> int:
    """Test points per aggregation block: the block's float64 votes, costs, scores and pair costs
    (about 8 * M * K * (2K + 16) bytes per test point) stay under `memory_cap_mb`."""
    return rows_per_block(8 * num_models * num_classes * (2 * num_classes + 16), ex)


def aggregate_block(task: AggTask, shared: Any = None) -> dict[str, dict[str, np.ndarray]]:
    """Certificates of every method of `task` on its block: {method: {"prediction", "radius", "exact"
    [, "radius_upper"]}} (module-level, runs on any backend). Reads the block's rows first when the
    task carries their `source`."""
    ev = decode_block(task.arrays if task.source is None else task.source.read(), compact_pairs=True)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in task.methods:
        res = REGISTRY[name].certify(ev, task.num_classes, task.shifts)
        d: dict[str, np.ndarray] = {"prediction": np.asarray(res.prediction, np.int64),
                                    "radius": np.minimum(res.radius, task.n_train), "exact": res.exact}
        if res.radius_upper is not None:
            d["radius_upper"] = np.minimum(res.radius_upper, task.n_train)
        out[name] = d
    return out


def _groups(cfg: RunConfig, plan: RunPlan) -> list[tuple[int, AggregationTarget, tuple[str, ...]]]:
    """(learner index, target, methods) for every ensemble to aggregate."""
    groups: list[tuple[int, AggregationTarget, tuple[str, ...]]] = []
    for j in range(len(cfg.learners)):
        for target in plan.targets:
            methods = tuple(m for m in cfg.methods if REGISTRY[m].applies_to(target.kind, target.size))
            if methods:
                groups.append((j, target, methods))
    return groups


def _tasks(cfg: RunConfig, plan: RunPlan, files: dict[str, UnitFile],
           groups: list[tuple[int, AggregationTarget, tuple[str, ...]]], *, deferred: bool = False
           ) -> Iterator[AggTask]:
    """Lazily yield the AggTasks of `groups`: rows are read from the unit files when a task is built,
    or (deferred) by the task's `aggregate_block` from its `source`."""
    K, t, n_train = plan.num_classes, len(plan.y_test), len(plan.y_train)
    for j, target, methods in groups:
        fields = sorted({f for m in methods for f in REGISTRY[m].needs}, key=list(FIELD_LEVEL).index)
        members = tuple(files[key] for key in target.units)
        B = agg_block_rows(len(members), K, cfg.execution)
        for s0 in range(0, t, B):
            s1 = min(t, s0 + B)
            source = StoredRows(members, j, s0, s1, tuple(fields))
            yield AggTask(j, target.size, target.kind, s0, s1, methods, K, n_train,
                          {} if deferred else source.read(), target.shifts, source if deferred else None)


def aggregation_threads(ex: ExecutionConfig, backend: Backend) -> int:
    """Threads that run the aggregation blocks in this process: `ex.workers` on the in-process
    backend, at most the CPUs this process may run on; 1 on other backends (their workers map the
    blocks). Each thread reads and works on one block at a time, so the aggregation's working memory is
    up to that many blocks (each sized by `agg_block_rows` under `memory_cap_mb`, as a Dask worker's)."""
    if not backend.in_process:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(ex.workers, cpus))


def map_threads(fn: Callable[[AggTask, Any], Any], tasks: Iterable[AggTask], threads: int
                ) -> Iterator[tuple[AggTask, Any]]:
    """Yield (task, fn(task, None)) in completion order, computed on `threads` threads; tasks are
    drawn lazily from `tasks` (in this thread), at most threads + 1 in flight. The first exception
    of any task is raised here (tasks not yet started are cancelled, running ones finish first)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="kernelcert-aggregate") as pool:
        pending: dict[Future[Any], AggTask] = {}
        try:
            it = iter(tasks)
            while True:
                for task in it:
                    pending[pool.submit(fn, task, None)] = task
                    if len(pending) > threads:
                        break
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def aggregate(cfg: RunConfig, plan: RunPlan, files: dict[str, UnitFile], backend: Backend) -> list[MethodResult]:
    """Run every aggregation block on `backend` (in-process: on `aggregation_threads` threads);
    per-(learner, target size, method) results in (learner, size, registry) order, the same for
    any backend and thread count."""
    t = len(plan.y_test)
    acc: dict[tuple[int, int, str], dict[str, np.ndarray]] = {}
    groups = _groups(cfg, plan)
    total = sum(-(-t // agg_block_rows(len(g[1].units), plan.num_classes, cfg.execution)) for g in groups)
    # in this process, each block's rows are read by the thread that certifies it (in parallel)
    tasks = _tasks(cfg, plan, files, groups, deferred=backend.in_process)
    threads = aggregation_threads(cfg.execution, backend)
    # Helper processes would need fork after JAX's threads or spawn's re-import of __main__; threads read
    # the unit files themselves and the heavy parts of reading and certifying release the GIL.
    results = map_threads(aggregate_block, tasks, threads) if threads > 1 else backend.map(aggregate_block, tasks, None)
    for task, res in progress(results, cfg.execution.progress, desc="aggregation blocks", unit="block", total=total):
        sl = slice(task.start, task.stop)
        for method, d in res.items():
            key = (task.learner, task.num_partitions, method)
            if key not in acc:
                acc[key] = {name: np.empty(t, arr.dtype) for name, arr in d.items()}
            for name, arr in d.items():
                acc[key][name][sl] = arr
    order = {m: i for i, m in enumerate(REGISTRY)}
    return [MethodResult(cfg.learners[j].name, n_p, method, d["prediction"], d["radius"], d["exact"],
                         d.get("radius_upper"))
            for (j, n_p, method), d in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]]))]


__all__ = ["MethodResult", "AggTask", "StoredRows", "aggregate_block", "aggregate", "agg_block_rows", "aggregation_threads",
           "map_threads"]
