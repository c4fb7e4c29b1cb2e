"""Run-off election (ROE) and finite aggregation (FA) certificates (docs/math.md §5, FA paper; ROE paper).

Election (`roe_predict`): round 1 is a plurality vote of the base models' argmax (ties to the
smaller index); the top two classes m1, m2 (stable order, ties to the smaller index) meet in a
run-off whose margin is E_{m1}(m2) = 2 #{models with z(m1) > z(m2)} - M, so a model with equal
scores for the two finalists counts for m2. m1 wins if E > 0, m2 if E < 0, the smaller index if
E = 0 (ROE paper).

Black-box certificates (one poison fully controls one partition, or one FA group of d learners):
`dpa_roe`, `dpa_star_roe`, `fa`, `fa_roe` follow the published algorithms. White-box:
`whitebox_roe` replaces "one poison changes anything" by per-partition flip costs, and
`whitebox_roe_from_label_linear` computes those costs for label-linear base models (docs/math.md §3).
All radii: the largest number of poisons (label flips) that provably leaves the prediction
unchanged; attack size = radius + 1; NO_ATTACK (kernelcert.voting) when no attack exists, and
internally an attack size >= NO_ATTACK marks an impossible case. Exact references for tiny
ensembles (enumeration of every attack) are in `kernelcert.exact` (`brute_force_roe_radius`, ...).
Vote counting, row blocks and the gains-{1, 2} knapsack come from `kernelcert.voting`, shared with
EnsembleCert.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Sequence

import numpy as np
from numba import njit
from numpy.typing import ArrayLike

from ._validation import as_float_array, check_index_array, check_labels
from .evidence import FlipCounts, build_evidence, stack_evidence
from .voting import (
    NO_ATTACK, AggregateResult, check_votes, knapsack_dp, knapsack_solver, overtake_gains, radius_from_attack,
    row_blocks, vote_counts,
)

__all__ = [
    "roe_predict", "dpa_roe", "dpa_star_roe", "fa", "fa_roe", "whitebox_roe", "whitebox_roe_from_label_linear",
    "DPA_STAR_SUMMATION", "JOINT_MODES",
]


# --------------------------------------------------------------------------- validation / blocks
def _check_scores(scores: ArrayLike, name: str = "scores", ndim: int = 3, dtype: Any = None) -> np.ndarray:
    """Finite scores as float64, or as float32 when they are float32 (the election only compares
    scores, so keeping float32 changes no result and saves a copy)."""
    if dtype is None:
        dtype = np.float32 if np.asarray(scores).dtype == np.float32 else np.float64
    s = as_float_array(name, scores, ndim=ndim, dtype=dtype)
    if s.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last axis, got shape {s.shape}")
    if s.shape[-2] < 1:
        raise ValueError(f"{name} must have at least one base model, got shape {s.shape}")
    return s


def _check_costs(name: str, costs: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    c = np.asarray(costs)
    if c.dtype == object or not np.issubdtype(c.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array, got dtype {c.dtype}")
    c = c.astype(np.float64, copy=False)
    if c.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {c.shape}")
    if np.isnan(c).any():
        raise ValueError(f"{name} contains NaN")
    if (c < 0).any():
        raise ValueError(f"{name} must be non-negative (inf = unreachable)")
    return c


def _check_shifts(shifts: ArrayLike, num_learners: int) -> np.ndarray:
    sh = check_index_array("shifts", shifts, num_learners, f"number of learners k*d = {num_learners}")
    if len(np.unique(sh)) != len(sh):
        raise ValueError("shifts must be distinct")
    return sh


def _ceil_pos(a: np.ndarray, b: int) -> np.ndarray:
    """ceil+(a, b) = ceil(max(a, 0) / b) for integer arrays."""
    return (np.maximum(a, 0) + b - 1) // b


# --------------------------------------------------------------------------- the election
class _Election:
    """Round-1 votes / counts, finalists m1, m2, prediction c_pred and the other finalist c_sec (arrays over B);
    prefer (B, K) = #{models with z(c_pred) > z(c)}."""

    __slots__ = ("votes", "counts", "m1", "m2", "pred", "sec", "prefer")

    def __init__(self, s: np.ndarray):
        B, M, K = s.shape
        self.votes = np.empty((B, M), np.int64)
        self.counts = np.empty((B, K), np.int64)
        self.m1, self.m2, self.pred = np.empty(B, np.int64), np.empty(B, np.int64), np.empty(B, np.int64)
        self.prefer = np.empty((B, K), np.int64)
        _election_kernel(np.ascontiguousarray(s), self.votes, self.counts, self.m1, self.m2, self.pred, self.prefer)
        self.sec = self.m1 + self.m2 - self.pred


@njit(cache=True, nogil=True)
def _election_kernel(s: np.ndarray, votes: np.ndarray, counts: np.ndarray, m1: np.ndarray, m2: np.ndarray,
                     pred: np.ndarray, prefer: np.ndarray) -> None:  # pragma: no cover - compiled (numba); tested through roe_predict
    """The election of scores s (B, M, K) (finite) in one pass: votes = argmax over classes (the first
    maximum, as np.argmax); counts; m1, m2 = the first two classes of the stable descending order of
    the counts (ties to the smaller index); pred = m1 if E > 0, m2 if E < 0, min(m1, m2) if E = 0, where
    E = 2 #{models with z(m1) > z(m2)} - M; prefer[:, c] = #{models with z(pred) > z(c)}."""
    B, M, K = s.shape
    for b in range(B):
        counts[b, :] = 0
        for m in range(M):
            best = 0
            top = s[b, m, 0]
            for k in range(1, K):
                if s[b, m, k] > top:
                    top = s[b, m, k]
                    best = k
            votes[b, m] = best
            counts[b, best] += 1
        a = 0
        for k in range(1, K):
            if counts[b, k] > counts[b, a]:
                a = k
        c = 1 if a == 0 else 0
        for k in range(K):
            if k != a and counts[b, k] > counts[b, c]:
                c = k
        wins = 0
        for m in range(M):
            if s[b, m, a] > s[b, m, c]:
                wins += 1
        e = 2 * wins - M
        m1[b], m2[b] = a, c
        p = a if e > 0 else (c if e < 0 else min(a, c))
        pred[b] = p
        prefer[b, :] = 0
        for m in range(M):
            z = s[b, m, p]
            for k in range(K):
                if z > s[b, m, k]:
                    prefer[b, k] += 1


def roe_predict(scores: ArrayLike) -> np.ndarray:
    """Run-off election prediction for scores (..., M, K) of M base models: (...,) int64.

    The rule of ROE paper (see the module docstring); used by every certificate and brute force here.
    """
    s = as_float_array("scores", scores)
    if s.ndim < 2:
        raise ValueError(f"scores must have shape (..., M, K), got {s.shape}")
    s = _check_scores(s, ndim=s.ndim)
    lead = s.shape[:-2]
    flat = s.reshape((-1,) + s.shape[-2:])
    return _Election(flat).pred.reshape(lead).astype(np.int64)


