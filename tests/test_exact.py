"""Exact oracles against each other: enumeration, retraining, the class-cost MILP and the LabelCert MILP.

The LabelCert tests marked "fresh" draw a new seed on every run (set KERNELCERT_SOUNDNESS_SEED to
replay one); the seed is printed and named in their failure messages."""
import itertools
import os
import secrets

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kernelcert.exact as exact
from kernelcert.exact import (
    BruteForceResult,
    brute_force_certificate,
    brute_force_retrain,
    labelcert_svm_milp,
    milp_class_costs,
)
from kernelcert.learners import KernelRegression, KernelSVM
from problems import rbf_gram, rbf_problem

SEED = int(os.environ.get("KERNELCERT_SOUNDNESS_SEED", secrets.randbits(32)))
print(f"test_exact seed: {SEED} (replay with KERNELCERT_SOUNDNESS_SEED={SEED})")


def naive_enumeration(w, y, K, max_flips=None):
    """Plain loops over every labelling: scores as explicit sums, smaller index wins ties."""
    t, n = w.shape
    budget = n if max_flips is None else min(max_flips, n)
    costs = np.full((t, K), np.inf)
    for lab in itertools.product(range(K), repeat=n):
        lab = np.array(lab)
        d = int((lab != y).sum())
        if d > budget:
            continue
        for i in range(t):
            s = [sum(w[i, j] for j in range(n) if lab[j] == k) for k in range(K)]
            best = 0
            for k in range(1, K):
                if s[k] > s[best]:
                    best = k
            costs[i, best] = min(costs[i, best], d)
    pred = np.argmin(costs, axis=1)  # cost 0 only at the clean prediction
    other = costs.copy()
    other[np.arange(t), pred] = np.inf
    radius = np.where(np.isfinite(other.min(1)), other.min(1) - 1, budget)
    return pred, radius, costs


tiny = st.tuples(st.integers(1, 6), st.integers(2, 3), st.integers(0, 2**31))


@settings(max_examples=40, deadline=None)
@given(tiny, st.sampled_from(["normal", "integer"]), st.one_of(st.none(), st.integers(0, 4)))
def test_brute_force_certificate_matches_naive_enumeration(p, kind, max_flips):
    n, K, seed = p
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, n)) if kind == "normal" else rng.integers(-2, 3, size=(3, n)).astype(float)
    y = rng.integers(0, K, n)
    res = brute_force_certificate(w, y, K, max_flips=max_flips)
    pred, radius, costs = naive_enumeration(w, y, K, max_flips)
    np.testing.assert_array_equal(res.prediction, pred)
    np.testing.assert_array_equal(res.radius, radius)
    np.testing.assert_array_equal(res.class_costs, costs)
    assert res.max_flips == (n if max_flips is None else min(max_flips, n))
    r, c = res  # unpacks as (radius, class_costs)
    assert r is res.radius and c is res.class_costs


@settings(max_examples=12, deadline=None)
@given(st.integers(2, 6), st.integers(2, 3), st.integers(0, 2**31), st.sampled_from([None, 0.5]))
def test_brute_force_certificate_equals_retraining_regression(n, K, seed, train_time):
    Kt, Kx, y = rbf_problem(n, 4, K, seed)

    def make():
        return KernelRegression(ridge=1e-2, train_time=train_time)

    model = make().fit(Kt, y, K)
    a = brute_force_certificate(model.label_weights(Kx), y, K)
    b = brute_force_retrain(lambda yy: make().fit(Kt, yy, K).predict(Kx), y, K)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    np.testing.assert_array_equal(a.radius, b.radius)
    np.testing.assert_array_equal(a.class_costs, b.class_costs)


def test_conventions_unreachable_and_budget():
    y = np.array([0, 1, 1, 0])
    res = brute_force_certificate(np.zeros((2, 4)), y, 3)  # all scores tie forever: class 0 always
    np.testing.assert_array_equal(res.radius, [4, 4])
    np.testing.assert_array_equal(res.class_costs, [[0, np.inf, np.inf]] * 2)
    w = np.array([[1.0, -1.0, -1.0, 1.0]])  # class 0 leads by 4; each flip of a 0 to 1 gains 2
    res = brute_force_certificate(w, y, 2, max_flips=1)
    assert res.radius[0] == 1 and res.max_flips == 1 and np.isinf(res.class_costs[0, 1])
    res = brute_force_certificate(w, y, 2)
    assert res.radius[0] == 2 and res.class_costs[0, 1] == 3  # a tie after 2 flips: class 0 keeps it
    res = brute_force_retrain(lambda yy: np.array([int(yy.sum() >= 3)]), y, 2, max_flips=3)
    assert res.radius[0] == 0 and res.class_costs[0, 1] == 1


