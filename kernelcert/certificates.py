"""ScaLabelCert: label-flip certificates for one label-linear model (docs/math.md §3).

A model is label-linear when its class scores are `s_k(x) = sum_j W[x, j] [y_j = k]` (plus terms
that do not depend on k). `certify(W, y, K)` returns, per test point, the exact radius (the
largest number of label flips that provably leaves the prediction unchanged), sound lower and
verified upper bounds on the per-class costs `A_c`, and attack witnesses.

How it is computed (per block of test points, vectorised over the block):

* ONE sort per test point: the columns are grouped by class (a fixed permutation) and each class
  segment is sorted. Group `g = 2k` holds the positive weights of class k, `g = 2k + 1` the
  negative ones; both are read off the sorted segment in order of decreasing |w|.
* Every reduction of docs/math.md §3 is `f_g |w_j|` with a factor per group (pairwise problem (a, b):
  1 for every other class, 2 for a's positive and b's negative weights, 0 for a's negative and
  b's positive ones), so the greedy "largest reductions first" is a merge of the groups' sorted
  lists. The top `L` entries of every group (a window) are merged once per test point into a
  list `c` (all factor-1 values) and `c ∪ 2c`; per-group counts along `c` are tabulated, so the
  sum of the active reductions in any prefix of the merged order is a handful of table look-ups
  and every pairwise problem is ONE binary search over that prefix (no per-pair sort).
* The answer of a pairwise problem is exact when every reduction at least as large as the
  deciding one lies inside the windows; rows where that cannot be shown are recomputed with
  8x larger windows, up to whole groups (then the computation is the plain greedy).

The float core runs as a compiled kernel, one row per thread (`_scalabel_kernel`, numba; engine
"numba", the default): the same tables and searches as the vectorised numpy code below, in the same
floating-point order, so every output is identical; the numpy code (engine "numpy") stays as the
reference the kernel is tested against.

Floating point (docs/math.md §3), in three layers around the float core:

1. Range guard. After the sort, every row whose largest |w| lies outside [2^-500, 2^500] is
   multiplied by a power of two that brings it into [1, 2) (exact up to the underflow of entries
   far below the row's scale, which the rounding allowance covers), so no sum can overflow; a
   non-finite intermediate raises FloatingPointError, it is never read as "no attack".
2. Tolerances. An attack is counted as successful as soon as its cumulative margin reduction is
   within `tol_i + slack_i` of the margin, where `tol_i = rtol * sum_j |W_ij| + atol_i` is the
   caller's bound on the error of the weights themselves (a learner passes the a-posteriori error
   bound of its solve, see `learners.KernelRegression.label_weights`) and `slack_i`, a few
   `n * eps * sum_j |W_ij|`, bounds every rounding error of the float computation. Upper bounds
   are backed by attacks that are verified: the attacked scores are recomputed and the target must
   win by more than `tol_i + slack_i`, so it also wins for the exact model.
3. Exact resolution. The float core flags the rows whose decision falls inside that band (top two
   scores, or the deciding prefix sum of a radius pair or a binding class pair, within twice the
   band). Those few rows are recomputed in exact arithmetic: the exact prediction (ties to the
   smaller index), the exact pairwise costs with the tie rule (an attack that only reaches an exact
   tie succeeds only if the tie goes to the attacker's class), and exactly verified greedy attacks.
   Every such decision is the sign of a sum of floats; the compiled pass (`_scalabel_kernel.exact_rows`)
   accumulates it without error as a non-overlapping float expansion (rows with |w| <= 2^900), the
   reference `_ExactRow` in Python integers (every float is an integer multiple of 2^-1074; it also
   serves the rows beyond 2^900 and the witnesses). With `tol_i = 0` the radius of every row
   is then exact; with `tol_i > 0` a row whose decision lies within `tol_i` keeps the sound
   (smaller) value and is flagged not exact (`Certificate.radius_exact`).

`label_linear_prediction` is the one definition of a label-linear model's prediction (exact
argmax, ties to the smaller index); `Certificate.prediction` and the learners' `predict` equal it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _scalabel_kernel
from ._jax import default_device, gpu_devices, x64_scope
from ._validation import as_float_array, check_int, check_labels, check_positive

_EPS = float(np.finfo(np.float64).eps)
_BLOCK_BYTES = 96 * 2**20  # working memory per block of test points
_FIRST_WINDOW = 64  # entries per group kept in the first pass
_WINDOW_GROWTH = 8


@dataclass(frozen=True)
class Certificate:
    """Per-test-point certificate of a label-linear model (docs/math.md §3).

    prediction (t,) int64: the exact argmax of the scores, ties to the smaller index (the same as
    `label_linear_prediction`); radius (t,) int64 (n where no relabelling changes the prediction);
    radius_exact (t,) bool: the radius is proven equal to the exact radius (always true with zero
    tolerance; false where a decision lies within the caller's tolerance `tolerance[i]`);
    cost_lower / cost_upper (t, K) float64: sound lower bound and verified upper bound on A_c, the
    fewest flips after which the prediction is class c (0 at the prediction, inf if unreachable /
    no verified attack); class_exact (t, K) = lower == upper; exact (t,) = radius_exact and every
    class exact. With class_bounds=False only the radius is computed: cost_lower is then P(p, c)
    (c must beat the prediction p; for weights near the float64 limit, above 2^1000, a sound lower
    bound on it) and cost_upper inf off the prediction.
    tolerance (t,) float64: the absolute tolerance `rtol * sum_j |W_ij| + atol_i` the certificate
    was computed with: radius and bounds hold for every model whose label weights W* satisfy
    sum_j |W_ij - W*_ij| <= tolerance[i] and that predicts `prediction[i]` on the clean labels.
    Where another class is within the tolerance of the top score (the exact model may predict it),
    radius is 0 and radius_exact false.

    `weights` is a reference to the caller's (t, n) weight array (not a copy) and `labels` the
    validated labels: `witness(i, ...)` recomputes the attack for test point i from them, so
    nothing of size t x n is stored. Do not modify the weights afterwards.
    """

    prediction: np.ndarray
    radius: np.ndarray
    cost_lower: np.ndarray
    cost_upper: np.ndarray
    class_exact: np.ndarray
    exact: np.ndarray
    radius_exact: np.ndarray
    weights: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    num_classes: int = 2
    tolerance: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    class_bounds: bool = True

    def witness(self, i: int, target: int | None = None) -> list[tuple[int, int]]:
        """Attack [(train_index, new_label), ...] for test point i, verified in exact arithmetic.

        target=None: an attack of size radius + 1 that changes the prediction (greedy order of the
        cheapest pairwise problem; where the radius is not exact because of the tolerance it may
        need more flips, then the shortest verified prefix is returned). target=c: the verified
        attack behind cost_upper[i, c] (exactly cost_upper[i, c] flips; [] for the prediction
        itself); c then wins by more than the tolerance. Raises ValueError when no such attack exists.
        """
        t = self.prediction.shape[0]
        i = check_int("i", i, minimum=-t, maximum=t - 1) % t
        w = np.asarray(self.weights[i], dtype=np.float64)
        tol = float(self.tolerance[i]) if self.tolerance.size else 0.0
        row = _ExactRow(w, self.labels, self.num_classes, tol)
        p = int(self.prediction[i])
        if row.prediction != p:  # pragma: no cover - the certificate's prediction is the exact one
            raise RuntimeError(f"test point {i}: exact prediction {row.prediction}, certificate says {p}")
        if target is None:
            if self.radius[i] >= len(self.labels):
                raise ValueError(f"no label-flip attack changes the prediction of test point {i}")
            return row.radius_witness(int(self.radius[i]) + 1)
        c = check_int("target", target, minimum=0, maximum=self.num_classes - 1)
        if c == p:
            return []
        if not self.class_bounds or not np.isfinite(self.cost_upper[i, c]):
            raise ValueError(f"no verified attack makes test point {i} predict class {c}")
        size = int(self.cost_upper[i, c])
        for attack in (_target_witness(w, _Layout(self.labels, self.num_classes), c, tol),
                       row.target_attack(c)):
            if attack is not None and len(attack) == size and row.wins_after(attack, c):
                return attack
        raise RuntimeError(  # pragma: no cover - determinism guard
            f"the attack behind cost_upper[{i}, {c}] = {size} could not be rebuilt and verified")


# --------------------------------------------------------------------------- layout and sorting
class _Layout:
    """Class grouping of the training columns (fixed for all test points).

    perm (n,): column order grouping the classes; off (K+1,): class segment offsets in that order.
    Group g = 2k: positive weights of class k, g = 2k + 1: negative weights.
    """

    def __init__(self, labels: np.ndarray, num_classes: int):
        self.labels = labels
        self.n = len(labels)
        self.K = num_classes
        self.G = 2 * num_classes
        self.perm = np.argsort(labels, kind="stable")
        self.off = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=num_classes))]).astype(np.int64)
        self.max_group = int(np.diff(self.off).max()) if self.n else 0
        # first window: 64 entries per group, fewer for many classes (tables are G x G·L per row)
        first = min(_FIRST_WINDOW, max(16, 2560 // self.G))
        self.first_window = max(1, min(first, self.max_group))

    def next_window(self, L: int) -> int:
        return min(self.max_group, L * _WINDOW_GROWTH)

    def row_bytes(self, L: int) -> int:
        """Approximate working memory per test point for window size L."""
        GL = self.G * L
        return 8 * (3 * self.n + 4 * GL + 6 * GL) + 4 * self.G * (GL + 1) + self.G * GL


_SORT_DEVICES = ("auto", "numpy", "jax")


def _use_jax_sort(sort_device: str) -> bool:
    """'numpy': sort with numpy; 'jax': with JAX on its default device; 'auto': JAX when a GPU is visible."""
    if sort_device not in _SORT_DEVICES:
        raise ValueError(f"sort_device must be one of {', '.join(_SORT_DEVICES)}, got {sort_device!r}")
    if sort_device == "auto":
        return bool(gpu_devices())
    return sort_device == "jax"


@functools.cache
def _jax_segment_sort():
    """Jitted lexicographic (class, value) sort of the rows of a class-grouped matrix (built on first use)."""
    import jax
    import jax.numpy as jnp

    def sort(keys, x):
        return jax.lax.sort((jnp.broadcast_to(keys, x.shape), x), dimension=1, num_keys=2)[1]

    return jax.jit(sort)


def _sorted_segments_jax(wb: np.ndarray, layout: _Layout) -> np.ndarray:
    """Same as `_sorted_segments(wb, layout)[0]`, sorted by JAX (float64) on its default device.

    One lexicographic sort per row by (class, value): the class-grouped layout makes it the
    per-class segment sort. Sorting is exact, so the result equals numpy's (up to the order of
    +0.0 and -0.0, which compare equal and leave every sum unchanged).
    """
    import jax

    S = np.take(wb, layout.perm, axis=1)
    keys = np.repeat(np.arange(layout.K, dtype=np.int32), np.diff(layout.off))
    with x64_scope(np.float64):
        dev = default_device()
        out = _jax_segment_sort()(jax.device_put(keys, dev), jax.device_put(S, dev))
        return np.array(out, dtype=np.float64)


def _sorted_segments(wb: np.ndarray, layout: _Layout, with_index: bool = False, use_jax: bool = False):
    """Rows of wb (B, n) with columns grouped by class and each class segment sorted ascending.

    Returns S (B, n) and, with_index, the training index of every entry (B, n). use_jax (not with
    with_index): sort with `_sorted_segments_jax` (on a GPU when one is the JAX default device).
    """
    if use_jax and not with_index and wb.size:
        return _sorted_segments_jax(wb, layout), None
    S = np.take(wb, layout.perm, axis=1)
    idx = np.broadcast_to(layout.perm, S.shape).copy() if with_index else None
    for k in range(layout.K):
        lo, hi = layout.off[k], layout.off[k + 1]
        if hi - lo < 2:
            continue
        if idx is not None:
            o = np.argsort(S[:, lo:hi], axis=1, kind="stable")
            S[:, lo:hi] = np.take_along_axis(S[:, lo:hi], o, axis=1)
            idx[:, lo:hi] = np.take_along_axis(idx[:, lo:hi], o, axis=1)
        else:
            S[:, lo:hi].sort(axis=1)
    return S, idx


def _iters(size: int) -> int:
    """Binary search steps that shrink an interval of `size` candidates to one."""
    return max(1, int(np.ceil(np.log2(size + 1))))


# --------------------------------------------------------------------------- per-block tables
class _Context:
    """Windows, merged lists and count tables for B test points (rows of sorted segments S).

    X (B, G, L): top-L |w| of every group, decreasing (0-padded); cut (B, G): the largest |w| left
    out of a group's window (0 if none); Xc (B, G, L+1) prefix sums of X; c (B, GL): all window
    values merged, decreasing; Cc prefix sums of c; CT (B, G, GL+1) int32: CT[r, g, q] = number of
    group-g entries among the first q entries of c; V (B, 2GL): c and 2c merged, decreasing;
    Q1 / Q2 (B, 2GL+1): how many of the first q entries of V come from c / from 2c.
    """

    def __init__(self, S: np.ndarray, layout: _Layout, L: int, user_tol: np.ndarray, index: np.ndarray | None = None):
        B, n = S.shape
        K, G = layout.K, layout.G
        self.B, self.K, self.G, self.L, self.GL = B, K, G, L, G * L
        self.complete = L >= layout.max_group
        X = np.zeros((B, G, L))
        cut = np.zeros((B, G))
        Iw = np.full((B, G, L), -1, np.int64) if index is not None else None
        scores = np.empty((B, K))
        for k in range(K):
            lo, hi = layout.off[k], layout.off[k + 1]
            seg = S[:, lo:hi]
            scores[:, k] = np.add.reduce(seg, axis=1)
            nk = hi - lo
            m = min(L, nk)
            if m:
                X[:, 2 * k, :m] = np.maximum(seg[:, nk - m:][:, ::-1], 0.0)
                X[:, 2 * k + 1, :m] = np.maximum(-seg[:, :m], 0.0)
                if Iw is not None and index is not None:
                    Iw[:, 2 * k, :m] = index[:, hi - m:hi][:, ::-1]
                    Iw[:, 2 * k + 1, :m] = index[:, lo:lo + m]
            if nk > L:
                cut[:, 2 * k] = np.maximum(seg[:, nk - 1 - L], 0.0)
                cut[:, 2 * k + 1] = np.maximum(-seg[:, L], 0.0)
        X[X == 0] = 0.0  # no negative zeros
        self.s = scores
        self.X, self.cut, self.Iw = X, cut, Iw
        self.cutmax = cut.max(axis=1) if G else np.zeros(B)
        self.Xc = np.zeros((B, G, L + 1))
        np.cumsum(X, axis=2, out=self.Xc[:, :, 1:])
        flat = X.reshape(B, G * L)
        order = np.argsort(-flat, axis=1, kind="stable")
        c = np.take_along_axis(flat, order, axis=1)
        tag = order // L
        self.c = c
        self.Cc = np.zeros((B, G * L + 1))
        np.cumsum(c, axis=1, out=self.Cc[:, 1:])
        CT = np.zeros((B, G, G * L + 1), np.int32)
        np.cumsum(tag[:, None, :] == np.arange(G)[None, :, None], axis=2, dtype=np.int32, out=CT[:, :, 1:])
        self.CT = CT
        both = np.concatenate([c, 2.0 * c], axis=1)
        o2 = np.argsort(-both, axis=1, kind="stable")
        self.V = np.take_along_axis(both, o2, axis=1)
        self.Q2 = np.zeros((B, 2 * G * L + 1), np.int64)
        np.cumsum(o2 >= G * L, axis=1, out=self.Q2[:, 1:])
        self.Q1 = np.arange(2 * G * L + 1)[None, :] - self.Q2
        absum = np.abs(S).sum(axis=1)
        if not (np.all(np.isfinite(absum)) and np.all(np.isfinite(scores))):
            raise FloatingPointError("non-finite intermediate in the certificate (a score sum overflowed); "
                                     "the range guard should have rescaled this row")
        # rounding allowance: bounds |float - exact| of every score, margin and prefix sum used
        # here and of a from-scratch evaluation of the attacked scores (gamma_m <= m eps, generous)
        self.slack = 16.0 * (n + G * L + 16) * _EPS * absum
        self.user_tol = np.asarray(user_tol, dtype=np.float64)
        # decisions: an attack succeeds within tol; a verified attack wins by more than tol
        self.tol = self.user_tol + self.slack
        self.absum = absum

    # --- table look-ups (r, g, q broadcast together)
    def count(self, r, g, q):
        return self.CT[r, g, q]

    def gsum(self, r, g, k):
        return self.Xc[r, g, k]


# --------------------------------------------------------------------------- pairwise problems
def _pair_active(ctx: _Context, r, a, b, q):
    """Sum and number of active reductions of pair (a, b) among the first q entries of V.

    Active: factor-1 entries of every class other than a, b (relabel to b if w > 0, to a if
    w < 0) and factor-2 entries of a's positive and b's negative weights (docs/math.md §3 table).
    """
    q1 = ctx.Q1[r, q]
    q2 = ctx.Q2[r, q]
    tot = ctx.Cc[r, q1]
    cnt = q1.copy()
    for g in (2 * a, 2 * a + 1, 2 * b, 2 * b + 1):
        k = ctx.CT[r, g, q1]
        cnt = cnt - k
        tot = tot - ctx.Xc[r, g, k]
    for g in (2 * a, 2 * b + 1):
        k = ctx.CT[r, g, q2]
        cnt = cnt + k
        tot = tot + 2.0 * ctx.Xc[r, g, k]
    return tot, cnt


def _pair_search(ctx: _Context, r, a, b, T):
    """Greedy count of pairwise problems (query arrays r, a, b, T = margin - tol; T > 0 or not).

    Returns (m, q, found, valid, tot): m the fewest active reductions whose sum reaches T (at least
    one), q its prefix length in V, found whether the windows reach T, valid whether the answer
    is exact for the full problem (else the row needs larger windows), tot the sum at q.
    """
    top = 2 * ctx.GL
    Q = len(r)
    end = np.full(Q, top)
    tot, cnt = _pair_active(ctx, r, a, b, end)
    found = (tot >= T) & (cnt >= 1)
    lo = np.zeros(Q, np.int64)
    hi = end.copy()
    for _ in range(_iters(top + 1)):
        mid = (lo + hi) >> 1
        tot, cnt = _pair_active(ctx, r, a, b, mid)
        ok = (tot >= T) & (cnt >= 1)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + 1)
    q = hi
    tq, m = _pair_active(ctx, r, a, b, q)
    v = ctx.V[r, np.maximum(q - 1, 0)]
    # every reduction >= v must be inside the windows: factor-1 groups (all) and the doubled ones
    need = np.maximum(ctx.cutmax[r], 2.0 * np.maximum(ctx.cut[r, 2 * a], ctx.cut[r, 2 * b + 1]))
    valid = np.where(found, v > need, ctx.cutmax[r] == 0)
    return m, np.where(found, q, -1), found, valid, tq


def _already(s_a, s_b, a, b, tie: str):
    """b beats a with no flips: s_b > s_a or s_b == s_a and b < a ('index'); s_b >= s_a ('attacker')."""
    if tie == "attacker":
        return s_b >= s_a
    return (s_b > s_a) | ((s_b == s_a) & (b < a))


def _band(ctx: _Context, r):
    """Width of the band around a decision threshold inside which the float core's answer may
    differ from the exact one (or from a model within the tolerance): with every score, margin and
    prefix sum within slack of its exact value, a success by more than 2 tol + 4 slack in floats
    is a success by more than tol in exact arithmetic."""
    return 2.0 * ctx.user_tol[r] + 4.0 * ctx.slack[r]


def _pairs(ctx: _Context, r, a, b, tie: str):
    """P(a, b) for query arrays (r, a, b): flip counts (float, inf = unreachable), prefix q, valid,
    near (the decision lies within `_band(ctx, r)` of its threshold, so the exact value may differ)."""
    sa, sb = ctx.s[r, a], ctx.s[r, b]
    done = _already(sa, sb, a, b, tie)
    T = (sa - sb) - ctx.tol[r]
    zero_row = ctx.absum[r] == 0  # nothing moves any score: only ties decide
    P = np.where(done, 0.0, np.inf)
    q = np.full(len(r), -1)
    valid = np.ones(len(r), bool)
    band = _band(ctx, r)
    near = np.abs(sa - sb) <= band  # whether b already beats a may differ in exact arithmetic
    todo = np.flatnonzero(~done & ~zero_row)
    if todo.size:
        m, qq, found, ok, tq = _pair_search(ctx, r[todo], a[todo], b[todo], T[todo])
        # within the tolerance the margin counts as covered by any single flip (docs/math.md §3)
        P[todo] = np.where(T[todo] <= 0, 1.0, np.where(found, m, np.inf))
        q[todo] = qq
        valid[todo] = ok | (T[todo] <= 0)
        near[todo] = (T[todo] <= 0) | (found & (tq - T[todo] <= band[todo]))
    return P, q, valid, near


# --------------------------------------------------------------------------- attacks as group prefixes
def _pair_spec(a, b, G):
    """Moves of the greedy for pair (a, b) as group membership (Q, G) and destinations (Q, G)."""
    g = np.arange(G)
    cls, pos = g // 2, g % 2 == 0
    a, b = a[:, None], b[:, None]
    member1 = (cls != a) & (cls != b)
    member2 = (g == 2 * a) | (g == 2 * b + 1)
    dest = np.where(pos, b, a)
    return member1, member2, dest


def _safe_spec(c, prio, t, G):
    """'Safe' moves towards target c: positive weights of other classes relabelled to c (doubled
    order key for classes in `prio` (Q, K)), negative weights of c relabelled to t. Every such move
    raises s_c - s_k for every k, so the win condition is monotone along the order."""
    g = np.arange(G)
    cls, pos = g // 2, g % 2 == 0
    c = c[:, None]
    pr = np.take_along_axis(prio, np.broadcast_to(cls, (len(prio), G)), axis=1)
    member1 = pos & (cls != c) & ~pr
    member2 = (pos & (cls != c) & pr) | (g == 2 * c + 1)
    dest = np.where(pos, c, t[:, None])
    return member1, member2, dest


def _after(ctx: _Context, r, q, member1, member2, dest):
    """Scores (Q, K) after the moves of a spec in the first q entries of V, and their number."""
    Q = len(r)
    G = ctx.G
    g = np.arange(G)[None, :]
    rr = r[:, None]
    k1 = ctx.CT[rr, g, ctx.Q1[r, q][:, None]]
    k2 = ctx.CT[rr, g, ctx.Q2[r, q][:, None]]
    k = np.where(member1, k1, 0) + np.where(member2, k2, 0)
    moved = ctx.Xc[rr, g, k]
    signed = np.where(g % 2 == 0, moved, -moved)  # sum of the moved weights w
    new = ctx.s[r] - signed.reshape(Q, ctx.K, 2).sum(axis=2)
    rows = np.arange(Q)
    dp, dn = dest[:, 0], dest[:, 1]
    if np.all(dest[:, 0::2] == dp[:, None]) and np.all(dest[:, 1::2] == dn[:, None]) and not np.any(dp == dn):
        # the specs send all positive weights to one class and all negative ones to another: the
        # additions of each class in group order, as one sequential sum (np.cumsum) per class
        for d, part in ((dp, signed[:, 0::2]), (dn, signed[:, 1::2])):
            new[rows, d] = np.cumsum(np.concatenate([new[rows, d][:, None], part], axis=1), axis=1)[:, -1]
    else:
        for j in range(G):  # one destination per row and group: no repeated index within a step
            new[rows, dest[:, j]] += signed[:, j]
    return new, k.sum(axis=1)


def _wins(ctx: _Context, r, c, new):
    """c wins on the attacked scores by more than tolerance + rounding allowance (so also exactly,
    and for every model within the tolerance)."""
    gap = new[np.arange(len(r)), c][:, None] - new
    gap[np.arange(len(r)), c] = np.inf
    return gap.min(axis=1) > ctx.tol[r]


def _safe_search(ctx: _Context, r, c, prio, t):
    """Shortest verified prefix of the safe order (monotone win condition): (count or inf, q)."""
    m1, m2, dest = _safe_spec(c, prio, t, ctx.G)
    top = 2 * ctx.GL
    Q = len(r)
    end = np.full(Q, top)
    found = _wins(ctx, r, c, _after(ctx, r, end, m1, m2, dest)[0])
    lo = np.zeros(Q, np.int64)
    hi = end.copy()
    for _ in range(_iters(top + 1)):
        mid = (lo + hi) >> 1
        ok = _wins(ctx, r, c, _after(ctx, r, mid, m1, m2, dest)[0])
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + 1)
    new, cnt = _after(ctx, r, hi, m1, m2, dest)
    ok = found & _wins(ctx, r, c, new)
    return np.where(ok, cnt, np.inf), np.where(ok, hi, -1)


def _safe_variant(variant: int, s, c, jstar, pred):
    """Priority classes (Q, K) and destination of c's negative weights (Q,) of safe-order variant
    2: ({j*}, j*), 3: (rivals beating c, j*), 4: ({p}, p), 5: (rivals beating c, p)."""
    K = s.shape[1]
    t = jstar if variant in (2, 3) else pred
    if variant in (2, 4):
        return np.arange(K)[None, :] == t[:, None], t
    beat = _already(s[np.arange(len(c)), c][:, None], s, c[:, None], np.arange(K)[None, :], "index")
    beat[np.arange(len(c)), c] = False
    return beat, t


def _greedy_moves(ctx: _Context, r, c, max_steps, record: bool = False):
    """Sequential greedy towards target c: each step applies the single relabelling (the next
    unused entry of a group, largest |w| first) that maximises min_{k != c} (s_c - s_k); stops when
    c wins by more than the rounding allowance. Candidates: positive weights of other classes
    relabelled to c, negative weights of any class relabelled to a class other than c and their own.
    Returns (moves or inf, and with record the list of (group, destination) per step of row 0).

    Per step and group only one destination needs scoring. Only s_u (source class u) and s_d
    change, so the strongest untouched rival is among the 3 strongest rivals of c. A positive
    weight can only go to c. A negative weight w = -v goes to some d not in {u, c}; with T1 the
    strongest rival other than u, every d != T1 leaves the rival maximum at exactly
    max(s_T1, s_u + v) (s_d - v <= s_T1), while d = T1 gives max(s_T2, s_u + v, s_T1 - v) (T2 the
    next strongest), which is never larger (no s_u term when u = c). So T1 is the best destination,
    and when it only ties the others every valid d scores the same; the choice (group first, then
    destination, smallest index among equals, compared on the rounded scores) is the one of a full
    argmax over (group, destination) pairs.
    Every query is independent of the others; each step works on the queries still running only.
    """
    Q = len(r)
    K, G, L = ctx.K, ctx.G, ctx.L
    g = np.arange(G)
    cls, pos = g // 2, g % 2 == 0
    result = np.full(Q, np.inf)
    path = []
    top = min(3, K - 1)
    # the smallest class index other than u and c, per (c, u): destination among equals
    d_all = np.arange(K)
    free = (d_all[None, None, :] != d_all[:, None, None]) & (d_all[None, None, :] != d_all[None, :, None])
    first_free = np.where(free.any(axis=2), np.argmax(free, axis=2), -1)  # (K c, K u)
    # working set: the queries still running (rows of the arrays below)
    idx = np.flatnonzero(max_steps > 0)
    rw, cw, cap = r[idx], c[idx], max_steps[idx]
    sc = ctx.s[rw].copy()
    ptr = np.zeros((idx.size, G), np.int64)
    val = ctx.X[rw, :, 0].copy()  # (Qw, G): the next unused entry of every group (0 when used up)
    kk = np.arange(K)[None, :]
    is_c = kk == cw[:, None]  # (Qw, K)
    sign = np.where(pos, 1.0, -1.0)
    step = 0
    while idx.size:
        Qw = idx.size
        rows = np.arange(Qw)
        riv = sc.copy()
        riv[rows, cw] = -np.inf
        # the 3 strongest rivals o_t and their scores v_t (first index among equals, as a stable sort)
        o = np.full((3, Qw, 1), -1)
        v = np.full((3, Qw, 1), -np.inf)
        for t in range(top):
            o[t, :, 0] = np.argmax(riv, axis=1)
            v[t, :, 0] = riv[rows, o[t, :, 0]]
            riv[rows, o[t, :, 0]] = -np.inf
        # per source class u: s_T1 (strongest rival other than u) and s_T2 (the next one); -inf: none
        T1v = np.where(kk == o[0], v[1], v[0])
        T2v = np.where((kk == o[0]) | (kk == o[1]), v[2], v[1])
        s_c = sc[rows, cw][:, None]
        vp, vn = val[:, 0::2], val[:, 1::2]
        # positive weights w = vp of class u: to c (not from c itself)
        wp = (s_c + vp) - np.maximum(T1v, sc - vp)
        # negative weights w = -vn: to T1 (from c itself, s_c rises and there is no source rival)
        w_n = -vn
        sc_n = (s_c + 0.0) - np.where(is_c, w_n, 0.0)
        A = np.where(is_c, -np.inf, sc - w_n)
        M1 = np.maximum(T2v, np.maximum(A, T1v + w_n))
        wn = sc_n - M1
        worst = np.stack([np.where((vp > 0) & ~is_c, wp, -np.inf),
                          np.where((vn > 0) & (T1v > -np.inf), wn, -np.inf)], axis=2).reshape(Qw, G)
        bg = np.argmax(worst, axis=1)
        can = np.isfinite(worst[rows, bg])
        ug = cls[bg]
        t1 = np.where(o[0, :, 0] == ug, o[1, :, 0], o[0, :, 0])
        # every other valid destination scores sc_n - max(s_T1, s_u + v): equal after rounding -> tie
        tie = wn[rows, ug] == sc_n[rows, ug] - np.maximum(T1v[rows, ug], A[rows, ug])
        bd = np.where(pos[bg], cw, np.where(tie, first_free[cw, ug], t1))
        w = val[rows, bg] * sign[bg]
        moved = np.where(can, w, 0.0)
        sc[rows, ug] -= moved
        sc[rows, bd] += moved
        rc, gc = rows[can], bg[can]
        ptr[rc, gc] += 1
        pc = ptr[rc, gc]
        val[rc, gc] = np.where(pc < L, ctx.X[rw[rc], gc, np.minimum(pc, L - 1)], 0.0)
        if record:
            path.append((int(bg[0]), int(bd[0])) if can[0] else None)
        gapnow = sc[rows, cw][:, None] - sc
        gapnow[rows, cw] = np.inf
        won = can & (gapnow.min(axis=1) > ctx.tol[rw])
        step += 1
        result[idx[won]] = step
        keep = np.flatnonzero(can & ~won & (step < cap))
        if keep.size < Qw:
            idx, rw, cw, cap, sc, ptr, val, is_c = (idx[keep], rw[keep], cw[keep], cap[keep], sc[keep], ptr[keep],
                                                     val[keep], is_c[keep])
    return (result, path) if record else result


# --------------------------------------------------------------------------- Lagrangian lower bounds
def _lagrangian(ctx: _Context, r, c, R):
    """Lower bound on A_c from the rival set R (Q, K) with uniform multipliers 1/|R|.

    Validity: if c is the prediction after an attack, s'_c >= s'_j for every j, hence
    M' = (1/|R|) sum_{j in R} s'_j - s'_c <= 0. M is linear in the labels with coefficient
    coef(k) = 1/|R| on R, 0 on the other classes, -1 on c; relabelling sample j from u to v
    changes M by w_j (coef(v) - coef(u)), so each sample's best single relabelling (w > 0: to c,
    reduction w (coef(u) + 1); w < 0: to a class of R, reduction |w| (1/|R| - coef(u))) is
    independent of the others and taking the largest reductions first is optimal for this
    relaxation. Its greedy count is the fewest flips that can make M' <= 0, a lower bound on A_c.
    Returns (bound or inf, valid) — valid False where the windows cannot decide it.
    """
    Q = len(r)
    G = ctx.G
    g = np.arange(G)
    cls, pos = g // 2, g % 2 == 0
    size = R.sum(axis=1).astype(np.float64)
    inv = 1.0 / size
    hi_f = 1.0 + inv
    inR = np.take_along_axis(R, np.broadcast_to(cls, (Q, G)), axis=1)
    isc = cls[None, :] == c[:, None]
    # factor index per group: 0 -> 1 + 1/|R|, 1 -> 1, 2 -> 1/|R|, -1 -> no reduction
    fi = np.where(pos, np.where(inR, 0, np.where(isc, -1, 1)), np.where(isc, 0, np.where(inR, -1, 2)))
    fv = np.stack([hi_f, np.ones(Q), inv], axis=1)
    f = np.where(fi >= 0, np.take_along_axis(fv, np.maximum(fi, 0), axis=1), 0.0)
    s = ctx.s[r]
    M = (s * R).sum(axis=1) * inv - s[np.arange(Q), c]
    T = M - ctx.tol[r]
    GL = ctx.GL
    rr = r[:, None]

    # only the factors some query uses are searched (column j of the arrays below: factor use[j])
    present = np.stack([(fi == j).any(axis=1) for j in range(3)], axis=1)  # (Q, 3)
    use = np.flatnonzero(present.any(axis=0))
    slot = np.zeros(3, np.int64)
    slot[use] = np.arange(use.size)
    fu, present = fv[:, use], present[:, use]
    fi_pos = slot[np.maximum(fi, 0)][:, None, :]  # (Q, 1, G)
    r3 = r[:, None, None]
    g3 = g[None, None, :]
    nf = use.size
    top_step = 1 << (int(GL).bit_length() - 1)

    def counts(tau, strict):
        # tau (Q, J); for each factor: how many c entries with fl(f c[q]) >= tau (> tau) (a prefix
        # of c, which decreases; found bit by bit), then the sum (Q, J) and number (Q, J) of the
        # reductions at least (more than) tau
        J = tau.shape[1]
        npos = np.zeros((Q, J, nf), np.int64)
        f3, tau3 = fu[:, None, :], tau[:, :, None]
        step = top_step
        while step:
            cand = npos + step
            val = f3 * ctx.c[r3, np.minimum(cand, GL) - 1]
            ok = (val > tau3) if strict else (val >= tau3)
            npos = np.where(ok & (cand <= GL), cand, npos)
            step >>= 1
        k = ctx.CT[r3, g3, np.take_along_axis(npos, np.broadcast_to(fi_pos, (Q, J, G)), axis=2)]
        k = np.where(fi[:, None, :] >= 0, k, 0)
        return (f[:, None, :] * ctx.Xc[r3, g3, k]).sum(axis=2), k.sum(axis=2)

    # v = the largest candidate threshold fl(f c[q]) (f a factor some group uses) with F >= T.
    # Factor j0 (the first one the query uses) is searched over all of c; a candidate of another
    # factor can only raise v if it lies above j0's answer (Lo) and below the next larger
    # candidate of j0 (U, where F < T), so the other factors are searched in that range only.
    rows = np.arange(Q)
    j0 = np.argmax(present, axis=1)
    f0 = fu[rows, j0]
    lo: np.ndarray = np.zeros(Q, np.int64)
    hi: np.ndarray = np.full(Q, GL - 1)
    for _ in range(_iters(GL)):
        mid = (lo + hi) >> 1
        F, _ = counts((f0 * ctx.c[r, mid])[:, None], False)
        ok = F[:, 0] >= T
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid + 1)
    tau0 = f0 * ctx.c[r, hi]
    F, _ = counts(tau0[:, None], False)
    ok0 = F[:, 0] >= T
    hit0 = ok0 & (tau0 > 0)
    U = np.where(ok0, np.where(hi > 0, f0 * ctx.c[r, np.maximum(hi - 1, 0)], np.inf), tau0)
    Lo = np.where(hit0, tau0, 0.0)
    # [qa, qb): the positions whose candidates of factor j lie in (Lo, U)
    qa = np.zeros((Q, nf), np.int64)
    qb = np.zeros((Q, nf), np.int64)
    U2, Lo2 = U[:, None], Lo[:, None]
    step = top_step
    while step:
        for q_, above in ((qa, True), (qb, False)):
            cand = q_ + step
            val = fu * ctx.c[rr, np.minimum(cand, GL) - 1]
            ok = (val >= U2) if above else (val > Lo2)
            q_[...] = np.where(ok & (cand <= GL), cand, q_)
        step >>= 1
    other = present & (np.arange(nf)[None, :] != j0[:, None])
    qb = np.where(other, np.maximum(qa, qb), qa)
    lo, hi = qa, qb.copy()  # smallest position in [qa, qb) with F >= T (hi == qb: none)
    for _ in range(_iters(int((qb - qa).max(initial=0)))):
        act = lo < hi
        if not act.any():
            break
        mid = (lo + hi) >> 1
        F, _ = counts(fu * ctx.c[rr, np.minimum(mid, GL - 1)], False)
        ok = F >= T[:, None]
        hi = np.where(act & ok, mid, hi)
        lo = np.where(act & ~ok, mid + 1, lo)
    tau = np.where(hi < qb, fu * ctx.c[rr, np.minimum(hi, GL - 1)], 0.0)
    v = np.maximum(np.where(hit0, tau0, 0.0), tau.max(axis=1))
    found = v > 0
    vv = np.where(found, v, 1.0)
    F_gt, N_gt = counts(vv[:, None], True)
    _, N_ge = counts(vv[:, None], False)
    F_gt, N_gt, N_ge = F_gt[:, 0], N_gt[:, 0], N_ge[:, 0]
    k = np.maximum(1.0, np.ceil((T - F_gt) / vv))
    m = np.minimum(N_gt + k, N_ge).astype(np.float64)
    need = (f * ctx.cut[r]).max(axis=1)
    valid = np.where(found, v > need, need == 0) & (T > 0)
    return np.where(found, m, np.inf), valid


# --------------------------------------------------------------------------- one block of rows
def _solve(ctx: _Context, mode: str, tie: str, record: bool = False):
    """Certificates for the rows of one context. mode: 'radius', 'pairs' or 'full'.

    Returns a dict with prediction, radius, P (pairs), lower/upper (full), redo (rows whose
    windows were too small), band (rows whose prediction, radius or a binding class pair was
    decided inside the rounding / tolerance band: they are resolved exactly by the caller) and,
    with record, the attack descriptors behind the upper bounds.
    """
    B, K, G = ctx.B, ctx.K, ctx.G
    s = ctx.s
    pred = np.argmax(s, axis=1)
    out = {"prediction": pred}
    if mode == "radius":
        a = np.broadcast_to(pred[:, None], (B, K))
        b = np.broadcast_to(np.arange(K), (B, K))
        sel = a != b
    else:
        a = np.broadcast_to(np.arange(K)[None, :, None], (B, K, K))
        b = np.broadcast_to(np.arange(K)[None, None, :], (B, K, K))
        sel = a != b
    r = np.broadcast_to(np.arange(B).reshape((B,) + (1,) * (a.ndim - 1)), a.shape)
    P = np.zeros(a.shape)
    Qs = np.full(a.shape, -1)
    NR = np.zeros(a.shape, bool)
    p_, q_, ok_, near_ = _pairs(ctx, r[sel], a[sel], b[sel], tie)
    P[sel], Qs[sel], NR[sel] = p_, q_, near_
    redo = np.zeros(B, bool)
    np.logical_or.at(redo, r[sel][~ok_], True)
    if mode == "radius":
        own = np.where(sel, P, np.inf)
        own_near = NR
    else:
        own = np.where(sel, P, np.inf)[np.arange(B), pred]
        own_near = NR[np.arange(B), pred]
        out["P"] = P
    best = own.min(axis=1)
    out["radius"] = np.where(np.isfinite(best), best - 1, -1)  # -1: no attack (set to n by caller)
    out["own"] = np.where(np.arange(K)[None, :] == pred[:, None], 0.0, own)
    # rows to resolve exactly: top two scores within the band, or a pair attaining the radius decided in it
    rows_b = np.arange(B)
    second = s.copy()
    second[rows_b, pred] = -np.inf
    gap = s[rows_b, pred] - (second.max(axis=1) if K > 1 else -np.inf)
    band = (gap <= _band(ctx, rows_b)) | np.any(own_near & (own == best[:, None]), axis=1)
    out["band"] = band if mode == "radius" else NR.any(axis=(1, 2))
    if mode != "full":
        out["redo"] = redo
        return out

    rows = np.arange(B)
    Pc = P.copy()
    Pc[:, np.arange(K), np.arange(K)] = -1.0
    jstar = np.argmax(Pc, axis=1)  # (B, K): binding rival of every target
    lower = np.take_along_axis(Pc, jstar[:, None, :], axis=1)[:, 0, :]
    lower = np.maximum(lower, 0.0)
    upper = np.full((B, K), np.inf)
    kind = np.zeros((B, K), np.int64)
    qpos = np.full((B, K), -1)
    isp = np.arange(K)[None, :] == pred[:, None]
    lower[isp] = 0.0
    upper[isp] = 0.0
    rb, cb = np.nonzero(~isp & np.isfinite(lower))
    rest = np.zeros(0, np.int64)
    if rb.size:
        js = jstar[rb, cb]
        # (1) greedy attack of the binding pair (j*, c): exact when c then wins
        q1 = Qs[rb, js, cb]
        has = q1 >= 0
        ver = np.zeros(rb.size, bool)
        if has.any():
            i = np.flatnonzero(has)
            m1, m2, dest = _pair_spec(js[i], cb[i], G)
            new, cnt = _after(ctx, rb[i], q1[i], m1, m2, dest)
            ver[i] = _wins(ctx, rb[i], cb[i], new)
            upper[rb[i[ver[i]]], cb[i[ver[i]]]] = cnt[ver[i]]
            kind[rb[i], cb[i]] = np.where(ver[i], 1, 0)
            qpos[rb[i], cb[i]] = np.where(ver[i], q1[i], -1)
        # (2) safe orders: priority on one rival or on every rival that currently beats c; c's
        # negative weights go to the binding rival j* or to the prediction p
        rest = np.flatnonzero(~ver)
        if rest.size:
            rr, cc, jj = rb[rest], cb[rest], js[rest]
            for variant in (2, 3, 4, 5):
                prio, dest = _safe_variant(variant, s[rr], cc, jj, pred[rr])
                # (rows whose gap is closed cannot improve: every attack is verified, lower is sound)
                use = np.flatnonzero(((variant < 4) | (jj != pred[rr])) & (upper[rr, cc] > lower[rr, cc]))
                if use.size == 0:
                    continue
                cnt, qq = _safe_search(ctx, rr[use], cc[use], prio[use], dest[use])
                ru, cu = rr[use], cc[use]
                better = cnt < upper[ru, cu]
                upper[ru[better], cu[better]] = cnt[better]
                kind[ru[better], cu[better]] = variant
                qpos[ru[better], cu[better]] = qq[better]
    # Lagrangian lower bounds where the pairwise bound is not tight. They come before the sequential
    # greedy (3) and each rival set only runs where a gap remains: a closed gap cannot change any
    # more (every bound is sound, every attack verified), so the results do not depend on the order.
    lower_pair = lower.copy()
    rg, cg = np.nonzero(~isp & (lower < upper) & np.isfinite(lower))
    if rg.size and K >= 3:
        beat = _already(s[rg, cg][:, None], s[rg], cg[:, None], np.arange(K)[None, :], "index")
        beat[np.arange(rg.size), cg] = False
        allr = np.ones((rg.size, K), bool)
        allr[np.arange(rg.size), cg] = False
        # the two rivals with the largest pairwise costs P(j, c)
        col = np.where(allr, Pc[rg, :, cg], -np.inf)
        top2 = np.zeros((rg.size, K), bool)
        o = np.argsort(-col, axis=1, kind="stable")[:, :2]
        top2[np.arange(rg.size)[:, None], o] = True
        top2 &= allr
        sets = ((beat, beat.sum(axis=1) >= 2), (allr, (allr != beat).any(axis=1)),
                (top2, (top2.sum(axis=1) == 2) & (top2 != beat).any(axis=1) & (top2 != allr).any(axis=1)))
        for R, use in sets:
            i = np.flatnonzero(use & (lower[rg, cg] < upper[rg, cg]))
            if i.size:
                lb, ok = _lagrangian(ctx, rg[i], cg[i], R[i])
                take = ok & (lb > lower[rg[i], cg[i]])
                lower[rg[i[take]], cg[i[take]]] = lb[take]
    if rb.size and rest.size:
        rr, cc = rb[rest], cb[rest]
        # (3) sequential greedy where a gap remains; it must beat the best attack so far
        i = np.flatnonzero(upper[rr, cc] > lower[rr, cc])
        if i.size:
            ru, cu = rr[i], cc[i]
            cap = np.where(np.isfinite(upper[ru, cu]), upper[ru, cu] - 1, 3 * lower_pair[ru, cu] + 10)
            cnt = _greedy_moves(ctx, ru, cu, np.minimum(cap, ctx.GL).astype(np.int64))
            better = cnt < upper[ru, cu]
            upper[ru[better], cu[better]] = cnt[better]
            kind[ru[better], cu[better]] = 6
            qpos[ru[better], cu[better]] = cnt[better]
        # tightness: no verified attack inside incomplete windows -> larger windows
        miss = ~np.isfinite(upper[rr, cc]) & (ctx.cutmax[rr] > 0)
        np.logical_or.at(redo, rr[miss], True)
    if np.any(upper < lower):  # pragma: no cover - would mean an unsound bound
        raise RuntimeError("internal error: a verified attack is smaller than the lower bound")
    # any pairwise cost decided inside the band (the class lower bounds contain the exact ones)
    out["band"] = band | NR.any(axis=(1, 2))
    out.update(lower=lower, upper=upper, redo=redo)
    if record:
        out.update(kind=kind, qpos=qpos, jstar=jstar)
    return out


# --------------------------------------------------------------------------- range guard
_SAFE_EXP = 500  # rows with max |w| in [2^-500, 2^500] cannot overflow or lose the rounding allowance


def _rescale(S: np.ndarray, layout: _Layout, tol: np.ndarray):
    """Range guard: rows of the sorted block S whose largest |w| is outside [2^-500, 2^500] are
    multiplied by the power of two that brings it into [0.5, 1); tol (absolute tolerances) likewise.

    Multiplying by a power of two is exact (the order of every sorted segment is kept) except for
    entries that underflow, each off by at most 2^-1075 after scaling, far below the rounding
    allowance of a row of scale 1. The largest |w| of a row is read off the ends of its sorted
    class segments (O(K) per row). Returns (S, tol), copies only where a row was scaled.
    """
    nonempty = np.flatnonzero(np.diff(layout.off) > 0)
    if S.size == 0 or nonempty.size == 0:
        return S, tol
    ends = np.concatenate([S[:, layout.off[nonempty]], S[:, layout.off[nonempty + 1] - 1]], axis=1)
    top = np.abs(ends).max(axis=1)
    scale_bad = (top > 2.0 ** _SAFE_EXP) | ((top > 0) & (top < 2.0 ** -_SAFE_EXP))
    if not scale_bad.any():
        return S, tol
    idx = np.flatnonzero(scale_bad)
    _, e = np.frexp(top[idx])
    S = S.copy()
    tol = np.array(tol, dtype=np.float64, copy=True)
    S[idx] = np.ldexp(S[idx], -e[:, None])
    # a tolerance only shrinks when scaled down into the subnormals; round it up by one unit there
    tol[idx] = np.nextafter(np.ldexp(tol[idx], -e), np.inf) * (tol[idx] > 0)
    return S, tol


_ENGINES = ("numba", "numpy")


def _run(weights: np.ndarray, layout: _Layout, mode: str, tie: str, user_tol: np.ndarray, block_size,
         sort_device: str = "numpy", engine: str = "numba", pairs_tie: str | None = None):
    """Stream over blocks of test points; rows whose windows were too small are redone with larger ones.

    user_tol (t,): absolute tolerance per row. In 'radius' and 'full' mode the rows the float core
    flags as decided inside the band are then resolved in exact arithmetic (`_resolve_exact`).
    engine "numba": the float core is the compiled row kernel (`_scalabel_kernel`), "numpy": the
    vectorised core below (the test oracle); identical results. pairs_tie (mode "full"): also
    return the pairwise costs with that tie rule as res["P"], as mode "pairs" computes them (the
    kernel takes them from the same pass).
    """
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {', '.join(_ENGINES)}, got {engine!r}")
    if pairs_tie is not None and mode == "full" and engine == "numpy":
        res = _run(weights, layout, mode, tie, user_tol, block_size, sort_device, engine)
        res["P"] = _run(weights, layout, "pairs", pairs_tie, user_tol, block_size, sort_device, engine)["P"]
        return res
    use_jax = _use_jax_sort(sort_device)
    t, n = weights.shape
    K = layout.K
    res = {"prediction": np.zeros(t, np.int64), "radius": np.zeros(t, np.int64),
           "radius_exact": np.ones(t, bool), "band": np.zeros(t, bool)}
    if mode == "pairs" or pairs_tie is not None:
        res["P"] = np.zeros((t, K, K))
        res["pairs_band"] = np.zeros(t, bool)
    if mode == "full":
        res["lower"] = np.zeros((t, K))
        res["upper"] = np.zeros((t, K))
    res["own"] = np.zeros((t, K))
    if t == 0:
        return res
    if n == 0:  # all scores 0: class 0 predicted, nothing can change
        inf = np.where(np.arange(K) == 0, 0.0, np.inf)
        res["own"][:] = inf
        if "P" in res:
            # b beats a at equal (zero) scores iff b < a (index) or always (attacker)
            a, b = np.meshgrid(np.arange(K), np.arange(K), indexing="ij")
            res["P"][:] = np.where(_already(0.0, 0.0, a, b, pairs_tie or tie) | (a == b), 0.0, np.inf)
        if mode == "full":
            res["lower"][:] = inf
            res["upper"][:] = inf
        return res
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // layout.row_bytes(layout.first_window))
    for start in range(0, t, block_size):
        stop = min(t, start + block_size)
        S, _ = _sorted_segments(np.asarray(weights[start:stop], dtype=np.float64), layout, use_jax=use_jax)
        S, tol_b = _rescale(S, layout, user_tol[start:stop])
        if engine == "numba":
            out = _scalabel_kernel.solve_block(S, layout.off, layout.first_window, layout.max_group, _WINDOW_GROWTH,
                                               tol_b, mode, pairs_tie or tie, "P" in res)
            for key, value in out.items():
                res[key][start:stop] = value
            continue
        rows = np.arange(stop - start)
        L = layout.first_window
        while rows.size:
            chunk = max(1, _BLOCK_BYTES // layout.row_bytes(L))
            again = []
            for c0 in range(0, rows.size, chunk):
                sub = rows[c0:c0 + chunk]
                ctx = _Context(S[sub], layout, L, tol_b[sub])
                out = _solve(ctx, mode, tie)
                keep = ~out["redo"] if not ctx.complete else np.ones(sub.size, bool)
                dst = start + sub[keep]
                res["prediction"][dst] = out["prediction"][keep]
                res["radius"][dst] = np.where(out["radius"][keep] < 0, n, out["radius"][keep])
                res["own"][dst] = out["own"][keep]
                if "band" in out:
                    res["band"][dst] = out["band"][keep]
                if mode == "pairs":
                    res["P"][dst] = out["P"][keep]
                if mode == "full":
                    res["lower"][dst] = out["lower"][keep]
                    res["upper"][dst] = out["upper"][keep]
                again.append(sub[~keep])
            rows = np.concatenate(again)
            L = layout.next_window(L)
    _resolve_exact(weights, layout.labels, K, user_tol, np.flatnonzero(res["band"]), res, mode, tie, layout)
    if pairs_tie is not None and mode == "full":  # the pairs as mode "pairs" resolves them
        _resolve_exact(weights, layout.labels, K, user_tol, np.flatnonzero(res["pairs_band"]), res, "pairs",
                       pairs_tie, layout)
    return res


# --------------------------------------------------------------------------- exact resolution
def _exact_ints(values: np.ndarray) -> tuple[list[int], int]:
    """Finite floats as exact Python integers at a common scale: values[i] = ints[i] * 2^E."""
    v = np.asarray(values, dtype=np.float64)
    m, e = np.frexp(v)
    mant = (m * 2.0 ** 53).astype(np.int64)  # exact: |m| in [0.5, 1)
    e = e.astype(np.int64) - 53
    nz = mant != 0
    E = int(e[nz].min()) if nz.any() else 0
    sh = np.where(nz, e - E, 0)
    return [int(a) << int(b) for a, b in zip(mant.tolist(), sh.tolist())], E


class _ExactRow:
    """One test point in exact integer arithmetic (every float64 is an integer multiple of 2^-1074).

    w (n,) label weights, labels (n,), K classes, tol >= 0 the absolute tolerance. Gives the exact
    scores and prediction (ties to the smaller index), exact pairwise costs with the tie rule
    (`pair`), the exact radius, greedy attacks and their exact verification.
    """

    def __init__(self, w: np.ndarray, labels: np.ndarray, K: int, tol: float):
        ints, self.E = _exact_ints(np.append(w, tol))
        self.tol = ints[-1]
        self.w = np.array(ints[:-1], dtype=object).reshape(-1)  # Python ints
        self.wabs = np.array([abs(x) for x in ints[:-1]], dtype=object).reshape(-1)
        self.wf = np.asarray(w, dtype=np.float64)
        self.absw = np.abs(self.wf)
        self.labels = labels
        self.K = K
        self.n = len(labels)
        self.s = [sum(self.w[labels == k].tolist()) for k in range(K)]
        self.prediction = int(max(range(K), key=lambda k: (self.s[k], -k)))
        self._memo: dict[tuple[int, int, bool, str], tuple[float, Any]] = {}

    # --- pairwise problems
    def _order(self, a: int, b: int):
        """Greedy order of pair (a, b): indices by decreasing reduction f|w| (positive reductions
        only), their factors and their destinations. Float keys order exactly: 2|w| is exact
        unless it overflows to inf, and equal keys are ordered by |w|."""
        y, w = self.labels, self.wf
        pos = w > 0
        f = np.where(y == a, np.where(pos, 2, 0), np.where(y == b, np.where(pos, 0, 2), 1)) * (w != 0)
        dest = np.where(pos, b, a)
        with np.errstate(over="ignore"):
            key = f * self.absw
        idx = np.flatnonzero(f > 0)
        idx = idx[np.lexsort((-self.absw[idx], -key[idx]))]
        return idx, f[idx], dest[idx]

    def pair(self, a: int, b: int, strict: bool = False, tie: str = "index"):
        """(P, order): fewest flips after which b beats a (inf if none; 0 if b already does).

        tol == 0: b beats a iff s_b > s_a or (s_b == s_a and b < a) (tie="index"; "attacker": or
        s_b == s_a). tol > 0: the margin counts as covered within tol (P >= 1, a sound lower bound
        for every model within tol); strict=True instead asks b to beat a by more than tol (the
        count that holds for every such model).
        """
        key = (a, b, strict, tie)
        if key not in self._memo:
            self._memo[key] = self._pair(a, b, strict, tie)
        return self._memo[key]

    def _pair(self, a: int, b: int, strict: bool, tie: str):
        M = self.s[a] - self.s[b]
        tie_b = b < a or tie == "attacker"
        if M < 0 or (M == 0 and tie_b):
            return 0.0, None
        order = self._order(a, b)
        idx, f, _ = order
        red = self.wabs[idx] * f.astype(object)  # Python int products, exact
        prefix = list(itertools.accumulate(red.tolist(), initial=0))
        if self.tol == 0:
            need, strict_gt = M, not tie_b
        elif strict:
            need, strict_gt = M + self.tol, True
        else:
            need, strict_gt = M - self.tol, False
        m = (bisect.bisect_right if strict_gt else bisect.bisect_left)(prefix, need)
        if m >= len(prefix):
            return np.inf, order
        return float(max(m, 1)), order

    def radius(self) -> tuple[int, bool, np.ndarray]:
        """(radius, exact, own (K,) = P(p, c)): the radius and whether it holds for every model within tol."""
        p = self.prediction
        own = np.zeros(self.K)
        strict = np.zeros(self.K)
        for b in range(self.K):
            if b != p:
                own[b] = self.pair(p, b)[0]
                strict[b] = self.pair(p, b, strict=True)[0] if self.tol else own[b]
        own_b = np.delete(own, p)
        best = own_b.min() if own_b.size else np.inf
        radius = int(best - 1) if np.isfinite(best) else self.n
        exact = True
        if self.tol:
            st_b = np.delete(strict, p)
            gaps = [self.s[p] - self.s[k] for k in range(self.K) if k != p]
            exact = bool(np.min(st_b) == best) and all(g > self.tol for g in gaps)
        return radius, exact, own

    # --- attacks
    def apply(self, attack) -> list[int]:
        """Exact scores after the relabelling [(j, new_label), ...]."""
        s = list(self.s)
        for j, v in attack:
            wj = int(self.w[j])
            s[self.labels[j]] -= wj
            s[v] += wj
        return s

    def wins_after(self, attack, c: int) -> bool:
        """c is the prediction after the attack, by more than tol over every other class (tol > 0),
        or by the tie rule (tol == 0)."""
        s = self.apply(attack)
        for k in range(self.K):
            if k == c:
                continue
            d = s[c] - s[k]
            if self.tol:
                if not d > self.tol:
                    return False
            elif d < 0 or (d == 0 and k < c):
                return False
        return True

    def changes_prediction(self, attack) -> bool:
        s = self.apply(attack)
        return int(max(range(self.K), key=lambda k: (s[k], -k))) != self.prediction

    def greedy_attack(self, a: int, b: int, m: int, order=None):
        """The m largest reductions of pair (a, b) as [(j, new_label), ...], sorted by j."""
        idx, _, dest = order if order is not None else self._order(a, b)
        return sorted((int(j), int(d)) for j, d in zip(idx[:m], dest[:m]))

    def radius_witness(self, size: int):
        """Greedy attack of the cheapest pairwise problem (p, b), shortest exactly verified prefix >= size."""
        p = self.prediction
        costs = [(self.pair(p, b)[0], b) for b in range(self.K) if b != p]
        _, bb = min(costs)
        idx, _, _ = order = self._order(p, bb)
        for m in range(size, idx.size + 1):
            att = self.greedy_attack(p, bb, m, order)
            if self.changes_prediction(att):
                return att
        raise ValueError("no prefix of the greedy attack changes the prediction")

    def target_attack(self, c: int):
        """Greedy attack of the binding pair (j*, c) (j* = argmax_j P(j, c)), exactly verified, or None."""
        costs = [(self.pair(j, c)[0], j) for j in range(self.K) if j != c]
        Pj, j = max(costs, key=lambda x: (x[0], -x[1]))
        if not np.isfinite(Pj):
            return None
        Pm = self.pair(j, c, strict=True)[0] if self.tol else Pj
        if not np.isfinite(Pm):
            return None
        att = self.greedy_attack(j, c, int(Pm))
        return att if self.wins_after(att, c) else None

    def class_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) (K,): lower = max_j P(j, c) (exact pairwise), upper = size of an exactly
        verified greedy attack (inf if none); 0 at the prediction."""
        K = self.K
        lower = np.zeros(K)
        upper = np.zeros(K)
        for c in range(K):
            if c == self.prediction:
                continue
            lower[c] = max(self.pair(j, c)[0] for j in range(K) if j != c)
            att = self.target_attack(c) if np.isfinite(lower[c]) else None
            upper[c] = len(att) if att is not None else np.inf
        return lower, upper


