"""ScaLabelCert: label-flip certificates for one label-linear model (SPEC §3).

A model is label-linear when its class scores are `s_k(x) = sum_j W[x, j] [y_j = k]` (plus terms
that do not depend on k). `certify(W, y, K)` returns, per test point, the exact radius (the
largest number of label flips that provably leaves the prediction unchanged), sound lower and
verified upper bounds on the per-class costs `A_c`, and attack witnesses.

Floating point (SPEC §3): an attack is counted as successful as soon as its cumulative margin
reduction is within `rtol * sum_j |W_ij|` of the margin, so rounding can only make radii and
lower bounds smaller. Upper bounds and witnesses are verified by recomputing the float scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._validation import as_float_array, check_labels

_DEFAULT_BLOCK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Certificate:
    """Per-test-point certificate of a label-linear model.

    prediction (t,), radius (t,) int64 (exact), cost_lower / cost_upper (t, K) float64 bounds on the
    fewest flips after which the prediction is class c (0 at the prediction, inf if unreachable),
    class_exact (t, K) = lower == upper, exact (t,) = all classes exact. Keeps references to the
    weights and labels so that `witness(i)` can rebuild attacks for one test point.
    """

    prediction: np.ndarray
    radius: np.ndarray
    cost_lower: np.ndarray
    cost_upper: np.ndarray
    class_exact: np.ndarray
    exact: np.ndarray
    weights: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    num_classes: int = 2
    rtol: float = 1e-9

    def witness(self, i: int, target: int | None = None) -> list[tuple[int, int]]:
        """Attack [(train_index, new_label), ...] for test point i.

        target=None: an attack of size radius+1 that changes the prediction (verified; in a float
        near-tie within rtol it may need one more flip). target=c: the verified attack behind
        cost_upper[i, c]. Raises ValueError when no attack exists.
        """
        w = self.weights[i:i + 1]
        p = int(self.prediction[i])
        if target is None:
            P, orders = _pairwise_with_orders(w, self.labels, self.num_classes, self.rtol, rivals_of=p)
            costs = P[0, p].copy()
            costs[p] = np.inf
            b = int(np.argmin(costs))
            if not np.isfinite(costs[b]):
                raise ValueError(f"no label-flip attack changes the prediction of test point {i}")
            return _verified_prefix(w[0], self.labels, self.num_classes, orders[b], int(costs[b]),
                                    lambda pred: pred != p)
        c = int(target)
        if not 0 <= c < self.num_classes:
            raise ValueError(f"target must be in 0..{self.num_classes - 1}, got {target}")
        if c == p:
            return []
        s = _scores(w, self.labels, self.num_classes)
        size, y2 = _greedy_upper(w, self.labels, self.num_classes, c, s, np.array([p]), return_attack=True)
        if not np.isfinite(size[0]):
            raise ValueError(f"no verified attack makes test point {i} predict class {c}")
        changed = np.flatnonzero(y2[0] != self.labels)
        return [(int(j), int(y2[0, j])) for j in changed]


# --------------------------------------------------------------------------- helpers
def _scores(weights: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class scores (t, K) = W @ onehot(y)."""
    onehot = np.zeros((len(labels), num_classes))
    onehot[np.arange(len(labels)), labels] = 1.0
    return weights @ onehot


def _beats(s_b, s_a, b, a):
    """Tie rule: b beats a iff s_b > s_a, or equal and b < a."""
    return (s_b > s_a) | ((s_b == s_a) & (b < a))


def _pair_reductions(w, labels, a, b):
    """Per-sample best reduction of s_a - s_b and the relabelling achieving it (SPEC §3 table).

    w (B, n). Returns reductions (B, n) >= 0 and new labels (B, n) (-1 where nothing helps).
    """
    la = labels == a
    lb = labels == b
    pos = w > 0
    red = np.abs(w)
    red = np.where(la, np.where(pos, 2 * w, 0.0), red)
    red = np.where(lb, np.where(pos, 0.0, -2 * w), red)
    new = np.where(pos, b, a)
    new = np.where(la & ~pos, -1, new)
    new = np.where(lb & pos, -1, new)
    new = np.where(red > 0, new, -1)
    return red, new


