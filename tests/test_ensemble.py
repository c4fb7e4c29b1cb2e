import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.ensemble import dpa, ensemblecert, ensemblecert_bounds
from kernelcert.metrics import certified_accuracy, certified_accuracy_curve, median_certified_robustness
from kernelcert.partition import dpa_hash_partition, partition, seeded_hash_partition, ss_dpa_partition


def _instance(rng, t, N, K, inf_frac=0.2, hi=6):
    v = rng.integers(0, K, (t, N))
    A = rng.integers(1, hi, (t, N, K)).astype(float)
    A[rng.random(A.shape) < inf_frac] = np.inf
    A[np.arange(t)[:, None], np.arange(N)[None, :], v] = 0
    return v, A


def _brute(v, A, K):
    N = len(v)
    p = np.argmax(np.bincount(v, minlength=K))
    best = np.inf
    for fin in itertools.product(range(K), repeat=N):
        fin = np.array(fin)
        if np.argmax(np.bincount(fin, minlength=K)) != p:
            best = min(best, A[np.arange(N), fin].sum())
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(2, 3), st.integers(0, 2**31))
def test_ensemblecert_equals_brute_force_and_plans_verify(N, K, seed):
    rng = np.random.default_rng(seed)
    v, A = _instance(rng, 3, N, K)
    res = ensemblecert(v, A, K, return_plan=True)
    for i in range(3):
        b = _brute(v[i], A[i], K)
        if np.isfinite(b):
            assert res.radius[i] == b - 1
            fin = np.where(res.plan[i] >= 0, res.plan[i], v[i])
            assert A[i][np.arange(N), fin].sum() == b
            assert np.argmax(np.bincount(fin, minlength=K)) != res.prediction[i]
        else:
            assert res.radius[i] > 10**9


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(2, 6), st.integers(0, 2**31))
def test_unit_costs_reproduce_dpa_and_whitebox_dominates(N, K, seed):
    rng = np.random.default_rng(seed)
    v, A = _instance(rng, 5, N, K, inf_frac=0.0)
    U = np.where(A > 0, 1.0, 0.0)
    np.testing.assert_array_equal(ensemblecert(v, U, K).radius, dpa(v, K).radius)
    assert np.all(ensemblecert(v, A, K).radius >= dpa(v, K).radius)


def test_dpa_formula_and_ties():
    votes = np.array([[0, 0, 1, 1], [2, 2, 2, 1], [1, 1, 1, 0]])
    res = dpa(votes, 3)
    np.testing.assert_array_equal(res.prediction, [0, 2, 1])
    # tie 2-2 with rival 1 > 0: floor((2 - 2) / 2) = 0; 3 vs 1+1: 0; 3 vs 1+1 (0 < 1): 0
    np.testing.assert_array_equal(res.radius, [0, 0, 0])
    assert dpa(np.zeros((1, 7), int), 3).radius[0] == 3


def test_milp_on_medium_ensembles():
    import cvxpy as cp

    rng = np.random.default_rng(3)
    K, N = 3, 20
    v, A = _instance(rng, 2, N, K, inf_frac=0.1, hi=8)
    res = ensemblecert(v, A, K)
    for i in range(2):
        p = res.prediction[i]
        best = np.inf
        for c in range(K):
            if c == p:
                continue
            z = cp.Variable((N, K), boolean=True)
            finite = np.where(np.isfinite(A[i]), A[i], 0)
            cons = [cp.sum(z, axis=1) == 1] + [z[j, k] == 0 for j in range(N) for k in range(K) if not np.isfinite(A[i, j, k])]
            counts = cp.sum(z, axis=0)
            cons.append(counts[c] >= counts[p] + (1 if c > p else 0))
            prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(finite, z))), cons)
            prob.solve(solver=cp.HIGHS)
            if prob.status == "optimal":
                best = min(best, round(prob.value))
        assert res.radius[i] == best - 1


def test_bounds_and_errors():
    rng = np.random.default_rng(4)
    v, A = _instance(rng, 4, 6, 3, inf_frac=0)
    lo, hi, agree = ensemblecert_bounds(v, A, A + (A > 0), 3)
    assert np.all(lo <= hi) and agree.dtype == bool
    with pytest.raises(ValueError, match="own vote"):
        ensemblecert(v, A + 1, 3)
    with pytest.raises(ValueError, match="shape"):
        ensemblecert(v, A[:, :, :2], 3)
    with pytest.raises(ValueError, match="votes"):
        dpa(v + 5, 3)


def test_partitions_are_feature_only_deterministic_and_checked():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (50, 12)).astype(float)
    for rule in ("ss_dpa", "dpa_hash", "seeded_hash"):
        a = partition(x, 5, rule)
        np.testing.assert_array_equal(a, partition(x.copy(), 5, rule))
        assert set(a) == set(range(5))
    s = ss_dpa_partition(x, 5)
    assert np.all(np.bincount(s) == 10)
    np.testing.assert_array_equal(dpa_hash_partition(x, 7), x.sum(1).astype(int) % 7)
    assert not np.array_equal(seeded_hash_partition(x, 5, seed=1), seeded_hash_partition(x, 5, seed=2))
    # the assignment of a sample depends on its own features only for the hash rules
    np.testing.assert_array_equal(seeded_hash_partition(x[::-1], 5)[::-1], seeded_hash_partition(x, 5))
    with pytest.raises(ValueError, match="exceeds"):
        ss_dpa_partition(x, 51)
    with pytest.raises(ValueError, match="integer"):
        dpa_hash_partition(x / 3.3, 5)
    with pytest.raises(ValueError, match="empty"):
        dpa_hash_partition(np.zeros((10, 2)), 3)


def test_metrics_anchor_example_and_properties():
    r = np.array([-1, 0, 3, 3, 5, 7])
    ok = r >= 0
    assert median_certified_robustness(r, ok, "radius") == 3
    assert median_certified_robustness(r, ok, "anchor") == 4
    b, acc = certified_accuracy_curve(r, ok)
    # the anchors' printout: sum(acc >= 0.5) over r = 0..max
    assert int(np.sum(acc >= 0.5)) == 4
    assert np.all(np.diff(acc) <= 0)
    assert certified_accuracy(r, ok, 4) == pytest.approx(2 / 6)
    assert median_certified_robustness(np.array([-1, -1, 0]), np.array([False, False, True])) is None
    rng = np.random.default_rng(6)
    for _ in range(50):
        rr = rng.integers(-1, 20, 31)
        okk = rr >= 0
        m = median_certified_robustness(rr, okk)
        if m is not None:
            assert certified_accuracy(rr, okk, m) >= 0.5 > certified_accuracy(rr, okk, m + 1)