def _resolve_exact(weights: np.ndarray, labels: np.ndarray, K: int, user_tol: np.ndarray, rows: np.ndarray,
                   res: dict, mode: str, tie: str = "index", layout: _Layout | None = None) -> None:
    """Exact post-pass (in place on res) for the rows the float core decided inside the band.

    'pairs' mode: the row's pairwise costs P (K, K) are recomputed exactly (tie rule `tie`).
    Otherwise replaces prediction, radius and radius_exact (and, in 'radius' mode, P(p, c)) by the
    exact values; in 'full' mode tightens the class bounds with the exact pairwise lower bounds and
    exactly verified attacks (the core's bounds stay valid: they do not depend on the prediction,
    except at the core's own prediction, which is replaced when the exact prediction differs).

    Rows whose weights and tolerance are at most `_scalabel_kernel.EXACT_MAX` in magnitude run in
    the compiled exact kernel (error-free float expansions, `_scalabel_kernel.exact_rows`); the
    others in Python integers (`_ExactRow`). Both compute the same exact values.
    """
    if rows.size == 0:
        return
    layout = layout if layout is not None else _Layout(labels, K)
    W = np.asarray(weights[rows], dtype=np.float64)
    tol = np.asarray(user_tol[rows], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        fast = (np.abs(W).max(axis=1, initial=0.0) <= _scalabel_kernel.EXACT_MAX) & (tol <= _scalabel_kernel.EXACT_MAX)
    R = rows.size
    pred = np.zeros(R, np.int64)
    radius = np.zeros(R, np.int64)
    exact = np.ones(R, bool)
    own, lower, upper = np.zeros((R, K)), np.zeros((R, K)), np.zeros((R, K))
    P = np.zeros((R, K, K))
    f = np.flatnonzero(fast)
    if f.size:
        out = _scalabel_kernel.resolve_rows(W[f], labels, layout.perm, layout.off, tol[f], mode, tie)
        pred[f], radius[f], exact[f] = out["prediction"], out["radius"], out["radius_exact"]
        own[f], lower[f], upper[f], P[f] = out["own"], out["lower"], out["upper"], out["P"]
    for r in np.flatnonzero(~fast).tolist():
        row = _ExactRow(W[r], labels, K, float(tol[r]))
        if mode == "pairs":
            P[r] = [[row.pair(a, b, tie=tie)[0] if a != b else 0.0 for b in range(K)] for a in range(K)]
            continue
        radius[r], exact[r], own[r] = row.radius()
        pred[r] = row.prediction
        if mode == "full":
            lower[r], upper[r] = row.class_bounds()
    for r, i in enumerate(rows.tolist()):
        if mode == "pairs":
            res["P"][i] = P[r]
            continue
        p_core, p = int(res["prediction"][i]), int(pred[r])
        res["prediction"][i] = p
        res["radius"][i] = radius[r]
        res["radius_exact"][i] = exact[r]
        res["own"][i] = own[r]
        if mode == "full":
            keep = np.arange(K) != p_core  # the core's bounds at its own prediction say nothing
            lo_b = np.where(keep, np.maximum(res["lower"][i], lower[r]), lower[r])
            up_b = np.where(keep, np.minimum(res["upper"][i], upper[r]), upper[r])
            lo_b[p] = up_b[p] = 0.0
            if np.any(up_b < lo_b):  # pragma: no cover - would mean an unsound bound
                raise RuntimeError(f"internal error: exact and float bounds of test point {i} contradict")
            res["lower"][i], res["upper"][i] = lo_b, up_b


# --------------------------------------------------------------------------- witnesses (one row)
def _target_witness(w, layout: _Layout, c: int, tol: float):
    """Rebuild the float core's verified attack behind its upper bound for target c of one test
    point (None when the core has none)."""
    S, idx = _sorted_segments(w[None, :], layout, with_index=True)
    S, tol_r = _rescale(S, layout, np.array([tol]))
    L = layout.first_window
    while True:
        ctx = _Context(S, layout, L, tol_r, index=idx)
        out = _solve(ctx, "full", "index", record=True)
        if not out["redo"][0] or ctx.complete:
            break
        L = layout.next_window(L)
    Iw = ctx.Iw
    if Iw is None:  # pragma: no cover - the context above was built with the training indices
        raise RuntimeError("attack could not be rebuilt without training indices")
    kind, q = int(out["kind"][0, c]), int(out["qpos"][0, c])
    js = out["jstar"][0, c:c + 1]
    cc = np.array([c])
    if kind == 1:
        m1, m2, dest = _pair_spec(js, cc, ctx.G)
    elif kind in (2, 3, 4, 5):
        prio, t = _safe_variant(kind, ctx.s, cc, js, out["prediction"])
        m1, m2, dest = _safe_spec(cc, prio, t, ctx.G)
    elif kind == 6:
        _, path = _greedy_moves(ctx, np.zeros(1, np.int64), cc, np.array([q]), record=True)
        ptr = np.zeros(ctx.G, np.int64)
        attack = []
        for step in path:
            if step is None:  # pragma: no cover - the recorded run moved every step
                raise RuntimeError("greedy attack could not be rebuilt")
            gg, dd = step
            attack.append((int(Iw[0, gg, ptr[gg]]), dd))
            ptr[gg] += 1
        return sorted(attack)
    else:
        return None
    attack = []
    for g in range(ctx.G):
        if m1[0, g]:
            k = int(ctx.CT[0, g, ctx.Q1[0, q]])
        elif m2[0, g]:
            k = int(ctx.CT[0, g, ctx.Q2[0, q]])
        else:
            continue
        attack.extend((int(j), int(dest[0, g])) for j in Iw[0, g, :k])
    return sorted(attack)


# --------------------------------------------------------------------------- public API
def _validate(weights, labels, num_classes, block_size, rtol=0.0, atol=None):
    """Validated (W, y, K, block_size, tol): tol (t,) = rtol * sum_j |W_ij| + atol_i, finite."""
    w = as_float_array("weights", weights, ndim=2)
    if num_classes is None:
        raise ValueError("num_classes is required: pass the task's number of classes (the attacker may relabel to "
                         "any class of the task, and a training set may lack some of them)")
    y, K = check_labels(labels, num_classes, name="labels")
    if w.shape[1] != len(y):
        raise ValueError(f"weights have {w.shape[1]} columns but there are {len(y)} labels")
    rtol = check_positive("rtol", rtol, allow_zero=True)
    if block_size is not None:
        block_size = check_int("block_size", block_size, minimum=1)
    t = w.shape[0]
    if atol is None:
        tol = np.zeros(t)
    else:
        tol = as_float_array("atol", atol, ndim=(0, 1))
        if tol.ndim == 1 and tol.shape[0] != t:
            raise ValueError(f"atol has {tol.shape[0]} entries but there are {t} test points (weight rows)")
        if np.any(tol < 0):
            raise ValueError("atol must be >= 0")
        tol = np.broadcast_to(tol, (t,)).astype(np.float64)
    if rtol > 0 and t:
        with np.errstate(over="ignore"):
            tol = (tol + rtol * np.abs(w).sum(axis=1)) * (1.0 + 4 * _EPS)  # rounded up
        if not np.all(np.isfinite(tol)):
            raise ValueError("rtol * sum_j |W_ij| overflows for some row; pass the tolerance as atol instead")
    return w, y, K, block_size, tol


def pairwise_costs(weights: ArrayLike, labels: ArrayLike, num_classes: int, *, tie: str = "index", rtol: float = 0.0,
                   atol: ArrayLike | None = None, block_size: int | None = None, sort_device: str = "auto",
                   engine: str = "numba") -> NDArray[np.float64]:
    """P (t, K, K) float64: P[i, a, b] = fewest flips after which class b beats class a (docs/math.md §3).

    tie="index": b beats a iff s_b > s_a or (s_b == s_a and b < a) (the tie rule);
    tie="attacker": s_b >= s_a already counts (a lower bound under any tie convention).
    0 on the diagonal and where b already beats a; inf where no relabelling makes b beat a.
    Never above the exact value: decisions within the tolerance `rtol * sum_j |W_ij| + atol_i`
    (atol: scalar or (t,), the caller's bound on the weights' error) plus the rounding allowance
    count as covered. num_classes is the task's number of classes (required). Streams over blocks
    of `block_size` test points. sort_device, engine: as in `certify`.
    """
    if tie not in ("index", "attacker"):
        raise ValueError(f"tie must be 'index' or 'attacker', got {tie!r}")
    w, y, K, block_size, tol = _validate(weights, labels, num_classes, block_size, rtol, atol)
    res = _run(w, _Layout(y, K), "pairs", tie, tol, block_size, sort_device, engine)
    return res["P"]


@overload
def certify(weights: ArrayLike, labels: ArrayLike, num_classes: int, *, block_size: int | None = ...,
            rtol: float = ..., atol: ArrayLike | None = ..., class_bounds: bool = ..., sort_device: str = ...,
            engine: str = ..., pairwise: None = ...) -> Certificate: ...


@overload
def certify(weights: ArrayLike, labels: ArrayLike, num_classes: int, *, block_size: int | None = ...,
            rtol: float = ..., atol: ArrayLike | None = ..., class_bounds: bool = ..., sort_device: str = ...,
            engine: str = ..., pairwise: str) -> tuple[Certificate, NDArray[np.float64]]: ...


@overload
def certify(weights: ArrayLike, labels: ArrayLike, num_classes: int, *, block_size: int | None = ...,
            rtol: float = ..., atol: ArrayLike | None = ..., class_bounds: bool = ..., sort_device: str = ...,
            engine: str = ..., pairwise: str | None = ...) -> Certificate | tuple[Certificate, NDArray[np.float64]]: ...


def certify(weights: ArrayLike, labels: ArrayLike, num_classes: int, *, block_size: int | None = None,
            rtol: float = 0.0, atol: ArrayLike | None = None, class_bounds: bool = True, sort_device: str = "auto",
            engine: str = "numba", pairwise: str | None = None
            ) -> Certificate | tuple[Certificate, NDArray[np.float64]]:
    """ScaLabelCert certificate for a label-linear model with label weights W (t, n) and labels y (n,).

    num_classes: the task's number of classes K (required: the attacker may relabel to any class of
    the task, also one absent from y). radius (docs/math.md §3) = min over b != p of P(p, b) - 1
    (n when no attack exists), exact where `radius_exact` (every row when the tolerance is 0).
    Tolerance per row `rtol * sum_j |W_ij| + atol_i` (default 0; atol scalar or (t,)): the caller's
    bound on |sum_j (W_ij - W*_ij) z_j| for z in {-1, 0, 1}^n, i.e. on sum_j |W_ij - W*_ij| between
    the given weights and the model's exact ones (learners compute it: `model.certify` passes it);
    every bound then holds for the exact model. With class_bounds (default) also per-class bounds
    cost_lower <= A_c <= cost_upper: the lower bound is the largest of max_j P(j, c) and Lagrangian
    combinations of the pairwise constraints, the upper bound the size of a verified attack (exact
    for K = 2 with zero tolerance). Streams over blocks of `block_size` test points (default: about
    100 MB of working memory); memory does not grow with t. sort_device: where the per-point sort
    (the dominant cost) runs: "auto" (JAX on a GPU when one is visible, else numpy), "numpy", or
    "jax" (JAX's default device); results are identical. engine: "numba" (default, the compiled
    row kernel) or "numpy" (the vectorised reference); the results are identical. pairwise
    ("index" or "attacker", needs class_bounds): also return `pairwise_costs(..., tie=pairwise)`
    with the same tolerance, taken from the same pass; the result is then (Certificate, P (t, K, K)).
    """
    w, y, K, block_size, tol = _validate(weights, labels, num_classes, block_size, rtol, atol)
    if pairwise is not None and (pairwise not in ("index", "attacker") or not class_bounds):
        raise ValueError(f"pairwise must be None, 'index' or 'attacker' (with class_bounds=True), got {pairwise!r}")
    mode = "full" if class_bounds else "radius"
    res = _run(w, _Layout(y, K), mode, "index", tol, block_size, sort_device, engine, pairwise)
    t = w.shape[0]
    pred = res["prediction"]
    if class_bounds:
        lower, upper = res["lower"], res["upper"]
    else:
        lower = res["own"]
        upper = np.where(np.arange(K)[None, :] == pred[:, None], 0.0, np.inf) if t else np.zeros((0, K))
    class_exact = lower == upper
    radius_exact = res["radius_exact"]
    cert = Certificate(prediction=pred, radius=res["radius"], cost_lower=lower, cost_upper=upper,
                       class_exact=class_exact, exact=class_exact.all(axis=1) & radius_exact,
                       radius_exact=radius_exact, weights=w, labels=y, num_classes=K, tolerance=tol,
                       class_bounds=bool(class_bounds))
    return cert if pairwise is None else (cert, res["P"])


def label_linear_prediction(weights: ArrayLike, labels: ArrayLike, num_classes: int, *,
                            block_size: int | None = None) -> NDArray[np.int64]:
    """The prediction (t,) int64 of a label-linear model: argmax_k sum_j W_ij [y_j = k] in exact
    arithmetic, ties to the smaller index (docs/math.md §2).

    Scores are computed in float64 (W @ onehot(y)); rows whose top two scores are within the
    rounding bound (2.02 n eps sum_j |W_ij|, or not finite) are recomputed exactly. Equals
    `certify(...).prediction` and the learners' `predict` in the label-linear regime.
    """
    w, y, K, block_size, _ = _validate(weights, labels, num_classes, block_size)
    t, n = w.shape
    out = np.zeros(t, np.int64)
    if t == 0 or n == 0:
        return out
    Y = (y[:, None] == np.arange(K)[None, :]).astype(np.float64)
    step = block_size or max(1, (64 * 2**20) // (8 * n))
    for start in range(0, t, step):
        wb = w[start:start + step]
        with np.errstate(over="ignore", invalid="ignore"):
            s = wb @ Y
            bound = 2.02 * (n + 2) * _EPS * np.abs(wb).sum(axis=1)
            pred = np.argmax(s, axis=1)
            rows = np.arange(len(wb))
            second = s.copy()
            second[rows, pred] = -np.inf
            safe = (s[rows, pred] - second.max(axis=1)) > 2.0 * bound  # False for NaN / inf
        for i in np.flatnonzero(~safe).tolist():
            pred[i] = _ExactRow(wb[i], y, K, 0.0).prediction
        out[start:start + len(wb)] = pred
    return out


def certify_model(model: Any, K_test_train: ArrayLike, **kwargs: Any
                  ) -> Certificate | tuple[Certificate, NDArray[np.float64]]:
    """Certificate of a fitted label-linear learner on kernel rows K(test, train): the learner's label
    weights and their error bound (`model.label_weights(K, return_error=True)`, passed as atol); keyword
    arguments as for `certify` (with `pairwise`, the result is (Certificate, P))."""
    W, err = model.label_weights(K_test_train, return_error=True)
    atol = err if kwargs.get("atol") is None else err + np.asarray(kwargs["atol"], dtype=np.float64)
    kwargs["atol"] = atol
    return certify(W, model.labels_, model.num_classes_, **kwargs)


__all__ = ["Certificate", "certify", "certify_model", "label_linear_prediction", "pairwise_costs"]
