"""Feature-only partitioners (SPEC §4): a label flip touches exactly one partition.

None of these functions takes labels, so relabelling can never move a sample between partitions.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ._validation import as_float_array


def _check(x, num_partitions):
    x = as_float_array("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (n, ...), got {x.shape}")
    num_partitions = int(num_partitions)
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    if num_partitions > len(x):
        raise ValueError(f"num_partitions={num_partitions} exceeds the number of training samples ({len(x)})")
    return x.reshape(len(x), -1), num_partitions


def _check_nonempty(assign, num_partitions, rule):
    sizes = np.bincount(assign, minlength=num_partitions)
    if np.any(sizes == 0):
        empty = np.flatnonzero(sizes == 0)
        raise ValueError(f"{rule}: {len(empty)} of {num_partitions} partitions would be empty (e.g. partition "
                         f"{empty[0]}); use fewer partitions or another rule")
    return assign


def ss_dpa_partition(x, num_partitions: int, on_duplicates: str = "stable") -> np.ndarray:
    """SS-DPA rule: sort samples lexicographically by feature values; partition = sorted index mod N_p.

    Duplicated rows are ordered by their original index ("stable") or rejected ("error", as the
    reference implementation does).
    """
    x, k = _check(x, num_partitions)
    order = np.lexsort(x.T[::-1])
    if on_duplicates == "error" and len(x) > 1:
        srt = x[order]
        if np.any(np.all(srt[1:] == srt[:-1], axis=1)):
            raise ValueError("SS-DPA: duplicated training samples found")
    elif on_duplicates not in ("stable", "error"):
        raise ValueError(f"on_duplicates must be 'stable' or 'error', got {on_duplicates!r}")
    assign = np.empty(len(x), np.int64)
    assign[order] = np.arange(len(x)) % k
    return assign


def dpa_hash_partition(x, num_partitions: int) -> np.ndarray:
    """DPA rule: integer pixel sum mod N_p (needs raw integer pixels, e.g. data loaders with scale=False)."""
    x, k = _check(x, num_partitions)
    if np.any(x != np.round(x)):
        raise ValueError("dpa_hash_partition needs integer-valued features (raw 0..255 pixels: load with scale=False)")
    return _check_nonempty((x.sum(axis=1).astype(np.int64) % k), k, "dpa_hash")


def seeded_hash_partition(x, num_partitions: int, seed: int = 0) -> np.ndarray:
    """Keyed BLAKE2b hash of each row's float64 feature bytes, mod N_p."""
    x, k = _check(x, num_partitions)
    key = int(seed).to_bytes(8, "little", signed=True)
    rows = np.ascontiguousarray(x, dtype=np.float64)
    h = np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8, key=key).digest(), "little")
                  for r in rows], dtype=np.uint64)
    return _check_nonempty((h % np.uint64(k)).astype(np.int64), k, "seeded_hash")


RULES = {"ss_dpa": ss_dpa_partition, "dpa_hash": dpa_hash_partition, "seeded_hash": seeded_hash_partition}


def partition(x, num_partitions: int, rule: str = "ss_dpa", **kwargs) -> np.ndarray:
    """Assignment (n,) in 0..N_p-1 by the named rule."""
    if rule not in RULES:
        raise ValueError(f"unknown partition rule {rule!r}; known: {', '.join(RULES)}")
    return RULES[rule](x, num_partitions, **kwargs)
