"""DPA and EnsembleCert against independent oracles: brute force over every partition's final vote,
brute force over knapsack choices, a MILP (cvxpy + HiGHS), and the DPA formula with unit costs."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.ensemble import (
    NO_ATTACK, AggregateResult, EnsembleBounds, dpa, dpa_from_scores, ensemblecert, ensemblecert_bounds,
    min_cost_gain12, plurality, vote_counts,
)
from kernelcert.voting import argmax_counts, argmax_votes, knapsack_dp, plurality_margin

METHODS = ("dp", "sorted")


def _instance(rng, t, N, K, inf_frac=0.2, hi=6, zero_frac=0.0, same_votes=False):
    """Random votes (t, N) and integer costs (t, N, K) with 0 at each own vote."""
    v = rng.integers(0, K, (t, N))
    if same_votes:
        v[:] = v[:, :1]
    A = rng.integers(1, hi, (t, N, K)).astype(float)
    A[rng.random(A.shape) < inf_frac] = np.inf
    A[rng.random(A.shape) < zero_frac] = 0.0
    A[np.arange(t)[:, None], np.arange(N)[None, :], v] = 0
    return v, A


def _winner(votes_row, K):
    return int(np.argmax(np.bincount(votes_row, minlength=K)))


def _brute_attack_cost(v, A, K):
    """Cheapest final vote assignment (one class per partition) whose plurality differs from v's."""
    N = len(v)
    p = _winner(v, K)
    best = np.inf
    for fin in itertools.product(range(K), repeat=N):
        fin = np.array(fin)
        if _winner(fin, K) != p:
            best = min(best, A[np.arange(N), fin].sum())
    return best


def _brute_dpa_radius(v, K):
    """Black-box radius: fewest base models whose votes must change to change the plurality, minus 1."""
    N = len(v)
    p = _winner(v, K)
    best = N + 1
    for fin in itertools.product(range(K), repeat=N):
        fin = np.array(fin)
        if _winner(fin, K) != p:
            best = min(best, int((fin != v).sum()))
    return best - 1


def _brute_knapsack(a, b, need):
    if need <= 0:
        return 0.0
    best = np.inf
    for ch in itertools.product(range(3), repeat=len(a)):
        if sum(ch) >= need:
            best = min(best, sum(a[i] if c == 1 else b[i] if c == 2 else 0.0 for i, c in enumerate(ch)))
    return best


def _check_choice(a, b, need, cost, choice):
    for r in range(len(need)):
        if np.isfinite(cost[r]) and need[r] > 0:
            ch = choice[r]
            assert ch.sum() >= need[r]
            assert np.where(ch == 1, a[r], np.where(ch == 2, b[r], 0.0)).sum() == cost[r]
        else:
            assert not choice[r].any()


# --------------------------------------------------------------------------- knapsack solvers
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**32 - 1), st.sampled_from(METHODS))
def test_knapsack_equals_brute_force(N, seed, method):
    rng = np.random.default_rng(seed)
    B = 6
    a = rng.integers(0, 8, (B, N)).astype(float)
    b = rng.integers(0, 14, (B, N)).astype(float)
    a[rng.random(a.shape) < 0.2] = np.inf
    b[rng.random(b.shape) < 0.3] = np.inf
    need = rng.integers(-1, 2 * N + 2, B)
    cost, choice = min_cost_gain12(a, b, need, method=method, return_choice=True)
    expected = [_brute_knapsack(a[r], b[r], need[r]) for r in range(B)]
    np.testing.assert_array_equal(cost, expected)
    _check_choice(a, b, need, cost, choice)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_general_knapsack_dp_equals_brute_force(N, seed):
    """knapsack_dp with any gains (the white-box run-off uses gains 1, 2, 3) against enumeration."""
    rng = np.random.default_rng(seed)
    B = 5
    gains = sorted(rng.choice(np.arange(1, 5), size=int(rng.integers(1, 4)), replace=False).tolist())
    costs = [rng.integers(0, 9, (B, N)).astype(float) for _ in gains]
    for c in costs:
        c[rng.random(c.shape) < 0.25] = np.inf
    need = rng.integers(-1, 4 * N + 2, B)
    cost, choice = knapsack_dp(list(zip(gains, costs)), need, keep_choices=True)
    for r in range(B):
        best = 0.0 if need[r] <= 0 else np.inf
        for ch in itertools.product(range(len(gains) + 1), repeat=N):
            g = sum(gains[k - 1] for k in ch if k)
            if g >= need[r]:
                best = min(best, sum(costs[k - 1][r, i] for i, k in enumerate(ch) if k))
        assert cost[r] == best
        if np.isfinite(best) and need[r] > 0:  # the choice is an optimal solution (gain taken per partition)
            assert choice[r].sum() >= need[r]
            taken = [costs[gains.index(int(g))][r, i] for i, g in enumerate(choice[r]) if g]
            assert sum(taken) == best


