"""Partition-aggregation certificates (SPEC §4): DPA (black box) and EnsembleCert (white box)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_ATTACK = np.iinfo(np.int64).max // 4  # radius reported when no attack exists at all


@dataclass(frozen=True)
class AggregateResult:
    """prediction (t,), radius (t,) int64; plan (t, N_p) target class per partition (-1 = untouched) if asked."""

    prediction: np.ndarray
    radius: np.ndarray
    plan: np.ndarray | None = None


def _check_votes(votes, num_classes):
    v = np.asarray(votes)
    if v.ndim != 2:
        raise ValueError(f"votes must have shape (t, N_p), got {v.shape}")
    if not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"votes must be integer class indices, got dtype {v.dtype}")
    if v.size and (v.min() < 0 or v.max() >= num_classes):
        raise ValueError(f"votes must be in 0..{num_classes - 1}")
    return v.astype(np.int64)


def vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (t, K) of each class among the N_p votes."""
    return (votes[..., None] == np.arange(num_classes)).sum(axis=1)


def dpa(votes, num_classes: int) -> AggregateResult:
    """Black-box DPA / SS-DPA: R = floor((n_p - max_{c != p}(n_c + [c < p])) / 2), ties to the smaller index."""
    v = _check_votes(votes, num_classes)
    n = vote_counts(v, num_classes)
    p = np.argmax(n, axis=1)
    rows = np.arange(len(v))
    rival = n + (np.arange(num_classes)[None, :] < p[:, None])
    rival[rows, p] = np.iinfo(np.int64).min
    radius = (n[rows, p] - rival.max(axis=1)) // 2
    return AggregateResult(prediction=p, radius=radius.astype(np.int64))


def _knapsack(gain1, gain2, need, keep_choices=False):
    """Min total cost reaching total gain >= need (B,), one option per partition (SPEC §4 DP).

    gain1, gain2 (B, N_p): cost of gaining 1 / 2 in that partition (inf if impossible). DP over
    (partition, gain so far) with the top state G = max(need) meaning ">= G". Returns cost (B,)
    and, with keep_choices, per-partition choice tables for backtracking.
    """
    B, N = gain1.shape
    G = int(need.max()) if B else 0
    if G <= 0:
        return np.zeros(B), None
    dp = np.full((B, G + 1), np.inf)
    dp[:, 0] = 0.0
    inf_col = np.full((B, 1), np.inf)
    tables = []
    for i in range(N):
        a, b = gain1[:, i:i + 1], gain2[:, i:i + 1]
        from1 = np.concatenate([inf_col, dp[:, :-1]], axis=1) + a
        from2 = np.concatenate([inf_col, inf_col, dp[:, :-2]], axis=1)[:, :G + 1] + b
        # the top state also absorbs overshoot: G-1 plus a gain of 2 (choice code 3)
        over = dp[:, G - 1] + b[:, 0]
        use_over = over < from2[:, G]
        from2[:, G] = np.minimum(from2[:, G], over)
        new = np.minimum(dp, np.minimum(from1, from2))
        if keep_choices:
            ch = np.where(new < dp, np.where(from2 < from1, 2, 1), 0).astype(np.int8)
            ch[:, G] = np.where((ch[:, G] == 2) & use_over, 3, ch[:, G])
            tables.append(ch)
        dp = new
    # gain >= need: minimum over states need..G
    suffix = np.minimum.accumulate(dp[:, ::-1], axis=1)[:, ::-1]
    cost = suffix[np.arange(B), np.clip(need, 0, G)]
    return np.where(need <= 0, 0.0, cost), (tables, dp) if keep_choices else None


def ensemblecert(votes, costs, num_classes: int, *, return_plan: bool = False) -> AggregateResult:
    """White-box EnsembleCert radius from per-partition class costs (SPEC §4).

    votes (t, N_p); costs (t, N_p, K) with 0 at each model's own vote, inf where unreachable.
    Exact given the costs: lower-bound costs give a sound lower bound, upper-bound costs an upper
    bound. Vectorised over test points (the DP loops over partitions only).
    """
    v = _check_votes(votes, num_classes)
    A = np.asarray(costs, dtype=np.float64)
    if A.shape != v.shape + (num_classes,):
        raise ValueError(f"costs must have shape {v.shape + (num_classes,)}, got {A.shape}")
    if np.any(np.isnan(A)) or np.any(A < 0):
        raise ValueError("costs must be non-negative (inf allowed), without NaN")
    own = np.take_along_axis(A, v[..., None], axis=2)[..., 0]
    if np.any(own != 0):
        raise ValueError("costs must be 0 at each model's own vote")
    t, N = v.shape
    n = vote_counts(v, num_classes)
    p = np.argmax(n, axis=1)
    rows = np.arange(t)
    best = np.full(t, np.inf)
    plan = np.full((t, N), -1, np.int64) if return_plan else None
    off_p = A.copy()
    off_p[rows, :, p] = np.inf
    cheapest_other = off_p.min(axis=2)  # (t, N): min_{b != p} A_i^b
    cheapest_class = off_p.argmin(axis=2)
    for c in range(num_classes):
        need = n[rows, p] - n[:, c] + (c > p)
        need = np.where(p == c, 0, need)
        votes_p = v == p[:, None]
        votes_c = v == c
        Ac = A[:, :, c]
        gain1 = np.where(votes_p, cheapest_other, np.where(votes_c, np.inf, Ac))
        gain2 = np.where(votes_p, Ac, np.inf)
        cost, tables = _knapsack(gain1, gain2, np.maximum(need, 0), keep_choices=return_plan)
        cost = np.where(p == c, np.inf, cost)
        improve = cost < best
        best = np.where(improve, cost, best)
        if return_plan and improve.any():
            for row in np.flatnonzero(improve):
                plan[row] = _backtrack(tables, row, int(need[row]), v[row], p[row], c, cheapest_class[row])
    radius = np.where(np.isfinite(best), best - 1, NO_ATTACK).astype(np.int64)
    return AggregateResult(prediction=p, radius=radius, plan=plan)


def _backtrack(tables, row, need, votes_row, p, c, cheapest_class_row):
    """Attack plan for one test point: target class per partition (-1 = untouched)."""
    choices, dp = tables
    G = dp.shape[1] - 1
    g = int(np.argmin(np.where(np.arange(G + 1) >= min(need, G), dp[row], np.inf)))
    plan = np.full(len(choices), -1, np.int64)
    for i in range(len(choices) - 1, -1, -1):
        if g <= 0:
            break
        ch = choices[i][row, g]
        if ch == 0:
            continue
        if ch >= 2:
            plan[i] = c
        else:
            plan[i] = cheapest_class_row[i] if votes_row[i] == p else c
        g = g - 1 if ch == 3 else g - ch  # code 3: top state reached from G-1 with a gain of 2
    return plan


def ensemblecert_bounds(votes, cost_lower, cost_upper, num_classes: int):
    """(radius_lower, radius_upper, agree) from lower- and upper-bound per-partition costs."""
    lo = ensemblecert(votes, cost_lower, num_classes).radius
    hi = ensemblecert(votes, cost_upper, num_classes).radius
    return lo, hi, lo == hi
