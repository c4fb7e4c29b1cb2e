"""One work unit: a base-model training set, its Gram computed once, every learner fitted on it,
the test points streamed in blocks, and the `Evidence` of each model stored per test point.

`compute_unit(task, shared)` is module-level so that Dask workers can run it; it returns the
unit's arrays (the stored encoding of `kernelcert.pipeline.store`) plus its `meta`, and the caller
writes them atomically. Memory: the partition's Gram (and the learners' factorisations) plus one
block of test-by-partition kernel rows, label weights and certificate temporaries sized to
`[execution] memory_cap_mb` (`unit_block_rows`). No train-by-test matrix is ever held whole.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from threadpoolctl import ThreadpoolController

from .._jax import device_scope
from ..evidence import build_evidence
from ..kernels import DEFAULT_MAX_BLOCK_BYTES
from ..learners import fit_learners
from ..procmem import peak_rss_mb
from ..provenance import Provenance, check_environment
from .config import ExecutionConfig, KernelConfig, LearnerConfig, make_kernel, make_learner
from .progress import progress
from .store import FORMAT_VERSION, allocate_unit, put_evidence


@dataclass(frozen=True)
class UnitTask:
    """What a backend ships to a worker for one unit: its identity and its own training data."""

    key: str
    kind: str
    num_partitions: int
    index: int
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    fingerprint: str = ""


@dataclass(frozen=True)
class SharedInputs:
    """Inputs common to every unit (scattered once to each Dask worker). `levels`: the evidence level
    per target kind ("partition", "fa"), from the methods' needs (`methods.evidence_level`).
    `execution.device` is already resolved ("cpu" or "gpu") by the client, and `provenance` is the
    client's environment: a worker whose environment differs refuses the unit."""

    x_test: np.ndarray = field(repr=False)
    num_classes: int
    kernel: KernelConfig
    learners: tuple[LearnerConfig, ...]
    execution: ExecutionConfig
    config_hash: str
    levels: dict
    provenance: Provenance
    progress: bool = False


def cap_bytes(ex: ExecutionConfig) -> int:
    """`memory_cap_mb` in bytes."""
    return int(ex.memory_cap_mb) * 2**20


