"""`run(config)`: orchestration of a certification run, TOML config -> run directory.

1. Validate the config (`config`); prepare the run directory (`store`); build the plan once
   (`plan`: data, aggregation targets, work units, size and C_max checks) - all before any kernel
   matrix is computed for certification.
2. Compute the work units not already stored (`unit`, on a `backends` backend), writing each
   atomically as soon as it arrives, so a killed run resumes without recomputing finished units.
3. Aggregate every registered method on every target (`aggregate`); with `[exactness] refine = true`
   refine the EnsembleCert radii not proven exact and the white-box ROE radii not resolved at exact
   class costs (`exactness`); then write `points.csv`,
   `summary.json` (`summary`), plots and `report.md` (`report`); these are recomputed on every
   run, which is cheap.

Run directory: `<output.dir>/<output.name>-<hash12>` (see `RunConfig.hash`): a changed config
never mixes with old results, and a directory whose `config.hash` names another config is refused.
Each unit file also records a fingerprint of its inputs, so a code change that alters the data
behind an unchanged config recomputes the affected units.

Reliability: one client per run directory (`kernelcert.runlock`: a second one stops at once with
`RunLocked` naming the holder); the device is resolved once here and sent to the workers, whose
environment must equal this client's (`kernelcert.provenance`); every stored unit is verified
(`store.check_unit`: readable, this format/config/inputs/environment, its members' layout and
checksums) on resume and again before aggregation (a unit this run writes is verified right after
it is written, on the writer thread that overlaps the next unit), and a unit failing any check is
recomputed;
the expected ways a run stops (disk full, permissions, memory, a lost cluster, Ctrl-C) end with
`RunStopped` / `RunInterrupted` and one line (`kernelcert.endings`); SIGINT always stops the run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..endings import InterruptGuard, clear_ending
from ..integrity import Check
from ..provenance import Provenance, resolved_device
from ..runlock import RunLock

from .aggregate import MethodResult, aggregate, aggregation_threads
from .backends import Backend, make_backend
from .config import RunConfig, config_from_dict, load_config
from .exactness import exactness_markdown, refine_results
from .methods import evidence_level
from .plan import RunPlan, UnitSpec, check_c_max, plan_run
from .progress import Progress
from .report import markdown_report, write_plots
from .store import (UnitFile, adopt_units, atomic_write_text, check_unit, older_format_runs, prepare_run_dir,
                    same_config_runs, unit_layout, unit_path, write_unit)
from .summary import build_summary, write_points, write_points_long, write_summary
from .unit import SharedInputs, UnitTask, compute_unit, unit_memory_mb

logger = logging.getLogger("kernelcert.pipeline")


@dataclass(frozen=True)
class RunResult:
    """What `run` produced: the run directory, output paths, the summary dict and unit counts."""

    run_dir: Path
    config_hash: str
    summary: dict[str, Any]
    results: tuple[MethodResult, ...] = field(repr=False)
    points_path: Path
    summary_path: Path
    report_path: Path | None
    plots: tuple[Path, ...]
    computed_units: int
    skipped_units: int


def run_directory(cfg: RunConfig) -> Path:
    """`<output.dir>/<output.name>-<first 12 hex digits of the config hash>`."""
    return Path(cfg.output.dir) / f"{cfg.output.name}-{cfg.hash()[:12]}"


def _as_config(config: RunConfig | str | os.PathLike[str] | dict[str, Any]) -> RunConfig:
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, a TOML path or a dict, got {type(config).__name__}")
    return config


def _remove_if_empty(run_dir: Path, created: bool) -> None:
    """A run that failed before storing any unit leaves no directory behind (only if it created it)."""
    units = run_dir / "units"
    if created and run_dir.exists() and not (units.exists() and any(units.iterdir())):
        shutil.rmtree(run_dir, ignore_errors=True)


def _unit_memory(cfg: RunConfig, plan: RunPlan) -> Callable[[int], float]:
    """n_part -> about the peak memory of a work unit with n_part training points, in MiB."""
    return functools.partial(unit_memory_mb, num_classes=plan.num_classes, num_learners=len(cfg.learners),
                             ex=cfg.execution)


class _UnitWriter:
    """Writes each finished unit on a helper thread while the next one is computed, then verifies
    the file it wrote (`store.check_unit`), so neither the write (serialisation, checksums, fsync)
    nor the verification holds up the units.

    At most one write is in flight: `put` first waits for the previous one (raising its error, so a
    failed write stops the run before anything else is written), and leaving the block waits for the
    last one, also when the run stops. `saved` gets the key of every unit on disk, `verified` those
    that passed their check right after being written."""

    def __init__(self, check: Callable[[str], bool], saved: set[str], bar: Progress) -> None:
        self._check, self.saved, self._bar = check, saved, bar
        self.verified: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernelcert-writer")
        self._pending: tuple[str, Future[bool]] | None = None

    def _write(self, key: str, path: Path, arrays: dict[str, Any]) -> bool:
        write_unit(path, arrays)
        return self._check(key)

    def put(self, key: str, path: Path, arrays: dict[str, Any]) -> None:
        self._finish()
        self._pending = (key, self._pool.submit(self._write, key, path, arrays))

    def _finish(self) -> None:
        if self._pending is None:
            return
        key, fut = self._pending
        self._pending = None
        ok = fut.result()
        self.saved.add(key)
        if ok:
            self.verified.add(key)
        self._bar.update(1)

    def __enter__(self) -> "_UnitWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._finish()
            elif self._pending is not None:  # the run stops: let the write in flight end (it is atomic)
                key, fut = self._pending
                self._pending = None
                if fut.exception() is None:
                    self.saved.add(key)
                    if fut.result():
                        self.verified.add(key)
        finally:
            self._pool.shutdown(wait=True)


def _unit_check(cfg: RunConfig, plan: RunPlan, run_dir: Path, cfg_hash: str, provenance: Provenance,
                u: UnitSpec) -> Check:
    """`store.check_unit` of unit `u`'s stored file against this run (config, inputs, environment, layout)."""
    levels = {kind: evidence_level(cfg.methods, kind) or "votes" for kind in ("partition", "fa")}
    return check_unit(unit_path(run_dir, u.key), cfg_hash=cfg_hash, fingerprint=u.fingerprint, provenance=provenance,
                      layout=unit_layout(len(cfg.learners), len(plan.y_test), plan.num_classes, levels[u.kind], u.size))


