"""Scoped JAX settings: float64 without touching the user's global configuration."""

from __future__ import annotations

import contextlib

import jax
import numpy as np


def x64_scope(dtype=np.float64):
    """Context manager enabling 64-bit JAX types only inside the block when `dtype` is float64.

    `jax.enable_x64` is thread-local and restores the previous value on exit, so the caller's
    program keeps its own setting (float32 by default).
    """
    if np.dtype(dtype) == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def default_device():
    """The first GPU JAX sees, else the first CPU device."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    return gpus[0] if gpus else jax.devices("cpu")[0]
