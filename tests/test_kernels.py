"""Kernels against an independent float64 numpy reference of the NTK/NNGP recursions."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert._jax import default_device, x64_scope
from kernelcert.kernels import (
    TILE_GRID_STEPS,
    CompileCounter,
    Convolutional,
    CustomKernel,
    FullyConnected,
    PrecomputedKernel,
    _fc_tile,
    max_abs_row_sum,
    row_abs_sums,
    tile_grid_ceil,
    tile_grid_floor,
)


# ----------------------------------------------------------------------------- numpy reference
def _act_np(act, k12, v1, v2, same=None):
    """(E[φφ], E[φ'φ']) for covariance [[v1_i, k12_ij], [k12_ij, v2_j]]; `same` marks identical inputs."""
    if act == "relu":
        norm = np.sqrt(np.outer(v1, v2))
        cos = np.clip(k12 / norm, -1, 1)
        if same is not None:
            cos = np.where(same, 1.0, cos)
        th = np.arccos(cos)
        return norm * (np.sin(th) + (np.pi - th) * cos) / (2 * np.pi), (np.pi - th) / (2 * np.pi)
    prod = np.outer(1 + 2 * v1, 1 + 2 * v2)
    if same is not None:
        k12 = np.where(same, np.sqrt(np.outer(v1, v2)), k12)
    return (2 / np.pi) * np.arcsin(2 * k12 / np.sqrt(prod)), (4 / np.pi) / np.sqrt(prod - 4 * k12**2)


def fc_reference(x1, x2, depth, W, b, act, same=None):
    """Dense -> (act -> Dense) * depth, tracking (NNGP, NTK); variances from their own diagonal recursion."""
    d = x1.shape[1]
    k12 = W**2 * x1 @ x2.T / d + b**2
    v1 = W**2 * (x1 * x1).sum(1) / d + b**2
    v2 = W**2 * (x2 * x2).sum(1) / d + b**2
    ntk = k12.copy()
    for _ in range(depth):
        kn, kd = _act_np(act, k12, v1, v2, same)
        k12 = W**2 * kn + b**2
        ntk = W**2 * ntk * kd + k12
        v1 = W**2 * np.diag(_act_np(act, np.diag(v1), v1, v1, np.eye(len(v1), dtype=bool))[0]) + b**2
        v2 = W**2 * np.diag(_act_np(act, np.diag(v2), v2, v2, np.eye(len(v2), dtype=bool))[0]) + b**2
    return k12, ntk


def conv_reference(x1, x2, depth, fs, W, b, act, readout):
    """Full spatial covariance (N, N, H, W, H, W) over all images, loops over positions and filter offsets."""
    n1 = len(x1)
    allx = np.concatenate([x1, x2])
    n, H, Wd, C = allx.shape
    fh, fw = fs
    ph, pw = (fh - 1) // 2, (fw - 1) // 2
    pos = [(h, w) for h in range(H) for w in range(Wd)]

    def conv(m):
        out = np.zeros_like(m)
        for h, w in pos:
            for x, y in pos:
                for i in range(fh):
                    for j in range(fw):
                        u, v, u2, v2 = h + i - ph, w + j - pw, x + i - ph, y + j - pw
                        if 0 <= u < H and 0 <= v < Wd and 0 <= u2 < H and 0 <= v2 < Wd:
                            out[:, :, h, w, x, y] += m[:, :, u, v, u2, v2]
        return out / (fh * fw)

    def act_layer(k):
        post, dot = np.zeros_like(k), np.zeros_like(k)
        eye = np.eye(n, dtype=bool)
        for h, w in pos:
            for x, y in pos:
                same = eye if (h, w) == (x, y) else None
                post[:, :, h, w, x, y], dot[:, :, h, w, x, y] = _act_np(
                    act, k[:, :, h, w, x, y], k[np.arange(n), np.arange(n), h, w, h, w],
                    k[np.arange(n), np.arange(n), x, y, x, y], same)
        return post, dot

    k = np.einsum("ahwc,bxyc->abhwxy", allx, allx) / C
    if depth == 0:
        k_post, th_post = k, np.zeros_like(k)
    else:
        k = W**2 * conv(k) + b**2
        ntk = k.copy()
        for layer in range(depth):
            k_post, kd = act_layer(k)
            th_post = ntk * kd
            if layer < depth - 1:
                k = W**2 * conv(k_post) + b**2
                ntk = W**2 * conv(th_post) + k
    if readout == "flatten":
        k_post = np.stack([k_post[:, :, h, w, h, w] for h, w in pos], -1)
        th_post = np.stack([th_post[:, :, h, w, h, w] for h, w in pos], -1)
    axes = tuple(range(2, k_post.ndim))
    k_out = W**2 * k_post.mean(axes) + b**2
    ntk_out = W**2 * th_post.mean(axes) + k_out
    return k_out[:n1, n1:], ntk_out[:n1, n1:], k_out[:n1, :n1], ntk_out[:n1, :n1]


# ----------------------------------------------------------------------------- fully connected
@settings(max_examples=15, deadline=None)
@given(depth=st.integers(0, 4), W=st.floats(0.5, 2.0), b=st.floats(0.0, 1.0), act=st.sampled_from(["relu", "erf"]),
       seed=st.integers(0, 10**6))
def test_fully_connected_matches_numpy_reference(depth, W, b, act, seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(5, 7)), rng.uniform(-1, 2, size=(4, 7))
    k = FullyConnected(depth, W, b, act)
    nngp_ref, ntk_ref = fc_reference(x1, x2, depth, W, b, act)
    ntk = k.ntk(x1, x2)
    assert ntk.dtype == np.float64 and ntk.shape == (5, 4)
    np.testing.assert_allclose(ntk, ntk_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(k.nngp(x1, x2), nngp_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(k(x1, x2, kind="nngp"), nngp_ref, rtol=1e-10, atol=1e-13)
    # symmetric Gram, diagonal included (the reference also sets the correlation of a point with itself to 1)
    nngp_sym, ntk_sym = fc_reference(x1, x1, depth, W, b, act, same=np.eye(5, dtype=bool))
    np.testing.assert_allclose(k.ntk(x1), ntk_sym, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(k.nngp(x1), nngp_sym, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_exact_diagonal_closed_form(act):
    """Diagonal entries equal the variance-only closed form (angle exactly 0) to the last bits."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 12)) * rng.uniform(0.1, 3, size=(30, 1))
    W, b, depth = 1.3, 0.2, 3
    v = W**2 * (x * x).sum(1) / 12 + b**2
    ntk = v.copy()
    for _ in range(depth):
        if act == "relu":
            post, dot = v / 2, 0.5
        else:
            post, dot = (2 / np.pi) * np.arcsin(2 * v / (1 + 2 * v)), (4 / np.pi) / np.sqrt(1 + 4 * v)
        v = W**2 * post + b**2
        ntk = W**2 * ntk * dot + v
    k = FullyConnected(depth, W, b, act)
    np.testing.assert_allclose(np.diag(k.ntk(x, block_size=7)), ntk, rtol=1e-14)
    np.testing.assert_allclose(np.diag(k.nngp(x)), v, rtol=1e-14)


