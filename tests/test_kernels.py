"""Kernels against an independent float64 numpy reference of the NTK/NNGP recursion."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.kernels import Convolutional, CustomKernel, FullyConnected, max_abs_row_sum, row_abs_sums


def _act_np(act, k12, k11, k22):
    if act == "relu":
        norm = np.sqrt(np.outer(k11, k22))
        cos = np.clip(k12 / norm, -1, 1)
        th = np.arccos(cos)
        return norm * (np.sin(th) + (np.pi - th) * cos) / (2 * np.pi), (np.pi - th) / (2 * np.pi)
    prod = np.outer(1 + 2 * k11, 1 + 2 * k22)
    return (2 / np.pi) * np.arcsin(2 * k12 / np.sqrt(prod)), (4 / np.pi) / np.sqrt(prod - 4 * k12**2)


def fc_reference(x1, x2, depth, W, b, act):
    d = x1.shape[1]
    k12 = W**2 * x1 @ x2.T / d + b**2
    k11 = W**2 * (x1 * x1).sum(1) / d + b**2
    k22 = W**2 * (x2 * x2).sum(1) / d + b**2
    ntk = k12.copy()
    for _ in range(depth):
        kn, kd = _act_np(act, k12, k11, k22)
        d11, _ = _act_np(act, np.diag(k11), k11, k11)
        d22, _ = _act_np(act, np.diag(k22), k22, k22)
        k12 = W**2 * kn + b**2
        ntk = W**2 * ntk * kd + k12
        k11 = W**2 * np.diag(d11) + b**2
        k22 = W**2 * np.diag(d22) + b**2
    return k12, ntk


def conv_reference(x1, x2, depth, fs, W, b, act):
    """Loop-based numpy reference over image pairs and positions."""
    n1, n2 = len(x1), len(x2)
    H, Wd, C = x1.shape[1:]
    fh, fw = fs
    ph, pw = (fh - 1) // 2, (fw - 1) // 2

    def box(m):  # m (..., H, W)
        out = np.zeros_like(m)
        for i in range(H):
            for j in range(Wd):
                for di in range(fh):
                    for dj in range(fw):
                        u, v = i + di - ph, j + dj - pw
                        if 0 <= u < H and 0 <= v < Wd:
                            out[..., i, j] += m[..., u, v]
        return out / (fh * fw)

    allx = np.concatenate([x1, x2])
    cov = np.einsum("ahwc,bhwc->abhw", allx, allx) / C
    if depth == 0:
        k_post, th_post = cov, np.zeros_like(cov)
    else:
        k = W**2 * box(cov) + b**2
        ntk = k.copy()
        for layer in range(depth):
            diag = np.einsum("aahw->ahw", k)
            kp = np.zeros_like(k)
            kd = np.zeros_like(k)
            for p in range(H):
                for q in range(Wd):
                    a_, d_ = _act_np(act, k[:, :, p, q], diag[:, p, q], diag[:, p, q])
                    kp[:, :, p, q], kd[:, :, p, q] = a_, d_
            k_post, th_post = kp, ntk * kd
            if layer < depth - 1:
                k = W**2 * box(k_post) + b**2
                ntk = W**2 * box(th_post) + k
    k_out = W**2 * k_post.mean((-2, -1)) + b**2
    ntk_out = W**2 * th_post.mean((-2, -1)) + k_out
    return k_out[:n1, n1:], ntk_out[:n1, n1:]


@settings(max_examples=12, deadline=None)
@given(depth=st.integers(0, 4), W=st.floats(0.5, 2.0), b=st.floats(0.0, 1.0), act=st.sampled_from(["relu", "erf"]),
       seed=st.integers(0, 10**6))
def test_fully_connected_matches_numpy_reference(depth, W, b, act, seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    k = FullyConnected(depth, W, b, act)
    nngp_ref, ntk_ref = fc_reference(x1, x2, depth, W, b, act)
    np.testing.assert_allclose(k.ntk(x1, x2), ntk_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k.nngp(x1, x2), nngp_ref, rtol=1e-10, atol=1e-12)
    assert k.ntk(x1, x2).dtype == np.float64


@pytest.mark.parametrize("depth,act", [(1, "relu"), (2, "relu"), (2, "erf")])
def test_convolutional_matches_numpy_reference(depth, act):
    rng = np.random.default_rng(depth)
    x1, x2 = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(2, 4, 4, 2))
    k = Convolutional(depth, (3, 3), 1.3, 0.2, act)
    nngp_ref, ntk_ref = conv_reference(x1, x2, depth, (3, 3), 1.3, 0.2, act)
    np.testing.assert_allclose(k.ntk(x1, x2), ntk_ref, rtol=1e-10)
    np.testing.assert_allclose(k.nngp(x1, x2), nngp_ref, rtol=1e-10)


def test_gram_symmetric_psd_exact_diagonal():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 10))
    k = FullyConnected(3, 1.5, 0.1)
    K = k.ntk(x)
    np.testing.assert_allclose(K, K.T, rtol=1e-12)
    assert np.linalg.eigvalsh(K).min() >= -1e-8 * np.abs(K).max()
    # exact diagonal: the self-kernel equals the closed form at angle 0
    _, ntk_ref = fc_reference(x[:1], x[:1], 3, 1.5, 0.1, "relu")
    assert K[0, 0] == pytest.approx(ntk_ref[0, 0], rel=1e-14)


def test_blocked_equals_unblocked_and_streaming_row_sums():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 6))
    k = FullyConnected(2, 1.2, 0.3)
    full = k.ntk(x)
    np.testing.assert_allclose(k.ntk(x, block_size=5), full, rtol=1e-13)
    np.testing.assert_allclose(row_abs_sums(k, x, block_size=4), np.abs(full).sum(1), rtol=1e-13)
    assert max_abs_row_sum(k, x, block_size=7) == pytest.approx(np.abs(full).sum(1).max(), rel=1e-13)


def test_float32_close_to_float64():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 784))
    k = FullyConnected(2, 1.4, 0.1)
    k64, k32 = k.ntk(x), k.ntk(x, dtype=np.float32)
    assert k32.dtype == np.float32
    assert np.max(np.abs(k32 - k64) / np.abs(k64)) < 1e-4


def test_no_global_x64_side_effect():
    import jax.numpy as jnp

    FullyConnected(1).ntk(np.ones((2, 3)))
    assert jnp.zeros(1).dtype == jnp.float32


def test_custom_kernel_plain_and_nt_style():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 5))
    fc = FullyConnected(1, 1.0, 0.5)
    plain = CustomKernel(lambda a, b: fc.ntk(np.asarray(a), np.asarray(b)), style="plain")
    np.testing.assert_allclose(plain.ntk(x, block_size=4), fc.ntk(x), rtol=1e-12)

    def kernel_fn(a, b, get):
        return fc(np.asarray(a), np.asarray(b), kind=get)

    nt_style = CustomKernel(kernel_fn)
    np.testing.assert_allclose(nt_style.nngp(x), fc.nngp(x), rtol=1e-12)


@pytest.mark.parametrize("bad,msg", [
    (lambda: FullyConnected(-1), "depth"),
    (lambda: FullyConnected(1, W_std=-1.0), "W_std"),
    (lambda: FullyConnected(1, activation="tanh"), "activation"),
    (lambda: FullyConnected(1, parameterization="standard"), "parameterization"),
    (lambda: FullyConnected(1).ntk(np.array([[np.nan, 1.0]])), "NaN"),
    (lambda: FullyConnected(1).ntk(np.ones((2, 3)), np.ones((2, 4))), "feature shapes"),
    (lambda: Convolutional(1).ntk(np.ones((2, 3))), "images"),
    (lambda: Convolutional(1, readout="gap"), "readout"),
])
def test_bad_input_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        bad()
