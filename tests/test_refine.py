"""Exact per-class costs and lazily refined EnsembleCert (kernelcert.refine) against independent oracles:
enumeration, the existing class-cost MILP, a plain one-hot MILP written here, and EnsembleCert on
brute-force costs. Every answer flagged exact must equal the truth; every answer must stay inside
certify's bounds."""
import dataclasses
import re

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from kernelcert.certificates import certify
from kernelcert.ensemble import ensemblecert
from kernelcert.evidence import build_evidence, stack_evidence
from kernelcert.exact import brute_force_certificate, brute_force_label_flip_roe_radius, milp_class_costs
from kernelcert.learners import KernelRegression
from kernelcert.refine import (
    CostRefinement,
    PartitionSolver,
    RefinedEnsemble,
    RefinedWhiteboxROE,
    attack_makes_class_win,
    exact_class_costs,
    refine_class_costs,
    refine_ensemblecert,
    refine_whitebox_roe,
    solve_class_cost,
)
from kernelcert.roe import whitebox_roe
from problems import rbf_problem

WEIGHT_KINDS = ("normal", "integer", "positive", "repeated", "heavy", "sparse_classes")


def make_weights(kind, rng, t, n):
    if kind == "normal":
        return rng.normal(size=(t, n))
    if kind == "integer":  # many exact ties
        return rng.integers(-3, 4, size=(t, n)).astype(float)
    if kind == "positive":  # the C_max SVM case: every weight positive
        return np.abs(rng.normal(size=(t, n)))
    if kind == "repeated":  # repeated dyadic values
        return rng.choice([-1.0, 0.5, 1.0, 2.0, 0.25], size=(t, n))
    if kind == "heavy":
        return rng.standard_t(1.5, size=(t, n))
    # few distinct labels: empty classes give exact zero scores
    return rng.integers(-2, 3, size=(t, n)).astype(float) * 0.5


def check_against_truth(W, y, K, truth, res, cert):
    """Exact => equal to the truth; always lower <= truth <= upper, inside certify's bounds."""
    assert np.all(res.lower <= truth) and np.all(truth <= res.upper)
    assert np.all(res.lower >= cert.cost_lower) and np.all(res.upper <= cert.cost_upper)
    assert np.array_equal(res.exact, res.lower == res.upper)
    assert np.array_equal(res.lower[res.exact], truth[res.exact])


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_exact_costs_match_brute_force(kind):
    rng = np.random.default_rng(WEIGHT_KINDS.index(kind))
    exact_total = pairs_total = 0
    for _ in range(12):
        n, K = int(rng.integers(4, 10)), int(rng.integers(3, 5))
        if kind == "sparse_classes":
            n = min(n, 7)
        if kind == "sparse_classes":
            K = 5
            y = rng.integers(0, 3, n)
        else:
            y = rng.integers(0, K, n)
        W = make_weights(kind, rng, 5, n)
        bf = brute_force_certificate(W, y, K)
        cert = certify(W, y, K)
        res = exact_class_costs(W, y, K, certificate=cert)
        assert np.array_equal(res.prediction, bf.prediction)
        check_against_truth(W, y, K, bf.class_costs, res, cert)
        exact_total += res.exact.sum()
        pairs_total += res.exact.size
    # the solver must actually close gaps (a solver that returned the bounds would fail here)
    assert exact_total >= 0.97 * pairs_total


def test_exact_costs_match_class_cost_milp():
    rng = np.random.default_rng(7)
    for n, K in ((14, 3), (18, 4), (20, 4)):
        y = rng.integers(0, K, n)
        W = rng.normal(size=(4, n))
        truth = milp_class_costs(W, y, K, time_limit=60)
        cert = certify(W, y, K)
        res = exact_class_costs(W, y, K, certificate=cert)
        check_against_truth(W, y, K, truth, res, cert)
        assert res.exact.all()