def _compute_units(cfg: RunConfig, plan: RunPlan, todo: Sequence[UnitSpec], be: Backend, run_dir: Path,
                   cfg_hash: str, provenance: Provenance, guard: InterruptGuard, saved: set[str]) -> set[str]:
    """Compute and write the units `todo`; returns the keys of those verified right after being written."""
    levels = {kind: evidence_level(cfg.methods, kind) for kind in ("partition", "fa")}
    execution = dataclasses.replace(cfg.execution, device=provenance.device)  # resolved once, here
    shared = SharedInputs(x_test=plan.k_test, num_classes=plan.num_classes, kernel=cfg.kernel,
                          learners=cfg.learners, execution=execution, config_hash=cfg_hash, levels=levels,
                          provenance=provenance, progress=cfg.execution.progress and be.in_process)
    tasks = (UnitTask(u.key, u.kind, u.num_partitions, u.index, plan.k_train[u.train_index],
                      plan.y_train[u.train_index], u.fingerprint) for u in todo)
    need = _unit_memory(cfg, plan)
    specs = {u.key: u for u in todo}

    def verify(key: str) -> bool:
        return _unit_check(cfg, plan, run_dir, cfg_hash, provenance, specs[key]).ok

    with Progress(len(todo), cfg.execution.progress, desc="work units", unit="unit") as bar, \
            _UnitWriter(verify, saved, bar) as writer:
        for task, result in be.map(compute_unit, tasks, shared, unit_memory_mb=lambda t: need(len(t.y))):
            writer.put(task.key, unit_path(run_dir, task.key), result)
            guard.check()
    return writer.verified


def _failing_units(cfg: RunConfig, plan: RunPlan, run_dir: Path, cfg_hash: str, provenance: Provenance,
                   units: Sequence[UnitSpec]) -> list[UnitSpec]:
    """The units among `units` whose stored file does not pass every check (`store.check_unit`);
    logs how many stored files failed, with the first reasons."""
    failing, reasons = [], []
    for u in units:
        check = _unit_check(cfg, plan, run_dir, cfg_hash, provenance, u)
        if not check.ok:
            failing.append(u)
            if unit_path(run_dir, u.key).exists():
                reasons.append(f"{u.key}: {check.summary(limit=2)}")
    if reasons:
        logger.warning("%d stored work units fail their checks and are recomputed (%s%s)", len(reasons),
                       "; ".join(reasons[:3]), "; ..." if len(reasons) > 3 else "")
    return failing


def run(config: RunConfig | str | os.PathLike[str] | dict[str, Any], *, backend: Backend | None = None
        ) -> RunResult:
    """Run (or resume) the certification described by `config` (RunConfig, path to a TOML file or dict).

    `backend`: an open `kernelcert.pipeline.backends.Backend` to use instead of the configured one.
    Returns a RunResult; the run directory holds points.csv, summary.json, plots and report.md.
    Raises `RunLocked` if another client holds the run directory, `EnvironmentMismatch` for workers
    unlike this client, `RunStopped` / `RunInterrupted` (one-line message, `.ending`) when the run
    stops early for a known reason: a rerun resumes.
    """
    cfg = _as_config(config)
    lock = RunLock(run_directory(cfg))
    try:
        with InterruptGuard() as guard:
            return _run(cfg, backend, lock, guard)
    finally:
        lock.release()