def test_brute_force_input_errors():
    with pytest.raises(ValueError, match="columns"):
        brute_force_certificate(np.ones((2, 3)), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="max_flips"):
        brute_force_certificate(np.ones((1, 2)), np.array([0, 1]), 2, max_flips=-1)
    with pytest.raises(ValueError, match="limit"):
        brute_force_certificate(np.ones((1, 30)), np.zeros(30, int), 3)
    with pytest.raises(ValueError, match="NaN"):
        brute_force_certificate(np.array([[np.nan, 1.0]]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="fit_predict"):
        brute_force_retrain(lambda yy: np.array([5]), np.array([0, 1]), 2)
    with pytest.raises(TypeError, match="callable"):
        brute_force_retrain(None, np.array([0, 1]), 2)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(2, 3), st.integers(0, 2**31), st.sampled_from(["normal", "integer"]))
def test_milp_class_costs_equal_brute_force(n, K, seed, kind):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, n)) if kind == "normal" else rng.integers(-2, 3, size=(2, n)).astype(float)
    y = rng.integers(0, K, n)
    np.testing.assert_array_equal(milp_class_costs(w, y, K), brute_force_certificate(w, y, K).class_costs)


def test_milp_class_costs_with_mixed_magnitudes():
    # weights spanning 1e-12 .. 1: tiny weights only decide near ties, which the MILP may count as ties;
    # every finite value is a verified attack, so the MILP never under-estimates, and it is usually exact
    rng = np.random.default_rng(12)
    equal = 0
    for _ in range(12):
        n, K = 6, 3
        w = rng.normal(size=(2, n)) * 10.0 ** rng.uniform(-12, 0, size=(2, n))
        y = rng.integers(0, K, n)
        got, ref = milp_class_costs(w, y, K), brute_force_certificate(w, y, K).class_costs
        assert np.all(got >= ref)
        equal += int(np.array_equal(got, ref))
    assert equal >= 9


def test_milp_class_costs_targets_and_four_classes():
    rng = np.random.default_rng(11)
    w, y = rng.normal(size=(2, 7)), rng.integers(0, 4, 7)
    bf = brute_force_certificate(w, y, 4).class_costs
    part = milp_class_costs(w, y, 4, targets=[1])
    np.testing.assert_array_equal(part[:, 1], bf[:, 1])
    pred = np.argmax(w @ np.eye(4)[y], axis=1)
    for i in range(2):
        for c in (0, 2, 3):
            assert part[i, c] == 0 if c == pred[i] else np.isnan(part[i, c])
    with pytest.raises(ValueError, match="target"):
        milp_class_costs(w, y, 4, targets=[4])


def _svm_oracle(Kt, Kx, y, K, C, max_flips):
    return brute_force_retrain(lambda yy: KernelSVM(C).fit(Kt, yy, K).predict(Kx), y, K, max_flips=max_flips)