# --------------------------------------------------------------------------- DPA + ROE
@functools.lru_cache(maxsize=4)
def _knockout_table_cached(size: int) -> np.ndarray:
    A = np.zeros((size, size), np.int64)
    j = np.arange(size)
    for i in range(size):
        rec = np.zeros(size, np.int64)
        if i >= 2:
            rec[2:] = 1 + np.minimum(A[i - 2, 1:-1], A[i - 1, :-2])
        A[i] = np.select(
            [(i == 0) & (j == 0), ((i <= 1) & (j <= 2)) | ((i <= 2) & (j <= 1)), j <= 1, np.full(size, i <= 1)],
            [0, 1, (i + 1) // 2, (j + 1) // 2],
            rec,
        )
    A.setflags(write=False)
    return A


def _knockout_table(min_size: int) -> np.ndarray:
    """DP(i, j) of dp_calc.py for i, j < size (size >= min_size, rounded up to a power of two, cached).

    DP(i, j) = fewest single-vote moves that drive both round-1 gaps (i, j) to <= 0 when one move
    reduces them by (2, 1) or (1, 2) (ROE paper, case R1). Read-only.
    """
    size = 64
    while size < min_size:
        size *= 2
    return _knockout_table_cached(size)


def _dpa_roe_cases(s: np.ndarray, e: _Election) -> tuple[np.ndarray, np.ndarray]:
    """Black-box attack-size lower bounds per case (ROE paper), int64 with NO_ATTACK where the case is impossible.

    r1 (B, K, K): c_pred knocked out of round 1 by the ordered pair (c1, c2), DP(g(cp, c1)+, g(cp, c2)+).
    r2 (B, K): c reaches the final and wins it, max(ceil+(g(c_sec, c), 2), ceil+(g2(c), 2)).
    """
    B, M, K = s.shape
    rows = np.arange(B)
    cls = np.arange(K)[None, :]
    cp, sec, n = e.pred, e.sec, e.counts
    g_cp = n[rows, cp][:, None] - n + (cls > cp[:, None])  # g(c_pred, c)
    gp = np.maximum(g_cp, 0)
    table = _knockout_table(int(gp.max()) + 1 if gp.size else 1)
    r1 = table[gp[:, :, None], gp[:, None, :]]
    bad = (cls[:, :, None] == cp[:, None, None]) | (cls[:, None, :] == cp[:, None, None]) | (
        cls[:, :, None] == cls[:, None, :])
    r1 = np.where(bad, NO_ATTACK, r1)
    g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])  # g(c_sec, c); 0 for c = c_sec
    g2 = 2 * e.prefer - M + (cls > cp[:, None])  # E_{c_pred}(c) + [c > c_pred]
    r2 = np.maximum(_ceil_pos(g_sec, 2), _ceil_pos(g2, 2))
    # With a model whose finalist scores are equal, g2(c_sec) can already be <= 0 although c_pred
    # wins (the published script asserts CertR2 > 0 here); any attack needs at least one poison.
    r2 = np.maximum(r2, 1)
    r2[rows, cp] = NO_ATTACK
    return r1, r2


def dpa_roe(scores: ArrayLike, *, block_size: int | None = None) -> AggregateResult:
    """Black-box DPA+ROE certificate (ROE paper) for base-model scores (t, M, K).

    prediction (t,) = roe_predict(scores); radius (t,) = min(CertR1, CertR2) - 1, a sound lower
    bound on the black-box radius (each poison controls one partition's scores completely).
    """
    s = _check_scores(scores)
    t, M, K = s.shape
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in row_blocks(t, M * K * 10 + K * K * 24, block_size):
        e = _Election(s[sl])
        r1, r2 = _dpa_roe_cases(s[sl], e)
        pred[sl] = e.pred
        att[sl] = np.minimum(r1.reshape(len(r1), -1).min(axis=1), r2.min(axis=1))
    return AggregateResult(prediction=pred, radius=radius_from_attack(att))


DPA_STAR_SUMMATION = ("float64", "float32")


def dpa_star_roe(scores: ArrayLike, *, summation: str = "float64", block_size: int | None = None) -> AggregateResult:
    """DPA*+ROE (ROE paper): scores (t, N_p, V, K) of V base models per partition, summed per partition.

    One poison still touches one partition, so DPA+ROE applies unchanged to the summed scores
    (sound for either summation: the certificate treats each partition's sum as arbitrary).
    summation: "float64" (default; each version's scores in float64, summed in float64) or
    "float32": the published pipeline's rule (the ROE repository's dpa_star_bases.py), a float32
    accumulator starting at 0 to which versions 0, 1, ..., V-1 are added in that order. Pick
    "float32" to reproduce the published DPA*+ROE tables: on logits with many near ties (e.g.
    rounded to 0.1) the two summations can give different predictions.
    """
    if summation not in DPA_STAR_SUMMATION:
        raise ValueError(f"summation must be 'float64' or 'float32' (the published rule), got {summation!r}")
    if summation == "float64":
        s = _check_scores(scores, ndim=4, dtype=np.float64)
        return dpa_roe(s.sum(axis=2), block_size=block_size)
    s = _check_scores(scores, ndim=4, dtype=np.float32)
    total = np.zeros(s.shape[:2] + s.shape[3:], np.float32)
    for version in range(s.shape[2]):  # sequential float32 adds, as the published loop does
        total += s[:, :, version]
    return dpa_roe(total, block_size=block_size)


# --------------------------------------------------------------------------- FA and FA + ROE
# Every FA quantity of the published algorithms is a greedy count: the fewest groups whose largest
# per-group reductions sum to >= a gap. The reductions are small integers (0..3d) built from
# "how many of group h's d learners vote c" (circular sums over the shifts), so the greedy runs on
# a histogram of reduction values instead of a sort, and each count is first bounded from below by
# a histogram shared by all classes (reductions can only be smaller). Exact counts are computed
# only for the cases whose lower bound could still set the minimum; the result equals evaluating
# every case (a skipped case's exact value is >= its bound >= the minimum found).
def _greedy_count(gap: np.ndarray, red: np.ndarray) -> np.ndarray:
    """Fewest groups whose largest reductions red (B, H) >= 0 sum to >= gap (B,); 0 if gap <= 0, NO_ATTACK if never."""
    if red.shape[1] == 0:
        return np.where(gap <= 0, 0, NO_ATTACK).astype(np.int64)
    cums = np.cumsum(-np.sort(-red, axis=1), axis=1)
    count = (cums < gap[:, None]).sum(axis=1) + 1
    count = np.where(cums[:, -1] < gap, NO_ATTACK, count)
    return np.where(gap <= 0, 0, count).astype(np.int64)


