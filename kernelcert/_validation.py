"""Shared input checks: every public entry point validates through these, with errors naming the problem.

All checks return clean copies/views (float64 arrays, int64 labels, Python ints) so callers can use
the result directly. Bad input raises ValueError (wrong shape, NaN/inf, out-of-range values) or
TypeError (non-numeric data).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sized
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Number = TypeVar("_Number", int, float)


def as_float_array(
    name: str, a: npt.ArrayLike, ndim: int | tuple[int, ...] | None = None, dtype: npt.DTypeLike = np.float64
) -> np.ndarray:
    """`a` as a float array; ValueError naming `name` on a wrong ndim or any NaN/inf entry."""
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {arr.shape}")
    # fast path: any NaN or inf makes the sum non-finite, so a finite sum proves every entry finite;
    # otherwise (including a sum that merely overflows) the entries are checked one by one
    with np.errstate(over="ignore", invalid="ignore"):
        total_ok = bool(np.isfinite(np.sum(arr, dtype=np.float64)))
    if not total_ok and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite entries")
    return arr


def check_finite(name: str, a: npt.ArrayLike, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Float64 array with every entry finite (alias of `as_float_array` with float64)."""
    return as_float_array(name, a, ndim=ndim, dtype=np.float64)


def check_range(name: str, value: _Number, minimum: float | None = None, maximum: float | None = None, *,
                above: float | None = None, below: float | None = None) -> _Number:
    """`value` itself when minimum <= value <= maximum, value > above and value < below (each bound
    optional); otherwise ValueError "`name` must be >= minimum, got value" (resp. <=, >, <)."""
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    if below is not None and not value < below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


def check_real(name: str, value: object, *, allow_inf: bool = False) -> float:
    """A real number (bools rejected) as a finite Python float (+inf too with allow_inf); TypeError
    for a non-number, ValueError for NaN or an infinity."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if np.isnan(result) or (np.isinf(result) and not (allow_inf and result > 0)):
        raise ValueError(f"{name} must be finite, got {result}")
    return result


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """A Python int (integral floats accepted, bools rejected) within [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        result = int(value)
    else:
        as_float = float(value)
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        result = int(as_float)
    return check_range(name, result, minimum, maximum)


def check_index_array(name: str, a: npt.ArrayLike, size: int, what: str) -> np.ndarray:
    """A non-empty 1-D integer array with entries in 0..size-1, as int64; `what` explains `size`
    in the error message (e.g. "k*d = 6 groups")."""
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= size:
        raise ValueError(f"{name} must lie in 0..{size - 1} ({what})")
    return arr.astype(np.int64)


def check_positive(name: str, value: object, *, allow_zero: bool = False, allow_inf: bool = False) -> float:
    """A real number > 0 (>= 0 with allow_zero; +inf only with allow_inf) as a Python float."""
    result = check_real(name, value, allow_inf=allow_inf)
    return check_range(name, result, minimum=0 if allow_zero else None, above=None if allow_zero else 0)


def _check_labels(name: str, y: npt.ArrayLike, num_classes: int | None) -> tuple[np.ndarray, int]:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool or arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be in 0..K-1, found {arr.min()}")
    top = int(arr.max()) + 1 if arr.size else 0
    if num_classes is None:
        num_classes = max(top, 2)
    num_classes = check_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if top > num_classes:
        raise ValueError(
            f"{name} contains label {top - 1} but num_classes={num_classes} (labels must be in 0..{num_classes - 1})"
        )
    return arr, num_classes


def check_labels(y: npt.ArrayLike, num_classes: int | None = None, *, name: str = "labels") -> tuple[np.ndarray, int]:
    """Integer labels in 0..K-1 as int64 and the number of classes K (>= 2, >= max label + 1).

    `num_classes=None` infers `max(max label + 1, 2)` (only for callers whose labels are known to
    cover the task; certificates require the task's K). Float labels are accepted only when they
    hold integral values. `name` is used in error messages.
    """
    return _check_labels(name, y, num_classes)


def check_gram(K: npt.ArrayLike, *, name: str = "K_train", rtol: float = 1e-8) -> np.ndarray:
    """A finite, square float64 matrix, symmetric within `rtol` times its largest |entry|.

    Returns the matrix as given (not symmetrised); positive semidefiniteness is not checked here.
    """
    gram = as_float_array(name, K, ndim=2)
    if gram.shape[0] != gram.shape[1]:
        raise ValueError(f"{name} must be square, got shape {gram.shape}")
    if gram.shape[0] == 0:
        raise ValueError(f"{name} is empty (no training samples)")
    scale = float(np.max(np.abs(gram)))
    asym = float(np.max(np.abs(gram - gram.T)))
    if asym > rtol * max(scale, 1e-300):
        raise ValueError(f"{name} is not symmetric (max |K - K.T| = {asym:.3g}, largest |entry| = {scale:.3g})")
    return gram


def check_same_length(**arrays: int | np.integer | Sized) -> int:
    """All arguments have the same length (first axis; ints are taken as lengths); returns it.

    Example: `check_same_length(K_train=K, labels=y)`.
    """
    if not arrays:
        raise TypeError("check_same_length needs at least one named array")
    lengths = {k: (int(v) if isinstance(v, (int, np.integer)) else len(v)) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"length mismatch: {desc}")
    return next(iter(lengths.values()))


def check_columns(name: str, a: np.ndarray, expected: int, what: str = "training samples") -> None:
    """ValueError unless a.shape[1] == expected."""
    if a.shape[1] != expected:
        raise ValueError(f"{name} has {a.shape[1]} columns but the model has {expected} {what}")


def check_weights(weights: npt.ArrayLike, num_train: int | None = None, *, name: str = "weights") -> np.ndarray:
    """Label weights as a finite float64 (t, n) array; n must equal `num_train` when given."""
    W = as_float_array(name, weights, ndim=2)
    if num_train is not None:
        check_columns(name, W, num_train, what="training labels")
    return W


def argmax_smallest(scores: np.ndarray) -> np.ndarray:
    """Argmax over the last axis with ties to the smaller index (numpy's argmax already does this)."""
    return np.argmax(scores, axis=-1)


__all__ = [
    "as_float_array",
    "check_finite",
    "check_range",
    "check_real",
    "check_int",
    "check_positive",
    "check_labels",
    "check_gram",
    "check_same_length",
    "check_columns",
    "check_weights",
    "argmax_smallest",
]
