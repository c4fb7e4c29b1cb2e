"""`[exactness] refine = true`: EnsembleCert and white-box ROE radii refined, after aggregation.

The aggregation gives EnsembleCert a lower radius (from the class-cost lower bounds) and an upper one
(from verified attacks); where they differ, `kernelcert.refine.refine_ensemblecert` solves exactly
only the per-partition class costs that can change the knapsack optimum (docs/math.md §4.3).
White-box ROE reads the same class-cost lower bounds as vote costs; `kernelcert.refine.refine_whitebox_roe`
refines the ones below its attack size until its radius is proven equal to the certificate at the
exact costs ("resolved"; still a lower bound on the true radius, so its `exact` column stays 0), reusing
the costs the EnsembleCert step already solved for the same models; its results become
`RefinedWhiteboxResult`s, whose per-point `resolved` flags `points.csv` and the long table show. The
stored evidence holds costs, not label weights, so the weights of the test points it needs are
recomputed here for the partitions it touches: the partition's Gram, the learner fitted on it (as
in the work unit, same config, so the same model) and the kernel rows of those test points only.
Budget: CPU seconds of this step, at most `budget_factor` times the run's time so far (and at most
`budget_seconds` when set); each class-cost problem stops after `time_limit` seconds and keeps its bounds.

The recomputed kernel rows may differ from the unit's in the last bits (other block shapes in BLAS).
A row is used only if its recomputed class scores match the stored ones to `_SCORE_TOLERANCE` times
sum|w| and give the stored vote; the refinement then treats the weights as known up to
`MODEL_TOLERANCE` times sum|w| (`kernelcert.refine.solve_class_cost`), so its answers hold for the
stored model too. Rows that do not match keep their bounds.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .._validation import argmax_smallest
from ..learners import onehot
from ..evidence import Evidence
from ..refine import PartitionSolver, refine_ensemblecert, refine_whitebox_roe
from .aggregate import MethodResult, agg_block_rows
from .config import RunConfig, make_kernel, make_learner
from .plan import AggregationTarget, RunPlan
from .store import UnitFile, decode_block, read_stored_block
from .unit import kernel_block_bytes

REFINED_METHOD = "ensemblecert"
WHITEBOX_METHOD = "whitebox_roe"
MODEL_TOLERANCE = 1e-9  # relative: recomputed weights vs the unit's (rounding-level differences only)
_SCORE_TOLERANCE = 1e-11

SolvedCosts = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(rows (m,) int64 sorted, cost_lower, cost_upper (m, N_p, K)): class costs the EnsembleCert step refined."""


@dataclass(frozen=True, kw_only=True)
class RefinedWhiteboxResult(MethodResult):
    """A white-box ROE `MethodResult` after `[exactness] refine`, with per-point flags (t,) bool:
    `resolved`: the radius is proven equal to the white-box certificate at the exact per-class costs
    (docs/math.md §4.4) — still a lower bound on the run-off election's true radius, so `exact` stays
    False; `resolved_before`: already so at the cost bounds the white-box step started from (the stored
    bounds, tightened by the EnsembleCert step where it ran). Points the CPU budget did not reach are
    False in both."""

    resolved: np.ndarray
    resolved_before: np.ndarray


