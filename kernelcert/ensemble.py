"""Partition-aggregation certificates (docs/math.md §4): DPA (black box) and EnsembleCert (white box).

- `dpa`: the black-box DPA / SS-DPA certificate.
- `ensemblecert`, `ensemblecert_bounds`: white-box aggregation of per-partition class costs; the
  multiple-choice knapsack behind them (`min_cost_gain12`), the vote counting and the result type
  (`AggregateResult`) live in `kernelcert.voting`, shared with the run-off election.
- run-off election / finite aggregation are implemented in `kernelcert.roe` (`dpa_roe`, `fa`,
  `fa_roe`, `dpa_star_roe`, `whitebox_roe`) and re-exported here.

Radius convention (docs/math.md §1): the largest number of label flips that provably cannot change
the prediction; attack size = radius + 1. `NO_ATTACK` is the radius reported when no relabelling
at all changes the prediction (every cost infinite); pass `max_radius=` (e.g. the number of
training labels) to cap it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from .roe import dpa_roe, dpa_star_roe, fa, fa_roe, whitebox_roe  # re-exported (one import path for users)
from .voting import (
    NO_ATTACK, AggregateResult, argmax_plurality_margin, check_votes, knapsack_solver, min_cost_gain12, overtake_gains, plurality,
    plurality_margin, radius_from_cost, row_blocks, vote_counts,
)
from .voting import _knapsack_row, _knapsack_sorted, _knapsack_work

__all__ = [
    "NO_ATTACK", "AggregateResult", "EnsembleBounds", "vote_counts", "plurality", "dpa", "dpa_from_scores",
    "dpa_from_counts", "min_cost_gain12", "ensemblecert", "ensemblecert_bounds", "dpa_roe", "fa", "fa_roe",
    "dpa_star_roe", "whitebox_roe",
]

EnsembleBounds = AggregateResult  # former name of ensemblecert_bounds' result (now radius / radius_upper / exact)


# =========================================================================== DPA
def dpa(votes: npt.ArrayLike, num_classes: int) -> AggregateResult:
    """Black-box DPA / SS-DPA certificate (docs/math.md §4, DPA paper), vectorised over test points.

    votes (t, N_p) -> prediction p = plurality vote (ties to the smaller index) and
    radius R = floor((n_p - max_{c != p}(n_c + [c < p])) / 2) >= 0 (int64).
    """
    v = check_votes(votes, num_classes)
    return _dpa(vote_counts(v, int(num_classes)))


def dpa_from_scores(scores: npt.ArrayLike, *, counts_out: npt.NDArray[np.integer] | None = None) -> AggregateResult:
    """The DPA certificate of `dpa` straight from base-model scores (t, N_p, K): each model votes
    for the first maximiser of its K scores (as `numpy.argmax`); votes are counted and the
    certificate computed in one compiled pass over the scores (`voting.argmax_plurality_margin`), which reads
    every score once and never stores the votes. Same input rules and errors as
    `voting.argmax_counts`. counts_out: an array (t, K) of int64, int32, uint16 or uint8 (M must fit) that
    receives the vote counts."""
    prediction, radius = argmax_plurality_margin(scores, counts_out)
    return AggregateResult(prediction=prediction, radius=radius)


def dpa_from_counts(counts: npt.ArrayLike) -> AggregateResult:
    """The DPA certificate of `dpa` from the vote counts (t, K) (non-negative integers, e.g. the
    counts of `voting.argmax_votes` or `vote_counts`)."""
    n = np.asarray(counts)
    if n.ndim != 2 or n.shape[1] < 2 or not np.issubdtype(n.dtype, np.integer) or (n.size and n.min() < 0):
        raise ValueError(f"counts must be non-negative integers of shape (t, K) with K >= 2, got {n.dtype} {n.shape}")
    return _dpa(n)


def _dpa(counts: np.ndarray) -> AggregateResult:
    """DPA from checked vote counts (t, K >= 2), one compiled pass over them."""
    prediction, radius = plurality_margin(counts)
    return AggregateResult(prediction=prediction, radius=radius)


# =========================================================================== EnsembleCert
def _cost_array(costs, v: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """dtype and shape checks only (cheap); values are checked block by block in `_check_cost_block`."""
    A = np.asarray(costs)
    if A.dtype == object or A.dtype == bool or not np.issubdtype(A.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array, got dtype {A.dtype}")
    if np.issubdtype(A.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {A.dtype}")
    shape = v.shape + (num_classes,)
    if A.shape != shape:
        raise ValueError(f"{name} must have shape (t, N_p, K) = {shape}, got {A.shape}")
    return A


def _check_cost_block(A, v: np.ndarray, name: str, offset: int) -> np.ndarray:
    """One block of costs (B, N_p, K) as float64: non-negative integers or inf, 0 at each own vote."""
    A = A.astype(np.float64)
    if np.isnan(A).any():
        raise ValueError(f"{name} contains NaN")
    if (A < 0).any():
        raise ValueError(f"{name} must be non-negative (inf = unreachable)")
    fin = np.isfinite(A)
    if np.any(fin & (A != np.floor(A))):
        raise ValueError(f"{name} must be integer flip counts (or inf); round lower bounds up, never down")
    top = A.max(where=fin, initial=0.0)
    if top * v.shape[1] >= 2**53:
        raise ValueError(f"{name} has finite entries up to {top:.3g}: sums over {v.shape[1]} partitions would "
                         "not be exact in float64; use inf for unreachable classes")
    own = np.take_along_axis(A, v[..., None], axis=2)[..., 0]
    if np.any(own != 0):
        i, j = np.argwhere(own != 0)[0]
        raise ValueError(f"{name} must be 0 at each model's own vote (test point {offset + i}, partition {j}: "
                         f"{name}[{offset + i}, {j}, {v[i, j]}] = {own[i, j]})")
    return A


def _ensemblecert_block(v, A, K, solver, return_plan):
    """Cheapest attack over all rival classes for one block of test points (docs/math.md §4)."""
    B, N = v.shape
    n = vote_counts(v, K)
    p = plurality(n)
    rows = np.arange(B)
    votes_p = v == p[:, None]
    off_p = A.copy()
    off_p[rows, :, p] = np.inf
    cheapest_other = off_p.min(axis=2)  # min_{b != p} A_i^b: the model's radius + 1 (exact given A)
    best = np.full(B, np.inf)
    target = np.full(B, -1, np.int64)
    plan = np.full((B, N), -1, np.int64) if return_plan else None
    cheapest_class = off_p.argmin(axis=2) if return_plan else None
    if not return_plan:
        return p, _cheapest_attack(v, A, K, n, p, votes_p, cheapest_other, solver), target, plan
    for c in range(K):
        sel = np.flatnonzero(p != c)
        if sel.size == 0:
            continue
        vs, ps, Ac = v[sel], p[sel], A[sel, :, c]
        need = n[sel, ps] - n[sel, c] + (c > ps)  # G_c >= 1: gain in n_c - n_p that makes c beat p
        vp = votes_p[sel]
        gain1, gain2 = overtake_gains(vs, Ac, c, vp, cheapest_other[sel])
        cost, choice = solver(gain1, gain2, need, keep_choices=return_plan)
        improve = cost < best[sel]
        best[sel[improve]] = cost[improve]
        target[sel[improve]] = c
        if return_plan and improve.any():
            ch, r = choice[improve], sel[improve]
            to = np.where(ch == 2, c, np.where(vp[improve], cheapest_class[r], c))
            plan[r] = np.where(ch > 0, to, -1)
    return p, best, target, plan


def _cheapest_attack(v, A, K, n, p, votes_p, cheapest_other, solver) -> np.ndarray:
    """min over rival classes c of the knapsack cost "c overtakes p" (B,), the value of
    `_ensemblecert_block` without its plan, solving fewer knapsacks.

    The runner-up class (most votes after p) is solved on every row first; every other class only
    on the rows where a lower bound on its cost is below the minimum so far: need_c x (the cheapest
    cost per unit of gain of any partition, min(gain1, gain2 / 2)), since every partition gains at
    most 2. A skipped class costs >= the minimum, so the minimum is the same, and each row's
    knapsack value depends on that row alone (the solvers are row-wise).

    With the sorted solver (the default) the whole search runs in one compiled pass
    (`_cheapest_attack_kernel`, releases the GIL); other solvers (and the tests' oracle) take the
    numpy loop below, class by class over all rows."""
    B = len(v)
    rival = np.where(np.arange(K)[None, :] == p[:, None], -1, n)
    runner = np.argmax(rival, axis=1)
    best = np.full(B, np.inf)
    if solver is _knapsack_sorted:
        if B:
            _cheapest_attack_kernel(np.ascontiguousarray(v, np.int64), np.ascontiguousarray(A, np.float64),
                                    np.ascontiguousarray(n, np.int64), np.ascontiguousarray(p, np.int64),
                                    np.ascontiguousarray(cheapest_other, np.float64),
                                    np.ascontiguousarray(runner, np.int64), best)
        return best
    for first in (True, False):
        for c in range(K):
            if first:
                sel = np.flatnonzero(runner == c)
            else:
                sel = np.flatnonzero((p != c) & (runner != c))
            if sel.size == 0:
                continue
            ps = p[sel]
            need = n[sel, ps] - n[sel, c] + (c > ps)  # G_c >= 1: gain in n_c - n_p that makes c beat p
            gain1, gain2 = overtake_gains(v[sel], A[sel, :, c], c, votes_p[sel], cheapest_other[sel])
            if not first:
                unit = np.minimum(gain1, gain2 / 2).min(axis=1)  # cheapest cost per unit of gain
                keep = need * unit < best[sel]
                sel, need, gain1, gain2 = sel[keep], need[keep], gain1[keep], gain2[keep]
                if sel.size == 0:
                    continue
            cost, _ = solver(gain1, gain2, need, keep_choices=False)
            best[sel] = np.minimum(best[sel], cost)
    return best


@njit(cache=True, nogil=True)
def _cheapest_attack_kernel(v, A, n, p, cheapest_other, runner, best):  # pragma: no cover - compiled (numba); tested against the numpy loop
    """`_cheapest_attack` with the sorted solver, row by row: the runner-up class first, then every
    other class c != p in class order unless need_c x min over partitions of min(gain1, gain2 / 2)
    is not below the minimum so far; the options of `voting.overtake_gains` and the knapsack value
    of `voting._knapsack_row` (the same values as the numpy loop). v (B, N) int64, A (B, N, K)
    float64, n (B, K) int64 counts, p and runner (B,) int64, cheapest_other (B, N) float64;
    writes best (B,) float64."""
    B, N = v.shape
    K = A.shape[2]
    inf = np.inf
    g1 = np.empty(N)
    g2 = np.empty(N)
    cb, ca, units, P, F, e1, sm = _knapsack_work(N)
    for r in range(B):
        pr = p[r]
        ru = runner[r]
        low = inf
        for first in range(2):
            for c in range(K):
                if first == 0:
                    if c != ru:
                        continue
                elif c == pr or c == ru:
                    continue
                need = n[r, pr] - n[r, c] + (1 if c > pr else 0)
                unit = inf  # cheapest cost per unit of gain
                for i in range(N):
                    vi = v[r, i]
                    if vi == pr:  # gains 1 by its cheapest change, 2 by moving to c
                        x = cheapest_other[r, i]
                        y = A[r, i, c]
                    elif vi == c:
                        x = inf
                        y = inf
                    else:
                        x = A[r, i, c]
                        y = inf
                    g1[i] = x
                    g2[i] = y
                    unit = min(unit, min(x, y / 2))
                if first == 1 and not need * unit < low:
                    continue
                low = min(low, _knapsack_row(g1, g2, need, cb, ca, units, P, F, e1, sm))
        best[r] = low


def _run(v, cost_arrays, names, K, method, return_plan, max_radius, block_size):
    """Stream over blocks of test points; one EnsembleCert per cost array (validated per block)."""
    solver = knapsack_solver(method)
    t, N = v.shape
    pred = np.empty(t, np.int64)
    costs = [np.empty(t) for _ in cost_arrays]
    target = np.empty(t, np.int64) if return_plan else None
    plan = np.empty((t, N), np.int64) if return_plan else None
    # per block: the (B, N_p, K) costs, (B, N_p) work arrays, and the DP's (N_p, B, N_p + 2) int8 choices
    row_bytes = 8 * (3 * N * K + 8 * N) + (N * (N + 2) if return_plan and method == "dp" else 0)
    for sl in row_blocks(t, row_bytes, block_size):
        blocks = [_check_cost_block(A[sl], v[sl], name, sl.start) for A, name in zip(cost_arrays, names)]
        if len(blocks) == 2 and np.any(blocks[0] > blocks[1]):
            raise ValueError(f"{names[0]} must be <= {names[1]} everywhere")
        for out, Ab in zip(costs, blocks):
            p, best, tg, pl = _ensemblecert_block(v[sl], Ab, K, solver, return_plan)
            pred[sl], out[sl] = p, best
            if return_plan:
                target[sl], plan[sl] = tg, pl
    return pred, [radius_from_cost(c, max_radius) for c in costs], target, plan


def ensemblecert(votes: npt.ArrayLike, costs: npt.ArrayLike, num_classes: int, *, return_plan: bool = False,
                 method: str = "auto",
                 max_radius: int | None = None, block_size: int | None = None) -> AggregateResult:
    """White-box EnsembleCert radius from per-partition class costs (docs/math.md §4).

    votes (t, N_p) base-model votes; costs (t, N_p, K) integer flips (inf = unreachable) that make
    model i vote class c, 0 at its own vote (any real dtype; float32 or integer arrays save
    memory). Radius (t,) int64 = (cheapest attack over rival classes c != p) - 1: exact given
    exact costs, a sound lower bound from lower-bound costs, an upper bound from upper-bound
    costs. NO_ATTACK when no attack exists (capped at max_radius if given). method:
    "auto"/"sorted" (exact, O(K N_p log N_p) per test point) or "dp" (exact, O(K N_p^2)).
    return_plan adds plan (t, N_p) (target class per partition, -1 = untouched) and target (t,)
    for a cheapest attack. Streams over blocks of test points (block_size rows, default by size).
    """
    v = check_votes(votes, num_classes)
    K = int(num_classes)
    A = _cost_array(costs, v, K, "costs")
    pred, (radius,), target, plan = _run(v, [A], ["costs"], K, method, return_plan, max_radius, block_size)
    return AggregateResult(prediction=pred, radius=radius, plan=plan, target=target)


def ensemblecert_bounds(votes: npt.ArrayLike, cost_lower: npt.ArrayLike, cost_upper: npt.ArrayLike, num_classes: int,
                        *, method: str = "auto",
                        max_radius: int | None = None, block_size: int | None = None) -> AggregateResult:
    """EnsembleCert from lower- and upper-bound costs (t, N_p, K) (e.g. Certificate.cost_lower /
    cost_upper per partition): AggregateResult with radius (sound, from the lower costs),
    radius_upper (from the upper costs, backed by an attack when they are) and exact (t,) bool where
    the two coincide. ValueError if lower > upper anywhere."""
    v = check_votes(votes, num_classes)
    K = int(num_classes)
    names = ["cost_lower", "cost_upper"]
    arrays = [_cost_array(c, v, K, n) for c, n in zip((cost_lower, cost_upper), names)]
    pred, (lo, hi), _, _ = _run(v, arrays, names, K, method, False, max_radius, block_size)
    return AggregateResult(prediction=pred, radius=lo, radius_upper=hi, exact=lo == hi)
