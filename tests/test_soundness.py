"""Soundness at the edges of floating point: certify, pairwise_costs and the learners against an
exact-rational oracle (every relabelling enumerated, scores as fractions.Fraction).

The randomized suite draws a fresh seed on every run (set KERNELCERT_SOUNDNESS_SEED to replay one);
the seed is printed and named in every failure message. The weights are adversarial: exact ties,
integer and repeated values, zeros, negatives, magnitudes from 1e-300 to 1e308, decimal fractions
(0.1 + 0.2 vs 0.3), values one ulp apart, subnormals. Required: 0 unsound results, the radius equal
to the exact radius on every row, `exact` never claimed where a bound differs from the exact value.

Also the regression tests of the five defects of the soundness audit (overflow, ill-conditioned
weights, exact ties, one prediction, no guessed class count).
"""
import itertools
import os
import secrets
import warnings
from fractions import Fraction

import numpy as np
import pytest

from kernelcert.certificates import certify, certify_model, label_linear_prediction, pairwise_costs
from kernelcert.learners import KernelRegression, KernelSVM

SEED = int(os.environ.get("KERNELCERT_SOUNDNESS_SEED", secrets.randbits(32)))
print(f"test_soundness seed: {SEED} (replay with KERNELCERT_SOUNDNESS_SEED={SEED})")


# --------------------------------------------------------------------------- exact oracle
def exact_argmax(scores):
    """Index of the largest score, ties to the smaller index."""
    best = 0
    for k in range(1, len(scores)):
        if scores[k] > scores[best]:
            best = k
    return best


def exact_oracle(w_row, y, K):
    """(prediction, radius, class costs (K,), pairwise costs index (K, K), pairwise attacker (K, K))
    of one test point, by enumerating every relabelling with exact rational scores."""
    n = len(y)
    wq = [Fraction(float(v)) for v in w_row]
    costs = np.full(K, np.inf)
    P_index = np.full((K, K), np.inf)
    P_att = np.full((K, K), np.inf)
    np.fill_diagonal(P_index, 0)
    np.fill_diagonal(P_att, 0)
    for lab in itertools.product(range(K), repeat=n):
        s = [Fraction(0)] * K
        for j, k in enumerate(lab):
            s[k] += wq[j]
        d = sum(1 for j in range(n) if lab[j] != y[j])
        p = exact_argmax(s)
        costs[p] = min(costs[p], d)
        for a in range(K):
            for b in range(K):
                if a == b:
                    continue
                if s[b] > s[a] or (s[b] == s[a] and b < a):
                    P_index[a, b] = min(P_index[a, b], d)
                if s[b] >= s[a]:
                    P_att[a, b] = min(P_att[a, b], d)
    s0 = [sum((wq[j] for j in range(n) if y[j] == k), Fraction(0)) for k in range(K)]
    pred = exact_argmax(s0)
    other = np.delete(costs, pred)
    radius = int(other.min() - 1) if other.size and np.isfinite(other.min()) else n
    return pred, radius, costs, P_index, P_att


def exact_prediction_after(w_row, y, K, attack):
    lab = np.array(y).copy()
    for j, v in attack:
        assert v != y[j], "a witness may only contain real flips"
        lab[j] = v
    assert len({j for j, _ in attack}) == len(attack), "a sample is flipped at most once"
    s = [Fraction(0)] * K
    for j, k in enumerate(lab):
        s[k] += Fraction(float(w_row[j]))
    return exact_argmax(s)


# --------------------------------------------------------------------------- adversarial weights
KINDS = ["int", "repeated", "decimal", "magnitude", "ulp", "huge", "tiny", "mixed", "zeros"]