def test_gram_symmetric_psd():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 10))
    x[5] = x[4] * (1 + 1e-9)  # nearly parallel pair: correlation clipped into [-1, 1]
    for k in (FullyConnected(3, 1.5, 0.1), FullyConnected(2, 1.0, 0.0, "erf")):
        for K in (k.ntk(x, block_size=16), k.nngp(x)):
            assert np.array_equal(K, K.T)
            assert np.all(np.isfinite(K))
            assert np.linalg.eigvalsh(K).min() >= -1e-8 * np.abs(K).max()


@settings(max_examples=8, deadline=None)
@given(n1=st.integers(1, 20), n2=st.integers(1, 20), block=st.integers(1, 25), seed=st.integers(0, 10**6))
def test_blocked_equals_unblocked(n1, n2, block, seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(n1, 6)), rng.normal(size=(n2, 6))
    k = FullyConnected(2, 1.2, 0.3)
    np.testing.assert_allclose(k.ntk(x1, x2, block_size=block), k.ntk(x1, x2), rtol=1e-12)
    np.testing.assert_allclose(k.nngp(x1, block_size=block), k.nngp(x1), rtol=1e-12)
    # symmetric Gram equals the general evaluation off the diagonal
    full = k.ntk(x1, x1, block_size=block)
    sym = k.ntk(x1, block_size=block)
    off = ~np.eye(n1, dtype=bool)
    np.testing.assert_allclose(sym[off], full[off], rtol=1e-12)


