"""The compiled ScaLabelCert kernel (engine="numba") against the vectorised numpy core (engine="numpy").

Every output is an integer-valued decision (prediction, radius, pairwise costs, cost bounds, exact
flags), so the two engines must agree bit for bit: on random and adversarial rows (exact ties,
repeated and integer weights, zeros, single-class rows, tiny first windows that force the
larger-window passes), on every mode and tie rule, and on real MNIST label weights of both learners.
"""

import numpy as np
import pytest

from kernelcert import _scalabel_kernel, certificates
from kernelcert.certificates import certify, pairwise_costs
from kernelcert.data import mnist
from kernelcert.kernels import FullyConnected
from kernelcert.learners import KernelRegression, KernelSVM

FIELDS = ("prediction", "radius", "radius_exact", "cost_lower", "cost_upper", "class_exact", "exact")


def assert_same(W, y, K, **kw):
    """All three modes and both tie rules agree between the engines; one pass serves both outputs."""
    ref = certify(W, y, K, engine="numpy", **kw)
    got, P_att = certify(W, y, K, engine="numba", pairwise="attacker", **kw)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    np.testing.assert_array_equal(P_att, pairwise_costs(W, y, K, tie="attacker", engine="numpy", **kw))
    _, P_idx = certify(W, y, K, engine="numba", pairwise="index", **kw)
    P_ref = pairwise_costs(W, y, K, engine="numpy", **kw)
    np.testing.assert_array_equal(P_idx, P_ref)
    np.testing.assert_array_equal(pairwise_costs(W, y, K, engine="numba", **kw), P_ref)
    r_ref = certify(W, y, K, engine="numpy", class_bounds=False, **kw)
    r_got = certify(W, y, K, engine="numba", class_bounds=False, **kw)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(r_got, f), getattr(r_ref, f), err_msg=f"radius mode {f}")