def adversarial_weights(rng, kind, t, n):
    if kind == "int":
        return rng.integers(-3, 4, size=(t, n)).astype(float)
    if kind == "repeated":
        vals = rng.normal(size=2)
        return rng.choice([vals[0], -vals[0], 2 * vals[0], vals[1], 0.0], size=(t, n))
    if kind == "decimal":
        return rng.choice([0.1, 0.2, 0.3, -0.1, -0.2, -0.3, 0.6, 0.7, 1.0], size=(t, n))
    if kind == "magnitude":
        return rng.choice([-1.0, 1.0], size=(t, n)) * 10.0 ** rng.uniform(-300, 300, size=(t, n))
    if kind == "ulp":
        x = rng.choice([1.0, 0.1, 3.0, 1e-300, 1e300], size=(t, 1))
        steps = rng.integers(-2, 3, size=(t, n))
        out = np.where(steps >= 0, 1.0, -1.0) * x
        for k in (1, 2):
            out = np.where(np.abs(steps) >= k, np.nextafter(out, np.copysign(np.inf, out)), out)
        return out
    if kind == "huge":
        return rng.choice([1e308, -1e308, 1.7e308, 8.988465674311579e307, 1.0, 0.0], size=(t, n))
    if kind == "tiny":
        return rng.choice([5e-324, -5e-324, 1e-320, 2.5e-308, -1e-310, 0.0], size=(t, n))
    if kind == "mixed":
        base = rng.choice([1e300, 1.0, 1e-300, 0.1, 0.3], size=(t, n))
        return rng.choice([-1.0, 1.0, 2.0], size=(t, n)) * base
    return rng.integers(-1, 2, size=(t, n)).astype(float) * (rng.random((t, n)) < 0.3)


def check_against_oracle(W, y, K, where):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warning may even occur
        cert = certify(W, y, K)
        fast = certify(W, y, K, class_bounds=False)
        P = pairwise_costs(W, y, K)
        Pa = pairwise_costs(W, y, K, tie="attacker")
        pred_fn = label_linear_prediction(W, y, K)
    n = len(y)
    for i in range(W.shape[0]):
        msg = f"{where}, row {i}: w={W[i].tolist()!r}, y={list(y)}, K={K}"
        pred, radius, costs, P_idx, P_att = exact_oracle(W[i], y, K)
        assert cert.prediction[i] == pred == pred_fn[i] == fast.prediction[i], msg
        assert cert.radius[i] == radius == fast.radius[i], msg
        assert cert.radius_exact[i] and fast.radius_exact[i], msg
        assert np.all(cert.cost_lower[i] <= costs), msg
        assert np.all(costs <= cert.cost_upper[i]), msg
        assert np.all(P[i] <= P_idx) and np.all(Pa[i] <= P_att), msg
        # radius mode: P(p, c) from the float core, a sound lower bound that is exact except where
        # sums of weights near the float64 limit are scaled (the radius itself is exact, checked above)
        assert np.all(fast.cost_lower[i] <= P_idx[pred]), msg
        if np.abs(W[i]).max(initial=0.0) < 2.0**1000:
            np.testing.assert_array_equal(fast.cost_lower[i], P_idx[pred], err_msg=msg)
        assert not cert.exact[i] or np.array_equal(cert.cost_lower[i], costs), msg
        if K == 2:
            np.testing.assert_array_equal(cert.cost_lower[i], costs, err_msg=msg)
            np.testing.assert_array_equal(cert.cost_upper[i], costs, err_msg=msg)
            assert cert.exact[i], msg
        if radius < n:
            att = cert.witness(i)
            assert len(att) == radius + 1, msg
            assert exact_prediction_after(W[i], y, K, att) != pred, msg
        for c in range(K):
            if c != pred and np.isfinite(cert.cost_upper[i, c]):
                att = cert.witness(i, target=c)
                assert len(att) == cert.cost_upper[i, c], msg
                assert exact_prediction_after(W[i], y, K, att) == c, msg


@pytest.mark.parametrize("kind", KINDS)
def test_randomized_soundness_against_exact_enumeration(kind):
    rng = np.random.default_rng([SEED, KINDS.index(kind)])
    for trial in range(12):
        n = int(rng.integers(1, 7))
        K = int(rng.integers(2, 4))
        W = adversarial_weights(rng, kind, 4, n)
        y = rng.integers(0, K, n)
        check_against_oracle(W, y, K, f"seed {SEED}, kind {kind}, trial {trial}")


