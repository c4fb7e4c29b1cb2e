"""Learners against independent references: direct solves, scikit-learn, expm / Euler, cvxpy QPs, enumeration."""
import itertools
from fractions import Fraction

import cvxpy as cp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings, strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.kernel_ridge import KernelRidge
from sklearn.utils.validation import check_is_fitted

from kernelcert.learners import KernelRegression, KernelSVM, fit_learners, onehot, solve_svm_dual
from problems import rbf_problem


def lowrank_problem(n, t, K, seed, rank=3):
    """Linear-kernel Gram of rank `rank` < n (singular PSD), test rows and labels."""
    rng = np.random.default_rng(seed)
    x, xt = rng.normal(size=(n, rank)), rng.normal(size=(t, rank))
    return x @ x.T, xt @ x.T, rng.integers(0, K, n)


def cvxpy_svm_dual(K, signs, C):
    """Independent QP: max 1'a - 1/2 ||L' diag(s) a||^2, 0 <= a <= C, with K = L L' (second-order cone form)."""
    L = np.linalg.cholesky(K + 1e-12 * np.eye(len(K)))
    a = cp.Variable(len(signs))
    prob = cp.Problem(cp.Maximize(cp.sum(a) - 0.5 * cp.sum_squares(L.T @ cp.multiply(signs, a))), [a >= 0, a <= C])
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert prob.status == "optimal"
    return np.asarray(a.value)


def dual_objective(K, signs, a):
    return a.sum() - 0.5 * (a * signs) @ K @ (a * signs)


def enumerate_box_qp(K, signs, C):
    """Exact dual by enumerating active sets (3^n): the unique point satisfying every KKT condition."""
    n = len(signs)
    Q = np.outer(signs, signs) * K
    found = []
    for pattern in itertools.product((0, 1, 2), repeat=n):  # 0: a=0, 1: free, 2: a=C
        pattern = np.array(pattern)
        a = np.where(pattern == 2, C, 0.0)
        F = pattern == 1
        if F.any():
            rhs = 1.0 - Q[np.ix_(F, ~F)] @ a[~F]
            a[F] = np.linalg.solve(Q[np.ix_(F, F)], rhs)
        g = 1.0 - Q @ a  # gradient of the dual objective
        tol = 1e-9
        ok = (np.all(a[F] >= -tol) and np.all(a[F] <= C + tol) and np.all(np.abs(g[F]) <= tol)
              and np.all(g[pattern == 0] <= tol) and np.all(g[pattern == 2] >= -tol))
        if ok:
            found.append(a)
    assert found, "no KKT point found"
    return found[0]


# --------------------------------------------------------------------------- kernel regression
@settings(max_examples=25, deadline=None)
@given(st.integers(2, 25), st.integers(2, 4), st.integers(0, 2**31), st.sampled_from([0.0, 1e-3, 0.5]))
def test_regression_matches_direct_solve_and_sklearn(n, K, seed, ridge):
    Kt, Kx, y = rbf_problem(n, 6, K, seed)
    Kt = Kt + 1e-3 * np.eye(n)  # keep the ridge=0 solve well conditioned
    m = KernelRegression(ridge=ridge).fit(Kt, y, K)
    Y = onehot(y, K)
    direct = Kx @ np.linalg.solve(Kt + ridge * np.eye(n), Y)
    np.testing.assert_allclose(m.decision_function(Kx), direct, rtol=1e-9, atol=1e-11)
    W = m.label_weights(Kx)
    assert W.shape == (6, n) and W.dtype == np.float64
    np.testing.assert_allclose(W @ Y, direct, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(m.predict(Kx), np.argmax(W @ Y, axis=1))
    if ridge > 0:
        sk = KernelRidge(alpha=ridge, kernel="precomputed").fit(Kt, Y)
        np.testing.assert_allclose(m.decision_function(Kx), sk.predict(Kx), rtol=1e-8, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31), st.sampled_from([0.0, 0.1]),
       st.floats(0.05, 3.0), st.floats(0.1, 2.0))