def one_hot_milp(w, y, K, c, margin=None):
    """Independent oracle: binary one-hot labels z (n, K), minimise the flips subject to
    s_c - s_k >= [k < c] - 1/2 (exact for integer weights: the rows sit 1/2 inside, far above solver
    tolerances) or, with `margin`, s_c - s_k >= margin for every k (float weights)."""
    n = len(y)
    cost = (np.arange(K)[None, :] != y[:, None]).astype(float).ravel()
    A_one = np.kron(np.eye(n), np.ones((1, K)))
    rows, lb = [], []
    for k in range(K):
        if k == c:
            continue
        a = np.zeros((n, K))
        a[:, c] = w
        a[:, k] = -w
        rows.append(a.ravel())
        lb.append((1.0 if k < c else 0.0) - 0.5 if margin is None else margin)
    res = milp(cost, constraints=[LinearConstraint(A_one, 1, 1), LinearConstraint(np.array(rows), lb, np.inf)],
               integrality=np.ones(n * K), bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    return np.inf if res.status == 2 else round(res.fun)


@pytest.mark.parametrize("positive", [False, True])
def test_exact_costs_match_one_hot_milp_mid_size(positive):
    """n = 60, K = 5 (beyond enumeration): pruning and prefix reductions against the plain formulation."""
    rng = np.random.default_rng(11 + positive)
    n, K = 60, 5
    y = rng.integers(0, K, n)
    W = rng.integers(0 if positive else -4, 5, size=(3, n)).astype(float)
    cert = certify(W, y, K)
    res = exact_class_costs(W, y, K, certificate=cert)
    truth = np.array([[0.0 if c == cert.prediction[i] else one_hot_milp(W[i], y, K, c) for c in range(K)]
                      for i in range(len(W))])
    check_against_truth(W, y, K, truth, res, cert)
    assert res.exact.all()


def test_exact_costs_match_one_hot_milp_float_weights():
    """Float weights, n = 50, K = 6 (positive ones take the combinatorial path, signed ones the MILP):
    where the one-hot MILP with margins -1e-6 and +1e-6 agrees, that is the truth."""
    rng = np.random.default_rng(17)
    n, K = 50, 6
    compared = 0
    for positive in (True, False):
        y = rng.integers(0, K, n)
        W = rng.gamma(0.7, size=(3, n)) if positive else rng.normal(size=(3, n))
        cert = certify(W, y, K)
        res = exact_class_costs(W, y, K, certificate=cert)
        for i in range(len(W)):
            for c in range(K):
                if c == cert.prediction[i] or cert.cost_lower[i, c] == cert.cost_upper[i, c]:
                    continue
                lo, hi = one_hot_milp(W[i], y, K, c, -1e-6), one_hot_milp(W[i], y, K, c, 1e-6)
                assert lo <= res.upper[i, c] and res.lower[i, c] <= hi
                if lo == hi:
                    assert res.exact[i, c] and res.lower[i, c] == lo
                    compared += 1
    assert compared >= 5  # the draw leaves gaps for both paths to close


def test_attacks_verify_and_tie_rule():
    # s = (0, 1, 1): class 1 wins the tie against 2; making 2 win needs a strict win over 1
    w = np.array([1.0, 1.0, 2.0])
    y = np.array([1, 2, 0])
    s = solve_class_cost(w, y, 3, 2, 1.0, 3.0)
    assert s.exact and s.lower == 1.0
    assert attack_makes_class_win(w, y, 3, s.attack, 2)
    assert len(s.attack) == 1
    # class 1 ties class 2 only after moving sample 1 to 1: 1 beats 2 by index
    assert attack_makes_class_win(np.array([1.0, 1.0]), np.array([0, 2]), 3, [(0, 1)], 1)
    assert not attack_makes_class_win(np.array([1.0, 1.0]), np.array([0, 1]), 3, [(0, 2)], 2)


def test_solve_returns_verified_attacks_on_kernel_regression_rows():
    Ktr, Kx, y = rbf_problem(120, 6, 4, seed=3)
    W = KernelRegression(ridge=1e-2).fit(Ktr, y, 4).label_weights(Kx)
    cert = certify(W, y, 4)
    for i in range(len(W)):
        for c in range(4):
            if c == cert.prediction[i]:
                continue
            s = solve_class_cost(W[i], y, 4, c, cert.cost_lower[i, c], cert.cost_upper[i, c])
            assert cert.cost_lower[i, c] <= s.lower <= s.upper <= cert.cost_upper[i, c]
            if s.attack is not None:
                assert len(s.attack) == s.upper
                assert attack_makes_class_win(W[i], y, 4, s.attack, c)
                lab = y.copy()
                for j, d in s.attack:
                    lab[j] = d
                assert int(np.argmax(W[i] @ np.eye(4)[lab])) == c  # float64 from scratch agrees


def test_cap_and_time_limit_keep_sound_bounds():
    rng = np.random.default_rng(5)
    n, K = 8, 4
    for _ in range(8):
        y = rng.integers(0, K, n)
        W = rng.normal(size=(3, n))
        truth = brute_force_certificate(W, y, K).class_costs
        cert = certify(W, y, K)
        r, c = np.nonzero(cert.cost_lower < cert.cost_upper)
        for cap in (1.0, 2.0, 3.0):
            res = refine_class_costs(W, y, K, r, c, cert.cost_lower[r, c], cert.cost_upper[r, c],
                                     caps=np.full(r.size, cap))
            for q, s in enumerate(res):
                A = truth[r[q], c[q]]
                assert s.lower <= A <= s.upper
                if s.lower < s.upper:  # unresolved only at or above the cap
                    assert s.lower >= min(cap, cert.cost_upper[r[q], c[q]])


def test_time_limit_flags_not_exact():
    rng = np.random.default_rng(9)
    n, K = 3000, 10
    y = rng.integers(0, K, n)
    W = rng.standard_t(2, size=(1, n))
    cert = certify(W, y, K)
    r, c = np.nonzero(cert.cost_lower < cert.cost_upper)
    assert r.size, "this seeded draw must leave open class-cost bounds, or the time limit is not exercised"
    res = refine_class_costs(W, y, K, r[:3], c[:3], cert.cost_lower[r[:3], c[:3]], cert.cost_upper[r[:3], c[:3]],
                             time_limit=1e-4)
    for q, s in enumerate(res):
        assert cert.cost_lower[r[q], c[q]] <= s.lower <= s.upper <= cert.cost_upper[r[q], c[q]]
        assert s.exact == (s.lower == s.upper)


def tiny_ensemble(rng, N, n, K, kind):
    ys = [rng.integers(0, K, n) for _ in range(N)]
    Ws = [make_weights(kind, rng, 6, n) for _ in range(N)]
    return Ws, ys


@pytest.mark.parametrize("kind", ["normal", "integer", "positive"])
def test_refined_ensemble_radius_matches_exact_costs(kind):
    rng = np.random.default_rng(["normal", "integer", "positive"].index(kind) + 20)
    K = 4
    proven = total = 0
    for _ in range(4):
        N = int(rng.integers(3, 7))
        Ws, ys = tiny_ensemble(rng, N, 7, K, kind)
        bfs = [brute_force_certificate(W, y, K) for W, y in zip(Ws, ys)]
        certs = [certify(W, y, K) for W, y in zip(Ws, ys)]
        votes = np.stack([c.prediction for c in certs], 1)
        A = np.stack([b.class_costs for b in bfs], 1)
        truth = ensemblecert(votes, A, K).radius
        L = np.stack([c.cost_lower for c in certs], 1)
        U = np.stack([c.cost_upper for c in certs], 1)
        solver = PartitionSolver(lambda j, rows: Ws[j][rows], ys, K)
        res = refine_ensemblecert(votes, L, U, K, solver)
        assert np.all(res.radius_lower <= truth) and np.all(truth <= res.radius_upper)
        assert np.array_equal(res.radius_lower[res.exact], truth[res.exact])
        assert np.all(res.cost_lower <= A) and np.all(A <= res.cost_upper)
        before = ensemblecert(votes, L, K).radius == ensemblecert(votes, U, K).radius
        assert np.array_equal(res.exact_before, before)
        assert np.all(res.exact[before])
        proven += res.exact.sum()
        total += res.exact.size
    assert proven >= 0.95 * total


def whitebox_problem(Ws, ys, K):
    """Stacked evidence (level 'pairs') of label-linear models, as the run computes it."""
    return stack_evidence([build_evidence(W, y, K) for W, y in zip(Ws, ys)])


@pytest.mark.parametrize("kind", ["normal", "integer", "positive"])
def test_refined_whitebox_roe_matches_the_certificate_at_exact_costs(kind):
    """Oracle: every per-class cost by enumerating every relabelling of each partition, then the
    white-box ROE certificate at those costs. Resolved radii equal it; all radii bracket it."""
    rng = np.random.default_rng(["normal", "integer", "positive"].index(kind) + 40)
    K = 4
    resolved = total = opened = closed = 0
    for _ in range(5):
        N = int(rng.integers(3, 7))
        Ws, ys = tiny_ensemble(rng, N, 7, K, kind)
        ev = whitebox_problem(Ws, ys, K)
        A = np.stack([brute_force_certificate(W, y, K).class_costs for W, y in zip(Ws, ys)], 1)
        fb = ev.fallback
        truth = whitebox_roe(ev.scores, np.where(fb[..., None], 1.0, A),
                             np.where(fb[..., None, None], 1.0, ev.pair_costs), joint="per_point").radius
        run = whitebox_roe(ev.scores, *ev.roe_costs())  # what the run reports before refinement
        solver = PartitionSolver(lambda j, rows: Ws[j][rows], ys, K)
        res = refine_whitebox_roe(ev.scores, ev.cost_lower, ev.cost_upper, ev.pair_costs, solver, fallback=fb)
        np.testing.assert_array_equal(res.prediction, run.prediction)
        assert np.all(run.radius <= res.radius)
        assert np.all(res.radius <= truth) and np.all(truth <= res.radius_at_upper_costs)
        np.testing.assert_array_equal(res.radius[res.resolved], truth[res.resolved])
        assert np.all(res.cost_lower <= A) and np.all(A <= res.cost_upper)
        assert np.all(res.cost_lower >= ev.cost_lower) and np.all(res.cost_upper <= ev.cost_upper)
        assert np.all(res.resolved[res.resolved_before])
        lo0 = whitebox_roe(ev.scores, np.where(fb[..., None], 1.0, ev.cost_lower), ev.roe_costs()[1], joint="per_point")
        hi0 = whitebox_roe(ev.scores, np.where(fb[..., None], 1.0, ev.cost_upper), ev.roe_costs()[1], joint="per_point")
        assert np.all(res.resolved_before[lo0.radius == hi0.radius])
        resolved += res.resolved.sum()
        total += res.resolved.size
    assert resolved >= 0.9 * total


def cost_level_problem(rng, t, M, K):
    """Scores, exact costs A and bounds L <= A <= U (some unreachable), pair costs, fallback flags."""
    s = rng.normal(size=(t, M, K)) + rng.random() * (np.arange(K) == rng.integers(K))
    if rng.random() < 0.3:
        s = np.round(s)
    A = rng.integers(1, 7, size=(t, M, K)).astype(float)
    A[rng.random(A.shape) < 0.05] = np.inf
    L = np.maximum(np.where(np.isfinite(A), A, 6.0) - rng.integers(0, 4, size=A.shape), 0.0)
    U = A + rng.integers(0, 4, size=A.shape)
    P = rng.integers(1, 7, size=(t, M, K, K)).astype(float)
    fb = rng.random((t, M)) < 0.1
    return s, A, L, U, P, fb


def oracle_solver(A, rng=None):
    """`solve` from the exact costs A: exact below the cap (lower = cap above it); with rng, each
    problem is instead left alone (a time limit) or only its lower bound raised by one, at random."""
    def solve(p, j, c, lo, hi, cap):
        a = A[p, j, c]
        new_lo = np.where(a >= cap, np.maximum(lo, cap), a)
        new_hi = np.where(a >= cap, hi, a)
        if rng is not None:
            mode = rng.integers(0, 3, size=len(p))
            new_lo = np.where(mode == 1, lo, np.where(mode == 2, np.minimum(lo + 1, a), new_lo))
            new_hi = np.where(mode == 0, new_hi, hi)
        return new_lo, new_hi
    return solve


@pytest.mark.parametrize("partial", [False, True])
def test_refine_whitebox_against_the_certificate_at_exact_costs(partial):
    """Cost level: resolved radii equal whitebox_roe at the exact costs, all radii bracket it; an exact
    solver resolves every point, a partial one (time limits, weak bounds) never claims a wrong one."""
    rng = np.random.default_rng(5 + partial)
    opened = 0
    for _ in range(25):
        t, M, K = 8, int(rng.integers(2, 9)), int(rng.integers(2, 6))
        s, A, L, U, P, fb = cost_level_problem(rng, t, M, K)
        truth = whitebox_roe(s, np.where(fb[..., None], 1.0, A), np.where(fb[..., None, None], 1.0, P),
                             joint="per_point").radius
        res = refine_whitebox_roe(s, L, U, P, oracle_solver(A, rng if partial else None), fallback=fb)
        assert np.all(res.radius <= truth) and np.all(truth <= res.radius_at_upper_costs)
        np.testing.assert_array_equal(res.radius[res.resolved], truth[res.resolved])
        assert np.all(res.cost_lower <= A) and np.all(A <= res.cost_upper)
        if not partial:
            assert res.resolved.all()
        opened += (~res.resolved_before).sum()
    assert opened > 20


def test_refined_whitebox_roe_is_sound_against_relabelling_every_label():
    """The refined radius never exceeds the true label-flip radius of the run-off election (every
    relabelling of every training label enumerated, every base model recomputed)."""
    rng = np.random.default_rng(7)
    for _ in range(6):
        K, N = 3, 3
        Ws, ys = tiny_ensemble(rng, N, 3, K, ["normal", "integer", "positive"][int(rng.integers(3))])
        Ws = [W[:4] for W in Ws]
        ev = whitebox_problem(Ws, ys, K)
        solver = PartitionSolver(lambda j, rows: Ws[j][rows], ys, K)
        res = refine_whitebox_roe(ev.scores, ev.cost_lower, ev.cost_upper, ev.pair_costs, solver,
                                  fallback=ev.fallback, max_radius=N * 3)
        true_radius, pred = brute_force_label_flip_roe_radius(Ws, ys, K)
        np.testing.assert_array_equal(res.prediction, pred)
        assert np.all(np.minimum(res.radius, N * 3) <= true_radius)


def test_refine_whitebox_stops_without_progress_and_rejects_bad_input():
    rng = np.random.default_rng(11)
    s, A, L, U, P, fb = cost_level_problem(rng, 10, 6, 4)
    keep = refine_whitebox_roe(s, L, U, P, lambda p, j, c, lo, hi, cap: (lo, hi), fallback=fb)
    assert not keep.resolved_before.all()
    assert keep.rounds == 1 and np.array_equal(keep.resolved, keep.resolved_before)
    np.testing.assert_array_equal(keep.cost_lower, L)
    with pytest.raises(RuntimeError, match="outside the previous"):
        refine_whitebox_roe(s, L, U, P,
                            lambda p, j, c, lo, hi, cap: (lo - 1, hi), fallback=fb)
    with pytest.raises(ValueError, match="pair_costs"):
        refine_whitebox_roe(s, L, U, P[..., 0], lambda *a: a[3:5])
    with pytest.raises(ValueError, match="fallback"):
        refine_whitebox_roe(s, L, U, P, lambda *a: a[3:5],
                            fallback=fb[:, :1])
    with pytest.raises(ValueError, match="cost_lower"):
        refine_whitebox_roe(s, U + 1, U, P, lambda *a: a[3:5])


def test_refine_ensemble_stops_without_progress_and_rejects_bad_solvers():
    rng = np.random.default_rng(3)
    K, N = 4, 5
    Ws, ys = tiny_ensemble(rng, N, 8, K, "positive")
    certs = [certify(W, y, K) for W, y in zip(Ws, ys)]
    votes = np.stack([c.prediction for c in certs], 1)
    L = np.stack([c.cost_lower for c in certs], 1)
    U = np.stack([c.cost_upper for c in certs], 1)
    before = ensemblecert(votes, L, K).radius < ensemblecert(votes, U, K).radius
    res = refine_ensemblecert(votes, L, U, K, lambda p, j, c, lo, hi, cap: (lo, hi))
    assert res.rounds <= 1
    assert np.array_equal(res.exact, ~before)
    if before.any():
        with pytest.raises(RuntimeError, match="outside the previous"):
            refine_ensemblecert(votes, L, U, K, lambda p, j, c, lo, hi, cap: (lo - 1, hi))



def ensemble_costs(s, A, L, U):
    """Votes (argmax of the scores) and the costs A, L, U with 0 at each model's own vote (as EnsembleCert
    reads them)."""
    votes = np.argmax(s, axis=2)
    own = np.arange(s.shape[2]) == votes[..., None]
    return (votes,) + tuple(np.where(own, 0.0, C) for C in (A, L, U))


def test_refinements_catch_a_solve_that_widens_the_bounds_it_was_given_in_place():
    """The bounds check compares with the costs before the call, also when `solve` writes into its inputs."""
    def widen_in_place(p, j, c, lo, hi, cap):
        hi += 1.0  # an upper bound raised: a verified attack "forgotten"
        return lo, hi

    rng = np.random.default_rng(11)
    s, A, L, U, P, fb = cost_level_problem(rng, 10, 6, 4)
    with pytest.raises(RuntimeError, match="outside the previous"):
        refine_whitebox_roe(s, L, U, P, widen_in_place, fallback=fb)
    votes, _, L, U = ensemble_costs(s, A, L, U)
    assert (ensemblecert(votes, L, 4).radius < ensemblecert(votes, U, 4).radius).any()  # some cost is refined
    with pytest.raises(RuntimeError, match="outside the previous"):
        refine_ensemblecert(votes, L, U, 4, widen_in_place)


def test_refinement_results_share_the_cost_refinement_fields():
    """Both results are `CostRefinement`s (prediction, refined costs, counts) with keyword-only fields and
    their own radii; the attributes the pipeline reads are there."""
    rng = np.random.default_rng(5)
    s, A, L, U, P, fb = cost_level_problem(rng, 8, 5, 3)
    votes, Ae, Le, Ue = ensemble_costs(s, A, L, U)
    ens = refine_ensemblecert(votes, Le, Ue, 3, oracle_solver(Ae))
    roe = refine_whitebox_roe(s, L, U, P, oracle_solver(A), fallback=fb)
    assert isinstance(ens, RefinedEnsemble) and isinstance(roe, RefinedWhiteboxROE)
    for res in (ens, roe):
        assert isinstance(res, CostRefinement)
        assert res.prediction.shape == (8,) and res.cost_lower.shape == res.cost_upper.shape == (8, 5, 3)
    for res, lo, hi in ((ens, Le, Ue), (roe, L, U)):
        assert np.all(lo <= res.cost_lower) and np.all(res.cost_upper <= hi) and not res.budget_exhausted
        assert res.rounds >= 1 and res.problems >= 1 and res.seconds >= 0
    np.testing.assert_array_equal(ens.prediction, ensemblecert(votes, Le, 3).prediction)
    np.testing.assert_array_equal(ens.exact, ens.radius_lower == ens.radius_upper)
    assert ens.exact_before.shape == roe.resolved.shape == roe.resolved_before.shape == (8,)
    assert np.all(roe.radius <= roe.radius_at_upper_costs)
    with pytest.raises(TypeError):
        RefinedEnsemble(ens.prediction, ens.cost_lower, ens.cost_upper, 1, 1, 0.0, False,
                        ens.radius_lower, ens.radius_upper, ens.exact, ens.exact_before)


def test_input_errors_name_the_argument():
    w, y = np.array([1.0, -1.0]), np.array([0, 1])
    with pytest.raises(ValueError, match="lower"):
        solve_class_cost(w, y, 2, 1, 3.0, 2.0)
    with pytest.raises(ValueError, match="target"):
        solve_class_cost(w, y, 2, 5, 0.0, 1.0)
    with pytest.raises(ValueError, match="weights_row"):
        solve_class_cost(np.array([1.0]), y, 2, 1, 0.0, 1.0)
    with pytest.raises(ValueError, match="time_limit"):
        solve_class_cost(w, y, 2, 1, 0.0, 1.0, time_limit=-1)
    with pytest.raises(ValueError, match="cost_lower"):
        refine_ensemblecert(np.zeros((1, 2), int), np.ones((1, 2, 2)), np.zeros((1, 2, 2)), 2,
                            lambda *a: a[3:5])
    with pytest.raises(ValueError, match="rows"):
        refine_class_costs(w[None, :], y, 2, [3], [1], [0.0], [1.0])
    with pytest.raises(TypeError, match="weights must be callable"):
        PartitionSolver(np.zeros((2, 2)), [y], 2)


def refine_run_config(out_dir):
    """A small synthetic run (4 classes, N_p in {4, 8}, both learners) with EnsembleCert and white-box ROE."""
    return {
        "data": {"dataset": "synthetic", "num_classes": 4, "n_train": 240, "n_test": 60, "dim": 6, "seed": 1,
                 "separation": 1.5},
        "kernel": {"architecture": "fully_connected", "depth": 1, "W_std": 1.5, "b_std": 0.1},
        "learners": [{"type": "svm"}, {"type": "regression", "ridge": 0.01}],
        "partition": {"rule": "ss_dpa", "num_partitions": [4, 8]},
        "methods": {"aggregations": ["dpa", "ensemblecert", "whitebox_roe"]},
        "output": {"dir": str(out_dir), "name": "tiny", "plots": False},
        "execution": {"progress": False},
    }


def test_run_with_exactness_refinement(tmp_path):
    """`[exactness] refine = true` in a run: same units (not hashed), refined EnsembleCert radii inside the
    unrefined bounds, exact ones equal to EnsembleCert on exactly solved costs of the same models, and
    the before/after fractions in points.csv, summary.json and the report. White-box ROE: the per-point
    resolved flags of points.csv are the refine result's and the summary's, resolved radii equal the
    certificate at exactly solved costs, and every point whose certificate is equal at the stored
    lower and upper costs is flagged resolved before refinement."""
    from kernelcert import pipeline
    from kernelcert.pipeline import store
    from kernelcert.pipeline.config import make_kernel, make_learner
    from kernelcert.pipeline.exactness import RefinedWhiteboxResult

    cfg = refine_run_config(tmp_path)
    base = pipeline.run(cfg)
    cfg["exactness"] = {"refine": True, "time_limit": 20}
    res = pipeline.run(cfg)
    assert res.run_dir == base.run_dir and res.computed_units == 0
    conf = pipeline.config_from_dict(cfg)
    plan = pipeline.plan_run(conf)
    kern = make_kernel(conf.kernel)
    K = plan.num_classes
    header, table = pipeline.read_points(res.points_path)
    col = {h: i for i, h in enumerate(header)}
    units = {u.key: u for u in plan.units}

    def partition_models(result):
        """(label weights on the test points, training labels) of each partition model behind `result`."""
        learner = conf.learners[[lc.name for lc in conf.learners].index(result.learner)]
        target = next(t for t in plan.targets if t.kind == "partition" and t.size == result.num_partitions)
        for key in target.units:
            x, y = plan.x_train[units[key].train_index], plan.y_train[units[key].train_index]
            yield make_learner(learner).fit(kern.ntk(x), y, K).label_weights(kern.ntk(plan.x_test, x)), y

    refined_any = False
    wb_results = []
    for r0, r1 in zip(base.results, res.results):
        assert (r0.learner, r0.num_partitions, r0.method) == (r1.learner, r1.num_partitions, r1.method)
        if r1.method == "whitebox_roe":
            assert isinstance(r1, RefinedWhiteboxResult) and not isinstance(r0, RefinedWhiteboxResult)
            assert r1.exact_before is None and not r1.exact.any()
            assert np.all(r1.radius >= r0.radius)
            wb_results.append(r1)
            continue
        assert not isinstance(r1, RefinedWhiteboxResult)
        if r1.method != "ensemblecert":
            assert r1.exact_before is None
            continue
        assert np.array_equal(r1.exact_before, r0.exact)
        assert np.all(r0.radius <= r1.radius) and np.all(r1.radius <= r1.radius_upper)
        assert np.all(r1.radius_upper <= r0.radius_upper) and np.all(r1.exact[r0.exact])
        refined_any |= bool(np.any(r1.exact & ~r0.exact))
        # the oracle: the same partition models, every class cost solved exactly
        costs, votes = [], []
        for W, y in partition_models(r1):
            ex = exact_class_costs(W, y, K)
            assert ex.exact.all()
            costs.append(ex.lower)
            votes.append(ex.prediction)
        truth = ensemblecert(np.stack(votes, 1), np.stack(costs, 1), K, max_radius=len(plan.y_train)).radius
        assert np.array_equal(r1.radius[r1.exact], truth[r1.exact])
        assert np.all(r1.radius <= truth) and np.all(truth <= r1.radius_upper)
        base_col = f"{r1.learner}/{r1.num_partitions}/ensemblecert"
        assert np.array_equal(table[:, col[f"{base_col}/exact"]], r1.exact.astype(int))
        assert np.array_equal(table[:, col[f"{base_col}/exact_before_refinement"]], r0.exact.astype(int))
    assert refined_any, "the configuration should leave some radius to refine"
    block = res.summary["exactness"]
    assert block["refine"] and not block["budget_exhausted"] and len(block["results"]) == 8
    report = res.report_path.read_text()
    assert "## Exactness refinement" in report and "White-box ROE: radii *resolved*" in report
    # white-box ROE: resolved radii equal the certificate at exactly solved costs of the same models
    for r1 in wb_results:
        entry = next(e for e in block["results"] if e["method"] == "whitebox_roe"
                     and (e["learner"], e["num_partitions"]) == (r1.learner, r1.num_partitions))
        assert entry["points_examined"] == len(plan.y_test)
        assert entry["resolved_fraction_after"] >= entry["resolved_fraction_before"]
        resolved = np.ones(len(plan.y_test), bool)
        resolved[entry["points_unresolved"]] = False
        evs, costs = [], []
        for W, y in partition_models(r1):
            evs.append(build_evidence(W, y, K))
            costs.append(exact_class_costs(W, y, K).lower)
        ev = stack_evidence(evs)
        fb = ev.fallback
        truth = whitebox_roe(ev.scores, np.where(fb[..., None], 1.0, np.stack(costs, 1)),
                             np.where(fb[..., None, None], 1.0, ev.pair_costs), joint="per_point").radius
        truth = np.minimum(truth, len(plan.y_train))
        assert np.all(r1.radius <= truth)
        np.testing.assert_array_equal(r1.radius[resolved], truth[resolved])
        # the per-point flags of points.csv: the refine result's, the summary's, the oracle-checked ones above
        wb_col = f"{r1.learner}/{r1.num_partitions}/whitebox_roe"
        flags = table[:, col[f"{wb_col}/resolved"]] == 1
        flags_before = table[:, col[f"{wb_col}/resolved_before_refinement"]] == 1
        np.testing.assert_array_equal(flags, resolved)
        np.testing.assert_array_equal(flags, r1.resolved)
        np.testing.assert_array_equal(flags_before, r1.resolved_before)
        assert flags.mean() == entry["resolved_fraction_after"]
        assert flags_before.mean() == entry["resolved_fraction_before"]
        summary_entry = next(e for e in res.summary["results"] if e["method"] == "whitebox_roe"
                             and (e["learner"], e["num_partitions"]) == (r1.learner, r1.num_partitions))
        assert summary_entry["resolved_fraction"] == flags.mean()
        assert summary_entry["resolved_fraction_before_refinement"] == flags_before.mean()
        assert np.all(flags[flags_before])
        # resolved before refinement: certainly where the certificate is equal at the stored lower and
        # upper costs (it is monotone in the costs, and the refinement starts inside those bounds)
        learner_index = [lc.name for lc in conf.learners].index(r1.learner)
        wb_target = next(tg for tg in plan.targets if tg.kind == "partition" and tg.size == r1.num_partitions)
        files = [store.UnitFile(store.unit_path(res.run_dir, key)) for key in wb_target.units]
        stored = store.decode_block(store.read_stored_block(
            files, learner_index, 0, len(plan.y_test),
            ("scores", "cost_lower", "cost_upper", "pair_costs", "fallback")))
        sfb = stored.fallback
        spairs = np.where(sfb[..., None, None], 1.0, stored.pair_costs)
        at_lower, at_upper = (whitebox_roe(stored.scores, np.where(sfb[..., None], 1.0, c), spairs,
                                           joint="per_point").radius for c in (stored.cost_lower, stored.cost_upper))
        assert np.all(flags_before[at_lower == at_upper])
    with pytest.raises(ValueError, match="exactness"):
        pipeline.config_from_dict({**cfg, "exactness": {"refine": "yes"}})


def test_run_writes_the_resolved_flags_of_every_refinement_block(tmp_path, monkeypatch):
    """The white-box step runs `refine_whitebox_roe` block by block (block_size 7 of 60 test points);
    points.csv, the long table and the run's results carry exactly the flags those calls return. The
    calls are wrapped to drop flags at random (claiming less stays sound), so a flag written
    to the wrong point, block or column, or one not taken from the refinement, fails this test."""
    import pandas as pd

    from kernelcert import pipeline
    from kernelcert.pipeline import exactness

    rng = np.random.default_rng(12)
    calls = []

    def recorded(*args, **kwargs):
        res = refine_whitebox_roe(*args, **kwargs)
        resolved = res.resolved & (rng.random(len(res.resolved)) < 0.7)
        res = dataclasses.replace(res, resolved=resolved,
                                  resolved_before=res.resolved_before & resolved & (rng.random(len(resolved)) < 0.5))
        calls.append(res)
        return res

    monkeypatch.setattr(exactness, "refine_whitebox_roe", recorded)
    cfg = refine_run_config(tmp_path)
    cfg["execution"]["block_size"] = 7
    cfg["exactness"] = {"refine": True, "time_limit": 20}
    res = pipeline.run(cfg)
    header, table = pipeline.read_points(res.points_path)
    long = pipeline.read_points_long(res.run_dir)
    wb = [r for r in res.results if r.method == "whitebox_roe"]
    t = table.shape[0]
    blocks = -(-t // 7)
    assert len(wb) == 4 and len(calls) == 4 * blocks
    for i, r in enumerate(wb):
        got = calls[i * blocks:(i + 1) * blocks]
        resolved = np.concatenate([c.resolved for c in got])
        before = np.concatenate([c.resolved_before for c in got])
        assert 0 < before.sum() < resolved.sum() < t
        base = f"{r.learner}/{r.num_partitions}/whitebox_roe"
        np.testing.assert_array_equal(table[:, header.index(f"{base}/resolved")], resolved.astype(int))
        np.testing.assert_array_equal(table[:, header.index(f"{base}/resolved_before_refinement")], before.astype(int))
        np.testing.assert_array_equal(r.resolved, resolved)
        np.testing.assert_array_equal(r.resolved_before, before)
        part = long[(long["learner"] == r.learner) & (long["num_partitions"] == r.num_partitions)
                    & (long["method"] == "whitebox_roe")].sort_values("point")
        np.testing.assert_array_equal(part["resolved"].to_numpy(bool), resolved)
        np.testing.assert_array_equal(part["resolved_before_refinement"].to_numpy(bool), before)
        entry = next(e for e in res.summary["exactness"]["results"] if e["method"] == "whitebox_roe"
                     and (e["learner"], e["num_partitions"]) == (r.learner, r.num_partitions))
        assert entry["points_unresolved"] == np.flatnonzero(~resolved).tolist()
    table_text = pipeline.results_table(res.summary)
    shown = [float(f) for f in re.findall(r"\(resolved (\d\.\d\d)\)", table_text)]
    assert shown == [round(float(r.resolved.mean()), 2) for r in wb]
    others = long[long["method"] != "whitebox_roe"]
    assert isinstance(others["resolved"].dtype, pd.BooleanDtype) and others["resolved"].isna().all()
    assert not any(h.endswith("/resolved") for h in header if "/whitebox_roe/" not in h)