def test_fixed_adversarial_cases():
    """Hand-picked rows (ties to either side, decimal near-ties, overflow, subnormals)."""
    cases = [
        ([[1.0, 1.0, -1.0, -1.0]], [0, 0, 1, 1], 2),      # two flips only tie: the tie goes to class 0
        ([[1.0, -1.0, 1.0, -1.0]], [1, 0, 1, 0], 2),      # the same, mirrored: the tie goes to the attacker
        ([[0.1, 0.2, 0.3]], [0, 0, 1], 2),                 # 0.1 + 0.2 > 0.3 in floats, = 0.30000000000000004
        ([[0.1, 0.2, 0.30000000000000004]], [0, 0, 1], 2),
        ([[1e308, 1e308, 1.0]], [0, 0, 1], 2),
        ([[1.7e308, -1.7e308, 1.7e308]], [0, 1, 2], 3),
        ([[5e-324, 5e-324, 1e-323]], [0, 0, 1], 2),
        ([[2.0, 1.0, 1.0, 1.0, 1.0]], [0, 1, 1, 2, 2], 3),
        ([[1.0, 1.0 + 2**-52, -1.0, -(1.0 + 2**-52)]], [0, 1, 0, 1], 2),
    ]
    for W, y, K in cases:
        check_against_oracle(np.array(W), np.array(y), K, f"case {W}")


# --------------------------------------------------------------------------- regression tests, items 1-5
def test_item1_overflow_is_not_read_as_no_attack():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = certify([[1e308, 1e308, 1.0]], [0, 0, 1], 2)
    assert cert.radius[0] == 0  # one flip (sample 0 or 1 to class 1) changes the prediction
    assert cert.cost_upper[0, 1] == 1 and cert.exact[0]
    assert exact_prediction_after([1e308, 1e308, 1.0], [0, 0, 1], 2, cert.witness(0)) == 1
    P = pairwise_costs([[1e308, 1e308, 1.0]], [0, 0, 1], 2)
    assert P[0, 0, 1] == 1
    np.testing.assert_array_equal(label_linear_prediction([[1e308, 1e308, 1.0], [-1e308, -1e308, 1.0]],
                                                          [0, 0, 1], 2), [0, 1])


