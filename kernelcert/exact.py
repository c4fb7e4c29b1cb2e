"""Exact references for small problems: brute force, MILPs (cvxpy + HiGHS), and the LabelCert SVM MILP.

These are the independent oracles of the test suite and benchmarks; they are exponential or
mixed-integer and meant for n up to about 12 (brute force) or a few dozen to a hundred (MILPs).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._validation import as_float_array, check_gram, check_labels


@dataclass(frozen=True)
class BruteForceResult:
    """radius (t,) (max_flips when nothing within the budget changes the prediction) and class_costs (t, K)."""

    radius: np.ndarray
    class_costs: np.ndarray


def _all_labellings(labels, num_classes, max_flips):
    n = len(labels)
    if num_classes ** n > 2_000_000:
        raise ValueError(f"brute force over {num_classes}^{n} labellings is too large (n <= ~12 for K <= 3)")
    grid = np.array(list(itertools.product(range(num_classes), repeat=n)), dtype=np.int64).reshape(-1, n)
    dist = (grid != labels).sum(axis=1)
    keep = dist <= max_flips
    return grid[keep], dist[keep]


def _from_predictions(preds, dist, base_pred, num_classes, max_flips):
    """preds (L, t) predictions per labelling; dist (L,) Hamming distances."""
    t = preds.shape[1]
    costs = np.full((t, num_classes), np.inf)
    for c in range(num_classes):
        hit = preds == c
        d = np.where(hit, dist[:, None], np.iinfo(np.int64).max)
        m = d.min(axis=0)
        costs[:, c] = np.where(m < np.iinfo(np.int64).max, m, np.inf)
    changed = preds != base_pred[None, :]
    d = np.where(changed, dist[:, None], np.iinfo(np.int64).max).min(axis=0)
    radius = np.where(d < np.iinfo(np.int64).max, d - 1, max_flips).astype(np.int64)
    return BruteForceResult(radius=radius, class_costs=costs)


def brute_force_certificate(weights, labels, num_classes=None, max_flips: int | None = None) -> BruteForceResult:
    """Enumerate every relabelling (within max_flips) of a label-linear model with weights W (t, n)."""
    w = as_float_array("weights", weights, ndim=2)
    y, K = check_labels("labels", labels, num_classes)
    if w.shape[1] != len(y):
        raise ValueError(f"weights have {w.shape[1]} columns but there are {len(y)} labels")
    max_flips = len(y) if max_flips is None else int(max_flips)
    grid, dist = _all_labellings(y, K, max_flips)
    onehot = np.eye(K)[grid]  # (L, n, K)
    scores = np.einsum("tn,lnk->ltk", w, onehot)
    preds = np.argmax(scores, axis=2)
    base = np.argmax(w @ np.eye(K)[y], axis=1)
    return _from_predictions(preds, dist, base, K, max_flips)


def brute_force_retrain(fit_predict: Callable[[np.ndarray], np.ndarray], labels, num_classes=None,
                        max_flips: int | None = None) -> BruteForceResult:
    """Model-independent oracle: `fit_predict(labels) -> predictions (t,)` retrains from scratch per labelling."""
    y, K = check_labels("labels", labels, num_classes)
    max_flips = len(y) if max_flips is None else int(max_flips)
    grid, dist = _all_labellings(y, K, max_flips)
    preds = np.stack([np.asarray(fit_predict(g)) for g in grid])
    base = np.asarray(fit_predict(y))
    return _from_predictions(preds, dist, base, K, max_flips)


def milp_class_costs(weights, labels, num_classes=None, targets=None) -> np.ndarray:
    """Exact A_c (t, K): fewest flips after which the prediction is c, by a MILP per (test point, class).

    Strict inequalities of the tie rule (s_c > s_k for k < c) use a margin of 1e-9 * sum|w|; ties
    for k > c are allowed (s_c >= s_k). Every optimum is re-checked by recomputing the scores.
    """
    import cvxpy as cp

    w = as_float_array("weights", weights, ndim=2)
    y, K = check_labels("labels", labels, num_classes)
    t, n = w.shape
    base = np.argmax(w @ np.eye(K)[y], axis=1)
    out = np.full((t, K), np.inf)
    targets = range(K) if targets is None else targets
    for i in range(t):
        eps = 1e-9 * np.abs(w[i]).sum()
        for c in targets:
            if c == base[i]:
                out[i, c] = 0.0
                continue
            z = cp.Variable((n, K), boolean=True)
            s = w[i] @ z
            cons = [cp.sum(z, axis=1) == 1]
            cons += [s[c] >= s[k] + (eps if k < c else 0.0) for k in range(K) if k != c]
            prob = cp.Problem(cp.Minimize(n - cp.sum(z[np.arange(n), y])), cons)
            prob.solve(solver=cp.HIGHS)
            if prob.status in ("infeasible", "infeasible_inaccurate"):
                continue
            if z.value is None:
                raise RuntimeError(f"MILP failed for test point {i}, class {c}: {prob.status}")
            y2 = np.argmax(z.value, axis=1)
            if np.argmax(w[i] @ np.eye(K)[y2]) != c:
                raise RuntimeError(f"MILP solution for test point {i}, class {c} does not verify")
            out[i, c] = float((y2 != y).sum())
    return out


@dataclass(frozen=True)
class LabelCertResult:
    """radius (t,) from the LabelCert MILP, the attack sizes and the solver status per test point."""

    radius: np.ndarray
    attack_size: np.ndarray
    status: tuple


def labelcert_svm_milp(K_train, labels, K_test_train, C: float, num_classes=None, max_flips: int | None = None,
                       time_limit: float | None = None) -> LabelCertResult:
    """Exact radius of a no-bias one-vs-rest kernel SVM at ANY C (LabelCert, anchors.md §4).

    The bilevel problem (attacker picks labels, the SVM dual is solved on them) becomes one MILP per
    test point through the KKT conditions of each class's dual with big-M complementarity:
    g_i - u_i + v_i = 1 with g_i = y_i sum_j K_ij y_j a_j, u_i a_i = 0, v_i (C - a_i) = 0, where
    the bilinear terms y*a and y*h are linearised exactly (McCormick with binary y). The objective
    minimises the number of flips subject to some class c beating the clean prediction p (ties
    allowed: attacker-favourable, so the radius can only be smaller). radius = optimum - 1
    (max_flips, or n, when no attack exists within the budget). Raises if the solver does not
    prove optimality within time_limit.
    """
    import cvxpy as cp

    from .learners import KernelSVM

    Kt = check_gram("K_train", K_train)
    y, K = check_labels("labels", labels, num_classes)
    Kx = as_float_array("K_test_train", K_test_train, ndim=2)
    n = len(y)
    if Kx.shape[1] != n or Kt.shape[0] != n:
        raise ValueError("K_train, labels and K_test_train sizes do not match")
    max_flips = n if max_flips is None else int(max_flips)
    base = KernelSVM(C).fit(Kt, y, K).predict(Kx)
    H = C * np.abs(Kt).sum(axis=1)  # |h_i| <= H_i
    Mu = np.maximum(0.0, H - 1.0)
    Mv = H + 1.0
    radius, sizes, status = np.empty(len(Kx), np.int64), np.full(len(Kx), np.inf), []
    for i in range(len(Kx)):
        p = int(base[i])
        b = cp.Variable((n, K), boolean=True)
        cons = [cp.sum(b, axis=1) == 1]
        F = C * np.abs(Kx[i]).sum()
        outputs = []
        for k in range(K):
            a = cp.Variable(n)
            q = cp.Variable(n)  # q = b_k * a
            wv = cp.Variable(n)  # wv = b_k * h
            u = cp.Variable(n, nonneg=True)
            v = cp.Variable(n, nonneg=True)
            s = cp.Variable(n, boolean=True)
            tt = cp.Variable(n, boolean=True)
            bk = b[:, k]
            z = 2 * q - a  # y_j a_j
            h = Kt @ z
            g = 2 * wv - h  # y_i h_i
            cons += [a >= 0, a <= C, q >= 0, q <= C * bk, q <= a, q >= a - C * (1 - bk),
                     wv <= cp.multiply(H, bk), wv >= -cp.multiply(H, bk),
                     wv <= h + cp.multiply(H, 1 - bk), wv >= h - cp.multiply(H, 1 - bk),
                     g - u + v == 1,
                     u <= cp.multiply(Mu, s), a <= C * (1 - s),
                     v <= cp.multiply(Mv, tt), C - a <= C * (1 - tt)]
            outputs.append(Kx[i] @ z)
        sel = cp.Variable(K, boolean=True)
        cons += [cp.sum(sel) == 1, sel[p] == 0]
        cons += [outputs[c] - outputs[p] >= -2 * F * (1 - sel[c]) for c in range(K) if c != p]
        flips = n - cp.sum(b[np.arange(n), y])
        cons += [flips <= max_flips]
        prob = cp.Problem(cp.Minimize(flips), cons)
        opts = {} if time_limit is None else {"time_limit": float(time_limit)}
        prob.solve(solver=cp.HIGHS, **opts)
        status.append(prob.status)
        if prob.status in ("infeasible", "infeasible_inaccurate"):
            radius[i] = max_flips
        elif prob.status == "optimal":
            sizes[i] = round(prob.value)
            radius[i] = int(sizes[i]) - 1
        else:
            raise RuntimeError(f"LabelCert MILP for test point {i} ended with status {prob.status}")
    return LabelCertResult(radius=radius, attack_size=sizes, status=tuple(status))