def _group_sums(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """x (B, L) 0/1 per learner -> (B, L): sum over s of x[:, (h + s) mod L] (group h's learners).

    int8 when every derived reduction (at most 3d) fits in it, else int16."""
    B, L = x.shape
    dtype = np.int8 if 3 * len(shifts) <= 127 else np.int16
    ext = np.empty((B, 2 * L), dtype)
    ext[:, :L] = x
    ext[:, L:] = x
    out = np.zeros((B, L), dtype)
    for s in shifts:
        out += ext[:, s:s + L]
    return out


def _histogram(values: np.ndarray, num_values: int) -> np.ndarray:
    """(B, H) integers in 0..num_values-1 -> counts (B, num_values) of each value per row."""
    B = values.shape[0]
    flat = values.astype(np.int64) + num_values * np.arange(B)[:, None]
    return np.bincount(flat.ravel(), minlength=B * num_values).reshape(B, num_values)


def _greedy_from_histogram(hist: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """`_greedy_count` from a histogram (B, V) of the reduction values 0..V-1 of each row, for gaps
    (B,) or (B, m) (m gaps per row share the row's histogram)."""
    B, V = hist.shape
    g = np.asarray(gap, np.int64)
    g2 = g.reshape(B, -1)
    mass = np.cumsum((hist * np.arange(V))[:, ::-1], axis=1)[:, ::-1]  # mass[j] = sum of the values >= j
    num = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # number of groups with value >= j
    mass_ext = np.concatenate([mass, np.zeros((B, 1), mass.dtype)], axis=1)
    num_ext = np.concatenate([num, np.zeros((B, 1), num.dtype)], axis=1)
    ok = (g2 > 0) & (mass[:, :1] >= g2)
    gs = np.where(ok, g2, 1)
    # j = the value at which the running sum of the largest reductions reaches the gap (>= 1)
    j = np.maximum((mass[:, None, :] >= gs[:, :, None]).sum(axis=2) - 1, 1)
    above_mass = np.take_along_axis(mass_ext, j + 1, axis=1)
    above_num = np.take_along_axis(num_ext, j + 1, axis=1)
    count = above_num + (gs - above_mass + j - 1) // j
    return np.where(g2 <= 0, 0, np.where(ok, count, NO_ATTACK)).astype(np.int64).reshape(g.shape)


def fa(votes: ArrayLike, shifts: ArrayLike, num_classes: int, *, block_size: int | None = None) -> AggregateResult:
    """Finite Aggregation certificate (FA paper) for votes (t, k*d) of the k*d learners.

    Group h (one poison) reaches the d learners (h + s) mod (k*d), s in shifts. Plurality
    prediction (ties to the smaller index); radius = min over c != p of the largest r such that the
    r largest per-group reductions of gap_c = n_p - n_c - [c < p] sum to <= gap_c, the published
    algorithm's value. Sound. With shifts=[0] it equals DPA.

    One compiled pass over the test points (`_fa_kernel`, nogil; working memory O(k*d), so
    `block_size` is accepted for the call shape of the other certificates and has no effect); the
    vectorised numpy form `_fa_numpy` computes the same values and is the tests' oracle.
    """
    K = int(num_classes)
    if K < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    v = check_votes(votes, K)
    t, L = v.shape
    sh = _check_shifts(shifts, L)
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    _fa_kernel(np.ascontiguousarray(v, np.int64), np.ascontiguousarray(sh, np.int64), K, pred, att)
    return AggregateResult(prediction=pred, radius=radius_from_attack(att))


@njit(cache=True, nogil=True, inline="always")
def _greedy_on_histogram(hist: np.ndarray, gap: int) -> int:  # pragma: no cover - compiled (numba); tested through fa
    """`_greedy_from_histogram` for one row and one gap: fewest groups whose largest reductions (a
    histogram of the values 0..len(hist)-1) sum to >= gap; 0 if gap <= 0, NO_ATTACK if never."""
    if gap <= 0:
        return 0
    count = 0
    for j in range(hist.shape[0] - 1, 0, -1):
        h = hist[j]
        if h * j >= gap:
            return count + (gap + j - 1) // j
        gap -= h * j
        count += h
    return NO_ATTACK


@njit(cache=True, nogil=True, inline="always")
def _fa_group_sums(votes_row: np.ndarray, c: int, shifts: np.ndarray, ext: np.ndarray,
                   out: np.ndarray) -> None:  # pragma: no cover - compiled (numba); tested through fa
    """out[h] = #{s in shifts: votes_row[(h + s) mod L] == c} (`_group_sums` of one row and class);
    ext (2L,) is scratch."""
    L = votes_row.shape[0]
    for j in range(L):
        x = 1 if votes_row[j] == c else 0
        ext[j] = x
        ext[L + j] = x
    out[:] = 0
    for i in range(shifts.shape[0]):
        s = shifts[i]
        out += ext[s:s + L]  # (a slice, not an indexed loop: LLVM vectorises it)


@njit(cache=True, nogil=True)
def _fa_kernel(votes: np.ndarray, shifts: np.ndarray, K: int, pred: np.ndarray,
               att: np.ndarray) -> None:  # pragma: no cover - compiled (numba); tested against _fa_numpy
    """FA (`fa`) for votes (t, L) int64 and shifts (d,) int64 into pred, att (t,) int64 (attack sizes).

    Per test point, as `_fa_numpy`: the histogram of the class-independent reduction bounds d +
    cnt_p bounds every class's greedy count from below; classes are made exact in the order of their
    bounds until no bound is below the best exact count (the minimum over all classes, unchanged)."""
    t, L = votes.shape
    d = shifts.shape[0]
    V = 2 * d + 1
    n = np.zeros(K, np.int64)
    ext = np.zeros(2 * L, np.int32)  # group counts <= d <= L < 2**31
    cnt_p = np.zeros(L, np.int32)
    cnt_c = np.zeros(L, np.int32)
    hist_p = np.zeros(V, np.int64)
    hist = np.zeros(V, np.int64)
    need = np.zeros(K, np.int64)
    bound = np.zeros(K, np.int64)
    done = np.zeros(K, np.bool_)
    for i in range(t):
        row = votes[i]
        n[:] = 0
        for j in range(L):
            n[row[j]] += 1
        p = 0
        for c in range(1, K):
            if n[c] > n[p]:
                p = c
        # the prediction changes once a reduction reaches gap_c + 1, gap_c = n_p - n_c - [c < p]
        for c in range(K):
            need[c] = n[p] - n[c] - (1 if c < p else 0) + 1
        _fa_group_sums(row, p, shifts, ext, cnt_p)
        hist_p[:] = 0
        for h in range(L):
            hist_p[cnt_p[h] + d] += 1  # reductions d + cnt_p - cnt_c <= d + cnt_p
        for c in range(K):
            done[c] = c == p
            bound[c] = NO_ATTACK if c == p else _greedy_on_histogram(hist_p, need[c])
        best = NO_ATTACK
        while True:
            cand = -1
            for c in range(K):
                if not done[c] and (cand < 0 or bound[c] < bound[cand]):
                    cand = c
            if cand < 0 or bound[cand] >= best:
                break
            done[cand] = True
            if n[cand] == 0:  # cnt_c = 0 everywhere: the bound is the exact count
                exact = bound[cand]
            else:
                _fa_group_sums(row, cand, shifts, ext, cnt_c)
                hist[:] = 0
                for h in range(L):
                    hist[d + cnt_p[h] - cnt_c[h]] += 1
                exact = _greedy_on_histogram(hist, need[cand])
            if exact < best:
                best = exact
        pred[i] = p
        att[i] = best


def _fa_numpy(votes: ArrayLike, shifts: ArrayLike, num_classes: int, *, block_size: int | None = None
              ) -> AggregateResult:
    """`fa` in vectorised numpy over blocks of test points (the oracle of the compiled `_fa_kernel`)."""
    K = int(num_classes)
    v = check_votes(votes, K)
    t, L = v.shape
    sh = _check_shifts(shifts, L)
    d = len(sh)
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    cls = np.arange(K)
    for sl in row_blocks(t, L * 48 + K * 64, block_size):
        vb = v[sl]
        B = len(vb)
        rows = np.arange(B)
        n = vote_counts(vb, K)
        p = np.argmax(n, axis=1)
        # the prediction changes once a reduction reaches gap_c + 1, gap_c = n_p - n_c - [c < p]
        need = n[rows, p][:, None] - n - (cls < p[:, None]) + 1
        cnt_p = _group_sums(vb == p[:, None], sh)
        hist_p = _histogram(cnt_p + d, 2 * d + 1)  # reductions d + cnt_p - cnt_c <= d + cnt_p
        bound = _greedy_from_histogram(hist_p, need)
        bound[rows, p] = NO_ATTACK
        best = np.full(B, NO_ATTACK, np.int64)
        done = cls[None, :] == p[:, None]
        while True:
            cand = np.argmin(np.where(done, NO_ATTACK, bound), axis=1)
            act = np.flatnonzero(~done[rows, cand] & (bound[rows, cand] < best))
            if act.size == 0:
                break
            for c in np.unique(cand[act]):
                r = act[cand[act] == c]
                red = d + cnt_p[r] - _group_sums(vb[r] == c, sh)
                best[r] = np.minimum(best[r], _greedy_from_histogram(_histogram(red, 2 * d + 1), need[r, c]))
                done[r, c] = True
        pred[sl] = p
        att[sl] = best
    return AggregateResult(prediction=pred, radius=radius_from_attack(att))


def fa_roe(scores: ArrayLike, shifts: ArrayLike, *, block_size: int | None = None) -> AggregateResult:
    """FA+ROE certificate (ROE paper) for learner scores (t, k*d, K); group h reaches learners (h + s) mod (k*d).

    prediction = roe_predict(scores); radius = min(CertR1, CertR2) - 1 with the greedy max-of-necessary-
    conditions bounds of the published algorithm (its exact value, computed lazily: see the comment
    above `_greedy_count`). Sound. With shifts=[0] it gives the DPA+ROE radius (per knock-out pair the
    greedy can exceed the DP when c_pred has no votes to move, but such a pair never sets the minimum;
    the tests check the equality).
    """
    s = _check_scores(scores)
    t, L, K = s.shape
    sh = _check_shifts(shifts, L)
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in row_blocks(t, L * K * (s.itemsize + 12) + L * 64 + K * K * 40, block_size):
        e = _Election(s[sl])
        pred[sl] = e.pred
        att[sl] = _fa_roe_block(s[sl], e, sh)
    return AggregateResult(prediction=pred, radius=radius_from_attack(att))


def _fa_roe_block(s: np.ndarray, e: _Election, sh: np.ndarray) -> np.ndarray:
    """Attack-size lower bound (B,) of the published FA+ROE algorithm for one block (lazy evaluation).

    Components (B, K) / (B, K, K), each a greedy count: r1[c] = cost(c_pred -> c), r1s[c] =
    cost(c_sec -> c), r2[c] = run-off flips of c against c_pred, ns[c1, c2] = the summed-gap count.
    Cases: R2(c) = max(r1s[c], r2[c], 1), R1(c1, c2) = max(r1[c1], r1[c2], ns[c1, c2]). Components
    start at lower bounds from class-independent histograms (exact where 0 or impossible); the open
    case with the smallest value is made exact until no open case can beat the best exact case.
    """
    B, L, K = s.shape
    d = len(sh)
    rows = np.arange(B)
    cls = np.arange(K)
    v, n, cp, sec = e.votes, e.counts, e.pred, e.sec
    g_cp = n[rows, cp][:, None] - n + (cls > cp[:, None])
    g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])
    prefers = np.take_along_axis(s, cp[:, None, None], axis=2) > s  # (B, L, K): learner counts for c_pred vs c
    g2 = 2 * prefers.sum(axis=1) - L + (cls > cp[:, None])
    cnt_cp = _group_sums(v == cp[:, None], sh)
    cnt_sec = _group_sums(v == sec[:, None], sh)
    h_cp = _histogram(cnt_cp + d, 2 * d + 1)  # reductions d + cnt_a - cnt_c <= d + cnt_a
    h_sec = _histogram(cnt_sec + d, 2 * d + 1)
    h_sum = _histogram(2 * cnt_cp + d, 3 * d + 1)  # d + 2 cnt_cp - cnt_c1 - cnt_c2 <= d + 2 cnt_cp
    r1 = _greedy_from_histogram(h_cp, g_cp)
    r1s = _greedy_from_histogram(h_sec, g_sec)
    r2 = _ceil_pos(g2, 2 * d)  # a group holds at most d learners, each moving the margin by 2
    ns = _greedy_from_histogram(h_sum, g_cp[:, :, None] + g_cp[:, None, :])
    # exact where the bound is 0 (gap already closed) or impossible even with the larger reductions
    r1_ex, r1s_ex, ns_ex = (r1 == 0) | (r1 >= NO_ATTACK), (r1s == 0) | (r1s >= NO_ATTACK), (ns == 0) | (ns >= NO_ATTACK)
    r2_ex = g2 <= 0
    valid2 = cls[None, :] != cp[:, None]
    pair = (cls[:, None] < cls[None, :])[None] & valid2[:, :, None] & valid2[:, None, :]

    def counts_of(r: Any, c: Any) -> np.ndarray:
        return _group_sums(v[r] == c, sh)

    while True:
        v2 = np.where(valid2, np.maximum(np.maximum(r1s, r2), 1), NO_ATTACK)
        v1 = np.where(pair, np.maximum(np.maximum(r1[:, :, None], r1[:, None, :]), ns), NO_ATTACK)
        ex2 = r1s_ex & r2_ex
        ex1 = r1_ex[:, :, None] & r1_ex[:, None, :] & ns_ex
        best = np.minimum(np.where(ex2, v2, NO_ATTACK).min(axis=1), np.where(ex1, v1, NO_ATTACK).reshape(B, -1).min(axis=1))
        open_ = np.concatenate([np.where(ex2, NO_ATTACK, v2), np.where(ex1, NO_ATTACK, v1).reshape(B, -1)], axis=1)
        q = np.argmin(open_, axis=1)
        act = np.flatnonzero(open_[rows, q] < best)
        if act.size == 0:
            return best
        qa = q[act]
        is2 = qa < K
        c2 = qa[is2]
        a2 = act[is2]
        c1a, c1b = np.divmod(qa[~is2] - K, K)
        a1 = act[~is2]
        for c in range(K):  # r1s and r2 of the R2 cases, r1 of both classes of the R1 cases
            r = a2[(c2 == c) & ~r1s_ex[a2, c]]
            if r.size:
                red = d + cnt_sec[r] - counts_of(r, c)
                r1s[r, c] = _greedy_from_histogram(_histogram(red, 2 * d + 1), g_sec[r, c])
                r1s_ex[r, c] = True
            r = a2[(c2 == c) & ~r2_ex[a2, c]]
            if r.size:
                red = 2 * _group_sums(prefers[r, :, c], sh)
                r2[r, c] = _greedy_from_histogram(_histogram(red, 2 * d + 1), g2[r, c])
                r2_ex[r, c] = True
            r = np.unique(np.concatenate([a1[(c1a == c) & ~r1_ex[a1, c]], a1[(c1b == c) & ~r1_ex[a1, c]]]))
            if r.size:
                red = d + cnt_cp[r] - counts_of(r, c)
                r1[r, c] = _greedy_from_histogram(_histogram(red, 2 * d + 1), g_cp[r, c])
                r1_ex[r, c] = True
        for a, b in {(int(x), int(y)) for x, y in zip(c1a, c1b)}:
            r = a1[(c1a == a) & (c1b == b) & ~ns_ex[a1, a, b]]
            if r.size:
                red = d + 2 * cnt_cp[r] - counts_of(r, a) - counts_of(r, b)
                ns[r, a, b] = _greedy_from_histogram(_histogram(red, 3 * d + 1), g_cp[r, a] + g_cp[r, b])
                ns_ex[r, a, b] = True


