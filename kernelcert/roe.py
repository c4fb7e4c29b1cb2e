"""Run-off election (ROE) and finite aggregation (FA) certificates (SPEC §5, anchors §2-3).

Election (`roe_predict`): round 1 is a plurality vote of the base models' argmax (ties to the
smaller index); the top two classes m1, m2 (stable order, ties to the smaller index) meet in a
run-off whose margin is E_{m1}(m2) = 2 #{models with z(m1) > z(m2)} - M, so a model with equal
scores for the two finalists counts for m2. m1 wins if E > 0, m2 if E < 0, the smaller index if
E = 0 (anchors §3).

Black-box certificates (one poison fully controls one partition, or one FA group of d learners):
`dpa_roe`, `dpa_star_roe`, `fa`, `fa_roe` follow the published algorithms. White-box:
`whitebox_roe` replaces "one poison changes anything" by per-partition flip costs, and
`whitebox_roe_from_label_linear` computes those costs for label-linear base models (SPEC §3).
All radii: the largest number of poisons (label flips) that provably leaves the prediction
unchanged; attack size = radius + 1. `brute_force_*` are exact references for tiny ensembles.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from ._validation import as_float_array, check_index_array, check_labels
from .ensemble import NO_ATTACK, AggregateResult, _check_votes, _knapsack, vote_counts

__all__ = [
    "roe_predict", "dpa_roe", "dpa_star_roe", "fa", "fa_roe", "whitebox_roe", "whitebox_roe_from_label_linear",
    "weak_orderings", "brute_force_roe_radius", "brute_force_fa_radius", "brute_force_label_flip_roe_radius",
    "brute_force_cost_model_radius",
]

_BLOCK_BYTES = 32 * 2**20
_BIG = NO_ATTACK  # integer "no attack of this kind"; min(...) - 1 over real cases never reaches it


# --------------------------------------------------------------------------- validation / blocks
def _check_scores(scores, name="scores", ndim=3) -> np.ndarray:
    s = as_float_array(name, scores, ndim=ndim)
    if s.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last axis, got shape {s.shape}")
    if s.shape[-2] < 1:
        raise ValueError(f"{name} must have at least one base model, got shape {s.shape}")
    return s


def _check_costs(name, costs, shape) -> np.ndarray:
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


def _check_shifts(shifts, num_learners) -> np.ndarray:
    sh = check_index_array("shifts", shifts, num_learners, f"number of learners k*d = {num_learners}")
    if len(np.unique(sh)) != len(sh):
        raise ValueError("shifts must be distinct")
    return sh


def _reach(num_learners, shifts) -> np.ndarray:
    """(H, d) learners reached by group h: (h + s) mod (k d) for each shift s (anchors §2)."""
    return (np.arange(num_learners)[:, None] + shifts[None, :]) % num_learners


def _blocks(t, row_bytes, block_size):
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // max(1, int(row_bytes)))
    block_size = int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    for start in range(0, t, block_size):
        yield slice(start, min(t, start + block_size))


def _ceil_pos(a, b):
    """ceil+(a, b) = ceil(max(a, 0) / b) for integer arrays."""
    return (np.maximum(a, 0) + b - 1) // b


# --------------------------------------------------------------------------- the election
class _Election:
    """Round-1 votes / counts, finalists m1, m2, prediction c_pred and the other finalist c_sec (arrays over B)."""

    __slots__ = ("votes", "counts", "m1", "m2", "pred", "sec")

    def __init__(self, s: np.ndarray):
        B, M, K = s.shape
        self.votes = np.argmax(s, axis=2)  # ties to the smaller index
        self.counts = vote_counts(self.votes, K)
        order = np.argsort(-self.counts, axis=1, kind="stable")
        self.m1, self.m2 = order[:, 0], order[:, 1]
        e = 2 * _prefer(s, self.m1, self.m2) - M  # E_{m1}(m2)
        self.pred = np.where(e > 0, self.m1, np.where(e < 0, self.m2, np.minimum(self.m1, self.m2)))
        self.sec = self.m1 + self.m2 - self.pred


def _prefer(s, a, b=None) -> np.ndarray:
    """#{models with z(a) > z(b)}: (B,) for class arrays a, b (B,); (B, K) against every class when b is None."""
    za = np.take_along_axis(s, a[:, None, None], axis=2)  # (B, M, 1)
    if b is None:
        return (za > s).sum(axis=1)
    zb = np.take_along_axis(s, b[:, None, None], axis=2)
    return (za > zb)[..., 0].sum(axis=1)