def cluster_problem(n, t, K, seed, gamma):
    """Labels = cluster index; large gamma gives kernel entries down to 1e-40 (a numerically hard MILP)."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(K, 2))
    y = np.arange(n) % K
    x = centres[y] + rng.normal(size=(n, 2))
    xt = centres[rng.integers(0, K, t)] + 0.5 * rng.normal(size=(t, 2))
    return rbf_gram(x, x, gamma), rbf_gram(xt, x, gamma), y


@pytest.mark.parametrize("exhaustive_limit", [0, 20_000])  # the MILP alone; retraining small relabellings first
@pytest.mark.parametrize("n,K,factor,seed,gamma", [
    (6, 2, 1.0, 1, 0.3), (6, 3, 0.5, 149, 3.0), (6, 3, 0.5, 7, 0.3), (6, 2, 20.0, 2, 1.0), (6, 2, 10.0, 1, 0.3),
    (6, 3, 5.0, 4, 1.0), (10, 2, 2.0, 2, 0.1),
])
def test_labelcert_equals_svm_retraining(n, K, factor, seed, gamma, exhaustive_limit):
    Kt, Kx, y = cluster_problem(n, 3, K, seed, gamma)
    C = factor * KernelSVM().fit(Kt, y, K).C_max
    if factor > 1:
        assert np.any(KernelSVM(C).fit(Kt, y, K).alpha_ < C * (1 - 1e-6)), "pick a problem outside the small-C regime"
    budget = 3
    lc = labelcert_svm_milp(Kt, y, Kx, C, K, max_flips=budget, exhaustive_limit=exhaustive_limit)
    if exhaustive_limit == 0:
        assert not any("retrained" in st for st in lc.status)
    bf = _svm_oracle(Kt, Kx, y, K, C, budget)
    assert lc.exact.all()
    np.testing.assert_array_equal(lc.prediction, bf.prediction)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    np.testing.assert_array_equal(np.asarray(lc), bf.radius)
    if factor <= 1:  # label-linear: LabelCert, ScaLabelCert and enumeration of W = K_test_train agree
        from kernelcert.certificates import certify

        np.testing.assert_array_equal(np.minimum(certify(Kx, y, K).radius, budget), lc.radius)
        np.testing.assert_array_equal(brute_force_certificate(Kx, y, K, max_flips=budget).radius, lc.radius)
    for i in range(len(Kx)):
        if lc.radius[i] < budget:  # the attack is verified and of size radius + 1
            lab = lc.attacks[i]
            assert (lab != y).sum() == lc.radius[i] + 1
            assert KernelSVM(C).fit(Kt, lab, K).predict(Kx[i:i + 1])[0] != lc.prediction[i]


@pytest.mark.parametrize("seed", [0, 3])
def test_labelcert_greedy_upper_bound_does_not_change_radii(monkeypatch, seed):
    """Above C_max the verified greedy attack bounds the MILP's budget; radii equal those of the plain
    MILP and of retraining on every relabelling, and every reported attack re-verifies."""
    Kt, Kx, y = cluster_problem(8, 4, 2, seed, 0.3)
    C = 4.0 * KernelSVM().fit(Kt, y, 2).C_max
    lc = labelcert_svm_milp(Kt, y, Kx, C, 2, max_flips=4, progress=True)
    assert any("greedy" in s for s in lc.status)
    bf = _svm_oracle(Kt, Kx, y, 2, C, 4)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    assert lc.exact.all() and not lc.stopped_early.any()
    for i, lab in enumerate(lc.attacks):
        if lab is not None:
            assert (lab != y).sum() == lc.radius_upper[i] + 1
            assert KernelSVM(C).fit(Kt, lab, 2).predict(Kx[i:i + 1])[0] != lc.prediction[i]
    monkeypatch.setattr(exact, "_greedy_svm_attack", lambda *a, **k: None)
    plain = labelcert_svm_milp(Kt, y, Kx, C, 2, max_flips=4, exhaustive_limit=0)
    np.testing.assert_array_equal(plain.radius, lc.radius)


@pytest.mark.parametrize("K", [2, 3])
def test_labelcert_with_duplicated_samples(K):
    """Repeated training points: the Gram matrix is singular (no certified fast retraining: the MILP
    runs) and the duplicates' symmetry rows are active; radii equal retraining on every relabelling."""
    Kt, Kx, y = cluster_problem(5, 3, K, 11, 0.5)
    idx = np.array([0, 1, 2, 3, 4, 0, 1])  # samples 0 and 1 twice, same labels
    Kt, Kx, y = Kt[np.ix_(idx, idx)], Kx[:, idx], y[idx]
    C = 3.0 * KernelSVM().fit(Kt, y, K).C_max
    G, _ = exact._clean(C * Kt)
    assert exact._duplicate_pairs(G, Kx[0] / np.abs(Kx[0]).max(), y) == [(0, 5), (1, 6)]
    assert not exact._Retrainer(Kt, y, K, C).usable
    lc = labelcert_svm_milp(Kt, y, Kx, C, K, max_flips=3)
    bf = _svm_oracle(Kt, Kx, y, K, C, 3)
    np.testing.assert_array_equal(lc.prediction, bf.prediction)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    assert lc.exact.all()


def test_tight_big_m_holds_at_every_kkt_point():
    """u_i, v_i of the KKT conditions, computed from the exact duals of random relabellings, never exceed
    the per-sample big-M (which is below LabelCert's C sum_j |K_ij| -+ 1)."""
    rng = np.random.default_rng(5)
    Kt, _, y = cluster_problem(9, 1, 2, 3, 0.2)
    C = 4.0 * KernelSVM().fit(Kt, y, 2).C_max
    G, eps = exact._clean(C * Kt)
    Mu, Mv = exact._tight_big_m(G, eps)
    row = np.abs(C * Kt).sum(axis=1)
    assert np.all(Mu <= np.maximum(0, row - 1) + 1e-12) and np.all(Mv <= row + 1 + 1e-12)
    assert np.any(Mv < row + 1 - 1e-3)  # strictly tighter somewhere
    for _ in range(30):
        signs = rng.choice([-1.0, 1.0], len(y))
        b = exact.solve_svm_dual(Kt, signs, C) / C
        r = signs * (G @ (signs * b)) - 1.0  # u - v
        assert np.all(np.maximum(r, 0) <= Mu + 1e-7) and np.all(np.maximum(-r, 0) <= Mv + 1e-7)


def test_labelcert_exact_tie_after_one_flip_is_no_attack(monkeypatch):
    """Training points -2, -1, 1, 2 (labels 0, 0, 1, 0) and a test point at 0: flipping the point at 2
    makes the labelling symmetric and f(0) = 0 in exact arithmetic (a tie, which keeps class 0; in
    floating point either side). The fast retraining cannot decide such a tie (it is within its
    error bound) and leaves it to the MILP; the radius equals retraining on every relabelling."""
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 0])
    Kt, Kx = rbf_gram(x, x, 0.3), rbf_gram(np.zeros((1, 1)), x, 0.3)
    C = 3.0 * KernelSVM().fit(Kt, y, 2).C_max
    retrain = exact._Retrainer(Kt, y, 2, C)
    assert retrain.usable
    tie = y.copy()
    tie[3] = 1
    assert KernelSVM(C).fit(Kt, y, 2).predict(Kx)[0] == 0
    assert retrain.decide(tie, Kx[0], 0) == 0
    bf = _svm_oracle(Kt, Kx, y, 2, C, 4)
    lc = labelcert_svm_milp(Kt, y, Kx, C, 2)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    assert lc.exact.all()
    monkeypatch.setattr(exact, "_greedy_svm_attack", lambda *a, **k: None)  # the tie reaches the enumeration
    lc = labelcert_svm_milp(Kt, y, Kx, C, 2)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    assert lc.exact.all()
    assert lc.status[0].startswith("no relabelling of <= 0 samples changes the prediction")  # then the MILP


