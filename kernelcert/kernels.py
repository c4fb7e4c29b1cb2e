"""Infinite-width NTK / NNGP kernels in closed form (JAX, jit-compiled), docs/math.md §2.

Conventions are neural-tangents' (`stax`, parameterization "ntk"): inputs are flattened (fully
connected) or kept NHWC (convolutional); the input covariance is divided by the input dimension
(channels for Conv), each Dense maps covariances as `K -> W_std**2 * K + b_std**2` (a SAME Conv
first averages K over the filter window) and the NTK as `Θ -> W_std**2 * Θ + K_new`; an activation
maps `(K, Θ) -> (E[φ(u)φ(v)], Θ · E[φ'(u)φ'(v)])`.

Evaluation is tiled: a Gram `K(x1, x2)` is assembled in a numpy array from tiles whose temporaries
stay under `max_block_bytes` (default 256 MiB); a symmetric Gram `K(x, x)` only computes the square
tiles on and above the diagonal and mirrors them, so it is exactly symmetric. Entries on the diagonal
of a symmetric Gram use the closed form at correlation exactly 1 (angle 0), so `K(x_i, x_i)` carries
no arccos/arcsin cancellation error. The jit-compiled kernels (`FullyConnected`, `Convolutional`) pad
their tiles with zero rows to sides on a geometric grid (`tile_grid_ceil`: m * 2**e, m in [16, 32),
at most 1/16 padding), so a run over work units of many sizes compiles a bounded number of programs
(FA k = 50, d = 4 on MNIST: 8 instead of 192); every real entry is bit-identical to an unpadded
evaluation (each entry depends only on its own two rows; tests/test_kernels.py checks it), and
`CompileCounter` counts the programs compiled. (In a general `K(x1, x2)` a point present in both inputs gets no
such treatment: arccos near 1 costs about 1e-8 relative there, as in neural-tangents.)

Everything is float64 by default, computed inside a scoped x64 context (`kernelcert._jax.x64_scope`),
so the user's global JAX configuration is untouched. `dtype=np.float32` is meant for GPU speed; its
max relative error against float64 on the NTK Gram of FullyConnected(depth=2, W_std=1.4, b_std=0.1)
on MNIST-like inputs (uniform [0, 1], d=784) measured 8.6e-7 (N=1000, 2000), 9.6e-7 (N=5000) and
1.0e-6 (N=10000) with `.venv/bin/python -m benchmarks.kernels` (column "f32 relerr"). Certificates
should use float64.
"""

from __future__ import annotations

import abc
import functools
import inspect
import math
import operator
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._jax import default_device, x64_scope
from ._validation import as_float_array
from .arrayfiles import ArrayFileError, check_finite_rows, open_array

DEFAULT_MAX_BLOCK_BYTES = 256 * 2**20
TILE_GRID_STEPS = 16  # tile sides m * 2**e with m in [16, 32): at most 1/16 of a side is padding
_ACTIVATIONS = ("relu", "erf")
_KINDS = ("ntk", "nngp")
TileInput = np.ndarray | jax.Array  # one tile's points (numpy, or JAX arrays on the device) or kernel values


