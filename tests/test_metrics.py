"""Certified accuracy and median certified robustness against direct recomputation and the anchors'
printout (`sum(acc >= 0.5)` over r = 0..max, docs/math.md §7.0.2)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.metrics import certified_accuracy, certified_accuracy_curve, median_certified_robustness


def _anchor_printout(radius, correct):
    """What the DPA / FA / ROE certify scripts print: misclassified -> -1, acc[r] for r = 0..max."""
    r = np.where(correct, radius, -1)
    acc = np.array([np.mean(r >= b) for b in range(0, max(int(r.max()), 0) + 1)])
    return int(np.sum(acc >= 0.5))


def test_anchor_toy_example():
    r = np.array([-1, 0, 3, 3, 5, 7])
    ok = r >= 0
    assert _anchor_printout(r, ok) == 4
    assert median_certified_robustness(r, ok, "anchor") == 4
    assert median_certified_robustness(r, ok, "radius") == 3
    assert median_certified_robustness(r, ok) == 3
    b, acc = certified_accuracy_curve(r, ok)
    np.testing.assert_array_equal(b, np.arange(8))
    np.testing.assert_allclose(acc, [5 / 6, 4 / 6, 4 / 6, 4 / 6, 2 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert certified_accuracy(r, ok, 4) == pytest.approx(2 / 6)
    np.testing.assert_allclose(certified_accuracy(r, ok, np.array([0, 3, 8])), [5 / 6, 4 / 6, 0])


def test_misclassified_points_never_count_and_low_accuracy():
    r = np.array([9, 9, 9, 0])
    ok = np.array([False, False, True, True])
    assert certified_accuracy(r, ok, 0) == 0.5
    assert median_certified_robustness(r, ok) == 0  # exactly 50 % at budget 0
    ok3 = np.array([False, False, False, True])
    assert median_certified_robustness(r, ok3) is None
    assert median_certified_robustness(r, ok3, "anchor") == 0 == _anchor_printout(r, ok3)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 25), st.booleans()), min_size=1, max_size=40))
def test_properties_against_direct_computation(points):
    r = np.array([p[0] for p in points])
    ok = np.array([p[1] for p in points]) & (r >= 0)
    b, acc = certified_accuracy_curve(r, ok)
    assert np.all(np.diff(acc) <= 0)  # non-increasing
    np.testing.assert_allclose(acc, [np.mean(ok & (r >= x)) for x in b])
    for x in (0, 3, 30):
        assert certified_accuracy(r, ok, x) == pytest.approx(np.mean(ok & (r >= x)))
    m = median_certified_robustness(r, ok, "radius")
    direct = [x for x in range(0, 27) if np.mean(ok & (r >= x)) >= 0.5]
    assert m == (max(direct) if direct else None)
    assert median_certified_robustness(r, ok, "anchor") == _anchor_printout(r, ok)
    assert median_certified_robustness(r, ok, "anchor") == (0 if m is None else m + 1)
    if m is not None:
        assert certified_accuracy(r, ok, m) >= 0.5 > certified_accuracy(r, ok, m + 1)


def test_errors_and_explicit_budgets():
    r = np.array([0, 2, 5])
    ok = np.ones(3, bool)
    with pytest.raises(ValueError, match="equal length"):
        certified_accuracy(r, ok[:2], 0)
    with pytest.raises(ValueError, match="no test points"):
        median_certified_robustness(np.array([], int), np.array([], bool))
    with pytest.raises(ValueError, match="convention"):
        median_certified_robustness(r, ok, "median")
    with pytest.raises(ValueError, match=">= -1"):
        certified_accuracy(np.array([-2, 0, 1]), ok, 0)
    with pytest.raises(ValueError, match="integers"):
        certified_accuracy(r + 0.5, ok, 0)
    with pytest.raises(ValueError, match="boolean"):
        certified_accuracy(r, np.array([0, 2, 1]), 0)
    with pytest.raises(ValueError, match="budget"):
        certified_accuracy(r, ok, 1.5)
    with pytest.raises(ValueError, match="too large"):
        certified_accuracy_curve(np.array([0, 2**40]), np.ones(2, bool))
    b, acc = certified_accuracy_curve(np.array([0, 2**40]), np.ones(2, bool), budgets=[0, 10, 2**41])
    np.testing.assert_allclose(acc, [1.0, 0.5, 0.0])