def _cover_count(red_sorted_cumsum, margin, strict, tol):
    """Smallest m with cumsum[m-1] covering margin (>= margin - tol, or > when strict); m=0 if margin already covered.

    Returns float array (inf where the total reduction cannot cover the margin).
    """
    B, n = red_sorted_cumsum.shape
    target = margin - tol
    already = np.where(strict, 0 > margin, 0 >= margin)  # no flips: exact comparison, no rounding yet
    if n == 0:
        return np.where(already, 0.0, np.inf)
    ok = np.where(strict[:, None], red_sorted_cumsum > target[:, None], red_sorted_cumsum >= target[:, None])
    first = np.argmax(ok, axis=1).astype(np.float64) + 1
    any_ok = ok.any(axis=1)
    return np.where(already, 0.0, np.where(any_ok, first, np.inf))


def _pairwise_with_orders(w, labels, num_classes, rtol, rivals_of=None, tie="index"):
    """P (B, K, K): P[i, a, b] fewest flips after which b beats a. With rivals_of=p only row a=p is filled.

    Also returns, for rivals_of=p, the sorted attack orders per b: list of (indices (n,), new labels (n,)).
    """
    B = w.shape[0]
    P = np.zeros((B, num_classes, num_classes))
    s = _scores(w, labels, num_classes)
    tol = rtol * np.abs(w).sum(axis=1)
    orders = {}
    rows = range(num_classes) if rivals_of is None else [rivals_of]
    for a in rows:
        for b in range(num_classes):
            if a == b:
                continue
            red, new = _pair_reductions(w, labels, a, b)
            idx = np.argsort(-red, axis=1, kind="stable")
            cums = np.cumsum(np.take_along_axis(red, idx, axis=1), axis=1)
            margin = s[:, a] - s[:, b]
            strict = np.full(B, (b > a) if tie == "index" else False)
            P[:, a, b] = _cover_count(cums, margin, strict, tol)
            if rivals_of is not None and B == 1:
                orders[b] = (idx[0], np.take_along_axis(new, idx, axis=1)[0])
    return P, orders


def _verified_prefix(w_row, labels, num_classes, order, m, accept):
    """Apply the first m (+ extra if needed) moves of `order`, re-check the float scores, return the attack.

    order = (indices, new_labels) sorted by usefulness; moves with new label -1 are skipped.
    """
    idx, new = order
    valid = new >= 0
    idx, new = idx[valid], new[valid]
    for size in range(m, len(idx) + 1):
        y2 = labels.copy()
        y2[idx[:size]] = new[:size]
        pred = int(np.argmax(_scores(w_row[None], y2, num_classes)[0]))
        if accept(pred):
            return [(int(j), int(v)) for j, v in zip(idx[:size], new[:size])]
    raise ValueError("no prefix of the pairwise attack verifies on the float scores")


# --------------------------------------------------------------------------- bounds per class
def _lagrangian_lower(w, labels, s, c, lam, tol):
    """Fewest flips to drive M = sum_j lam_j s_j - s_c to <= 0 (lam >= 0 sums to 1 over rivals).

    Validity: if c is the argmax after the attack then s_c >= s_j for all j, hence M <= 0. Each
    relabelling changes M by w (coef(new) - coef(old)) with coef = lam on rivals, -1 on c, so the
    per-sample best reductions are independent and the greedy count is the exact minimum for this
    relaxation, hence a lower bound on A_c.
    """
    coef = lam.copy()  # (B, K)
    coef[:, c] = -1.0
    own = np.take_along_axis(coef, np.broadcast_to(labels, w.shape), axis=1)  # coef(y_j) per sample
    cmax = coef.max(axis=1, keepdims=True)
    red = np.where(w > 0, w * (own + 1.0), -w * (cmax - own))
    red = np.maximum(red, 0.0)
    cums = np.cumsum(-np.sort(-red, axis=1), axis=1)
    margin = (lam * s).sum(axis=1) - s[:, c]
    return _cover_count(cums, margin, np.zeros(len(w), bool), tol)


