"""Scoped JAX settings: float64 without touching the user's global configuration.

Works with the JAX of the main environment (>= 0.6, `jax.enable_x64`) and with jax 0.5.3, the
newest JAX neural-tangents 0.6.5 imports with, where the same thread-local context manager is
`jax.experimental.enable_x64`. Both wrap the thread-local `jax_enable_x64` config state.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

try:
    _enable_x64 = jax.enable_x64
except AttributeError:  # jax < 0.6 (e.g. 0.5.3 next to neural-tangents 0.6.5)
    from jax.experimental import enable_x64 as _enable_x64  # type: ignore[attr-defined, no-redef, unused-ignore]


def x64_scope(dtype: npt.DTypeLike = np.float64) -> contextlib.AbstractContextManager[Any]:
    """Context manager enabling 64-bit JAX types only inside the block when `dtype` is float64.

    `jax.enable_x64` (`jax.experimental.enable_x64` before jax 0.6) is thread-local and restores the previous value on exit, so the caller's
    program keeps its own setting (float32 by default).
    """
    if np.dtype(dtype) == np.float64:
        return _enable_x64(True)
    return contextlib.nullcontext()


def gpu_devices() -> list[jax.Device]:
    """The GPUs JAX sees (empty list when there are none or no GPU backend is installed)."""
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:
        return []


def default_device() -> jax.Device:
    """The device kernel tiles go to: the one set by an enclosing `jax.default_device(...)` block
    (see `device_scope`), else the first GPU JAX sees, else the first CPU device."""
    scoped = getattr(jax.config, "jax_default_device")  # a config state mypy's view of jax.config lacks
    if scoped is not None and not isinstance(scoped, str):
        return scoped
    return resolve_device("auto")


def resolve_device(name: str) -> jax.Device:
    """'auto' (GPU if visible, else CPU), 'cpu' or 'gpu' -> a JAX device; ValueError if 'gpu' has none."""
    if name == "auto":
        gpus = gpu_devices()
        return gpus[0] if gpus else jax.devices("cpu")[0]
    if name == "cpu":
        return jax.devices("cpu")[0]
    if name == "gpu":
        gpus = gpu_devices()
        if not gpus:
            raise ValueError("device 'gpu' requested but JAX sees no GPU (install jax[cuda12] and check "
                             "`jax.devices()`), or use device = 'auto' / 'cpu'")
        return gpus[0]
    raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {name!r}")


def device_scope(name: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """Context manager running JAX work (kernels) on the device `resolve_device(name)`; thread-local."""
    return jax.default_device(resolve_device(name))
