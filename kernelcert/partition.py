"""Feature-only partitioners (docs/math.md §4, DPA paper; FA paper): a label flip touches exactly one partition.

No function here takes labels (except `split_dataset`, which only slices them), so relabelling can
never move a sample between partitions. All rules are deterministic.

- `ss_dpa_partition`: SS-DPA, samples sorted lexicographically by feature values, partition =
  sorted index mod N_p (balanced: sizes differ by at most one). The sort is the published DPA
  code's `np.lexsort(pixels.T)`: the LAST feature is the primary key (`primary="last"`, the
  default, reproduces the published partition files); `primary="first"` is the other order.
- `dpa_hash_partition`: DPA, integer pixel sum mod N_p (raw integer pixels required).
- `seeded_hash_partition`: keyed BLAKE2b hash of each row's float64 bytes, mod N_p.
- `fa_groups` / `fa_spread`: Finite Aggregation (FA paper): group ids in [0, k*d), and the
  spread of group h to the d learners (h + s) mod (k*d) for d shifts drawn as the FA code does.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from numpy.typing import ArrayLike

from ._validation import as_float_array, check_index_array, check_int

__all__ = [
    "ss_dpa_partition", "dpa_hash_partition", "seeded_hash_partition", "partition", "RULES",
    "partition_indices", "split_dataset", "fa_groups", "fa_spread", "FASpread", "FA_DEFAULT_SEED", "SS_DPA_PRIMARY", "fa_reach",
]

FA_DEFAULT_SEED = 999999999 + 208  # random.seed of the FA reference code (FA paper)
_EXACT_INT = 2**53  # float64 holds every integer below this exactly


# --------------------------------------------------------------------------- validation
def _rows(x: ArrayLike) -> np.ndarray:
    """x (n, ...) -> rows (n, d): integer input keeps its dtype (no float copy of large pixel arrays);
    real input becomes finite float64 with -0.0 normalised to +0.0 (numerically equal rows must sort
    and hash alike)."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = as_float_array("x", arr)
    if arr.ndim < 2:
        raise ValueError(f"x must have shape (n, ...) with at least one feature axis, got {arr.shape}")
    if len(arr) == 0:
        raise ValueError("x has no samples")
    rows = arr.reshape(len(arr), -1)
    if np.issubdtype(rows.dtype, np.integer) or not np.any(np.signbit(rows) & (rows == 0)):
        return rows  # no -0.0: no float copy of the whole data set
    return rows + 0.0


def _float_blocks(rows: np.ndarray, block: int = 4096) -> Iterator[np.ndarray]:
    """Row blocks as float64 (the representation every rule hashes / sorts on)."""
    for start in range(0, len(rows), block):
        yield rows[start:start + block].astype(np.float64)


def _num_parts(num_partitions: int, n: int, name: str = "num_partitions") -> int:
    k = check_int(name, num_partitions, minimum=1)
    if k > n:
        raise ValueError(f"{name}={k} exceeds the number of training samples ({n}); some partitions would be empty")
    return k


def _check_nonempty(assign: np.ndarray, num_partitions: int, rule: str) -> np.ndarray:
    sizes = np.bincount(assign, minlength=num_partitions)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise ValueError(f"{rule}: {len(empty)} of {num_partitions} partitions would be empty (partitions {shown}); "
                         "use fewer partitions or another rule")
    return assign


# --------------------------------------------------------------------------- group-id rules (no emptiness check)
_PIXEL_SCALES = (1.0, 255.0, 16.0)  # integer values, and the loaders' 8-bit and 4-bit pixel scales (x / max_value)


def _pixel_codes(rows: np.ndarray, lo: float, hi: float, block: int = 4096) -> np.ndarray | None:
    """uint8 codes k with rows == k / s exactly, for the first scale s of `_PIXEL_SCALES` that fits every entry
    (k in 0..255), else None. k -> k / s is strictly increasing, so the codes order the rows exactly as
    their values do: sorting 1-byte codes instead of 8-byte keys gives the same SS-DPA assignment."""
    if not lo >= 0:
        return None
    for scale in _PIXEL_SCALES:
        if not hi * scale <= 255:
            continue
        codes = np.empty(rows.shape, np.uint8)
        for start in range(0, len(rows), block):
            part = rows[start:start + block]
            k = np.rint(part * scale)
            if not np.array_equal(k / scale, part):
                break
            codes[start:start + block] = k
        else:
            return codes
    return None


