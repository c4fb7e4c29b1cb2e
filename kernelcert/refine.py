"""Exact per-class costs at partition scale; EnsembleCert and white-box ROE radii refined (docs/math.md §3.3, §4.4).

`certify` brackets each per-class cost A_c (fewest label flips after which one label-linear model
predicts c) between a sound lower bound and a verified attack. This module closes the gaps that
matter:

1. `solve_class_cost` / `refine_class_costs` / `exact_class_costs`: an exact A_c for one test row of
   a model with n = 10^2-10^4 training samples, by a small mixed-integer program (HiGHS through
   `scipy.optimize.milp`) over the only relabellings that can be part of an attack cheaper than the
   verified one (see `solve_class_cost` for the reductions and why each is exact), or, when no weight
   is negative (the C_max SVM), by an exact combinatorial method (`_positive_min_moves`).
   Measured on MNIST partitions of 100-1,000 samples (benchmarks/exactness.py): about 1-5 ms per
   problem, every open class cost closed.
2. `refine_ensemblecert`: EnsembleCert (§4.3) from lower and upper costs; where the two radii differ,
   only the costs used by the lower-bound knapsack's cheapest plan are refined, the knapsack is
   re-solved, and so on until the radius is proven or the time budget is spent.
3. `refine_whitebox_roe`: the white-box run-off certificate (§5) with its vote costs refined the same
   lazy way, until its radius is proven equal to the certificate's value at the exact per-class
   costs (a lower bound on the true label-flip radius of the run-off election, which it is not
   claimed to equal).

What "exact" means here. A relabelling makes c the prediction when c beats every k in exact
arithmetic on the float64 weights with ties to the smaller class index. An answer is flagged exact
only when (a) a concrete attack of that size was re-checked on the recomputed scores with error-free
summation (`math.fsum`) and wins by more than the rounding allowance of docs/math.md §3.6 (so it also
wins when the scores are evaluated in float64 in any order), or wins under the tie rule where every
float64 sum of the weights is exact (weights on a common dyadic grid, e.g. small integers); and
(b) a MILP *relaxation* (every constraint loosened by the tolerance of §3.6 plus the solver's
tolerances and the mass of the coefficients dropped as too small for HiGHS) has no solution with
fewer flips. A relaxation can only under-estimate, so (b) is a lower bound whatever the rounding;
the value never leaves the caller's [lower, upper] bracket. Problems that hit the time limit keep
their bounds (raised by the solver's proven dual bound) and are flagged not exact.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from ._validation import as_float_array, check_int, check_labels, check_positive
from .certificates import Certificate, certify
from .ensemble import ensemblecert
from .roe import whitebox_roe
from .voting import NO_ATTACK

__all__ = [
    "ClassCostSolve", "CostRefinement", "ExactClassCosts", "PartitionSolver", "RefinedEnsemble", "RefinedWhiteboxROE",
    "attack_makes_class_win", "exact_class_costs", "refine_class_costs", "refine_ensemblecert", "refine_whitebox_roe",
    "solve_class_cost",
]

Attack = tuple[tuple[int, int], ...]  # a relabelling: sorted (train_index, new_label) pairs
_EPS = float(np.finfo(np.float64).eps)
_DROP = 1e-8  # relabellings moving less than this times max|w| are left out of the MILP (mass accounted for)
# Margins (times max|w|) around HiGHS's primal feasibility tolerance (1e-7 on rows scaled to max|w| = 1).
# The tolerance only ever makes the solver accept slightly infeasible points, which keeps a relaxation a
# relaxation; the relaxed rows get a hair more (rounding of the scaled right-hand sides), the strict rows
# must clear it so that their optimum wins for real.
_RELAX_TOL = 1e-9
_STRICT_TOL = 2e-6
_GRID_MARGIN = 1e-5  # on a dyadic grid q the constraints sit q/2 from the boundary; needs q/2 >= this * max|w|
_FILTER_ROUNDS = 6


# --------------------------------------------------------------------------- one row: tolerances and exact check
class _Row:
    """One test row w (n,) with labels y: exact class sums, tolerances and the dyadic grid (if any).

    slack: bound on the rounding error of any float64 evaluation of a score difference (docs/math.md
    §3.6, with the generous constant of `certify` for the largest window), plus model_tolerance * sum|w|
    when w is a recomputation of the weights the bounds came from (each weight off by at most that much
    in total); tau = rtol * sum|w| + slack, the tolerance of the lower-bound computations. grid: q > 0
    when every w_j is an integer multiple of q and sum|w| <= 2^53 q, so every float64 sum of weights is
    exact in any order (then ties are decided exactly by the tie rule); None otherwise (and always None
    with a model tolerance).
    """

    def __init__(self, w: np.ndarray, y: np.ndarray, K: int, rtol: float, model_tolerance: float = 0.0):
        self.w, self.y, self.K = w, y, K
        self.n = len(y)
        self.absum = float(np.abs(w).sum())
        self.maxabs = float(np.abs(w).max()) if self.n else 0.0
        self.slack = (16.0 * (2 * K + 1) * (self.n + 16) * _EPS + model_tolerance) * self.absum
        self.tau = rtol * self.absum + self.slack
        self.grid = _dyadic_grid(w, self.absum) if model_tolerance == 0 else None
        # class sums rounded once from the exact sums (used for constraint right-hand sides only)
        self.scores = np.array([math.fsum(w[y == k]) for k in range(K)])


def _dyadic_grid(w: np.ndarray, absum: float) -> float | None:
    """The largest power of two q with every w_j in q·Z, if sum|w| <= 2^53 q (all sums exact); else None."""
    nz = w[w != 0]
    if nz.size == 0:
        return None
    mant, expo = np.frexp(nz)
    m = np.abs(np.ldexp(mant, 53)).astype(np.int64)  # exact: |mant| in [0.5, 1)
    low = m & -m  # lowest set bit, a power of two
    tz = np.round(np.log2(low.astype(np.float64))).astype(np.int64)
    e = int((expo.astype(np.int64) - 53 + tz).min())
    q = math.ldexp(1.0, e)
    if q == 0.0 or absum > math.ldexp(1.0, 53 + e):
        return None
    return q


def _exact_gaps(w: np.ndarray, y2: np.ndarray, c: int, K: int) -> np.ndarray:
    """s_c - s_k (K,) of the labels y2, each correctly rounded from the exact value (sign exact)."""
    wc = w[y2 == c]
    return np.array([math.fsum(np.concatenate([wc, -w[y2 == k]])) if k != c else np.inf for k in range(K)])


def _wins(row: _Row, y2: np.ndarray, c: int) -> bool:
    """Class c is the prediction for labels y2: by more than the rounding allowance against every
    rival (so in exact arithmetic and in float64 in any summation order), or, on a dyadic grid where
    every sum is exact, under the tie rule (beat k < c strictly, at least tie k > c)."""
    gaps = _exact_gaps(row.w, y2, c, row.K)
    k = np.arange(row.K)
    if row.grid is not None:
        return bool(np.all(np.where(k < c, gaps > 0, gaps >= 0)))
    return bool(np.all(gaps > row.slack))


def attack_makes_class_win(weights_row: ArrayLike, labels: ArrayLike, num_classes: int | None,
                           attack: Iterable[tuple[int, int]], target: int, *, rtol: float = 1e-9) -> bool:
    """Whether relabelling `attack` [(train_index, new_label), ...] makes `target` the prediction of the
    row, checked with error-free sums as `solve_class_cost` verifies its answers (see the module doc)."""
    w = as_float_array("weights_row", weights_row, ndim=1)
    y, K = check_labels(labels, num_classes, name="labels")
    c = check_int("target", target, minimum=0, maximum=K - 1)
    y2 = y.copy()
    for j, v in attack:
        y2[check_int("train_index", j, minimum=0, maximum=len(y) - 1)] = check_int("new_label", v, minimum=0,
                                                                                    maximum=K - 1)
    return _wins(_Row(w, y, K, rtol), y2, c)


# --------------------------------------------------------------------------- candidate relabellings
class _Moves:
    """Candidate relabellings towards target c: sample j (m,), destination d (m,), gain D (m, K): the
    increase of s_c - s_k for each k (column c unused). `order` lists chains of move indices that some
    optimal attack uses as prefixes (same source class and sign, decreasing |w|)."""

    def __init__(self, sample: np.ndarray, dest: np.ndarray, D: np.ndarray, chains: list[np.ndarray]) -> None:
        self.sample, self.dest, self.D, self.chains = sample, dest, D, chains

    def subset(self, keep: np.ndarray) -> "_Moves":
        """The moves in `keep`. A chain is cut at its first removed move and its later moves are dropped
        as well: some optimal attack uses a prefix of the chain, and that prefix cannot reach a move that
        is in no attack."""
        keep = keep.copy()
        chains = []
        for ch in self.chains:
            gone = np.flatnonzero(~keep[ch])
            if gone.size:
                keep[ch[gone[0]:]] = False
                ch = ch[:gone[0]]
            chains.append(ch)
        idx = np.flatnonzero(keep)
        remap = np.full(len(keep), -1)
        remap[idx] = np.arange(idx.size)
        chains = [remap[ch] for ch in chains if ch.size > 1]
        return _Moves(self.sample[idx], self.dest[idx], self.D[idx], chains)


def _candidate_moves(row: _Row, c: int, m_max: int) -> tuple[_Moves, float]:
    """Every relabelling that can belong to an attack of at most m_max flips towards c, up to dominance.

    * w > 0 of class u != c: moving it to c is at least as good for every gap s_c - s_k as moving it
      anywhere else (gain w, 2w against u), and any larger unmoved w of class u does at least as well:
      only the m_max largest of each class, as a prefix chain.
    * w < 0 of class c (|w| = v): moving it to d raises s_c by v and lowers s_d by v; larger v is at
      least as good for every gap: the m_max largest, every destination d != c.
    * w < 0 of class u != c: moving it to d not in {u, c} transfers v from s_d to s_u (gain v against d,
      -v against u); no dominance, so all of them (pruned later by `_filter`). Moving to c only hurts.
    * w > 0 of class c and w = 0: never useful.
    Moves with 0 < |w| < _DROP max|w| are left out; returns the bound 2 m_max max(those |w|) on what
    leaving them out of an attack can cost each gap (added to the relaxation's tolerance).
    """
    w, y, K = row.w, row.y, row.K
    thr = _DROP * row.maxabs
    samples, dests, gains, chains = [], [], [], []
    start = 0
    eye = np.eye(K)
    for u in range(K):
        idx = np.flatnonzero(y == u)
        wu = w[idx]
        if u != c:
            pos = idx[wu > thr]
            pos = pos[np.argsort(-w[pos], kind="stable")][:m_max]
            if pos.size:
                v = w[pos]
                samples.append(pos)
                dests.append(np.full(pos.size, c))
                gains.append(v[:, None] * (1.0 + eye[u])[None, :])
                chains.append(np.arange(start, start + pos.size))
                start += pos.size
            neg = idx[wu < -thr]
            others = [d for d in range(K) if d not in (u, c)]
            if neg.size and others:
                v = -w[neg]
                for d in others:
                    samples.append(neg)
                    dests.append(np.full(neg.size, d))
                    gains.append(v[:, None] * (eye[d] - eye[u])[None, :])
                    start += neg.size
        else:
            neg = idx[wu < -thr]
            neg = neg[np.argsort(w[neg], kind="stable")][:m_max]
            if neg.size:
                v = -w[neg]
                for d in range(K):
                    if d == c:
                        continue
                    samples.append(neg)
                    dests.append(np.full(neg.size, d))
                    gains.append(v[:, None] * (1.0 + eye[d])[None, :])
                    start += neg.size
    if samples:
        moves = _Moves(np.concatenate(samples), np.concatenate(dests), np.concatenate(gains), chains)
    else:
        moves = _Moves(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, K)), [])
    moves.D[:, c] = 0.0
    tiny = np.abs(w[(w != 0) & (np.abs(w) <= thr)])
    return moves, 2.0 * m_max * float(tiny.max(initial=0.0))


def _filter(moves: _Moves, need: np.ndarray, lambdas: np.ndarray, m_max: int) -> tuple[np.ndarray, bool]:
    """Moves that can belong to an attack of at most m_max flips meeting D-sums >= need (K,).

    For multipliers lam >= 0 every such attack X satisfies sum_X lam.D >= lam.need. A move x of X
    contributes lam.D_x and the other (at most m_max - 1) moves, from other samples, at most the sum of
    the m_max - 1 largest positive per-sample best values of lam.D: a move below lam.need minus that sum
    is in no attack. Returns (keep mask, infeasible) — infeasible when even the m_max best moves of
    distinct samples cannot reach lam.need for some lam (no attack of at most m_max flips).
    """
    m = len(moves.sample)
    keep = np.ones(m, bool)
    if m == 0:
        return keep, bool(np.any(need > 0))
    _, sid = np.unique(moves.sample, return_inverse=True)
    ns = int(sid.max()) + 1
    for _ in range(_FILTER_ROUNDS):
        red = moves.D @ lambdas.T  # (m, L)
        red[~keep] = -np.inf
        best = np.full((ns, lambdas.shape[0]), -np.inf)
        np.maximum.at(best, sid, red)
        best = np.maximum(best, 0.0)
        top = min(m_max, ns)
        part = -np.partition(-best, top - 1, axis=0)[:top] if top else np.zeros((0, lambdas.shape[0]))
        part = np.sort(part, axis=0)[::-1]
        target = lambdas @ need
        total = part.sum(axis=0)
        if np.any(total < target):
            return keep & False, True
        rest = total - part[top - 1] if top else total  # the m_max - 1 largest
        new = keep & np.all(red + rest[None, :] >= target[None, :], axis=1)
        if new.sum() == keep.sum():
            break
        keep = new
    return keep, False


# --------------------------------------------------------------------------- the MILP
def _milp(moves: _Moves, need: np.ndarray, rivals: np.ndarray, m_max: int, scale: float, time_limit: float
          ) -> tuple[str, np.ndarray | None, float]:
    """min #moves s.t. per rival k: sum D[:, k] x >= need[k], one move per sample, at most m_max moves,
    chains used as prefixes; x binary. Returns (status, x or None, dual bound)."""
    m = len(moves.sample)
    A_gap = moves.D[:, rivals].T / scale
    rows = [A_gap]
    lb = [need[rivals] / scale]
    ub = [np.full(rivals.size, np.inf)]
    blocks = []
    # count
    blocks.append(sparse.csr_matrix(np.ones((1, m))))
    lb.append(np.array([0.0]))
    ub.append(np.array([float(m_max)]))
    # one move per sample
    uniq, sid, cnt = np.unique(moves.sample, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(cnt[sid] > 1)
    if multi.size:
        _, r = np.unique(sid[multi], return_inverse=True)
        blocks.append(sparse.csr_matrix((np.ones(multi.size), (r, multi)), shape=(int(r.max()) + 1, m)))
        lb.append(np.full(int(r.max()) + 1, -np.inf))
        ub.append(np.ones(int(r.max()) + 1))
    # prefix chains: x[a] >= x[b] for consecutive entries
    pairs = [(ch[:-1], ch[1:]) for ch in moves.chains if len(ch) > 1]
    if pairs:
        a = np.concatenate([p[0] for p in pairs])
        b = np.concatenate([p[1] for p in pairs])
        k = np.arange(a.size)
        blocks.append(sparse.csr_matrix((np.r_[np.ones(a.size), -np.ones(a.size)], (np.r_[k, k], np.r_[a, b])),
                                        shape=(a.size, m)))
        lb.append(np.zeros(a.size))
        ub.append(np.full(a.size, np.inf))
    A = sparse.vstack([sparse.csr_matrix(rows[0])] + blocks, format="csr")
    res = milp(np.ones(m), constraints=LinearConstraint(A, np.concatenate(lb), np.concatenate(ub)),
               integrality=np.ones(m), bounds=Bounds(0.0, 1.0),
               options={"time_limit": float(time_limit), "mip_rel_gap": 0.0, "disp": False})
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) if bound is not None and np.isfinite(bound) else -np.inf
    if res.status == 0:
        return "optimal", np.round(res.x).astype(bool), bound
    if res.status == 2:
        return "infeasible", None, bound
    x = np.round(res.x).astype(bool) if res.x is not None else None
    return ("time_limit" if res.status == 1 else f"solver_status_{res.status}"), x, bound


# --------------------------------------------------------------------------- one problem
@dataclass(frozen=True)
class ClassCostSolve:
    """Result for one (row, target): lower <= A_c <= upper (floats, inf = unreachable / no attack);
    exact = lower == upper proven (see the module doc); status: 'bounds' (nothing to do), 'optimal',
    'infeasible' (no attack below the cap or the upper bound), 'time_limit', 'near_tie' (the relaxed
    optimum did not verify and the strict one is larger); attack: a verified attack [(j, label)] of
    `upper` flips found here (None if the caller's upper bound stands); seconds: CPU time."""

    lower: float
    upper: float
    exact: bool
    status: str
    attack: Attack | None
    seconds: float


def solve_class_cost(weights_row: ArrayLike, labels: ArrayLike, num_classes: int | None, target: int, lower: float,
                     upper: float, *,
                     cap: float | None = None, time_limit: float = 10.0, rtol: float = 1e-9,
                     model_tolerance: float = 0.0) -> ClassCostSolve:
    """Exact A_c for one row (n,) of label weights, given sound bounds lower <= A_c <= upper.

    `upper` must be backed by a verified attack (e.g. `Certificate.cost_upper`; inf when none) and
    `lower` by a proof (`Certificate.cost_lower`). Searches for attacks of at most
    m_max = min(upper, cap) - 1 flips (cap: only whether A_c < cap matters; then lower may end at cap):

    1. candidates: `_candidate_moves` (prefixes of the m_max largest weights of each class where a
       dominance argument allows, every useful move otherwise), pruned by `_filter` with multipliers
       e_k for each rival k (the pairwise constraints) and uniform ones (the Lagrangian constraint).
       Both steps remove only moves that belong to no attack of at most m_max flips.
    2. a MILP over the remaining moves (binary per move, one move per sample, prefix constraints,
       at most m_max moves), with constraints relaxed by the tolerance (module doc); on a dyadic grid
       q (every float64 sum exact) the constraints sit exactly q/2 inside the tie rule instead.
    3. its optimum is checked with error-free sums; if it does not win (a near tie), a strict MILP
       (margin slack + solver tolerance) gives a verified attack and the gap stays open.
    model_tolerance: when `weights_row` is a recomputation of the weights behind `lower` / `upper` that
    may differ from them by rounding (at most model_tolerance * sum|w| in total), every attack must win
    by that much more and the relaxation is loosened by as much, so the answer holds for both.
    """
    t0 = time.process_time()
    w = as_float_array("weights_row", weights_row, ndim=1)
    y, K = check_labels(labels, num_classes, name="labels")
    if len(w) != len(y):
        raise ValueError(f"weights_row has {len(w)} entries but there are {len(y)} labels")
    c = check_int("target", target, minimum=0, maximum=K - 1)
    check_positive("time_limit", time_limit)
    rtol = check_positive("rtol", rtol, allow_zero=True)
    model_tolerance = check_positive("model_tolerance", model_tolerance, allow_zero=True)
    lo, hi = float(lower), float(upper)
    if not lo <= hi:
        raise ValueError(f"lower ({lower}) must be <= upper ({upper})")
    return _solve(_Row(w, y, K, rtol, model_tolerance), c, lo, hi, cap, time_limit, t0)


def _solve(row: _Row, c: int, lo: float, hi: float, cap: float | None, time_limit: float, t0: float) -> ClassCostSolve:
    K = row.K
    limit = hi if cap is None else min(hi, float(cap))
    if lo >= limit or row.n == 0:
        return ClassCostSolve(lo, hi, lo == hi, "bounds", None, time.process_time() - t0)
    m_max = int(min(limit - 1, row.n))
    rivals = np.array([k for k in range(K) if k != c])
    base = row.scores[rivals] - row.scores[c]  # s_k - s_c
    moves, dropped = _candidate_moves(row, c, m_max)
    if row.grid is not None and row.grid / 2 >= _GRID_MARGIN * row.maxabs and dropped == 0.0:
        # exact sums: c wins iff s_c - s_k >= q [k < c]; the constraint sits q/2 inside, so any solver
        # answer within its tolerance is exactly feasible and no true attack is cut off
        need_relax = np.zeros(K)
        need_relax[rivals] = base + row.grid * (rivals < c) - row.grid / 2
        need_strict = None
    else:
        need_relax = np.zeros(K)
        need_relax[rivals] = base - (row.tau + dropped + _RELAX_TOL * row.maxabs)
        need_strict = np.zeros(K)
        need_strict[rivals] = base + row.slack + _STRICT_TOL * row.maxabs
    status, attack, bound = _optimise(row, c, moves, need_relax, rivals, int(math.ceil(lo)), m_max, time_limit)
    if status == "infeasible":
        return _finish(row, c, max(lo, m_max + 1.0), hi, "infeasible", None, t0)
    if status != "optimal":
        lb = math.ceil(bound - 1e-6) if np.isfinite(bound) else lo
        return _finish(row, c, max(lo, float(min(lb, m_max + 1))), hi, status, None, t0)
    assert attack is not None  # an "optimal" status always comes with its attack (`_optimise`)
    size = len(attack)
    lo = max(lo, float(size))
    if size >= 1 and _wins(row, _apply(row.y, attack), c):
        return _finish(row, c, lo, min(hi, float(size)), "optimal", attack if size < hi else None, t0)
    if need_strict is not None and lo < hi:
        s2, attack2, _ = _optimise(row, c, moves, need_strict, rivals, int(lo), m_max, time_limit)
        if (s2 == "optimal" and attack2 is not None and lo <= len(attack2) < hi
                and _wins(row, _apply(row.y, attack2), c)):
            return _finish(row, c, lo, float(len(attack2)), "near_tie", attack2, t0)
    return _finish(row, c, lo, hi, "near_tie", None, t0)


def _optimise(row: _Row, c: int, moves: _Moves, need: np.ndarray, rivals: np.ndarray, m_min: int, m_max: int,
              time_limit: float) -> tuple[str, Attack | None, float]:
    """Fewest moves (at least m_min, at most m_max) meeting need. Only moves of positive weights to c
    (every weight >= 0, e.g. the C_max SVM): `_positive_min_moves`; otherwise filter (pairwise and
    uniform multipliers), then the MILP. Returns (status, attack or None, dual bound)."""
    if np.all(moves.dest == c):
        return _positive_min_moves(row, c, need, rivals, max(m_min, 0), m_max)
    K = moves.D.shape[1]
    lams = np.zeros((rivals.size + 1, K))
    lams[np.arange(rivals.size), rivals] = 1.0
    lams[-1, rivals] = 1.0 / rivals.size
    keep, infeasible = _filter(moves, need, lams, m_max)
    if infeasible:
        return "infeasible", None, np.inf
    moves = moves.subset(keep)
    if len(moves.sample) == 0:
        return ("optimal", (), 0.0) if np.all(need[rivals] <= 0) else ("infeasible", None, np.inf)
    status, x, bound = _milp(moves, need, rivals, m_max, row.maxabs if row.maxabs > 0 else 1.0, time_limit)
    return status, (_attack(moves, x) if status == "optimal" and x is not None else None), bound


def _positive_min_moves(row: _Row, c: int, need: np.ndarray, rivals: np.ndarray, m_min: int, m_max: int
                        ) -> tuple[str, Attack | None, float]:
    """Exact combinatorial solver when every useful move takes a positive weight of a class u != c to c.

    Then an attack is a count m_u per class (the m_u largest weights of u, docs/math.md §3.3 dominance)
    and c beats k iff T + P_k(m_k) >= need_k, with P_u the prefix sums of class u and T = sum_u P_u(m_u).
    For a flip count M and forced minimums r, the largest T is the forced prefixes plus the M - sum r
    largest remaining weights (greedy; prefixes stay prefixes). Starting from r = 0, raise each r_k to
    the fewest flips of class k with P_k(r_k) >= need_k - T(r). Every attack of at most M flips has
    m >= r at every step (its T is at most T(r), so it needs at least the raised r_k), so when sum r
    exceeds M there is none; when r stops changing, the greedy allocation is one. M runs from m_min up.
    Returns (status, attack, bound) like `_milp`.
    """
    w, y = row.w, row.y
    parts_v: list[np.ndarray] = []
    parts_o: list[np.ndarray] = []
    parts_p: list[np.ndarray] = []
    prefix: dict[int, np.ndarray] = {}
    members: dict[int, np.ndarray] = {}
    for u in rivals:
        idx = np.flatnonzero((y == u) & (w > 0))
        idx = idx[np.argsort(-w[idx], kind="stable")][:m_max]
        members[u] = idx
        prefix[u] = np.concatenate([[0.0], np.cumsum(w[idx])])
        parts_v.append(w[idx])
        parts_o.append(np.full(idx.size, u))
        parts_p.append(np.arange(idx.size))
    values, owner, position = np.concatenate(parts_v), np.concatenate(parts_o), np.concatenate(parts_p)
    order = np.argsort(-values, kind="stable")
    values, owner, position = values[order], owner[order], position[order]
    for M in range(max(m_min, 0), m_max + 1):
        r = np.zeros(row.K, np.int64)
        while True:
            if r.sum() > M:
                break
            free = position >= r[owner]
            take = free & (np.cumsum(free) <= M - r.sum())
            alloc = r + np.bincount(owner[take], minlength=row.K)
            T = sum(prefix[u][r[u]] for u in rivals) + values[take].sum()
            new = r.copy()
            for k in rivals:
                gap = need[k] - T
                if gap > prefix[k][-1]:
                    new[k] = M + 1  # class k alone cannot close it: no attack of M flips
                    break
                new[k] = max(r[k], int(np.searchsorted(prefix[k], gap, side="left")))
            if np.array_equal(new, r):
                attack = tuple(sorted((int(j), c) for u in rivals for j in members[u][:alloc[u]]))
                return "optimal", attack, float(M)
            r = new
    return "infeasible", None, np.inf


def _attack(moves: _Moves, x: np.ndarray) -> Attack:
    sel = np.flatnonzero(x)
    return tuple(sorted((int(moves.sample[i]), int(moves.dest[i])) for i in sel))


def _apply(y: np.ndarray, attack: Attack) -> np.ndarray:
    y2 = y.copy()
    for j, d in attack:
        y2[j] = d
    return y2


def _finish(row: _Row, c: int, lo: float, hi: float, status: str, attack: Attack | None, t0: float) -> ClassCostSolve:
    if lo > hi:  # pragma: no cover - a relaxation above a verified attack would be a solver bug
        raise RuntimeError(f"class {c}: relaxed MILP bound {lo} exceeds a verified attack of {hi} flips")
    return ClassCostSolve(float(lo), float(hi), bool(lo == hi), status, attack, time.process_time() - t0)


# --------------------------------------------------------------------------- many problems
def refine_class_costs(weights: ArrayLike, labels: ArrayLike, num_classes: int | None, rows: ArrayLike,
                       targets: ArrayLike, lower: ArrayLike, upper: ArrayLike, *, caps: ArrayLike | None = None,
                       time_limit: float = 10.0, rtol: float = 1e-9,
                       model_tolerance: float = 0.0) -> list[ClassCostSolve]:
    """`solve_class_cost` for the problems (rows[q], targets[q]) of one model, weights (t, n);
    lower / upper / caps (Q,) per problem. Returns one ClassCostSolve per problem."""
    W = as_float_array("weights", weights, ndim=2)
    y, K = check_labels(labels, num_classes, name="labels")
    if W.shape[1] != len(y):
        raise ValueError(f"weights have {W.shape[1]} columns but there are {len(y)} labels")
    rows = np.asarray(rows, dtype=np.int64).ravel()
    targets = np.asarray(targets, dtype=np.int64).ravel()
    lower = np.asarray(lower, dtype=np.float64).ravel()
    upper = np.asarray(upper, dtype=np.float64).ravel()
    if not (len(rows) == len(targets) == len(lower) == len(upper)):
        raise ValueError("rows, targets, lower and upper must have the same length")
    if caps is not None:
        caps = np.asarray(caps, dtype=np.float64).ravel()
        if len(caps) != len(rows):
            raise ValueError("caps must have one entry per problem")
    if rows.size and (rows.min() < 0 or rows.max() >= W.shape[0]):
        raise ValueError(f"rows must be in 0..{W.shape[0] - 1}")
    if targets.size and (targets.min() < 0 or targets.max() >= K):
        raise ValueError(f"targets must be in 0..{K - 1}")
    if np.any(~(lower <= upper)):
        raise ValueError("lower must be <= upper for every problem")
    check_positive("time_limit", time_limit)
    rtol = check_positive("rtol", rtol, allow_zero=True)
    model_tolerance = check_positive("model_tolerance", model_tolerance, allow_zero=True)
    out = []
    cache: dict[int, _Row] = {}
    for q in range(rows.size):
        t0 = time.process_time()
        i = int(rows[q])
        if i not in cache:
            cache = {i: _Row(W[i], y, K, rtol, model_tolerance)}  # one row's problems come together
        out.append(_solve(cache[i], int(targets[q]), float(lower[q]), float(upper[q]),
                          None if caps is None else float(caps[q]), time_limit, t0))
    return out


@dataclass(frozen=True)
class ExactClassCosts:
    """Per-class costs of a label-linear model with the gaps of `certify` closed where possible.

    prediction (t,); lower / upper (t, K) float64 (lower <= A_c <= upper); exact (t, K) bool;
    exact_before (t, K) bool (certify's class_exact); solved (int): problems given to the MILP;
    timed_out (int): those that hit the time limit; seconds: CPU time of the refinement.
    """

    prediction: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    exact: np.ndarray
    exact_before: np.ndarray
    solved: int
    timed_out: int
    seconds: float


def exact_class_costs(weights: ArrayLike, labels: ArrayLike, num_classes: int | None = None, *,
                      certificate: Certificate | None = None, time_limit: float = 10.0,
                      rtol: float = 1e-9) -> ExactClassCosts:
    """Every A_c (t, K) of a label-linear model: `certify`'s bounds, then `solve_class_cost` wherever
    they differ. Pass `certificate` (from `certify(weights, labels, K)` with class bounds) to reuse it."""
    W = as_float_array("weights", weights, ndim=2)
    y, K = check_labels(labels, num_classes, name="labels")
    cert = certificate if certificate is not None else certify(W, y, K, rtol=rtol)
    if not cert.class_bounds or cert.cost_lower.shape != (W.shape[0], K):
        raise ValueError("certificate must come from certify(weights, labels, K) with class_bounds=True")
    t0 = time.process_time()
    lo, hi = cert.cost_lower.copy(), cert.cost_upper.copy()
    r, c = np.nonzero(lo < hi)
    res = refine_class_costs(W, y, K, r, c, lo[r, c], hi[r, c], time_limit=time_limit, rtol=rtol)
    for q, s in enumerate(res):
        lo[r[q], c[q]], hi[r[q], c[q]] = s.lower, s.upper
    timed = sum(s.status not in ("optimal", "infeasible", "bounds") for s in res)
    return ExactClassCosts(prediction=cert.prediction, lower=lo, upper=hi, exact=lo == hi,
                           exact_before=cert.class_exact.copy(), solved=len(res), timed_out=timed,
                           seconds=time.process_time() - t0)


# --------------------------------------------------------------------------- lazy refinement of per-class costs
@dataclass(frozen=True, kw_only=True)
class CostRefinement:
    """What a lazy refinement of per-partition class costs reports (`refine_ensemblecert`,
    `refine_whitebox_roe`): prediction (t,) int64; cost_lower / cost_upper (t, N_p, K) float64 the
    refined costs; rounds, problems (class-cost problems solved), seconds (CPU time),
    budget_exhausted (bool: `budget_seconds` stopped it). Fields are keyword-only."""

    prediction: np.ndarray
    cost_lower: np.ndarray
    cost_upper: np.ndarray
    rounds: int
    problems: int
    seconds: float
    budget_exhausted: bool


SolveFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                   tuple[np.ndarray, np.ndarray]]


def _refine_round(solve: SolveFn, L: np.ndarray, U: np.ndarray, pi: np.ndarray, jj: np.ndarray, cls: np.ndarray,
                  caps: np.ndarray) -> np.ndarray:
    """Refine the costs (pi, jj, cls) of L / U (t, N_p, K) in place with `solve`; returns the (t,) bool mask
    of the points whose bounds moved. RuntimeError when `solve` leaves the bounds it was given."""
    old_lo, old_hi = L[pi, jj, cls], U[pi, jj, cls]
    new_lo, new_hi = solve(pi, jj, cls, old_lo.copy(), old_hi.copy(), caps)
    new_lo, new_hi = np.asarray(new_lo, np.float64), np.asarray(new_hi, np.float64)
    if np.any(new_lo < old_lo) or np.any(new_hi > old_hi) or np.any(new_lo > new_hi):
        raise RuntimeError("solve returned bounds outside the previous ones")
    L[pi, jj, cls], U[pi, jj, cls] = new_lo, new_hi
    progress = np.zeros(L.shape[0], bool)
    np.logical_or.at(progress, pi, (new_lo > old_lo) | (new_hi < old_hi))
    return progress


# --------------------------------------------------------------------------- lazy exact EnsembleCert
@dataclass(frozen=True, kw_only=True)
class RefinedEnsemble(CostRefinement):
    """EnsembleCert radii refined until proven (`refine_ensemblecert`): radius_lower, radius_upper
    (t,) int64; exact (t,) bool (radius_lower == radius_upper); exact_before (t,) bool (before
    refinement); and the fields of `CostRefinement` (prediction, refined costs, counts)."""

    radius_lower: np.ndarray
    radius_upper: np.ndarray
    exact: np.ndarray
    exact_before: np.ndarray


def refine_ensemblecert(votes: ArrayLike, cost_lower: ArrayLike, cost_upper: ArrayLike, num_classes: int,
                        solve: SolveFn, *,
                        budget_seconds: float | None = None, max_rounds: int = 100,
                        max_radius: int | None = None) -> RefinedEnsemble:
    """EnsembleCert (docs/math.md §4.3) with lazily refined per-partition costs.

    votes (t, N_p); cost_lower <= A <= cost_upper (t, N_p, K), each upper entry backed by a verified
    attack. `solve(points, partitions, classes, lower, upper, caps)` (arrays of one length Q) must
    return new (lower, upper) with lower_in <= lower <= A <= upper <= upper_in, where A only has to be
    resolved below the cap (an answer lower = cap means "A >= cap"); e.g. `partition_solver`.

    Each round: EnsembleCert with the lower costs (with its cheapest plan) and with the upper costs;
    where the radii differ, the not-yet-exact costs in the lower plan are refined (cap: the upper
    attack's total cost, beyond which a cost cannot enter a cheaper plan) and the point goes to the
    next round. When every cost of the lower plan is exact, the plan is a real attack costing the
    lower optimum, so both radii meet. Points whose refinement makes no progress (time limits) stop
    there; `budget_seconds` (CPU time) stops all. The radii stay sound throughout: monotone knapsack,
    lower costs only raised by proofs, upper costs only lowered by verified attacks.
    """
    t0 = time.process_time()
    K = check_int("num_classes", num_classes, minimum=2)
    v = np.asarray(votes)
    L = np.array(cost_lower, dtype=np.float64)
    U = np.array(cost_upper, dtype=np.float64)
    if L.shape != v.shape + (K,) or U.shape != L.shape:
        raise ValueError(f"cost_lower and cost_upper must have shape (t, N_p, K) = {v.shape + (K,)}, "
                         f"got {L.shape} and {U.shape}")
    if np.any(L > U):
        raise ValueError("cost_lower must be <= cost_upper everywhere")
    if budget_seconds is not None:
        budget_seconds = check_positive("budget_seconds", budget_seconds)
    t = v.shape[0]
    pred = np.zeros(t, np.int64)
    r_lo = np.zeros(t, np.int64)
    r_hi = np.zeros(t, np.int64)
    active = np.arange(t)
    exact_before = None
    rounds = problems = 0
    exhausted = False
    while active.size:
        lo = ensemblecert(v[active], L[active], K, return_plan=True, max_radius=max_radius)
        hi = ensemblecert(v[active], U[active], K, max_radius=max_radius)
        pred[active], r_lo[active], r_hi[active] = lo.prediction, lo.radius, hi.radius
        if exact_before is None:
            exact_before = r_lo == r_hi
        open_ = lo.radius < hi.radius
        if rounds >= max_rounds or not open_.any():
            break
        if budget_seconds is not None and time.process_time() - t0 > budget_seconds:
            exhausted = True
            break
        pts = active[open_]
        assert lo.plan is not None  # requested with return_plan=True
        plan = lo.plan[open_]
        ii, jj = np.nonzero(plan >= 0)
        pi, cls = pts[ii], plan[ii, jj]
        need = L[pi, jj, cls] < U[pi, jj, cls]
        pi, jj, cls = pi[need], jj[need], cls[need]
        # the cap: total cost of the upper attack (NO_ATTACK radii give an infinite cap)
        cap_pt = np.where(r_hi[pts] >= np.iinfo(np.int64).max // 8, np.inf, r_hi[pts].astype(np.float64) + 1)
        cap_of = dict(zip(pts.tolist(), cap_pt.tolist()))
        caps = np.array([cap_of[i] for i in pi.tolist()])
        rounds += 1
        if pi.size == 0:  # pragma: no cover - every plan cost exact means both radii already meet
            break
        progress = _refine_round(solve, L, U, pi, jj, cls, caps)
        problems += pi.size
        active = pts[progress[pts]]
    exact_before = np.zeros(0, bool) if exact_before is None else exact_before
    return RefinedEnsemble(prediction=pred, radius_lower=r_lo, radius_upper=r_hi, exact=r_lo == r_hi,
                           exact_before=exact_before, cost_lower=L, cost_upper=U, rounds=rounds,
                           problems=problems, seconds=time.process_time() - t0, budget_exhausted=exhausted)


# --------------------------------------------------------------------------- lazy white-box ROE
@dataclass(frozen=True, kw_only=True)
class RefinedWhiteboxROE(CostRefinement):
    """White-box ROE radii with the vote costs refined (`refine_whitebox_roe`).

    radius (t,) int64: `whitebox_roe(..., joint="per_point")` at the refined lower costs (a sound
    certificate, never below the one at the original lower costs); radius_at_upper_costs (t,) int64:
    the same certificate at the refined upper costs (it bounds the certificate at the exact costs
    from above, NOT the true robustness radius); resolved (t,) bool: radius proven equal to the
    certificate at the exact per-class costs; resolved_before (t,) bool: the same before refinement;
    and the fields of `CostRefinement` (prediction, refined costs, counts).
    """

    radius: np.ndarray
    radius_at_upper_costs: np.ndarray
    resolved: np.ndarray
    resolved_before: np.ndarray


def _whitebox_attack(scores: np.ndarray, vote_costs: np.ndarray,
                     pair_costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, attack size = radius + 1, NO_ATTACK when none) of whitebox_roe per point."""
    res = whitebox_roe(scores, vote_costs, pair_costs, joint="per_point")
    return res.prediction, np.where(res.radius >= NO_ATTACK, NO_ATTACK, res.radius + 1)


def refine_whitebox_roe(scores: ArrayLike, cost_lower: ArrayLike, cost_upper: ArrayLike, pair_costs: ArrayLike,
                        solve: SolveFn, *, fallback: ArrayLike | None = None, budget_seconds: float | None = None,
                        max_rounds: int = 100, max_radius: int | None = None) -> RefinedWhiteboxROE:
    """The white-box ROE certificate (docs/math.md §5) with lazily refined per-partition vote costs.

    scores (t, N_p, K) base-model scores; cost_lower <= A <= cost_upper (t, N_p, K) the per-class
    costs of each base model (upper entries backed by verified attacks); pair_costs (t, N_p, K, K)
    as `whitebox_roe` reads them; fallback (t, N_p) bool: models given black-box unit costs
    (`Evidence.roe_costs`), whose costs are never refined. `solve` as for `refine_ensemblecert`.

    f(C) = `whitebox_roe(scores, C, pair_costs, joint="per_point")` is monotone in the vote costs C
    (each case is a max of minimum-cost knapsacks; "per_point" admits the 2-D knapsack by a rule
    that does not read the costs), so f(lower) <= f(A) <= f(upper), and a point is *resolved* when
    f(lower) = f(upper), or when every vote cost below f's attack size a = radius + 1 (every
    non-fallback model, every class other than its vote, max(lower, 1) < a + 1) is exact: the
    knapsack plans of the case attaining a then cost < a + 1 and so use only exact costs, and cost
    the same at A, so f(A) <= a. Each round refines exactly those open costs (cap: the attack size
    at the upper costs, beyond which a cost cannot change f), re-evaluates f at both, and repeats
    while some point made progress. Points whose costs hit time limits stay unresolved with sound
    radii; `budget_seconds` (CPU) stops all; `max_radius` (e.g. the number of training labels, the
    run's cap on radii) resolves points whose radius reaches it.
    """
    t0 = time.process_time()
    s = as_float_array("scores", scores, ndim=3)
    t, M, K = s.shape
    L = np.array(cost_lower, dtype=np.float64)
    U = np.array(cost_upper, dtype=np.float64)
    P = np.asarray(pair_costs, dtype=np.float64)
    if L.shape != s.shape or U.shape != s.shape:
        raise ValueError(f"cost_lower and cost_upper must have shape (t, N_p, K) = {s.shape}, "
                         f"got {L.shape} and {U.shape}")
    if P.shape != s.shape + (K,):
        raise ValueError(f"pair_costs must have shape (t, N_p, K, K) = {s.shape + (K,)}, got {P.shape}")
    if np.any(L > U):
        raise ValueError("cost_lower must be <= cost_upper everywhere")
    fb = np.zeros((t, M), bool) if fallback is None else np.asarray(fallback, dtype=bool)
    if fb.shape != (t, M):
        raise ValueError(f"fallback must have shape (t, N_p) = {(t, M)}, got {fb.shape}")
    if budget_seconds is not None:
        budget_seconds = check_positive("budget_seconds", budget_seconds)
    cap_radius = NO_ATTACK if max_radius is None else check_int("max_radius", max_radius, minimum=0)
    P = np.where(fb[..., None, None], 1.0, P)
    # the costs f reads: every class but the model's vote (argmax, ties to the smaller index), no fallback
    reads = ~fb[..., None] & (np.arange(K) != np.argmax(s, axis=2)[..., None])

    def vote_costs(C: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.where(fb[rows, :, None], 1.0, C[rows])

    everyone = np.arange(t)
    pred, a_lo = _whitebox_attack(s, vote_costs(L, everyone), P)
    _, a_hi = _whitebox_attack(s, vote_costs(U, everyone), P)

    def open_costs(rows: np.ndarray) -> np.ndarray:
        """(len(rows), N_p, K) bool: the costs a point's resolution waits for."""
        below = np.maximum(L[rows], 1.0) < (a_lo[rows].astype(np.float64) + 1.0)[:, None, None]
        return reads[rows] & (L[rows] < U[rows]) & below

    def resolved(rows: np.ndarray) -> np.ndarray:
        done = (a_lo[rows] >= a_hi[rows]) | (a_lo[rows] >= NO_ATTACK) | (a_lo[rows] - 1 >= cap_radius)
        return done | ~open_costs(rows).any(axis=(1, 2))

    before = resolved(everyone)
    active = np.flatnonzero(~before)
    rounds = problems = 0
    exhausted = False
    while active.size and rounds < max_rounds:
        if budget_seconds is not None and time.process_time() - t0 > budget_seconds:
            exhausted = True
            break
        ii, jj, cls = np.nonzero(open_costs(active))
        pi = active[ii]
        caps = np.where(a_hi[pi] >= NO_ATTACK, np.inf, a_hi[pi].astype(np.float64))
        progress = _refine_round(solve, L, U, pi, jj, cls, caps)
        rounds += 1
        problems += pi.size
        moved = active[progress[active]]
        if moved.size:
            _, a_lo[moved] = _whitebox_attack(s[moved], vote_costs(L, moved), P[moved])
            _, a_hi[moved] = _whitebox_attack(s[moved], vote_costs(U, moved), P[moved])
        active = moved[~resolved(moved)]
    radius = np.where(a_lo >= NO_ATTACK, NO_ATTACK, a_lo - 1)
    radius_hi = np.where(a_hi >= NO_ATTACK, NO_ATTACK, a_hi - 1)
    return RefinedWhiteboxROE(prediction=pred, radius=radius, radius_at_upper_costs=radius_hi,
                              resolved=resolved(everyone), resolved_before=before, cost_lower=L, cost_upper=U,
                              rounds=rounds, problems=problems, seconds=time.process_time() - t0,
                              budget_exhausted=exhausted)


class PartitionSolver:
    """`solve` callback of `refine_ensemblecert` for an ensemble of label-linear models.

    weights(j, rows) -> (len(rows), n_j) label weights of partition j's model for those test points
    (e.g. `lambda j, rows: W[j][rows]`, or kernel rows computed on demand); labels[j] (n_j,) its
    training labels. Calls `refine_class_costs` per partition with `time_limit` seconds per problem.
    accept(j, rows, W) -> (len(rows),) bool, optional: rows whose recomputed weights may be used (the
    others keep their bounds), e.g. a check against stored scores; then pass the `model_tolerance`
    that check guarantees (see `solve_class_cost`). Counts: problems, optimal, timed_out (time limit or
    solver status), near_tie, rejected (problems of rows `accept` refused).
    """

    def __init__(self, weights: Callable[[int, np.ndarray], np.ndarray], labels: Sequence[ArrayLike],
                 num_classes: int, *,
                 time_limit: float = 10.0, rtol: float = 1e-9, model_tolerance: float = 0.0,
                 accept: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        if not callable(weights):
            raise TypeError("weights must be callable: weights(partition, rows) -> (len(rows), n_j) array")
        if accept is not None and not callable(accept):
            raise TypeError("accept must be callable: accept(partition, rows, W) -> (len(rows),) bool")
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.labels = [check_labels(y, self.num_classes, name=f"labels[{j}]")[0] for j, y in enumerate(labels)]
        self.weights, self.accept = weights, accept
        self.time_limit = check_positive("time_limit", time_limit)
        self.rtol = check_positive("rtol", rtol, allow_zero=True)
        self.model_tolerance = check_positive("model_tolerance", model_tolerance, allow_zero=True)
        self.problems = self.optimal = self.timed_out = self.near_tie = self.rejected = 0

    def __call__(self, points: np.ndarray, partitions: np.ndarray, classes: np.ndarray, lower: np.ndarray,
                 upper: np.ndarray, caps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new_lo = np.array(lower, dtype=np.float64)
        new_hi = np.array(upper, dtype=np.float64)
        for j in np.unique(partitions):
            q = np.flatnonzero(partitions == j)
            pts, inv = np.unique(points[q], return_inverse=True)
            W = np.asarray(self.weights(int(j), pts), dtype=np.float64)
            if self.accept is not None:
                ok = np.asarray(self.accept(int(j), pts, W), dtype=bool)
                self.rejected += int(np.count_nonzero(~ok[inv]))
                q, inv = q[ok[inv]], inv[ok[inv]]
            order = np.argsort(inv, kind="stable")  # one row's problems together
            qs = q[order]
            res = refine_class_costs(W, self.labels[j], self.num_classes, inv[order], classes[qs], new_lo[qs],
                                     new_hi[qs], caps=caps[qs], time_limit=self.time_limit, rtol=self.rtol,
                                     model_tolerance=self.model_tolerance)
            for k, s in zip(qs, res):
                new_lo[k], new_hi[k] = s.lower, s.upper
                self.problems += 1
                self.optimal += s.status in ("optimal", "infeasible", "bounds")
                self.near_tie += s.status == "near_tie"
                self.timed_out += s.status not in ("optimal", "infeasible", "bounds", "near_tie")
        return new_lo, new_hi
