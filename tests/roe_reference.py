"""The white-box ROE pair loop as it was before its batched rewrite: the byte-identity oracle of
`kernelcert.roe.whitebox_roe` (tests/test_roe.py) and the "before" of its scaling benchmark.

Same cases, same pruning, one summed-gap dynamic programme and one 2-D dynamic programme per pair
with fancy-indexed shifts (O(N_p x need) Python-level steps per pair).
"""

import itertools

import numpy as np

from kernelcert import roe
from kernelcert.roe import _as_attack, _dpa_roe_cases, _Election, _where_min
from kernelcert.voting import NO_ATTACK, knapsack_dp, knapsack_solver, overtake_gains, radius_from_attack, row_blocks

_KNAPSACK = knapsack_solver("auto")


def min_cost_gain2(options, need1, need2):
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


def whitebox_roe_reference(scores, vote_costs, pair_costs, *, joint="auto", block_size=None, joint_budget=None):
    """(prediction, radius) of the previous implementation; joint_budget overrides roe._JOINT_BUDGET."""
    budget = roe._JOINT_BUDGET if joint_budget is None else joint_budget
    s = np.asarray(scores, dtype=np.float64)
    t, M, K = s.shape
    vc_all = np.asarray(vote_costs, dtype=np.float64)
    pc_all = np.asarray(pair_costs, dtype=np.float64)
    pred = np.empty(t, np.int64)
    att = np.empty(t, np.int64)
    for sl in row_blocks(t, M * K * (K + 12) * 8, block_size):
        e = _Election(s[sl])
        pred[sl] = e.pred
        att[sl] = _block(s[sl], vc_all[sl], pc_all[sl], e, joint, budget)
    return pred, radius_from_attack(att)


def _block(s, vc, pc, e, joint, budget):
    B, M, K = s.shape
    rows = np.arange(B)
    cls = np.arange(K)
    v, n, cp, sec = e.votes, e.counts, e.pred, e.sec
    bb1, bb2 = _dpa_roe_cases(s, e)
    own = v[:, :, None] == cls
    vc = np.where(own, 0.0, np.maximum(vc, 1.0))
    votes_cp = v == cp[:, None]
    votes_sec = v == sec[:, None]
    vc_cp_other = _where_min(cls != cp[:, None, None], vc)
    vc_sec_other = _where_min(cls != sec[:, None, None], vc)
    g_cp = n[rows, cp][:, None] - n + (cls > cp[:, None])
    g_sec = n[rows, sec][:, None] - n + (cls > sec[:, None])
    zcp = np.take_along_axis(s, cp[:, None, None], axis=2)
    prefers = zcp > s
    pc_cp = np.maximum(pc[rows, :, cp, :], 1.0)
    g2 = 2 * prefers.sum(axis=1) - M + (cls > cp[:, None])

    def beats(c, a, votes_a, vc_a_other, need):
        gain1, gain2 = overtake_gains(v, vc[:, :, c], c, votes_a, vc_a_other)
        return _KNAPSACK(gain1, gain2, np.maximum(need, 0))[0]

    best = np.full(B, NO_ATTACK, np.int64)
    for c in range(K):
        r_a = np.where(sec == c, 0.0, beats(c, sec, votes_sec, vc_sec_other, g_sec[:, c]))
        k = np.maximum(g2[:, c], 0)
        k = (k + 1) // 2
        flips = np.sort(np.where(prefers[:, :, c], pc_cp[:, :, c], np.inf), axis=1)
        cums = np.concatenate([np.zeros((B, 1)), np.cumsum(flips, axis=1)], axis=1)
        r_b = cums[rows, np.minimum(k, M)]
        r_b = np.where(k > M, np.inf, r_b)
        val = np.maximum(np.maximum(_as_attack(r_a), _as_attack(r_b)), bb2[:, c])
        best = np.minimum(best, np.where(cp == c, NO_ATTACK, val))
    if K < 3:
        return best
    single = np.stack([_as_attack(beats(c, cp, votes_cp, vc_cp_other, g_cp[:, c])) for c in range(K)], axis=1)
    for c1, c2 in itertools.combinations(range(K), 2):
        valid = (cp != c1) & (cp != c2)
        val = np.maximum(np.maximum(single[:, c1], single[:, c2]), bb1[:, c1, c2])
        act = np.flatnonzero(valid & (val < best))
        if act.size:
            val[act] = np.maximum(val[act], _r1_refine(act, c1, c2, v, vc, cp, g_cp, joint, budget))
        best = np.minimum(best, np.where(valid, val, NO_ATTACK))
    return best


def _r1_refine(act, c1, c2, v, vc, cp, g_cp, joint, budget):
    va, vca, cpa = v[act], vc[act], cp[act]
    K = vc.shape[2]
    M = v.shape[1]
    on_cp = va == cpa[:, None]
    in_pair = (va == c1) | (va == c2)
    to_pair = np.minimum(vca[:, :, c1], vca[:, :, c2])
    third = np.ones((len(act), K), bool)
    third[:, [c1, c2]] = False
    third[np.arange(len(act)), cpa] = False
    to_third = _where_min(third[:, None, :], vca)
    need1, need2 = g_cp[act, c1], g_cp[act, c2]
    ksum, _ = knapsack_dp([
        (3, np.where(on_cp, to_pair, np.inf)),
        (2, np.where(on_cp, to_third, np.inf)),
        (1, np.where(~on_cp & ~in_pair, to_pair, np.inf)),
    ], need1 + need2)
    out = _as_attack(ksum)
    n1, n2 = np.maximum(need1, 0), np.maximum(need2, 0)
    if joint is True or (joint == "auto" and M * (int(n1.max()) + 1) * (int(n2.max()) + 1) <= budget):
        other = ~on_cp & ~in_pair
        kj = min_cost_gain2([
            (2, 1, np.where(on_cp, vca[:, :, c1], np.inf)),
            (1, 2, np.where(on_cp, vca[:, :, c2], np.inf)),
            (1, 1, np.where(on_cp, to_third, np.inf)),
            (1, 0, np.where(other | (va == c2), vca[:, :, c1], np.inf)),
            (0, 1, np.where(other | (va == c1), vca[:, :, c2], np.inf)),
        ], n1, n2)
        out = np.maximum(out, _as_attack(kj))
    return out