def test_finite_time_matches_expm_and_euler(n, seed, ridge, t, lr):
    Kt, Kx, y = rbf_problem(n, 4, 3, seed)
    Y = onehot(y, 3)
    A = Kt + ridge * np.eye(n)
    m = KernelRegression(ridge, train_time=t, learning_rate=lr).fit(Kt, y, 3)
    got = m.decision_function(Kx)
    # Euler on the coefficient ODE beta' = -lr (A beta - Y), beta(0) = 0; f = K(x, X) beta (docs/math.md §2)
    steps = 4000
    h = t / steps
    beta = np.zeros_like(Y)
    for _ in range(steps):
        beta = beta - h * lr * (A @ beta - Y)
    np.testing.assert_allclose(got, Kx @ beta, rtol=5e-3, atol=5e-3 * np.abs(got).max())
    if np.linalg.eigvalsh(A)[0] > 1e-6:
        ref = Kx @ np.linalg.solve(A, (np.eye(n) - scipy.linalg.expm(-lr * t * A)) @ Y)
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(m.label_weights(Kx) @ Y, got, rtol=1e-12, atol=1e-14)


def test_finite_time_converges_and_handles_singular_gram():
    Kt, Kx, y = rbf_problem(10, 5, 3, 1)
    Kt = Kt + 0.05 * np.eye(10)
    conv = KernelRegression().fit(Kt, y, 3).decision_function(Kx)
    gaps = [np.abs(KernelRegression(train_time=t).fit(Kt, y, 3).decision_function(Kx) - conv).max()
            for t in (1.0, 10.0, 100.0, 1e4)]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-9
    np.testing.assert_array_equal(KernelRegression(train_time=np.inf).fit(Kt, y, 3).predict(Kx),
                                  KernelRegression().fit(Kt, y, 3).predict(Kx))
    # a singular Gram: the converged solve must refuse, the finite-time flow is defined (Euler reference)
    Ks, Kxs, ys = lowrank_problem(8, 3, 2, 2)
    with pytest.raises(ValueError, match="ridge"):
        KernelRegression().fit(Ks, ys, 2)
    got = KernelRegression(train_time=0.3).fit(Ks, ys, 2).decision_function(Kxs)
    Y, beta, h = onehot(ys, 2), np.zeros((8, 2)), 0.3 / 20000
    for _ in range(20000):
        beta = beta - h * (Ks @ beta - Y)
    np.testing.assert_allclose(got, Kxs @ beta, rtol=1e-3, atol=1e-3 * np.abs(got).max())


def test_singular_or_indefinite_gram_suggests_ridge():
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="ridge"):
        KernelRegression().fit(x @ x.T, np.array([0, 1, 0]), 2)
    Kt, _, y = rbf_problem(6, 1, 2, 3)
    Kt[0, 1] = Kt[1, 0] = 1.5  # no longer PSD
    with pytest.raises(ValueError, match="ridge"):
        KernelRegression().fit(Kt, y, 2)
    with pytest.raises(ValueError, match="positive semidefinite"):
        KernelRegression(train_time=1.0).fit(Kt, y, 2)
    # nearly duplicated points: Cholesky may succeed but the system is numerically singular
    Kd = np.ones((4, 4)) + 1e-17 * np.eye(4)
    with pytest.raises(ValueError, match="ridge >= "):
        KernelRegression().fit(Kd, np.array([0, 1, 0, 1]), 2)
    KernelRegression(ridge=1e-3).fit(Kd, np.array([0, 1, 0, 1]), 2)


