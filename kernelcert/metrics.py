"""Certified accuracy and median certified robustness (SPEC §1, anchors.md §0.2)."""

from __future__ import annotations

import numpy as np


def _check(radius, correct):
    r = np.asarray(radius, dtype=np.int64)
    ok = np.asarray(correct, dtype=bool)
    if r.shape != ok.shape or r.ndim != 1:
        raise ValueError(f"radius and correct must be 1-D of equal length, got {r.shape} and {ok.shape}")
    if r.size == 0:
        raise ValueError("no test points")
    return r, ok


def certified_accuracy(radius, correct, budget: int) -> float:
    """Fraction of test points that are correctly classified and have radius >= budget."""
    r, ok = _check(radius, correct)
    return float(np.mean(ok & (r >= budget)))


def certified_accuracy_curve(radius, correct, budgets=None):
    """(budgets, certified accuracy at each budget); default budgets 0..max radius of correct points."""
    r, ok = _check(radius, correct)
    if budgets is None:
        top = int(r[ok].max()) if ok.any() else 0
        budgets = np.arange(0, max(top, 0) + 1)
    budgets = np.asarray(budgets, dtype=np.int64)
    eff = np.where(ok, r, -1)
    srt = np.sort(eff)
    acc = (len(eff) - np.searchsorted(srt, budgets, side="left")) / len(eff)
    return budgets, acc


def median_certified_robustness(radius, correct, convention: str = "radius"):
    """MCR: the largest r with certified accuracy >= 50% ("radius"), or that plus one ("anchor",
    what the DPA/FA/ROE scripts print as sum(acc >= 0.5)). None when clean accuracy < 50%."""
    if convention not in ("radius", "anchor"):
        raise ValueError(f"convention must be 'radius' or 'anchor', got {convention!r}")
    r, ok = _check(radius, correct)
    eff = np.sort(np.where(ok, r, -1))[::-1]
    k = (len(eff) + 1) // 2  # need at least half of the points: ceil(t / 2)
    m = int(eff[k - 1])
    if m < 0:
        return None
    return m if convention == "radius" else m + 1