def _lex_keys(rows: np.ndarray) -> np.ndarray:
    """One opaque key per row whose byte order is the lexicographic order of the rows' values
    (first column first; pass the columns reversed for a last-column-first order).

    Raw 8-bit pixels use their bytes directly; other values are mapped to unsigned integers with
    the same order (float64: sign bit flipped for x >= 0, all bits flipped for x < 0; int64: sign
    bit flipped) written big-endian, so comparing keys bytewise compares rows value by value.
    """
    lo, hi = rows.min(), rows.max()
    codes = None if np.issubdtype(rows.dtype, np.integer) else _pixel_codes(rows, lo, hi)
    if np.issubdtype(rows.dtype, np.integer):
        if lo >= 0 and hi <= 255:
            keys = rows.astype(np.uint8, order="C")
        else:
            keys = (rows.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8")
    elif codes is not None:
        keys = codes
    else:
        bits = rows.view(np.uint64)
        neg = (bits >> np.uint64(63)).astype(bool)
        keys = np.where(neg, ~bits, bits | np.uint64(1 << 63)).astype(">u8")
    keys = np.ascontiguousarray(keys)
    return keys.view(np.dtype((np.void, keys.dtype.itemsize * rows.shape[1]))).ravel()


SS_DPA_PRIMARY = ("last", "first")


def _ss_dpa_ids(rows: np.ndarray, m: int, on_duplicates: str, primary: str = "last") -> np.ndarray:
    if on_duplicates not in ("stable", "error"):
        raise ValueError(f"on_duplicates must be 'stable' or 'error', got {on_duplicates!r}")
    if primary not in SS_DPA_PRIMARY:
        raise ValueError(f"primary must be 'last' (the published DPA order) or 'first', got {primary!r}")
    # np.lexsort(rows.T) of the DPA code compares the last column first: the same order as a
    # first-column-first comparison of the column-reversed rows (a view; `_lex_keys` copies once)
    keys = _lex_keys(rows[:, ::-1] if primary == "last" else rows)
    order = np.argsort(keys, kind="stable")  # stable: duplicated rows keep their original index order
    if on_duplicates == "error" and len(rows) > 1:
        srt = keys[order]
        dup = np.flatnonzero(srt[1:] == srt[:-1])
        if len(dup):
            i, j = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise ValueError(f"SS-DPA: {len(dup)} duplicated training samples (e.g. rows {i} and {j}); the reference "
                             "implementation aborts here; use on_duplicates='stable' to order them by index")
    ids = np.empty(len(rows), np.int64)
    ids[order] = np.arange(len(rows)) % m
    return ids


def _dpa_hash_ids(rows: np.ndarray, m: int) -> np.ndarray:
    if np.issubdtype(rows.dtype, np.integer):
        if rows.dtype == np.uint64 and rows.max() >= 2**63:
            raise ValueError("dpa_hash: feature values too large for an exact int64 pixel sum")
        return np.mod(rows.sum(axis=1, dtype=np.int64), m)
    if np.any(rows != np.floor(rows)) or np.any(np.abs(rows) >= _EXACT_INT):
        raise ValueError("dpa_hash needs integer-valued features (raw 0..255 pixels: load the data with scale=False, "
                         "or use the 'ss_dpa' / 'seeded_hash' rules for real-valued features)")
    return np.mod(rows.astype(np.int64).sum(axis=1), m)


def _seeded_hash_ids(rows: np.ndarray, m: int, seed: int) -> np.ndarray:
    seed = check_int("seed", seed, minimum=-(2**63), maximum=2**63 - 1)
    key = seed.to_bytes(8, "little", signed=True)
    h = np.fromiter((int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8, key=key).digest(), "little")
                     for blk in _float_blocks(rows) for r in blk + 0.0), dtype=np.uint64, count=len(rows))
    return (h % np.uint64(m)).astype(np.int64)