def _attack_orders(w, labels, num_classes, c, s):
    """Candidate attack orders for target c: (indices (B, n), new labels (B, n), -1 = skip).

    A move-to-c order (largest positive weights first, doubled for samples of classes at least as
    strong as c) and, for every rival j, the pairwise order that makes c beat j fastest.
    """
    rival = s >= s[:, [c]]
    lab = np.broadcast_to(labels, w.shape)
    key = np.where(lab == c, -np.inf, w * np.where(np.take_along_axis(rival, lab, axis=1), 2.0, 1.0))
    idx = np.argsort(-key, axis=1, kind="stable")
    ok = np.isfinite(np.take_along_axis(key, idx, axis=1)) & (np.take_along_axis(w, idx, axis=1) > 0)
    yield idx, np.where(ok, c, -1)
    for j in range(num_classes):
        if j == c:
            continue
        red, nl = _pair_reductions(w, labels, j, c)
        idx = np.argsort(-red, axis=1, kind="stable")
        yield idx, np.take_along_axis(nl, idx, axis=1)


def _apply(labels, idx, new, length):
    """Attacked label rows (B, n): the first `length[b]` moves of each row's order (skipping -1 moves)."""
    B, n = idx.shape
    take = (np.arange(n)[None, :] < length[:, None]) & (new >= 0)
    y2 = np.broadcast_to(labels, (B, n)).copy()
    rows = np.broadcast_to(np.arange(B)[:, None], (B, n))
    y2[rows[take], idx[take]] = new[take]
    return y2, take.sum(axis=1)


def _row_scores(w, y2, num_classes):
    """Scores (B, K) for per-row label vectors y2 (B, n)."""
    return np.stack([(w * (y2 == k)).sum(axis=1) for k in range(num_classes)], axis=1)


def _greedy_upper(w, labels, num_classes, c, s, pred, return_attack=False):
    """Verified upper bound on A_c: the shortest prefix of any candidate order after which c wins.

    Prefix scores are scanned with cumulative sums, then the chosen attack is re-checked by
    recomputing the scores from the attacked labels; unverified candidates are dropped.
    Returns (B,) float (inf where nothing verified), and with return_attack the best (y2, size).
    """
    B, n = w.shape
    best = np.full(B, np.inf)
    best_y = np.broadcast_to(labels, (B, n)).copy()
    cls = np.arange(num_classes)
    for idx, new in _attack_orders(w, labels, num_classes, c, s):
        valid = new >= 0
        ws = np.take_along_axis(w, idx, axis=1) * valid
        old = labels[idx]
        delta = ws[..., None] * ((np.where(valid, new, -1)[..., None] == cls) * 1.0 - (old[..., None] == cls))
        sc = s[:, None, :] + np.cumsum(delta, axis=1)
        win = np.argmax(sc, axis=2) == c
        pos = np.where(win.any(axis=1), np.argmax(win, axis=1) + 1, -1)
        y2, size = _apply(labels, idx, new, np.maximum(pos, 0))
        verified = (pos > 0) & (np.argmax(_row_scores(w, y2, num_classes), axis=1) == c)
        better = verified & (size < best)
        best = np.where(better, size, best)
        best_y[better] = y2[better]
    best[pred == c] = 0.0
    if return_attack:
        return best, best_y
    return best


# --------------------------------------------------------------------------- public API
def pairwise_costs(weights, labels, num_classes=None, *, tie: str = "index", rtol: float = 1e-9,
                   block_size: int | None = None) -> np.ndarray:
    """P (t, K, K) float: P[i, a, b] = fewest flips after which class b beats class a (0 on the diagonal).

    tie="index": b beats a iff s_b > s_a or (s_b == s_a and b < a) (SPEC tie rule);
    tie="attacker": s_b >= s_a already counts (a lower bound valid under any tie convention).
    inf where no relabelling can make b beat a.
    """
    if tie not in ("index", "attacker"):
        raise ValueError(f"tie must be 'index' or 'attacker', got {tie!r}")
    w, y, K = _validate(weights, labels, num_classes)
    out = np.zeros((len(w), K, K))
    for sl in _row_blocks(w, K, block_size):
        out[sl] = _pairwise_with_orders(w[sl], y, K, rtol, tie=tie)[0]
    return out