class _PartitionWeights:
    """weights(j, rows) of one learner on one partition ensemble: member j's model (fitted on first
    use, then kept) evaluated on the test points `rows`."""

    def __init__(self, cfg: RunConfig, plan: RunPlan, unit_keys: Sequence[str], learner: int) -> None:
        self.cfg, self.plan, self.learner = cfg, plan, learner
        by_key = {u.key: u for u in plan.units}
        self.units = [by_key[k] for k in unit_keys]
        kern = make_kernel(cfg.kernel, max_block_bytes=kernel_block_bytes(cfg.execution))
        fn = kern.ntk if cfg.kernel.kind == "ntk" else kern.nngp
        self.evaluate = functools.partial(fn, dtype=np.dtype(cfg.kernel.dtype))
        self.models: dict[int, Any] = {}  # fitted learners (`make_learner(...).fit(...)`)

    def labels(self) -> list[np.ndarray]:
        return [self.plan.y_train[u.train_index] for u in self.units]

    def matches(self, stored_scores: np.ndarray, stored_votes: np.ndarray
                ) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
        """accept(j, rows, W) for `PartitionSolver`: the recomputed rows reproduce the stored scores
        (rows of the refined subset) and votes."""
        def accept(j: int, rows: np.ndarray, W: np.ndarray) -> np.ndarray:
            y = self.plan.y_train[self.units[j].train_index]
            scores = W @ onehot(y, self.plan.num_classes)
            scale = np.abs(W).sum(axis=1)
            close = np.all(np.abs(scores - stored_scores[rows, j]) <= _SCORE_TOLERANCE * scale[:, None], axis=1)
            return close & (argmax_smallest(scores) == stored_votes[rows, j])
        return accept

    def __call__(self, j: int, rows: np.ndarray) -> np.ndarray:
        x = self.plan.x_train[self.units[j].train_index]
        if j not in self.models:
            G = self.evaluate(x)
            self.models[j] = make_learner(self.cfg.learners[self.learner]).fit(
                G, self.plan.y_train[self.units[j].train_index], self.plan.num_classes)
            del G
        return self.models[j].label_weights(self.evaluate(self.plan.x_test[np.asarray(rows)], x))


def _refine_whitebox(cfg: RunConfig, plan: RunPlan, files: dict[str, UnitFile], r: MethodResult,
                     target: AggregationTarget, j: int, weights: _PartitionWeights, solved: SolvedCosts | None,
                     budget: float) -> tuple[RefinedWhiteboxResult, dict[str, Any], bool]:
    """White-box ROE of one (learner, N_p): `refine_whitebox_roe` over blocks of test points (the
    aggregation's block size), starting from the stored cost bounds tightened by `solved` (the
    EnsembleCert step's costs on the same models, or None). Returns the result with raised radii and
    its per-point `resolved` / `resolved_before` flags, its summary entry and whether the budget ran
    out. The entry lists the examined points left unresolved (`points_unresolved`, test-point
    indices); points the budget did not reach (`points_examined` < t) are unresolved in the flags
    and the fractions."""
    t0 = time.process_time()
    t = len(plan.y_test)
    n_train = len(plan.y_train)
    members = [files[k] for k in target.units]
    fields = ("votes", "scores", "cost_lower", "cost_upper", "pair_costs", "fallback")
    B = agg_block_rows(len(members), plan.num_classes, cfg.execution)
    radius = r.radius.copy()
    before = np.zeros(t, bool)
    after = np.zeros(t, bool)
    examined = np.zeros(t, bool)
    counts = {"problems": 0, "rounds": 0, "time_limits": 0, "near_ties": 0, "rows_not_reproduced": 0}
    ran_out = False
    for s0 in range(0, t, B):
        left = budget - (time.process_time() - t0)
        if left <= 0:
            ran_out = True
            break
        rows = np.arange(s0, min(t, s0 + B))
        ev = decode_block(read_stored_block(members, j, s0, rows[-1] + 1, fields))
        lower, upper, pairs, fallback = (ev.require(f) for f in ("cost_lower", "cost_upper", "pair_costs", "fallback"))
        L, U = lower.copy(), upper.copy()
        if solved is not None:
            done_rows, done_lo, done_hi = solved
            pos = np.searchsorted(done_rows, rows)
            hit = (pos < len(done_rows)) & (done_rows[np.minimum(pos, len(done_rows) - 1)] == rows)
            L[hit] = np.maximum(L[hit], done_lo[pos[hit]])
            U[hit] = np.minimum(U[hit], done_hi[pos[hit]])
        solver = PartitionSolver(lambda m, rr: weights(m, rows[rr]), weights.labels(), plan.num_classes,
                                 time_limit=cfg.exactness.time_limit, model_tolerance=MODEL_TOLERANCE,
                                 accept=weights.matches(ev.require("scores"), ev.votes))
        res = refine_whitebox_roe(ev.require("scores"), L, U, pairs, solver, fallback=fallback, budget_seconds=left,
                                  max_radius=n_train)
        ran_out |= res.budget_exhausted
        radius[rows] = np.maximum(radius[rows], np.minimum(res.radius, n_train))
        before[rows], after[rows], examined[rows] = res.resolved_before, res.resolved, True
        counts["problems"] += res.problems
        counts["rounds"] = max(counts["rounds"], res.rounds)
        counts["time_limits"] += solver.timed_out
        counts["near_ties"] += solver.near_tie
        counts["rows_not_reproduced"] += solver.rejected
    entry = {"learner": r.learner, "num_partitions": r.num_partitions, "method": r.method,
             "resolved_fraction_before": float(before.mean()), "resolved_fraction_after": float(after.mean()),
             "radius_raised": int(np.count_nonzero(radius > r.radius)), "points_examined": int(examined.sum()),
             "points_unresolved": np.flatnonzero(examined & ~after).tolist(), **counts,
             "partitions_refitted": len(weights.models), "cpu_seconds": time.process_time() - t0}
    unrefined = {f.name: getattr(r, f.name) for f in dataclasses.fields(MethodResult)}
    refined = RefinedWhiteboxResult(**{**unrefined, "radius": radius}, resolved=after, resolved_before=before)
    return refined, entry, ran_out