# --------------------------------------------------------------------------- activations
def _relu_step(k12: jax.Array, k11: jax.Array, k22: jax.Array, same: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Arc-cosine kernels of ReLU for centred Gaussians with covariance [[k11, k12], [k12, k22]].

    Returns (E[relu(u) relu(v)], E[relu'(u) relu'(v)]) = (sqrt(k11 k22) (sin θ + (π - θ) cos θ) / 2π,
    (π - θ) / 2π) with cos θ = k12 / sqrt(k11 k22) clipped into [-1, 1] and set to exactly 1 on `same`.
    """
    norm = jnp.sqrt(k11 * k22)
    cos = jnp.clip(k12 / jnp.where(norm > 0, norm, 1.0), -1.0, 1.0)
    cos = jnp.where(same, 1.0, cos)
    theta = jnp.arccos(cos)
    sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 0.0))
    k_new = norm * (sin + (jnp.pi - theta) * cos) / (2 * jnp.pi)
    k_dot = (jnp.pi - theta) / (2 * jnp.pi)
    return k_new, k_dot


def _erf_step(k12: jax.Array, k11: jax.Array, k22: jax.Array, same: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(E[erf(u) erf(v)], E[erf'(u) erf'(v)]) = ((2/π) arcsin(2 k12 / sqrt(p)), (4/π) / sqrt(p - 4 k12²)),
    p = (1 + 2 k11)(1 + 2 k22); on `same` k12 is set to sqrt(k11 k22) (correlation exactly 1)."""
    prod = (1 + 2 * k11) * (1 + 2 * k22)
    k12 = jnp.where(same, jnp.sqrt(k11 * k22), k12)
    ratio = jnp.clip(2 * k12 / jnp.sqrt(prod), -1.0, 1.0)
    k_new = (2 / jnp.pi) * jnp.arcsin(ratio)
    # p - 4 k12² >= 1 + 2 k11 + 2 k22 > 0 by Cauchy-Schwarz; the floor only guards rounding.
    k_dot = (4 / jnp.pi) / jnp.sqrt(jnp.maximum(prod - 4 * k12 * k12, jnp.finfo(prod.dtype).tiny))
    return k_new, k_dot


def _relu_var(k: jax.Array) -> jax.Array:
    """E[relu(u)²] for u ~ N(0, k)."""
    return k / 2


def _erf_var(k: jax.Array) -> jax.Array:
    """E[erf(u)²] for u ~ N(0, k)."""
    return (2 / jnp.pi) * jnp.arcsin(2 * k / (1 + 2 * k))


_StepFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
_STEP: dict[str, tuple[_StepFn, Callable[[jax.Array], jax.Array]]] = {
    "relu": (_relu_step, _relu_var), "erf": (_erf_step, _erf_var)}


def _same_mask(n1: int, n2: int, offset: int | jax.Array) -> jax.Array:
    """(n1, n2) bool: local column j holds the same point as local row i, i.e. j - i == offset."""
    return (jnp.arange(n2)[None, :] - jnp.arange(n1)[:, None]) == offset


def _check_arch(depth: int, W_std: float, b_std: float, activation: str, parameterization: str) -> None:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer (number of hidden layers), got {depth!r}")
    if not (np.isfinite(W_std) and W_std > 0):
        raise ValueError(f"W_std must be positive and finite, got {W_std}")
    if not (np.isfinite(b_std) and b_std >= 0):
        raise ValueError(f"b_std must be non-negative and finite, got {b_std}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if parameterization != "ntk":
        raise ValueError(
            f"parameterization {parameterization!r} is not supported; only 'ntk' (neural-tangents' default) is "
            "implemented: with 'standard' the NTK depends on the finite hidden widths (neural-tangents scales each "
            "layer's NTK term by its input width), so it has no width-free infinite-width form")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'ntk' or 'nngp', got {kind!r}")


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    checked = np.dtype(dtype)
    if checked not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, got {checked}")
    return checked


def _check_max_block_bytes(max_block_bytes: int) -> int:
    if isinstance(max_block_bytes, bool) or not isinstance(max_block_bytes, (int, np.integer)) or max_block_bytes < 1:
        raise ValueError(f"max_block_bytes must be a positive integer, got {max_block_bytes!r}")
    return int(max_block_bytes)


# --------------------------------------------------------------------------- tile-size grid
def tile_grid_ceil(n: int) -> int:
    """Smallest tile side on the geometric grid that holds `n` rows: n itself below 2 * TILE_GRID_STEPS,
    else m * 2**e with m in [TILE_GRID_STEPS, 2 * TILE_GRID_STEPS] (at most n / TILE_GRID_STEPS padding).

    Padded kernels (`FullyConnected`, `Convolutional`) round their tiles up to this grid, so that a run
    whose work units have many different sizes (Finite Aggregation learners, partitions of n/N_p and
    n/N_p + 1 points) compiles one program per grid size instead of one per unit size: a factor-2 range
    of sizes maps to at most TILE_GRID_STEPS + 1 programs.
    """
    n = max(1, int(n))
    shift = max(0, n.bit_length() - TILE_GRID_STEPS.bit_length())
    return -(-n >> shift) << shift


def tile_grid_floor(n: int) -> int:
    """Largest tile side on the grid of `tile_grid_ceil` that is at most `n` (n >= 1)."""
    n = max(1, int(n))
    shift = max(0, n.bit_length() - TILE_GRID_STEPS.bit_length())
    return (n >> shift) << shift


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Context manager counting the XLA programs compiled in this process while it is active.

    `count` and `seconds` (compile time) cover every JAX program (the kernels' tiles among them),
    read from `jax.monitoring`'s backend-compile events; a program found in JAX's compilation
    cache is not compiled and not counted. Usage: `with CompileCounter() as cc: ...; cc.count`.
    """

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._active = False

    def _listener(self, event: str, duration_secs: float, **kwargs: Any) -> None:
        if self._active and event == _BACKEND_COMPILE_EVENT:
            self.count += 1
            self.seconds += float(duration_secs)

    def __enter__(self) -> "CompileCounter":
        self._active = True
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:  # jax < 0.6 cannot unregister: the listener stays, inactive
            unregister(self._listener)


# --------------------------------------------------------------------------- base class
class Kernel(abc.ABC):
    """Base class: `ntk(x1, x2=None)` / `nngp(x1, x2=None)` -> numpy array of shape (len(x1), len(x2)).

    `x2=None` means the symmetric Gram `K(x1, x1)` (exactly symmetric, exact diagonal).
    `block_size` is the side of the square tiles the Gram is computed in (default: the largest that
    keeps one tile's temporaries under `max_block_bytes`); any value gives the same entries up to
    floating-point reassociation in the input matmul. `dtype` is float64 (default) or float32.

    Subclasses implement `_prepare(x, name)` (validation, reshaping), `_bytes_per_entry(x, itemsize)`
    and `_tile(x1, x2, offset, kind)` on jnp arrays of one tile, where local column j holds the same
    point as local row i iff `j - i == offset`.
    """

    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    _pad_tiles = True  # pad tiles to sides on the `tile_grid_ceil` grid, so the jit compiles few shapes per run
    _on_device = True  # hand tiles to `_tile` as JAX arrays on `default_device()` (else numpy)

    def __call__(self, x1: ArrayLike, x2: ArrayLike | None = None, *, kind: str = "ntk", block_size: int | None = None,
                 dtype: DTypeLike = np.float64) -> np.ndarray:
        """Same as `ntk` (kind="ntk") or `nngp` (kind="nngp")."""
        _check_kind(kind)
        return self._evaluate(x1, x2, kind, block_size, dtype)

    def ntk(self, x1: ArrayLike, x2: ArrayLike | None = None, *, block_size: int | None = None,
            dtype: DTypeLike = np.float64) -> np.ndarray:
        """Neural Tangent Kernel Θ(x1, x2), shape (len(x1), len(x2))."""
        return self._evaluate(x1, x2, "ntk", block_size, dtype)

    def nngp(self, x1: ArrayLike, x2: ArrayLike | None = None, *, block_size: int | None = None,
             dtype: DTypeLike = np.float64) -> np.ndarray:
        """NNGP kernel K(x1, x2), shape (len(x1), len(x2))."""
        return self._evaluate(x1, x2, "nngp", block_size, dtype)

    # -- subclass hooks
    @abc.abstractmethod
    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        """Validate and reshape one input array (float64 numpy)."""

    @abc.abstractmethod
    def _tile(self, x1: TileInput, x2: TileInput, offset: int, kind: str) -> TileInput:
        """One (len(x1), len(x2)) tile of the requested kernel."""

    def _bytes_per_entry(self, x: np.ndarray, itemsize: int) -> int:
        return 10 * itemsize

    # -- tiling
    def block_size_for(self, x1: np.ndarray, n2: int, dtype: DTypeLike = np.float64) -> int:
        """Side of the square tiles used for `x1` (prepared) against `n2` points under `max_block_bytes`."""
        itemsize = np.dtype(dtype).itemsize
        per_entry = max(1, self._bytes_per_entry(x1, itemsize))
        per_point = itemsize * int(np.prod(x1.shape[1:]))
        side = max(1, math.isqrt(max(1, self.max_block_bytes // per_entry)))
        while side > 1 and side * side * per_entry + 2 * side * per_point > self.max_block_bytes:
            side = max(1, side * 7 // 8)
        return int(side)

    def _tile_shapes(self, a: np.ndarray, b: np.ndarray, symmetric: bool, block_size: int | None,
                     dtype: DTypeLike) -> tuple[int, int]:
        n1, n2 = len(a), len(b)
        if block_size is not None:
            if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
                raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
            return max(1, min(n1, int(block_size))), max(1, min(n2, int(block_size)))

        def balanced(n: int, cap: int) -> int:  # fewest tiles of at most `cap`, then equal sizes (little padding)
            n, cap = max(1, n), max(1, cap)
            if not self._pad_tiles:
                return -(-n // -(-n // cap))
            cap = tile_grid_floor(cap)  # padded tiles: sides on the grid, so few distinct programs
            return tile_grid_ceil(-(-n // -(-n // cap)))

        side = self.block_size_for(a, n2, dtype)
        if symmetric:
            side = balanced(n1, side)
            return side, side
        rows = balanced(n1, side)
        # few rows (e.g. a handful of test points): widen the tiles instead of making many thin ones
        per_entry = max(1, self._bytes_per_entry(a, np.dtype(dtype).itemsize))
        cols = max(side, self.max_block_bytes // (rows * per_entry))
        return rows, balanced(n2, cols)

    def _tiles(self, a: np.ndarray, b: np.ndarray, symmetric: bool, kind: str, block_size: int | None,
               dtype: DTypeLike) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        """Yield (r0, r1, c0, c1, tile) with tile = K(a[r0:r1], b[c0:c1]) as a numpy array.

        Symmetric: only tiles with c0 >= r0; diagonal tiles are symmetrised (upper triangle mirrored).
        """
        rows, cols = self._tile_shapes(a, b, symmetric, block_size, dtype)
        device = default_device() if self._on_device else None

        def place(part: np.ndarray) -> TileInput:
            part = np.asarray(part, dtype)
            return jax.device_put(part, device) if device is not None else part

        def chunks(x: np.ndarray, size: int) -> list[tuple[int, int, np.ndarray]]:
            out = []
            for start in range(0, len(x), size):
                part = x[start:start + size]
                if self._pad_tiles and len(part) < size:
                    part = np.concatenate([part, np.zeros((size - len(part),) + x.shape[1:], x.dtype)])
                out.append((start, min(len(x), start + size), part))
            return out

        with x64_scope(dtype):
            row_chunks = [(s, e, place(p)) for s, e, p in chunks(a, rows)]
            col_chunks = row_chunks if symmetric else [(s, e, place(p)) for s, e, p in chunks(b, cols)]
            for r0, r1, xa in row_chunks:
                for c0, c1, xb in col_chunks:
                    if symmetric and c0 < r0:
                        continue
                    # same point iff r0 + i == c0 + j; off the diagonal (or non-symmetric) never
                    offset = r0 - c0 if symmetric else cols
                    tile = np.asarray(self._tile(xa, xb, offset, kind), dtype=dtype)[: r1 - r0, : c1 - c0]
                    if symmetric and r0 == c0:
                        upper = np.triu(tile)
                        tile = upper + np.triu(tile, 1).T
                    yield r0, r1, c0, c1, tile

    def _inputs(self, x1: ArrayLike, x2: ArrayLike | None) -> tuple[np.ndarray, np.ndarray, bool]:
        a = self._prepare(x1, "x1")
        if x2 is None:
            return a, a, True
        b = self._prepare(x2, "x2")
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"x1 and x2 have different feature shapes {a.shape[1:]} and {b.shape[1:]}")
        return a, b, False

    def _evaluate(self, x1: ArrayLike, x2: ArrayLike | None, kind: str, block_size: int | None,
                  dtype: DTypeLike) -> np.ndarray:
        _check_kind(kind)
        dtype = _check_dtype(dtype)
        a, b, symmetric = self._inputs(x1, x2)
        out = np.empty((len(a), len(b)), dtype=dtype)
        if out.size == 0:
            return out
        for r0, r1, c0, c1, tile in self._tiles(a, b, symmetric, kind, block_size, dtype):
            out[r0:r1, c0:c1] = tile
            if symmetric and c0 > r0:
                out[c0:c1, r0:r1] = tile.T
        return out


# --------------------------------------------------------------------------- fully connected
@functools.partial(jax.jit, static_argnames=("depth", "activation", "kind"))
def _fc_tile(x1: jax.Array, x2: jax.Array, offset: int | jax.Array, W_std: float, b_std: float, *, depth: int,
             activation: str, kind: str) -> jax.Array:
    step, var = _STEP[activation]
    d = x1.shape[1]
    w2, b2 = W_std**2, b_std**2
    same = _same_mask(x1.shape[0], x2.shape[0], offset)
    k11 = w2 * jnp.sum(x1 * x1, axis=1) / d + b2
    k22 = w2 * jnp.sum(x2 * x2, axis=1) / d + b2
    k12 = w2 * (x1 @ x2.T) / d + b2
    k12 = jnp.where(same, k11[:, None], k12)  # a point with itself: exactly its variance
    ntk = k12
    for _ in range(depth):  # hidden layer: activation, then Dense
        k_new, k_dot = step(k12, k11[:, None], k22[None, :], same)
        k12 = w2 * k_new + b2
        if kind == "ntk":
            ntk = w2 * ntk * k_dot + k12
        k11 = w2 * var(k11) + b2
        k22 = w2 * var(k22) + b2
    return ntk if kind == "ntk" else k12


class FullyConnected(Kernel):
    """Kernel of `stax.serial(*[Dense(w, W_std, b_std), act] * depth, Dense(1, W_std, b_std))`, w -> ∞.

    `depth` is the number of hidden layers (0 gives the linear kernel W_std² x·x'/d + b_std²);
    `activation` is "relu" (arc-cosine kernels) or "erf". Inputs (N, ...) are flattened to (N, d).
    Cost: one (n1, d) x (d, n2) matmul plus O(n1 n2 depth) elementwise work, fused in one jit per tile.
    """

    def __init__(self, depth: int, W_std: float = 1.0, b_std: float = 0.0, activation: str = "relu",
                 parameterization: str = "ntk", *, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        _check_arch(depth, W_std, b_std, activation, parameterization)
        self.depth, self.W_std, self.b_std = int(depth), float(W_std), float(b_std)
        self.activation, self.parameterization = activation, parameterization
        self.max_block_bytes = _check_max_block_bytes(max_block_bytes)

    def __repr__(self) -> str:
        return (f"FullyConnected(depth={self.depth}, W_std={self.W_std}, b_std={self.b_std}, "
                f"activation={self.activation!r})")

    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        x = as_float_array(name, x)
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (N, ...) with at least 2 dimensions, got {x.shape}")
        x = x.reshape(len(x), int(np.prod(x.shape[1:])))
        if x.shape[1] == 0:
            raise ValueError(f"{name} has no features (shape {x.shape})")
        return x

    def _tile(self, x1: TileInput, x2: TileInput, offset: int, kind: str) -> TileInput:
        return _fc_tile(x1, x2, offset, self.W_std, self.b_std, depth=self.depth, activation=self.activation,
                        kind=kind)


# --------------------------------------------------------------------------- convolutional
def _box_mean(k: jax.Array, filter_shape: tuple[int, int]) -> jax.Array:
    """SAME-padded window mean over the trailing two (spatial) axes, zeros outside (lax SAME padding)."""
    fh, fw = filter_shape
    ph, pw = (fh - 1) // 2, (fw - 1) // 2
    kp = jnp.pad(k, [(0, 0)] * (k.ndim - 2) + [(ph, fh - 1 - ph), (pw, fw - 1 - pw)])
    h, w = k.shape[-2:]
    total: jax.Array = functools.reduce(operator.add, (kp[..., i:i + h, j:j + w] for i in range(fh) for j in range(fw)))
    return total / (fh * fw)


def _box_mean_pair(k: jax.Array, filter_shape: tuple[int, int]) -> jax.Array:
    """Conv of a full spatial covariance (..., H, W, H', W'): both positions shifted by the same offset."""
    fh, fw = filter_shape
    ph, pw = (fh - 1) // 2, (fw - 1) // 2
    pad_h, pad_w = (ph, fh - 1 - ph), (pw, fw - 1 - pw)
    kp = jnp.pad(k, [(0, 0)] * (k.ndim - 4) + [pad_h, pad_w, pad_h, pad_w])
    h, w = k.shape[-4:-2]
    total: jax.Array = functools.reduce(operator.add, (kp[..., i:i + h, j:j + w, i:i + h, j:j + w]
                                                       for i in range(fh) for j in range(fw)))
    return total / (fh * fw)


@functools.partial(jax.jit, static_argnames=("depth", "activation", "filter_shape", "readout", "kind"))
def _conv_tile(x1: jax.Array, x2: jax.Array, offset: int | jax.Array, W_std: float, b_std: float, *, depth: int,
               activation: str, filter_shape: tuple[int, int], readout: str, kind: str) -> jax.Array:
    step, var = _STEP[activation]
    n1, n2 = x1.shape[0], x2.shape[0]
    hgt, wid, chan = x1.shape[1:]
    w2, b2 = W_std**2, b_std**2
    same_img = _same_mask(n1, n2, offset)
    # per-image variance maps (N, H, W): they only ever depend on same-position variances
    v1 = jnp.sum(x1 * x1, axis=-1) / chan
    v2 = jnp.sum(x2 * x2, axis=-1) / chan
    if readout == "flatten":
        # Flatten readout only needs same-position cross-covariances (n1, n2, H, W); a SAME Conv maps them
        # to the window mean of the previous layer's same-position covariances.
        cov = jnp.einsum("ahwc,bhwc->abhw", x1, x2) / chan
        same = same_img[:, :, None, None]
        conv = functools.partial(_box_mean, filter_shape=filter_shape)
        expand1, expand2 = (lambda v: v[:, None]), (lambda v: v[None, :])
        cov = jnp.where(same, v1[:, None], cov)
    else:
        # GAP readout needs all position pairs: (n1, n2, H, W, H', W').
        cov = jnp.einsum("ahwc,bxyc->abhwxy", x1, x2) / chan
        eye = (jnp.arange(hgt)[:, None, None, None] == jnp.arange(hgt)[None, None, :, None]) & \
              (jnp.arange(wid)[None, :, None, None] == jnp.arange(wid)[None, None, None, :])
        same = same_img[:, :, None, None, None, None] & eye[None, None]
        conv = functools.partial(_box_mean_pair, filter_shape=filter_shape)
        expand1 = lambda v: v[:, None, :, :, None, None]  # noqa: E731
        expand2 = lambda v: v[None, :, None, None, :, :]  # noqa: E731
        cov = jnp.where(same, expand1(v1), cov)
    if depth == 0:
        k_post, theta_post = cov, jnp.zeros_like(cov)
    else:
        k12 = w2 * conv(cov) + b2
        k11 = w2 * _box_mean(v1, filter_shape) + b2
        k22 = w2 * _box_mean(v2, filter_shape) + b2
        ntk = k12
        for layer in range(depth):
            k_post, k_dot = step(k12, expand1(k11), expand2(k22), same)
            theta_post = ntk * k_dot
            if layer < depth - 1:  # the next Conv block
                k12 = w2 * conv(k_post) + b2
                ntk = w2 * conv(theta_post) + k12
                k11 = w2 * _box_mean(var(k11), filter_shape) + b2
                k22 = w2 * _box_mean(var(k22), filter_shape) + b2
    # Flatten (mean over positions) or global average pooling (mean over position pairs), then Dense(1).
    spatial = tuple(range(2, k_post.ndim))
    k_out = w2 * jnp.mean(k_post, axis=spatial) + b2
    if kind == "nngp":
        return k_out
    return w2 * jnp.mean(theta_post, axis=spatial) + k_out


class Convolutional(Kernel):
    """Kernel of `depth` x [Conv(c, filter_shape, padding='SAME'), act] then a readout and Dense(1), c -> ∞.

    Images are (N, H, W, C), stride 1, parameterization "ntk" (neural-tangents' stax.Conv).
    readout="flatten" (stax.Flatten): tracks the same-position covariances, memory about
    12·H·W·8 bytes per kernel entry, time O(H·W·|filter|·depth) per pair.
    readout="gap" (stax.GlobalAvgPool): needs the full covariance over position pairs, memory about
    12·(H·W)²·8 bytes per kernel entry (e.g. 59 MB per pair for 28x28 images) and time
    O((H·W)²·|filter|·depth) per pair: only practical for small images or few points.
    """

    def __init__(self, depth: int, filter_shape: tuple[int, int] = (3, 3), W_std: float = 1.0, b_std: float = 0.0,
                 activation: str = "relu", parameterization: str = "ntk", readout: str = "flatten", *,
                 max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        _check_arch(depth, W_std, b_std, activation, parameterization)
        if readout not in ("flatten", "gap"):
            raise ValueError(f"readout must be 'flatten' or 'gap', got {readout!r}")
        try:
            fs = tuple(int(f) for f in filter_shape)
        except TypeError:
            raise ValueError(f"filter_shape must be two positive integers, got {filter_shape!r}") from None
        if len(fs) != 2 or min(fs) < 1:
            raise ValueError(f"filter_shape must be two positive integers, got {filter_shape!r}")
        self.depth, self.filter_shape = int(depth), fs
        self.W_std, self.b_std, self.activation = float(W_std), float(b_std), activation
        self.parameterization, self.readout = parameterization, readout
        self.max_block_bytes = _check_max_block_bytes(max_block_bytes)

    def __repr__(self) -> str:
        return (f"Convolutional(depth={self.depth}, filter_shape={self.filter_shape}, W_std={self.W_std}, "
                f"b_std={self.b_std}, activation={self.activation!r}, readout={self.readout!r})")

    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        x = as_float_array(name, x)
        if x.ndim != 4:
            raise ValueError(f"{name} must be images of shape (N, H, W, C), got {x.shape}")
        if min(x.shape[1:]) == 0:
            raise ValueError(f"{name} has an empty spatial or channel axis (shape {x.shape})")
        return x

    def _bytes_per_entry(self, x: np.ndarray, itemsize: int) -> int:
        positions = int(np.prod(x.shape[1:3]))
        return 12 * itemsize * (positions if self.readout == "flatten" else positions * positions)

    def _tile(self, x1: TileInput, x2: TileInput, offset: int, kind: str) -> TileInput:
        return _conv_tile(x1, x2, offset, self.W_std, self.b_std, depth=self.depth, activation=self.activation,
                          filter_shape=self.filter_shape, readout=self.readout, kind=kind)


# --------------------------------------------------------------------------- user kernels
def _is_nt_style(fn: Callable[..., Any]) -> bool:
    """True when `fn` can take a third positional argument or has a parameter named `get`."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.name == "get" for p in params):
        return True
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return False  # fn(*args): ambiguous, treat as plain
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


class CustomKernel(Kernel):
    """Wrap a user kernel function with the same interface (tiling, dtype, validation).

    `fn` is either
      * style="nt": a neural-tangents `kernel_fn(x1, x2, get)`, called with get="ntk" or "nngp"; the
        result is an array or an object with `.ntk` / `.nngp` attributes; or
      * style="plain": `fn(x1, x2) -> array`, the NTK; `nngp` then needs `nngp_fn(x1, x2)`.
    style="auto" (default) picks "nt" when `fn` has a parameter named `get` or at least three
    positional parameters, else "plain".
    Inputs are passed as numpy arrays of the requested dtype (inside the scoped x64 context for
    float64), one tile at a time; a symmetric Gram evaluates the upper tiles and mirrors them. The
    function must return finite values of shape (len(x1), len(x2)) or a ValueError is raised.
    """

    _pad_tiles = False
    _on_device = False

    def __init__(self, fn: Callable[..., Any], style: str = "auto", nngp_fn: Callable[..., Any] | None = None, *,
                 max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if nngp_fn is not None and not callable(nngp_fn):
            raise TypeError(f"nngp_fn must be callable, got {type(nngp_fn).__name__}")
        if style not in ("auto", "nt", "plain"):
            raise ValueError(f"style must be 'auto', 'nt' or 'plain', got {style!r}")
        self.fn, self.nngp_fn = fn, nngp_fn
        self.style = ("nt" if _is_nt_style(fn) else "plain") if style == "auto" else style
        self.max_block_bytes = _check_max_block_bytes(max_block_bytes)

    def __repr__(self) -> str:
        return f"CustomKernel({getattr(self.fn, '__name__', self.fn)!r}, style={self.style!r})"

    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        x = as_float_array(name, x)
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (N, ...) with at least 2 dimensions, got {x.shape}")
        return x

    def _tile(self, x1: TileInput, x2: TileInput, offset: int, kind: str) -> TileInput:
        if self.style == "nt":
            res = self.fn(x1, x2, kind)
            res = getattr(res, kind, res)
        elif kind == "ntk":
            res = self.fn(x1, x2)
        elif self.nngp_fn is None:
            raise ValueError("this CustomKernel has no NNGP function (pass nngp_fn=... or use an nt-style kernel_fn)")
        else:
            res = self.nngp_fn(x1, x2)
        res = np.asarray(res, dtype=np.float64)
        if res.shape != (len(x1), len(x2)):
            raise ValueError(f"kernel function returned shape {res.shape}, expected {(len(x1), len(x2))}")
        if not np.all(np.isfinite(res)):
            raise ValueError("kernel function returned NaN or infinite values")
        return res


# --------------------------------------------------------------------------- precomputed kernels
TRAIN_SPLIT, TEST_SPLIT = 0, 1
SYMMETRY_RTOL = 1e-8  # same tolerance as the learners' Gram check


class PrecomputedKernel(Kernel):
    """A kernel computed elsewhere, read from `.npy` files memory-mapped (docs/usage.md, "precomputed").

    `train_train`: `K(train, train)` of shape (n, n); `test_train`: `K(test, train)` of shape (t, n)
    (optional: without it only training Grams can be read). Each is an `.npy` path (memory-mapped)
    or an array. Row i of the files is training (test) sample i of the source split, e.g. the
    `idx_train` / `idx_test` a loader returns with `return_index=True`. `kind` is what the files
    hold ("ntk" or "nngp"); asking for the other kind is an error.

    Points are index rows built by `train_points(idx)` / `test_points(idx)`: shape (m, 2), columns
    (split, row). `kernel(train_points(i))` returns the symmetric Gram `K[i][:, i]`,
    `kernel(test_points(j), train_points(i))` the block `K_test[j][:, i]`; only those entries are
    read from disk, in row chunks under `max_block_bytes`, never the whole matrix.

    Checks: the files' shapes (on construction, from the headers); every block read is checked to be
    finite, and a symmetric Gram to be symmetric within 1e-8 of its largest |entry| (then made
    exactly symmetric from its upper triangle, as computed kernels are); ValueError naming the
    file otherwise. `check_files()` scans whole files (finiteness, symmetry) in row blocks.
    """

    _pad_tiles = False
    _on_device = False

    def __init__(self, train_train: str | os.PathLike | ArrayLike, test_train: str | os.PathLike | ArrayLike | None = None,
                 *, kind: str = "ntk", max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        _check_kind(kind)
        self.kind = kind
        self.max_block_bytes = _check_max_block_bytes(max_block_bytes)
        self.train_train, self.train_name = self._open(train_train, "K(train, train)")
        n = self.train_train.shape[0]
        if self.train_train.ndim != 2 or self.train_train.shape != (n, n) or n == 0:
            raise ArrayFileError(f"{self.train_name}: K(train, train) must be a non-empty square (n, n) matrix, "
                                 f"got shape {self.train_train.shape}")
        self.test_train: np.ndarray | None = None
        self.test_name: str | None = None
        if test_train is not None:
            self.test_train, self.test_name = self._open(test_train, "K(test, train)")
        if self.test_train is not None and (self.test_train.ndim != 2 or self.test_train.shape[1] != n):
            raise ArrayFileError(f"{self.test_name}: K(test, train) must have shape (t, {n}) to match "
                                 f"{self.train_name} (n = {n} training samples), got {self.test_train.shape}")

    @staticmethod
    def _open(src: str | os.PathLike[str] | ArrayLike, what: str) -> tuple[np.ndarray, str]:
        if isinstance(src, (str, bytes, os.PathLike)):  # a file name (bytes decoded as `os.fsdecode` does)
            name = os.fsdecode(src)
            arr = open_array(name)
        else:
            arr, name = np.asarray(src), f"the {what} array"
        if arr.dtype.kind not in "iuf":
            raise ArrayFileError(f"{name}: {what} must be a real numeric matrix, got dtype {arr.dtype}")
        return arr, name

    def __repr__(self) -> str:
        return f"PrecomputedKernel({self.train_name!r}, {self.test_name!r}, kind={self.kind!r})"

    @property
    def num_train(self) -> int:
        return int(self.train_train.shape[0])

    @property
    def num_test(self) -> int:
        return 0 if self.test_train is None else int(self.test_train.shape[0])

    @staticmethod
    def train_points(idx: ArrayLike) -> np.ndarray:
        """(m, 2) index rows (split 0, row) for training rows `idx` of the files."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return np.stack([np.full(len(idx), TRAIN_SPLIT, np.int64), idx], axis=1)

    @staticmethod
    def test_points(idx: ArrayLike) -> np.ndarray:
        """(m, 2) index rows (split 1, row) for test rows `idx` of K(test, train)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return np.stack([np.full(len(idx), TEST_SPLIT, np.int64), idx], axis=1)

    def _prepare(self, x: ArrayLike, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 2 or x.dtype.kind not in "iuf":
            raise ValueError(f"{name}: a precomputed kernel takes index rows (m, 2) from train_points()/test_points(), "
                             f"got {x.dtype} of shape {x.shape}")
        rows = x.astype(np.int64)
        if not np.array_equal(rows, x):
            raise ValueError(f"{name}: index rows must be integers (from train_points()/test_points())")
        if len(rows) and not np.all((rows[:, 0] == TRAIN_SPLIT) | (rows[:, 0] == TEST_SPLIT)):
            raise ValueError(f"{name}: the split column must be 0 (train) or 1 (test)")
        return rows

    def _source(self, a: np.ndarray, b: np.ndarray, kind: str) -> tuple[np.ndarray, str, np.ndarray, np.ndarray]:
        """(matrix, file name, row indices, column indices) for K(a, b)."""
        if kind != self.kind:
            raise ValueError(f"{self.train_name}: this precomputed kernel holds the {self.kind} matrices, "
                             f"not the {kind} kernel")
        if len(b) and np.any(b[:, 0] != TRAIN_SPLIT):
            raise ValueError("a precomputed kernel has columns for training points only (K(., train))")
        if len(a) and np.all(a[:, 0] == TRAIN_SPLIT):
            mat, name = self.train_train, self.train_name
        elif len(a) and np.all(a[:, 0] == TEST_SPLIT):
            if self.test_train is None or self.test_name is None:
                raise ValueError(f"{self.train_name}: no K(test, train) file was given, test rows cannot be read")
            mat, name = self.test_train, self.test_name
        else:
            raise ValueError("rows of one precomputed-kernel call must be all training or all test points")
        rows, cols = a[:, 1], b[:, 1]
        for what, idx, size in (("row", rows, mat.shape[0]), ("column", cols, mat.shape[1])):
            if len(idx) and (idx.min() < 0 or idx.max() >= size):
                raise ValueError(f"{name}: {what} index {int(idx.max()) if idx.max() >= size else int(idx.min())} "
                                 f"outside 0..{size - 1} (the file has shape {mat.shape}; do the data and the "
                                 "kernel files describe the same samples?)")
        return mat, name, rows, cols

    def _read(self, mat: np.ndarray, name: str, rows: np.ndarray, cols: np.ndarray, dtype: DTypeLike) -> np.ndarray:
        """mat[rows][:, cols] as `dtype`, read in row chunks; ValueError naming the file on NaN/inf."""
        out = np.empty((len(rows), len(cols)), dtype)
        step = max(1, self.max_block_bytes // max(1, 8 * len(cols)))
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            out[s:s + step] = mat[r[:, None], cols[None, :]]
        try:
            check_finite_rows(name, out)
        except ArrayFileError as exc:
            raise ArrayFileError(f"{exc} (in the block of rows {rows[:3].tolist()}... read from it)") from None
        return out

    def _symmetric_block(self, mat: np.ndarray, name: str, idx: np.ndarray, dtype: DTypeLike) -> np.ndarray:
        G = self._read(mat, name, idx, idx, np.float64)
        scale = float(np.max(np.abs(G))) if G.size else 0.0
        asym = float(np.max(np.abs(G - G.T))) if G.size else 0.0
        if asym > SYMMETRY_RTOL * max(scale, 1e-300):
            i, j = np.unravel_index(int(np.argmax(np.abs(G - G.T))), G.shape)
            a, b = int(idx[i]), int(idx[j])
            raise ArrayFileError(f"{name}: K(train, train) is not symmetric: K[{a}, {b}] = {float(G[i, j])!r} but "
                                 f"K[{b}, {a}] = {float(G[j, i])!r} (max |K - K.T| = {asym:.3g}, largest |entry| = "
                                 f"{scale:.3g})")
        G = np.triu(G) + np.triu(G, 1).T  # exactly symmetric, from the upper triangle (as `_tiles` mirrors)
        return G.astype(dtype, copy=False)

    def _evaluate(self, x1: ArrayLike, x2: ArrayLike | None, kind: str, block_size: int | None,
                  dtype: DTypeLike) -> np.ndarray:
        _check_kind(kind)
        dtype = _check_dtype(dtype)
        a, b, symmetric = self._inputs(x1, x2)
        mat, name, rows, cols = self._source(a, b, kind)
        if symmetric:
            return self._symmetric_block(mat, name, rows, dtype)
        return self._read(mat, name, rows, cols, dtype)

    def _tiles(self, a: np.ndarray, b: np.ndarray, symmetric: bool, kind: str, block_size: int | None,
               dtype: DTypeLike) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        """One tile: the whole (checked, exactly symmetric) block, read in row chunks (see `_read`)."""
        mat, name, rows, cols = self._source(a, b, kind)
        block = self._symmetric_block(mat, name, rows, dtype) if symmetric else self._read(mat, name, rows, cols, dtype)
        if block.size:
            yield 0, len(a), 0, len(b), block

    def _tile(self, x1: TileInput, x2: TileInput, offset: int, kind: str) -> TileInput:
        """K(x1, x2) for index rows (`_evaluate` and `_tiles` read whole blocks instead of tiles)."""
        a, b = self._prepare(x1, "x1"), self._prepare(x2, "x2")
        mat, name, rows, cols = self._source(a, b, kind)
        return self._read(mat, name, rows, cols, np.float64)

    def check_files(self) -> None:
        """Scan the whole files in row blocks: finiteness of both, symmetry of K(train, train) within 1e-8 of
        its largest |entry|; ValueError (ArrayFileError) naming the file and the first offending entry."""
        check_finite_rows(self.train_name, self.train_train)
        if self.test_train is not None:
            check_finite_rows(str(self.test_name), self.test_train)
        n = self.num_train
        side = max(1, math.isqrt(max(1, self.max_block_bytes // 16)))
        scale = 0.0
        for r0 in range(0, n, side):
            scale = max(scale, float(np.max(np.abs(np.asarray(self.train_train[r0:r0 + side])))))
        for r0 in range(0, n, side):
            for c0 in range(r0, n, side):
                A = np.asarray(self.train_train[r0:r0 + side, c0:c0 + side], np.float64)
                B = np.asarray(self.train_train[c0:c0 + side, r0:r0 + side], np.float64).T
                diff = np.abs(A - B)
                if diff.size and diff.max() > SYMMETRY_RTOL * max(scale, 1e-300):
                    i, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
                    a, b = r0 + int(i), c0 + int(j)
                    raise ArrayFileError(f"{self.train_name}: K(train, train) is not symmetric: K[{a}, {b}] = "
                                         f"{float(A[i, j])!r} but K[{b}, {a}] = {float(B[i, j])!r} (largest |entry| "
                                         f"= {scale:.3g})")


# --------------------------------------------------------------------------- streaming reductions
def row_abs_sums(kernel: Kernel, x: ArrayLike, *, kind: str = "ntk", block_size: int | None = None) -> np.ndarray:
    """`sum_j |K_ij|` for every row of the training Gram K = kernel(x, x), shape (n,), float64.

    Streams over the upper tiles of the symmetric Gram (each tile adds its row sums to its rows and,
    off the diagonal, its column sums to its columns), so memory stays at one tile.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a kernelcert Kernel, got {type(kernel).__name__}")
    _check_kind(kind)
    a = kernel._prepare(x, "x")
    sums = np.zeros(len(a))
    for r0, r1, c0, c1, tile in kernel._tiles(a, a, True, kind, block_size, np.float64):
        mag = np.abs(tile)
        sums[r0:r1] += mag.sum(axis=1)
        if c0 > r0:
            sums[c0:c1] += mag.sum(axis=0)
    return sums


def max_abs_row_sum(kernel: Kernel, x: ArrayLike, *, kind: str = "ntk", block_size: int | None = None) -> float:
    """Upper bound on `max_i sum_j |K_ij|` of the training Gram, without materialising it (docs/math.md §2).

    `C_max = 1 / max_abs_row_sum(...)`. The float64 row sums are rounded up by a relative
    `1e-12 + 4 n eps`, which covers the summation rounding (at most (n - 1) eps relative for
    non-negative terms) and last-bit differences between tilings, so any C <= 1 / (returned value)
    satisfies the small-C condition for the Gram this module computes.
    """
    sums = row_abs_sums(kernel, x, kind=kind, block_size=block_size)
    if sums.size == 0:
        raise ValueError("x is empty")
    slack = 1e-12 + 4 * len(sums) * np.finfo(np.float64).eps
    return float(np.nextafter(np.max(sums) * (1.0 + slack), np.inf))


__all__ = ["CompileCounter", "tile_grid_ceil", "tile_grid_floor", "TILE_GRID_STEPS", "Kernel", "FullyConnected", "Convolutional", "CustomKernel", "PrecomputedKernel", "row_abs_sums",
           "max_abs_row_sum", "DEFAULT_MAX_BLOCK_BYTES"]