def test_blocks_equal_unblocked():
    Kt, Kx, y = rbf_problem(20, 13, 3, 4)
    for m in (KernelRegression(0.1), KernelRegression(0.1, train_time=2.0), KernelSVM(), KernelSVM(C=1.0)):
        m.fit(Kt, y, 3)
        np.testing.assert_allclose(m.decision_function(Kx), m.decision_function(Kx, block_size=3), rtol=1e-12,
                                   atol=1e-14)
        np.testing.assert_array_equal(m.predict(Kx), m.predict(Kx, block_size=4))
    m = KernelRegression(0.1).fit(Kt, y, 3)
    np.testing.assert_allclose(m.label_weights(Kx), m.label_weights(Kx, block_size=2), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_learners_shares_work_and_equals_separate_fits_bit_for_bit(seed, monkeypatch):
    Kt, Kx, y = rbf_problem(40, 17, 4, seed)
    Kt = Kt + 1e-10 * np.triu(np.ones_like(Kt), 1)  # asymmetric within the tolerance: symmetrised once
    make = lambda: [KernelRegression(0.1), KernelSVM(), KernelRegression(0.1, train_time=2.0),  # noqa: E731
                    KernelRegression(0.1, train_time=5.0, learning_rate=0.5), KernelSVM(C=1e-3), KernelSVM(C=10.0),
                    KernelRegression(0.1), KernelRegression(0.3)]
    separate = [m.fit(Kt, y, 4) for m in make()]
    calls = {"cho_factor": 0, "eigh": 0}
    for name in calls:
        real = getattr(scipy.linalg, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(scipy.linalg, name, counted)
    shared = fit_learners(make(), Kt, y, 4)
    # one PSD check for the 3 SVMs + one Cholesky per ridge (0.1, 0.3); one eigh for the two finite-time fits
    assert calls == {"cho_factor": 1 + 2, "eigh": 1}
    for a, b in zip(separate, shared):
        for attr in ("C_max_", "C_", "alpha_", "eig_lower_", "weight_error_factor_"):
            if getattr(a, attr, None) is not None:
                assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
            else:
                assert getattr(b, attr, None) is None, attr
        assert np.array_equal(a.decision_function(Kx), b.decision_function(Kx))
        if getattr(a, "label_linear_", True):
            Wa, ea = a.label_weights(Kx, return_error=True)
            Wb, eb = b.label_weights(Kx, return_error=True)
            assert np.array_equal(Wa, Wb) and np.array_equal(ea, eb)


def test_fit_learners_errors():
    Kt, _, y = rbf_problem(10, 2, 3, 0)
    with pytest.raises(ValueError, match="num_classes is required"):
        fit_learners([KernelSVM()], Kt, y, None)
    with pytest.raises(TypeError, match="learners must be"):
        fit_learners([object()], Kt, y, 3)
    with pytest.raises(ValueError, match="not symmetric"):
        fit_learners([KernelSVM()], Kt + np.triu(np.ones_like(Kt), 1), y, 3)
    with pytest.raises(ValueError, match="ridge"):
        fit_learners([KernelSVM(), KernelRegression(-1.0)], Kt, y, 3)


# --------------------------------------------------------------------------- kernel SVM
@settings(max_examples=15, deadline=None)
@given(st.integers(3, 9), st.integers(0, 2**31), st.floats(0.05, 1.0))
def test_svm_small_c_alpha_is_c_for_every_labelling(n, seed, frac):
    Kt, Kx, y = rbf_problem(n, 4, 3, seed)
    m = KernelSVM().fit(Kt, y, 3)
    rows = np.abs(Kt).sum(1)
    assert m.C_max == pytest.approx(1 / rows.max(), rel=1e-12)
    assert m.C_ == m.C_max and m.is_label_linear
    # rigorous: C_max times every exact row sum is <= 1
    exact_max = max(sum(Fraction(float(v)) for v in np.abs(row)) for row in Kt)
    assert Fraction(m.C_max) * exact_max <= 1
    rng = np.random.default_rng(seed)
    for C in (m.C_max, frac * m.C_max):
        for _ in range(3):
            signs = rng.choice([-1.0, 1.0], size=n)
            np.testing.assert_allclose(solve_svm_dual(Kt, signs, C), C, rtol=1e-12)
            np.testing.assert_allclose(cvxpy_svm_dual(Kt, signs, C), C, rtol=1e-5)
        svm = KernelSVM(C).fit(Kt, y, 3)
        assert svm.is_label_linear and np.all(svm.alpha_ == C)
        np.testing.assert_array_equal(svm.label_weights(Kx), Kx)
        # decision function = C (2 S - rowsum); predictions = argmax W @ onehot(y)
        S = Kx @ onehot(y, 3)
        np.testing.assert_allclose(svm.decision_function(Kx), C * (2 * S - Kx.sum(1, keepdims=True)), rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_array_equal(svm.predict(Kx), np.argmax(S, axis=1))
    # the KKT argument of docs/math.md §2, checked over every labelling: the dual gradient at alpha = C_max is >= 0
    if n <= 8:
        for signs in itertools.product((-1.0, 1.0), repeat=n):
            s = np.array(signs)
            assert np.all(1 - s * (Kt @ (m.C_max * s)) >= -1e-12)


def test_svm_above_c_max_is_not_label_linear_and_matches_qp():
    found_non_c = False
    for seed in range(4):
        Kt, Kx, y = rbf_problem(12, 6, 3, seed)
        c_max = KernelSVM().fit(Kt, y, 3).C_max
        for factor in (1.5, 5.0, 50.0):
            C = factor * c_max
            m = KernelSVM(C).fit(Kt, y, 3)
            assert not m.is_label_linear and m.alpha_.shape == (3, 12)
            assert m.kkt_residual_ < 1e-9
            F = np.empty((6, 3))
            for k in range(3):
                s = np.where(y == k, 1.0, -1.0)
                ref = cvxpy_svm_dual(Kt, s, C)
                # never worse than the interior-point optimum; outputs agree (alpha itself need not be
                # unique on a nearly singular Gram)
                assert np.all((m.alpha_[k] >= 0) & (m.alpha_[k] <= C))
                assert dual_objective(Kt, s, m.alpha_[k]) >= dual_objective(Kt, s, ref) - 1e-9 * C * 12
                F[:, k] = Kx @ (ref * s)
                np.testing.assert_allclose(Kt @ (m.alpha_[k] * s), Kt @ (ref * s), atol=1e-4)
            np.testing.assert_allclose(m.decision_function(Kx), F, atol=1e-4 * max(1.0, np.abs(F).max()))
            np.testing.assert_array_equal(m.predict(Kx), np.argmax(m.decision_function(Kx), axis=1))
            found_non_c |= bool(np.any(m.alpha_ < C * (1 - 1e-6)))
            with pytest.raises(ValueError, match="C_max"):
                m.label_weights(Kx)
            with pytest.raises(ValueError, match="C_max"):
                m.certify(Kx)
    assert found_non_c, "some C > C_max problem must have alpha != C somewhere"


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31), st.floats(0.5, 100.0))
def test_svm_dual_equals_active_set_enumeration(n, seed, factor):
    Kt, _, _ = rbf_problem(n, 1, 2, seed)
    Kt = Kt + 0.01 * np.eye(n)  # strictly convex: a unique optimum
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=n)
    C = factor / np.abs(Kt).sum(1).max()
    np.testing.assert_allclose(solve_svm_dual(Kt, signs, C), enumerate_box_qp(Kt, signs, C), atol=1e-9 * C)