# --------------------------------------------------------------------------- public partitioners
def ss_dpa_partition(x: ArrayLike, num_partitions: int, on_duplicates: str = "stable", primary: str = "last") -> np.ndarray:
    """SS-DPA rule: assignment (n,) int64 = (index in the lexicographic order of the rows) mod N_p.

    x (n, ...) features only, flattened row-major to (n, d) (the DPA code flattens channel-first
    (C, H, W) tensors: pass images in that layout to reproduce its files). Rows are compared value
    by value. primary="last" (default): the last feature is the primary key, exactly the published
    SS-DPA code's `np.lexsort(pixels.T)`, so its partition files are reproduced; primary="first":
    the first feature is the primary key (a different, equally valid assignment). Integer data
    (e.g. uint8 pixels) is sorted on its own bytes, without a float copy; an order-preserving map
    of the values (such as pixels / 255) gives the same assignment. Duplicated rows are ordered
    by their original index ("stable", as np.lexsort does) or rejected ("error", as the reference
    implementation does). Balanced: partition sizes differ by at most one.
    """
    rows = _rows(x)
    return _ss_dpa_ids(rows, _num_parts(num_partitions, len(rows)), on_duplicates, primary)


def dpa_hash_partition(x: ArrayLike, num_partitions: int) -> np.ndarray:
    """DPA rule: assignment (n,) int64 = (sum of the integer pixel values) mod N_p.

    Needs integer-valued features (raw 0..255 pixels, e.g. loaders with scale=False); ValueError
    otherwise, and when a partition would be empty.
    """
    rows = _rows(x)
    k = _num_parts(num_partitions, len(rows))
    return _check_nonempty(_dpa_hash_ids(rows, k), k, "dpa_hash")


def seeded_hash_partition(x: ArrayLike, num_partitions: int, seed: int = 0) -> np.ndarray:
    """Assignment (n,) int64 = keyed BLAKE2b-64 of the row's float64 bytes (key = seed) mod N_p.

    A sample's partition depends on its own features only; ValueError when a partition is empty.
    """
    rows = _rows(x)
    k = _num_parts(num_partitions, len(rows))
    return _check_nonempty(_seeded_hash_ids(rows, k, seed), k, "seeded_hash")


RULES = {"ss_dpa": ss_dpa_partition, "dpa_hash": dpa_hash_partition, "seeded_hash": seeded_hash_partition}


def partition(x: ArrayLike, num_partitions: int, rule: str = "ss_dpa", **kwargs: Any) -> np.ndarray:
    """Assignment (n,) in 0..N_p-1 by the named rule ("ss_dpa", "dpa_hash", "seeded_hash")."""
    if rule not in RULES:
        raise ValueError(f"unknown partition rule {rule!r}; known: {', '.join(RULES)}")
    return RULES[rule](x, num_partitions, **kwargs)