def test_tile_grid():
    grid = sorted({tile_grid_ceil(n) for n in range(1, 5000)})
    for n in range(1, 5000):
        up, down = tile_grid_ceil(n), tile_grid_floor(n)
        assert down <= n <= up and up in grid and down in grid
        assert up - n <= n // TILE_GRID_STEPS  # at most 1/16 padding
        assert tile_grid_ceil(up) == up and tile_grid_floor(up) == up
    # a factor-2 range of sizes maps to at most TILE_GRID_STEPS + 1 grid sides
    assert len({tile_grid_ceil(n) for n in range(1000, 2001)}) <= TILE_GRID_STEPS + 1


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_padding_to_the_grid_keeps_every_entry_bit_identical(act):
    """Tiles are zero-padded to the grid: the real entries equal an unpadded evaluation bit for bit."""
    rng = np.random.default_rng(11)
    k = FullyConnected(2, 1.3, 0.0 if act == "relu" else 0.2, act)  # b_std = 0: zero padding rows have variance 0
    x, xt = rng.random((61, 50)), rng.random((7, 50))

    def unpadded(a, b, offset):
        with x64_scope():
            return np.asarray(_fc_tile(a, b, offset, k.W_std, k.b_std, depth=k.depth, activation=k.activation,
                                       kind="ntk"))

    for n in (33, 47, 61):  # grid sides 34, 48, 62: one to three padding rows
        assert tile_grid_ceil(n) > n or n == 48
        G = k.ntk(x[:n])
        ref = unpadded(x[:n], x[:n], 0)
        ref = np.triu(ref) + np.triu(ref, 1).T
        assert np.array_equal(G, ref)
        assert np.array_equal(k.ntk(xt, x[:n]), unpadded(xt, x[:n], n + len(xt)))


def test_compiles_bounded_over_many_sizes():
    """Grams and test rows of 60 different training-set sizes compile at most a grid's worth of programs."""
    rng = np.random.default_rng(12)
    k = FullyConnected(1, 1.1, 0.1)
    x, xt = rng.random((700, 8)), rng.random((5, 8))
    k.ntk(x[:600])  # warm-up: other programs JAX builds once
    sizes = range(600, 660)
    with CompileCounter() as cc:
        for n in sizes:
            k.ntk(x[:n])
            k.ntk(xt, x[:n])
    grid = {tile_grid_ceil(n) for n in sizes}
    assert len(grid) <= 3 < len(sizes)
    assert cc.count <= 2 * len(grid)  # one symmetric and one test-row program per grid side


def test_memory_cap_drives_tiling():
    rng = np.random.default_rng(5)
    x, xt = rng.normal(size=(37, 9)), rng.normal(size=(3, 9))
    small = FullyConnected(2, 1.1, 0.2, max_block_bytes=20_000)
    a = small._prepare(x, "x")
    side = small.block_size_for(a, len(a))
    assert 1 <= side < 37 and side * side * small._bytes_per_entry(a, 8) <= 20_000
    big = FullyConnected(2, 1.1, 0.2)
    np.testing.assert_allclose(small.ntk(x), big.ntk(x), rtol=1e-12)
    np.testing.assert_allclose(small.ntk(xt, x), big.ntk(xt, x), rtol=1e-12)
    with pytest.raises(ValueError, match="max_block_bytes"):
        FullyConnected(1, max_block_bytes=0)
    with pytest.raises(ValueError, match="block_size"):
        big.ntk(x, block_size=0)


@pytest.mark.parametrize("kernel", [FullyConnected(2, 1.2, 0.3), FullyConnected(1, 0.9, 0.0, "erf"),
                                    Convolutional(1, (3, 3), 1.1, 0.1)])
def test_streaming_row_sums(kernel):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 4, 4, 2)) if isinstance(kernel, Convolutional) else rng.normal(size=(23, 6))
    for kind in ("ntk", "nngp"):
        dense = np.abs(kernel(x, kind=kind)).sum(1)
        for block in (4, 7, None):
            np.testing.assert_allclose(row_abs_sums(kernel, x, kind=kind, block_size=block), dense, rtol=1e-12)
            bound = max_abs_row_sum(kernel, x, kind=kind, block_size=block)
            assert dense.max() <= bound <= dense.max() * (1 + 1e-10)


def test_max_abs_row_sum_with_negative_entries():
    # erf kernels have negative entries for anti-correlated inputs: absolute values matter
    x = np.array([[1.0, 0.0], [-1.0, 0.1], [0.5, -2.0]])
    k = FullyConnected(1, 2.0, 0.0, "erf")
    K = k.ntk(x)
    assert K.min() < 0
    assert max_abs_row_sum(k, x) >= np.abs(K).sum(1).max() > K.sum(1).max()