def test_svm_dual_interior_point_fallback(monkeypatch):
    import kernelcert.learners as learners

    Kt, _, _ = rbf_problem(5, 1, 2, 9)
    Kt = Kt + 0.01 * np.eye(5)
    signs = np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    C = 10.0 / np.abs(Kt).sum(1).max()
    exact_alpha = enumerate_box_qp(Kt, signs, C)
    monkeypatch.setattr(learners, "_polish_box_qp", lambda H, b0, max_iter=50: None)
    alpha, resid = solve_svm_dual(Kt, signs, C, return_residual=True)  # Clarabel alone
    np.testing.assert_allclose(alpha, exact_alpha, atol=1e-6 * C)
    assert resid < 1e-6


def test_binary_svm_uses_one_problem_and_antisymmetric_scores():
    Kt, Kx, y = rbf_problem(10, 5, 2, 6)
    for C in (None, 20.0):
        m = KernelSVM(C).fit(Kt, y, 2)
        assert m.alpha_.shape == (1, 10)
        F = m.decision_function(Kx)
        np.testing.assert_array_equal(F[:, 1], -F[:, 0])
        np.testing.assert_array_equal(m.predict(Kx), np.where(F[:, 0] >= 0, 0, 1))
    m = KernelSVM(20.0).fit(Kt, y, 2)
    s = np.where(y == 0, 1.0, -1.0)
    np.testing.assert_allclose(m.alpha_[0], cvxpy_svm_dual(Kt, s, 20.0), atol=1e-5 * 20)


