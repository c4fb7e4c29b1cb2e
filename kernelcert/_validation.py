"""Shared input checks: every public entry point validates through these, with errors naming the problem."""

from __future__ import annotations

import numpy as np


def as_float_array(name: str, a, ndim: int | tuple[int, ...] | None = None, dtype=np.float64) -> np.ndarray:
    """`a` as a float array; ValueError naming `name` on a wrong ndim or any NaN/inf entry."""
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite entries")
    return arr


def check_labels(name: str, y, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Integer labels in 0..K-1 as int64 and the number of classes K (>= 2)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be in 0..K-1, found {arr.min()}")
    top = int(arr.max()) + 1 if arr.size else 0
    if num_classes is None:
        num_classes = max(top, 2)
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if top > num_classes:
        raise ValueError(f"{name} contains label {top - 1} but num_classes={num_classes} (labels must be in 0..{num_classes - 1})")
    return arr, num_classes


def check_gram(name: str, K, rtol: float = 1e-8) -> np.ndarray:
    """A finite, square, symmetric (within rtol of its largest entry) float64 matrix."""
    K = as_float_array(name, K, ndim=2)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be square, got shape {K.shape}")
    scale = float(np.max(np.abs(K))) if K.size else 0.0
    if K.size and np.max(np.abs(K - K.T)) > rtol * max(scale, 1e-300):
        raise ValueError(f"{name} is not symmetric (max |K - K.T| = {np.max(np.abs(K - K.T)):.3g})")
    return K


def check_columns(name: str, a: np.ndarray, expected: int, what: str = "training samples") -> None:
    """ValueError unless a.shape[1] == expected."""
    if a.shape[1] != expected:
        raise ValueError(f"{name} has {a.shape[1]} columns but the model has {expected} {what}")


def argmax_smallest(scores: np.ndarray) -> np.ndarray:
    """Argmax over the last axis with ties to the smaller index (numpy's argmax already does this)."""
    return np.argmax(scores, axis=-1)
