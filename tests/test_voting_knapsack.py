"""The compiled cost path of the sorted gains-{1, 2} knapsack against its numpy form (the oracle),
bit for bit, on fresh random inputs: ties, zero gains, infinite options, concave/convex mixes,
needs beyond any solution; and through the public `min_cost_gain12`."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.voting import (
    _knapsack_sorted, _knapsack_sorted_cost_kernel, _knapsack_sorted_numpy, knapsack_dp, min_cost_gain12,
)

KINDS = ("ties", "zeros", "mixed", "concave", "convex", "real", "all_inf")


def _instance(rng, B, N, kind):
    """gain1, gain2 (B, N) float64 >= 0 (inf allowed) and need (B,) int64 of one kind."""
    if kind == "ties":  # few distinct values: equal b among concave partitions, equal units
        a = rng.integers(0, 3, (B, N)).astype(float)
        b = rng.integers(0, 5, (B, N)).astype(float)
    elif kind == "zeros":  # many zero gains (free partitions) next to small costs
        a = np.where(rng.random((B, N)) < 0.5, 0.0, rng.integers(1, 4, (B, N)).astype(float))
        b = np.where(rng.random((B, N)) < 0.5, 0.0, rng.integers(1, 6, (B, N)).astype(float))
    elif kind == "concave":  # a <= b < 2a
        a = rng.integers(1, 30, (B, N)).astype(float)
        b = a + rng.integers(0, 30, (B, N)) % a
    elif kind == "convex":
        a = rng.integers(0, 30, (B, N)).astype(float)
        b = 2 * a + rng.integers(0, 10, (B, N))
    elif kind == "real":  # non-integer costs: the sums must be formed in the same order
        a = rng.random((B, N)) * 10
        b = rng.random((B, N)) * 20
    elif kind == "all_inf":
        a = np.full((B, N), np.inf)
        b = np.full((B, N), np.inf)
    else:
        a = rng.integers(0, 30, (B, N)).astype(float)
        b = rng.integers(0, 60, (B, N)).astype(float)
    if kind != "all_inf":
        a[rng.random(a.shape) < 0.15] = np.inf
        b[rng.random(b.shape) < 0.25] = np.inf
    need = rng.integers(-2, 2 * N + 3, B)
    need[::2] = 2 * rng.integers(0, max(1, N // 2), len(need[::2])) + 1  # small odd needs: one partition at gain 1
    return a, b, need


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 9), st.one_of(st.integers(1, 8), st.integers(9, 60)), st.sampled_from(KINDS),
       st.integers(0, 2**32 - 1))
def test_compiled_cost_equals_numpy_oracle(B, N, kind, seed):
    a, b, need = _instance(np.random.default_rng(seed), B, N, kind)
    want, _ = _knapsack_sorted_numpy(a, b, need)
    got, choice = _knapsack_sorted(a, b, need)
    assert choice is None and got.dtype == np.float64 and got.shape == (B,)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_cost_equals_oracle_and_dp_on_many_partitions(kind):
    """N up to 700 (the partial sort of the convex units when need < their number) against the numpy
    form and, on integer costs, the dynamic programme."""
    rng = np.random.default_rng(sum(map(ord, kind)))
    for N in (1, 2, 57, 700):
        a, b, need = _instance(rng, 12, N, kind)
        need[:4] = [0, 1, N, 2 * N]
        got = min_cost_gain12(a, b, need)
        np.testing.assert_array_equal(got, _knapsack_sorted_numpy(a, b, need)[0])
        if kind != "real" and N <= 57:
            np.testing.assert_array_equal(got, knapsack_dp([(1, a), (2, b)], need)[0])


def test_compiled_cost_handcrafted():
    inf = np.inf
    a = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [inf, inf, 3.0], [2.0, 5.0, inf], [-0.0, 1.0, 1.0],
                  [4.0, 3.0, inf]])
    b = np.array([[1.5, 1.5, 1.5], [0.0, 0.0, 0.0], [1.0, 1.0, inf], [3.0, 9.0, inf], [1.0, 2.0, inf],
                  [5.0, 5.9, inf]])
    need = np.array([3, 6, 5, 7, 1, 1])
    # row 0 (concave, need 3): one partition at gain 2 and one at gain 1 (2.5) beat two at gain 2 or three
    # at gain 1 (3.0); row 1: free; row 2: 1 + 1 (gain 4) + 3 (gain 1); row 3: infeasible (gain at most
    # 4); row 4: the gain-1 option of cost -0.0 (a zero of either sign is a valid cost); row 5 (concave):
    # gain 1 from the partition with the larger b (3 < 4 < 5)
    want = np.array([2.5, 0.0, 5.0, inf, 0.0, 3.0])
    np.testing.assert_array_equal(min_cost_gain12(a, b, need), want)
    np.testing.assert_array_equal(_knapsack_sorted_numpy(a, b, need)[0], want)
    cost = np.empty(len(need))
    _knapsack_sorted_cost_kernel(a, b, need, cost)
    np.testing.assert_array_equal(cost, want)


def test_choices_still_come_from_the_numpy_form():
    a, b, need = _instance(np.random.default_rng(5), 6, 9, "mixed")
    cost, choice = min_cost_gain12(a, b, need, return_choice=True)
    want_cost, want_choice = _knapsack_sorted_numpy(a, b, need, keep_choices=True)
    np.testing.assert_array_equal(cost, want_cost)
    np.testing.assert_array_equal(choice, want_choice)
    np.testing.assert_array_equal(cost, min_cost_gain12(a, b, need))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(2, 6), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3]),
       st.booleans())
def test_compiled_cheapest_attack_equals_numpy_loop(N, K, seed, zero_frac, same):
    """EnsembleCert's compiled search over rival classes (`ensemble._cheapest_attack_kernel`) against the
    numpy loop with the numpy knapsack and with the dynamic programme, on fresh random votes and costs
    (zero costs, inf, all partitions voting alike)."""
    from kernelcert.ensemble import _cheapest_attack
    from kernelcert.voting import _knapsack_dp12
    from kernelcert.voting import plurality, vote_counts

    rng = np.random.default_rng(seed)
    B = 9
    v = rng.integers(0, K, (B, N))
    if same:
        v[:] = v[:, :1]
    A = rng.integers(1, 7, (B, N, K)).astype(float)
    A[rng.random(A.shape) < 0.2] = np.inf
    A[rng.random(A.shape) < zero_frac] = 0.0
    A[np.arange(B)[:, None], np.arange(N)[None, :], v] = 0
    n = vote_counts(v, K)
    p = plurality(n)
    off_p = A.copy()
    off_p[np.arange(B), :, p] = np.inf
    args = (v, A, K, n, p, v == p[:, None], off_p.min(axis=2))
    got = _cheapest_attack(*args, _knapsack_sorted)
    np.testing.assert_array_equal(got, _cheapest_attack(*args, _knapsack_sorted_numpy))
    np.testing.assert_array_equal(got, _cheapest_attack(*args, _knapsack_dp12))