def _run(cfg: RunConfig, backend: Backend | None, lock: RunLock, guard: InterruptGuard) -> RunResult:
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    cfg_hash = cfg.hash()
    run_dir = run_directory(cfg)
    created = not run_dir.exists()
    if created:
        old = older_format_runs(cfg.output.dir, cfg.output.name)
        if old:
            logger.warning("%d run director%s of an older kernelcert format (e.g. %s) %s not reused; this run "
                           "computes its results in %s", len(old), "y" if len(old) == 1 else "ies", old[-1],
                           "is" if len(old) == 1 else "are", run_dir)
    prepare_run_dir(cfg.output.dir, run_dir, cfg_hash,
                    {"hash": cfg_hash, "hash_payload": cfg.hash_payload(), "config": cfg.to_dict()}, lock)
    logger.info("run directory %s (config hash %s)", run_dir, cfg_hash[:12])
    for other in (same_config_runs(cfg.output.dir, run_dir, cfg_hash) if created else []):
        logger.info("reusing %d work units of %s (same config hash)", adopt_units(other, run_dir), other)
    try:
        # after the lock (a second client stops before the device is set up), before any data is loaded
        provenance = Provenance.current(resolved_device(cfg.execution.device), cfg.kernel.dtype)
        t0 = time.perf_counter()
        plan = plan_run(cfg)
        timings["data_and_partitions"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepass = check_c_max(cfg, plan, run_dir)
        timings["c_max_prepass"] = time.perf_counter() - t0
    except BaseException:
        _remove_if_empty(run_dir, created)
        raise
    todo = _failing_units(cfg, plan, run_dir, cfg_hash, provenance, plan.units)
    done = {u.key for u in plan.units} - {u.key for u in todo}
    logger.info("%d work units: %d already done (skipped), %d to compute", len(plan.units), len(done), len(todo))

    t0 = time.perf_counter()
    computed: set[str] = set()
    verified: set[str] = set()  # units this run wrote and verified right after writing
    be = make_backend(cfg.execution) if backend is None else backend
    try:
        with clear_ending(len(plan.units), lambda: len(done | computed), run_dir):
            backend_info = {**be.describe(), "aggregation_threads": aggregation_threads(cfg.execution, be)}
            for _ in range(2):  # a unit failing its checks right after being written is computed once more
                if todo:
                    be.prepare(provenance, largest_unit_mb=_unit_memory(cfg, plan)(max(u.size for u in todo)))
                    try:
                        fresh = _compute_units(cfg, plan, sorted(todo, key=lambda u: -u.size), be, run_dir,
                                               cfg_hash, provenance, guard, computed)
                    except BaseException:
                        _remove_if_empty(run_dir, created)
                        raise
                    verified |= fresh
                # before aggregation: every unit not verified right after this run wrote it
                todo = _failing_units(cfg, plan, run_dir, cfg_hash, provenance,
                                      [u for u in plan.units if u.key not in verified])
                if not todo:
                    break
                done -= {u.key for u in todo}
                verified -= {u.key for u in todo}
            if todo:
                raise RuntimeError(f"{len(todo)} work units fail their checks right after being written (e.g. "
                                   f"{unit_path(run_dir, todo[0].key)}): the run directory's storage alters files")
            timings["units_wall"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            files = {u.key: UnitFile(unit_path(run_dir, u.key)) for u in plan.units}
            results = aggregate(cfg, plan, files, be)
            timings["aggregation"] = time.perf_counter() - t0
            exactness = None
            if cfg.exactness.refine:
                t0 = time.perf_counter()
                results, exactness = refine_results(cfg, plan, files, results, time.perf_counter() - t_all)
                timings["exactness_refinement"] = time.perf_counter() - t0
    finally:
        if backend is None:
            be.close()
    with clear_ending(len(plan.units), lambda: len(done | computed), run_dir):  # disk full while writing outputs
        timings["total"] = time.perf_counter() - t_all
        summary = build_summary(cfg, plan, results, files, run_dir=run_dir, cfg_hash=cfg_hash, prepass=prepass,
                                computed=computed, skipped=len(done), timings=timings, backend_info=backend_info)
        if exactness is not None:
            summary["exactness"] = exactness
        points_path = run_dir / "points.csv"
        write_points(points_path, plan.y_test, results)
        write_points_long(run_dir, plan.y_test, results)
        plots = tuple(write_plots(summary, run_dir)) if cfg.output.plots else ()
        report_path = run_dir / "report.md"
        atomic_write_text(report_path, markdown_report(summary, plots, run_dir)
                          + ("" if exactness is None else exactness_markdown(exactness)))
        summary_path = run_dir / "summary.json"
        write_summary(summary_path, summary)
    logger.info("done in %.1f s: %s", timings["total"], run_dir)
    return RunResult(run_dir=run_dir, config_hash=cfg_hash, summary=summary, results=tuple(results),
                     points_path=points_path, summary_path=summary_path, report_path=report_path, plots=plots,
                     computed_units=len(computed), skipped_units=len(done))


__all__ = ["run", "RunResult", "run_directory"]
