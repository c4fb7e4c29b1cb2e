"""Partition-aggregation certificates (SPEC §4): DPA (black box) and EnsembleCert (white box).

Layout:
  1. results and shared helpers: `AggregateResult`, vote validation, `vote_counts`,
     `plurality` (tie rule: the smaller class index wins), test-point blocks.
  2. `dpa`: the black-box DPA / SS-DPA certificate.
  3. `min_cost_gain12`: the multiple-choice knapsack with gains {1, 2} behind EnsembleCert,
     by dynamic programming (`_knapsack`) and by an exact sort-based method (`_knapsack_sorted`).
  4. `ensemblecert`, `ensemblecert_bounds`: white-box aggregation of per-partition class costs.
  5. run-off election / finite aggregation: implemented in `kernelcert.roe` (`dpa_roe`, `fa`,
     `fa_roe`, `dpa_star_roe`, `whitebox_roe`) and importable from here as well.

Radius convention (SPEC §1): the largest number of label flips that provably cannot change the
prediction; attack size = radius + 1. `NO_ATTACK` is the radius reported when no relabelling at
all changes the prediction (every cost infinite); pass `max_radius=` (e.g. the number of
training labels) to cap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validation import check_int

__all__ = [
    "NO_ATTACK", "AggregateResult", "EnsembleBounds", "vote_counts", "plurality", "dpa", "min_cost_gain12",
    "ensemblecert", "ensemblecert_bounds", "dpa_roe", "fa", "fa_roe", "dpa_star_roe", "whitebox_roe",
]

NO_ATTACK = np.iinfo(np.int64).max // 4  # radius when no attack exists at all (unbounded)
_BLOCK_ELEMS = 2**21  # elements of a (block, N_p) working array: about 16 MiB in float64


# =========================================================================== 1. results and helpers
@dataclass(frozen=True)
class AggregateResult:
    """Aggregated certificate over t test points.

    prediction (t,) int64 ensemble prediction; radius (t,) int64 certified radius. Optional:
    plan (t, N_p) int64 target class per partition of a cheapest attack (-1 = untouched),
    target (t,) int64 the class that attack makes beat the prediction (-1 = no attack),
    radius_upper (t,) int64 an upper bound on the radius where one is known.
    """

    prediction: np.ndarray
    radius: np.ndarray
    plan: np.ndarray | None = None
    target: np.ndarray | None = None
    radius_upper: np.ndarray | None = None


@dataclass(frozen=True)
class EnsembleBounds:
    """EnsembleCert from lower- and upper-bound costs: radius_lower <= exact radius <= radius_upper
    (all (t,) int64); agree (t,) bool marks test points whose radius is therefore exact."""

    prediction: np.ndarray
    radius_lower: np.ndarray
    radius_upper: np.ndarray
    agree: np.ndarray


def _check_num_classes(num_classes) -> int:
    return check_int("num_classes", num_classes, minimum=2)


def _check_votes(votes, num_classes) -> np.ndarray:
    """votes (t, N_p) integer class indices in 0..K-1 -> int64; ValueError naming the problem."""
    v = np.asarray(votes)
    if v.ndim != 2:
        raise ValueError(f"votes must have shape (t, N_p), got {v.shape}")
    if v.shape[1] == 0:
        raise ValueError("votes must contain at least one base model (N_p >= 1)")
    if v.dtype == bool or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"votes must be integer class indices, got dtype {v.dtype}")
    K = _check_num_classes(num_classes)
    if v.size and (v.min() < 0 or v.max() >= K):
        raise ValueError(f"votes must be in 0..{K - 1}, found values in {v.min()}..{v.max()}")
    return v.astype(np.int64, copy=False)


def vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (t, K) int64 of each class among the N_p votes of each test point."""
    v = np.asarray(votes, dtype=np.int64)
    t = len(v)
    flat = (v + num_classes * np.arange(t)[:, None]).ravel()
    return np.bincount(flat, minlength=t * num_classes).reshape(t, num_classes)


def plurality(counts: np.ndarray) -> np.ndarray:
    """Plurality winner (t,) of vote counts (t, K); ties go to the smaller class index."""
    return np.argmax(counts, axis=1)  # argmax returns the first maximum