# --------------------------------------------------------------------------- white-box ROE
def _min_cost_gain2(options: Sequence[tuple[int, int, np.ndarray]], need1: np.ndarray,
                    need2: np.ndarray) -> np.ndarray:
    """Two-dimensional version of voting.knapsack_dp: total gains >= (need1, need2); options (g1, g2, cost (B, N)).

    f[i1, i2] = min cost of total gains >= (i1, i2) over the partitions seen so far; per partition
    and option, f[max(i1 - g1, 0), max(i2 - g2, 0)] + cost, in one compiled pass per test point
    (the same float64 sums and minima as the table-at-a-time form, so the same values)."""
    B = len(need1)
    if B == 0:
        return np.zeros(0)
    gains = np.array([(g1, g2) for g1, g2, _ in options], np.int64).reshape(-1, 2)
    costs = np.ascontiguousarray(np.stack([np.asarray(c, np.float64) for _, _, c in options]))  # (O, B, N)
    return _min_cost_gain2_kernel(gains, costs, np.maximum(np.asarray(need1, np.int64), 0),
                                  np.maximum(np.asarray(need2, np.int64), 0))


@njit(cache=True, nogil=True)
def _min_cost_gain2_kernel(gains: np.ndarray, costs: np.ndarray, need1: np.ndarray,
                           need2: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled (numba); tested through whitebox_roe
    O, B, N = costs.shape
    out = np.empty(B)
    for b in range(B):
        G1, G2 = need1[b], need2[b]
        f = np.full((G1 + 1, G2 + 1), np.inf)
        f[0, 0] = 0.0
        new = np.empty_like(f)
        for m in range(N):
            new[:, :] = f
            for o in range(O):
                c = costs[o, b, m]
                if c == np.inf:  # f + inf never lowers a minimum
                    continue
                g1, g2 = gains[o, 0], gains[o, 1]
                for i1 in range(G1 + 1):
                    j1 = max(i1 - g1, 0)
                    for i2 in range(G2 + 1):
                        v = f[j1, max(i2 - g2, 0)] + c
                        if v < new[i1, i2]:
                            new[i1, i2] = v
            f, new = new, f
        out[b] = f[G1, G2]
    return out


_HIST_COSTS = 1024  # run-off flip costs that are integers below this are summed from a histogram


@njit(cache=True, nogil=True)
def _whitebox_prep_kernel(s: np.ndarray, vc_in: np.ndarray, pc: np.ndarray, inf_code: int, unit: np.ndarray,
                          v: np.ndarray, cp: np.ndarray, sec: np.ndarray, vc: np.ndarray, vc_cp_other: np.ndarray,
                          vc_sec_other: np.ndarray, r_b: np.ndarray) -> None:  # pragma: no cover - compiled (numba); tested through whitebox_roe
    """Per-block inputs of white-box ROE, for scores s (B, M, K), vote costs vc_in (B, M, K), pair costs
    pc (B, M, K, K) (float64 with inf_code -1, or unsigned codes with inf at inf_code; every count of a
    `unit` (B, M) model is 1), votes v (B, M) and finalists cp, sec (B,):

    vc (B, M, K) = 0 at the model's own vote, max(vc_in, 1) elsewhere; vc_cp_other / vc_sec_other (B, M)
    = min of vc over the classes other than c_pred / c_sec; r_b (B, K) = the sum of the k = ceil+(g2(c), 2)
    smallest max(pc[c_pred, c], 1) over the models with z(c_pred) > z(c), with g2(c) = 2 #{those models}
    - M + [c > c_pred]; inf when k > M.

    The same values as numpy's np.where / min / np.sort + np.cumsum form (tests/roe_reference.py): the
    minima are exact, and the sum is the sequential sum of the k smallest values in ascending order, as
    the cumulative sum of the sorted values; where every finite value is an integer below
    `_HIST_COSTS` (flip counts), every partial sum is an exact integer, so the sum is taken from a
    histogram of the values in any order (inf where it reaches past the finite values)."""
    B, M, K = s.shape
    cand = np.empty((K, M))  # the preferring models' max(pc, 1), per class
    count = np.zeros(K, np.int64)
    general = np.zeros(K, np.bool_)  # a finite value that is not an integer below _HIST_COSTS
    top = np.zeros(K, np.int64)
    hist = np.zeros((K, _HIST_COSTS), np.int64)
    for b in range(B):
        c_p, c_s = cp[b], sec[b]
        count[:] = 0
        general[:] = False
        top[:] = 0
        for m in range(M):
            own = v[b, m]
            z = s[b, m, c_p]
            lo_cp = np.inf
            lo_sec = np.inf
            for k in range(K):
                x = 0.0 if k == own else max(vc_in[b, m, k], 1.0)
                vc[b, m, k] = x
                if k != c_p and x < lo_cp:
                    lo_cp = x
                if k != c_s and x < lo_sec:
                    lo_sec = x
                if z > s[b, m, k]:
                    if unit[b, m]:
                        y = 1.0
                    elif inf_code >= 0 and pc[b, m, c_p, k] == inf_code:
                        y = np.inf
                    else:
                        y = max(float(pc[b, m, c_p, k]), 1.0)
                    cand[k, count[k]] = y
                    count[k] += 1
                    if y < _HIST_COSTS and y == np.floor(y):
                        slot = int(y)
                        hist[k, slot] += 1
                        if slot > top[k]:
                            top[k] = slot
                    elif y != np.inf:  # inf: counted, never in the histogram (the largest values)
                        general[k] = True
            vc_cp_other[b, m] = lo_cp
            vc_sec_other[b, m] = lo_sec
        for k in range(K):
            g2 = 2 * count[k] - M + (1 if k > c_p else 0)
            need = (max(g2, 0) + 1) // 2
            if need > M:
                r_b[b, k] = np.inf
            elif need == 0:
                r_b[b, k] = 0.0
            elif general[k]:
                vals = np.sort(cand[k, :count[k]])
                acc = 0.0
                for i in range(need):
                    acc += vals[i]
                r_b[b, k] = acc
            else:
                left = need
                total = 0
                for i in range(1, top[k] + 1):
                    take = min(hist[k, i], left)
                    total += take * i
                    left -= take
                    if left == 0:
                        break
                r_b[b, k] = np.inf if left > 0 else float(total)
            hist[k, :top[k] + 1] = 0


def _as_attack(cost: np.ndarray) -> np.ndarray:
    """Float lower bound on a flip count -> integer lower bound (rounding only downwards); inf -> NO_ATTACK."""
    fin = np.isfinite(cost)
    safe = np.where(fin, cost, 0.0)
    c = np.ceil(safe - 1e-9 * np.maximum(safe, 1.0))
    return np.where(fin, c, NO_ATTACK).astype(np.int64)


def _where_min(mask: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """min over the last axis of cost where mask, inf where none (the numpy form of the minima the
    compiled kernels take; tests/roe_reference.py)."""
    return np.where(mask, cost, np.inf).min(axis=-1)


_KNAPSACK = knapsack_solver("auto")  # the exact gains-{1, 2} solver EnsembleCert uses
_JOINT_BUDGET = 400_000  # partitions * (G1 + 1) * (G2 + 1) per test point above which joint="auto" skips the 2-D DP


JOINT_MODES = (True, False, "auto", "per_point")


def whitebox_roe(scores: ArrayLike, vote_costs: ArrayLike, pair_costs: ArrayLike | FlipCounts, *, joint: bool | str = "auto",
                 block_size: int | None = None) -> AggregateResult:
    """White-box DPA+ROE certificate from per-partition flip costs (docs/math.md §5).

    scores (t, M, K): base-model scores. vote_costs (t, M, K): lower bound on the flips inside
    partition m after which model m votes c (its own vote is treated as 0). pair_costs (t, M, K, K):
    pair_costs[i, m, a, b] lower bound on the flips after which model m no longer has z(a) > z(b)
    (i.e. z(b) >= z(a): tie="attacker" pairwise costs), float64 or `evidence.FlipCounts`; only the
    rows a = prediction are read. inf = unreachable. Costs below 1 for a change are raised to 1
    (a partition without flips keeps its model).

    R1 (c_pred knocked out by c1, c2): max of the knapsacks "c1 beats c_pred", "c2 beats c_pred",
    the summed-gap knapsack and (joint=True, or "auto" / "per_point" when affordable) the joint 2-D
    knapsack. "auto" admits the 2-D knapsack of a pair for all of a block's open test points or none
    (partitions * (G1 + 1) * (G2 + 1) over their largest gaps within `_JOINT_BUDGET`), so a point's
    radius can depend on the other points of its block; "per_point" applies the same rule to each
    test point alone: block-independent, monotone in the costs, never below "auto".
    R2 (c reaches the final and wins): max of the knapsack "c beats c_sec" and the cheapest
    ceil+(g2(c), 2) preference flips. Each case is combined with its black-box DPA+ROE value by max.
    radius (t,) int64 = min over cases - 1 (NO_ATTACK when no case is reachable); never below dpa_roe.
    """
    if joint not in JOINT_MODES:
        raise ValueError(f"joint must be True, False, 'auto' or 'per_point', got {joint!r}")
    s = _check_scores(scores)
    t, M, K = s.shape
    vc_all = _check_costs("vote_costs", vote_costs, (t, M, K))
    pair_rows = _pair_rows(pair_costs, (t, M, K, K))
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in row_blocks(t, M * K * (K + 12) * 8, block_size):
        e = _Election(s[sl])
        pred[sl] = e.pred
        att[sl] = _whitebox_block(s[sl], vc_all[sl], *pair_rows(sl), e, joint)
    return AggregateResult(prediction=pred, radius=radius_from_attack(att))


def _pair_rows(pair_costs: ArrayLike | FlipCounts, shape: tuple[int, int, int, int]
               ) -> Callable[[slice], tuple[np.ndarray, int, np.ndarray | None]]:
    """rows -> (pair costs of those rows (B, M, K, K), inf code, unit (B, M) or None) as
    `_whitebox_prep_kernel` reads them: `FlipCounts` as their unsigned codes (inf code = the dtype's
    maximum, `unit` its models of unit costs; non-negative integers by construction, decoded only
    where read: the rows of each point's prediction), an array as checked float64 (`_check_costs`,
    whole; inf code -1: none)."""
    if isinstance(pair_costs, FlipCounts):
        if pair_costs.shape != shape:
            raise ValueError(f"pair_costs must have shape {shape}, got {pair_costs.shape}")
        codes, unit, top = pair_costs.codes, pair_costs.unit, int(np.iinfo(pair_costs.codes.dtype).max)
        return lambda rows: (codes[rows], top, None if unit is None else unit[rows])
    pc_all = _check_costs("pair_costs", pair_costs, shape)
    return lambda rows: (pc_all[rows], -1, None)


def _whitebox_block(s: np.ndarray, vc_in: np.ndarray, pc: np.ndarray, inf_code: int, unit: np.ndarray | None,
                    e: _Election, joint: bool | str) -> np.ndarray:
    """Attack-size lower bound (B,) for one block; pc (B, M, K, K), inf_code, unit: the block's pair costs
    (`_pair_rows`), of which only those of c_pred against each class are read."""
    B, M, K = s.shape
    rows = np.arange(B)
    cls = np.arange(K)
    v, n, cp, sec = e.votes, e.counts, e.pred, e.sec
    # Every bound below is a lower bound on the number of flips of any attack of its case: the
    # black-box values because each changed base model needs >= 1 flip in its own partition, the
    # white-box knapsacks because a model only changes its vote / preference after at least the
    # given number of flips in its partition and flips in different partitions add up. Both are
    # valid for the same case, so their max is, and the min over the exhaustive cases bounds every
    # successful attack (hence the result is also never below the black-box certificate).
    # vote costs (own vote 0, others >= 1), the cheapest change away from c_pred / c_sec and the run-off
    # flips r_b of each class (`_whitebox_prep_kernel`), in one compiled pass
    vc = np.empty((B, M, K))
    vc_cp_other = np.empty((B, M))
    vc_sec_other = np.empty((B, M))
    r_b = np.empty((B, K))
    _whitebox_prep_kernel(s, np.ascontiguousarray(vc_in, dtype=np.float64), np.ascontiguousarray(pc), inf_code,
                          np.zeros((B, M), np.bool_) if unit is None else np.ascontiguousarray(unit, dtype=np.bool_),
                          np.ascontiguousarray(v, dtype=np.int64), cp.astype(np.int64), sec.astype(np.int64),
                          vc, vc_cp_other, vc_sec_other, r_b)
    bb1, bb2 = _dpa_roe_cases(s, e)
    votes_cp = v == cp[:, None]
    votes_sec = v == sec[:, None]
    g_cp = n[rows, cp][:, None] - n + (cls > cp[:, None])
    g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])

    def beats(c: Any, votes_a: np.ndarray, vc_a_other: np.ndarray, need: np.ndarray, r: Any) -> np.ndarray:
        """Knapsack on rows r: class c overtakes class a in round 1 (docs/math.md §4 gains 2 / 1), need = g(a, c).
        Each row's value depends on that row alone, so solving a subset of rows changes none of them."""
        gain1, gain2 = overtake_gains(v[r], vc[r, :, c], c, votes_a[r], vc_a_other[r])
        return _KNAPSACK(gain1, gain2, np.maximum(need[r], 0))[0]

    # ---- R2: c != c_pred reaches the final (beats c_sec unless c = c_sec) and wins the run-off.
    # lower[:, c] = max(run-off flips, black box) is the case's value without its round-1 knapsack, which
    # only raises it; c = c_sec needs none (exact), so it bounds the minimum from above, and the knapsack
    # of another class is solved only on the rows where its lower value is below the running minimum (a
    # skipped case is >= the minimum, so the minimum is the one over every case).
    lower = np.maximum(_as_attack(r_b), bb2)
    best = lower[rows, sec].copy()  # c_sec != c_pred: the other finalist
    for c in range(K):
        r = np.flatnonzero((cp != c) & (sec != c) & (lower[:, c] < best))
        if r.size:
            val = np.maximum(_as_attack(beats(c, votes_sec, vc_sec_other, g_sec[:, c], r)), lower[r, c])
            best[r] = np.minimum(best[r], val)
    if K < 3:
        return best
    # ---- R1: two classes c1, c2 != c_pred both beat c_pred in round 1. A pair's value is at least its
    # black-box value bb1, so "c beats c_pred" is needed only on rows with a pair (c, c2) whose bb1 is
    # below the R2 minimum; elsewhere single[:, c] = 0 leaves every pair of c at >= bb1 >= the minimum,
    # where `_r1_cases` neither refines nor lowers anything.
    other = cls[None, :] != cp[:, None]
    open_pair = (bb1 < best[:, None, None]) & other[:, :, None] & other[:, None, :] & (cls[:, None] != cls[None, :])
    needed = open_pair.any(axis=2) | open_pair.any(axis=1)
    single = np.zeros((B, K), np.int64)
    for c in range(K):
        r = np.flatnonzero(needed[:, c])
        if r.size:
            single[r, c] = _as_attack(beats(c, votes_cp, vc_cp_other, g_cp[:, c], r))
    return _r1_cases(best, single, bb1, v, vc, cp, g_cp, joint)


