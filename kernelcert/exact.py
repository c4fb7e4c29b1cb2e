"""Exact references for small problems: brute-force enumeration, MILPs (cvxpy + HiGHS), LabelCert.

These are the independent oracles of the test suite and benchmarks, offered to users for small
instances (single label-linear models, LabelCert's SVM MILP, and the run-off election / finite
aggregation ensembles of `kernelcert.roe`): enumeration is exponential (n up to about 12 with K <= 3), the MILPs are worst-case
exponential (up to a few dozen training samples; LabelCert above C_max much fewer).

Radius convention (docs/math.md §1): radius = (fewest flips that change the prediction) - 1. When no
relabelling within the budget `max_flips` changes the prediction the radius is reported as the
budget itself (`max_flips`, or n when there is no budget: flipping every label cannot change it).
Per-class costs are `inf` when the class cannot be reached within the budget.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from tqdm.auto import tqdm

from ._validation import as_float_array, check_columns, check_gram, check_int, check_labels, check_same_length
from .learners import KernelSVM, _kkt_residual, _polish_box_qp, onehot, solve_svm_dual
from .partition import fa_reach
from .roe import _check_costs, _check_scores, _check_shifts, roe_predict
from .voting import NO_ATTACK, check_votes, vote_counts

_MAX_LABELLINGS = 20_000_000
DEFAULT_MILP_TIME_LIMIT = 300.0  # seconds per LabelCert MILP solve
DEFAULT_EXHAUSTIVE_LIMIT = 300_000  # relabellings LabelCert retrains per test point before its MILP
_CHUNK = 1 << 15


# --------------------------------------------------------------------------- brute force
@dataclass(frozen=True)
class BruteForceResult:
    """Enumeration result. prediction (t,) int64 on the clean labels; radius (t,) int64 (the budget
    `max_flips` where nothing within it changes the prediction); class_costs (t, K) float64, the fewest
    flips after which the prediction is c (0 at the prediction, inf if not reachable within the budget);
    max_flips, the budget used (n when none was given). Unpacks as `radius, class_costs = result`.
    """

    prediction: np.ndarray
    radius: np.ndarray
    class_costs: np.ndarray
    max_flips: int

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.radius, self.class_costs))


def _budget(max_flips, n: int) -> int:
    if max_flips is None:
        return n
    return min(check_int("max_flips", max_flips, minimum=0), n)


def _count_labellings(n: int, K: int, budget: int) -> int:
    return sum(math.comb(n, d) * (K - 1) ** d for d in range(budget + 1))


def _labellings_by_distance(y: np.ndarray, K: int, budget: int, chunk: int = _CHUNK):
    """Yield (d, L): blocks L (m, n) of all relabellings of y at Hamming distance d = 0..budget."""
    n = len(y)
    yield 0, y[None, :].copy()
    for d in range(1, budget + 1):
        offsets = np.array(list(itertools.product(range(1, K), repeat=d)), dtype=np.int64)  # (no, d)
        per = max(1, chunk // len(offsets))
        combos = itertools.combinations(range(n), d)
        while True:
            cmb = np.array(list(itertools.islice(combos, per)), dtype=np.int64).reshape(-1, d)
            if cmb.shape[0] == 0:
                break
            pos = np.repeat(cmb, len(offsets), axis=0)
            off = np.tile(offsets, (cmb.shape[0], 1))
            L = np.tile(y, (pos.shape[0], 1))
            L[np.arange(pos.shape[0])[:, None], pos] = (y[pos] + off) % K
            yield d, L


def _check_enumerable(n: int, K: int, budget: int) -> None:
    total = _count_labellings(n, K, budget)
    if total > _MAX_LABELLINGS:
        raise ValueError(
            f"brute force would enumerate {total} relabellings (n={n}, K={K}, max_flips={budget}); "
            f"the limit is {_MAX_LABELLINGS}: use a smaller problem or a smaller max_flips"
        )


def _finish(prediction: np.ndarray, class_costs: np.ndarray, budget: int) -> BruteForceResult:
    t = len(prediction)
    other = class_costs.copy()
    other[np.arange(t), prediction] = np.inf
    best = other.min(axis=1)
    radius = np.where(np.isfinite(best), best - 1, budget).astype(np.int64)
    return BruteForceResult(prediction=prediction.astype(np.int64), radius=radius, class_costs=class_costs,
                            max_flips=budget)


def brute_force_certificate(weights: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int | None = None,
                            max_flips: int | None = None) -> BruteForceResult:
    """Exact certificate of a label-linear model by enumerating every relabelling within `max_flips`.

    weights W (t, n), labels (n,) in 0..K-1. Each relabelling y' gets scores `W @ onehot(y')`
    (t, K) and prediction argmax with ties to the smaller index. Vectorised over blocks of
    relabellings in order of increasing Hamming distance; at most 2e7 relabellings
    (sum_d C(n, d)(K-1)^d), i.e. n up to about 12 for K = 3 without a budget.
    """
    W = as_float_array("weights", weights, ndim=2)
    y, K = check_labels(labels, num_classes, name="labels")
    check_columns("weights", W, len(y), what="training labels")
    t, n = W.shape
    budget = _budget(max_flips, n)
    _check_enumerable(n, K, budget)
    classes = np.arange(K)
    costs = np.full((t, K), np.inf)
    prediction = None
    for d, L in _labellings_by_distance(y, K, budget):
        m = L.shape[0]
        onehot = (L[:, :, None] == classes).astype(np.float64)  # (m, n, K)
        scores = (W @ onehot.transpose(1, 0, 2).reshape(n, m * K)).reshape(t, m, K)
        pred = np.argmax(scores, axis=2)  # (t, m)
        if d == 0:
            prediction = pred[:, 0]
        seen = (pred[:, :, None] == classes).any(axis=1)  # (t, K)
        costs = np.where(seen & np.isinf(costs), float(d), costs)
    assert prediction is not None  # distance 0 (the clean labels) is always enumerated first
    return _finish(prediction, costs, budget)


def brute_force_retrain(fit_predict: Callable[[np.ndarray], np.ndarray], labels: npt.ArrayLike,
                        num_classes: int | None = None,
                        max_flips: int | None = None) -> BruteForceResult:
    """Model-independent oracle: retrain from scratch on every relabelling within `max_flips`.

    `fit_predict(labels (n,)) -> predictions (t,)` trains the real learner on the given labels and
    predicts the test points. Called once per relabelling (in order of increasing Hamming
    distance), so keep n and the budget tiny. Same result fields and conventions as
    `brute_force_certificate`.
    """
    if not callable(fit_predict):
        raise TypeError("fit_predict must be callable: fit_predict(labels) -> predictions (t,)")
    y, K = check_labels(labels, num_classes, name="labels")
    n = len(y)
    budget = _budget(max_flips, n)
    _check_enumerable(n, K, budget)
    costs = None
    prediction = None
    for d, L in _labellings_by_distance(y, K, budget):
        for row in L:
            pred = np.asarray(fit_predict(row.copy()))
            if pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer) or pred.min(initial=0) < 0 \
                    or pred.max(initial=0) >= K:
                raise ValueError(f"fit_predict must return a 1-D integer array of classes in 0..{K - 1}, got {pred!r}")
            if costs is None:
                costs = np.full((len(pred), K), np.inf)
                prediction = pred.astype(np.int64)
            elif len(pred) != costs.shape[0]:
                raise ValueError(f"fit_predict returned {len(pred)} predictions, earlier {costs.shape[0]}")
            hit = np.isinf(costs[np.arange(len(pred)), pred])
            costs[np.arange(len(pred))[hit], pred[hit]] = float(d)
    assert prediction is not None and costs is not None  # distance 0 (the clean labels) comes first
    return _finish(prediction, costs, budget)


# --------------------------------------------------------------------------- MILP helpers
# Soundness of the MILP radii and costs rests on two rules. (1) The first LabelCert MILP is a
# relaxation of the exact problem: ties count as successes, and every numerical perturbation we
# make is compensated by a slack of at least its size, so its optimum is a lower bound on the true
# optimum. (2) Every returned attack is re-checked against the real model in float64 (recomputed
# scores, or an SVM retrained with the QP solver). Exact = a verified attack meets the bound.
# Coefficients below 1e-6 (after scaling to max 1) are dropped with that slack: HiGHS silently
# ignores values below 1e-9 and, in our tests (highspy 1.10-1.15), its presolve returned wrong
# optima ("infeasible", or too many flips) on these models when coefficients near 1e-7 were kept;
# with the 1e-6 threshold ~2,500 random instances agreed with brute force / QP retraining.
_DROP = 1e-6


def _clean(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries with |a| < 1e-6 set to 0, and the dropped absolute mass per row (last axis)."""
    small = np.abs(a) < _DROP
    return np.where(small, 0.0, a), np.where(small, np.abs(a), 0.0).sum(axis=-1)


def _solve_highs(prob, time_limit: float | None) -> str:
    import cvxpy as cp

    opts = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    try:
        with warnings.catch_warnings():  # a time limit is reported through the status instead
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            prob.solve(solver=cp.HIGHS, warm_start=False, **opts)
    except cp.error.SolverError as exc:  # reported in the status, never hidden
        return f"solver_error: {exc}"
    return prob.status


def _solve_highs_model(model: "_AttackMilp") -> str:
    """Solve a HiGHS model (highspy); "optimal", "infeasible", "time_limit" or HiGHS's status text."""
    return model.solve()


def _rows_scale(v: np.ndarray) -> np.ndarray:
    """v / max|v| (v itself when it is all zeros)."""
    s = float(np.max(np.abs(v))) if v.size else 0.0
    return v / s if s > 0 else v


def _integral(value) -> int:
    """The integer objective value of an optimal MILP (flip counts are integers)."""
    return int(math.ceil(float(value) - 1e-6))


# --------------------------------------------------------------------------- exact A_c by MILP
def _class_cost_problem(n: int, K: int, c: int):
    import cvxpy as cp

    w = cp.Parameter(n)
    cost = cp.Parameter((n, K), nonneg=True)  # 1 - onehot(y)
    marg = cp.Parameter(K)
    z = cp.Variable((n, K), boolean=True)
    cons = [cp.sum(z, axis=1) == 1]
    cons += [w @ (z[:, c] - z[:, k]) >= marg[k] for k in range(K) if k != c]
    prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(cost, z))), cons)
    return prob, w, cost, marg, z


def milp_class_costs(weights: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int | None = None,
                     targets: npt.ArrayLike | None = None, *, margin: float = 1e-6,
                     time_limit: float | None = None) -> npt.NDArray[np.float64]:
    """Exact per-class costs A_c (t, K) of a label-linear model by MILPs per (test point, class).

    A_c = fewest flips after which the prediction IS c: binary one-hot new labels z (n, K),
    minimise sum_j (1 - z[j, y_j]) subject to s_c > s_k for k < c and s_c >= s_k for k > c
    (tie rule), s = w_i @ z (cvxpy + HiGHS). Weights are scaled to max |w_i| = 1, and weights below
    1e-6 are dropped (HiGHS is unreliable with such coefficients) with a slack of their mass. First a
    relaxation (ties count, slack allowed): infeasible means c can never win; an optimum whose
    labelling verifies (float scores recomputed) is exact. Otherwise the MILP is re-solved with strict
    inequalities by `margin` (+ the slack) and verified again. So this is the oracle for score gaps:
    exact except that a win by a gap below margin + dropped mass may count as a tie (the cost is then
    over-estimated; it is never under-estimated, every value being a verified attack).
    RuntimeError if no optimum verifies or when `time_limit` (seconds per MILP) stops the solver.
    0 at the prediction, inf if c cannot win, NaN for classes not in `targets` (None = all classes).
    """
    W = as_float_array("weights", weights, ndim=2)
    y, K = check_labels(labels, num_classes, name="labels")
    check_columns("weights", W, len(y), what="training labels")
    if not (np.isfinite(margin) and 0 < margin < 1e-2):
        raise ValueError(f"margin must be in (0, 1e-2), got {margin}")
    if targets is None:
        targets = list(range(K))
    else:
        targets = sorted({check_int("target", c, minimum=0, maximum=K - 1) for c in np.atleast_1d(targets)})
    t, n = W.shape
    Y = (y[:, None] == np.arange(K)).astype(np.float64)
    eye = np.eye(K)
    pred = np.argmax(W @ Y, axis=1)
    out = np.full((t, K), np.nan)
    out[np.arange(t), pred] = 0.0
    for c in targets:
        rows = np.flatnonzero(pred != c)
        if rows.size == 0:
            continue
        prob, w_par, cost_par, marg_par, z = _class_cost_problem(n, K, c)
        cost_par.value = 1.0 - Y
        for i in rows:
            wi, dropped = _clean(_rows_scale(W[i]))
            eps = float(dropped)
            w_par.value = wi
            value = None
            # (margin for k < c, margin for k > c): the relaxation (ties and the dropped mass allowed;
            # infeasible = c can never win), then strict wins, then strict everywhere
            for strict, loose in ((-eps, -eps), (margin + eps, eps), (2 * margin + eps, margin + eps)):
                marg_par.value = np.array([strict if k < c else loose for k in range(K)])
                status = _solve_highs(prob, time_limit)
                if status == "infeasible":
                    value = np.inf
                    break
                if status != "optimal":
                    raise RuntimeError(f"MILP for test point {i}, class {c} ended with status {status!r}"
                                       + (" (time limit)" if status == "user_limit" else ""))
                y2 = np.argmax(np.asarray(z.value), axis=1)
                if int(np.argmax(W[i] @ eye[y2])) == c:
                    value = float(np.count_nonzero(y2 != y))
                    break
            if value is None:
                raise RuntimeError(f"MILP attacks for test point {i}, class {c} do not verify (a near tie)")
            out[i, c] = value
    return out


# --------------------------------------------------------------------------- LabelCert SVM MILP
@dataclass(frozen=True)
class LabelCertResult:
    """LabelCert result per test point.

    prediction (t,) int64 of the SVM trained on the clean labels; radius (t,) int64: exact where
    `exact` is True, otherwise a sound lower bound; radius_upper (t,) int64: an upper bound backed by
    a verified attack (the budget when no attack was verified); exact (t,) bool; attacks: per point
    the verified attacked labels (n,) of size radius_upper + 1, or None; status: solver statuses per
    point; max_flips (budget used, n when none), C and C_max; stopped_early (t,) bool: a time limit
    stopped the solver (radius then the proven bound, exact False). `np.asarray(result)` is the radius.
    """

    prediction: np.ndarray
    radius: np.ndarray
    radius_upper: np.ndarray
    exact: np.ndarray
    attacks: tuple
    status: tuple
    max_flips: int
    C: float
    C_max: float
    stopped_early: np.ndarray | None = None

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.radius, dtype=dtype)


def _tight_big_m(G: np.ndarray, eps_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample big-M of the complementarity constraints (scaled duals a = alpha / C in [0, 1]).

    Stationarity of the no-bias dual reads u_i - v_i = sum_j G_ij y_i y_j a_j - 1 (up to the dropped
    mass eps_i). u_i > 0 forces a_i = 0 and v_i = 0, so u_i <= sum_{j != i} |G_ij| - 1; v_i > 0
    forces a_i = 1 and u_i = 0, so v_i <= 1 - G_ii + sum_{j != i} |G_ij| (the own term y_i^2 G_ii a_i
    = G_ii >= 0 cannot help). Both tighter than LabelCert's C sum_j |K_ij| -+ 1; 2 eps_i of slack."""
    off = np.abs(G).sum(axis=1) - np.abs(np.diag(G))
    Mu = np.maximum(0.0, off + 2 * eps_row - 1.0)
    Mv = np.maximum(0.0, 1.0 - np.diag(G) + off + 2 * eps_row)
    return Mu, Mv


def _duplicate_pairs(G: np.ndarray, kx: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive pairs (i, j), i < j, of interchangeable training samples: equal rows of G (so equal
    self-similarity and equal similarity to each other), equal test-row entry and equal label."""
    groups: dict[bytes, list[int]] = {}
    for i in range(len(y)):
        key = G[i].tobytes() + np.float64(kx[i]).tobytes() + np.int64(y[i]).tobytes()
        groups.setdefault(key, []).append(i)
    return [(g[m], g[m + 1]) for g in groups.values() for m in range(len(g) - 1)]


class _AttackMilp:
    """LabelCert's single-level MILP of the attack on one test point, as one HiGHS model (highspy).

    No-bias one-vs-rest SVM whose clean prediction is p; G = C·K_train with |G_ij| < 1e-6 dropped
    (eps_row = dropped mass per row). Per binary problem k (one for K = 2): scaled duals a in [0, 1];
    labels y^k_j = 2 Z[j, k] - 1 from the shared one-hot Z; w = Z[:, k] a and q_ij = Z[i, k] z_j
    (z = 2 w - a = y^k a) linearised exactly (McCormick with binary Z; O(n^2) variables). KKT of the
    dual (LabelCert paper): sum_j G_ij (2 q_ij - z_j) - u_i + v_i = 1 (within +-eps_row, which keeps
    the exact solution feasible), u <= M_u s, a <= 1 - s, v <= M_v t, a >= t with the per-sample
    big-M of `_tight_big_m` (s or t fixed to 0 where its M is 0). Logits (scaled by 1/C and by the
    test row's max |K|) f_k = kx @ z^k (f_1 = -f_0 for K = 2); for K > 2 a binary selector picks the
    class c that beats p: f_c - f_p >= marg_c, relaxed by a big-M when not selected. Interchangeable
    samples (`_duplicate_pairs`) are ordered (the later one is flipped only if the earlier one is),
    which removes symmetric copies of every solution and no attack size. Objective: the number of
    flips; the budget row and the margins are row bounds, changed between solves of the same model.
    (Linearising y_i (G z)_i instead needs only O(n) variables, but HiGHS 1.10-1.15 presolve returned
    wrong optima on that form in our tests, so it is not offered.)
    """

    def __init__(self, G: np.ndarray, eps_row: np.ndarray, y: np.ndarray, K: int, p: int, kx: np.ndarray,
                 bigm: float, time_limit: float | None):
        import highspy  # the MILP solver; imported where the model is built (it loads a shared library)

        n = len(y)
        self.n, self.K, self.p = n, K, p
        lb: list[np.ndarray] = []
        ub: list[np.ndarray] = []
        integer: list[np.ndarray] = []
        ncol = 0

        def cols(count: int, low, high, is_int: bool) -> np.ndarray:
            nonlocal ncol
            lb.append(np.broadcast_to(np.asarray(low, float), (count,)))
            ub.append(np.broadcast_to(np.asarray(high, float), (count,)))
            integer.append(np.full(count, is_int))
            ncol += count
            return np.arange(ncol - count, ncol)

        rr: list[np.ndarray] = []
        cc: list[np.ndarray] = []
        vv: list[np.ndarray] = []
        rlo: list[np.ndarray] = []
        rhi: list[np.ndarray] = []
        nrow = 0
        inf = np.inf

        def rows(terms, low, high) -> np.ndarray:
            """m rows: terms = [(cols (m,) or (m, r), coefficient: scalar, (m,) or (m, r))], bounds."""
            nonlocal nrow
            m = np.asarray(terms[0][0]).shape[0]
            idx = np.arange(nrow, nrow + m)
            for col, coef in terms:
                col = np.asarray(col).reshape(m, -1)
                coef = np.asarray(coef, float)
                coef = np.broadcast_to(coef.reshape(m, -1) if coef.ndim else coef, col.shape)
                rr.append(np.repeat(idx, col.shape[1]))
                cc.append(col.ravel())
                vv.append(coef.ravel())
            rlo.append(np.broadcast_to(np.asarray(low, float), (m,)))
            rhi.append(np.broadcast_to(np.asarray(high, float), (m,)))
            nrow += m
            return idx

        Y = (y[:, None] == np.arange(K)).astype(np.float64)
        Z = cols(n * K, 0, 1, True).reshape(n, K)
        Mu, Mv = _tight_big_m(G, eps_row)
        rows([(Z, 1.0)], 1.0, 1.0)  # one label per sample
        flipped = Z[:, :][Y == 0].reshape(n, K - 1)
        self.budget_row = int(rows([(flipped.reshape(1, -1), 1.0)], 0.0, float(n))[0])
        zs = []
        ar = np.arange(n)
        for k in range(1 if K == 2 else K):
            b = Z[:, k]
            a = cols(n, 0, 1, False)
            w = cols(n, 0, 1, False)
            u = cols(n, 0, Mu, False)
            v = cols(n, 0, Mv, False)
            s_ = cols(n, 0, (Mu > 0).astype(float), True)
            t_ = cols(n, 0, (Mv > 0).astype(float), True)
            q = cols(n * n, -1, 1, False).reshape(n, n)
            rows([(w, 1.0), (b, -1.0)], -inf, 0.0)
            rows([(w, 1.0), (a, -1.0)], -inf, 0.0)
            rows([(w, 1.0), (a, -1.0), (b, -1.0)], -1.0, inf)
            rows([(u, 1.0), (s_, -Mu)], -inf, 0.0)
            rows([(a, 1.0), (s_, 1.0)], -inf, 1.0)
            rows([(v, 1.0), (t_, -Mv)], -inf, 0.0)
            rows([(a, 1.0), (t_, -1.0)], 0.0, inf)
            bi = np.repeat(b[:, None], n, axis=1)
            wj = np.repeat(w[None, :], n, axis=0)
            aj = np.repeat(a[None, :], n, axis=0)
            qf, bf, wf, af = q.ravel(), bi.ravel(), wj.ravel(), aj.ravel()
            rows([(qf, 1.0), (bf, -1.0)], -inf, 0.0)
            rows([(qf, 1.0), (bf, 1.0)], 0.0, inf)
            rows([(qf, 1.0), (wf, -2.0), (af, 1.0), (bf, 1.0)], -inf, 1.0)
            rows([(qf, 1.0), (wf, -2.0), (af, 1.0), (bf, -1.0)], -1.0, inf)
            # stationarity: sum_j G_ij (2 q_ij - 2 w_j + a_j) - u_i + v_i in [1 - eps_i, 1 + eps_i]
            nz = G != 0
            for i in ar:
                js = np.flatnonzero(nz[i])
                rows([(np.concatenate([q[i, js], w[js], a[js], [u[i], v[i]]])[None, :],
                       np.concatenate([2 * G[i, js], -2 * G[i, js], G[i, js], [-1.0, 1.0]])[None, :])],
                     1.0 - eps_row[i], 1.0 + eps_row[i])
            zs.append((w, a))
        # logit rows, one per rival class: f_c - f_p (- bigm sel_c for K > 2) >= bound set per stage
        self.logit_rows: dict[int, int] = {}
        self.bigm = float(bigm) if K > 2 else 0.0
        if K == 2:
            w, a = zs[0]
            sign = -2.0 if p == 0 else 2.0  # f_(1-p) - f_p = -+2 f_0
            c = 1 - p
            self.logit_rows[c] = int(rows([(np.concatenate([w, a])[None, :],
                                            np.concatenate([2 * sign * kx, -sign * kx])[None, :])], 0.0, inf)[0])
        else:
            sel = cols(K, 0, [0.0 if c == p else 1.0 for c in range(K)], True)
            rows([(sel[None, :], 1.0)], 1.0, 1.0)
            wp, ap = zs[p]
            for c in range(K):
                if c == p:
                    continue
                wc, ac = zs[c]
                self.logit_rows[c] = int(rows([(np.concatenate([wc, ac, wp, ap, [sel[c]]])[None, :],
                                                np.concatenate([2 * kx, -kx, -2 * kx, kx, [-self.bigm]])[None, :])],
                                              0.0, inf)[0])
        for di, dj in _duplicate_pairs(G, kx, y):  # flipped_j <= flipped_i  <=>  Z[i, y_i] - Z[j, y_j] <= 0
            rows([(np.array([[Z[di, y[di]], Z[dj, y[dj]]]]), np.array([[1.0, -1.0]]))], -inf, 0.0)
        self.Z = Z

        A = sp.csr_matrix((np.concatenate(vv), (np.concatenate(rr), np.concatenate(cc))), shape=(nrow, ncol))
        A.sum_duplicates()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = ncol, nrow
        cost = np.zeros(ncol)
        cost[Z.ravel()] = (1.0 - Y).ravel()
        lp.col_cost_ = cost
        lp.col_lower_, lp.col_upper_ = np.concatenate(lb), np.concatenate(ub)
        lp.row_lower_, lp.row_upper_ = np.concatenate(rlo), np.concatenate(rhi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = ncol, nrow
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data
        lp.integrality_ = [highspy.HighsVarType.kInteger if f else highspy.HighsVarType.kContinuous
                           for f in np.concatenate(integer)]
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.0)
        h.setOptionValue("threads", 1)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit))
        h.passModel(lp)
        self.h = h
        self._status_names = {highspy.HighsModelStatus.kOptimal: "optimal",
                              highspy.HighsModelStatus.kInfeasible: "infeasible",
                              highspy.HighsModelStatus.kTimeLimit: "time_limit"}

    def set_budget(self, lowest: int, budget: int) -> None:
        """Attacks of lowest..budget flips (lowest: a proven lower bound on the attack size)."""
        self.h.changeRowBounds(self.budget_row, float(lowest), float(budget))

    def set_margins(self, marg: dict[int, float]) -> None:
        for c, row in self.logit_rows.items():
            self.h.changeRowBounds(row, float(marg[c]) - self.bigm, np.inf)

    def solve(self) -> str:
        self.h.run()
        status = self.h.getModelStatus()
        return self._status_names.get(status, self.h.modelStatusToString(status))

    def value(self) -> float:
        return float(self.h.getInfo().objective_function_value)

    def dual_bound(self) -> float:
        bound = float(self.h.getInfo().mip_dual_bound)
        return bound if np.isfinite(bound) else -np.inf

    def labels(self) -> np.ndarray:
        x = np.asarray(self.h.getSolution().col_value)
        return np.argmax(x[self.Z], axis=1)


def _svm_margin(Kt: np.ndarray, labels: np.ndarray, K: int, C: float, kx: np.ndarray, p: int) -> float:
    """f_p(x) - max_{c != p} f_c(x) of the no-bias one-vs-rest SVM retrained on `labels` (dual QP),
    with the tie rule folded in: the prediction stays p iff the value is > 0 (or = 0 and p is the
    smallest maximiser). Used only to rank candidate flips; attacks are verified separately."""
    ypm = np.stack([np.where(labels == k, 1.0, -1.0) for k in range(1 if K == 2 else K)])
    f = np.array([kx @ (solve_svm_dual(Kt, ypm[k], C) * ypm[k]) for k in range(len(ypm))])
    if K == 2:
        f = np.array([f[0], -f[0]])
    rival = np.delete(f, p).max()
    return float(f[p] - rival)


def _beam_svm_attack(retrain: "_Retrainer", y: np.ndarray, kx: np.ndarray, p: int, budget: int,
                     attack_works: Callable[[np.ndarray], bool], width: int = 8) -> np.ndarray | None:
    """A verified attack (labels (n,)) found by beam search, or None within `budget` flips.

    Level s keeps the `width` relabellings of s samples with the smallest retrained margin
    f_p - max_c f_c (`_Retrainer.retrain_many`); level s + 1 retrains every one-flip extension of
    them, each warm-started from its parent's duals (one flip away: a few active-set steps). The
    first relabelling (in the order parent, sample, class) that clearly changes the prediction and
    passes `attack_works` is returned: an upper bound on the attack size, never a lower bound.
    """
    K = retrain.K
    beam = [(y.copy(), retrain.start)]
    for _ in range(budget):
        trials: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        seen = set()
        for lab, duals in beam:
            for j in np.flatnonzero(lab == y):
                for c in range(K):
                    if c == y[j]:
                        continue
                    trial = lab.copy()
                    trial[j] = c
                    key = trial.tobytes()
                    if key not in seen:
                        seen.add(key)
                        trials.append(trial)
                        starts.append(duals)
        if not trials:
            return None
        scored = []
        step = retrain.batch_size()
        for lo in range(0, len(trials), step):
            labs = np.stack(trials[lo:lo + step])
            verdict, gap, found = retrain.retrain_many(labs, kx, p, np.stack(starts[lo:lo + step]))
            for r in range(len(labs)):
                if verdict[r] == -1 and attack_works(labs[r]):
                    return labs[r]
                scored.append((float(gap[r]), labs[r].tobytes(), labs[r], found[r]))
        scored.sort(key=lambda e: (e[0], e[1]))
        beam = [(e[2], e[3]) for e in scored[:width]]
    return None


def _greedy_svm_attack(Kt, y, K, C, kx, p, budget, attack_works, candidates: int = 4, retrain=None):
    """A verified attack (labels (n,)) on the SVM at C found greedily, or None within `budget` flips.

    With a usable `_Retrainer` this is the beam search `_beam_svm_attack`; otherwise:

    Each step ranks the untouched samples by the first-order change of f_p - f_c when one label is
    flipped to c with the current duals held fixed (the label-linear picture), retrains the SVM for
    the `candidates` best and keeps the flip that lowers the retrained margin most. Any labelling
    it returns has passed `attack_works` (retraining); it only ever serves as an upper bound and
    to tighten the MILP's budget.
    """
    if retrain is not None and retrain.usable:
        return _beam_svm_attack(retrain, y, kx, p, budget, attack_works)
    lab = y.copy()
    for _ in range(budget):
        ypm = np.stack([np.where(lab == k, 1.0, -1.0) for k in range(1 if K == 2 else K)])
        alpha = np.stack([solve_svm_dual(Kt, ypm[k], C) for k in range(len(ypm))])
        contrib = alpha * kx[None, :]  # (problems, n): |effect| of sample j on f_k per unit of y^k_j
        options = []
        for j in np.flatnonzero(lab == y):
            for c in range(K):
                if c == y[j]:
                    continue
                if K == 2:  # f_0 changes by -2 y^0_j a_j k_j, and the margin f_p - f_(1-p) by twice that
                    gain = 4.0 * (1.0 if p == 0 else -1.0) * ypm[0, j] * contrib[0, j]
                else:  # y^(y_j)_j turns -1 and y^c_j turns +1: f_(y_j) drops by 2 a k, f_c rises by 2 a k
                    gain = 2.0 * contrib[p, j] * (float(y[j] == p) - float(c == p)) + 2.0 * contrib[c, j]
                options.append((-gain, j, c))
        if not options:
            return None
        options.sort()
        best = None
        for _, j, c in options[:candidates]:
            trial = lab.copy()
            trial[j] = c
            m = _svm_margin(Kt, trial, K, C, kx, p)
            if best is None or m < best[0]:
                best = (m, trial)
        assert best is not None  # options is not empty
        lab = best[1]
        if attack_works(lab):
            return lab
    return None


_UNSOLVED = 2  # `_Retrainer.retrain_many` verdict of a relabelling without a certified solve
_BATCH_ENTRIES = 1 << 21  # float64 entries of the (problems, n, n) Hessians retrained in one batch
_KEPT_DUALS = 1 << 25  # float64 entries of the duals kept as warm starts for the next size (256 MiB)


def _batch_box_qp(H: np.ndarray, b0: np.ndarray, max_iter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """min (1/2) b'H_r b - 1'b on [0, 1]^n for m problems at once: a primal active-set method.

    H (m, n, n) symmetric positive definite, b0 (m, n) feasible starts (clipped to [0, 1]). Each
    step solves the stationarity equations on the free coordinates (one batched linear solve: the
    free block of H_r, identity rows for the coordinates held at a bound); if the solution leaves
    the box, the step stops at the first bound hit and that coordinate is held there; otherwise the
    held coordinate whose multiplier has the wrong sign by the most is freed, until every KKT
    condition holds within 1e-9 relative (as in `learners._polish_box_qp`). Finite for strictly
    convex problems; from a start one flip away it takes a few steps. Returns (b (m, n), converged
    (m,) bool); rows not converged within max_iter (default 4n + 10) or with a singular block are
    left for the caller's one-at-a-time path."""
    m, n = b0.shape
    max_iter = 4 * n + 10 if max_iter is None else max_iter
    tau = 1e-9 * (1.0 + np.abs(H).sum(axis=2).max(axis=1, initial=0.0))
    b = np.clip(b0, 0.0, 1.0)
    lower = b <= 1e-7
    upper = b >= 1.0 - 1e-7
    b = np.where(lower, 0.0, np.where(upper, 1.0, b))
    done = np.zeros(m, bool)
    rows = np.arange(m)
    eye = np.eye(n)
    for _ in range(max_iter):
        if rows.size == 0:
            break
        Hr, lo, up, br, tr = H[rows], lower[rows], upper[rows], b[rows], tau[rows, None]
        free = ~(lo | up)
        ub = up.astype(np.float64)
        M = np.where(free[:, :, None] & free[:, None, :], Hr, 0.0) + eye * (~free)[:, :, None]
        rhs = np.where(free, 1.0 - np.einsum("rij,rj->ri", Hr, ub), ub)
        try:
            x = np.linalg.solve(M, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            break
        consistent = np.max(np.abs(np.einsum("rij,rj->ri", M, x) - rhs), axis=1, initial=0.0) <= tr[:, 0]
        d = x - br
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.where(free & (x < -1e-12), br / -d, np.where(free & (x > 1.0 + 1e-12), (1.0 - br) / d, np.inf))
        block = np.argmin(limit, axis=1)
        step = limit[np.arange(len(rows)), block]
        inside = ~np.isfinite(step)  # the free solution is in the box: a full step
        # full step: check the multipliers of the held coordinates
        xin = np.clip(x, 0.0, 1.0)
        grad = np.einsum("rij,rj->ri", Hr, xin) - 1.0
        wrong = np.where(lo, -grad, np.where(up, grad, -np.inf))  # > tau: the bound should be released
        worst = np.argmax(wrong, axis=1)
        optimal = inside & consistent & (wrong[np.arange(len(rows)), worst] <= tr[:, 0])
        b[rows[optimal]] = xin[optimal]
        done[rows[optimal]] = True
        # full step, a multiplier of the wrong sign: release the worst held coordinate
        rel = inside & consistent & ~optimal
        ri = rows[rel]
        b[ri] = xin[rel]
        lower[ri, worst[rel]] = False
        upper[ri, worst[rel]] = False
        # partial step to the first bound hit; hold that coordinate there
        part = ~inside & consistent
        rp, bp = rows[part], block[part]
        t = np.clip(step[part], 0.0, 1.0)[:, None]
        b[rp] = np.clip(br[part] + t * d[part], 0.0, 1.0)
        hit_low = x[part, bp] < 0.0
        b[rp, bp] = np.where(hit_low, 0.0, 1.0)
        lower[rp, bp] = hit_low
        upper[rp, bp] = ~hit_low
        rows = rows[consistent & ~optimal]
    return b, done


class _Retrainer:
    """The one-vs-rest no-bias SVM retrained on relabelled data, fast and with an error bound.

    Each binary dual is solved by active-set steps (`_batch_box_qp`, many relabellings at once; then
    `learners._polish_box_qp` and the interior-point solve for the rest) warm-started from the
    clean labels' solution or a given start; only a solution satisfying every KKT condition is used.
    K_train must be numerically positive definite (`usable`), so each dual has a unique optimum b*
    and the solution b found satisfies ||b - b*||_2 <= (1 + L) / min(mu, 1) * sqrt(n) * r (mu, L:
    extreme eigenvalues of H = C diag(y) K diag(y), the same as C K's; r: the projected-gradient
    residual): the error bound of a strongly convex box-constrained quadratic. A logit
    f_k = C sum_j K(x, x_j) y^k_j b_j is then known within C ||K(x, .)||_2 times that bound. The
    verdicts rest on that bound alone, so they do not depend on the starts.
    """

    def __init__(self, Kt: np.ndarray, y: np.ndarray, K: int, C: float):
        self.Kt, self.K, self.C, self.n = Kt, K, C, len(y)
        ev = np.linalg.eigvalsh(Kt)
        rounding = self.n * np.finfo(np.float64).eps * float(np.abs(ev).max(initial=0.0))  # eigvalsh's error
        self.mu, self.L = C * (float(ev[0]) - rounding), C * (float(ev[-1]) + rounding)
        self.usable = bool(ev[0] > 1e-8 * max(ev[-1], 0.0)) and self.n > 0
        self.problems = 1 if K == 2 else K
        self.start = np.ones((self.problems, self.n))
        if self.usable:
            for k in range(self.problems):
                solved = self._solve(np.where(y == k, 1.0, -1.0), np.ones(self.n))
                if solved is not None:
                    self.start[k] = solved[0]

    def batch_size(self) -> int:
        """Relabellings per `retrain_many` call that keep its Hessians within _BATCH_ENTRIES floats."""
        return max(1, _BATCH_ENTRIES // (self.problems * self.n * self.n))

    def _solve(self, signs: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, float] | None:
        """(b, projected-gradient residual) of the scaled dual for these signs: active-set steps from
        `start`, then from b = 1, then the interior-point solve of `solve_svm_dual`."""
        if not self.usable:
            return None
        H = self.C * (signs[:, None] * self.Kt * signs[None, :])
        H = 0.5 * (H + H.T)
        for s0 in (start, np.ones(self.n)):
            b = _polish_box_qp(H, s0)
            if b is not None:
                return b, _kkt_residual(H, b)
        alpha, _ = solve_svm_dual(self.Kt, signs, self.C, return_residual=True)
        b = np.clip(alpha / self.C, 0.0, 1.0)
        return b, _kkt_residual(H, b)

    def decide(self, labels: np.ndarray, kx: np.ndarray, p: int) -> int | None:
        """+1: the retrained SVM clearly keeps predicting p (every rival strictly below f_p by more than
        the error bound); -1: some class clearly beats p; 0: within the error bound (a near tie);
        None: no certified solve (use the MILP)."""
        return self.margin(labels, kx, p)[0]

    def margin(self, labels: np.ndarray, kx: np.ndarray, p: int) -> tuple[int | None, float]:
        """(`decide`'s verdict, f_p - max_{c != p} f_c of the retrained SVM)."""
        verdict, gap, _ = self.retrain_many(labels[None, :], kx, p)
        return (None if verdict[0] == _UNSOLVED else int(verdict[0])), float(gap[0])

    def retrain_many(self, labels: np.ndarray, kx: np.ndarray, p: int,
                     starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`decide` for B relabellings at once: labels (B, n), starts (B, problems, n) (e.g. the duals of
        relabellings one flip away; None: the clean labels' duals) only warm-start the solver.

        Returns verdicts (B,) int64 (+1, -1, 0 as in `decide`, _UNSOLVED where no certified solve
        exists), f_p - max_{c != p} f_c (B,) (inf where unsolved) and the scaled duals (B, problems, n)."""
        verdict, low, b, _, _ = self.retrain_many_bounded(labels, kx, p, starts)
        return verdict, low, b

    def retrain_many_bounded(self, labels: np.ndarray, kx: np.ndarray, p: int, starts: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`retrain_many` plus (B,) proven lower bounds on f_p - max_{c != p} f_c of the exact retrained
        SVM (the computed margin minus its certified error; -inf where unsolved) and (B, problems)
        certified bounds on ||b - b*||_2 of the returned scaled duals (inf where unsolved)."""
        B, n, P = labels.shape[0], self.n, self.problems
        signs = np.where(labels[:, None, :] == np.arange(P)[None, :, None], 1.0, -1.0)  # (B, P, n)
        if not self.usable:
            return (np.full(B, _UNSOLVED, np.int64), np.full(B, np.inf), np.ones((B, P, n)), np.full(B, -np.inf),
                    np.full((B, P), np.inf))
        s = signs.reshape(B * P, n)
        H = self.C * (s[:, :, None] * self.Kt[None, :, :] * s[:, None, :])
        H = 0.5 * (H + H.transpose(0, 2, 1))
        b0 = np.broadcast_to(self.start, (B, P, n)) if starts is None else np.asarray(starts, np.float64)
        b, ok = _batch_box_qp(H, b0.reshape(B * P, n))
        for r in np.flatnonzero(~ok):
            solved = self._solve(s[r], b0.reshape(B * P, n)[r])
            if solved is not None:
                b[r], ok[r] = solved[0], True
        grad = np.einsum("rij,rj->ri", H, b) - 1.0
        res = np.max(np.abs(b - np.clip(b - grad, 0.0, 1.0)), axis=1, initial=0.0).reshape(B, P)
        b = b.reshape(B, P, n)
        bound = (1.0 + self.L) / min(self.mu, 1.0) * np.sqrt(n) * res
        f = self.C * np.einsum("bpn,n->bp", signs * b, kx)
        err = np.max(self.C * float(np.linalg.norm(kx)) * bound + 1e-12 * self.C * float(np.abs(kx).sum()), axis=1)
        if self.K == 2:
            f = np.concatenate([f, -f], axis=1)
        gap = f[:, [p]] - np.delete(f, p, axis=1)  # f_p - f_c for every rival c
        tol = (2 * err + 1e-9 * np.max(np.abs(f), axis=1))[:, None]
        verdict = np.where(np.all(gap > tol, axis=1), 1, np.where(np.any(gap < -tol, axis=1), -1, 0)).astype(np.int64)
        low = gap.min(axis=1)
        certified = ok.reshape(B, P).all(axis=1)
        verdict[~certified] = _UNSOLVED
        low[~certified] = np.inf
        proven = np.where(certified, low - tol[:, 0], -np.inf)
        return verdict, low, b, proven, np.where(ok.reshape(B, P), bound, np.inf)


def _flip_bounds(retrain: _Retrainer, y: np.ndarray, kx: np.ndarray, p: int) -> np.ndarray | None:
    """Per-sample bounds G (n,) of the stability bound (docs/math.md §7.4): for ANY labelling y' whose
    labels on a set T of samples still equal y, the exact SVMs trained on y' and on y' with the labels
    of T changed (to any classes) have margins f_p - max_{c != p} f_c at x that differ by at most
    sum_{j in T} G_j. None when K_train is not certified positive definite.

    With Pphi_x the projection of the test point's feature onto the span of the training features
    (||Pphi_x||^2 = kx' K^-1 kx, bounded from above here with the residual of the solve and the
    certified smallest eigenvalue), G_j = 2C (sqrt(K_jj) ||Pphi_x|| + s y_j K(x, x_j)) for K = 2
    (s = +1 when p = 0, y_j = +1 when y_j is class 0), 2C (sqrt(K_jj) ||Pphi_x|| + |K(x, x_j)|) for
    K > 2; inflated by 1e-9 relative for rounding."""
    if not retrain.usable or retrain.mu <= 0:
        return None
    Kt, C, n = retrain.Kt, retrain.C, retrain.n
    lam = retrain.mu / C  # certified lower bound on the smallest eigenvalue of K_train
    eps = np.finfo(np.float64).eps
    z = np.linalg.solve(Kt, kx)
    Kz = Kt @ z
    # |true residual K z - kx| <= |computed| + rounding of the product and the difference
    res = np.abs(Kz - kx) + (n + 2) * eps * (np.abs(Kt) @ np.abs(z) + np.abs(kx))
    # kx' K^-1 kx = z'Kz - 2 z'r + r'K^-1 r for r = K z - kx exactly
    quad = float(z @ Kz) + 2.0 * float(np.abs(z) @ res) + float(res @ res) / lam
    quad += 4 * (n + 2) * eps * float(np.abs(z) @ (np.abs(Kt) @ np.abs(z)))
    px = math.sqrt(max(quad, 0.0))
    diag = np.sqrt(np.maximum(np.diag(Kt), 0.0))
    if retrain.K == 2:
        s = 1.0 if p == 0 else -1.0
        lin = s * np.where(y == 0, 1.0, -1.0) * kx
    else:
        lin = np.abs(kx)
    return np.maximum(2.0 * C * (diag * px + lin), 0.0) * (1.0 + 1e-9) + 1e-12 * C * float(np.abs(kx).sum()) / n


def _top_sum(values: np.ndarray, count: int) -> np.ndarray:
    """(B,) sums of the `count` largest entries of each row of values (B, n) (all of them if count >= n)."""
    if count >= values.shape[1]:
        return values.sum(axis=1)
    return -np.partition(-values, count - 1, axis=1)[:, :count].sum(axis=1)


def _node_flip_bounds(retrain: _Retrainer, G: np.ndarray, labels: np.ndarray, duals: np.ndarray,
                      errors: np.ndarray, allowed: np.ndarray, rem: int) -> np.ndarray:
    """The stability bound of `_flip_bounds` sharpened at B nodes of the search (docs/math.md §7.4 (vi)).

    G (n,) from `_flip_bounds`; labels (B, n) the nodes' labellings, duals (B, problems, n) their
    scaled duals with certified errors `errors` (B, problems) (`_Retrainer.retrain_many_bounded`);
    allowed (B, n) bool: the samples each node may still flip, at most `rem` >= 1 of them, all still
    at their clean labels. Returns G' (B, n), G' <= G: flipping any such set T of at most rem allowed
    samples lowers the margin f_p - max_{c != p} f_c of the exact SVM by at most sum_{j in T} G'_j.

    G'_j = G_j lambda_j / 2 with lambda_j = 2 - min(1, g_j / D_j) in [1, 2]: g_j a proven lower bound on
    (m_j - 1)^+ over the problems, m_j = y^k_j f_k(x_j) the sample's margin at the node (duals' error
    bound included), D_j = R sqrt(K_jj) a bound on how far a flip set can move m_j, and
    R = C (sum of the rem largest lambda_i sqrt(K_ii) over the allowed samples) a bound on the change
    of every w_k; lambda and R are refined together (each pass is a valid bound given the last)."""
    Kt, C, P = retrain.Kt, retrain.C, retrain.problems
    signs = np.where(labels[:, None, :] == np.arange(P)[None, :, None], 1.0, -1.0)  # (B, P, n)
    m = signs * (C * np.einsum("ij,bpj->bpi", Kt, signs * duals))
    finite = np.isfinite(errors)
    err = (C * np.linalg.norm(Kt, axis=1)[None, None, :] * np.where(finite, errors, 0.0)[:, :, None]
           + 1e-9 * C * np.abs(Kt).sum(axis=1)[None, None, :])
    g = np.maximum((m - err).min(axis=1) - 1.0, 0.0)
    g[~finite.all(axis=1)] = 0.0
    sk = np.sqrt(np.maximum(np.diag(Kt), 0.0)) * (1.0 + 1e-12)
    lam = np.full(g.shape, 2.0)
    for _ in range(4):
        R = C * _top_sum(np.where(allowed, lam * sk, 0.0), rem)
        D = R[:, None] * sk[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(D > 0, g / D, 0.0)
        lam = np.minimum(lam, 2.0 - np.minimum(ratio, 1.0))
    return np.minimum(G[None, :] * lam * (0.5 * (1.0 + 1e-9)), G[None, :])


def _children(retrain: _Retrainer, G: np.ndarray, order: np.ndarray, labels: np.ndarray, duals: np.ndarray,
              errors: np.ndarray, proven: np.ndarray, last: np.ndarray, rem: int) -> np.ndarray:
    """Which children B nodes of the branch and bound must retrain: (B, n) bool over positions in `order`.

    A node (labels (B, n), duals and their errors from `_Retrainer.retrain_many_bounded`, proven
    margins (B,), last flipped position `last` (B,), -1 for none) may add up to rem >= 1 flips at
    positions after `last`. Its child at position q, with its whole subtree, flips the node's set plus
    sample order[q] plus at most rem - 1 samples after q, so by `_node_flip_bounds` (G' of the node)
    the margin drops by at most reach_q = G'_(order[q]) + (the rem - 1 largest G' after q). Children
    with proven > reach_q keep the prediction in their whole subtree and are not needed (False);
    a node with no child needed is pruned."""
    B, n = labels.shape[0], len(order)
    later = np.arange(n)[None, :] > last[:, None]  # (B, n) over positions
    allowed = np.empty_like(later)
    allowed[:, order] = later  # the same over samples
    Gn = _node_flip_bounds(retrain, G, labels, duals, errors, allowed, rem)
    Gp = np.where(later, Gn[:, order], 0.0)
    k = min(rem - 1, n)
    suffix = np.zeros((B, n))  # sum of the k largest Gp strictly after each position
    if k > 0:
        top = np.zeros((B, k))  # the k largest so far (zeros stand in for missing entries: Gp >= 0)
        for q in range(n - 1, -1, -1):
            suffix[:, q] = top.sum(axis=1)
            top = np.sort(np.concatenate([top, Gp[:, q:q + 1]], axis=1), axis=1)[:, 1:]
    return later & ~(proven[:, None] > Gp + suffix)


def _exhaustive_small_attacks(retrain: _Retrainer, y: np.ndarray, kx: np.ndarray, p: int, max_size: int,
                              limit: int, prune: bool = True) -> tuple[int, np.ndarray | None]:
    """Every relabelling of 1, 2, ... samples, size by size, retrained (`_Retrainer.retrain_many`)
    unless the stability bound (`_flip_bounds`, `_node_flip_bounds`, docs/math.md §7.4) proves it
    harmless, while the number of relabellings retrained stays within `limit`. Returns (s, attack):
    no relabelling of at most s samples changes the prediction (each was decided clearly or lies in
    a subtree the bound covers), and attack, a relabelling of s + 1 samples that clearly changes it
    (None if the search stopped first: limit, max_size, a near tie, or a solve without a certified
    optimum).

    Branch and bound over flip sets: samples are ordered by decreasing bound G_j; a relabelling of
    the samples at positions q_1 < ... < q_s is extended by samples after q_s only. Each node (the
    clean labels first, then every retrained relabelling) retrains only the children `_children`
    does not cover: a child whose subtree (at most max_size flips in all) provably keeps the
    prediction, by the node's proven margin (retrained, minus the certified error) against the
    node's sharpened bounds G', is skipped with that subtree. Every flip set of at most max_size
    samples is a chain of such extensions, so each is retrained or covered by a skipped child.
    prune=False (or no certified bound) retrains every relabelling in `itertools.combinations`
    order, then target classes. Children are warm-started from their parent's duals (kept while they
    fit _KEPT_DUALS floats); the verdicts do not depend on the starts."""
    n, K = len(y), retrain.K
    G = _flip_bounds(retrain, y, kx, p) if prune else None
    order = np.arange(n) if G is None else np.argsort(-G, kind="stable")
    positions = np.arange(n)
    step = retrain.batch_size()
    tried = 0
    if G is None or max_size < 1:
        root_kids = np.ones(n, bool)
    else:
        _, _, d0, p0, e0 = retrain.retrain_many_bounded(y[None], kx, p, retrain.start[None])
        root_kids = _children(retrain, G, order, y[None], d0, e0, p0, np.array([-1]), max_size)[0]
    # nodes of the previous size: (positions in `order`, target classes, index into duals, children needed)
    level: list[tuple[tuple[int, ...], tuple[int, ...], int, np.ndarray]] = [((), (), 0, root_kids)]
    level_duals = retrain.start[None]
    for size in range(1, max_size + 1):
        count = sum(int(kids.sum()) for _, _, _, kids in level) * (K - 1)
        if count == 0:
            return max_size, None
        if tried + count > limit:
            return size - 1, None
        tried += count
        rem = max_size - size
        keep = rem > 0 and count * retrain.problems * n <= _KEPT_DUALS
        survivors: list[tuple[tuple[int, ...], tuple[int, ...], int, np.ndarray]] = []
        kept: list[np.ndarray] = []
        undecided = False

        groups: dict[tuple[int, ...], list[tuple[tuple[int, ...], int, np.ndarray]]] = {}
        for pos, tg, di, kids in level:  # same positions, different target classes
            groups.setdefault(pos, []).append((tg, di, kids))

        def relabellings() -> Iterator[tuple[tuple[int, ...], tuple[int, ...], int]]:
            for pos, members in groups.items():  # positions in lexicographic order, then the targets
                union = np.logical_or.reduce([kids for _, _, kids in members])
                for q in np.flatnonzero(union).tolist():
                    j = int(order[q])
                    for tg, di, kids in members:
                        if kids[q]:
                            for c in range(K):
                                if c != y[j]:
                                    yield pos + (q,), tg + (c,), di

        todo = relabellings()
        while True:
            chunk = list(itertools.islice(todo, step))
            if not chunk:
                break
            labs = np.repeat(y[None, :], len(chunk), axis=0)
            for r, (pos, tg, _) in enumerate(chunk):
                labs[r, order[list(pos)]] = tg
            starts = level_duals[[di for _, _, di in chunk]]
            verdict, _, duals, proven, errors = retrain.retrain_many_bounded(labs, kx, p, starts)
            bad = np.flatnonzero(verdict != 1)
            if bad.size and G is None:  # the first relabelling not clearly harmless, in order
                r = int(bad[0])
                return size - 1, (labs[r] if verdict[r] == -1 else None)
            attack = np.flatnonzero(verdict == -1)
            if attack.size:
                return size - 1, labs[int(attack[0])]
            if bad.size:
                undecided = True  # a near tie or an uncertified solve: only size - 1 stays proven
            if undecided or rem == 0:
                continue
            last = np.array([pos[-1] for pos, _, _ in chunk])
            if G is None:
                needed = positions[None, :] > last[:, None]
            else:
                needed = _children(retrain, G, order, labs, duals, errors, proven, last, rem)
            for r, (pos, tg, _) in enumerate(chunk):
                if not needed[r].any():
                    continue  # no extension by at most rem later samples changes the prediction
                survivors.append((pos, tg, len(survivors), needed[r]))
                if keep:
                    kept.append(duals[r])
        if undecided:
            return size - 1, None
        if not survivors:
            return max_size, None
        level = survivors if keep else [(pos, tg, 0, kids) for pos, tg, _, kids in survivors]
        level_duals = np.stack(kept) if keep else retrain.start[None]
    return max_size, None


def labelcert_svm_milp(K_train: npt.ArrayLike, labels: npt.ArrayLike, K_test_train: npt.ArrayLike, C: float | None,
                       num_classes: int | None = None,
                       max_flips: int | None = None, *, time_limit: float | None = DEFAULT_MILP_TIME_LIMIT,
                       margin: float = 1e-6, exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT,
                       progress: bool = False) -> LabelCertResult:
    """Exact label-flip radius of a no-bias one-vs-rest kernel SVM at ANY C (LabelCert, LabelCert paper).

    K_train (n, n) PSD Gram, labels (n,), K_test_train (t, n), C > 0 (None: C_max). Per test point
    with clean prediction p, the fewest flips after which the retrained SVM's prediction differs
    from p, found in three steps:

    1. Above C_max, a verified attack (`_greedy_svm_attack`: beam search over one-flip extensions
       ranked by the retrained margin, every candidate retrained, warm-started from its parent):
       an upper bound g. An attack of one flip settles the point (radius 0).
    2. Branch and bound over small relabellings (`_exhaustive_small_attacks`): relabellings of 1, 2,
       ... samples are retrained, size by size, while at most `exhaustive_limit` relabellings are
       retrained in all (0 = skip this step; default DEFAULT_EXHAUSTIVE_LIMIT = 300,000).
       Relabellings are retrained in batches (`_batch_box_qp`, a primal active-set method, each
       warm-started from the duals of the relabelling one flip shorter). Each retrained margin
       comes with a certified error bound (`_Retrainer`: unique dual optimum on a positive definite
       K_train, error bound of a strongly convex box QP), which alone decides: a relabelling that
       clearly keeps p retrains only the one-flip extensions whose subtree its proven margin does
       not cover (the stability bound of `_flip_bounds`, sharpened at each relabelling by
       `_node_flip_bounds` and applied per child by `_children`, docs/math.md §7.4 (v)-(vii), with
       at most g - 1 or `max_flips` flips in all); sizes whose every relabelling is retrained or
       covered are excluded; an attack that clearly changes p and passes retraining by `KernelSVM`
       is the answer; a near tie (margin within the error bound) or a singular K_train hands the
       rest to the MILP.
    3. The MILP (`_AttackMilp`, HiGHS through highspy, one model per test point) minimises the
       flips over the attack sizes still open: its budget row runs from the proven lower bound to
       g - 1 (or `max_flips`), so it only looks for strictly smaller attacks and its infeasibility
       proves the attack optimal. The first solve is a relaxation (ties count as attacks for every
       class; slack covers dropped tiny coefficients), so its optimum m0 is a lower bound; its
       attack is re-checked by retraining, and if it does not change the prediction (a tie or a
       solver tolerance) the MILP is re-solved with strict margins (`margin`, relative to the test
       row's largest kernel entry).

    The radius is exact (m - 1) when a verified attack of size m exists and no smaller one does;
    otherwise the point is flagged `exact=False` with radius = (proven lower bound) - 1 and
    radius_upper from the best verified attack. When `time_limit` (seconds per MILP solve; default
    DEFAULT_MILP_TIME_LIMIT = 300 s, None = no limit) stops the solver, the radius is the solver's
    proven bound minus one, flagged `exact=False` and `stopped_early=True`. Budget: `max_flips`
    (radius = budget when nothing within it changes the prediction). Measured (process CPU time,
    binary Gaussians, NTK of a one-hidden-layer ReLU net: `python -m benchmarks.published --part milp`,
    `run_milp`): n = 10-20 at 2-5 C_max take about 0.05 s per point, all exact (attack and
    enumeration meet); at n = 50 the two points are exact at 2, 3 and 5 C_max (radii 8 8, 8 7, 7 7)
    in 1.3, 6.0 and 24 s CPU for the two (7,216, 28,720 and 102,209 relabellings retrained). The
    bound prunes less as C grows or attacks get larger; points whose search hits `exhaustive_limit`
    end as a bracket [radius, radius_upper] unless the MILP closes it (exact only where they meet).
    progress=True shows a progress bar over the test points (tqdm).
    """
    Kt = check_gram(K_train, name="K_train")
    Kt = 0.5 * (Kt + Kt.T)
    y, K = check_labels(labels, num_classes, name="labels")
    check_same_length(K_train=Kt, labels=y)
    Kx = as_float_array("K_test_train", K_test_train, ndim=2)
    check_columns("K_test_train", Kx, len(y))
    if not (np.isfinite(margin) and 0 < margin < 1e-2):
        raise ValueError(f"margin must be in (0, 1e-2), got {margin}")
    if time_limit is not None and not (np.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
    n, t = len(y), Kx.shape[0]
    budget = _budget(max_flips, n)
    clean = KernelSVM(C).fit(Kt, y, K)
    C = clean.C_
    prediction = clean.predict(Kx)
    G, eps_row = _clean(C * Kt)
    exhaustive_limit = check_int("exhaustive_limit", exhaustive_limit, minimum=0)
    retrain = _Retrainer(Kt, y, K, C) if exhaustive_limit > 0 and budget > 0 else None

    def attack_works(lab, i, p):
        return int(KernelSVM(C).fit(Kt, lab, K).predict(Kx[i:i + 1])[0]) != p

    radius = np.empty(t, np.int64)
    upper = np.empty(t, np.int64)
    exact = np.zeros(t, bool)
    stopped = np.zeros(t, bool)
    attacks: list[np.ndarray | None] = []
    statuses: list[str] = []
    points = tqdm(range(t), desc="LabelCert MILP", unit="point", disable=not progress)
    for i in points:
        p = int(prediction[i])
        if budget == 0 or not np.any(Kx[i]):
            # no flips allowed, or every logit is 0 for every labelling (prediction fixed at class 0)
            radius[i] = upper[i] = budget
            exact[i] = True
            attacks.append(None)
            statuses.append("trivial")
            continue
        # A verified attack first (above C_max, where the MILP is hard): an upper bound, and the
        # MILP then only has to look for strictly smaller attacks (or prove there are none).
        greedy = None
        if C > clean.C_max:
            greedy = _greedy_svm_attack(Kt, y, K, C, Kx[i], p, budget, lambda lab: attack_works(lab, i, p),
                                        retrain=retrain)
        best, best_lab = (None, None) if greedy is None else (int(np.count_nonzero(greedy != y)), greedy)
        if best == 1:  # one flip suffices: radius 0, nothing smaller to look for
            radius[i] = upper[i] = 0
            exact[i] = True
            attacks.append(best_lab)
            statuses.append("greedy attack of size 1")
            continue
        milp_budget = budget if best is None else best - 1
        lower, status_i = None, [] if greedy is None else [f"greedy attack of size {best}"]
        excluded = 0  # no attack of at most this many flips (retraining every relabelling)
        if retrain is not None and retrain.usable:
            excluded, cand = _exhaustive_small_attacks(retrain, y, Kx[i], p, milp_budget, exhaustive_limit)
            status_i.append(f"no relabelling of <= {excluded} samples changes the prediction (each retrained with "
                            "a certified error bound or in a subtree pruned by the stability bound)")
            if cand is not None and attack_works(cand, i, p):
                best, best_lab = excluded + 1, cand
                lower = excluded + 1
            elif excluded >= milp_budget:
                lower = milp_budget + 1
        if lower is None:
            kx, dropped = _clean(_rows_scale(Kx[i]))
            slack = 2.0 * float(dropped)  # |change of f_c - f_p| from the dropped entries
            bigm = 2.0 * float(np.abs(kx).sum()) + 4.0 * margin + 2.0 * slack + 1.0
            model = _AttackMilp(G, eps_row, y, K, p, kx, bigm, time_limit)  # one model per test point
            model.set_budget(excluded + 1, milp_budget)
            # margins (classes above p, classes below p): relaxation, strict, strict everywhere
            for above, below in ((-slack, -slack), (margin + slack, slack), (2 * margin + slack, margin + slack)):
                model.set_margins({c: above if c > p else below for c in range(K) if c != p})
                status = _solve_highs_model(model)
                status_i.append(status)
                if status == "infeasible":
                    if lower is None:
                        lower = milp_budget + 1  # no attack within the MILP's budget, even counting ties
                    break
                if status != "optimal":
                    if lower is None:
                        lower = max(excluded + 1, math.ceil(model.dual_bound() - 1e-6))
                    stopped[i] = status == "time_limit"
                    break
                if lower is None:
                    lower = max(_integral(model.value()), excluded + 1)
                lab = model.labels()
                size = int(np.count_nonzero(lab != y))
                if 1 <= size <= milp_budget and attack_works(lab, i, p):
                    best, best_lab = size, lab
                    break
        assert lower is not None  # every path above proves a lower bound
        lower = min(lower, budget + 1)
        radius[i] = lower - 1
        if best is not None:
            upper[i] = best - 1
            exact[i] = best == lower
        else:
            upper[i] = budget
            exact[i] = lower == budget + 1
        attacks.append(best_lab)
        if exact[i]:
            status_i.append(f"exact: no attack of <= {lower - 1} flips (proven)"
                            + (f", a verified attack of {best} flips" if best is not None else ", budget reached"))
        else:
            status_i.append(f"not exact: no attack of <= {lower - 1} flips (proven), "
                            + (f"a verified attack of {best} flips" if best is not None else "no verified attack"))
        statuses.append("/".join(status_i))
    return LabelCertResult(prediction=prediction, radius=radius, radius_upper=upper, exact=exact,
                           attacks=tuple(attacks), status=tuple(statuses), max_flips=budget, C=float(C),
                           C_max=float(clean.C_max), stopped_early=stopped)


# --------------------------------------------------------------------------- run-off election / FA brute force (tiny only)
@functools.lru_cache(maxsize=8)
def _weak_orderings_cached(K: int) -> np.ndarray:
    rows = [r for r in itertools.product(range(K), repeat=K) if set(r) == set(range(max(r) + 1))]
    out = -np.array(rows, dtype=np.float64)  # rank 0 = best
    out.setflags(write=False)
    return out


def weak_orderings(num_classes: int) -> np.ndarray:
    """Every weak ordering of K classes as a score vector (W, K) (rank 0 highest; 13 for K = 3).

    The election sees a base model only through the weak ordering of its scores (its argmax with
    ties to the smaller index and every z(a) > z(b)), so these cover every black-box behaviour.
    """
    if not 2 <= num_classes <= 5:
        raise ValueError(f"weak_orderings is meant for 2..5 classes, got {num_classes}")
    return _weak_orderings_cached(int(num_classes))


def brute_force_roe_radius(scores: npt.ArrayLike, shifts: npt.ArrayLike | None = None, *, max_configs: int = 2_000_000) -> np.ndarray:
    """Exact black-box radius (t,) of DPA+ROE (shifts=None) or FA+ROE by enumerating every attack.

    scores (t, L, K). A poison in group h controls learners (h + s) mod L (DPA+ROE: one learner);
    the controlled learners take every multiset of weak orderings (the election is symmetric in
    the learners). Returns attack size - 1 (L when no attack exists). Tiny problems only.
    """
    s = _check_scores(scores)
    t, L, K = s.shape
    sh = np.zeros(1, np.int64) if shifts is None else _check_shifts(shifts, L)
    reach = fa_reach(L, sh)
    orders = weak_orderings(K)
    out = np.full(t, L, np.int64)
    for i in range(t):
        p = roe_predict(s[i])
        found = False
        for r in range(1, L + 1):
            seen = set()
            for groups in itertools.combinations(range(L), r):
                U = tuple(sorted(set(reach[list(groups)].ravel().tolist())))
                if U in seen:
                    continue
                seen.add(U)
                if math.comb(len(orders) + len(U) - 1, len(U)) > max_configs:
                    raise ValueError("brute_force_roe_radius: problem too large to enumerate")
                combos = np.array(list(itertools.combinations_with_replacement(range(len(orders)), len(U))))
                batch = np.broadcast_to(s[i], (len(combos), L, K)).copy()
                batch[:, list(U)] = orders[combos]
                if np.any(roe_predict(batch) != p):
                    found = True
                    break
            if found:
                out[i] = r - 1
                break
    return out


def brute_force_fa_radius(votes: npt.ArrayLike, shifts: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Exact black-box radius (t,) of plurality FA by enumerating the poisoned groups (L when none)."""
    v = check_votes(votes, num_classes)
    t, L = v.shape
    reach = fa_reach(L, _check_shifts(shifts, L))
    out = np.full(t, L, np.int64)
    for i in range(t):
        n = vote_counts(v[i:i + 1], num_classes)[0]
        p = int(np.argmax(n))
        for r in range(1, L + 1):
            hit = False
            for groups in itertools.combinations(range(L), r):
                U = np.unique(reach[list(groups)])
                rest = vote_counts(np.delete(v[i], U)[None], num_classes)[0]
                # best for rival c: every controlled learner votes c
                for c in range(num_classes):
                    if c != p and (rest[c] + len(U) > rest[p] or (rest[c] + len(U) == rest[p] and c < p)):
                        hit = True
                if hit:
                    break
            if hit:
                out[i] = r - 1
                break
    return out


def brute_force_cost_model_radius(scores: npt.ArrayLike, vote_costs: npt.ArrayLike, pair_costs: npt.ArrayLike, *,
                                  max_configs: int = 500_000) -> np.ndarray:
    """Exact radius (t,) of ROE in the most generous world consistent with whitebox_roe's cost bounds.

    Every base model m may be turned into any weak ordering of the classes, at cost max(1,
    vote_costs[m, new vote] if its vote changes, pair_costs[m, a, b] for every z(a) > z(b) it loses),
    or 0 if nothing the election sees changes. Enumerates all W^M combinations (W = 13 weak
    orderings for K = 3; tiny only). Returns attack cost - 1, NO_ATTACK when no combination changes
    the prediction. whitebox_roe must never exceed it, because its bounds only use those costs.
    """
    s = _check_scores(scores)
    t, M, K = s.shape
    vc_all = _check_costs("vote_costs", vote_costs, (t, M, K))
    pc_all = _check_costs("pair_costs", pair_costs, (t, M, K, K))
    O = weak_orderings(K)
    if len(O) ** M > max_configs:
        raise ValueError(f"brute_force_cost_model_radius: {len(O)}^{M} configurations is too many")
    ov = np.argmax(O, axis=1)
    ogt = O[:, :, None] > O[:, None, :]
    combos = np.array(list(itertools.product(range(len(O)), repeat=M)), dtype=np.int64).reshape(-1, M)
    preds = roe_predict(O[combos])
    out = np.empty(t, np.int64)
    for i in range(t):
        cost = np.zeros((M, len(O)))
        for m in range(M):
            gt = s[i, m][:, None] > s[i, m][None, :]
            v = int(np.argmax(s[i, m]))
            same = (ov == v) & (ogt == gt).all(axis=(1, 2))
            lost = np.where(gt[None] & ~ogt, pc_all[i, m][None], 0.0).max(axis=(1, 2))
            vote = np.where(ov != v, vc_all[i, m, ov], 0.0)
            cost[m] = np.where(same, 0.0, np.maximum(1.0, np.maximum(lost, vote)))
        total = cost[np.arange(M), combos].sum(axis=1)
        changed = preds != roe_predict(s[i])
        best = total[changed].min() if changed.any() else np.inf
        out[i] = int(np.ceil(best - 1e-9)) - 1 if np.isfinite(best) else NO_ATTACK
    return out


def brute_force_label_flip_roe_radius(weights_list: Sequence[npt.ArrayLike], labels_list: Sequence[npt.ArrayLike],
                                      num_classes: int, max_flips: int | None = None
                                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Exact label-flip radius (t,) of ROE over label-linear partitions by relabelling every label.

    Recomputes each base model's scores W_m @ onehot(y'_m) for every relabelling with at most
    max_flips changes (default all n) and reruns roe_predict. Returns (radius (t,), prediction (t,));
    radius = max_flips when no enumerated relabelling changes the prediction. n <= 12 only.
    """
    Ws = [as_float_array(f"weights_list[{m}]", W, ndim=2) for m, W in enumerate(weights_list)]
    ys = [check_labels(y, num_classes, name=f"labels_list[{m}]")[0] for m, y in enumerate(labels_list)]
    K = num_classes
    sizes = [len(y) for y in ys]
    n = sum(sizes)
    if n > 12 or K ** n > 2_000_000:
        raise ValueError(f"brute force over {K}^{n} relabellings is too large")
    max_flips = n if max_flips is None else int(max_flips)
    y0 = np.concatenate(ys)
    Y = np.array(list(itertools.product(range(K), repeat=n)), dtype=np.int64).reshape(K ** n, n)
    dist = (Y != y0).sum(axis=1)
    Y, dist = Y[dist <= max_flips], dist[dist <= max_flips]
    t = Ws[0].shape[0]
    if any(W.shape != (t, nm) for W, nm in zip(Ws, sizes)):
        raise ValueError("weights_list[m] must have shape (t, len(labels_list[m])) with a common t")
    scores = np.empty((len(Y), t, len(Ws), K))
    start = 0
    for m, (W, nm) in enumerate(zip(Ws, sizes)):
        # retrain partition m on each of its K^n_m relabellings once, then look the scores up
        local = np.array(list(itertools.product(range(K), repeat=nm)), dtype=np.int64).reshape(K ** nm, nm)
        table = np.stack([W @ onehot(y, K) for y in local])  # (K^n_m, t, K)
        code = Y[:, start:start + nm] @ (K ** np.arange(nm - 1, -1, -1)) if nm else np.zeros(len(Y), np.int64)
        scores[:, :, m] = table[code]
        start += nm
    preds = roe_predict(scores)  # (L, t)
    base = preds[dist == 0][0]
    changed = preds != base
    att = np.where(changed, dist[:, None], max_flips + 1).min(axis=0)
    return (att - 1).astype(np.int64), base.astype(np.int64)


__all__ = [
    "BruteForceResult",
    "LabelCertResult",
    "brute_force_certificate",
    "brute_force_retrain",
    "milp_class_costs",
    "labelcert_svm_milp",
    "DEFAULT_MILP_TIME_LIMIT",
    "weak_orderings",
    "brute_force_roe_radius",
    "brute_force_fa_radius",
    "brute_force_cost_model_radius",
    "brute_force_label_flip_roe_radius",
]
