"""ScaLabelCert against brute force, MILPs and retraining on attacked labels."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.certificates import certify, pairwise_costs
from kernelcert.exact import brute_force_certificate, milp_class_costs
from kernelcert.learners import KernelRegression, KernelSVM

problems = st.tuples(st.integers(2, 8), st.integers(2, 4), st.integers(0, 2**31))


@settings(max_examples=60, deadline=None)
@given(problems)
def test_radius_exact_and_bounds_bracket_brute_force(p):
    n, K, seed = p
    rng = np.random.default_rng(seed)
    w, y = rng.normal(size=(4, n)), rng.integers(0, K, n)
    cert, bf = certify(w, y, K), brute_force_certificate(w, y, K)
    np.testing.assert_array_equal(cert.radius, bf.radius)
    assert np.all(cert.cost_lower <= bf.class_costs)
    assert np.all(cert.cost_upper >= bf.class_costs)
    if K == 2:
        np.testing.assert_array_equal(cert.cost_lower, bf.class_costs)
        np.testing.assert_array_equal(cert.cost_upper, bf.class_costs)
        assert cert.exact.all()


@settings(max_examples=25, deadline=None)
@given(problems, st.sampled_from(["regression", "svm"]))
def test_witnesses_flip_retrained_models(gram_problem, p, learner):
    n, K, seed = p
    Kt, Kx, y = gram_problem(n, 3, K, seed)
    make = (lambda: KernelRegression(ridge=1e-3)) if learner == "regression" else (lambda: KernelSVM())
    model = make().fit(Kt, y, K)
    cert = model.certify(Kx)
    bf = brute_force_certificate(model.label_weights(Kx), y, K)
    np.testing.assert_array_equal(cert.radius, bf.radius)
    for i in range(len(Kx)):
        if cert.radius[i] < n:
            att = cert.witness(i)
            assert len(att) == cert.radius[i] + 1
            y2 = y.copy()
            for j, v in att:
                assert v != y[j]
                y2[j] = v
            # SVM retrained at the same C (the small-C regime holds for every labelling)
            retrained = (KernelSVM(model.C_) if learner == "svm" else make()).fit(Kt, y2, K)
            assert retrained.predict(Kx[i:i + 1])[0] != cert.prediction[i]
        for c in range(K):
            if np.isfinite(cert.cost_upper[i, c]) and c != cert.prediction[i]:
                att = cert.witness(i, target=c)
                assert len(att) == cert.cost_upper[i, c]
                y2 = y.copy()
                for j, v in att:
                    y2[j] = v
                assert make().fit(Kt, y2, K).predict(Kx[i:i + 1])[0] == c


def test_milp_agrees_with_bounds_on_four_classes():
    rng = np.random.default_rng(5)
    w, y = rng.normal(size=(3, 10)), rng.integers(0, 4, 10)
    cert = certify(w, y, 4)
    exact = milp_class_costs(w, y, 4)
    assert np.all(cert.cost_lower <= exact) and np.all(exact <= cert.cost_upper)
    np.testing.assert_array_equal(exact, brute_force_certificate(w, y, 4).class_costs)


@settings(max_examples=30, deadline=None)
@given(problems, st.sampled_from(["index", "attacker"]))
def test_pairwise_costs_against_enumeration(p, tie):
    n, K, seed = p
    rng = np.random.default_rng(seed)
    w, y = rng.normal(size=(2, n)), rng.integers(0, K, n)
    P = pairwise_costs(w, y, K, tie=tie)
    import itertools

    for i in range(2):
        best = np.full((K, K), np.inf)
        for lab in itertools.product(range(K), repeat=n):
            lab = np.array(lab)
            s = np.array([w[i][lab == k].sum() for k in range(K)])
            d = (lab != y).sum()
            for a in range(K):
                for b in range(K):
                    beats = s[b] > s[a] or (s[b] == s[a] and (b < a or tie == "attacker"))
                    if a != b and beats:
                        best[a, b] = min(best[a, b], d)
        np.fill_diagonal(best, 0)
        np.testing.assert_array_equal(P[i], best)


def test_integer_ties_never_overclaim():
    rng = np.random.default_rng(7)
    for _ in range(40):
        n, K = rng.integers(2, 8), rng.integers(2, 4)
        w, y = rng.integers(-2, 3, size=(3, n)).astype(float), rng.integers(0, K, n)
        cert, bf = certify(w, y, K), brute_force_certificate(w, y, K)
        assert np.all(cert.radius <= bf.radius)
        assert np.all(cert.cost_lower <= bf.class_costs)


def test_blocked_equals_unblocked():
    rng = np.random.default_rng(8)
    w, y = rng.normal(size=(17, 30)), rng.integers(0, 5, 30)
    a, b = certify(w, y, 5), certify(w, y, 5, block_size=4)
    for f in ("prediction", "radius", "cost_lower", "cost_upper"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@pytest.mark.parametrize("args,msg", [
    ((np.ones((2, 3)), np.array([0, 1])), "columns"),
    ((np.array([[np.nan, 1.0]]), np.array([0, 1])), "NaN"),
    ((np.ones((1, 2)), np.array([0, 3]), 2), "label"),
    ((np.ones((1, 2)), np.array([0, 1]), 1), "at least 2"),
    ((np.ones(2), np.array([0, 1])), "dimensions"),
])
def test_bad_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        certify(*args)