def refine_results(cfg: RunConfig, plan: RunPlan, files: dict[str, UnitFile], results: list[MethodResult],
                   run_seconds: float) -> tuple[list[MethodResult], dict[str, Any]]:
    """Refine every EnsembleCert result whose radius is not proven exact everywhere, and every white-box
    ROE result (`_refine_whitebox`). `run_seconds`: the run's wall time so far (the recorded unit times
    are used when larger, e.g. on a resumed run). Returns the results (EnsembleCert ones with
    `exact_before` set, white-box ROE ones as `RefinedWhiteboxResult` with raised radii) and the
    summary block `exactness`."""
    ex = cfg.exactness
    # the run's time: this process so far, or the recorded unit times when units were reused
    unit_seconds = sum(float(f.meta()["seconds"]["total"]) for f in files.values())
    run_seconds = max(float(run_seconds), unit_seconds)
    budget = ex.budget_factor * run_seconds
    if ex.budget_seconds is not None:
        budget = min(budget, ex.budget_seconds)
    t0 = time.process_time()
    wall0 = time.perf_counter()
    targets = {t.size: t for t in plan.targets if t.kind == "partition"}
    learner_index = {lc.name: j for j, lc in enumerate(cfg.learners)}
    out: list[MethodResult] = []
    rows: list[dict[str, Any]] = []
    exhausted = False
    weights_of: dict[tuple[int, int], _PartitionWeights] = {}  # refitted models, shared by both methods
    solved: dict[tuple[int, int], SolvedCosts] = {}  # EnsembleCert's refined costs
    with threadpool_limits(limits=cfg.execution.blas_threads, user_api="blas"):
        for r in results:
            if r.method == WHITEBOX_METHOD:
                j = learner_index[r.learner]
                key = (j, r.num_partitions)
                if key not in weights_of:
                    weights_of[key] = _PartitionWeights(cfg, plan, targets[r.num_partitions].units, j)
                left = budget - (time.process_time() - t0)
                r2, entry, ran_out = _refine_whitebox(cfg, plan, files, r, targets[r.num_partitions], j,
                                                      weights_of[key], solved.get(key), left)
                exhausted |= ran_out
                out.append(r2)
                rows.append(entry)
                continue
            if r.method != REFINED_METHOD:
                out.append(r)
                continue
            before = r.exact.copy()
            entry = {"learner": r.learner, "num_partitions": r.num_partitions, "method": r.method,
                     "exact_fraction_before": float(before.mean()), "exact_fraction_after": float(before.mean()),
                     "problems": 0, "rounds": 0, "time_limits": 0, "near_ties": 0, "rows_not_reproduced": 0,
                     "partitions_refitted": 0,
                     "cpu_seconds": 0.0}
            left = budget - (time.process_time() - t0)
            if before.all() or left <= 0:
                exhausted |= not before.all()
                out.append(dataclasses.replace(r, exact_before=before))
                rows.append(entry)
                continue
            j = learner_index[r.learner]
            target = targets[r.num_partitions]
            members = [files[k] for k in target.units]
            ev = decode_block(read_stored_block(members, j, 0, len(plan.y_test),
                                                ("votes", "scores", "cost_lower", "cost_upper")))
            open_rows = np.flatnonzero(~before)
            weights = weights_of.setdefault((j, r.num_partitions), _PartitionWeights(cfg, plan, target.units, j))
            solver = PartitionSolver(lambda m, rr: weights(m, open_rows[rr]), weights.labels(), plan.num_classes,
                                     time_limit=ex.time_limit, model_tolerance=MODEL_TOLERANCE,
                                     accept=weights.matches(ev.require("scores")[open_rows], ev.votes[open_rows]))
            t1 = time.process_time()
            lower, upper = ev.require("cost_lower"), ev.require("cost_upper")
            res = refine_ensemblecert(ev.votes[open_rows], lower[open_rows], upper[open_rows],
                                      plan.num_classes, solver, budget_seconds=left, max_radius=len(plan.y_train))
            exhausted |= res.budget_exhausted
            solved[(j, r.num_partitions)] = (open_rows, res.cost_lower, res.cost_upper)
            if r.radius_upper is None:  # pragma: no cover - EnsembleCert always bounds from both sides
                raise ValueError(f"{r.method} result of {r.learner}, N_p = {r.num_partitions} has no radius_upper")
            radius, rad_up, exact = r.radius.copy(), r.radius_upper.copy(), before.copy()
            radius[open_rows] = np.maximum(radius[open_rows], res.radius_lower)
            rad_up[open_rows] = np.minimum(rad_up[open_rows], res.radius_upper)
            exact[open_rows] = radius[open_rows] == rad_up[open_rows]
            out.append(dataclasses.replace(r, radius=radius, radius_upper=rad_up, exact=exact, exact_before=before))
            entry.update(exact_fraction_after=float(exact.mean()), problems=res.problems, rounds=res.rounds,
                         time_limits=solver.timed_out, near_ties=solver.near_tie, rows_not_reproduced=solver.rejected,
                         partitions_refitted=len(weights.models), cpu_seconds=time.process_time() - t1)
            rows.append(entry)
    block = {"refine": True, "budget_cpu_seconds": budget, "time_limit": ex.time_limit,
             "cpu_seconds": time.process_time() - t0, "wall_seconds": time.perf_counter() - wall0,
             "budget_exhausted": exhausted, "run_seconds_before": run_seconds, "results": rows}
    return out, block