# ----------------------------------------------------------------------------- convolutional
@pytest.mark.parametrize("depth,fs,act,readout,shape", [
    (0, (3, 3), "relu", "flatten", (4, 4, 2)),
    (1, (3, 3), "relu", "flatten", (4, 4, 2)),
    (2, (3, 3), "erf", "flatten", (4, 4, 2)),
    (2, (2, 3), "relu", "flatten", (3, 4, 2)),
    (0, (3, 3), "relu", "gap", (3, 3, 2)),
    (1, (3, 3), "relu", "gap", (3, 4, 2)),
    (2, (2, 2), "erf", "gap", (3, 3, 1)),
    (2, (3, 1), "relu", "gap", (3, 3, 2)),
])
def test_convolutional_matches_numpy_reference(depth, fs, act, readout, shape):
    rng = np.random.default_rng(depth + len(readout))
    x1, x2 = rng.normal(size=(3,) + shape), rng.uniform(-1, 1, size=(2,) + shape)
    W, b = 1.3, 0.2
    k = Convolutional(depth, fs, W, b, act, readout=readout)
    nngp_ref, ntk_ref, nngp_sym, ntk_sym = conv_reference(x1, x2, depth, fs, W, b, act, readout)
    np.testing.assert_allclose(k.ntk(x1, x2), ntk_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(k.nngp(x1, x2), nngp_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(k.ntk(x1, block_size=2), ntk_sym, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(k.nngp(x1), nngp_sym, rtol=1e-10, atol=1e-13)


def test_convolutional_blocked_symmetric_psd():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 5, 5, 3))
    k = Convolutional(2, (3, 3), 1.4, 0.1)
    K = k.ntk(x)
    assert np.array_equal(K, K.T)
    np.testing.assert_allclose(k.ntk(x, block_size=3), K, rtol=1e-12)
    part = k.ntk(x[:4], x, block_size=2)
    off = ~np.eye(4, 11, dtype=bool)  # a general evaluation has no exact diagonal: arccos near 1 loses ~1e-8
    np.testing.assert_allclose(part[off], K[:4][off], rtol=1e-12)
    np.testing.assert_allclose(np.diag(part), np.diag(K)[:4], rtol=1e-7)
    assert np.linalg.eigvalsh(K).min() >= -1e-8 * np.abs(K).max()


# ----------------------------------------------------------------------------- dtype and JAX state
def test_float32_close_to_float64():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 784))
    k = FullyConnected(2, 1.4, 0.1)
    k64, k32 = k.ntk(x), k.ntk(x, dtype=np.float32)
    assert k32.dtype == np.float32 and k64.dtype == np.float64
    assert np.max(np.abs(k32 - k64) / np.abs(k64)) < 1e-5
    with pytest.raises(ValueError, match="dtype"):
        k.ntk(x, dtype=np.int32)


def test_no_global_x64_side_effect():
    x = np.random.default_rng(0).normal(size=(4, 3))
    K = FullyConnected(1).ntk(x)
    assert K.dtype == np.float64
    assert jnp.zeros(1).dtype == jnp.float32
    with x64_scope(np.float64):
        assert jnp.zeros(1).dtype == jnp.float64
    assert jnp.zeros(1).dtype == jnp.float32
    # a user who enabled x64 keeps it, and float32 requests still give float32
    with jax.enable_x64(True):
        assert FullyConnected(1).ntk(x, dtype=np.float32).dtype == np.float32
        np.testing.assert_allclose(FullyConnected(1).ntk(x), K, rtol=1e-15)
        assert jnp.zeros(1).dtype == jnp.float64
    assert jnp.zeros(1).dtype == jnp.float32


def test_default_device():
    dev = default_device()
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    assert dev == (gpus[0] if gpus else jax.devices("cpu")[0])