def adversarial_rows(rng, t, n, K, y, kind):
    if kind == "normal":
        return rng.standard_normal((t, n))
    if kind == "int":  # many exact ties, integer sums
        return rng.integers(-3, 4, (t, n)).astype(float)
    if kind == "sparse":  # mostly zeros
        return rng.standard_normal((t, n)) * (rng.random((t, n)) < 0.1)
    if kind == "repeated":  # a few distinct magnitudes, near-ties of the scores
        return rng.choice([-0.5, -0.25, 0.25, 0.5, 1.0], (t, n)) + 1e-12 * rng.standard_normal((t, 1))
    if kind == "heavy":  # a few weights dominate
        return rng.standard_t(1.2, (t, n))
    if kind == "favoured":  # one class favoured per row, mixed scales (radii of a few to tens)
        W = rng.standard_normal((t, n)) * rng.choice([1.0, 0.05, 5.0], (t, n))
        return W + rng.standard_normal((t, 1)) * (y == rng.integers(0, K, (t, 1)))
    if kind == "tied_scores":  # classes with identical score totals
        W = np.zeros((t, n))
        W[:, : n // 2] = 1.0
        W[:, n // 2:] = -1.0
        return W
    raise AssertionError(kind)


KINDS = ("normal", "int", "sparse", "repeated", "heavy", "favoured", "tied_scores")


@pytest.mark.parametrize("seed", range(6))
def test_random_and_adversarial_rows(seed):
    rng = np.random.default_rng([2026, seed])
    for kind in KINDS:
        K = int(rng.integers(2, 13))
        n = int(rng.choice([1, 2, 5, int(rng.integers(6, 80)), int(rng.integers(80, 700))]))
        y = rng.integers(0, K, n)
        W = adversarial_rows(rng, int(rng.integers(1, 12)), n, K, y, kind)
        assert_same(W, y, K)


@pytest.mark.parametrize("first", [1, 2, 3, 5])
def test_small_windows_and_window_growth(monkeypatch, first):
    """Tiny first windows: most rows go through one or more larger-window passes in both engines."""
    monkeypatch.setattr(certificates, "_FIRST_WINDOW", first)
    rng = np.random.default_rng([7, first])
    for kind in ("normal", "int", "favoured", "heavy"):
        K = int(rng.integers(2, 7))
        n = int(rng.integers(10, 120))
        y = rng.integers(0, K, n)
        assert_same(adversarial_rows(rng, 8, n, K, y, kind), y, K)


def test_large_rows_and_many_classes():
    """n up to a few thousand (windows smaller than the groups) and K up to 12."""
    rng = np.random.default_rng(11)
    for n, K in ((3000, 2), (2500, 10), (1200, 12)):
        y = rng.integers(0, K, n)
        assert_same(adversarial_rows(rng, 3, n, K, y, "favoured"), y, K)


@pytest.mark.parametrize("density", [0.02, 0.1, 0.5])
def test_sparse_rows_per_class_bounds(density):
    """Rows with few non-zero weights (SVM-like: most of every window is zero, so the merged list has
    a long zero tail that the Lagrangian threshold search leaves out) and up to 10 classes, full mode."""
    rng = np.random.default_rng([23, int(1000 * density)])
    for K in (3, 6, 10):
        n = int(rng.integers(150, 500))
        y = rng.integers(0, K, n)
        W = rng.standard_t(2.0, (10, n)) * (rng.random((10, n)) < density)
        W += 0.3 * (y == rng.integers(0, K, (10, 1))) * (W != 0)  # one favoured class per row
        assert_same(W, y, K)


def test_degenerate_rows():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 30)
    cases = [np.zeros((3, 30)), np.ones((2, 30)), -np.ones((2, 30)), rng.standard_normal((1, 30))]
    for W in cases:
        assert_same(W, y, 4)
    y1 = np.zeros(25, np.int64)  # one class only holds every sample
    assert_same(rng.standard_normal((4, 25)), y1, 3)
    assert_same(rng.standard_normal((4, 1)), np.array([2]), 3)


@pytest.mark.parametrize("rtol", [0.0, 1e-12, 1e-3])
def test_tolerances_and_blocks(rtol):
    rng = np.random.default_rng(13)
    y = rng.integers(0, 5, 90)
    W = adversarial_rows(rng, 17, 90, 5, y, "favoured")
    assert_same(W, y, 5, rtol=rtol, block_size=4)
    assert_same(W, y, 5, rtol=rtol, atol=rng.uniform(0, 0.3, 17))  # per-row absolute tolerances


def test_near_ties_and_extreme_scales():
    """Rows decided inside the rounding / tolerance band (resolved exactly afterwards) and rows the
    range guard rescales: the kernel must flag the same rows as the numpy core."""
    rng = np.random.default_rng(19)
    y = rng.integers(0, 4, 40)
    W = rng.integers(-2, 3, (12, 40)).astype(float)
    W[:, 0] += 1e-15 * rng.standard_normal(12)  # scores tied up to rounding
    assert_same(W, y, 4)
    assert_same(W, y, 4, atol=1e-14)
    for scale in (2.0 ** 600, 2.0 ** -600):
        assert_same(rng.standard_normal((5, 40)) * scale, y, 4)


def test_mnist_label_weights():
    """Real MNIST (depth-2 ReLU NTK), kernel regression and C_max SVM label weights, partition-sized rows."""
    xtr, ytr, xte, _ = mnist(n_train=600, n_test=40, seed=3)
    kern = FullyConnected(depth=2, W_std=2 ** 0.5, b_std=0.1, activation="relu")
    Ktr, Kx = kern.ntk(xtr), kern.ntk(xte, xtr)
    for model in (KernelRegression(ridge=1e-3), KernelSVM(None)):
        model.fit(Ktr, ytr, 10)
        assert_same(model.label_weights(Kx), ytr, 10)


def test_pairwise_from_the_certify_pass_and_one_compilation():
    rng = np.random.default_rng(17)
    y = rng.integers(0, 6, 200)
    W = rng.standard_normal((20, 200))
    cert, P = certify(W, y, 6, pairwise="attacker")
    np.testing.assert_array_equal(P, pairwise_costs(W, y, 6, tie="attacker"))
    np.testing.assert_array_equal(cert.radius, certify(W, y, 6).radius)
    for n, K in ((7, 2), (300, 11), (50, 4)):  # new shapes reuse the one compiled kernel
        certify(rng.standard_normal((3, n)), rng.integers(0, K, n), K, pairwise="index")
    assert _scalabel_kernel.compile_count() == 1


@pytest.mark.parametrize("call,msg", [
    (lambda W, y: certify(W, y, 3, engine="torch"), "engine must be one of"),
    (lambda W, y: certify(W, y, 3, pairwise="both"), "pairwise must be None"),
    (lambda W, y: certify(W, y, 3, pairwise="attacker", class_bounds=False), "pairwise must be None"),
])
def test_bad_arguments(call, msg):
    W, y = np.ones((2, 4)), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=msg):
        call(W, y)