def partition_indices(assign: ArrayLike, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Sorted training indices of each partition from an assignment (n,) in 0..N_p-1."""
    a = np.asarray(assign)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"assign must be a 1-D integer array, got shape {a.shape} and dtype {a.dtype}")
    k = check_int("num_partitions", num_partitions, minimum=1)
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"assign must be in 0..{k - 1}")
    order = np.argsort(a, kind="stable")
    bounds = np.searchsorted(a[order], np.arange(k + 1))
    return tuple(order[bounds[i]:bounds[i + 1]] for i in range(k))


def split_dataset(x: ArrayLike, y: ArrayLike, num_partitions: int, rule: str = "ss_dpa", **kwargs: Any
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pipeline-facing split: list of (indices, x_i, y_i) per partition.

    The assignment is computed from x alone; y (n,) is only sliced, so changing labels never
    moves a sample to another partition.
    """
    y = np.asarray(y)
    xa = np.asarray(x)
    if y.shape[:1] != xa.shape[:1]:
        raise ValueError(f"x and y must have the same number of samples, got {xa.shape[:1]} and {y.shape[:1]}")
    assign = partition(xa, num_partitions, rule, **kwargs)
    return [(idx, xa[idx], y[idx]) for idx in partition_indices(assign, num_partitions)]


# --------------------------------------------------------------------------- Finite Aggregation
def fa_groups(x: ArrayLike, k: int, d: int, rule: str = "dpa_hash", seed: int = 0) -> np.ndarray:
    """FA group ids (n,) in [0, k*d) by a feature-only rule (the FA code uses "dpa_hash").

    rule: "dpa_hash" (integer pixel sum mod k*d), "seeded_hash" (keyed hash, key = seed) or
    "ss_dpa". Empty groups are allowed (a learner sees d groups); `fa_spread` checks learners.
    """
    rows = _rows(x)
    k = check_int("k", k, minimum=1)
    d = check_int("d", d, minimum=1)
    m = _num_parts(k * d, len(rows), "k*d")
    if rule == "dpa_hash":
        return _dpa_hash_ids(rows, m)
    if rule == "seeded_hash":
        return _seeded_hash_ids(rows, m, seed)
    if rule == "ss_dpa":
        return _ss_dpa_ids(rows, m, "stable")
    raise ValueError(f"unknown FA group rule {rule!r}; known: dpa_hash, seeded_hash, ss_dpa")


@dataclass(frozen=True)
class FASpread:
    """FA spread: group h goes to the learners (h + s) mod (k*d), s in shifts (d,).

    group_ids (n,) in [0, k*d). `learner_indices(l)` gives the sorted training indices of learner
    l; `learner_sets()` all k*d of them. Each sample reaches exactly d distinct learners.
    """

    k: int
    d: int
    shifts: np.ndarray
    group_ids: np.ndarray
    _order: np.ndarray = field(repr=False)
    _bounds: np.ndarray = field(repr=False)

    @property
    def num_learners(self) -> int:
        return self.k * self.d

    def reach(self) -> np.ndarray:
        """(k*d, d): the learners reached by each group."""
        return fa_reach(self.num_learners, self.shifts)

    def learner_indices(self, learner: int) -> np.ndarray:
        l = check_int("learner", learner, minimum=0, maximum=self.num_learners - 1)
        return self._order[self._bounds[l]:self._bounds[l + 1]].copy()

    def learner_sets(self) -> list[np.ndarray]:
        return [self.learner_indices(l) for l in range(self.num_learners)]


def fa_reach(num_learners: int, shifts: np.ndarray) -> np.ndarray:
    """(H, d) int64: the learners (h + s) mod H reached by group h, for each shift s (H = k*d groups)."""
    return (np.arange(num_learners)[:, None] + np.asarray(shifts)[None, :]) % num_learners


def fa_spread(group_ids: ArrayLike, k: int, d: int, seed: int = FA_DEFAULT_SEED) -> FASpread:
    """Spread FA groups to k*d learners with d distinct shifts drawn exactly as the FA code:
    `random.seed(seed); random.sample(range(k*d), d)` (here on a private random.Random(seed), which
    draws the same numbers without touching the global state). ValueError if a learner is empty.
    """
    k = check_int("k", k, minimum=1)
    d = check_int("d", d, minimum=1)
    m = k * d
    g = check_index_array("group_ids", group_ids, m, f"k*d = {m} groups")
    shifts = np.asarray(random.Random(seed).sample(range(m), d), dtype=np.int64)
    learner = ((g[:, None] + shifts[None, :]) % m).ravel()  # sample j -> d distinct learners
    sample = np.repeat(np.arange(len(g)), d)
    order = np.lexsort((sample, learner))
    bounds = np.searchsorted(learner[order], np.arange(m + 1))
    sizes = np.diff(bounds)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        raise ValueError(f"FA: {len(empty)} of {m} learners would have no training samples (e.g. learner "
                         f"{empty[0]}); use a smaller k*d or another group rule")
    shifts.setflags(write=False)
    g.setflags(write=False)
    return FASpread(k, d, shifts, g, sample[order], bounds)