def test_exhaustive_retraining_respects_its_limit_and_finds_the_smallest_attack():
    Kt, Kx, y = cluster_problem(8, 2, 2, 3, 0.3)
    C = 4.0 * KernelSVM().fit(Kt, y, 2).C_max
    retrain = exact._Retrainer(Kt, y, 2, C)
    bf = _svm_oracle(Kt, Kx, y, 2, C, 8)
    p = KernelSVM(C).fit(Kt, y, 2).predict(Kx)
    for i in range(len(Kx)):
        excluded, attack = exact._exhaustive_small_attacks(retrain, y, Kx[i], int(p[i]), 8, 10**6)
        assert excluded == bf.radius[i]
        if attack is not None:
            assert (attack != y).sum() == bf.radius[i] + 1
        excluded, _ = exact._exhaustive_small_attacks(retrain, y, Kx[i], int(p[i]), 8, 8)  # only size 1 fits
        assert excluded <= 1


def test_labelcert_equals_brute_force_on_label_linear_ties():
    # K_train = I (C_max = 1): the SVM is the label-linear vote with W = K_test_train; integer rows tie often
    rng = np.random.default_rng(3)
    n, K = 5, 3
    Kt = np.eye(n)
    Kx = rng.integers(-1, 3, size=(4, n)).astype(float)
    y = rng.integers(0, K, n)
    lc = labelcert_svm_milp(Kt, y, Kx, None, K)
    bf = brute_force_certificate(Kx, y, K)
    assert lc.C == lc.C_max == KernelSVM().fit(Kt, y, K).C_max
    np.testing.assert_array_equal(lc.prediction, bf.prediction)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    assert lc.exact.all()


def test_labelcert_time_limit_is_flagged_not_exact(monkeypatch):
    Kt, Kx, y = rbf_problem(5, 2, 2, 5)

    monkeypatch.setattr(exact, "_solve_highs_model", lambda model: "time_limit")
    monkeypatch.setattr(exact._AttackMilp, "dual_bound", lambda self: 1.7)
    monkeypatch.setattr(exact, "_greedy_svm_attack", lambda *a, **k: None)  # no upper bound either
    lc = labelcert_svm_milp(Kt, y, Kx, 10.0, 2, time_limit=1.0, exhaustive_limit=0)  # straight to the MILP
    assert not lc.exact.any() and lc.stopped_early.all()
    np.testing.assert_array_equal(lc.radius, [1, 1])  # ceil(1.7) - 1: a sound lower bound
    np.testing.assert_array_equal(lc.radius_upper, [5, 5])
    assert all(a is None for a in lc.attacks)


def test_labelcert_input_errors():
    Kt, Kx, y = rbf_problem(4, 2, 2, 6)
    with pytest.raises(ValueError, match="columns"):
        labelcert_svm_milp(Kt, y, Kx[:, :-1], 1.0, 2)
    with pytest.raises(ValueError, match="length"):
        labelcert_svm_milp(Kt, y[:-1], Kx, 1.0, 2)
    with pytest.raises(ValueError, match="margin"):
        labelcert_svm_milp(Kt, y, Kx, 1.0, 2, margin=0.5)
    with pytest.raises(ValueError, match="C"):
        labelcert_svm_milp(Kt, y, Kx, -1.0, 2)
    res = labelcert_svm_milp(Kt, y, Kx, 1.0, 2, max_flips=0)
    np.testing.assert_array_equal(res.radius, [0, 0])
    assert isinstance(brute_force_certificate(Kx, y, 2), BruteForceResult)


# --------------------------------------------------------------------------- fast retraining (fresh seeds)
def _box_qp_reference(H, rng):
    """The optimum of min (1/2) b'Hb - 1'b on [0, 1]^n by `learners._polish_box_qp` from an
    interior-point start (cvxpy/Clarabel through `solve_svm_dual` on a factor of H)."""
    from kernelcert.learners import _kkt_residual

    L = np.linalg.cholesky(H)
    b = exact.solve_svm_dual(L @ L.T, np.ones(len(H)), 1.0)  # H = L L': the dual of that Gram at C = 1
    assert _kkt_residual(H, b) < 1e-7
    return b