def roe_predict(scores) -> np.ndarray:
    """Run-off election prediction for scores (..., M, K) of M base models: (...,) int64.

    The rule of anchors §3 (see the module docstring); used by every certificate and brute force here.
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
    reduces them by (2, 1) or (1, 2) (anchors §3, case R1). Read-only.
    """
    size = 64
    while size < min_size:
        size *= 2
    return _knockout_table_cached(size)


def _dpa_roe_cases(s, e: _Election):
    """Black-box attack-size lower bounds per case (anchors §3), int64 with _BIG where the case is impossible.

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
    r1 = np.where(bad, _BIG, r1)
    g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])  # g(c_sec, c); 0 for c = c_sec
    g2 = 2 * _prefer(s, cp) - M + (cls > cp[:, None])  # E_{c_pred}(c) + [c > c_pred]
    r2 = np.maximum(_ceil_pos(g_sec, 2), _ceil_pos(g2, 2))
    # With a model whose finalist scores are equal, g2(c_sec) can already be <= 0 although c_pred
    # wins (the published script asserts CertR2 > 0 here); any attack needs at least one poison.
    r2 = np.maximum(r2, 1)
    r2[rows, cp] = _BIG
    return r1, r2


def _radius_from_attack(att) -> np.ndarray:
    return np.where(att >= _BIG, NO_ATTACK, att - 1).astype(np.int64)


def dpa_roe(scores, *, block_size: int | None = None) -> AggregateResult:
    """Black-box DPA+ROE certificate (anchors §3) for base-model scores (t, M, K).

    prediction (t,) = roe_predict(scores); radius (t,) = min(CertR1, CertR2) - 1, a sound lower
    bound on the black-box radius (each poison controls one partition's scores completely).
    """
    s = _check_scores(scores)
    t, M, K = s.shape
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in _blocks(t, M * K * 10 + K * K * 24, block_size):
        e = _Election(s[sl])
        r1, r2 = _dpa_roe_cases(s[sl], e)
        pred[sl] = e.pred
        att[sl] = np.minimum(r1.reshape(len(r1), -1).min(axis=1), r2.min(axis=1))
    return AggregateResult(prediction=pred, radius=_radius_from_attack(att))


def dpa_star_roe(scores, *, block_size: int | None = None) -> AggregateResult:
    """DPA*+ROE (anchors §3): scores (t, N_p, V, K) of V base models per partition, summed per partition.

    One poison still touches one partition, so DPA+ROE applies unchanged to the summed scores.
    """
    s = _check_scores(scores, ndim=4)
    return dpa_roe(s.sum(axis=2), block_size=block_size)


# --------------------------------------------------------------------------- FA and FA + ROE
def _greedy_count(gap, red) -> np.ndarray:
    """Fewest groups whose largest reductions red (B, H) >= 0 sum to >= gap (B,); 0 if gap <= 0, _BIG if never."""
    if red.shape[1] == 0:
        return np.where(gap <= 0, 0, _BIG).astype(np.int64)
    cums = np.cumsum(-np.sort(-red, axis=1), axis=1)
    count = (cums < gap[:, None]).sum(axis=1) + 1
    count = np.where(cums[:, -1] < gap, _BIG, count)
    return np.where(gap <= 0, 0, count).astype(np.int64)


def fa(votes, shifts, num_classes: int, *, block_size: int | None = None) -> AggregateResult:
    """Finite Aggregation certificate (anchors §2) for votes (t, k*d) of the k*d learners.

    Group h (one poison) reaches the d learners (h + s) mod (k*d), s in shifts. Plurality
    prediction (ties to the smaller index); radius = min over c != p of the largest r such that the
    r largest per-group reductions of gap_c = n_p - n_c - [c < p] sum to <= gap_c. Sound.
    With shifts=[0] it equals DPA.
    """
    K = int(num_classes)
    if K < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    v = _check_votes(votes, K)
    t, L = v.shape
    if L == 0:
        raise ValueError("votes must come from at least one learner")
    sh = _check_shifts(shifts, L)
    reach = _reach(L, sh)
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in _blocks(t, L * (len(sh) + 4) * 8 + K * 8, block_size):
        vb = v[sl]
        B = len(vb)
        n = vote_counts(vb, K)
        p = np.argmax(n, axis=1)
        rows = np.arange(B)
        best = np.full(B, _BIG, np.int64)
        for c in range(K):
            u = 1 + (vb == p[:, None]).astype(np.int64) - (vb == c)  # per-learner reduction (>= 0)
            delta = u[:, reach].sum(axis=2)  # (B, H)
            gap = n[rows, p] - n[:, c] - (c < p)
            # the prediction changes only once the reduction exceeds gap_c, i.e. reaches gap_c + 1
            cnt = _greedy_count(gap + 1, delta)
            best = np.minimum(best, np.where(p == c, _BIG, cnt))
        pred[sl] = p
        att[sl] = best
    return AggregateResult(prediction=pred, radius=_radius_from_attack(att))


def fa_roe(scores, shifts, *, block_size: int | None = None) -> AggregateResult:
    """FA+ROE certificate (anchors §3) for learner scores (t, k*d, K); group h reaches learners (h + s) mod (k*d).

    prediction = roe_predict(scores); radius = min(CertR1, CertR2) - 1 with the greedy max-of-necessary-
    conditions bounds of the published algorithm. Sound. With shifts=[0] it gives the DPA+ROE radius
    (per knock-out pair the greedy can exceed the DP when c_pred has no votes to move, but such a
    pair never sets the minimum; the tests check the equality).
    """
    s = _check_scores(scores)
    t, L, K = s.shape
    sh = _check_shifts(shifts, L)
    d = len(sh)
    reach = _reach(L, sh)
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    cls = np.arange(K)
    for sl in _blocks(t, L * K * (2 * d + 4) * 8, block_size):
        sb = s[sl]
        B = len(sb)
        rows = np.arange(B)
        e = _Election(sb)
        cp, sec, n = e.pred, e.sec, e.counts
        onehot = (e.votes[:, :, None] == cls).astype(np.int64)  # (B, L, K)
        hv = onehot[:, reach, :].sum(axis=2)  # (B, H, K): votes for each class among group h's learners
        g_cp = n[rows, cp][:, None] - n + (cls > cp[:, None])
        g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])
        hv_cp = hv[rows, :, cp]  # (B, H)
        hv_sec = hv[rows, :, sec]
        r1 = np.stack([_greedy_count(g_cp[:, c], d + hv_cp - hv[:, :, c]) for c in range(K)], axis=1)
        r1_sec = np.stack([_greedy_count(g_sec[:, c], d + hv_sec - hv[:, :, c]) for c in range(K)], axis=1)
        zc = np.take_along_axis(sb, cp[:, None, None], axis=2)
        hp = (zc > sb).astype(np.int64)[:, reach, :].sum(axis=2)  # (B, H, K): learners preferring c_pred over c
        g2 = 2 * _prefer(sb, cp) - L + (cls > cp[:, None])  # E_{c_pred}(c) + [c > c_pred]
        best = np.full(B, _BIG, np.int64)
        for c in range(K):
            # at least one poison (g2 can be <= 0 with tied scores, see _dpa_roe_cases)
            r2 = np.maximum(np.maximum(r1_sec[:, c], _greedy_count(g2[:, c], 2 * hp[:, :, c])), 1)
            best = np.minimum(best, np.where(cp == c, _BIG, r2))
        for c1, c2 in itertools.combinations(range(K), 2):
            nsum = _greedy_count(g_cp[:, c1] + g_cp[:, c2], d + 2 * hv_cp - hv[:, :, c1] - hv[:, :, c2])
            val = np.maximum(np.maximum(r1[:, c1], r1[:, c2]), nsum)
            best = np.minimum(best, np.where((cp == c1) | (cp == c2), _BIG, val))
        pred[sl] = cp
        att[sl] = best
    return AggregateResult(prediction=pred, radius=_radius_from_attack(att))


# --------------------------------------------------------------------------- white-box ROE
def _min_cost_gain(options, need) -> np.ndarray:
    """Multiple-choice knapsack: min total cost with total gain >= need (B,), one option per partition.

    options: list of (gain >= 1, cost (B, N)), inf = not available. f[:, g] = min cost of gain >= g,
    so overshoot is absorbed. O(N * len(options) * B * max(need)).
    """
    B = len(need)
    G = int(need.max()) if B else 0
    if G <= 0:
        return np.zeros(B)
    f = np.full((B, G + 1), np.inf)
    f[:, 0] = 0.0
    gi = np.arange(G + 1)
    N = options[0][1].shape[1]
    for m in range(N):
        new = f.copy()
        for gain, cost in options:
            np.minimum(new, f[:, np.maximum(gi - gain, 0)] + cost[:, m, None], out=new)
        f = new
    return np.where(need <= 0, 0.0, f[np.arange(B), np.clip(need, 0, G)])


def _min_cost_gain2(options, need1, need2) -> np.ndarray:
    """Two-dimensional version of _min_cost_gain: total gains >= (need1, need2); options (g1, g2, cost (B, N))."""
    B = len(need1)
    G1, G2 = int(max(need1.max(), 0)), int(max(need2.max(), 0))
    f = np.full((B, G1 + 1, G2 + 1), np.inf)
    f[:, 0, 0] = 0.0
    i1, i2 = np.arange(G1 + 1), np.arange(G2 + 1)
    N = options[0][2].shape[1]
    for m in range(N):
        new = f.copy()
        for g1, g2, cost in options:
            shifted = f[:, np.maximum(i1 - g1, 0)][:, :, np.maximum(i2 - g2, 0)]
            np.minimum(new, shifted + cost[:, m, None, None], out=new)
        f = new
    return f[np.arange(B), np.clip(need1, 0, G1), np.clip(need2, 0, G2)]


def _as_attack(cost) -> np.ndarray:
    """Float lower bound on a flip count -> integer lower bound (rounding only downwards); inf -> _BIG."""
    fin = np.isfinite(cost)
    safe = np.where(fin, cost, 0.0)
    c = np.ceil(safe - 1e-9 * np.maximum(safe, 1.0))
    return np.where(fin, c, _BIG).astype(np.int64)


def _where_min(mask, cost):
    """min over the last axis of cost where mask, inf where none."""
    return np.where(mask, cost, np.inf).min(axis=-1)


_JOINT_BUDGET = 400_000  # partitions * (G1 + 1) * (G2 + 1) per test point above which joint="auto" skips the 2-D DP


def whitebox_roe(scores, vote_costs, pair_costs, *, joint="auto", block_size: int | None = None) -> AggregateResult:
    """White-box DPA+ROE certificate from per-partition flip costs (SPEC §5).

    scores (t, M, K): base-model scores. vote_costs (t, M, K): lower bound on the flips inside
    partition m after which model m votes c (its own vote is treated as 0). pair_costs (t, M, K, K):
    pair_costs[i, m, a, b] lower bound on the flips after which model m no longer has z(a) > z(b)
    (i.e. z(b) >= z(a): tie="attacker" pairwise costs). inf = unreachable. Costs below 1 for a change
    are raised to 1 (a partition without flips keeps its model).

    R1 (c_pred knocked out by c1, c2): max of the knapsacks "c1 beats c_pred", "c2 beats c_pred",
    the summed-gap knapsack and (joint=True, or "auto" when affordable) the joint 2-D knapsack.
    R2 (c reaches the final and wins): max of the knapsack "c beats c_sec" and the cheapest
    ceil+(g2(c), 2) preference flips. Each case is combined with its black-box DPA+ROE value by max.
    radius (t,) int64 = min over cases - 1 (NO_ATTACK when no case is reachable); never below dpa_roe.
    """
    if joint not in (True, False, "auto"):
        raise ValueError(f"joint must be True, False or 'auto', got {joint!r}")
    s = _check_scores(scores)
    t, M, K = s.shape
    vc_all = _check_costs("vote_costs", vote_costs, (t, M, K))
    pc_all = _check_costs("pair_costs", pair_costs, (t, M, K, K))
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in _blocks(t, M * K * (K + 12) * 8, block_size):
        e = _Election(s[sl])
        pred[sl] = e.pred
        att[sl] = _whitebox_block(s[sl], vc_all[sl], pc_all[sl], e, joint)
    return AggregateResult(prediction=pred, radius=_radius_from_attack(att))


def _whitebox_block(s, vc, pc, e: _Election, joint) -> np.ndarray:
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
    bb1, bb2 = _dpa_roe_cases(s, e)
    own = v[:, :, None] == cls
    vc = np.where(own, 0.0, np.maximum(vc, 1.0))  # (B, M, K)
    votes_cp = v == cp[:, None]
    votes_sec = v == sec[:, None]
    vc_cp_other = _where_min(cls != cp[:, None, None], vc)  # cheapest vote change away from c_pred
    vc_sec_other = _where_min(cls != sec[:, None, None], vc)
    g_cp = n[rows, cp][:, None] - n + (cls > cp[:, None])
    g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])
    zcp = np.take_along_axis(s, cp[:, None, None], axis=2)  # (B, M, 1)
    prefers = zcp > s  # (B, M, K): model counts for c_pred against c
    pc_cp = np.maximum(pc[rows, :, cp, :], 1.0)  # (B, M, K)
    g2 = 2 * prefers.sum(axis=1) - M + (cls > cp[:, None])

    def beats(c, a, votes_a, vc_a_other, need):
        """Knapsack: class c overtakes class a in round 1 (SPEC §4 gains 2 / 1), need = g(a, c)."""
        vcc = vc[:, :, c]
        gain1 = np.where(votes_a, vc_a_other, np.where(v == c, np.inf, vcc))
        gain2 = np.where(votes_a, vcc, np.inf)
        return _knapsack(gain1, gain2, np.maximum(need, 0))[0]

    best = np.full(B, _BIG, np.int64)
    # ---- R2: c != c_pred reaches the final (beats c_sec unless c = c_sec) and wins the run-off
    for c in range(K):
        r_a = np.where(sec == c, 0.0, beats(c, sec, votes_sec, vc_sec_other, g_sec[:, c]))
        k = _ceil_pos(g2[:, c], 2)
        flips = np.sort(np.where(prefers[:, :, c], pc_cp[:, :, c], np.inf), axis=1)
        cums = np.concatenate([np.zeros((B, 1)), np.cumsum(flips, axis=1)], axis=1)
        r_b = cums[rows, np.minimum(k, M)]
        r_b = np.where(k > M, np.inf, r_b)
        val = np.maximum(np.maximum(_as_attack(r_a), _as_attack(r_b)), bb2[:, c])
        best = np.minimum(best, np.where(cp == c, _BIG, val))
    if K < 3:
        return best
    # ---- R1: two classes c1, c2 != c_pred both beat c_pred in round 1
    single = np.stack([_as_attack(beats(c, cp, votes_cp, vc_cp_other, g_cp[:, c])) for c in range(K)], axis=1)
    for c1, c2 in itertools.combinations(range(K), 2):
        valid = (cp != c1) & (cp != c2)
        val = np.maximum(np.maximum(single[:, c1], single[:, c2]), bb1[:, c1, c2])
        # refine only where this pair could still set the minimum (pruning never affects soundness)
        act = np.flatnonzero(valid & (val < best))
        if act.size:
            val[act] = np.maximum(val[act], _r1_refine(act, c1, c2, v, vc, cp, g_cp, joint))
        best = np.minimum(best, np.where(valid, val, _BIG))
    return best


def _r1_refine(act, c1, c2, v, vc, cp, g_cp, joint) -> np.ndarray:
    """Summed-gap knapsack and (optionally) the joint 2-D knapsack for the pair (c1, c2), rows act."""
    va, vca, cpa = v[act], vc[act], cp[act]
    K = vc.shape[2]
    M = v.shape[1]
    on_cp = va == cpa[:, None]
    in_pair = (va == c1) | (va == c2)
    to_pair = np.minimum(vca[:, :, c1], vca[:, :, c2])
    third = np.ones((len(act), K), bool)
    third[:, [c1, c2]] = False
    third[np.arange(len(act)), cpa] = False
    to_third = _where_min(third[:, None, :], vca)  # cheapest vote for a class outside {c_pred, c1, c2}
    need1, need2 = g_cp[act, c1], g_cp[act, c2]
    # Per partition, moving its vote from u to w changes g(cp, c1) + g(cp, c2) by at most
    # 2[u = cp] + [w in {c1, c2}] - [u in {c1, c2}] (anchors §3, FA+ROE nsum); the summed gap need
    # not be clipped: both gaps <= 0 implies their sum <= 0.
    ksum = _min_cost_gain([
        (3, np.where(on_cp, to_pair, np.inf)),
        (2, np.where(on_cp, to_third, np.inf)),
        (1, np.where(~on_cp & ~in_pair, to_pair, np.inf)),
    ], need1 + need2)
    out = _as_attack(ksum)
    n1, n2 = np.maximum(need1, 0), np.maximum(need2, 0)
    if joint is True or (joint == "auto" and M * (int(n1.max()) + 1) * (int(n2.max()) + 1) <= _JOINT_BUDGET):
        other = ~on_cp & ~in_pair
        # gains per gap, negative ones clipped to 0 (a relaxation, so still a lower bound)
        kj = _min_cost_gain2([
            (2, 1, np.where(on_cp, vca[:, :, c1], np.inf)),
            (1, 2, np.where(on_cp, vca[:, :, c2], np.inf)),
            (1, 1, np.where(on_cp, to_third, np.inf)),
            (1, 0, np.where(other | (va == c2), vca[:, :, c1], np.inf)),
            (0, 1, np.where(other | (va == c1), vca[:, :, c2], np.inf)),
        ], n1, n2)
        out = np.maximum(out, _as_attack(kj))
    return out


def whitebox_roe_from_label_linear(weights_list, labels_list, num_classes: int | None = None, *, joint="auto",
                                   rtol: float = 1e-9, block_size: int | None = None) -> AggregateResult:
    """White-box DPA+ROE for label-linear base models (SPEC §2-§3, §5).

    weights_list[m]: label weights W_m (t, n_m) of partition m's model; labels_list[m]: its labels
    y_m (n_m,). Scores W_m @ onehot(y_m), vote costs certify(...).cost_lower, pair costs
    pairwise_costs(..., tie="attacker") (from the same certify pass), then whitebox_roe. Radius capped at the total number of
    training labels (no relabelling at all changes the prediction). Streams over test-point blocks.
    """
    from .certificates import certify
    from .learners import onehot

    if len(weights_list) != len(labels_list) or len(weights_list) == 0:
        raise ValueError(f"need one labels array per weights array (got {len(weights_list)} and {len(labels_list)})")
    Ws, ys = [], []
    K = num_classes
    for m, (W, y) in enumerate(zip(weights_list, labels_list)):
        W = as_float_array(f"weights_list[{m}]", W, ndim=2)
        y, _ = check_labels(f"labels_list[{m}]", y, K)
        if W.shape[1] != len(y):
            raise ValueError(f"weights_list[{m}] has {W.shape[1]} columns but labels_list[{m}] has {len(y)} labels")
        Ws.append(W)
        ys.append(y)
    if K is None:
        K = max(max(int(y.max()) + 1 if y.size else 0 for y in ys), 2)
    t = Ws[0].shape[0]
    if any(W.shape[0] != t for W in Ws):
        raise ValueError(f"all weights must have the same number of test rows, got {[W.shape[0] for W in Ws]}")
    M = len(Ws)
    n_total = sum(len(y) for y in ys)
    pred = np.empty(t, np.int64)
    radius = np.empty(t, np.int64)
    row_bytes = 8 * (M * K * (K + 4) + max(W.shape[1] for W in Ws) * (K + 4))
    for sl in _blocks(t, row_bytes, block_size):
        B = sl.stop - sl.start
        scores = np.empty((B, M, K))
        vcost = np.empty((B, M, K))
        pcost = np.empty((B, M, K, K))
        for m, (W, y) in enumerate(zip(Ws, ys)):
            Wb = W[sl]
            scores[:, m] = Wb @ onehot(y, K)
            if len(y) == 0:  # an empty partition's model can never change
                vcost[:, m] = np.inf
                pcost[:, m] = np.inf
                continue
            cert, pcost[:, m] = certify(Wb, y, K, rtol=rtol, pairwise="attacker")  # one pass for both
            vcost[:, m] = cert.cost_lower
            # If certify's vote disagrees with these scores (a rounding-level tie), fall back to
            # black-box unit costs for this model: still sound, as any change needs >= 1 flip.
            bad = cert.prediction != np.argmax(scores[:, m], axis=1)
            if bad.any():
                vcost[bad, m] = 1.0
                pcost[bad, m] = 1.0
        res = whitebox_roe(scores, vcost, pcost, joint=joint)
        pred[sl] = res.prediction
        radius[sl] = np.minimum(res.radius, n_total)
    return AggregateResult(prediction=pred, radius=radius)


# --------------------------------------------------------------------------- exact references (tiny only)
@functools.lru_cache(maxsize=8)
def _weak_orderings_cached(K: int) -> np.ndarray:
    rows = [r for r in itertools.product(range(K), repeat=K) if set(r) == set(range(max(r) + 1))]
    out = -np.array(rows, dtype=np.float64)  # rank 0 = best
    out.setflags(write=False)
    return out


def weak_orderings(num_classes: int) -> np.ndarray:
    """Every weak ordering of K classes as a score vector (W, K) (rank 0 highest; 13 for K = 3).

    The election sees a base model only through the weak ordering of its scores (its argmax with
    ties to the smaller index and every z(a) > z(b)), so these cover every black-box behaviour.
    """
    if not 2 <= num_classes <= 5:
        raise ValueError(f"weak_orderings is meant for 2..5 classes, got {num_classes}")
    return _weak_orderings_cached(int(num_classes))


def brute_force_roe_radius(scores, shifts=None, *, max_configs: int = 2_000_000) -> np.ndarray:
    """Exact black-box radius (t,) of DPA+ROE (shifts=None) or FA+ROE by enumerating every attack.

    scores (t, L, K). A poison in group h controls learners (h + s) mod L (DPA+ROE: one learner);
    the controlled learners take every multiset of weak orderings (the election is symmetric in
    the learners). Returns attack size - 1 (L when no attack exists). Tiny problems only.
    """
    s = _check_scores(scores)
    t, L, K = s.shape
    sh = np.zeros(1, np.int64) if shifts is None else _check_shifts(shifts, L)
    reach = _reach(L, sh)
    orders = weak_orderings(K)
    out = np.full(t, L, np.int64)
    for i in range(t):
        p = roe_predict(s[i])
        found = False
        for r in range(1, L + 1):
            seen = set()
            for groups in itertools.combinations(range(L), r):
                U = tuple(sorted(set(reach[list(groups)].ravel().tolist())))
                if U in seen:
                    continue
                seen.add(U)
                if math.comb(len(orders) + len(U) - 1, len(U)) > max_configs:
                    raise ValueError("brute_force_roe_radius: problem too large to enumerate")
                combos = np.array(list(itertools.combinations_with_replacement(range(len(orders)), len(U))))
                batch = np.broadcast_to(s[i], (len(combos), L, K)).copy()
                batch[:, list(U)] = orders[combos]
                if np.any(roe_predict(batch) != p):
                    found = True
                    break
            if found:
                out[i] = r - 1
                break
    return out


def brute_force_fa_radius(votes, shifts, num_classes: int) -> np.ndarray:
    """Exact black-box radius (t,) of plurality FA by enumerating the poisoned groups (L when none)."""
    v = _check_votes(votes, num_classes)
    t, L = v.shape
    reach = _reach(L, _check_shifts(shifts, L))
    out = np.full(t, L, np.int64)
    for i in range(t):
        n = vote_counts(v[i:i + 1], num_classes)[0]
        p = int(np.argmax(n))
        for r in range(1, L + 1):
            hit = False
            for groups in itertools.combinations(range(L), r):
                U = np.unique(reach[list(groups)])
                rest = vote_counts(np.delete(v[i], U)[None], num_classes)[0]
                # best for rival c: every controlled learner votes c
                for c in range(num_classes):
                    if c != p and (rest[c] + len(U) > rest[p] or (rest[c] + len(U) == rest[p] and c < p)):
                        hit = True
                if hit:
                    break
            if hit:
                out[i] = r - 1
                break
    return out


def brute_force_cost_model_radius(scores, vote_costs, pair_costs, *, max_configs: int = 500_000) -> np.ndarray:
    """Exact radius (t,) of ROE in the most generous world consistent with whitebox_roe's cost bounds.

    Every base model m may be turned into any weak ordering of the classes, at cost max(1,
    vote_costs[m, new vote] if its vote changes, pair_costs[m, a, b] for every z(a) > z(b) it loses),
    or 0 if nothing the election sees changes. Enumerates all W^M combinations (W = 13 weak
    orderings for K = 3; tiny only). Returns attack cost - 1, NO_ATTACK when no combination changes
    the prediction. whitebox_roe must never exceed it, because its bounds only use those costs.
    """
    s = _check_scores(scores)
    t, M, K = s.shape
    vc_all = _check_costs("vote_costs", vote_costs, (t, M, K))
    pc_all = _check_costs("pair_costs", pair_costs, (t, M, K, K))
    O = weak_orderings(K)
    if len(O) ** M > max_configs:
        raise ValueError(f"brute_force_cost_model_radius: {len(O)}^{M} configurations is too many")
    ov = np.argmax(O, axis=1)
    ogt = O[:, :, None] > O[:, None, :]
    combos = np.array(list(itertools.product(range(len(O)), repeat=M)), dtype=np.int64).reshape(-1, M)
    preds = roe_predict(O[combos])
    out = np.empty(t, np.int64)
    for i in range(t):
        cost = np.zeros((M, len(O)))
        for m in range(M):
            gt = s[i, m][:, None] > s[i, m][None, :]
            v = int(np.argmax(s[i, m]))
            same = (ov == v) & (ogt == gt).all(axis=(1, 2))
            lost = np.where(gt[None] & ~ogt, pc_all[i, m][None], 0.0).max(axis=(1, 2))
            vote = np.where(ov != v, vc_all[i, m, ov], 0.0)
            cost[m] = np.where(same, 0.0, np.maximum(1.0, np.maximum(lost, vote)))
        total = cost[np.arange(M), combos].sum(axis=1)
        changed = preds != roe_predict(s[i])
        best = total[changed].min() if changed.any() else np.inf
        out[i] = int(np.ceil(best - 1e-9)) - 1 if np.isfinite(best) else NO_ATTACK
    return out


def brute_force_label_flip_roe_radius(weights_list, labels_list, num_classes: int, max_flips: int | None = None):
    """Exact label-flip radius (t,) of ROE over label-linear partitions by relabelling every label.

    Recomputes each base model's scores W_m @ onehot(y'_m) for every relabelling with at most
    max_flips changes (default all n) and reruns roe_predict. Returns (radius (t,), prediction (t,));
    radius = max_flips when no enumerated relabelling changes the prediction. n <= 12 only.
    """
    from .learners import onehot

    Ws = [as_float_array(f"weights_list[{m}]", W, ndim=2) for m, W in enumerate(weights_list)]
    ys = [check_labels(f"labels_list[{m}]", y, num_classes)[0] for m, y in enumerate(labels_list)]
    K = num_classes
    sizes = [len(y) for y in ys]
    n = sum(sizes)
    if n > 12 or K ** n > 2_000_000:
        raise ValueError(f"brute force over {K}^{n} relabellings is too large")
    max_flips = n if max_flips is None else int(max_flips)
    y0 = np.concatenate(ys)
    Y = np.array(list(itertools.product(range(K), repeat=n)), dtype=np.int64).reshape(K ** n, n)
    dist = (Y != y0).sum(axis=1)
    Y, dist = Y[dist <= max_flips], dist[dist <= max_flips]
    t = Ws[0].shape[0]
    if any(W.shape != (t, nm) for W, nm in zip(Ws, sizes)):
        raise ValueError("weights_list[m] must have shape (t, len(labels_list[m])) with a common t")
    scores = np.empty((len(Y), t, len(Ws), K))
    start = 0
    for m, (W, nm) in enumerate(zip(Ws, sizes)):
        # retrain partition m on each of its K^n_m relabellings once, then look the scores up
        local = np.array(list(itertools.product(range(K), repeat=nm)), dtype=np.int64).reshape(K ** nm, nm)
        table = np.stack([W @ onehot(y, K) for y in local])  # (K^n_m, t, K)
        code = Y[:, start:start + nm] @ (K ** np.arange(nm - 1, -1, -1)) if nm else np.zeros(len(Y), np.int64)
        scores[:, :, m] = table[code]
        start += nm
    preds = roe_predict(scores)  # (L, t)
    base = preds[dist == 0][0]
    changed = preds != base
    att = np.where(changed, dist[:, None], max_flips + 1).min(axis=0)
    return (att - 1).astype(np.int64), base.astype(np.int64)