def _blocks(t: int, width: int, block_size: int | None):
    """Slices over t test points, each block holding about _BLOCK_ELEMS elements of width `width`."""
    if block_size is None:
        block_size = max(1, _BLOCK_ELEMS // max(width, 1))
    block_size = check_int("block_size", block_size, minimum=1)
    for start in range(0, t, block_size):
        yield slice(start, min(start + block_size, t))


def _finalise_radius(cost: np.ndarray, max_radius) -> np.ndarray:
    """Attack cost (float, inf = none) -> radius int64 = cost - 1, NO_ATTACK or capped at max_radius."""
    fin = np.isfinite(cost)
    radius = np.full(cost.shape, NO_ATTACK, np.int64)
    radius[fin] = cost[fin].astype(np.int64) - 1  # integer costs (validated) below 2**53: exact
    if max_radius is not None:
        radius = np.minimum(radius, check_int("max_radius", max_radius, minimum=0))
    return radius


# =========================================================================== 2. DPA
def dpa(votes, num_classes: int) -> AggregateResult:
    """Black-box DPA / SS-DPA certificate (SPEC §4, anchors §1), vectorised over test points.

    votes (t, N_p) -> prediction p = plurality vote (ties to the smaller index) and
    radius R = floor((n_p - max_{c != p}(n_c + [c < p])) / 2) >= 0 (int64).
    """
    v = _check_votes(votes, num_classes)
    K = int(num_classes)
    n = vote_counts(v, K)
    p = plurality(n)
    rows = np.arange(len(v))
    rival = n + (np.arange(K)[None, :] < p[:, None])
    rival[rows, p] = np.iinfo(np.int64).min
    radius = (n[rows, p] - rival.max(axis=1)) // 2
    return AggregateResult(prediction=p, radius=radius.astype(np.int64))


# =========================================================================== 3. knapsack with gains {1, 2}
def _knapsack(gain1, gain2, need, keep_choices: bool = False):
    """Dynamic programme (SPEC §4): min total cost with total gain >= need (B,), one option per partition.

    gain1, gain2 (B, N): non-negative cost of gaining 1 / 2 in that partition (inf = impossible);
    not taking a partition gains 0 at cost 0. f[g] = min cost of total gain >= g over the
    partitions seen so far, g = 0..G with G = max(need), so overshooting is absorbed; O(N * G).
    Returns (cost (B,), choice (B, N) int8 in {0, 1, 2} of an optimal solution or None).
    """
    gain1 = np.asarray(gain1, dtype=np.float64)
    gain2 = np.asarray(gain2, dtype=np.float64)
    need = np.asarray(need, dtype=np.int64)
    B, N = gain1.shape
    G = int(need.max()) if B else 0
    if G <= 0:
        return np.zeros(B), (np.zeros((B, N), np.int8) if keep_choices else None)
    f = np.full((B, G + 1), np.inf)
    f[:, 0] = 0.0
    tables = np.empty((N, B, G + 1), np.int8) if keep_choices else None
    for i in range(N):
        # f[max(g - 1, 0)] and f[max(g - 2, 0)] as shifted views: slot 0 stays 0 (already reached)
        from1 = np.empty_like(f)
        from1[:, 0] = 0.0
        from1[:, 1:] = f[:, :-1]
        from1 += gain1[:, i:i + 1]
        from2 = np.empty_like(f)
        from2[:, :2] = 0.0
        from2[:, 2:] = f[:, :-2]
        from2 += gain2[:, i:i + 1]
        new = np.minimum(f, np.minimum(from1, from2))
        if keep_choices:
            tables[i] = np.where(new < f, np.where(from2 < from1, 2, 1), 0)
        f = new
    cost = f[np.arange(B), np.clip(need, 0, G)]
    cost = np.where(need <= 0, 0.0, cost)
    if not keep_choices:
        return cost, None
    choice = np.zeros((B, N), np.int8)
    g = np.clip(need, 0, G)
    rows = np.arange(B)
    for i in range(N - 1, -1, -1):
        ch = tables[i][rows, g]
        choice[:, i] = ch
        g = np.maximum(g - ch, 0)
    choice[~np.isfinite(cost)] = 0
    return cost, choice


def _knapsack_sorted(gain1, gain2, need, keep_choices: bool = False):
    """Exact sort-based solver of the same knapsack, O(N log N) per row, vectorised over rows.

    With a_i = gain1 and b_i = gain2 (>= 0, inf allowed), call a partition *concave* if
    b_i < 2 a_i and *convex* otherwise.
    - An optimal solution takes at most one concave partition at gain 1: two of them (cost
      a_i + a_j) can be replaced by the one with the smaller b at gain 2 at strictly lower cost,
      since min(b_i, b_j) <= (b_i + b_j) / 2 < a_i + a_j.
    - A convex partition is two independent unit items of costs a_i and b_i - a_i >= a_i, so the
      cheapest m units of all convex partitions are a sorted prefix (the second unit of a
      partition never comes before its first), F(m) = prefix sum.
    - With k concave partitions at gain 2 and none at gain 1 the cheapest are the k smallest b;
      with one more at gain 1 (j), cost = sum of the k smallest b among the others + a_j, i.e.
      min(P(k+1) + min_{pos <= k} (a - b), P(k) + min_{pos > k} a) in b-sorted order.
    Enumerating k and e in {0, 1} with m = max(need - 2k - e, 0) convex units is exhaustive.
    Returns (cost (B,), choice (B, N) int8 in {0, 1, 2} or None), like `_knapsack`.
    """
    a = np.asarray(gain1, dtype=np.float64)
    b = np.asarray(gain2, dtype=np.float64)
    need = np.asarray(need, dtype=np.int64)
    B, N = a.shape
    inf = np.inf
    conc = b < 2 * a
    # ---- concave partitions, sorted by b
    bc = np.where(conc, b, inf)
    if keep_choices:
        corder = np.argsort(bc, axis=1, kind="stable")
        bs = np.take_along_axis(bc, corder, axis=1)
    else:
        corder = None
        bs = np.sort(bc, axis=1)
    nconc = conc.sum(axis=1)
    P = np.zeros((B, N + 1))
    np.cumsum(bs, axis=1, out=P[:, 1:])  # P[k] = sum of the k smallest concave b (inf if k > nconc)
    if nconc.any():
        if corder is None:
            corder = np.argsort(bc, axis=1, kind="stable")
        a_s = np.take_along_axis(np.where(conc, a, inf), corder, axis=1)
        with np.errstate(invalid="ignore"):
            d_s = np.where(np.isfinite(bs), a_s - bs, inf)  # a - b at concave positions, inf elsewhere
        pm = np.full((B, N + 1), inf)
        np.minimum.accumulate(d_s, axis=1, out=pm[:, 1:])  # pm[j] = min over positions < j
        sm = np.full((B, N + 1), inf)
        sm[:, :N] = np.minimum.accumulate(a_s[:, ::-1], axis=1)[:, ::-1]  # sm[j] = min over positions >= j
        c1_in = np.full((B, N + 1), inf)
        c1_in[:, :N] = P[:, 1:] + pm[:, 1:]  # j among the first k+1
        c1_out = np.full((B, N + 1), inf)
        c1_out[:, :N] = P[:, :N] + sm[:, 1:]  # j beyond the first k+1 (or the (k+1)-th)
        cost_e1 = np.minimum(c1_in, c1_out)
        ks = np.arange(N + 1)
        cost_e1 = np.where(ks[None, :] < nconc[:, None], cost_e1, inf)
    else:
        cost_e1 = np.full((B, N + 1), inf)
    # ---- convex partitions as unit items
    conv = ~conc
    u1 = np.where(conv, a, inf)
    with np.errstate(invalid="ignore"):
        u2 = np.where(conv & np.isfinite(b), b - a, inf)
    units = np.concatenate([u1, u2], axis=1)
    if keep_choices:
        uorder = np.argsort(units, axis=1, kind="stable")  # stable: a partition's first unit comes first
        us = np.take_along_axis(units, uorder, axis=1)
    else:
        uorder = None
        us = np.sort(units, axis=1)
    F = np.zeros((B, 2 * N + 2))
    np.cumsum(us, axis=1, out=F[:, 1:2 * N + 1])
    F[:, -1] = inf  # m > 2N: impossible
    ks = np.arange(N + 1)[None, :]
    total = np.empty((B, 2, N + 1))
    for e, ce in ((0, P), (1, cost_e1)):
        m = np.clip(need[:, None] - 2 * ks - e, 0, 2 * N + 1)
        total[:, e] = ce + np.take_along_axis(F, m, axis=1)
    flat = total.reshape(B, -1)
    best = np.argmin(flat, axis=1)
    rows = np.arange(B)
    cost = flat[rows, best]
    cost = np.where(need <= 0, 0.0, cost)
    if not keep_choices:
        return cost, None
    # ---- reconstruct an optimal choice
    e_star, k_star = best // (N + 1), best % (N + 1)
    ok = np.isfinite(cost) & (need > 0)
    e_star, k_star = np.where(ok, e_star, 0), np.where(ok, k_star, 0)
    choice = np.zeros((B, N), np.int8)
    pos = np.arange(N)[None, :]
    gain_sorted = np.where(pos < k_star[:, None], 2, 0).astype(np.int8)  # in concave b-order
    if nconc.any():
        e1 = e_star == 1
        kk = np.minimum(k_star, N - 1)
        use_in = e1 & (c1_in[rows, k_star] <= c1_out[rows, k_star])
        j_in = np.argmin(np.where(pos <= kk[:, None], d_s, inf), axis=1)  # first k+1 at gain 2, j at 1
        j_out = np.argmin(np.where(pos >= kk[:, None] + 1, a_s, inf), axis=1)
        gain_sorted[use_in, :] = np.where(pos[0] <= kk[use_in, None], 2, 0)
        j = np.where(use_in, j_in, j_out)
        gain_sorted[rows[e1], j[e1]] = 1
        np.put_along_axis(choice, corder, gain_sorted, axis=1)
    m_star = np.where(ok, np.clip(need - 2 * k_star - e_star, 0, 2 * N), 0)
    taken = np.arange(2 * N)[None, :] < m_star[:, None]
    part = np.where(taken, uorder % N, N)  # dummy column N for units not taken
    units_taken = np.bincount((part + (N + 1) * rows[:, None]).ravel(), minlength=B * (N + 1)).reshape(B, N + 1)
    choice = np.where(conv, units_taken[:, :N], choice).astype(np.int8)
    choice[~ok] = 0
    return cost, choice


_KNAPSACK_METHODS = {"dp": _knapsack, "sorted": _knapsack_sorted}


def min_cost_gain12(gain1, gain2, need, *, method: str = "auto", return_choice: bool = False):
    """Multiple-choice knapsack: minimum total cost with total gain >= need (B,).

    Each of N partitions is left alone (gain 0, cost 0), or gains 1 at cost gain1 (B, N) or 2 at
    cost gain2 (B, N); costs >= 0, inf = option unavailable. Exact. method: "dp" (O(N * max
    need)), "sorted" (O(N log N)), "auto" = "sorted". Returns cost (B,) float (inf = infeasible)
    and, with return_choice, choice (B, N) int8 in {0, 1, 2} of an optimal solution.
    """
    g1 = np.asarray(gain1, dtype=np.float64)
    g2 = np.asarray(gain2, dtype=np.float64)
    nd = np.asarray(need)
    if g1.ndim != 2 or g1.shape != g2.shape:
        raise ValueError(f"gain1 and gain2 must have the same shape (B, N), got {g1.shape} and {g2.shape}")
    if nd.shape != g1.shape[:1] or not np.issubdtype(nd.dtype, np.integer):
        raise ValueError(f"need must be an integer array of shape {g1.shape[:1]}, got {nd.shape} {nd.dtype}")
    for name, g in (("gain1", g1), ("gain2", g2)):
        if np.isnan(g).any() or (g < 0).any():
            raise ValueError(f"{name} must be non-negative (inf allowed), without NaN")
    cost, choice = _solver(method)(g1, g2, nd, keep_choices=return_choice)
    return (cost, choice) if return_choice else cost


def _solver(method: str):
    if method == "auto":
        method = "sorted"
    if method not in _KNAPSACK_METHODS:
        raise ValueError(f"method must be 'auto', 'dp' or 'sorted', got {method!r}")
    return _KNAPSACK_METHODS[method]


# =========================================================================== 4. EnsembleCert
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
    """Cheapest attack over all rival classes for one block of test points (SPEC §4)."""
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
    for c in range(K):
        sel = np.flatnonzero(p != c)
        if sel.size == 0:
            continue
        vs, ps, Ac = v[sel], p[sel], A[sel, :, c]
        need = n[sel, ps] - n[sel, c] + (c > ps)  # G_c >= 1: gain in n_c - n_p that makes c beat p
        vp = votes_p[sel]
        gain1 = np.where(vp, cheapest_other[sel], np.where(vs == c, np.inf, Ac))
        gain2 = np.where(vp, Ac, np.inf)
        cost, choice = solver(gain1, gain2, need, keep_choices=return_plan)
        improve = cost < best[sel]
        best[sel[improve]] = cost[improve]
        target[sel[improve]] = c
        if return_plan and improve.any():
            ch, r = choice[improve], sel[improve]
            to = np.where(ch == 2, c, np.where(vp[improve], cheapest_class[r], c))
            plan[r] = np.where(ch > 0, to, -1)
    return p, best, target, plan


def _run(v, cost_arrays, names, K, method, return_plan, max_radius, block_size):
    """Stream over blocks of test points; one EnsembleCert per cost array (validated per block)."""
    solver = _solver(method)
    t, N = v.shape
    pred = np.empty(t, np.int64)
    costs = [np.empty(t) for _ in cost_arrays]
    target = np.empty(t, np.int64) if return_plan else None
    plan = np.empty((t, N), np.int64) if return_plan else None
    # per block: the (B, N_p, K) costs, (B, N_p) work arrays, and the DP's (N_p, B, N_p + 2) int8 choices
    width = 3 * N * K + 8 * N + (N * (N + 2) // 8 if return_plan and solver is _knapsack else 0)
    for sl in _blocks(t, width, block_size):
        blocks = [_check_cost_block(A[sl], v[sl], name, sl.start) for A, name in zip(cost_arrays, names)]
        if len(blocks) == 2 and np.any(blocks[0] > blocks[1]):
            raise ValueError(f"{names[0]} must be <= {names[1]} everywhere")
        for out, Ab in zip(costs, blocks):
            p, best, tg, pl = _ensemblecert_block(v[sl], Ab, K, solver, return_plan)
            pred[sl], out[sl] = p, best
            if return_plan:
                target[sl], plan[sl] = tg, pl
    return pred, [_finalise_radius(c, max_radius) for c in costs], target, plan


def ensemblecert(votes, costs, num_classes: int, *, return_plan: bool = False, method: str = "auto",
                 max_radius: int | None = None, block_size: int | None = None) -> AggregateResult:
    """White-box EnsembleCert radius from per-partition class costs (SPEC §4).

    votes (t, N_p) base-model votes; costs (t, N_p, K) integer flips (inf = unreachable) that make
    model i vote class c, 0 at its own vote (any real dtype; float32 or integer arrays save
    memory). Radius (t,) int64 = (cheapest attack over rival classes c != p) - 1: exact given
    exact costs, a sound lower bound from lower-bound costs, an upper bound from upper-bound
    costs. NO_ATTACK when no attack exists (capped at max_radius if given). method:
    "auto"/"sorted" (exact, O(K N_p log N_p) per test point) or "dp" (exact, O(K N_p^2)).
    return_plan adds plan (t, N_p) (target class per partition, -1 = untouched) and target (t,)
    for a cheapest attack. Streams over blocks of test points (block_size rows, default by size).
    """
    v = _check_votes(votes, num_classes)
    K = int(num_classes)
    A = _cost_array(costs, v, K, "costs")
    pred, (radius,), target, plan = _run(v, [A], ["costs"], K, method, return_plan, max_radius, block_size)
    return AggregateResult(prediction=pred, radius=radius, plan=plan, target=target)


def ensemblecert_bounds(votes, cost_lower, cost_upper, num_classes: int, *, method: str = "auto",
                        max_radius: int | None = None, block_size: int | None = None) -> EnsembleBounds:
    """EnsembleCert from lower- and upper-bound costs (t, N_p, K) (e.g. Certificate.cost_lower /
    cost_upper per partition): radius_lower is sound, radius_upper is backed by an attack, and
    agree marks the points where they coincide (exact radius). ValueError if lower > upper."""
    v = _check_votes(votes, num_classes)
    K = int(num_classes)
    names = ["cost_lower", "cost_upper"]
    arrays = [_cost_array(c, v, K, n) for c, n in zip((cost_lower, cost_upper), names)]
    pred, (lo, hi), _, _ = _run(v, arrays, names, K, method, False, max_radius, block_size)
    return EnsembleBounds(prediction=pred, radius_lower=lo, radius_upper=hi, agree=lo == hi)


# =========================================================================== 5. run-off election / FA
_ROE_NAMES = frozenset({"dpa_roe", "fa", "fa_roe", "dpa_star_roe", "whitebox_roe"})


def __getattr__(name):
    # kernelcert.roe builds on the helpers above; import lazily to avoid a circular import
    if name in _ROE_NAMES:
        from . import roe

        return getattr(roe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