def test_vote_counts_both_paths():
    rng = np.random.default_rng(0)
    for N in (3, 40):  # per-class comparisons for few models, one bincount for many
        v = rng.integers(0, 5, (7, N))
        want = np.array([[np.count_nonzero(row == c) for c in range(5)] for row in v])
        np.testing.assert_array_equal(vote_counts(v, 5), want)
        np.testing.assert_array_equal(vote_counts(v.astype(np.uint8), 5), want)


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 120), st.integers(0, 2**32 - 1), st.sampled_from(["mixed", "concave", "convex", "ties"]))
def test_sorted_knapsack_equals_dp_on_larger_instances(N, seed, kind):
    rng = np.random.default_rng(seed)
    B = 8
    a = rng.integers(1, 30, (B, N)).astype(float)
    if kind == "concave":
        b = a + rng.integers(0, 30, (B, N)) % np.maximum(a, 1)  # a <= b < 2a
    elif kind == "convex":
        b = 2 * a + rng.integers(0, 10, (B, N))
    elif kind == "ties":
        a = rng.integers(1, 3, (B, N)).astype(float)
        b = rng.integers(1, 5, (B, N)).astype(float)
    else:
        b = rng.integers(1, 60, (B, N)).astype(float)
        b[rng.random(b.shape) < 0.3] = np.inf
        a[rng.random(a.shape) < 0.1] = np.inf
    need = rng.integers(0, 2 * N + 2, B)
    c_dp, ch_dp = min_cost_gain12(a, b, need, method="dp", return_choice=True)
    c_so, ch_so = min_cost_gain12(a, b, need, method="sorted", return_choice=True)
    np.testing.assert_array_equal(c_dp, c_so)
    np.testing.assert_array_equal(min_cost_gain12(a, b, need), c_so)
    _check_choice(a, b, need, c_dp, ch_dp)
    _check_choice(a, b, need, c_so, ch_so)


def test_knapsack_input_errors():
    a = np.ones((2, 3))
    with pytest.raises(ValueError, match="same shape"):
        min_cost_gain12(a, np.ones((2, 4)), np.ones(2, int))
    with pytest.raises(ValueError, match="need"):
        min_cost_gain12(a, a, np.ones(3, int))
    with pytest.raises(ValueError, match="non-negative"):
        min_cost_gain12(-a, a, np.ones(2, int))
    with pytest.raises(ValueError, match="method"):
        min_cost_gain12(a, a, np.ones(2, int), method="greedy")