@pytest.mark.parametrize("seed", range(4))
def test_table_building_blocks_against_numpy(seed):
    """The branch-free merges and the dense count table against numpy's stable sort and cumsum, on
    runs full of ties (few distinct values), runs of length 1 and odd total lengths, starting at 0."""
    rng = np.random.default_rng([31, seed])
    for _ in range(40):
        G = int(rng.integers(1, 9))
        lens = rng.integers(1, 7, G)
        vals = [np.sort(rng.choice([0.25, 0.5, 1.0, 2.0, 3.0], m) * rng.choice([1.0, 1.5]))[::-1] for m in lens]
        flat = np.concatenate(vals)
        tags = np.repeat(np.arange(G), lens)
        nz = flat.size
        order = np.argsort(-flat, kind="stable")  # decreasing, ties by flat index
        # merge two adjacent runs (as `_build_tables` does level by level) of the flat list
        starts = np.concatenate([[0], np.cumsum(lens)])
        k = int(rng.integers(0, G - 1)) if G > 1 else 0
        if G > 1:
            s0, m0, e0 = starts[k], starts[k + 1], starts[k + 2]
            src_v = np.append(flat, -1.0)
            src_t = np.append(tags, 0).astype(np.int64)
            dst_v, dst_t = np.full(nz + 1, np.nan), np.full(nz + 1, -7, np.int64)
            _scalabel_kernel._merge_runs(src_v, src_t, dst_v, dst_t, s0, m0, e0)
            o = s0 + np.argsort(-flat[s0:e0], kind="stable")
            np.testing.assert_array_equal(dst_v[s0:e0], flat[o])
            np.testing.assert_array_equal(dst_t[s0:e0], tags[o])
            assert np.isnan(dst_v[:s0]).all() and np.isnan(dst_v[e0:]).all()  # nothing outside the runs
        # c and 2c merged, c first among equals; Q2 counts the doubles
        c = np.append(flat[order], [0.0])
        V, Q2 = np.zeros(2 * nz), np.zeros(2 * nz + 1, np.int64)
        _scalabel_kernel._merge_double(c, nz, V, Q2)
        both = np.concatenate([c[:nz], 2.0 * c[:nz]])
        o2 = np.argsort(-both, kind="stable")
        np.testing.assert_array_equal(V, both[o2])
        np.testing.assert_array_equal(Q2, np.concatenate([[0], np.cumsum(o2 >= nz)]))
        # dense count table: CT[q, g] = group-g entries among the first q
        CT = np.full((nz + 1, G), -1, np.int32)
        _scalabel_kernel._count_rows(CT.reshape(-1), tags[order].astype(np.int64), G, nz)
        ref = np.concatenate([np.zeros((1, G), int), np.cumsum(tags[order][:, None] == np.arange(G), axis=0)])
        np.testing.assert_array_equal(CT, ref)