def near_duplicate_problem():
    """Two near-duplicate training points: a Gram of condition ~1e9 that ridge=0 accepts."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 2))
    x[1] = x[0] + 3e-5
    xt = np.vstack([x[0] + 1e-3 * rng.normal(size=2) for _ in range(4)] + [rng.normal(size=(12, 2))])
    gram = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1))
    cross = np.exp(-((xt[:, None] - x[None]) ** 2).sum(-1))
    y = np.array([0, 1, 0, 1, 1, 0])
    return gram, cross, y


def test_item2_weight_error_of_an_ill_conditioned_solve_is_covered():
    gram, cross, y = near_duplicate_problem()
    assert np.linalg.cond(gram) > 1e8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fit warns about the conditioning
        model = KernelRegression().fit(gram, y, 2)
    W, err = model.label_weights(cross, return_error=True)
    # the exact model's weights (rational solve of the float Gram) are within the reported bound
    A = [[Fraction(float(v)) for v in row] for row in gram]
    for i in range(cross.shape[0]):
        exact_w = solve_rational(A, [Fraction(float(v)) for v in cross[i]])
        true_err = sum(abs(Fraction(float(W[i, j])) - exact_w[j]) for j in range(len(y)))
        assert true_err <= Fraction(float(err[i])), (i, float(true_err), err[i])
    cert = model.certify(cross)
    assert np.all(cert.tolerance >= err)
    # sound for the exact model: no radius above the exact model's radius
    for i in range(cross.shape[0]):
        exact_w = solve_rational(A, [Fraction(float(v)) for v in cross[i]])
        _, radius, _, _, _ = exact_oracle_fraction(exact_w, y, 2)
        assert cert.radius[i] <= radius
        assert not cert.exact[i] or cert.radius[i] == radius


def solve_rational(A, b):
    """x = A^-1 b in exact rational arithmetic (Gauss-Jordan on Fractions)."""
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


def exact_oracle_fraction(wq, y, K):
    """exact_oracle for weights already given as Fractions."""
    n = len(y)
    costs = np.full(K, np.inf)
    for lab in itertools.product(range(K), repeat=n):
        s = [Fraction(0)] * K
        for j, k in enumerate(lab):
            s[k] += wq[j]
        d = sum(1 for j in range(n) if lab[j] != y[j])
        p = exact_argmax(s)
        costs[p] = min(costs[p], d)
    s0 = [sum((wq[j] for j in range(n) if y[j] == k), Fraction(0)) for k in range(K)]
    pred = exact_argmax(s0)
    other = np.delete(costs, pred)
    return pred, int(other.min() - 1) if np.isfinite(other.min()) else n, costs, None, None


def test_item2_tolerance_covers_perturbed_weights():
    """Weights known only up to an error (here: integer weights with exact ties, perturbed by 1e-9):
    without the tolerance the perturbation breaks the ties and the radius of the perturbed weights
    exceeds the exact model's; with atol >= sum_j |error_j| every bound holds for the exact model."""
    rng = np.random.default_rng([SEED, 99])
    over = 0
    for trial in range(40):
        n, K = int(rng.integers(2, 7)), int(rng.integers(2, 4))
        W_true = rng.integers(-2, 3, size=(3, n)).astype(float)
        y = rng.integers(0, K, n)
        # perturb towards the exact prediction: ties an attack only reaches now fail for the perturbed weights
        favoured = np.array([exact_oracle(W_true[i], y, K)[0] for i in range(3)])
        delta = np.where(y[None, :] == favoured[:, None], 1e-9, -1e-9)
        W = W_true + delta
        atol = np.abs(W - W_true).sum(axis=1) * (1 + 1e-12)
        cert = certify(W, y, K, atol=atol)
        plain = certify(W, y, K)
        for i in range(3):
            pred, radius, costs, _, _ = exact_oracle(W_true[i], y, K)
            msg = f"seed {SEED}, trial {trial}, row {i}: w*={W_true[i].tolist()}, w={W[i].tolist()}, y={list(y)}"
            if pred != cert.prediction[i]:
                # the exact model predicts another class within the tolerance: nothing is claimed
                assert cert.radius[i] == 0 and not cert.radius_exact[i] and not cert.exact[i], msg
                continue
            assert cert.radius[i] <= radius, msg
            assert np.all(cert.cost_lower[i] <= costs) and np.all(cert.cost_upper[i] >= costs), msg
            assert not cert.exact[i] or cert.radius[i] == radius, msg
            over += plain.radius[i] > radius
    assert over > 0, "the perturbation never mattered: the test would not catch a missing tolerance"


def test_item2_singular_fit_is_refused_with_a_safe_ridge():
    x = np.ones((4, 4))
    with pytest.raises(ValueError, match="ridge"):
        KernelRegression().fit(x, np.array([0, 1, 0, 1]), 2)


def test_item3_exact_ties_follow_the_tie_rule():
    # s = (2, -2): two flips reach an exact tie, which class 0 keeps; three are needed
    W, y = np.array([[1.0, 1.0, -1.0, -1.0]]), np.array([0, 0, 1, 1])
    cert = certify(W, y, 2)
    assert cert.radius[0] == 2 and cert.exact[0] and cert.radius_exact[0]
    assert cert.cost_lower[0, 1] == cert.cost_upper[0, 1] == 3
    assert len(cert.witness(0)) == 3
    assert pairwise_costs(W, y, 2)[0, 0, 1] == 3
    assert pairwise_costs(W, y, 2, tie="attacker")[0, 0, 1] == 2
    # mirrored: class 1 is predicted, a tie goes to class 0 = the attacker's class: two flips suffice
    cert = certify(-W, y, 2)
    assert cert.prediction[0] == 1 and cert.radius[0] == 1 and cert.exact[0]
    # integer weights with many exact ties, three classes
    W = np.array([[2.0, 1.0, 1.0, 1.0, 1.0]])
    y = np.array([0, 1, 1, 2, 2])
    pred, radius, costs, _, _ = exact_oracle(W[0], y, 3)
    cert = certify(W, y, 3)
    assert (cert.prediction[0], cert.radius[0]) == (pred, radius)
    assert np.all(cert.cost_lower[0] <= costs) and np.all(costs <= cert.cost_upper[0])


