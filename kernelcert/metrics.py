"""Certified accuracy and median certified robustness (docs/math.md §1, §7.0.2).

Certified accuracy at budget r: the fraction of test points that are correctly classified and
have radius >= r (misclassified points count as radius -1 whatever their radius).
Median certified robustness (MCR), two conventions:
- "radius": the largest r with certified accuracy >= 50% (None when clean accuracy < 50%);
- "anchor": what the DPA / FA / ROE scripts print, `sum(acc >= 0.5)` over r = 0..max radius,
  which is the "radius" value plus one (0 when clean accuracy < 50%).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["certified_accuracy", "certified_accuracy_curve", "median_certified_robustness"]

_MAX_DENSE_BUDGETS = 10**7


def _check(radius: npt.ArrayLike, correct: npt.ArrayLike) -> np.ndarray:
    r = np.asarray(radius)
    ok = np.asarray(correct)
    if r.ndim != 1 or ok.shape != r.shape:
        raise ValueError(f"radius and correct must be 1-D of equal length, got shapes {r.shape} and {ok.shape}")
    if r.size == 0:
        raise ValueError("no test points")
    if r.dtype == bool or not np.issubdtype(r.dtype, np.integer):
        if not np.issubdtype(r.dtype, np.floating) or not np.all(np.isfinite(r)) or np.any(r != np.floor(r)):
            raise ValueError(f"radius must hold integers, got dtype {r.dtype}")
    if ok.dtype != bool:
        if not np.issubdtype(ok.dtype, np.number) or not np.all((ok == 0) | (ok == 1)):
            raise ValueError(f"correct must be a boolean mask, got dtype {ok.dtype}")
    r = r.astype(np.int64)
    if r.min() < -1:
        raise ValueError(f"radius must be >= -1 (-1 = misclassified), found {r.min()}")
    return np.where(ok.astype(bool), r, -1)  # effective radius: -1 for misclassified points


def certified_accuracy(radius: npt.ArrayLike, correct: npt.ArrayLike, budget: npt.ArrayLike) -> float | np.ndarray:
    """Fraction of test points correctly classified with radius >= budget.

    radius (t,) int, correct (t,) bool; budget an int (returns a float) or an array of ints
    (returns an array of the same shape).
    """
    eff = np.sort(_check(radius, correct))
    b = np.asarray(budget)
    if b.dtype == bool or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"budget must be an integer or an integer array, got {budget!r}")
    acc = (len(eff) - np.searchsorted(eff, b, side="left")) / len(eff)
    return float(acc) if b.ndim == 0 else acc


def certified_accuracy_curve(
    radius: npt.ArrayLike, correct: npt.ArrayLike, budgets: npt.ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(budgets (m,) int64, certified accuracy (m,)) -- non-increasing in the budget.

    Default budgets 0..(largest radius of a correctly classified point), at least [0]. Cap
    unbounded radii first (e.g. np.minimum(radius, n_train)) or pass budgets explicitly when
    that range is huge.
    """
    eff = _check(radius, correct)
    if budgets is None:
        top = max(int(eff.max()), 0)
        if top >= _MAX_DENSE_BUDGETS:
            raise ValueError(f"largest radius {top} is too large for dense budgets 0..{top}; cap radii "
                             "(e.g. at the number of training labels) or pass budgets=")
        budgets = np.arange(top + 1)
    b = np.asarray(budgets)
    if b.ndim != 1 or b.dtype == bool or not np.issubdtype(b.dtype, np.integer):
        raise ValueError(f"budgets must be a 1-D integer array, got shape {b.shape} dtype {b.dtype}")
    b = b.astype(np.int64)
    srt = np.sort(eff)
    acc = (len(srt) - np.searchsorted(srt, b, side="left")) / len(srt)
    return b, acc


def median_certified_robustness(radius: npt.ArrayLike, correct: npt.ArrayLike,
                                convention: str = "radius") -> int | None:
    """Median certified robustness (int) under `convention` ("radius" or "anchor", see module doc).

    "radius": the largest r with certified accuracy >= 0.5, None when clean accuracy < 0.5.
    "anchor": that value + 1 (the anchor scripts' printout), 0 when clean accuracy < 0.5.
    """
    if convention not in ("radius", "anchor"):
        raise ValueError(f"convention must be 'radius' or 'anchor', got {convention!r}")
    eff = np.sort(_check(radius, correct))[::-1]
    k = (len(eff) + 1) // 2  # accuracy >= 0.5 needs ceil(t / 2) points
    m = int(eff[k - 1])  # the largest r with at least k points at radius >= r
    if convention == "anchor":
        return m + 1  # = #{r in 0..max : acc(r) >= 0.5}, also when m = -1
    return None if m < 0 else m
