"""Finite-width fully connected networks in the NTK parameterization, trained by full-batch gradient descent.

This is the finite counterpart of `kernels.FullyConnected` (docs/math.md §2): the same architecture with
`width` hidden units per layer instead of infinitely many, written to match neural-tangents'
`stax` conventions exactly:

    stax.serial(*[Dense(width, W_std, b_std), act] * depth, Dense(num_outputs, W_std, b_std))

with parameterization "ntk": a Dense layer maps `h -> (W_std / sqrt(fan_in)) * h @ W + b_std * b`
with every entry of `W` (fan_in, fan_out) and `b` (fan_out,) drawn from N(0, 1); `act` is ReLU or
erf (neural-tangents' `Erf()` with its defaults, i.e. plain erf). Inputs (N, ...) are flattened.
As `width -> inf` the empirical NTK `J(x) J(x')^T` of every output converges to
`FullyConnected(depth, W_std, b_std, activation).ntk(x, x')` (and the cross-output blocks to 0).

Training (`train`, `train_many`): full-batch gradient descent on the squared loss
`0.5 * ||g(X) - Y||^2` (summed over samples and outputs, `Y` one-hot with K = num_outputs columns)
for a fixed number of steps with step size `eta`. The trained function is CENTRED by default:
`g(x) = f(x; theta) - f(x; theta_0)`, i.e. the network's output minus its (frozen) output at
initialisation, so `g = 0` before training. In the linearised (infinite-width) regime gradient
descent on this loss is kernel regression from zero initialisation: after `T` steps
`g_T(x) = Θ(x, X) Θ^-1 (I - (I - eta Θ)^T) Y`, which converges (T -> inf, eta < 2/λ_max) to
`KernelRegression(ridge=0)` and, for small eta, tracks the gradient-flow model
`KernelRegression(train_time=T, learning_rate=eta)` (the two spectral filters differ by at most
about 0.27 / T). With `center=False` the raw network `f` is trained instead; its linearised limit is
`f_0 + ` kernel regression on the residual targets `Y - f_0(X)`, which is not label-linear in the
same way (it carries the random initial function `f_0`).

The default step size is `1 / λ_max(Θ(X, X))` from the analytic NTK (`gd_learning_rate`):
gradient descent on the linearised model is stable iff `eta < 2 / λ_max`; the factor 1 leaves room
for the finite-width fluctuation of the empirical NTK. Training runs in float32 under `jax.jit`
(a `lax.scan` over the steps); nothing here touches JAX's global configuration. Use this module for
experiments comparing finite networks with their kernel limit; the certificates of this package
are about the kernel models, not about these networks (see docs/math.md, "Guarantees and limits").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import scipy.linalg

from ._validation import as_float_array, check_int, check_labels, check_positive
from .kernels import FullyConnected

_ACTIVATIONS = ("relu", "erf")


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True, eq=False)
class Params:
    """Parameters of a finite FullyConnected network (a JAX pytree; the float fields are static).

    weights[l] (fan_in, fan_out) and biases[l] (fan_out,), float32, one pair per Dense layer
    (`depth` hidden layers, then the readout), all drawn N(0, 1) at initialisation; the NTK
    parameterization scales them in `apply`.
    """

    weights: tuple[jax.Array, ...]
    biases: tuple[jax.Array, ...]
    W_std: float = 1.0
    b_std: float = 0.0
    activation: str = "relu"

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.weights) - 1

    @property
    def input_dim(self) -> int:
        """Number of input features (inputs are flattened)."""
        return int(self.weights[0].shape[0])

    @property
    def width(self) -> int | None:
        """Hidden width (None for depth 0, a linear model)."""
        return int(self.weights[0].shape[1]) if self.depth > 0 else None

    @property
    def num_outputs(self) -> int:
        """Number of outputs (one per class)."""
        return int(self.weights[-1].shape[1])

    def kernel(self) -> FullyConnected:
        """The infinite-width kernel of this architecture, `kernels.FullyConnected(depth, W_std, b_std, act)`."""
        return FullyConnected(self.depth, self.W_std, self.b_std, activation=self.activation)

    def __repr__(self) -> str:
        return (f"Params(input_dim={self.input_dim}, width={self.width}, depth={self.depth}, "
                f"num_outputs={self.num_outputs}, W_std={self.W_std}, b_std={self.b_std}, "
                f"activation={self.activation!r})")


jax.tree_util.register_dataclass(Params, data_fields=["weights", "biases"],
                                 meta_fields=["W_std", "b_std", "activation"])


def _as_key(key: jax.Array | int) -> jax.Array:
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        if key < 0:
            raise ValueError(f"seed must be non-negative, got {key}")
        return jax.random.PRNGKey(int(key))
    try:
        arr = jnp.asarray(key)
    except TypeError:
        raise TypeError(f"key must be a jax PRNG key or a non-negative int seed, got {key!r}") from None
    if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key) or (arr.shape == (2,) and arr.dtype == jnp.uint32):
        return arr
    raise TypeError(f"key must be a jax PRNG key or a non-negative int seed, got {key!r}")


def init_params(key: jax.Array | int, input_dim: int, width: int, depth: int, num_outputs: int, *, W_std: float = 1.0,
                b_std: float = 0.0, activation: str = "relu") -> Params:
    """Draw the parameters of `depth` hidden layers of `width` units and a `num_outputs` readout.

    `key`: a jax PRNG key or an int seed. All weights and biases are N(0, 1), float32 (NTK
    parameterization: the scale lives in `apply`). depth=0 gives a linear model (no hidden layer;
    `width` is then ignored but must still be a positive integer).
    """
    key = _as_key(key)
    input_dim = check_int("input_dim", input_dim, minimum=1)
    width = check_int("width", width, minimum=1)
    depth = check_int("depth", depth, minimum=0)
    num_outputs = check_int("num_outputs", num_outputs, minimum=1)
    W_std = check_positive("W_std", W_std)
    b_std = check_positive("b_std", b_std, allow_zero=True)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    dims = [input_dim] + [width] * depth + [num_outputs]
    keys = jax.random.split(key, 2 * (depth + 1))
    weights = tuple(jax.random.normal(keys[2 * i], (dims[i], dims[i + 1]), jnp.float32) for i in range(depth + 1))
    biases = tuple(jax.random.normal(keys[2 * i + 1], (dims[i + 1],), jnp.float32) for i in range(depth + 1))
    return Params(weights, biases, W_std, b_std, activation)


def _check_params(params: object) -> Params:
    if not isinstance(params, Params):
        raise TypeError(f"params must be kernelcert.finite.Params (from init_params), got {type(params).__name__}")
    return params


# --------------------------------------------------------------------------- forward pass
def _forward(params: Params, x: jax.Array) -> jax.Array:
    """Network outputs (N, num_outputs) for flattened inputs x (N, input_dim); traceable."""
    act: Callable[[jax.Array], jax.Array] = jax.nn.relu if params.activation == "relu" else jax.scipy.special.erf
    h = x
    last = len(params.weights) - 1
    for i, (W, b) in enumerate(zip(params.weights, params.biases)):
        h = (params.W_std / math.sqrt(W.shape[0])) * (h @ W) + params.b_std * b
        if i < last:
            h = act(h)
    return h


def _flat_inputs(params: Params, x: npt.ArrayLike | jax.Array, name: str = "x") -> jax.Array:
    """Flatten (N, ...) to (N, input_dim) float32; checks shape, and finiteness for concrete inputs."""
    if isinstance(x, jax.core.Tracer):
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (N, ...) with at least 2 dimensions, got {x.shape}")
        flat = x.reshape(x.shape[0], -1)
    else:
        arr = as_float_array(name, x, dtype=np.float32)
        if arr.ndim < 2:
            raise ValueError(f"{name} must have shape (N, ...) with at least 2 dimensions, got {arr.shape}")
        flat = jnp.asarray(arr.reshape(arr.shape[0], -1))
    if flat.shape[1] != params.input_dim:
        raise ValueError(f"{name} has {flat.shape[1]} features per sample but the network expects "
                         f"input_dim={params.input_dim}")
    return flat.astype(jnp.float32)


def apply(params: Params, x: npt.ArrayLike | jax.Array) -> jax.Array:
    """Network outputs f(x) of shape (N, num_outputs) for inputs x (N, ...) (flattened); float32.

    A pure JAX function (jit / grad / jacobian work on it); concrete inputs are validated (shape,
    NaN/inf). Wrap the result in `np.asarray` for a numpy array.
    """
    params = _check_params(params)
    return _forward(params, _flat_inputs(params, x))


def empirical_ntk(params: Params, x1: npt.ArrayLike, x2: npt.ArrayLike | None = None, *, output: int = 0) -> np.ndarray:
    """Empirical NTK of one output, `J(x1) J(x2)^T` over all parameters, shape (N1, N2), float64.

    J is the Jacobian of `apply(params, x)[:, output]` with respect to every weight and bias
    (`jax.jacrev`), so memory is O((N1 + N2) * #params): meant for small checks.
    """
    params = _check_params(params)
    output = check_int("output", output, minimum=0, maximum=params.num_outputs - 1)
    a = _flat_inputs(params, x1, "x1")
    b = a if x2 is None else _flat_inputs(params, x2, "x2")

    def jac(x: jax.Array) -> jax.Array:
        J = jax.jacrev(lambda p: _forward(p, x)[:, output])(params)
        return jnp.concatenate([leaf.reshape(x.shape[0], -1) for leaf in jax.tree_util.tree_leaves(J)], axis=1)

    Ja = np.asarray(jac(a), dtype=np.float64)
    Jb = Ja if x2 is None else np.asarray(jac(b), dtype=np.float64)
    return Ja @ Jb.T


# --------------------------------------------------------------------------- training
def gd_learning_rate(params: Params, x: npt.ArrayLike | jax.Array, factor: float = 1.0) -> float:
    """`factor / λ_max(Θ(X, X))` with Θ the analytic NTK of the architecture (float64).

    Gradient descent on the linearised model with the summed squared loss is stable iff
    `eta < 2 / λ_max`, so `factor` must lie in (0, 2).
    """
    params = _check_params(params)
    factor = check_positive("factor", factor)
    if factor >= 2.0:
        raise ValueError(f"factor must be < 2 (gradient descent diverges for eta >= 2 / lambda_max), got {factor}")
    flat = np.asarray(_flat_inputs(params, x), dtype=np.float64)
    gram = params.kernel().ntk(flat)
    top = gram.shape[0] - 1
    lam = float(scipy.linalg.eigvalsh(gram, subset_by_index=[top, top], check_finite=False)[0])
    if not lam > 0:
        raise ValueError("the NTK Gram of x is zero; no learning rate can be derived")
    return factor / lam


@dataclass(frozen=True, eq=False)
class TrainedNetwork:
    """A network after `steps` full-batch gradient-descent steps of size `learning_rate`.

    params / init: final and initial parameters; center: whether the model is `f - f_0` (default)
    or `f`; loss (steps + 1,) float64: the training loss before every step and after the last one.
    """

    params: Params
    init: Params
    center: bool
    learning_rate: float
    steps: int
    loss: np.ndarray

    def decision_function(self, x: npt.ArrayLike) -> np.ndarray:
        """Outputs (N, K) float64 of the trained model: f(x) - f_0(x) (center=True) or f(x)."""
        flat = _flat_inputs(self.params, x)
        out = _forward(self.params, flat)
        if self.center:
            out = out - _forward(self.init, flat)
        return np.asarray(out, dtype=np.float64)

    def predict(self, x: npt.ArrayLike) -> np.ndarray:
        """Predicted classes (N,) int64: argmax of the outputs, ties to the smaller index."""
        return np.argmax(self.decision_function(x), axis=1).astype(np.int64)


def _gd(params: Params, x: jax.Array, targets: jax.Array, offset: jax.Array, lr: jax.Array,
        steps: int) -> tuple[Params, jax.Array, jax.Array]:
    """Full-batch GD on 0.5 ||f(X) - offset - Y||^2: final params, losses before each step, final loss."""

    def loss_fn(p: Params) -> jax.Array:
        r = _forward(p, x) - offset - targets
        return 0.5 * jnp.sum(r * r)

    def step(p: Params, _: None) -> tuple[Params, jax.Array]:
        loss, grad = jax.value_and_grad(loss_fn)(p)
        return jax.tree_util.tree_map(lambda w, g: w - lr * g, p, grad), loss

    final, losses = jax.lax.scan(step, params, None, length=steps)
    return final, losses, loss_fn(final)


# one jitted run for B label sets: vmapped over the targets (axis 0), `steps` static (the scan length)
_gd_many = jax.jit(jax.vmap(_gd, in_axes=(None, None, 0, None, None, None)), static_argnames=("steps",))


def _train_inputs(params: Params, x: npt.ArrayLike, label_sets: npt.ArrayLike, num_classes: int | None, steps: int,
                  learning_rate: float | None, center: bool
                  ) -> tuple[Params, jax.Array, jax.Array, jax.Array, float, int, bool]:
    params = _check_params(params)
    flat = _flat_inputs(params, x)
    labels = np.asarray(label_sets)
    if labels.ndim != 2:
        raise ValueError(f"label sets must have shape (B, n), got {labels.shape}")
    if labels.shape[1] != flat.shape[0]:
        raise ValueError(f"x has {flat.shape[0]} samples but the labels have {labels.shape[1]}")
    if labels.shape[0] == 0:
        raise ValueError("no label sets given")
    K = params.num_outputs
    if num_classes is not None and check_int("num_classes", num_classes, minimum=2) != K:
        raise ValueError(f"num_classes={num_classes} but the network has {K} outputs (one per class)")
    checked = [check_labels(row, K, name="labels")[0] for row in labels]
    steps = check_int("steps", steps, minimum=0)
    if not isinstance(center, (bool, np.bool_)):
        raise TypeError(f"center must be True or False, got {center!r}")
    lr = gd_learning_rate(params, flat) if learning_rate is None else check_positive("learning_rate", learning_rate)
    targets = np.stack([(row[:, None] == np.arange(K)[None, :]) for row in checked]).astype(np.float32)
    offset = _forward(params, flat) if center else jnp.zeros((flat.shape[0], K), jnp.float32)
    return params, flat, jnp.asarray(targets), offset, float(lr), steps, bool(center)


def _finish(params: Params, init: Params, center: bool, lr: float, steps: int, losses: jax.Array,
            final: jax.Array) -> TrainedNetwork:
    history = np.concatenate([np.asarray(losses, np.float64).reshape(-1), [float(final)]])
    if not np.all(np.isfinite(history)):
        raise FloatingPointError(f"gradient descent diverged (loss became {history[~np.isfinite(history)][0]}) "
                                 f"with learning_rate={lr:.4g}; use a smaller one (stable iff < 2 / lambda_max)")
    return TrainedNetwork(params=params, init=init, center=center, learning_rate=lr, steps=steps, loss=history)


def train(params: Params, x: npt.ArrayLike, y: npt.ArrayLike, num_classes: int | None = None, *, steps: int,
          learning_rate: float | None = None, center: bool = True) -> TrainedNetwork:
    """Train from `params` with `steps` full-batch GD steps on `0.5 ||g(X) - onehot(y)||^2`.

    x (n, ...) inputs; y (n,) labels in 0..K-1 with K = num_outputs (num_classes, if given, must
    equal it). learning_rate None: `gd_learning_rate(params, x)` = 1 / λ_max of the analytic NTK.
    center=True trains g = f - f_0 (zero at initialisation; its infinite-width limit is kernel
    regression from zero), center=False trains f. Raises FloatingPointError if the loss diverges.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D (n,), got shape {labels.shape}")
    return train_many(params, x, labels[None, :], num_classes, steps=steps, learning_rate=learning_rate,
                      center=center)[0]


def train_many(params: Params, x: npt.ArrayLike, label_sets: npt.ArrayLike, num_classes: int | None = None, *,
               steps: int, learning_rate: float | None = None, center: bool = True) -> list[TrainedNetwork]:
    """`train` for B label vectors at once (label_sets (B, n)), all from the same initialisation.

    One vmapped, jitted run: memory and time grow linearly with B. Returns B TrainedNetworks.
    """
    p, flat, targets, offset, lr, steps, center = _train_inputs(params, x, label_sets, num_classes, steps,
                                                                learning_rate, center)
    final, losses, last = _gd_many(p, flat, targets, offset, jnp.float32(lr), steps)
    out: list[TrainedNetwork] = []
    for i in range(targets.shape[0]):
        pi = jax.tree_util.tree_map(lambda a, i=i: a[i], final)
        out.append(_finish(pi, p, center, lr, steps, losses[i], last[i]))
    return out


__all__ = ["Params", "TrainedNetwork", "init_params", "apply", "empirical_ntk", "gd_learning_rate", "train",
           "train_many"]