def rows_per_block(row_bytes: int, ex: ExecutionConfig) -> int:
    """Rows (test points) per block: `execution.block_size` if set, else as many rows of `row_bytes`
    bytes as fit in `memory_cap_mb` (at least one)."""
    if ex.block_size is not None:
        return int(ex.block_size)
    return int(max(1, cap_bytes(ex) // max(1, int(row_bytes))))


def kernel_block_bytes(ex: ExecutionConfig) -> int:
    """Tile size for the kernel evaluation: a quarter of the memory cap (1 MiB .. the kernels' default)."""
    return int(max(2**20, min(DEFAULT_MAX_BLOCK_BYTES, cap_bytes(ex) // 4)))


def unit_block_rows(n_part: int, num_classes: int, num_learners: int, ex: ExecutionConfig) -> int:
    """Test points per block inside a work unit: the test-by-partition kernel block, label weights
    and certificate temporaries (about 8 * n_part * (3 + 2 L + K) bytes per test point)."""
    return rows_per_block(8 * max(1, n_part) * (3 + 2 * num_learners + num_classes), ex)


def unit_memory_mb(n_part: int, num_classes: int, num_learners: int, ex: ExecutionConfig) -> float:
    """About the peak memory of one work unit in MiB (named when a unit kills its workers): the Gram
    and one n x n factorisation per learner (8 n^2 (1 + L) bytes), the test-block temporaries
    (`memory_cap_mb`) and one kernel tile."""
    return (8.0 * n_part**2 * (1 + num_learners) + cap_bytes(ex) + kernel_block_bytes(ex)) / 2**20


def compute_unit(task: UnitTask, shared: SharedInputs) -> dict:
    """Evidence of every learner on every test point for one work unit (BLAS limited to
    `execution.blas_threads` threads, kernels on `execution.device`). Returns the stored arrays plus
    `meta` (JSON string, with the provenance of this process). Raises `EnvironmentMismatch` if this
    process's environment differs from the client's."""
    here = check_environment(shared.provenance, f"worker {socket.gethostname()}:{os.getpid()}")
    with _blas_controller().limit(limits=shared.execution.blas_threads, user_api="blas"), \
            device_scope(shared.execution.device):
        return _compute_unit(task, shared, here)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """This process's threadpoolctl view of its BLAS libraries, scanned once (a fresh
    `threadpool_limits` rescans every loaded library: about 8 ms per unit in a run)."""
    return ThreadpoolController()


UNIT_STAGES = ("gram", "fit", "test_kernel", "label_weights", "certify", "store")


class _StageClock:
    """Wall and process-CPU seconds per stage of one unit (`meta["seconds"]`, `meta["cpu_seconds"]`):
    `UNIT_STAGES` (training Gram, fits, test-by-partition kernel rows, label weights, ScaLabelCert /
    evidence, copying into the stored arrays) plus "total". CPU is the process's CPU time (all threads)."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(UNIT_STAGES, 0.0)
        self.cpu = dict.fromkeys(UNIT_STAGES, 0.0)
        self._start = (time.perf_counter(), time.process_time())
        self._last = self._start  # the clock read at the end of the previous stage

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name`. Back-to-back stages share the clock read between them (the
        process CPU clock sums over every thread, so each read costs more in a many-threaded process)."""
        w0, c0 = self._last
        try:
            yield
        finally:
            now = (time.perf_counter(), time.process_time())
            self.wall[name] += now[0] - w0
            self.cpu[name] += now[1] - c0
            self._last = now

    def idle(self) -> None:
        """Mark the time since the last stage as outside every stage."""
        self._last = (time.perf_counter(), time.process_time())

    def totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """(wall, CPU) per stage plus "total" since construction."""
        w0, c0 = self._start
        return ({**self.wall, "total": time.perf_counter() - w0}, {**self.cpu, "total": time.process_time() - c0})


def _compute_unit(task: UnitTask, shared: SharedInputs, here: Provenance) -> dict:
    clock = _StageClock()
    K, ex = shared.num_classes, shared.execution
    kernel = make_kernel(shared.kernel, max_block_bytes=kernel_block_bytes(ex))
    fn = kernel.ntk if shared.kernel.kind == "ntk" else kernel.nngp
    evaluate = functools.partial(fn, dtype=np.dtype(shared.kernel.dtype))
    sort_device = {"cpu": "numpy", "gpu": "jax"}.get(ex.device, "auto")  # certificate sorts follow the kernels
    x, y = task.x, task.y
    n = len(y)
    clock.idle()
    with clock.stage("gram"):
        G = evaluate(x)
    with clock.stage("fit"):
        models = fit_learners([make_learner(lc) for lc in shared.learners], G, y, K)  # one validation, shared factorisations
    c_max = [float(m.C_max_) if lc.type == "svm" else None for lc, m in zip(shared.learners, models)]
    del G
    t_test = len(shared.x_test)
    level = shared.levels.get(task.kind) or "votes"
    out = allocate_unit(len(models), t_test, K, level, n)
    B = unit_block_rows(n, K, len(models), ex)
    clock.idle()
    # One core's worth of Python here: the heavy parts use both cores on their own (XLA's intra-op threads
    # for the kernel rows, numba's parallel rows in ScaLabelCert); BLAS uses `execution.blas_threads`.
    # (A helper thread prefetching kernel rows / label weights while this one certifies was tried on MNIST
    # 60k train / 1k test, N_p = 50: CPU 51.5 s against 49.4, wall 282 s against 271 on the shared 2 cores,
    # peak RSS 1.74 GiB against 1.04, so it was not kept.)
    for s0 in progress(range(0, t_test, B), shared.progress, desc=f"  {task.key} test blocks", unit="block",
                       nested=True):
        sl = slice(s0, min(t_test, s0 + B))
        with clock.stage("test_kernel"):
            Kt = evaluate(shared.x_test[sl], x)
        for j, m in enumerate(models):
            with clock.stage("label_weights"):
                W, err = m.label_weights(Kt, return_error=True)  # err: bound on the weights' error (certify's atol)
            with clock.stage("certify"):
                ev = build_evidence(W, y, K, level=level, block_size=B, sort_device=sort_device, atol=err)
            with clock.stage("store"):
                put_evidence(out, j, sl, ev)
            del W, err, ev
        del Kt
    seconds, cpu_seconds = clock.totals()
    meta = {"key": task.key, "kind": task.kind, "num_partitions": task.num_partitions, "index": task.index,
            "fingerprint": task.fingerprint, "n": n, "num_test": t_test, "num_classes": K,
            "config_hash": shared.config_hash, "format": FORMAT_VERSION, "level": level,
            "learners": [lc.name for lc in shared.learners], "c_max": c_max,
            "block_rows": B, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "pid": os.getpid(), "host": socket.gethostname(), "peak_rss_mb": peak_rss_mb(),
            "provenance": here.to_dict()}
    out["meta"] = np.array(json.dumps(meta))
    return out


__all__ = ["UNIT_STAGES", "UnitTask", "SharedInputs", "compute_unit", "unit_memory_mb", "unit_block_rows", "rows_per_block", "kernel_block_bytes",
           "cap_bytes"]
