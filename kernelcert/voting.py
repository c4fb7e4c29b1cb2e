"""Shared pieces of every aggregation certificate (docs/math.md §4-§5): votes, results, knapsack.

Used by `kernelcert.ensemble` (DPA, EnsembleCert) and `kernelcert.roe` (run-off election, FA);
imports nothing from kernelcert but `_validation`.

- `NO_ATTACK`: THE "no attack" convention of the aggregation layer. A radius equal to it means no
  relabelling at all changes the prediction; internally an attack size >= NO_ATTACK means "this
  kind of attack is impossible" (`radius_from_attack`, `radius_from_cost`).
- `AggregateResult`: the one result type of every aggregation certificate.
- `check_votes`, `vote_counts`, `plurality` (ties to the smaller class index), `row_blocks`.
- `argmax_votes`, `argmax_counts` (and their compiled core `argmax_pass`): votes and vote counts (or the counts alone) straight from float
  scores (t, M, K), one compiled pass that reads each score once (no float64 copy, no separate
  validation pass), vectorised over the models for K <= 16. `plurality_margin`: the plurality
  winner and the DPA radius from vote counts, compiled; `argmax_plurality_margin`: both from the
  scores in one compiled call (`ensemble.dpa_from_scores`): for float32 scores with 8 <= K <= 16 a
  C pass built at install time (`kernelcert/_argmax_c.c`, `NATIVE_DPA`; no numba initialisation or
  cache load on a first call), otherwise the numba kernel (also the C pass's oracle in the tests).
- `min_cost_gain12`: the multiple-choice knapsack with gains {0, 1, 2} (EnsembleCert and the
  white-box run-off election), solved exactly by a sort-based method; `knapsack_dp`, the general
  dynamic programme (any positive integer gains), serves as its oracle and for the other gains.
- `overtake_gains`: the per-partition options of "class c overtakes class a in the plurality".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt
from numba import njit

from ._validation import check_int

_argmax_c: ModuleType | None
try:  # the compiled DPA pass (kernelcert/_argmax_c.c, an optional extension built by `pip install`)
    from . import _argmax_c
except ImportError:  # not built (e.g. a checkout without `make install`): the numba kernel runs instead
    _argmax_c = None

__all__ = [
    "NO_ATTACK", "AggregateResult", "check_num_classes", "check_votes", "vote_counts", "argmax_votes", "argmax_counts",
    "argmax_pass", "scores_for_argmax", "SPECIALISED_MAX_CLASSES", "plurality", "plurality_margin",
    "argmax_plurality_margin", "NATIVE_DPA",
    "row_blocks",
    "radius_from_attack", "radius_from_cost", "min_cost_gain12", "knapsack_dp", "overtake_gains",
]

NO_ATTACK = np.iinfo(np.int64).max // 4  # radius when no attack exists at all (unbounded)
BLOCK_BYTES = 32 * 2**20  # working memory per block of test points


@dataclass(frozen=True)
class AggregateResult:
    """Aggregated certificate over t test points.

    prediction (t,) int64 ensemble prediction; radius (t,) int64 certified radius: a sound lower
    bound, exact where `exact` says so. Optional (None when the method does not provide them):
    radius_upper (t,) int64 an upper bound backed by an attack (or by upper-bound costs);
    exact (t,) bool, True where radius == the true radius is proven (e.g. radius == radius_upper);
    plan (t, N_p) int64 target class per partition of a cheapest attack (-1 = untouched);
    target (t,) int64 the class that attack makes beat the prediction (-1 = no attack).
    NO_ATTACK in a radius: no relabelling at all changes the prediction.
    """

    prediction: np.ndarray
    radius: np.ndarray
    plan: np.ndarray | None = None
    target: np.ndarray | None = None
    radius_upper: np.ndarray | None = None
    exact: np.ndarray | None = None


# --------------------------------------------------------------------------- votes
def check_num_classes(num_classes: object) -> int:
    return check_int("num_classes", num_classes, minimum=2)


def check_votes(votes: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """votes (t, N_p) integer class indices in 0..K-1 -> int64; ValueError naming the problem."""
    v = np.asarray(votes)
    if v.ndim != 2:
        raise ValueError(f"votes must have shape (t, N_p), got {v.shape}")
    if v.shape[1] == 0:
        raise ValueError("votes must contain at least one base model (N_p >= 1)")
    if v.dtype == bool or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"votes must be integer class indices, got dtype {v.dtype}")
    K = check_num_classes(num_classes)
    if v.size and (v.min() < 0 or v.max() >= K):
        raise ValueError(f"votes must be in 0..{K - 1}, found values in {v.min()}..{v.max()}")
    return v.astype(np.int64, copy=False)


def vote_counts(votes: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """Counts (t, K) int64 of each class among the N_p votes (t, N_p) of each test point."""
    v = np.asarray(votes)
    t, N = v.shape
    if N <= 2 * num_classes:  # few models: one comparison per class
        out = np.empty((t, num_classes), np.int64)
        for c in range(num_classes):
            out[:, c] = np.count_nonzero(v == c, axis=1)
        return out
    # one bincount per block of rows, small enough that its temporaries stay in cache
    rows = max(1, 2**18 // N)
    out = np.empty((t, num_classes), np.int64)
    offset = num_classes * np.arange(min(rows, t), dtype=np.int64)[:, None]
    for a in range(0, t, rows):
        b = min(t, a + rows)
        flat = (v[a:b] + offset[:b - a]).ravel()
        out[a:b] = np.bincount(flat, minlength=(b - a) * num_classes).reshape(b - a, num_classes)
    return out


SPECIALISED_MAX_CLASSES = 16  # up to this K the argmax pass is compiled for the exact K (see `argmax_pass`)


ARGMAX_CHUNK_MODELS = 4096  # models per chunk of the argmax pass when the votes are not kept (see `argmax_pass`)


@njit(cache=True, nogil=True, inline="always")
def argmax_pass(s, K, votes, counts):  # pragma: no cover - compiled (numba); tested through argmax_votes
    """votes = first maximiser of each s[i, m, :] (s C-contiguous (t, M, K)), counts[i, c] += 1 per
    vote (counts start at zero); returns True if a score is NaN or infinite.

    votes is (t, M) (all votes kept) or a buffer (1, R * M) reused for chunks of R test points. The
    models of consecutive test points are contiguous, so each chunk is one loop over its R * M
    models (no per-test-point loop tail), branch-free (selects) over each model's K scores with the
    finiteness check in the same loop: with K a compile-time constant, LLVM vectorises it over
    models (8 per AVX2 register). The votes are then counted per test point in 4 counter banks
    (consecutive votes for one class do not wait on each other)."""
    t, M = s.shape[0], s.shape[1]
    flat = s.reshape(t * M * K)
    keep = votes.shape[0] == t and votes.shape[1] == M
    rows = t if keep else max(1, votes.shape[1] // M)
    vflat = votes.reshape(votes.shape[0] * votes.shape[1])
    bad = False
    bank = np.zeros((4, K), np.int64)
    for r0 in range(0, t, rows):
        r1 = min(t, r0 + rows)
        n = (r1 - r0) * M  # models in the chunk
        chunk = flat[r0 * M * K:r1 * M * K]
        vc = vflat[r0 * M:r1 * M] if keep else vflat[:n]
        for j in range(n):
            b = j * K
            best = chunk[b]
            arg = 0
            nonfinite = not (best - best == 0)  # NaN or +-inf
            for c in range(1, K):
                x = chunk[b + c]
                gt = x > best
                arg = c if gt else arg
                best = x if gt else best
                nonfinite |= not (x - x == 0)
            bad |= nonfinite
            vc[j] = arg
        for i in range(r1 - r0):
            bank[:] = 0
            vr = vc[i * M:(i + 1) * M]
            m = 0
            while m + 4 <= M:
                bank[0, vr[m]] += 1
                bank[1, vr[m + 1]] += 1
                bank[2, vr[m + 2]] += 1
                bank[3, vr[m + 3]] += 1
                m += 4
            for m in range(m, M):
                bank[0, vr[m]] += 1
            for c in range(K):
                counts[r0 + i, c] += bank[0, c] + bank[1, c] + bank[2, c] + bank[3, c]
    return bad


def _vote_buffer(t: int, M: int) -> np.ndarray:
    """The reusable vote buffer (1, R * M) int32 of `argmax_pass` when the votes are not kept."""
    rows = max(1, min(t, ARGMAX_CHUNK_MODELS // M))
    return np.empty((1, rows * M), np.int32)


@njit(cache=True, nogil=True)
def _argmax_count_fixed(s, classes, votes, counts):  # pragma: no cover - compiled (numba)
    """`argmax_pass` compiled per K = len(classes) (a tuple of K zeros: its length is part of the type)."""
    return argmax_pass(s, len(classes), votes, counts)


@njit(cache=True, nogil=True)
def _argmax_count_kernel(s, votes, counts):  # pragma: no cover - compiled (numba)
    """`argmax_pass` for any K (read from the array; not vectorised over models)."""
    return argmax_pass(s, s.shape[2], votes, counts)


def scores_for_argmax(scores: npt.ArrayLike) -> np.ndarray:
    """The input rules of `argmax_votes`: scores (t, M, K) as a C-contiguous native float32/float64 array, without a copy when it already is one."""
    s = np.asarray(scores)
    if s.ndim != 3:
        raise ValueError(f"scores must have shape (t, M, K), got {s.shape}")
    if s.shape[1] < 1 or s.shape[2] < 2:
        raise ValueError(f"scores need at least one model and two classes, got shape {s.shape}")
    if s.dtype.kind != "f" or s.dtype.itemsize not in (4, 8):
        if s.dtype.kind not in "iuf" or s.dtype == bool:
            raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
        s = s.astype(np.float64)
    if not s.dtype.isnative:
        s = s.astype(s.dtype.newbyteorder("="))
    return np.ascontiguousarray(s)


def _argmax_into(s: np.ndarray, votes: np.ndarray, counts: np.ndarray) -> None:
    """Run the compiled argmax pass of `s` (from `scores_for_argmax`) into votes and counts (zeros)."""
    K = s.shape[2]
    if not s.shape[0]:
        return
    bad = (_argmax_count_fixed(s, (0,) * K, votes, counts) if K <= SPECIALISED_MAX_CLASSES
           else _argmax_count_kernel(s, votes, counts))
    if bad:
        raise ValueError("scores contain NaN or infinite values")


def argmax_votes(scores: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Votes and vote counts from base-model scores, in one compiled pass over the scores.

    scores (t, M, K) real (float32 and float64 are read as they are; other dtypes are converted
    to float64 first); memory-mapped arrays are read once, without a copy. Returns votes (t, M)
    int64, the first maximiser of each model's K scores (ties to the smaller class index, as
    `numpy.argmax`), and counts (t, K) int64, the number of votes per class. The finiteness check
    is part of the same pass. ValueError if the shape is not (t, M, K) with M >= 1 and K >= 2, or
    if a score is NaN or infinite.
    """
    s = scores_for_argmax(scores)
    votes = np.empty(s.shape[:2], np.int64)
    counts = np.zeros((s.shape[0], s.shape[2]), np.int64)
    _argmax_into(s, votes, counts)
    return votes, counts