def test_certify_delegates_to_scalabelcert():
    from kernelcert.certificates import certify

    Kt, Kx, y = rbf_problem(15, 6, 3, 7)
    Kt = Kt + 1e-3 * np.eye(15)
    half = 0.5 * KernelSVM().fit(Kt, y, 3).C_max
    for m in (KernelRegression(0.1), KernelRegression(0.0, train_time=1.0), KernelSVM(), KernelSVM(half)):
        m.fit(Kt, y, 3)
        cert = m.certify(Kx)
        ref = certify(m.label_weights(Kx), y, 3)
        np.testing.assert_array_equal(cert.radius, ref.radius)
        np.testing.assert_array_equal(cert.prediction, m.predict(Kx))


def test_svm_above_c_max_points_to_the_milp():
    Kt, Kx, y = rbf_problem(5, 2, 2, 8)
    m = KernelSVM(C=30.0).fit(Kt, y, 2)
    assert not m.is_label_linear
    with pytest.raises(ValueError, match="labelcert_svm_milp"):
        m.certify(Kx)
    with pytest.raises(ValueError, match="labelcert_svm_milp"):
        m.label_weights(Kx)
    with pytest.raises(TypeError):
        KernelSVM().fit(Kt, y, 2).certify(Kx, method="milp")  # the MILP lives in kernelcert.exact only


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad,exc,msg", [
    (lambda K, y, Kx: KernelRegression().fit(K[:, :-1], y, 3), ValueError, "square"),
    (lambda K, y, Kx: KernelRegression().fit(K + np.triu(np.ones_like(K)), y, 3), ValueError, "symmetric"),
    (lambda K, y, Kx: KernelSVM().fit(np.where(np.eye(len(K)) > 0, np.nan, K), y, 3), ValueError, "NaN"),
    (lambda K, y, Kx: KernelRegression().fit(np.where(np.eye(len(K)) > 0, np.inf, K), y, 3), ValueError, "NaN"),
    (lambda K, y, Kx: KernelRegression().fit(K, y + 5, 3), ValueError, "label"),
    (lambda K, y, Kx: KernelRegression().fit(K, -y - 1, 3), ValueError, "0..K-1"),
    (lambda K, y, Kx: KernelRegression().fit(K, y, 1), ValueError, "at least 2"),
    (lambda K, y, Kx: KernelSVM().fit(K, y, 2), ValueError, "num_classes=2"),
    (lambda K, y, Kx: KernelSVM().fit(K, y), TypeError, "num_classes"),
    (lambda K, y, Kx: KernelRegression().fit(K, y, None), ValueError, "num_classes is required"),
    (lambda K, y, Kx: KernelRegression().fit(K, y + 0.5, 3), ValueError, "integer"),
    (lambda K, y, Kx: KernelRegression().fit(K, y[:-1], 3), ValueError, "length"),
    (lambda K, y, Kx: KernelRegression().fit(K, y[:, None], 3), ValueError, "1-D"),
    (lambda K, y, Kx: KernelRegression().fit(K, y, 3).predict(np.ones((2, 3))), ValueError, "columns"),
    (lambda K, y, Kx: KernelSVM().fit(K, y, 3).decision_function(Kx[:, :-1]), ValueError, "columns"),
    (lambda K, y, Kx: KernelSVM().fit(K, y, 3).predict(Kx[0]), ValueError, "dimensions"),
    (lambda K, y, Kx: KernelSVM().fit(K, y, 3).predict(np.where(Kx > 0.5, np.nan, Kx)), ValueError, "NaN"),
    (lambda K, y, Kx: KernelSVM().predict(Kx), NotFittedError, "not fitted"),
    (lambda K, y, Kx: KernelRegression().label_weights(Kx), NotFittedError, "not fitted"),
    (lambda K, y, Kx: KernelSVM().C_max, NotFittedError, "not fitted"),
    (lambda K, y, Kx: KernelSVM().fit(K - 2 * np.eye(len(K)), y, 3), ValueError, "positive semidefinite"),
    (lambda K, y, Kx: KernelSVM().fit(np.zeros_like(K), y, 3), ValueError, "all zeros"),
    (lambda K, y, Kx: KernelSVM(C=0.0).fit(K, y, 3), ValueError, "C"),
    (lambda K, y, Kx: KernelSVM(C=-1.0).fit(K, y, 3), ValueError, "C"),
    (lambda K, y, Kx: KernelSVM(C=np.nan).fit(K, y, 3), ValueError, "C"),
    (lambda K, y, Kx: KernelRegression(ridge=-1.0).fit(K, y, 3), ValueError, "ridge"),
    (lambda K, y, Kx: KernelRegression(train_time=0.0).fit(K, y, 3), ValueError, "train_time"),
    (lambda K, y, Kx: KernelRegression(learning_rate=0.0).fit(K, y, 3), ValueError, "learning_rate"),
    (lambda K, y, Kx: KernelRegression().fit(K.astype(str), y, 3), TypeError, "numeric"),
    (lambda K, y, Kx: solve_svm_dual(K, np.zeros(len(K)), 1.0), ValueError, "signs"),
])
def test_bad_input(bad, exc, msg):
    K, Kx, y = rbf_problem(10, 3, 3, 4)
    y = y.copy()
    y[:3] = [0, 1, 2]
    with pytest.raises(exc, match=msg):
        bad(K, y, Kx)