def test_item4_one_prediction_everywhere(gram_problem):
    # a rounding-level tie: float sums say class 1, the exact sums say class 0 (a tie, smaller index)
    W = np.array([[0.1, 0.2, 0.30000000000000004, 0.0]])
    y = np.array([0, 0, 1, 1])
    assert np.argmax(W @ np.eye(2)[y]) == 0  # 0.1 + 0.2 rounds to 0.30000000000000004: a float tie
    exact = exact_oracle(W[0], y, 2)[0]
    assert exact == 1  # exactly 0.3000000000000000166 < 0.3000000000000000444
    assert certify(W, y, 2).prediction[0] == label_linear_prediction(W, y, 2)[0] == exact
    # the learners predict with the same definition
    Kt, Kx, yy = gram_problem(8, 5, 3, 2)
    for model in (KernelSVM(), KernelRegression(ridge=1e-2)):
        model.fit(Kt, yy, 3)
        cert = model.certify(Kx)
        np.testing.assert_array_equal(model.predict(Kx), cert.prediction)
        np.testing.assert_array_equal(model.predict(Kx), label_linear_prediction(model.label_weights(Kx), yy, 3))
    # the SVM at C_max on the same rounding-level tie: its label weights are the kernel row itself
    svm = KernelSVM().fit(np.eye(3), np.array([0, 0, 1]), 2)
    Kx = np.array([[0.1, 0.2, 0.30000000000000004]])
    assert np.argmax(Kx @ np.eye(2)[[0, 0, 1]]) == 0  # what a float matrix product says
    assert svm.predict(Kx)[0] == svm.certify(Kx).prediction[0] == 1


def test_item5_num_classes_is_required():
    W, y = np.array([[1.0, -1.0]]), np.array([0, 1])
    for call in (lambda: certify(W, y), lambda: pairwise_costs(W, y),
                 lambda: label_linear_prediction(W, y),
                 lambda: KernelRegression(ridge=0.1).fit(np.eye(2), y),
                 lambda: KernelSVM().fit(np.eye(2), y)):
        with pytest.raises(TypeError):
            call()
    for call in (lambda: certify(W, y, None), lambda: KernelSVM().fit(np.eye(2), y, None)):
        with pytest.raises(ValueError, match="num_classes"):
            call()
    # a training set without the highest class: attacks towards it count
    W, y = np.array([[0.5, 0.4, -0.2]]), np.array([0, 1, 0])
    cert = certify(W, y, 3)
    pred, radius, costs, _, _ = exact_oracle(W[0], y, 3)
    assert cert.radius[0] == radius and np.isfinite(costs[2])
    assert np.all(cert.cost_lower[0] <= costs) and np.all(costs <= cert.cost_upper[0])


def test_certify_model_passes_the_weight_error(gram_problem):
    Kt, Kx, y = gram_problem(8, 4, 3, 5)
    model = KernelRegression(ridge=1e-3).fit(Kt, y, 3)
    W, err = model.label_weights(Kx, return_error=True)
    assert np.all(err > 0) and np.all(err < 1e-6 * np.abs(W).sum(axis=1))
    cert = certify_model(model, Kx)
    np.testing.assert_array_equal(cert.tolerance, model.certify(Kx).tolerance)
    assert np.all(cert.tolerance >= err)
    svm = KernelSVM().fit(Kt, y, 3)
    assert np.all(svm.label_weights(Kx, return_error=True)[1] == 0)