def _r1_cases(best: np.ndarray, single: np.ndarray, bb1: np.ndarray, v: np.ndarray, vc: np.ndarray, cp: np.ndarray,
              g_cp: np.ndarray, joint: bool | str) -> np.ndarray:
    """min(best, R1 case values) (B,) for every pair c1 < c2 of classes other than c_pred.

    A pair's value is max(single[c1], single[c2], black-box R1) raised by the summed-gap knapsack
    and (joint) the 2-D knapsack, which are only needed where the pair could still set the minimum.
    The pairs are taken in `itertools.combinations` order against the running minimum (pruning
    never changes the minimum: a skipped pair is already >= it); the summed-gap knapsacks of every
    pair that can need one (value below the R2 minimum) are solved in one batched call, and the
    2-D knapsacks per pair where `joint` admits them ("auto": its rule reads the pair's open rows
    together; "per_point": each row alone).
    """
    B, M = v.shape
    K = vc.shape[2]
    pairs = np.array(list(itertools.combinations(range(K), 2)), np.int64).reshape(-1, 2)
    c1s, c2s = pairs[:, 0], pairs[:, 1]
    valid = (cp[:, None] != c1s[None, :]) & (cp[:, None] != c2s[None, :])  # (B, P)
    val0 = np.maximum(np.maximum(single[:, c1s], single[:, c2s]), bb1[:, c1s, c2s])
    # the running minimum only decreases from `best`, so every row a pair refines is a candidate here
    rr, pp = np.nonzero(valid & (val0 < best[:, None]))
    ksum = np.zeros(valid.shape, np.int64)
    if rr.size:
        ksum[rr, pp] = _summed_gap_attack(rr, c1s[pp], c2s[pp], v, vc, cp, g_cp, above=val0[rr, pp], below=best[rr])
    n1_all = np.maximum(g_cp[:, c1s], 0)
    n2_all = np.maximum(g_cp[:, c2s], 0)
    for p in range(len(pairs)):
        val = val0[:, p].copy()
        act = np.flatnonzero(valid[:, p] & (val < best))
        if act.size:
            out = ksum[act, p]
            if joint is True:
                admit = np.ones(act.size, bool)
            elif joint == "per_point":
                admit = M * (n1_all[act, p] + 1) * (n2_all[act, p] + 1) <= _JOINT_BUDGET
            else:
                admit = np.full(act.size, joint == "auto" and M * (int(n1_all[act, p].max()) + 1)
                                * (int(n2_all[act, p].max()) + 1) <= _JOINT_BUDGET)
            if admit.any():
                # the 2-D knapsack can only matter where the pair is still below the minimum
                need = np.flatnonzero(admit & (np.maximum(val[act], out) < best[act]))
                if need.size:
                    sub = act[need]
                    kj = _joint_attack(sub, int(c1s[p]), int(c2s[p]), v, vc, cp, n1_all[sub, p], n2_all[sub, p])
                    out = out.copy()
                    out[need] = np.maximum(out[need], kj)
            val[act] = np.maximum(val[act], out)
        best = np.minimum(best, np.where(valid[:, p], val, NO_ATTACK))
    return best


