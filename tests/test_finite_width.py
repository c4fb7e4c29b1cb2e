"""Finite-width networks (kernelcert.finite): forward pass, NTK conventions, training, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from kernelcert import finite
from kernelcert.kernels import FullyConnected
from kernelcert.learners import KernelRegression


def _numpy_forward(params, x):
    """Independent float64 forward pass: Dense(h) = W_std/sqrt(fan_in) * h @ W + b_std * b, act between."""
    act = (lambda h: np.maximum(h, 0.0)) if params.activation == "relu" else scipy.special.erf
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    n_layers = len(params.weights)
    for i, (W, b) in enumerate(zip(params.weights, params.biases)):
        W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
        h = params.W_std / np.sqrt(W.shape[0]) * h @ W + params.b_std * b
        if i < n_layers - 1:
            h = act(h)
    return h


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("activation, depth", [("relu", 2), ("erf", 1), ("relu", 0)])
def test_apply_matches_numpy_forward(activation, depth):
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(20, 3, 4))  # flattened to 12 features
    p = finite.init_params(depth, 12, 64, depth, 3, W_std=1.3, b_std=0.4, activation=activation)
    assert (p.depth, p.input_dim, p.num_outputs) == (depth, 12, 3)
    assert all(np.asarray(W).dtype == np.float32 for W in p.weights)
    out = np.asarray(finite.apply(p, x))
    assert out.shape == (20, 3)
    np.testing.assert_allclose(out, _numpy_forward(p, x), rtol=1e-4, atol=1e-5)
    # traceable: jit gives the same outputs
    np.testing.assert_allclose(np.asarray(jax.jit(finite.apply)(p, jnp.asarray(x, jnp.float32))), out, rtol=1e-5,
                               atol=1e-6)


def _jacobian_ntk(p, x, out_a=0, out_b=0):
    """J_a J_b^T from jax.jacobian of apply, flattened over every parameter (independent of finite.empirical_ntk)."""
    xj = jnp.asarray(x, jnp.float32)
    J = jax.jacobian(lambda q: finite.apply(q, xj))(p)  # leaves (N, K, *param_shape)
    flat = np.concatenate([np.asarray(leaf, np.float64).reshape(len(x), p.num_outputs, -1)
                           for leaf in jax.tree_util.tree_leaves(J)], axis=2)
    return flat[:, out_a] @ flat[:, out_b].T


@pytest.mark.parametrize("activation, W_std, b_std", [("relu", 1.4, 0.3), ("erf", 1.0, 0.1)])
def test_empirical_ntk_matches_analytic_kernel(activation, W_std, b_std):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8))
    p = finite.init_params(jax.random.PRNGKey(3), 8, 4096, 1, 2, W_std=W_std, b_std=b_std, activation=activation)
    analytic = FullyConnected(1, W_std, b_std, activation=activation).ntk(x)
    emp = _jacobian_ntk(p, x)
    assert _rel(emp, analytic) < 0.1
    # other output: same kernel; cross-output block vanishes as width grows
    assert _rel(_jacobian_ntk(p, x, 1, 1), analytic) < 0.1
    assert np.linalg.norm(_jacobian_ntk(p, x, 0, 1)) < 0.1 * np.linalg.norm(analytic)
    np.testing.assert_allclose(finite.empirical_ntk(p, x), emp, rtol=1e-4, atol=1e-6 * np.abs(emp).max())
    assert isinstance(p.kernel(), FullyConnected) and p.kernel().activation == activation


def test_empirical_ntk_depth2_and_cross_inputs():
    rng = np.random.default_rng(2)
    x1, x2 = rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    analytic = FullyConnected(2, 1.4, 0.2).ntk(x1, x2)
    # depth 2 fluctuates more: average the empirical NTK of 4 independent initialisations
    emp = np.mean([finite.empirical_ntk(finite.init_params(s, 5, 2048, 2, 1, W_std=1.4, b_std=0.2), x1, x2)
                   for s in range(4)], axis=0)
    assert emp.shape == (4, 3)
    assert _rel(emp, analytic) < 0.12


@pytest.mark.parametrize("center", [True, False])
def test_training_reduces_loss(center):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 6)), rng.integers(0, 3, 20)
    p = finite.init_params(0, 6, 64, 1, 3, W_std=1.4, b_std=0.1)
    net = finite.train(p, x, y, steps=300, center=center)
    assert net.loss.shape == (301,) and net.steps == 300
    assert net.learning_rate == pytest.approx(finite.gd_learning_rate(p, x))
    assert net.loss[-1] < 0.2 * net.loss[0]
    assert np.all(np.diff(net.loss) <= 1e-4 * net.loss[0])  # GD below 2/lambda_max on a near-linear model
    if center:  # g = f - f0 starts at zero, so the first loss is 0.5 * ||onehot(y)||^2
        assert net.loss[0] == pytest.approx(0.5 * 20, rel=1e-5)
    assert (net.predict(x) == y).mean() >= 0.9
    assert net.decision_function(x).dtype == np.float64


def test_wide_network_tracks_finite_time_kernel_regression():
    """Centred GD at large width ~ kernel regression at the same training time (zero init, ridge 0)."""
    rng = np.random.default_rng(5)
    x, xt, y = rng.normal(size=(20, 6)), rng.normal(size=(10, 6)), rng.integers(0, 2, 20)
    kern = FullyConnected(1, 1.4, 0.1)
    steps = 100
    dists = []
    for width in (64, 4096):
        p = finite.init_params(7, 6, width, 1, 2, W_std=1.4, b_std=0.1)
        net = finite.train(p, x, y, steps=steps)
        krr = KernelRegression(train_time=steps, learning_rate=net.learning_rate).fit(kern.ntk(x), y, 2)
        dists.append(_rel(net.decision_function(xt), krr.decision_function(kern.ntk(xt, x))))
    assert dists[1] < 0.1
    assert dists[1] < dists[0]


def test_train_many_matches_train():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(12, 4))
    Y = rng.integers(0, 2, size=(3, 12))
    p = finite.init_params(1, 4, 32, 1, 2)
    many = finite.train_many(p, x, Y, steps=50, learning_rate=0.05)
    for row, net in zip(Y, many):
        one = finite.train(p, x, row, steps=50, learning_rate=0.05)
        np.testing.assert_allclose(net.decision_function(x), one.decision_function(x), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(net.loss, one.loss, rtol=1e-4)
    assert not np.allclose(many[0].decision_function(x), many[1].decision_function(x))


def test_bad_input():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(10, 4)), rng.integers(0, 2, 10)
    p = finite.init_params(0, 4, 16, 1, 2)
    with pytest.raises(ValueError, match="input_dim"):
        finite.apply(p, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="NaN"):
        finite.apply(p, np.where(np.eye(10, 4) > 0, np.nan, x))
    with pytest.raises(ValueError, match="dimensions"):
        finite.apply(p, np.ones(4))
    with pytest.raises(ValueError, match="num_classes"):
        finite.train(p, x, np.full(10, 2), steps=1)
    with pytest.raises(ValueError, match="outputs"):
        finite.train(p, x, y, num_classes=3, steps=1)
    with pytest.raises(ValueError, match="samples"):
        finite.train(p, x[:9], y, steps=1)
    with pytest.raises(ValueError, match="learning_rate"):
        finite.train(p, x, y, steps=1, learning_rate=-1.0)
    with pytest.raises(ValueError, match="steps"):
        finite.train(p, x, y, steps=-1)
    with pytest.raises(ValueError, match="factor"):
        finite.gd_learning_rate(p, x, factor=2.0)
    with pytest.raises(FloatingPointError, match="diverged"):
        finite.train(p, x, y, steps=200, learning_rate=50.0 * finite.gd_learning_rate(p, x))
    with pytest.raises(TypeError, match="Params"):
        finite.apply({"weights": p.weights}, x)
    with pytest.raises(ValueError, match="activation"):
        finite.init_params(0, 4, 16, 1, 2, activation="tanh")
    with pytest.raises(ValueError, match="width"):
        finite.init_params(0, 4, 0, 1, 2)
    with pytest.raises(ValueError, match="W_std"):
        finite.init_params(0, 4, 8, 1, 2, W_std=0.0)
    with pytest.raises(TypeError, match="key"):
        finite.init_params("seed", 4, 8, 1, 2)