# --------------------------------------------------------------------------- DPA
def test_dpa_formula_and_ties():
    votes = np.array([[0, 0, 1, 1], [2, 2, 2, 1], [1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    res = dpa(votes, 3)
    assert isinstance(res, AggregateResult) and res.radius.dtype == np.int64
    # ties go to the smaller index: [0,0,1,1] -> 0, [1,1,0,0] -> 0
    np.testing.assert_array_equal(res.prediction, [0, 2, 1, 0, 0])
    # floor((n_p - max_c (n_c + [c < p])) / 2): 2 vs 2 -> 0; 3 vs 1+1 -> 0; 3 vs 1+1 -> 0; 2 vs 2 -> 0; 4 vs 0 -> 2
    np.testing.assert_array_equal(res.radius, [0, 0, 0, 0, 2])
    assert dpa(np.zeros((1, 7), int), 3).radius[0] == 3
    assert dpa(np.full((1, 6), 2), 3).radius[0] == 2  # rivals 0, 1 < 2 win ties: 3 flips to class 0 suffice
    assert dpa(np.full((1, 6), 0), 3).radius[0] == 3


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(2, 3), st.integers(0, 2**32 - 1))
def test_dpa_equals_brute_force(N, K, seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, K, (4, N))
    res = dpa(v, K)
    for i in range(4):
        assert res.prediction[i] == _winner(v[i], K)
        assert res.radius[i] == _brute_dpa_radius(v[i], K)


# --------------------------------------------------------------------------- EnsembleCert
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(2, 3), st.integers(0, 2**32 - 1), st.sampled_from(METHODS),
       st.booleans())
def test_ensemblecert_equals_brute_force_and_plans_verify(N, K, seed, method, same):
    rng = np.random.default_rng(seed)
    v, A = _instance(rng, 3, N, K, zero_frac=0.1, same_votes=same)
    res = ensemblecert(v, A, K, return_plan=True, method=method)
    for i in range(3):
        assert res.prediction[i] == _winner(v[i], K)
        b = _brute_attack_cost(v[i], A[i], K)
        if np.isfinite(b):
            assert res.radius[i] == b - 1
            fin = np.where(res.plan[i] >= 0, res.plan[i], v[i])
            assert A[i][np.arange(N), fin].sum() == b  # the plan is a cheapest attack ...
            assert _winner(fin, K) != res.prediction[i]  # ... and it changes the prediction
            assert res.target[i] != res.prediction[i]
            assert np.all(res.plan[i][res.plan[i] >= 0] != v[i][res.plan[i] >= 0])
        else:
            assert res.radius[i] == NO_ATTACK and res.target[i] == -1 and np.all(res.plan[i] == -1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.integers(2, 8), st.integers(0, 2**32 - 1), st.sampled_from(METHODS),
       st.floats(0.0, 0.5), st.booleans())
def test_ensemblecert_without_plan_equals_every_class_solved(N, K, seed, method, zero_frac, same):
    """The radius without a plan (runner-up first, other classes only where a lower bound can still beat
    the minimum) equals the radius of the plan path, which solves the knapsack of every rival class."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 30))
    v, A = _instance(rng, t, N, K, inf_frac=float(rng.random() * 0.5), hi=int(rng.integers(2, 12)),
                     zero_frac=zero_frac, same_votes=same)
    fast = ensemblecert(v, A, K, method=method, block_size=int(rng.integers(1, 8)))
    full = ensemblecert(v, A, K, method=method, return_plan=True)
    np.testing.assert_array_equal(fast.prediction, full.prediction)
    np.testing.assert_array_equal(fast.radius, full.radius)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(2, 6), st.integers(0, 2**32 - 1), st.booleans())
def test_unit_costs_reproduce_dpa_and_whitebox_dominates(N, K, seed, same):
    rng = np.random.default_rng(seed)
    v, A = _instance(rng, 6, N, K, inf_frac=0.1, hi=20, same_votes=same)
    U = np.ones_like(A)
    U[np.arange(6)[:, None], np.arange(N)[None, :], v] = 0
    ref = dpa(v, K)
    for method in METHODS:
        res = ensemblecert(v, U, K, method=method)
        np.testing.assert_array_equal(res.radius, ref.radius)
        np.testing.assert_array_equal(res.prediction, ref.prediction)
        assert np.all(ensemblecert(v, A, K, method=method).radius >= ref.radius)  # costs >= 1


@settings(max_examples=20, deadline=None)
@given(st.integers(10, 80), st.integers(2, 10), st.integers(0, 2**32 - 1), st.booleans())
def test_sorted_equals_dp_ensemble(N, K, seed, same):
    rng = np.random.default_rng(seed)
    v, A = _instance(rng, 12, N, K, inf_frac=0.15, hi=40, same_votes=same)
    r_dp = ensemblecert(v, A, K, method="dp", return_plan=True)
    r_so = ensemblecert(v, A, K, return_plan=True)
    np.testing.assert_array_equal(r_dp.radius, r_so.radius)
    for r in (r_dp, r_so):  # plans realise the radius and change the prediction
        fin = np.where(r.plan >= 0, r.plan, v)
        cost = A[np.arange(12)[:, None], np.arange(N)[None, :], fin].sum(axis=1)
        np.testing.assert_array_equal(cost - 1, r.radius)
        assert np.all(plurality(vote_counts(fin, K)) != r.prediction)


def test_milp_on_medium_ensembles():
    import cvxpy as cp

    rng = np.random.default_rng(3)
    K, N, t = 4, 25, 3
    v, A = _instance(rng, t, N, K, inf_frac=0.15, hi=9)
    v[0] = np.where(rng.random(N) < 0.7, 1, v[0])  # a confident ensemble
    A[0, np.arange(N), v[0]] = 0
    A[0][(A[0] == 0) & (np.arange(K)[None, :] != v[0][:, None])] = 1
    res = ensemblecert(v, A, K)
    for i in range(t):
        p = res.prediction[i]
        best = np.inf
        finite = np.where(np.isfinite(A[i]), A[i], 0.0)
        for c in range(K):
            if c == p:
                continue
            z = cp.Variable((N, K), boolean=True)
            cons = [cp.sum(z, axis=1) == 1]
            unreachable = ~np.isfinite(A[i])
            if unreachable.any():
                cons.append(cp.multiply(unreachable.astype(float), z) == 0)
            counts = cp.sum(z, axis=0)
            cons.append(counts[c] >= counts[p] + (1 if c > p else 0))  # c beats p (tie rule)
            prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(finite, z))), cons)
            prob.solve(solver=cp.HIGHS)
            if prob.status == "optimal":
                best = min(best, round(prob.value))
        assert np.isfinite(best)
        assert res.radius[i] == best - 1


def test_no_attack_cap_blocks_and_monotonicity():
    rng = np.random.default_rng(4)
    v, A = _instance(rng, 30, 9, 3, inf_frac=0.3, hi=12)
    A[0] = np.inf
    A[0, np.arange(9), v[0]] = 0
    res = ensemblecert(v, A, 3, return_plan=True)
    assert res.radius[0] == NO_ATTACK and res.target[0] == -1 and np.all(res.plan[0] == -1)
    capped = ensemblecert(v, A, 3, max_radius=5)
    np.testing.assert_array_equal(capped.radius, np.minimum(res.radius, 5))
    for bs, method in ((1, "sorted"), (7, "sorted"), (4, "dp")):
        blocked = ensemblecert(v, A, 3, return_plan=True, block_size=bs, method=method)
        np.testing.assert_array_equal(blocked.radius, res.radius)
        fin = np.where(blocked.plan >= 0, blocked.plan, v)
        ok = res.radius < NO_ATTACK
        cost = A[np.arange(30)[:, None], np.arange(9)[None, :], fin].sum(axis=1)
        np.testing.assert_array_equal(cost[ok] - 1, res.radius[ok])
    # any real dtype: float32 / integer costs give the same certificate
    np.testing.assert_array_equal(ensemblecert(v, A.astype(np.float32), 3).radius, res.radius)
    A_int = np.where(np.isfinite(A), A, 10**6).astype(np.int32)
    np.testing.assert_array_equal(ensemblecert(v, A_int, 3).radius,
                                  ensemblecert(v, np.where(np.isfinite(A), A, 10**6), 3).radius)
    # raising any cost can only raise the radius; exact when lower == upper
    up = A + rng.integers(0, 3, A.shape) * (A > 0)
    bounds = ensemblecert_bounds(v, A, up, 3)
    assert isinstance(bounds, AggregateResult) and EnsembleBounds is AggregateResult  # one result type
    assert np.all(bounds.radius <= bounds.radius_upper)
    np.testing.assert_array_equal(bounds.radius, res.radius)
    np.testing.assert_array_equal(bounds.radius_upper, ensemblecert(v, up, 3).radius)
    np.testing.assert_array_equal(bounds.exact, bounds.radius == bounds.radius_upper)
    assert ensemblecert_bounds(v, A, A, 3).exact.all()
    with pytest.raises(ValueError, match="cost_lower must be <="):
        ensemblecert_bounds(v, A + (A > 0), A, 3)


def test_input_errors():
    rng = np.random.default_rng(5)
    v, A = _instance(rng, 4, 6, 3, inf_frac=0)
    with pytest.raises(ValueError, match="own vote"):
        ensemblecert(v, A + 1, 3)
    with pytest.raises(ValueError, match="shape"):
        ensemblecert(v, A[:, :, :2], 3)
    with pytest.raises(ValueError, match="NaN"):
        ensemblecert(v, np.where(A > 3, np.nan, A), 3)
    with pytest.raises(ValueError, match="non-negative"):
        ensemblecert(v, -A, 3)
    with pytest.raises(ValueError, match="integer"):
        ensemblecert(v, A * 1.5, 3)
    with pytest.raises(ValueError, match="method"):
        ensemblecert(v, A, 3, method="greedy")
    with pytest.raises(ValueError, match="max_radius"):
        ensemblecert(v, A, 3, max_radius=-1)
    with pytest.raises(ValueError, match="votes"):
        dpa(v + 5, 3)
    with pytest.raises(ValueError, match="shape"):
        dpa(v[0], 3)
    with pytest.raises(ValueError, match="integer"):
        dpa(v.astype(float), 3)
    with pytest.raises(ValueError, match="N_p"):
        dpa(np.zeros((3, 0), int), 3)
    with pytest.raises(ValueError, match="num_classes"):
        dpa(v * 0, 1)
    with pytest.raises(TypeError):
        ensemblecert(v, A.astype(str), 3)


def test_roe_functions_reachable_from_ensemble_module():
    import kernelcert.ensemble as ens
    import kernelcert.roe as roe

    for name in ("dpa_roe", "fa", "fa_roe", "dpa_star_roe", "whitebox_roe"):
        assert getattr(ens, name) is getattr(roe, name)
    with pytest.raises(AttributeError):
        ens.not_a_function


# --------------------------------------------------------------------------- votes straight from scores
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, ">f4"])
def test_argmax_votes_equals_numpy_argmax_with_ties(dtype):
    rng = np.random.default_rng(1)
    s = rng.integers(-2, 3, (30, 7, 4)).astype(dtype)  # few values: many exact ties (first maximiser wins)
    s[0, 0] = [1, 1, 1, 1]
    votes, counts = argmax_votes(s)
    want = np.asarray(s, np.float64).argmax(2)
    np.testing.assert_array_equal(votes, want)
    assert votes.dtype == np.int64 and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, vote_counts(want, 4))
    assert votes[0, 0] == 0


def test_argmax_votes_signed_zeros_views_and_memmaps(tmp_path):
    s = np.array([[[-0.0, 0.0, -1.0], [0.0, -0.0, -1.0], [-np.finfo(np.float32).max, -1e38, -3e38]]], np.float32)
    np.testing.assert_array_equal(argmax_votes(s)[0], s.argmax(2))  # -0.0 == 0.0: the first one wins
    rng = np.random.default_rng(2)
    big = rng.normal(size=(20, 9, 6)).astype(np.float32)
    view = big[::2, 1::2, ::-1]  # not contiguous
    np.testing.assert_array_equal(argmax_votes(view)[0], view.argmax(2))
    np.save(tmp_path / "s.npy", big)
    mm = np.load(tmp_path / "s.npy", mmap_mode="r")
    np.testing.assert_array_equal(argmax_votes(mm)[0], big.argmax(2))
    assert argmax_votes(np.zeros((0, 3, 2)))[0].shape == (0, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_argmax_votes_rejects_non_finite_anywhere(bad):
    for pos in [(0, 0, 0), (3, 2, 1), (4, 5, 2)]:  # first entry of a row (never compared as "x"), middle, last
        s = np.zeros((5, 6, 3), np.float32)
        s[pos] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            argmax_votes(s)


def test_argmax_votes_input_errors():
    with pytest.raises(ValueError, match=r"shape \(t, M, K\)"):
        argmax_votes(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="two classes"):
        argmax_votes(np.zeros((3, 4, 1)))
    with pytest.raises(ValueError, match="real numbers"):
        argmax_votes(np.zeros((3, 4, 2), bool))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_dpa_from_scores_equals_dpa_of_argmax(M, K, seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=(25, M, K)) * 2).astype(np.float32)  # coarse: tied logits and tied counts
    a, b = dpa_from_scores(s), dpa(s.argmax(2), K)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    np.testing.assert_array_equal(a.radius, b.radius)


@pytest.mark.parametrize("K", [2, 3, 8, 10, 16, 17, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_argmax_pass_every_k_and_model_count(K, dtype):
    """K <= 16 runs the pass compiled for that K (vectorised over models, with a scalar tail for the
    last M mod 8 models), K > 16 the generic one; both against numpy's argmax on tied scores, and
    the counts-only, DPA-fused and vote-storing entry points against each other."""
    rng = np.random.default_rng(K)
    for M in (1, 7, 8, 9, 33):
        s = rng.integers(-2, 3, (13, M, K)).astype(dtype)  # few values: many exact ties
        want = s.argmax(2)
        votes, counts = argmax_votes(s)
        np.testing.assert_array_equal(votes, want)
        np.testing.assert_array_equal(counts, vote_counts(want, K))
        np.testing.assert_array_equal(argmax_counts(s), counts)
        out = np.full((13, K), 7, np.int64)
        a, b = dpa_from_scores(s, counts_out=out), dpa(want, K)
        np.testing.assert_array_equal(out, counts)
        out16 = np.full((13, K), 7, np.uint16)  # smaller counts: the same numbers
        dpa_from_scores(s, counts_out=out16)
        np.testing.assert_array_equal(out16, counts)
        np.testing.assert_array_equal(a.prediction, b.prediction)
        np.testing.assert_array_equal(a.radius, b.radius)


@pytest.mark.parametrize("K", [3, 10, 20])
def test_fused_dpa_rejects_non_finite_anywhere(K):
    rng = np.random.default_rng(0)
    for bad in (np.nan, np.inf, -np.inf):
        for _ in range(5):
            s = rng.normal(size=(4, 11, K)).astype(np.float32)
            s[tuple(rng.integers(0, n) for n in s.shape)] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                dpa_from_scores(s)
            with pytest.raises(ValueError, match="NaN or infinite"):
                argmax_counts(s)


def test_plurality_margin_against_formula_and_counts_out_errors():
    rng = np.random.default_rng(3)
    n = rng.integers(0, 6, (200, 5))
    p, r = plurality_margin(n)
    np.testing.assert_array_equal(p, n.argmax(1))
    for i in range(len(n)):
        rival = max(n[i, c] + (c < p[i]) for c in range(5) if c != p[i])
        assert r[i] == (n[i, p[i]] - rival) // 2
    s = np.zeros((3, 2, 4), np.float32)
    for bad in (np.zeros((3, 4), np.uint32), np.zeros((3, 4), np.int8), np.zeros((3, 3), np.int64),
                np.zeros((4, 3), np.int64)[::2]):
        with pytest.raises(ValueError, match="counts_out"):
            dpa_from_scores(s, counts_out=bad)
    assert dpa_from_scores(np.zeros((0, 2, 4))).radius.shape == (0,)