def argmax_counts(scores: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The vote counts (t, K) int64 of `argmax_votes` alone: the votes are never stored (one row of
    M votes is reused), so the pass only reads the scores. Same input rules and errors."""
    s = scores_for_argmax(scores)
    counts = np.zeros((s.shape[0], s.shape[2]), np.int64)
    _argmax_into(s, _vote_buffer(s.shape[0], s.shape[1]), counts)
    return counts


@njit(cache=True, nogil=True, inline="always")
def _plurality_margin_pass(n, prediction, radius):  # pragma: no cover - compiled (numba); tested through dpa
    """prediction[i] = p = first maximiser of n[i] (plurality, ties to the smaller index) and
    radius[i] = (n_p - max_{c != p}(n_c + [c < p])) // 2, the DPA radius (>= 0: n_c < n_p for c < p)."""
    t, K = n.shape
    for i in range(t):
        p = 0
        top = n[i, 0]
        for c in range(1, K):
            if n[i, c] > top:
                p = c
                top = n[i, c]
        rival = np.iinfo(np.int64).min
        for c in range(K):
            if c != p:
                rival = max(rival, n[i, c] + (1 if c < p else 0))
        prediction[i] = p
        radius[i] = (top - rival) // 2


@njit(cache=True, nogil=True)
def _plurality_margin_kernel(n, prediction, radius):  # pragma: no cover - compiled (numba)
    _plurality_margin_pass(n, prediction, radius)


@njit(cache=True, nogil=True)
def _argmax_margin_fixed(s, classes, buf, counts, prediction, radius):  # pragma: no cover - compiled (numba)
    """`argmax_pass` compiled for K = len(classes), then `_plurality_margin_pass`: one compiled call
    (one load from numba's on-disk cache on a first call). True if a score is NaN or infinite."""
    if argmax_pass(s, len(classes), buf, counts):
        return True
    _plurality_margin_pass(counts, prediction, radius)
    return False


@njit(cache=True, nogil=True)
def _argmax_margin_any(s, buf, counts, prediction, radius):  # pragma: no cover - compiled (numba)
    """`_argmax_margin_fixed` for any K (read from the array)."""
    if argmax_pass(s, s.shape[2], buf, counts):
        return True
    _plurality_margin_pass(counts, prediction, radius)
    return False


def plurality_margin(counts: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(prediction, radius) (t,) int64 from vote counts (t, K >= 2), non-negative integers (not
    checked): the plurality winner p (ties to the smaller index) and the DPA radius
    (n_p - max_{c != p}(n_c + [c < p])) // 2 (docs/math.md §4), in one compiled pass."""
    n = np.ascontiguousarray(counts, dtype=np.int64)
    prediction = np.empty(len(n), np.int64)
    radius = np.empty(len(n), np.int64)
    _plurality_margin_kernel(n, prediction, radius)
    return prediction, radius


NATIVE_DPA: bool = bool(_argmax_c is not None and _argmax_c.AVAILABLE)
"""True when `argmax_plurality_margin` runs the C pass (kernelcert/_argmax_c.c: built at install time,
x86-64 with AVX2 and FMA) for float32 scores with 8 <= K <= 16; otherwise (and for every other
input) it runs the numba kernel, which needs numba's one-time initialisation and a load from
numba's cache on the first call of a process."""


def _native_dpa_applies(s: np.ndarray) -> bool:
    """Whether the C pass handles `s` (from `scores_for_argmax`): float32, 8 <= K <= 16, M < 2**31 (its
    int32 counts), `NATIVE_DPA`."""
    return NATIVE_DPA and s.dtype == np.float32 and 8 <= s.shape[2] <= SPECIALISED_MAX_CLASSES and s.shape[1] < 2**31


def _argmax_margin_into(s: np.ndarray, counts: np.ndarray | None, prediction: np.ndarray, radius: np.ndarray,
                        native: bool) -> bool:
    """The fused DPA pass over s (t >= 1, M, K) from `scores_for_argmax` into counts (t, K) int64
    (C-contiguous, overwritten; int32, uint16 or uint8 for the C pass only; None: the C pass keeps
    them per row only), prediction and radius (t,) int64; True if a score is NaN or infinite.
    native: the C pass (`_native_dpa_applies(s)` must hold), else the numba kernel (its oracle in
    the tests, with numpy's argmax)."""
    if native:
        assert _argmax_c is not None
        t, M, K = s.shape
        return bool(_argmax_c.argmax_margin_f32(s, t, M, K, counts, prediction, radius))
    if counts is None:
        counts = np.empty((s.shape[0], s.shape[2]), np.int64)
    counts[:] = 0
    buf = _vote_buffer(s.shape[0], s.shape[1])
    if s.shape[2] <= SPECIALISED_MAX_CLASSES:
        return bool(_argmax_margin_fixed(s, (0,) * s.shape[2], buf, counts, prediction, radius))
    return bool(_argmax_margin_any(s, buf, counts, prediction, radius))


COUNT_DTYPES = (np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.uint16), np.dtype(np.uint8))
"""dtypes `argmax_plurality_margin` writes vote counts in (a smaller one: fewer pages to allocate)."""


def argmax_plurality_margin(scores: npt.ArrayLike, counts_out: npt.NDArray[np.integer] | None = None
                            ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`plurality_margin` of `argmax_counts(scores)` in one compiled call: the scores are read
    once, the votes never stored. Same input rules and errors as `argmax_votes`. counts_out: a
    C-contiguous array (t, K) of int64, int32, uint16 or uint8 (`COUNT_DTYPES`; the number of models M
    must fit in it) that receives the vote counts. float32 scores with 8 <= K <= 16 run the C pass
    where `NATIVE_DPA` (no numba initialisation or cache load; the same votes, counts, predictions
    and radii as the numba kernel, bit for bit)."""
    s = scores_for_argmax(scores)
    t, M, K = s.shape
    native = _native_dpa_applies(s)
    counts: np.ndarray | None
    if counts_out is None:  # the C pass needs no (t, K) array (its pages would cost a fifth of the pass)
        counts = None if native else np.empty((t, K), np.int64)
    elif (counts_out.shape != (t, K) or counts_out.dtype not in COUNT_DTYPES or not counts_out.flags.c_contiguous
          or M > np.iinfo(counts_out.dtype).max):
        raise ValueError(f"counts_out must be a C-contiguous array of shape {(t, K)} and dtype int64, int32, uint16 "
                         f"or uint8 that holds M = {M}, got {counts_out.dtype} {counts_out.shape}")
    else:
        counts = counts_out if native or counts_out.dtype == np.int64 else np.empty((t, K), np.int64)
    prediction = np.empty(t, np.int64)
    radius = np.empty(t, np.int64)
    if t and _argmax_margin_into(s, counts, prediction, radius, native):
        raise ValueError("scores contain NaN or infinite values")
    if counts_out is not None and counts is not None and counts is not counts_out:  # numba counts in int64
        counts_out[...] = counts
    return prediction, radius


def plurality(counts: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """Plurality winner (t,) of vote counts (t, K); ties go to the smaller class index."""
    return np.argmax(counts, axis=1)  # argmax returns the first maximum


def row_blocks(t: int, row_bytes: int, block_size: int | None = None) -> Iterator[slice]:
    """Slices over t test points; by default each block's working set (row_bytes per point) stays
    near 32 MiB. block_size overrides the number of points per block."""
    if block_size is None:
        block_size = max(1, BLOCK_BYTES // max(1, int(row_bytes)))
    block_size = check_int("block_size", block_size, minimum=1)
    for start in range(0, t, block_size):
        yield slice(start, min(start + block_size, t))


def radius_from_attack(att: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Integer attack sizes (>= NO_ATTACK = impossible) -> radius = attack - 1, or NO_ATTACK."""
    att = np.asarray(att)
    return np.where(att >= NO_ATTACK, NO_ATTACK, att - 1).astype(np.int64)


def radius_from_cost(cost: npt.ArrayLike, max_radius: int | None = None) -> npt.NDArray[np.int64]:
    """Attack costs (float, integer-valued below 2**53, inf = none) -> radius int64 = cost - 1, or
    NO_ATTACK; capped at max_radius if given."""
    cost = np.asarray(cost)
    fin = np.isfinite(cost)
    radius = np.full(cost.shape, NO_ATTACK, np.int64)
    radius[fin] = cost[fin].astype(np.int64) - 1
    if max_radius is not None:
        radius = np.minimum(radius, check_int("max_radius", max_radius, minimum=0))
    return radius


# --------------------------------------------------------------------------- knapsack
def overtake_gains(votes: np.ndarray, cost_to_c: np.ndarray, c: int, votes_a: np.ndarray,
                   cheapest_change_a: np.ndarray) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-partition options of "class c overtakes class a" (docs/math.md §4) for one class c.

    votes (B, N) base votes; cost_to_c (B, N) flips that make each model vote c; votes_a (B, N)
    bool, the model votes a; cheapest_change_a (B, N) the cheapest vote change of such a model.
    A model voting a gains 2 (moves to c) or 1 (moves anywhere else, cheapest); any other model
    not voting c gains 1 by moving to c. Returns (gain1, gain2) (B, N) float64 (inf = no option).
    """
    gain1 = np.where(votes_a, cheapest_change_a, np.where(votes == c, np.inf, cost_to_c))
    gain2 = np.where(votes_a, cost_to_c, np.inf)
    return gain1, gain2


def knapsack_dp(options: list[tuple[int, npt.ArrayLike]], need: npt.ArrayLike, keep_choices: bool = False
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8] | None]:
    """Dynamic programme for the multiple-choice knapsack with any positive integer gains.

    options: list of (gain >= 1, cost (B, N)) with non-negative costs (inf = not available); each
    of the N partitions takes at most one option (or none: gain 0, cost 0). Minimises total cost
    subject to total gain >= need (B,). f[g] = min cost of total gain >= g over the partitions seen
    so far (g = 0..max(need); overshoot is absorbed); O(N * len(options) * max(need)) per row.
    Returns (cost (B,) float64, inf = infeasible; choice (B, N) int8, the gain taken by each
    partition in an optimal solution (0 = untouched), or None).
    """
    need = np.asarray(need, dtype=np.int64)
    costs = [(int(g), np.asarray(c, dtype=np.float64)) for g, c in options]
    B, N = costs[0][1].shape
    G = int(need.max()) if B else 0
    if G <= 0:
        return np.zeros(B), (np.zeros((B, N), np.int8) if keep_choices else None)
    f = np.full((B, G + 1), np.inf)
    f[:, 0] = 0.0
    tables = np.empty((N, B, G + 1), np.int8) if keep_choices else None
    shifted = np.empty_like(f)
    for i in range(N):
        new = f.copy()
        pick = np.zeros((B, G + 1), np.int8) if keep_choices else None
        for gain, cost in costs:
            # f[max(g - gain, 0)] as a shifted view: the first `gain` slots come from f[0] = 0
            k = min(gain, G + 1)
            shifted[:, :k] = 0.0
            shifted[:, k:] = f[:, :G + 1 - k]
            shifted += cost[:, i:i + 1]
            if pick is not None:
                better = shifted < new
                pick[better] = gain
            np.minimum(new, shifted, out=new)
        if tables is not None and pick is not None:
            tables[i] = pick
        f = new
    cost = np.where(need <= 0, 0.0, f[np.arange(B), np.clip(need, 0, G)])
    if tables is None:
        return cost, None
    choice = np.zeros((B, N), np.int8)
    g = np.clip(need, 0, G)
    rows = np.arange(B)
    for i in range(N - 1, -1, -1):
        ch = tables[i][rows, g]
        choice[:, i] = ch
        g = np.maximum(g - ch, 0)
    choice[~np.isfinite(cost)] = 0
    return cost, choice


def _knapsack_sorted(gain1, gain2, need, keep_choices: bool = False):
    """Exact sort-based solver of the gains-{1, 2} knapsack (the method of `_knapsack_sorted_numpy`).

    gain1, gain2 (B, N) float64 (>= 0, inf allowed, no NaN), need (B,) integers. The cost alone
    (keep_choices False) comes from one compiled pass over the rows (`_knapsack_sorted_cost_kernel`,
    numba, releases the GIL), bit-identical to `_knapsack_sorted_numpy`'s cost (the same sorted
    sums in the same order); with keep_choices the numpy solver runs (it reconstructs the choice).
    Returns (cost (B,) float64, choice (B, N) int8 or None), like `knapsack_dp`.
    """
    if keep_choices:
        return _knapsack_sorted_numpy(gain1, gain2, need, keep_choices=True)
    a = np.ascontiguousarray(gain1, dtype=np.float64)
    b = np.ascontiguousarray(gain2, dtype=np.float64)
    nd = np.ascontiguousarray(need, dtype=np.int64)
    cost = np.empty(a.shape[0])
    if a.shape[0]:
        _knapsack_sorted_cost_kernel(a, b, nd, cost)
    return cost, None


@njit(cache=True, nogil=True)
def _knapsack_sorted_cost_kernel(a, b, need, cost):  # pragma: no cover - compiled (numba); tested against the numpy form
    """cost[r] = `_knapsack_row` of row r: the optimum of `_knapsack_sorted_numpy` on row r."""
    B, N = a.shape
    cb, ca, units, P, F, e1, sm = _knapsack_work(N)
    for r in range(B):
        cost[r] = _knapsack_row(a[r], b[r], need[r], cb, ca, units, P, F, e1, sm)


@njit(cache=True, nogil=True, inline="always")
def _knapsack_work(N):  # pragma: no cover - compiled (numba)
    """The work buffers of `_knapsack_row` for N partitions (reused from row to row)."""
    return (np.empty(N), np.empty(N), np.empty(2 * N), np.empty(N + 1), np.empty(2 * N + 1), np.empty(N + 1),
            np.empty(N + 1))


@njit(cache=True, nogil=True, inline="always")
def _knapsack_row(a, b, G, cb, ca, units, P, F, e1, sm):  # pragma: no cover - compiled (numba); tested via the kernel
    """The optimum of `_knapsack_sorted_numpy` on one row a, b (N,), need G, computed the same way.

    Concave partitions (b < 2a) in stable b-order give P[k] (sequential prefix sums of their b, as
    numpy's cumsum) and cost_e1[k] = min(P[k+1] + min_{pos <= k} (a - b), P[k] + min_{pos > k} a);
    the finite units of the convex partitions (a, and b - a where b is finite), sorted, give F[m]
    (prefix sums; inf beyond the finite units, as numpy's cumsum over the inf entries). The cost is
    the first minimum of P[k] + F[need - 2k] (k = 0..#concave), then cost_e1[k] + F[need - 2k - 1]
    (k < #concave), indices clipped at 0, in the order of the numpy form's argmin: the same value;
    0.0 where need <= 0. cb .. sm: work buffers (`_knapsack_work`)."""
    inf = np.inf
    N = a.shape[0]
    if G <= 0:
        return 0.0
    nc = 0
    nu = 0
    for i in range(N):
        ai = a[i]
        bi = b[i]
        if bi < 2 * ai:  # concave (b finite: b < 2a <= inf)
            cb[nc] = bi
            ca[nc] = ai
            nc += 1
        else:  # convex: unit items a and b - a (b - a >= a), the infinite ones never count
            if ai < inf:
                units[nu] = ai
                nu += 1
            if bi < inf:
                units[nu] = bi - ai
                nu += 1
    # ---- concave partitions in stable b-order
    P[0] = 0.0
    if nc:
        order = np.argsort(cb[:nc], kind="mergesort")
        P[1] = cb[order[0]]
        for k in range(1, nc):
            P[k + 1] = P[k] + cb[order[k]]
        sm[nc] = inf  # sm[j] = min of a over b-sorted positions >= j
        for j in range(nc - 1, -1, -1):
            sm[j] = min(sm[j + 1], ca[order[j]])
        pm = inf  # min of a - b over positions <= k
        for k in range(nc):
            o = order[k]
            pm = min(pm, ca[o] - cb[o])
            e1[k] = min(P[k + 1] + pm, P[k] + sm[k + 1])
    # ---- convex units: F[m] = sum of the m cheapest, needed up to m = min(G, nu)
    top = min(G, nu)
    F[0] = 0.0
    if top:
        us = np.sort(units[:nu]) if top == nu else np.sort(np.partition(units[:nu], top - 1)[:top])
        F[1] = us[0]
        for m in range(1, top):
            F[m + 1] = F[m] + us[m]
    best = inf
    for e in range(2):
        for k in range(nc + 1 - e):
            m = max(G - 2 * k - e, 0)
            if m > top:
                continue  # F[m] = inf
            v = (P[k] if e == 0 else e1[k]) + F[m]
            if v < best:
                best = v
    return best


def _knapsack_sorted_numpy(gain1, gain2, need, keep_choices: bool = False):
    """Exact sort-based solver of the gains-{1, 2} knapsack, O(N log N) per row, vectorised over rows
    (the numpy form: the choice reconstruction, and the test oracle of `_knapsack_sorted_cost_kernel`).

    With a_i = gain1 and b_i = gain2 (>= 0, inf allowed), call a partition *concave* if
    b_i < 2 a_i and *convex* otherwise.
    - An optimal solution takes at most one concave partition at gain 1: two of them (cost
      a_i + a_j) can be replaced by the one with the smaller b at gain 2 at strictly lower cost,
      since min(b_i, b_j) <= (b_i + b_j) / 2 < a_i + a_j.
    - A convex partition is two independent unit items of costs a_i and b_i - a_i >= a_i, so the
      cheapest m units of all convex partitions are a sorted prefix (the second unit of a
      partition never comes before its first), F(m) = prefix sum.
    - With k concave partitions at gain 2 and none at gain 1 the cheapest are the k smallest b;
      with one more at gain 1 (j), cost = sum of the k smallest b among the others + a_j, i.e.
      min(P(k+1) + min_{pos <= k} (a - b), P(k) + min_{pos > k} a) in b-sorted order.
    Enumerating k and e in {0, 1} with m = max(need - 2k - e, 0) convex units is exhaustive.
    Returns (cost (B,), choice (B, N) int8 in {0, 1, 2} or None), like `knapsack_dp`.
    """
    a = np.asarray(gain1, dtype=np.float64)
    b = np.asarray(gain2, dtype=np.float64)
    need = np.asarray(need, dtype=np.int64)
    B, N = a.shape
    inf = np.inf
    conc = b < 2 * a
    # ---- concave partitions, sorted by b
    bc = np.where(conc, b, inf)
    if keep_choices:
        corder = np.argsort(bc, axis=1, kind="stable")
        bs = np.take_along_axis(bc, corder, axis=1)
    else:
        corder = None
        bs = np.sort(bc, axis=1)
    nconc = conc.sum(axis=1)
    P = np.zeros((B, N + 1))
    np.cumsum(bs, axis=1, out=P[:, 1:])  # P[k] = sum of the k smallest concave b (inf if k > nconc)
    if nconc.any():
        if corder is None:
            corder = np.argsort(bc, axis=1, kind="stable")
        a_s = np.take_along_axis(np.where(conc, a, inf), corder, axis=1)
        with np.errstate(invalid="ignore"):
            d_s = np.where(np.isfinite(bs), a_s - bs, inf)  # a - b at concave positions, inf elsewhere
        pm = np.full((B, N + 1), inf)
        np.minimum.accumulate(d_s, axis=1, out=pm[:, 1:])  # pm[j] = min over positions < j
        sm = np.full((B, N + 1), inf)
        sm[:, :N] = np.minimum.accumulate(a_s[:, ::-1], axis=1)[:, ::-1]  # sm[j] = min over positions >= j
        c1_in = np.full((B, N + 1), inf)
        c1_in[:, :N] = P[:, 1:] + pm[:, 1:]  # j among the first k+1
        c1_out = np.full((B, N + 1), inf)
        c1_out[:, :N] = P[:, :N] + sm[:, 1:]  # j beyond the first k+1 (or the (k+1)-th)
        cost_e1 = np.minimum(c1_in, c1_out)
        ks = np.arange(N + 1)
        cost_e1 = np.where(ks[None, :] < nconc[:, None], cost_e1, inf)
    else:
        cost_e1 = np.full((B, N + 1), inf)
    # ---- convex partitions as unit items
    conv = ~conc
    u1 = np.where(conv, a, inf)
    with np.errstate(invalid="ignore"):
        u2 = np.where(conv & np.isfinite(b), b - a, inf)
    units = np.concatenate([u1, u2], axis=1)
    if keep_choices:
        uorder = np.argsort(units, axis=1, kind="stable")  # stable: a partition's first unit comes first
        us = np.take_along_axis(units, uorder, axis=1)
    else:
        uorder = None
        us = np.sort(units, axis=1)
    F = np.zeros((B, 2 * N + 2))
    np.cumsum(us, axis=1, out=F[:, 1:2 * N + 1])
    F[:, -1] = inf  # m > 2N: impossible
    ks = np.arange(N + 1)[None, :]
    total = np.empty((B, 2, N + 1))
    for e, ce in ((0, P), (1, cost_e1)):
        m = np.clip(need[:, None] - 2 * ks - e, 0, 2 * N + 1)
        total[:, e] = ce + np.take_along_axis(F, m, axis=1)
    flat = total.reshape(B, -1)
    best = np.argmin(flat, axis=1)
    rows = np.arange(B)
    cost = flat[rows, best]
    cost = np.where(need <= 0, 0.0, cost)
    if not keep_choices:
        return cost, None
    # ---- reconstruct an optimal choice
    e_star, k_star = best // (N + 1), best % (N + 1)
    ok = np.isfinite(cost) & (need > 0)
    e_star, k_star = np.where(ok, e_star, 0), np.where(ok, k_star, 0)
    choice = np.zeros((B, N), np.int8)
    pos = np.arange(N)[None, :]
    gain_sorted = np.where(pos < k_star[:, None], 2, 0).astype(np.int8)  # in concave b-order
    if nconc.any():
        e1 = e_star == 1
        kk = np.minimum(k_star, N - 1)
        use_in = e1 & (c1_in[rows, k_star] <= c1_out[rows, k_star])
        j_in = np.argmin(np.where(pos <= kk[:, None], d_s, inf), axis=1)  # first k+1 at gain 2, j at 1
        j_out = np.argmin(np.where(pos >= kk[:, None] + 1, a_s, inf), axis=1)
        gain_sorted[use_in, :] = np.where(pos[0] <= kk[use_in, None], 2, 0)
        j = np.where(use_in, j_in, j_out)
        gain_sorted[rows[e1], j[e1]] = 1
        assert corder is not None  # set above whenever a concave partition exists
        np.put_along_axis(choice, corder, gain_sorted, axis=1)
    m_star = np.where(ok, np.clip(need - 2 * k_star - e_star, 0, 2 * N), 0)
    taken = np.arange(2 * N)[None, :] < m_star[:, None]
    part = np.where(taken, uorder % N, N)  # dummy column N for units not taken
    units_taken = np.bincount((part + (N + 1) * rows[:, None]).ravel(), minlength=B * (N + 1)).reshape(B, N + 1)
    choice = np.where(conv, units_taken[:, :N], choice).astype(np.int8)
    choice[~ok] = 0
    return cost, choice


def _knapsack_dp12(gain1, gain2, need, keep_choices: bool = False):
    return knapsack_dp([(1, gain1), (2, gain2)], need, keep_choices)


KNAPSACK_METHODS = {"sorted": _knapsack_sorted, "dp": _knapsack_dp12}


def knapsack_solver(method: str) -> Callable[..., tuple[np.ndarray, np.ndarray | None]]:
    """The gains-{1, 2} solver (gain1, gain2, need, keep_choices) -> (cost, choice) for a method name."""
    if method == "auto":
        method = "sorted"
    if method not in KNAPSACK_METHODS:
        raise ValueError(f"method must be 'auto', 'dp' or 'sorted', got {method!r}")
    return KNAPSACK_METHODS[method]


def min_cost_gain12(gain1: npt.ArrayLike, gain2: npt.ArrayLike, need: npt.ArrayLike, *, method: str = "auto",
                    return_choice: bool = False
                    ) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Multiple-choice knapsack: minimum total cost with total gain >= need (B,).

    Each of N partitions is left alone (gain 0, cost 0), or gains 1 at cost gain1 (B, N) or 2 at
    cost gain2 (B, N); costs >= 0, inf = option unavailable. Exact. method: "dp" (O(N * max
    need)), "sorted" (O(N log N)), "auto" = "sorted". Returns cost (B,) float (inf = infeasible)
    and, with return_choice, choice (B, N) int8 in {0, 1, 2} of an optimal solution.
    """
    g1 = np.asarray(gain1, dtype=np.float64)
    g2 = np.asarray(gain2, dtype=np.float64)
    nd = np.asarray(need)
    if g1.ndim != 2 or g1.shape != g2.shape:
        raise ValueError(f"gain1 and gain2 must have the same shape (B, N), got {g1.shape} and {g2.shape}")
    if nd.shape != g1.shape[:1] or not np.issubdtype(nd.dtype, np.integer):
        raise ValueError(f"need must be an integer array of shape {g1.shape[:1]}, got {nd.shape} {nd.dtype}")
    for name, g in (("gain1", g1), ("gain2", g2)):
        if np.isnan(g).any() or (g < 0).any():
            raise ValueError(f"{name} must be non-negative (inf allowed), without NaN")
    cost, choice = knapsack_solver(method)(g1, g2, nd, keep_choices=return_choice)
    return (cost, choice) if return_choice else cost