def exactness_markdown(block: dict[str, Any]) -> str:
    """Report section: EnsembleCert radii proven exact and white-box ROE radii resolved, before and
    after the refinement, and its cost."""
    ens = [r for r in block["results"] if r.get("method", REFINED_METHOD) == REFINED_METHOD]
    wb = [r for r in block["results"] if r.get("method") == WHITEBOX_METHOD]
    lines = ["", "## Exactness refinement", "",
             "Per-partition class costs that can change a radius were solved exactly (`kernelcert.refine`, "
             "docs/math.md §4.4); "
             f"CPU time {block['cpu_seconds']:.2f} s (budget {block['budget_cpu_seconds']:.1f} s"
             f"{', exhausted' if block['budget_exhausted'] else ''}; the run before it took "
             f"{block['run_seconds_before']:.1f} s)."]
    if ens:
        lines += ["", "EnsembleCert: radii proven exact (lower- and upper-cost radii equal).", "",
                  "| learner | N_p | exact before | exact after | problems | time limits | partitions refitted | s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['learner']} | {r['num_partitions']} | {r['exact_fraction_before']:.4f} | "
                  f"{r['exact_fraction_after']:.4f} | {r['problems']} | {r['time_limits']} | "
                  f"{r['partitions_refitted']} | {r['cpu_seconds']:.2f} |" for r in ens]
    if wb:
        lines += ["", "White-box ROE: radii *resolved*, i.e. proven equal to the certificate at the exact per-class "
                  "costs (a lower bound on the true radius, so the `exact` column stays 0; per point: the `resolved` "
                  "column of points.csv); radii raised by the refined costs.", "",
                  "| learner | N_p | resolved before | resolved after | radii raised | problems | time limits | s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['learner']} | {r['num_partitions']} | {r['resolved_fraction_before']:.4f} | "
                  f"{r['resolved_fraction_after']:.4f} | {r['radius_raised']} | {r['problems']} | "
                  f"{r['time_limits']} | {r['cpu_seconds']:.2f} |" for r in wb]
    return "\n".join(lines) + "\n"


__all__ = ["refine_results", "exactness_markdown", "RefinedWhiteboxResult", "SolvedCosts", "REFINED_METHOD",
           "WHITEBOX_METHOD", "MODEL_TOLERANCE"]