# ----------------------------------------------------------------------------- custom kernels
def test_custom_kernel_plain_and_nt_style():
    rng = np.random.default_rng(4)
    x, xt = rng.normal(size=(9, 5)), rng.normal(size=(4, 5))
    fc = FullyConnected(1, 1.0, 0.5)

    def plain(a, b):
        return fc.ntk(a, b)

    k = CustomKernel(plain)
    assert k.style == "plain"
    np.testing.assert_allclose(k.ntk(x, block_size=4), fc.ntk(x), rtol=1e-12)
    np.testing.assert_allclose(k(xt, x, block_size=3), fc.ntk(xt, x), rtol=1e-12)
    with pytest.raises(ValueError, match="NNGP"):
        k.nngp(x)
    k2 = CustomKernel(plain, nngp_fn=lambda a, b: fc.nngp(a, b))
    np.testing.assert_allclose(k2.nngp(xt, x), fc.nngp(xt, x), rtol=1e-12)

    def kernel_fn(a, b=None, get=None):  # neural-tangents signature, returns a single array
        return fc(a, b, kind=get)

    k3 = CustomKernel(kernel_fn)
    assert k3.style == "nt"
    np.testing.assert_allclose(k3.nngp(x, block_size=2), fc.nngp(x), rtol=1e-12)
    np.testing.assert_allclose(k3.ntk(xt, x), fc.ntk(xt, x), rtol=1e-12)

    class Result:  # neural-tangents Kernel-like object with .ntk / .nngp
        def __init__(self, a, b):
            self.ntk, self.nngp = fc.ntk(a, b), fc.nngp(a, b)

    k4 = CustomKernel(lambda a, b, get: Result(a, b))
    assert k4.style == "nt"
    np.testing.assert_allclose(k4.nngp(xt, x), fc.nngp(xt, x), rtol=1e-12)
    np.testing.assert_allclose(k4.ntk(x), fc.ntk(x), rtol=1e-12)
    assert max_abs_row_sum(k4, x) >= np.abs(fc.ntk(x)).sum(1).max()


def test_custom_kernel_receives_requested_dtype_and_checks_output():
    seen = []

    def rbf(a, b):
        seen.append(a.dtype)
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    x = np.random.default_rng(0).normal(size=(6, 3))
    assert CustomKernel(rbf).ntk(x, dtype=np.float32).dtype == np.float32
    assert seen[-1] == np.float32
    with pytest.raises(ValueError, match="shape"):
        CustomKernel(lambda a, b: np.ones((len(a), len(b) + 1))).ntk(x)
    with pytest.raises(ValueError, match="NaN"):
        CustomKernel(lambda a, b: np.full((len(a), len(b)), np.nan)).ntk(x)
    with pytest.raises(TypeError):
        CustomKernel(3)
    with pytest.raises(ValueError, match="style"):
        CustomKernel(rbf, style="torch")
    with pytest.raises(TypeError):
        row_abs_sums(rbf, x)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad,msg", [
    (lambda: FullyConnected(-1), "depth"),
    (lambda: FullyConnected(1.5), "depth"),
    (lambda: FullyConnected(1, W_std=-1.0), "W_std"),
    (lambda: FullyConnected(1, b_std=np.inf), "b_std"),
    (lambda: FullyConnected(1, activation="tanh"), "activation"),
    (lambda: FullyConnected(1, parameterization="standard"), "parameterization"),
    (lambda: FullyConnected(1).ntk(np.array([[np.nan, 1.0]])), "NaN"),
    (lambda: FullyConnected(1).ntk(np.ones((2, 3)), np.array([[1.0, np.inf, 0.0]])), "NaN"),
    (lambda: FullyConnected(1).ntk(np.ones(3)), "shape"),
    (lambda: FullyConnected(1).ntk(np.ones((2, 3)), np.ones((2, 4))), "feature shapes"),
    (lambda: FullyConnected(1)(np.ones((2, 3)), kind="cov"), "kind"),
    (lambda: Convolutional(1).ntk(np.ones((2, 3))), "images"),
    (lambda: Convolutional(1).ntk(np.ones((2, 3, 3, 1)), np.ones((2, 4, 3, 1))), "feature shapes"),
    (lambda: Convolutional(1, readout="max"), "readout"),
    (lambda: Convolutional(1, filter_shape=(0, 3)), "filter_shape"),
    (lambda: Convolutional(-2), "depth"),
    (lambda: Convolutional(1, activation="gelu"), "activation"),
])
def test_bad_input_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        bad()


def test_empty_inputs():
    k = FullyConnected(2)
    assert k.ntk(np.zeros((0, 4))).shape == (0, 0)
    assert k.ntk(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)


def test_precomputed_kernel_opens_file_names_given_as_str_bytes_or_path(tmp_path):
    """A file name as str, bytes (decoded as `os.fsdecode` does) or os.PathLike opens the same memory-mapped
    file, named in messages by its path."""
    G = np.array([[2.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 4.0]])
    path = tmp_path / "K_train.npy"
    np.save(path, G)
    for src in (str(path), os.fsencode(path), path):
        pk = PrecomputedKernel(src)
        assert pk.train_name == str(path) and isinstance(pk.train_train, np.memmap)
        np.testing.assert_array_equal(pk.ntk(pk.train_points([2, 0])), G[np.ix_([2, 0], [2, 0])])