def _pair_options(rows: np.ndarray, c1: np.ndarray, c2: np.ndarray, v: np.ndarray, vc: np.ndarray, cp: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-partition quantities of the pairs (c1[q], c2[q]) on rows[q] (arrays (Q,)): on_cp, in_pair
    (Q, M) bool, vote costs to c1 / c2 (Q, M) and to_third (Q, M), the cheapest vote for a class
    outside {c_pred, c1, c2} (inf where there is none); one compiled pass, no copy of vc[rows]."""
    Q, M = len(rows), v.shape[1]
    on_cp = np.empty((Q, M), np.bool_)
    in_pair = np.empty((Q, M), np.bool_)
    to_c1, to_c2, to_third = np.empty((Q, M)), np.empty((Q, M)), np.empty((Q, M))
    _pair_options_kernel(np.asarray(rows, np.int64), np.asarray(c1, np.int64), np.asarray(c2, np.int64),
                         np.ascontiguousarray(v, dtype=np.int64), np.ascontiguousarray(vc, dtype=np.float64),
                         np.asarray(cp, np.int64), on_cp, in_pair, to_c1, to_c2, to_third)
    return on_cp, in_pair, to_c1, to_c2, to_third


@njit(cache=True, nogil=True)
def _pair_options_kernel(rows: np.ndarray, c1: np.ndarray, c2: np.ndarray, v: np.ndarray, vc: np.ndarray,
                         cp: np.ndarray, on_cp: np.ndarray, in_pair: np.ndarray, to_c1: np.ndarray,
                         to_c2: np.ndarray, to_third: np.ndarray
                         ) -> None:  # pragma: no cover - compiled (numba); tested through whitebox_roe
    K = vc.shape[2]
    for q in range(len(rows)):
        r, a, b, p = rows[q], c1[q], c2[q], cp[rows[q]]
        for m in range(v.shape[1]):
            own = v[r, m]
            on_cp[q, m] = own == p
            in_pair[q, m] = own == a or own == b
            to_c1[q, m] = vc[r, m, a]
            to_c2[q, m] = vc[r, m, b]
            lo = np.inf
            for k in range(K):
                if k != a and k != b and k != p and vc[r, m, k] < lo:
                    lo = vc[r, m, k]
            to_third[q, m] = lo


_SUMMED_ELEMENTS = 1 << 21  # pairs x partitions per batched summed-gap call (bounds the working memory)


def _summed_gap_attack(rows: np.ndarray, c1: np.ndarray, c2: np.ndarray, v: np.ndarray, vc: np.ndarray,
                       cp: np.ndarray, g_cp: np.ndarray, above: np.ndarray | None = None,
                       below: np.ndarray | None = None) -> np.ndarray:
    """Summed-gap knapsack attack bound (Q,) of the pairs (c1[q], c2[q]) on rows[q], batched.

    Per partition, moving its vote from u to w changes g(cp, c1) + g(cp, c2) by at most
    2[u = cp] + [w in {c1, c2}] - [u in {c1, c2}] (ROE paper, FA+ROE nsum); the summed gap need
    not be clipped: both gaps <= 0 implies their sum <= 0. So a partition voting c_pred gains 3
    (cheapest vote for c1 or c2) or 2 (cheapest vote for a third class), one voting neither c1 nor
    c2 gains 1 (cheapest vote for c1 or c2).

    The value is the exact dynamic programme's (`voting.knapsack_dp`), which is run only where it
    is needed: the LP relaxation (`_summed_gap_lp`) bounds it from below and its rounded-up greedy
    solution from above, and the exact value is replaced by a bound where the caller cannot tell the
    difference: by the lower bound where that is >= `below[q]` (the pair cannot set the minimum),
    by the upper bound where that is <= `above[q]` (the pair's value is already at least that), and
    by either where both agree. The two last rules need integer costs (every sum exact); rows with
    other costs always get the dynamic programme unless the first rule applies.
    """
    Q, M = len(rows), v.shape[1]
    need = g_cp[rows, c1] + g_cp[rows, c2]
    out = np.empty(Q, np.int64)
    chunk = max(1, _SUMMED_ELEMENTS // max(M, 1))
    integral = np.all((vc == np.floor(vc)) | ~np.isfinite(vc), axis=(1, 2))
    for s0 in range(0, Q, chunk):
        q = np.arange(s0, min(Q, s0 + chunk))
        on_cp, in_pair, to_c1, to_c2, to_third = _pair_options(rows[q], c1[q], c2[q], v, vc, cp)
        to_pair = np.minimum(to_c1, to_c2)
        gain3 = np.where(on_cp, to_pair, np.inf)
        gain2 = np.where(on_cp, to_third, np.inf)
        gain1 = np.where(~on_cp & ~in_pair, to_pair, np.inf)
        lb, ub, lam = _summed_gap_lp(gain3, gain2, gain1, need[q])
        lb_att, ub_att = _as_attack(lb), _as_attack(ub)
        done = np.zeros(len(q), bool)
        if below is not None:
            done |= lb_att >= below[q]
        val = lb_att.copy()
        exact_sums = integral[rows[q]]
        if above is not None:
            hit = exact_sums & ~done & (ub_att <= above[q])
            val[hit] = ub_att[hit]
            done |= hit
        done |= exact_sums & (lb_att == ub_att)
        # one apart: is there an attack costing the lower bound? (a small DP over the undecided partitions)
        near = np.flatnonzero(~done & exact_sums & (ub_att == lb_att + 1))
        if near.size:
            fits = _fits_budget(gain3[near], gain2[near], gain1[near], need[q][near], lam[near], lb_att[near])
            val[near] = np.where(fits, lb_att[near], ub_att[near])
            done[near] = True
        dp = np.flatnonzero(~done)
        if dp.size:
            order = dp[np.argsort(need[q][dp], kind="stable")]  # similar needs together (the table spans the largest)
            ksum, _ = knapsack_dp([(3, gain3[order]), (2, gain2[order]), (1, gain1[order])], need[q][order])
            val[order] = _as_attack(ksum)
        out[q] = val
    return out


def _summed_gap_lp(gain3: np.ndarray, gain2: np.ndarray, gain1: np.ndarray, need: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounds (lower, upper) (Q,) and the LP's unit price lam (Q,) for the summed-gap knapsack: gain 3
    at gain3, gain 2 at gain2 (a partition voting c_pred), gain 1 at gain1 (Q, M), total gain >= need (Q,).

    Lower: the LP relaxation, the `need` cheapest unit slopes of each partition's lower convex hull
    of (0, 0), (2, gain2), (3, gain3) [and (1, gain1)] (greedy is optimal for the LP since each
    hull's slopes increase), shrunk by a relative 1e-12 so that its rounding only lowers it. A
    partition's units are contiguous among equal slopes, so at most one partition is cut.
    Upper: a feasible attack from that selection, the cheaper of (a) the cut partition raised to
    its whole hull point and (b) its units replaced by the cheapest unselected single units (a
    gain-1 partition, or the third unit of a partition whose first two are selected). Exact sums
    for integer costs. inf where infeasible.
    """
    Q, M = gain3.shape
    with np.errstate(invalid="ignore"):
        two_then_one = gain2 / 2 < gain3 - gain2  # hull (0,0)-(2, gain2)-(3, gain3); else (0,0)-(3, gain3)
    third = gain3 / 3
    first = np.where(two_then_one, gain2 / 2, third)
    with np.errstate(invalid="ignore"):
        last = np.where(two_then_one, gain3 - gain2, third)
    # units (Q, M, 4): partition m's steps in columns 4m..4m+3 (its own order among equal slopes)
    units = np.stack([first, first, last, gain1], axis=2).reshape(Q, 4 * M)
    n = np.clip(need, 0, 4 * M).astype(np.int64)
    lower = np.empty(Q)
    nth = np.empty(Q)  # the n-th smallest unit (the smallest for n = 0)
    taken = np.zeros((Q, 4 * M), bool)
    _cheapest_units_kernel(units, n, lower, nth, taken)
    feasible = (need <= 4 * M) & np.isfinite(lower)
    lower = np.where(feasible, lower * (1.0 - 1e-12), np.inf)
    taken = taken.reshape(Q, M, 4)
    units_a = taken[:, :, :3].sum(axis=2)
    whole = np.where(two_then_one, np.where(units_a == 3, 3, np.where(units_a >= 1, 2, 0)),
                     np.where(units_a >= 1, 3, 0))
    cost_a = np.where(whole == 0, 0.0, np.where(whole == 2, gain2, gain3))
    cost_b = np.where(taken[:, :, 3], gain1, 0.0)
    rounded = cost_a.sum(axis=1) + cost_b.sum(axis=1)
    # (b): the cut partition (selected units < its whole point) dropped, its units bought as singles
    cut = whole > units_a
    short = np.where(cut, units_a, 0).sum(axis=1)  # at most 2
    single = np.where(~taken[:, :, 3], gain1, np.inf)
    with np.errstate(invalid="ignore"):
        single = np.minimum(single, np.where(two_then_one & (units_a == 2), gain3 - gain2, np.inf))
    single = np.where(cut, np.inf, single)
    two = np.empty((Q, 2))
    _two_smallest_kernel(np.ascontiguousarray(single), two)  # inf where a row has fewer than two
    extra = np.where(short == 0, 0.0, np.where(short == 1, two[:, 0], two[:, 0] + two[:, 1]))
    with np.errstate(invalid="ignore"):  # inf - inf only on infeasible rows, which take inf below
        swapped = rounded - np.where(cut, cost_a, 0.0).sum(axis=1) + extra
    upper = np.where(feasible, np.minimum(rounded, swapped), np.inf)
    zero = need <= 0
    lam = np.where(feasible & ~zero, nth, 0.0)  # the LP's price of a unit
    return np.where(zero, 0.0, lower), np.where(zero, 0.0, upper), lam


@njit(cache=True, nogil=True)
def _two_smallest_kernel(x: np.ndarray, out: np.ndarray
                         ) -> None:  # pragma: no cover - compiled (numba); tested through whitebox_roe
    """out[q] = the two smallest values of row x[q] (no NaN) in ascending order, inf padded (the first
    two of np.sort(x[q]))."""
    for q in range(x.shape[0]):
        a = np.inf
        b = np.inf
        for y in x[q]:
            if y < a:
                b = a
                a = y
            elif y < b:
                b = y
        out[q, 0] = a
        out[q, 1] = b


@njit(cache=True, nogil=True)
def _cheapest_units_kernel(units: np.ndarray, n: np.ndarray, total: np.ndarray, nth: np.ndarray, taken: np.ndarray
                           ) -> None:  # pragma: no cover - compiled (numba); tested through whitebox_roe
    """Per row q of units (Q, U) (no NaN): taken[q] marks the first n[q] units of the stable ascending
    order (by value, then position), total[q] = their sequential sum in that order (the cumulative sum
    of the sorted row at n[q]; 0 for n[q] = 0) and nth[q] = the n[q]-th smallest unit (the smallest for
    n[q] = 0): what `np.argsort(kind="stable")`, `np.cumsum` and `np.put_along_axis` give, by selection
    (the n[q]-th smallest value, then the units below it and the first ones equal to it) instead of a
    sort of the whole row."""
    Q, U = units.shape
    for q in range(Q):
        row = units[q]
        k = n[q]
        if k == 0:
            total[q] = 0.0
            nth[q] = row.min()
            continue
        t = np.partition(row, k - 1)[k - 1]
        below = 0
        for j in range(U):
            if row[j] < t:
                below += 1
        vals = np.empty(k)
        i = 0
        ties = k - below
        for j in range(U):
            x = row[j]
            if x < t or (x == t and ties > 0):
                if x == t:
                    ties -= 1
                taken[q, j] = True
                vals[i] = x
                i += 1
        vals.sort()
        acc = 0.0
        for j in range(k):
            acc += vals[j]
        total[q] = acc
        nth[q] = t


def _fits_budget(gain3: np.ndarray, gain2: np.ndarray, gain1: np.ndarray, need: np.ndarray, lam: np.ndarray,
                 budget: np.ndarray) -> np.ndarray:
    """Whether the summed-gap knapsack (gains 3 / 2 / 1 at gain3 / gain2 / gain1 (Q, M), total gain >=
    need (Q,)) has a solution of cost <= budget (Q,), by reduced-cost fixing at the unit price lam >= 0.

    For every solution X: cost(X) >= L + sum_i rc_i(X_i), where L = lam * need + sum_i min_o (c_o -
    lam g_o) is the Lagrangian bound and rc_i(o) = c_o - lam g_o - min_o' (c_o' - lam g_o') >= 0 (the
    gain 0 option included). So a solution within the budget uses, in each partition, only options
    with rc <= budget - L; where that leaves one option the partition is fixed to it, and an exact
    DP runs over the others (tolerance 1e-9 in favour of keeping options: a larger set changes
    nothing, since every solution the DP finds is a real one).
    """
    Q, M = gain3.shape
    cost = np.stack([np.zeros((Q, M)), gain1, gain2, gain3], axis=2)  # options gain 0, 1, 2, 3
    gains = np.arange(4.0)
    with np.errstate(invalid="ignore"):
        red = cost - lam[:, None, None] * gains
    best = red.min(axis=2)
    slack = budget - (lam * need + best.sum(axis=1))
    tol = 1e-9 * (1.0 + np.abs(budget) + lam * need + np.abs(best).sum(axis=1))
    allowed = (red - best[:, :, None]) <= (slack + tol)[:, None, None]
    allowed &= np.isfinite(cost)
    free = allowed.sum(axis=2) > 1
    fixed_opt = np.argmax(allowed, axis=2)  # the one allowed option where not free
    fixed = ~free
    fixed_gain = np.where(fixed, fixed_opt, 0).sum(axis=1)
    fixed_cost = np.where(fixed, np.take_along_axis(cost, fixed_opt[:, :, None], axis=2)[..., 0], 0.0).sum(axis=1)
    F = int(free.sum(axis=1).max())
    rest = need - fixed_gain
    if F == 0:
        return (rest <= 0) & (fixed_cost <= budget)
    # the free partitions of each row packed into F columns (padding: no option)
    pos = np.argsort(~free, axis=1, kind="stable")[:, :F]
    keep = np.take_along_axis(free, pos, axis=1)
    opts: list[tuple[int, ArrayLike]] = [(g, np.where(keep, np.take_along_axis(np.where(allowed[:, :, g], cost[:, :, g], np.inf), pos, axis=1),
                         np.inf)) for g in (3, 2, 1)]
    free_cost, _ = knapsack_dp(opts, rest)
    return fixed_cost + free_cost <= budget


def _joint_attack(rows: np.ndarray, c1: int, c2: int, v: np.ndarray, vc: np.ndarray, cp: np.ndarray, n1: np.ndarray,
                  n2: np.ndarray) -> np.ndarray:
    """Joint 2-D knapsack attack bound (len(rows),) of the pair (c1, c2): both gaps n1, n2 (>= 0) closed;
    gains per gap, negative ones clipped to 0 (a relaxation, so still a lower bound)."""
    Q = len(rows)
    on_cp, in_pair, to_c1, to_c2, to_third = _pair_options(rows, np.full(Q, c1), np.full(Q, c2), v, vc, cp)
    va = v[rows]
    other = ~on_cp & ~in_pair
    kj = _min_cost_gain2([
        (2, 1, np.where(on_cp, to_c1, np.inf)),
        (1, 2, np.where(on_cp, to_c2, np.inf)),
        (1, 1, np.where(on_cp, to_third, np.inf)),
        (1, 0, np.where(other | (va == c2), to_c1, np.inf)),
        (0, 1, np.where(other | (va == c1), to_c2, np.inf)),
    ], n1, n2)
    return _as_attack(kj)


def whitebox_roe_from_label_linear(weights_list: Sequence[ArrayLike], labels_list: Sequence[ArrayLike],
                                   num_classes: int, *, joint: bool | str = "auto",
                                   block_size: int | None = None, **certify_options: Any) -> AggregateResult:
    """White-box DPA+ROE for label-linear base models (docs/math.md §2-§3, §5).

    weights_list[m]: label weights W_m (t, n_m) of partition m's model; labels_list[m]: its labels
    y_m (n_m,); `num_classes`: the task's K (never guessed from the labels). The same composition
    as the certification run: `build_evidence` per model (scores W_m @ onehot(y_m), class-cost
    lower bounds and tie="attacker" pairwise costs from one certify pass, black-box unit costs for
    a model whose certified vote and score argmax disagree), `stack_evidence`, then `whitebox_roe`
    on `Evidence.roe_costs()`. Radius capped at the total number of training labels (no
    relabelling at all changes the prediction). Streams over test-point blocks; `certify_options`
    (tolerances, sort_device) go to `certify` unchanged.
    """
    if len(weights_list) != len(labels_list) or len(weights_list) == 0:
        raise ValueError(f"need one labels array per weights array (got {len(weights_list)} and {len(labels_list)})")
    Ws, ys = [], []
    K = num_classes
    for m, (W, y) in enumerate(zip(weights_list, labels_list)):
        W = as_float_array(f"weights_list[{m}]", W, ndim=2)
        y, K = check_labels(y, K, name=f"labels_list[{m}]")
        if W.shape[1] != len(y):
            raise ValueError(f"weights_list[{m}] has {W.shape[1]} columns but labels_list[{m}] has {len(y)} labels")
        Ws.append(W)
        ys.append(y)
    t = Ws[0].shape[0]
    if any(W.shape[0] != t for W in Ws):
        raise ValueError(f"all weights must have the same number of test rows, got {[W.shape[0] for W in Ws]}")
    M = len(Ws)
    n_total = sum(len(y) for y in ys)
    pred = np.empty(t, np.int64)
    radius = np.empty(t, np.int64)
    row_bytes = 8 * (M * K * (K + 4) + max(W.shape[1] for W in Ws) * (K + 4))
    for sl in row_blocks(t, row_bytes, block_size):
        ev = stack_evidence([build_evidence(W[sl], y, K, level="pairs", **certify_options) for W, y in zip(Ws, ys)])
        res = whitebox_roe(ev.require("scores"), *ev.roe_costs(), joint=joint)
        pred[sl] = res.prediction
        radius[sl] = np.minimum(res.radius, n_total)
    return AggregateResult(prediction=pred, radius=radius)
