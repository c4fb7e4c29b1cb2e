import numpy as np
import pytest
import scipy.linalg
from sklearn.kernel_ridge import KernelRidge

from kernelcert.learners import KernelRegression, KernelSVM, onehot, solve_svm_dual


def test_regression_matches_direct_solve_and_sklearn(gram_problem):
    K, Kx, y = gram_problem(30, 7, 3, 0)
    for ridge in (0.0, 0.1):
        m = KernelRegression(ridge=ridge).fit(K, y, 3)
        direct = Kx @ np.linalg.solve(K + ridge * np.eye(30), onehot(y, 3))
        np.testing.assert_allclose(m.decision_function(Kx), direct, rtol=1e-8, atol=1e-10)
    sk = KernelRidge(alpha=0.1, kernel="precomputed").fit(K, onehot(y, 3))
    np.testing.assert_allclose(KernelRegression(0.1).fit(K, y, 3).decision_function(Kx), sk.predict(Kx), rtol=1e-7)


def test_finite_time_regression(gram_problem):
    K, Kx, y = gram_problem(12, 4, 2, 1)
    t, lr, ridge = 0.7, 0.5, 0.05
    A = K + ridge * np.eye(12)
    ref = Kx @ np.linalg.solve(A, (np.eye(12) - scipy.linalg.expm(-lr * t * A))) @ onehot(y, 2)
    m = KernelRegression(ridge, train_time=t, learning_rate=lr).fit(K, y, 2)
    np.testing.assert_allclose(m.decision_function(Kx), ref, rtol=1e-8, atol=1e-12)
    long = KernelRegression(ridge, train_time=1e6).fit(K, y, 2).decision_function(Kx)
    np.testing.assert_allclose(long, KernelRegression(ridge).fit(K, y, 2).decision_function(Kx), rtol=1e-6)


def test_singular_gram_suggests_ridge():
    x = np.ones((3, 2))
    K = x @ x.T
    with pytest.raises(ValueError, match="ridge"):
        KernelRegression().fit(K, np.array([0, 1, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_svm_small_c_alpha_is_c_for_every_labelling(gram_problem, seed):
    K, Kx, y = gram_problem(15, 5, 3, seed)
    m = KernelSVM().fit(K, y, 3)
    assert m.C_max == pytest.approx(1 / np.abs(K).sum(1).max())
    rng = np.random.default_rng(seed)
    for C in (m.C_max, 0.5 * m.C_max):
        for _ in range(3):
            signs = rng.choice([-1.0, 1.0], size=15)
            np.testing.assert_allclose(solve_svm_dual(K, signs, C), C, rtol=1e-5)
    # label-linear predictions equal the real one-vs-rest SVM outputs' argmax
    np.testing.assert_array_equal(m.predict(Kx), np.argmax(m.decision_function(Kx), axis=1))


def test_svm_above_c_max_is_not_label_linear(gram_problem):
    K, Kx, y = gram_problem(15, 5, 2, 3)
    C = 50 * KernelSVM().fit(K, y).C_max
    m = KernelSVM(C).fit(K, y, 2)
    assert not np.allclose(m.alpha_, C)
    with pytest.raises(ValueError, match="C_max"):
        m.label_weights(Kx)
    with pytest.raises(ValueError, match="C_max"):
        m.certify(Kx)


@pytest.mark.parametrize("bad,msg", [
    (lambda K, y: KernelRegression().fit(K[:, :-1], y), "square"),
    (lambda K, y: KernelRegression().fit(K + np.triu(np.ones_like(K)), y), "symmetric"),
    (lambda K, y: KernelRegression().fit(np.where(np.eye(len(K)) > 0, np.nan, K), y), "NaN"),
    (lambda K, y: KernelRegression().fit(K, y + 5, 3), "label"),
    (lambda K, y: KernelRegression().fit(K, y[:-1]), "labels"),
    (lambda K, y: KernelRegression().fit(K, y).predict(np.ones((2, 3))), "columns"),
    (lambda K, y: KernelSVM().predict(K), "not fitted"),
])
def test_bad_input(gram_problem, bad, msg):
    K, _, y = gram_problem(10, 2, 3, 4)
    with pytest.raises(ValueError, match=msg):
        bad(K, y)