@pytest.mark.parametrize("case", range(4))
def test_batch_box_qp_finds_the_unique_optimum_from_any_start(case):
    """Fresh random positive definite problems (some nearly singular), starts at the optimum of a
    neighbouring problem, at random vertices and at random interior points: every converged row is
    the optimum (KKT residual below 1e-9 relative, equal to the interior-point solution)."""
    rng = np.random.default_rng([SEED, case])
    m, n = 12, int(rng.integers(3, 25))
    A = rng.normal(size=(m, n, n))
    scale = 10.0 ** rng.uniform(-3, 1, (m, 1, 1))
    H = scale * (A @ A.transpose(0, 2, 1) / n + 10.0 ** rng.uniform(-6, 0, (m, 1, 1)) * np.eye(n))
    starts = np.concatenate([rng.integers(0, 2, (m // 3, n)).astype(float), rng.random((m // 3, n)),
                             np.clip(rng.normal(0.5, 1.0, (m - 2 * (m // 3), n)), 0, 1)])
    b, done = exact._batch_box_qp(H, starts)
    assert done.mean() >= 0.75, f"seed {SEED}: only {done.sum()}/{m} converged"
    for r in np.flatnonzero(done):
        ref = _box_qp_reference(H[r], rng)
        grad = H[r] @ b[r] - 1.0
        assert np.max(np.abs(b[r] - np.clip(b[r] - grad, 0, 1))) <= 1e-8 * (1 + np.abs(H[r]).sum(1).max()), SEED
        np.testing.assert_allclose(b[r], ref, atol=1e-5, err_msg=f"seed {SEED}")


def _fresh_svm_problem(rng, n, K, t, duplicates):
    Kt, Kx, y = cluster_problem(n, t, K, int(rng.integers(2**31)), float(rng.choice([0.1, 0.3, 1.0])))
    if duplicates:  # repeat two samples with their labels: a singular Gram (the MILP runs) and symmetric pairs
        idx = np.concatenate([np.arange(n), rng.choice(n, 2, replace=False)])
        Kt, Kx, y = Kt[np.ix_(idx, idx)], Kx[:, idx], y[idx]
    return Kt, Kx, y


@pytest.mark.parametrize("K", [2, 3])
def test_retrain_many_verdicts_do_not_depend_on_the_starts(K):
    """Fresh relabellings retrained in one batch from the clean duals, from random starts and one by
    one (`decide`): the same verdicts, and margins within the certified error bounds."""
    rng = np.random.default_rng([SEED, 10 + K])
    Kt, Kx, y = _fresh_svm_problem(rng, 12, K, 2, False)
    C = float(rng.uniform(2, 10)) * KernelSVM().fit(Kt, y, K).C_max
    retrain = exact._Retrainer(Kt, y, K, C)
    assert retrain.usable
    labs = np.repeat(y[None], 40, axis=0)
    for r in range(40):
        flip = rng.choice(len(y), int(rng.integers(1, 5)), replace=False)
        labs[r, flip] = (labs[r, flip] + rng.integers(1, K, len(flip))) % K
    p = int(KernelSVM(C).fit(Kt, y, K).predict(Kx[:1])[0])
    v1, g1, d1 = retrain.retrain_many(labs, Kx[0], p)
    v2, g2, _ = retrain.retrain_many(labs, Kx[0], p, rng.random(d1.shape))
    np.testing.assert_array_equal(v1, v2, err_msg=f"seed {SEED}")
    np.testing.assert_allclose(g1, g2, atol=1e-6 * C * np.abs(Kx[0]).sum(), err_msg=f"seed {SEED}")
    for r in range(40):
        assert retrain.decide(labs[r], Kx[0], p) == v1[r], SEED
        ref = KernelSVM(C).fit(Kt, labs[r], K).decision_function(Kx[:1])[0]
        if v1[r] == 1:  # clearly kept: retraining agrees
            assert int(np.argmax(ref)) == p, SEED
        elif v1[r] == -1:
            assert int(np.argmax(ref)) != p, SEED


@pytest.mark.parametrize("K,duplicates", [(2, False), (3, False), (2, True)])
def test_labelcert_fresh_problems_equal_brute_force_retraining(K, duplicates):
    """Fresh random problems above and below C_max (and with duplicated samples): the radii equal
    retraining the SVM on every relabelling within the budget, every point is exact, every attack
    re-verifies, and below C_max the radius equals the label-linear certificate's."""
    from kernelcert.certificates import certify

    rng = np.random.default_rng([SEED, 20 + K, duplicates])
    n = 7 if K == 2 else 6
    Kt, Kx, y = _fresh_svm_problem(rng, n, K, 3, duplicates)
    budget = 3
    for factor in (0.5, float(rng.uniform(1.5, 4.0)), float(rng.uniform(4.0, 20.0))):
        C = factor * KernelSVM().fit(Kt, y, K).C_max
        lc = labelcert_svm_milp(Kt, y, Kx, C, K, max_flips=budget)
        bf = _svm_oracle(Kt, Kx, y, K, C, budget)
        msg = f"seed {SEED}, K={K}, duplicates={duplicates}, C = {factor:.3f} C_max"
        np.testing.assert_array_equal(lc.prediction, bf.prediction, err_msg=msg)
        np.testing.assert_array_equal(lc.radius, bf.radius, err_msg=msg)
        assert lc.exact.all(), msg
        if factor <= 1:
            np.testing.assert_array_equal(np.minimum(certify(Kx, y, K).radius, budget), lc.radius, err_msg=msg)
        for i, lab in enumerate(lc.attacks):
            if lab is not None:
                assert (lab != y).sum() == lc.radius_upper[i] + 1, msg
                assert KernelSVM(C).fit(Kt, lab, K).predict(Kx[i:i + 1])[0] != lc.prediction[i], msg


@pytest.mark.parametrize("K", [2, 3])
def test_exhaustive_retraining_fresh_equals_brute_force(K):
    """The batched, warm-started enumeration on fresh problems above C_max: the sizes it excludes and
    the attack it returns equal retraining every relabelling one by one (`brute_force_retrain`)."""
    rng = np.random.default_rng([SEED, 30 + K])
    n = 9 if K == 2 else 7
    Kt, Kx, y = _fresh_svm_problem(rng, n, K, 16, False)  # many test points: many minimal attacks to miss
    C = float(rng.uniform(2, 10)) * KernelSVM().fit(Kt, y, K).C_max
    retrain = exact._Retrainer(Kt, y, K, C)
    assert retrain.usable
    bf = _svm_oracle(Kt, Kx, y, K, C, 4)
    for i in range(len(Kx)):
        p = int(bf.prediction[i])
        # pruned by the stability bound: same sizes excluded, an attack of the same size
        excluded, attack = exact._exhaustive_small_attacks(retrain, y, Kx[i], p, 4, 10**6)
        if attack is None:
            assert excluded <= bf.radius[i], SEED
        else:
            assert excluded == bf.radius[i], SEED
            assert (attack != y).sum() == bf.radius[i] + 1, SEED
            assert KernelSVM(C).fit(Kt, attack, K).predict(Kx[i:i + 1])[0] != p, SEED
        # every relabelling retrained, in the documented order
        excluded, attack = exact._exhaustive_small_attacks(retrain, y, Kx[i], p, 4, 10**6, prune=False)
        if attack is None:  # a near tie stops the search: it then proves less, never more
            assert excluded <= bf.radius[i], SEED
        else:
            assert excluded == bf.radius[i], SEED
            assert (attack != y).sum() == bf.radius[i] + 1, SEED
            assert KernelSVM(C).fit(Kt, attack, K).predict(Kx[i:i + 1])[0] != p, SEED
            # and it is the first attack of that size in the documented order (none skipped)
            first = None
            for idx in itertools.combinations(range(n), excluded + 1):
                for targets in itertools.product(*[[c for c in range(K) if c != y[j]] for j in idx]):
                    lab = y.copy()
                    lab[list(idx)] = targets
                    if KernelSVM(C).fit(Kt, lab, K).predict(Kx[i:i + 1])[0] != p:
                        first = lab
                        break
                if first is not None:
                    break
            np.testing.assert_array_equal(attack, first, err_msg=f"seed {SEED}")


@pytest.mark.parametrize("K", [2, 3])
def test_flip_bounds_hold_against_retraining(K):
    """The stability bound of `_flip_bounds` (docs/math.md §7.4) on fresh problems above C_max: from
    random base labellings, changing the labels of random sets T never lowers the margin
    f_p - max_{c != p} f_c of the retrained SVM (`KernelSVM`, independent solver) by more than
    sum_{j in T} G_j, for every class p; and the check is not vacuous (some drop reaches 5% of its
    bound)."""
    rng = np.random.default_rng([SEED, 40 + K])
    n = 14 if K == 2 else 10
    Kt, Kx, y0 = _fresh_svm_problem(rng, n, K, 3, False)
    C = float(rng.uniform(1.5, 10)) * KernelSVM().fit(Kt, y0, K).C_max
    worst = 0.0
    for trial in range(12):
        base = y0.copy()
        moved = rng.choice(n, int(rng.integers(0, 4)), replace=False)
        base[moved] = (base[moved] + rng.integers(1, K, len(moved))) % K
        retrain = exact._Retrainer(Kt, base, K, C)
        assert retrain.usable
        f0 = KernelSVM(C).fit(Kt, base, K).decision_function(Kx)
        for _ in range(4):
            T = rng.choice(n, int(rng.integers(1, 5)), replace=False)
            lab = base.copy()
            lab[T] = (lab[T] + rng.integers(1, K, len(T))) % K
            f1 = KernelSVM(C).fit(Kt, lab, K).decision_function(Kx)
            for i in range(len(Kx)):
                for p in range(K):
                    G = exact._flip_bounds(retrain, base, Kx[i], p)
                    gap0 = f0[i, p] - np.delete(f0[i], p).max()
                    gap1 = f1[i, p] - np.delete(f1[i], p).max()
                    tol = 1e-6 * C * np.abs(Kx[i]).sum()
                    assert gap0 - gap1 <= G[T].sum() + tol, f"seed {SEED}: drop {gap0 - gap1} > {G[T].sum()}"
                    worst = max(worst, (gap0 - gap1) / G[T].sum())
    assert worst > 0.05, f"seed {SEED}: the bound is never approached ({worst})"


def _count_retrains(retrain):
    """Count the relabellings `retrain.retrain_many_bounded` retrains, per the key the caller sets in
    the returned dict's "mode" (True / False)."""
    counts = {"mode": None, True: 0, False: 0}
    real = retrain.retrain_many_bounded

    def counting(labels, *a, **k):
        counts[counts["mode"]] += len(labels)
        return real(labels, *a, **k)

    retrain.retrain_many_bounded = counting
    return counts


def test_pruned_search_retrains_fewer_and_agrees_with_full_enumeration():
    """The two-Gaussian NTK problem of the benchmark (n = 16, C = 3 C_max): the pruned branch and bound
    excludes the same sizes and finds attacks of the same size as retraining every relabelling, while
    retraining fewer relabellings."""
    from kernelcert.kernels import FullyConnected

    rng = np.random.default_rng(1)
    n = 16
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 2)) + np.where(y == 1, 2.0, -2.0)[:, None] * np.array([1.0, 0.0])
    xt = rng.normal(size=(4, 2)) + rng.choice([-2.0, 2.0], 4)[:, None] * np.array([1.0, 0.0])
    kern = FullyConnected(depth=1, W_std=2**0.5, b_std=0.1)
    Kt, Kx = np.asarray(kern.ntk(x)), np.asarray(kern.ntk(xt, x))
    C = 3.0 * KernelSVM().fit(Kt, y, 2).C_max
    retrain = exact._Retrainer(Kt, y, 2, C)
    counts = _count_retrains(retrain)
    p = KernelSVM(C).fit(Kt, y, 2).predict(Kx)
    for i in range(len(Kx)):
        out = {}
        for mode in (True, False):
            counts["mode"] = mode
            out[mode] = exact._exhaustive_small_attacks(retrain, y, Kx[i], int(p[i]), 5, 10**6, prune=mode)
        assert out[True][0] == out[False][0]
        assert (out[True][1] is None) == (out[False][1] is None)
        if out[True][1] is not None:
            assert (out[True][1] != y).sum() == (out[False][1] != y).sum()
    assert counts[True] < counts[False]


def _ntk_problem(rng, n, K, t):
    """Gaussian classes in R^2 around K random means, NTK of a one-hidden-layer ReLU net (as in
    benchmarks.published.gaussian_problem): K_train (n, n), K_test_train (t, n), labels (n,)."""
    from kernelcert.kernels import FullyConnected

    means = 2.0 * rng.normal(size=(K, 2))
    y = np.arange(n) % K
    x = means[y] + rng.normal(size=(n, 2))
    xt = means[rng.integers(0, K, t)] + rng.normal(size=(t, 2))
    kern = FullyConnected(depth=1, W_std=2**0.5, b_std=0.1)
    return np.asarray(kern.ntk(x)), np.asarray(kern.ntk(xt, x)), y


def _node_bound_problem(rng, K, kind):
    """One fresh problem of test_node_flip_bounds_hold_against_retraining: asserts the bound on every
    retraining; returns (largest drop / bound, whether G' < 0.99 G somewhere)."""
    n = 20 if K == 2 else 15
    if kind == "rbf":
        Kt, Kx, y0 = _fresh_svm_problem(rng, n, K, 3, False)
    else:
        Kt, Kx, y0 = _ntk_problem(rng, n, K, 3)
    if kind == "ill-conditioned":  # sample 0 again, its self-similarity raised by 1e-4: nearly singular
        idx = np.concatenate([np.arange(n), [0]])
        Kt, Kx, y0 = Kt[np.ix_(idx, idx)].copy(), Kx[:, idx], y0[idx]
        Kt[n, n] += 1e-4
        n += 1
    C = float(rng.uniform(1.5, 10)) * KernelSVM().fit(Kt, y0, K).C_max
    retrain = exact._Retrainer(Kt, y0, K, C)
    if not retrain.usable:  # a numerically singular Gram (close RBF points): no bound to test, pruning is off
        return 0.0, False
    worst, sharper = 0.0, False
    for trial in range(6):
        base = y0.copy()
        moved = rng.choice(n, int(rng.integers(0, 4)), replace=False)
        base[moved] = (base[moved] + rng.integers(1, K, len(moved))) % K
        rem = int(rng.integers(1, 4))  # small rem: a small reach D_j, so lambda_j < 2 for more samples
        allowed = (base == y0) & (rng.random(n) < 0.8)
        f0 = KernelSVM(C).fit(Kt, base, K).decision_function(Kx)
        for i in range(len(Kx)):
            for p in range(K):
                G = exact._flip_bounds(retrain, y0, Kx[i], p)
                _, _, duals, _, errors = retrain.retrain_many_bounded(base[None], Kx[i], p)
                Gn = exact._node_flip_bounds(retrain, G, base[None], duals, errors, allowed[None], rem)[0]
                assert np.all(Gn <= G), SEED
                sharper |= bool(np.any(Gn[allowed] < 0.99 * G[allowed]))
                gap0 = f0[i, p] - np.delete(f0[i], p).max()
                for _ in range(3):
                    if not allowed.any():
                        break
                    T = rng.choice(np.flatnonzero(allowed), min(int(rng.integers(1, rem + 1)), allowed.sum()),
                                   replace=False)
                    lab = base.copy()
                    lab[T] = (lab[T] + rng.integers(1, K, len(T))) % K
                    f1 = KernelSVM(C).fit(Kt, lab, K).decision_function(Kx[i:i + 1])[0]
                    gap1 = f1[p] - np.delete(f1, p).max()
                    tol = 1e-6 * C * np.abs(Kx[i]).sum()
                    assert gap0 - gap1 <= Gn[T].sum() + tol, f"seed {SEED}: drop {gap0 - gap1} > {Gn[T].sum()}"
                    worst = max(worst, (gap0 - gap1) / Gn[T].sum())
    return worst, sharper


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("kind", ["rbf", "ntk", "ill-conditioned"])
def test_node_flip_bounds_hold_against_retraining(K, kind):
    """The sharpened stability bound of `_node_flip_bounds` (docs/math.md §7.4 (vi)) on fresh problems
    above C_max (RBF clusters, NTK Gaussians, NTK Gaussians with a near-duplicate sample: an
    ill-conditioned Gram): from random nodes (base labellings, duals from `retrain_many_bounded`),
    changing the labels of random sets T of at most rem allowed samples never lowers the margin of
    the retrained SVM (`KernelSVM`, independent solver) by more than sum_{j in T} G'_j; G' <= G,
    strictly smaller somewhere on the binary NTK problems, and the check is not vacuous (some drop reaches
    5% of its bound) within at most four fresh problems (one problem alone can miss it)."""
    rng = np.random.default_rng([SEED, 50 + K, ["rbf", "ntk", "ill-conditioned"].index(kind)])
    worst, sharper = 0.0, False
    for _ in range(4):  # soundness asserted on every problem; a fresh problem only while the checks are vacuous
        w, sh = _node_bound_problem(rng, K, kind)
        worst, sharper = max(worst, w), sharper or sh
        if worst > 0.05 and (sharper or kind == "rbf" or K == 3):
            break
    # (with K = 3 a sample needs margin > 1 in every one-vs-rest problem: rare at this size)
    assert sharper or kind == "rbf" or K == 3, f"seed {SEED}: the node bound never improves on G"
    assert worst > 0.05, f"seed {SEED}: the bound is never approached ({worst})"


@pytest.mark.parametrize("K,kind", [(2, "ntk"), (3, "ntk"), (2, "ill-conditioned")])
def test_pruned_search_fresh_ntk_equals_full_enumeration(K, kind):
    """Fresh NTK problems above C_max (also with a near-duplicate sample: an ill-conditioned Gram), many
    test points: the branch and bound with its skipped children (`_children`) excludes the same sizes
    and finds attacks of the same size as retraining every relabelling (prune=False, itself checked
    against one-by-one retraining above), every attack re-verifies, and it retrains fewer."""
    rng = np.random.default_rng([SEED, 60 + K, kind == "ntk"])
    n = 12 if K == 2 else 9
    Kt, Kx, y = _ntk_problem(rng, n, K, 10)
    if kind == "ill-conditioned":
        idx = np.concatenate([np.arange(n), [1]])
        Kt, Kx, y = Kt[np.ix_(idx, idx)].copy(), Kx[:, idx], y[idx]
        Kt[n, n] += 1e-4
    C = float(rng.uniform(2, 6)) * KernelSVM().fit(Kt, y, K).C_max
    retrain = exact._Retrainer(Kt, y, K, C)
    assert retrain.usable, SEED
    counts = _count_retrains(retrain)
    p = KernelSVM(C).fit(Kt, y, K).predict(Kx)
    for i in range(len(Kx)):
        out = {}
        for mode in (False, True):
            counts["mode"] = mode
            out[mode] = exact._exhaustive_small_attacks(retrain, y, Kx[i], int(p[i]), 4, 10**6, prune=mode)
        if out[False][1] is not None:  # the full enumeration decided every size up to its attack
            assert out[True][0] == out[False][0], SEED
            assert out[True][1] is not None and (out[True][1] != y).sum() == (out[False][1] != y).sum(), SEED
        elif out[False][0] == 4:
            assert out[True][0] == 4 and out[True][1] is None, SEED
        if out[True][1] is not None:
            assert KernelSVM(C).fit(Kt, out[True][1], K).predict(Kx[i:i + 1])[0] != p[i], SEED
    assert counts[True] < counts[False], SEED