def certify(weights, labels, num_classes=None, *, block_size: int | None = None, rtol: float = 1e-9,
            class_bounds: bool = True) -> Certificate:
    """ScaLabelCert certificate for a label-linear model with label weights W (t, n) and labels y (n,).

    radius is exact (SPEC §3): min over b != p of P(p, b), minus 1 (n when no attack exists).
    class_bounds=False skips the per-class cost bounds (they are then lower = 0 / upper = inf off the prediction).
    Streams over blocks of test points; memory is O(block · n · K).
    """
    w, y, K = _validate(weights, labels, num_classes)
    t, n = w.shape
    pred = np.empty(t, np.int64)
    radius = np.empty(t, np.int64)
    lower = np.zeros((t, K))
    upper = np.zeros((t, K))
    for sl in _row_blocks(w, K, block_size):
        wb = w[sl]
        s = _scores(wb, y, K)
        p = np.argmax(s, axis=1)
        pred[sl] = p
        P, _ = _pairwise_with_orders(wb, y, K, rtol)
        P_own = P[np.arange(len(wb)), p]  # (B, K): P(p, b)
        P_own[np.arange(len(wb)), p] = np.inf
        r = P_own.min(axis=1)
        radius[sl] = np.where(np.isfinite(r), r - 1, n).astype(np.int64)
        tol = rtol * np.abs(wb).sum(axis=1)
        for c in range(K):
            if not class_bounds:
                lb, ub = np.zeros(len(wb)), np.full(len(wb), np.inf)
            else:
                rivals = np.arange(K) != c
                lb = P[:, rivals, c].max(axis=1)  # c must beat every rival
                # Lagrangian combinations: uniform over rivals currently at least as strong as c, and over all rivals
                for mask in ((s >= s[:, [c]]) & rivals[None, :], np.broadcast_to(rivals, s.shape)):
                    cnt = mask.sum(axis=1, keepdims=True)
                    lam = np.where(cnt > 0, mask / np.maximum(cnt, 1), 0.0)
                    lb = np.maximum(lb, np.where(cnt[:, 0] > 0, _lagrangian_lower(wb, y, s, c, lam, tol), 0.0))
                ub = _greedy_upper(wb, y, K, c, s, p)
                # P(p, c) is exact for the prediction changing to c for K == 2
                if K == 2:
                    lb = np.where(p == c, 0.0, P[np.arange(len(wb)), p, c])
            lb = np.where(p == c, 0.0, lb)
            ub = np.where(p == c, 0.0, ub)
            lower[sl, c] = lb
            upper[sl, c] = ub
    class_exact = lower == upper
    return Certificate(prediction=pred, radius=radius, cost_lower=lower, cost_upper=upper, class_exact=class_exact,
                       exact=class_exact.all(axis=1), weights=w, labels=y, num_classes=K, rtol=rtol)


def certify_model(model, K_test_train, **kwargs) -> Certificate:
    """Certificate of a fitted label-linear learner on kernel rows K(test, train)."""
    return certify(model.label_weights(K_test_train), model.labels_, model.num_classes_, **kwargs)


def _validate(weights, labels, num_classes):
    w = as_float_array("weights", weights, ndim=2)
    y, K = check_labels("labels", labels, num_classes)
    if w.shape[1] != len(y):
        raise ValueError(f"weights have {w.shape[1]} columns but there are {len(y)} labels")
    return w, y, K


def _row_blocks(w, K, block_size):
    t, n = w.shape
    if block_size is None:
        block_size = max(1, _DEFAULT_BLOCK_BYTES // max(1, 8 * n * (K + 4)))
    for start in range(0, t, int(block_size)):
        yield slice(start, min(t, start + int(block_size)))