def test_validation_helpers():
    from kernelcert import _validation as v

    y, K = v.check_labels(np.array([0.0, 2.0, 1.0]))
    assert y.dtype == np.int64 and K == 3
    y2, K2 = v.check_labels([0, 1], 4, name="labels")
    assert K2 == 4 and list(y2) == [0, 1]
    with pytest.raises(ValueError, match="num_classes=2"):
        v.check_labels(np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="integer"):
        v.check_labels(np.array([True, False]))
    with pytest.raises(ValueError, match="integer"):
        v.check_labels([0, 1], 2.5)
    with pytest.raises(ValueError, match="symmetric"):
        v.check_gram(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        v.check_gram(np.zeros((0, 0)))
    assert v.check_gram(np.eye(2), name="G").shape == (2, 2)
    with pytest.raises(TypeError):
        v.check_gram("G", np.eye(2))  # one signature: the matrix first
    with pytest.raises(ValueError, match="a has 2, b has 3"):
        v.check_same_length(a=np.ones(2), b=[1, 2, 3])
    assert v.check_same_length(a=np.ones(3), b=3) == 3
    with pytest.raises(ValueError, match=">= 0"):
        v.check_int("max_flips", -1, minimum=0)
    with pytest.raises(TypeError, match="integer"):
        v.check_int("max_flips", True)
    with pytest.raises(ValueError, match="finite"):
        v.check_positive("C", np.inf)
    assert v.check_positive("t", np.inf, allow_inf=True) == np.inf
    with pytest.raises(ValueError, match="columns"):
        v.check_weights(np.ones((2, 3)), 4)
    with pytest.raises(TypeError, match="real"):
        v.as_float_array("x", np.ones(2, complex))


# --------------------------------------------------------------------------- scikit-learn conventions
@pytest.mark.parametrize("make", [lambda: KernelRegression(ridge=1e-3, train_time=2.0, learning_rate=0.5),
                                  lambda: KernelRegression(), lambda: KernelSVM(), lambda: KernelSVM(C=0.25)])
def test_sklearn_clone_params_and_fitted_state(make):
    Kt, Kx, y = rbf_problem(12, 4, 3, 2)
    Kt = Kt + 1e-2 * np.eye(12)
    model = make()
    params = model.get_params()
    assert set(params) == ({"C"} if isinstance(model, KernelSVM) else {"ridge", "train_time", "learning_rate"})
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    with pytest.raises(NotFittedError, match="not fitted"):
        model.predict(Kx)
    model.fit(Kt, y, 3)
    check_is_fitted(model)
    twin = clone(model)
    assert type(twin) is type(model) and twin.get_params() == params
    with pytest.raises(NotFittedError):
        check_is_fitted(twin)  # clone copies parameters, not fitted state
    np.testing.assert_array_equal(twin.fit(Kt, y, 3).predict(Kx), model.predict(Kx))
    # set_params changes a parameter; validation happens at fit
    if isinstance(model, KernelSVM):
        model.set_params(C=-1.0)
        with pytest.raises(ValueError, match="C"):
            model.fit(Kt, y, 3)
        assert not model.__sklearn_is_fitted__()  # a failed re-fit leaves no usable model
    else:
        model.set_params(ridge=0.5)
        assert model.ridge == 0.5
        model.fit(Kt, y, 3)
        np.testing.assert_allclose(model.decision_function(Kx),
                                   KernelRegression(0.5, params["train_time"], params["learning_rate"])
                                   .fit(Kt, y, 3).decision_function(Kx))


def test_fitted_attributes_have_a_trailing_underscore():
    Kt, Kx, y = rbf_problem(10, 3, 3, 5)
    svm = KernelSVM().fit(Kt, y, 3)
    assert svm.C_max == svm.C_max_ and svm.C_ == svm.C_max_
    with pytest.raises(AttributeError):
        svm.C_max = 1.0  # read-only alias
    public = {k for k in vars(svm) if not k.startswith("_")}
    assert public == {"C", "C_", "C_max_", "label_linear_", "alpha_", "kkt_residual_", "labels_", "num_classes_",
                      "n_train_"}
    reg = KernelRegression(ridge=1e-3).fit(Kt, y, 3)
    public = {k for k in vars(reg) if not k.startswith("_")}
    assert public == {"ridge", "train_time", "learning_rate", "eig_lower_", "weight_error_factor_", "labels_",
                      "num_classes_", "n_train_"}
    assert 0 < reg.eig_lower_ <= np.linalg.eigvalsh(Kt + 1e-3 * np.eye(10))[0]


def test_weight_error_bound_against_a_rational_solve():
    """The reported bound covers the difference to the exact (rational) solution, also near singularity."""
    for seed, ridge in ((0, 0.0), (1, 1e-8), (2, 1e-3)):
        Kt, Kx, y = rbf_problem(7, 3, 2, seed)
        Kt = Kt.copy()
        m = KernelRegression(ridge=ridge).fit(Kt, y, 2)
        W, err = m.label_weights(Kx, return_error=True)
        A = [[Fraction(float(v)) + (Fraction(ridge) if i == j else 0) for j, v in enumerate(row)]
             for i, row in enumerate(Kt)]
        for i in range(len(Kx)):
            exact = _rational_solve(A, [Fraction(float(v)) for v in Kx[i]])
            true_err = sum(abs(Fraction(float(W[i, j])) - exact[j]) for j in range(7))
            assert true_err <= Fraction(float(err[i]))


def _rational_solve(A, b):
    n = len(b)
    M = [row[:] + [b[i]] for i, row in enumerate(A)]
    for c in range(n):
        piv = next(r for r in range(c, n) if M[r][c] != 0)
        M[c], M[piv] = M[piv], M[c]
        inv = 1 / M[c][c]
        M[c] = [v * inv for v in M[c]]
        for r in range(n):
            if r != c and M[r][c] != 0:
                f = M[r][c]
                M[r] = [a - f * bb for a, bb in zip(M[r], M[c])]
    return [M[r][n] for r in range(n)]
