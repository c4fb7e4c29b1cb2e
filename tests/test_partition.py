"""Feature-only partitioners: determinism, balance, lexicographic order, label independence, FA spread."""

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert.partition import (
    FA_DEFAULT_SEED, dpa_hash_partition, fa_groups, fa_spread, partition, partition_indices, seeded_hash_partition,
    split_dataset, ss_dpa_partition,
)

RULES = ("ss_dpa", "dpa_hash", "seeded_hash")


def _pixels(rng, n, d=12):
    return rng.integers(0, 256, (n, d)).astype(np.uint8)


def _ss_dpa_oracle(x, k, primary="last"):
    """Python reference: sort row tuples (last feature first for primary="last"; ties by original
    index), assign sorted position mod k."""
    rows = [tuple(float(v) for v in r) for r in np.asarray(x, float).reshape(len(x), -1)]
    if primary == "last":
        rows = [r[::-1] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (rows[i], i))
    out = np.empty(len(rows), int)
    out[order] = np.arange(len(rows)) % k
    return out


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 60), st.integers(1, 8), st.integers(0, 2**32 - 1),
       st.sampled_from(["pixels", "real", "dups", "ints", "scaled255", "scaled16", "near255"]))
def test_ss_dpa_matches_python_sort_and_is_balanced(n, k, seed, kind):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    if kind == "pixels":
        x = _pixels(rng, n, 5)
    elif kind == "real":
        x = rng.normal(size=(n, 3)) * 10.0 ** rng.integers(-3, 4, (1, 3))
        x[rng.random(x.shape) < 0.3] = 0.0
        x[rng.random(x.shape) < 0.1] = -0.0
    elif kind == "ints":  # signed integers beyond 8 bits, kept as integers internally
        x = rng.integers(-300, 300, (n, 2)) * rng.integers(1, 10**6, (1, 2))
    elif kind in ("scaled255", "scaled16"):  # loader-scaled pixels k / s: sorted on uint8 codes
        s = 255.0 if kind == "scaled255" else 16.0
        x = rng.integers(0, int(s) + 1 if s == 16.0 else 256, (n, 4)) / s
    elif kind == "near255":  # one value a rounding step off k / 255: the codes do not apply
        x = rng.integers(0, 256, (n, 4)) / 255.0
        x[rng.integers(n), rng.integers(4)] = np.nextafter(100 / 255.0, 1.0)
    else:  # many duplicated rows, negative and fractional values
        x = rng.integers(-2, 2, (n, 2)) / 2.0
    a = ss_dpa_partition(x, k)
    np.testing.assert_array_equal(a, _ss_dpa_oracle(x, k))
    np.testing.assert_array_equal(ss_dpa_partition(x, k, primary="first"), _ss_dpa_oracle(x, k, "first"))
    sizes = np.bincount(a, minlength=k)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n
    np.testing.assert_array_equal(a, ss_dpa_partition(x.copy(), k))  # deterministic
    np.testing.assert_array_equal(a, ss_dpa_partition(x.astype(np.float64), k))  # dtype-independent


def _published_ss_dpa(images_uint8, k):
    """Transcription of the published SS-DPA rule (DPA repository, partition_data_unsupervised.py):
    ToTensor (uint8 / 255 in float32, channel-first), `(x * 255).int()`, flatten, `np.lexsort` of the
    transposed pixel matrix (last pixel = primary key), partition i = idxs[i::k]."""
    f = images_uint8.astype(np.float32) / np.float32(255)
    ints = (f * np.float32(255)).astype(np.int32).reshape(len(images_uint8), -1)
    idxs = np.lexsort(ints.transpose())
    if np.any(np.all(ints[idxs[1:]] == ints[idxs[:-1]], axis=1)):
        raise Exception("Not implemented for repeat images for label-flipping robustness certificate.")
    return [idxs[i::k] for i in range(k)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 4, 4)])
def test_ss_dpa_reproduces_the_published_partition(seed, shape):
    rng = np.random.default_rng(seed)
    n, k = 300, 7
    # few grey levels and a constant last pixel in some rows: ties on the primary keys are common,
    # so the first-feature order gives a different assignment
    imgs = rng.integers(0, 3, (n,) + shape).astype(np.uint8) * 120
    imgs[: n // 2, -1, -1, -1] = 7
    imgs = np.unique(imgs.reshape(n, -1), axis=0)  # the published code aborts on duplicates
    imgs = imgs[rng.permutation(len(imgs))].reshape((-1,) + shape)
    groups = _published_ss_dpa(imgs, k)
    expected = np.empty(len(imgs), np.int64)
    for i, idx in enumerate(groups):
        expected[idx] = i
    for x in (imgs, imgs.reshape(len(imgs), -1), imgs / 255.0, imgs.astype(np.int64)):
        np.testing.assert_array_equal(ss_dpa_partition(x, k), expected)
        np.testing.assert_array_equal(ss_dpa_partition(x, k, on_duplicates="error"), expected)
    assert not np.array_equal(ss_dpa_partition(imgs, k, primary="first"), expected)
    for i, idx in enumerate(partition_indices(ss_dpa_partition(imgs, k), k)):
        np.testing.assert_array_equal(idx, np.sort(groups[i]))


def test_ss_dpa_primary_option_errors():
    with pytest.raises(ValueError, match="primary must be 'last'"):
        ss_dpa_partition(np.zeros((3, 2)), 2, primary="middle")


def test_ss_dpa_permutation_keeps_partition_contents():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))  # no duplicates
    perm = rng.permutation(40)
    a, b = ss_dpa_partition(x, 7), ss_dpa_partition(x[perm], 7)
    np.testing.assert_array_equal(b, a[perm])  # a sample's partition is a function of the feature multiset


def test_ss_dpa_duplicates():
    x = np.array([[3, 1], [1, 2], [3, 1], [0, 5]], float)
    np.testing.assert_array_equal(ss_dpa_partition(x, 2, on_duplicates="stable"), [0, 0, 1, 1])  # (1,3)(1,3)(2,1)(5,0)
    np.testing.assert_array_equal(ss_dpa_partition(x, 2, primary="first"), [0, 1, 1, 0])  # (0,5)(1,2)(3,1)(3,1)
    with pytest.raises(ValueError, match="duplicated.*rows 0 and 2"):
        ss_dpa_partition(x, 2, on_duplicates="error")
    with pytest.raises(ValueError, match="on_duplicates"):
        ss_dpa_partition(x, 2, on_duplicates="drop")
    assert ss_dpa_partition(x[[0, 1, 3]], 3, on_duplicates="error").tolist() == [0, 1, 2]
    assert ss_dpa_partition(x[[0, 1, 3]], 3, on_duplicates="error", primary="first").tolist() == [2, 1, 0]


def test_dpa_hash_formula_and_errors():
    rng = np.random.default_rng(1)
    x = _pixels(rng, 80).reshape(80, 3, 4)  # any trailing shape is flattened
    np.testing.assert_array_equal(dpa_hash_partition(x, 7), x.reshape(80, -1).astype(int).sum(1) % 7)
    np.testing.assert_array_equal(dpa_hash_partition(x.astype(np.float32), 7), dpa_hash_partition(x, 7))
    with pytest.raises(ValueError, match="integer-valued.*scale=False"):
        dpa_hash_partition(x / 255.0, 5)
    with pytest.raises(ValueError, match=r"3 of 4 partitions would be empty \(partitions 1, 2, 3\)"):
        dpa_hash_partition(np.zeros((10, 2)), 4)


def test_seeded_hash_is_row_local_keyed_and_dtype_independent():
    rng = np.random.default_rng(2)
    x = _pixels(rng, 400)
    a = seeded_hash_partition(x, 5, seed=3)
    perm = rng.permutation(400)
    np.testing.assert_array_equal(seeded_hash_partition(x[perm], 5, seed=3), a[perm])
    np.testing.assert_array_equal(seeded_hash_partition(x.astype(float), 5, seed=3), a)
    np.testing.assert_array_equal(seeded_hash_partition(x[:200], 5, seed=3), a[:200])  # row-local
    assert np.mean(seeded_hash_partition(x, 5, seed=4) == a) < 0.5
    assert np.bincount(a, minlength=5).min() > 40  # roughly uniform
    z = np.vstack([[0.0, 1.0], [-0.0, 1.0], rng.normal(size=(30, 2))])
    for key in range(20):  # -0.0 and 0.0 are the same feature value: same partition under every key
        a0 = seeded_hash_partition(z, 2, seed=key)
        assert a0[0] == a0[1]


@pytest.mark.parametrize("rule", RULES)
def test_labels_never_move_samples_and_indices_cover(rule):
    rng = np.random.default_rng(3)
    x = _pixels(rng, 90)
    y = rng.integers(0, 4, 90)
    parts = split_dataset(x, y, 6, rule)
    y_flipped = y.copy()
    flip = rng.choice(90, 30, replace=False)
    y_flipped[flip] = (y_flipped[flip] + 1) % 4
    parts_flipped = split_dataset(x, y_flipped, 6, rule)
    for (i1, x1, y1), (i2, x2, y2) in zip(parts, parts_flipped):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y[i1])
        np.testing.assert_array_equal(y2, y_flipped[i2])
    all_idx = np.concatenate([p[0] for p in parts])
    np.testing.assert_array_equal(np.sort(all_idx), np.arange(90))
    a = partition(x, 6, rule)
    for i, idx in enumerate(partition_indices(a, 6)):
        assert np.all(a[idx] == i) and np.all(np.diff(idx) > 0)


def test_partition_errors():
    x = np.arange(20.0).reshape(10, 2)
    with pytest.raises(ValueError, match="exceeds the number of training samples"):
        ss_dpa_partition(x, 11)
    with pytest.raises(ValueError, match="num_partitions must be >= 1"):
        seeded_hash_partition(x, 0)
    with pytest.raises(ValueError, match="unknown partition rule"):
        partition(x, 2, "random")
    with pytest.raises(ValueError, match="NaN"):
        ss_dpa_partition(np.where(x > 5, np.nan, x), 2)
    with pytest.raises(ValueError, match="shape"):
        ss_dpa_partition(np.arange(5.0), 2)
    with pytest.raises(ValueError, match="same number of samples"):
        split_dataset(x, np.zeros(9), 2)
    with pytest.raises(ValueError, match="assign"):
        partition_indices(np.array([0, 3]), 2)


# --------------------------------------------------------------------------- Finite Aggregation
def test_fa_shifts_match_the_reference_draw():
    state = random.getstate()
    try:
        for k, d in ((50, 16), (1200, 1), (7, 3)):
            random.seed(999999999 + 208)
            expected = random.sample(range(k * d), d)
            groups = np.arange(k * d) % (k * d)
            np.testing.assert_array_equal(fa_spread(groups, k, d).shifts, expected)
    finally:
        random.setstate(state)
    assert FA_DEFAULT_SEED == 999999999 + 208


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1), st.integers(0, 10**6))
def test_fa_spread_structure(k, d, seed, shift_seed):
    rng = np.random.default_rng(seed)
    m = k * d
    groups = np.concatenate([np.arange(m), rng.integers(0, m, 3 * m)])
    sp = fa_spread(groups, k, d, seed=shift_seed)
    assert sp.num_learners == m and len(set(sp.shifts.tolist())) == d
    sets = sp.learner_sets()
    membership = np.zeros((m, len(groups)), int)
    for l, idx in enumerate(sets):
        membership[l, idx] += 1
        np.testing.assert_array_equal(idx, sp.learner_indices(l))
        # learner l holds exactly the samples of the groups (l - s) mod kd
        expect = np.flatnonzero(np.isin(groups, (l - sp.shifts) % m))
        np.testing.assert_array_equal(idx, expect)
    assert np.all(membership.sum(axis=0) == d)  # every sample reaches exactly d learners
    assert membership.max() == 1
    reach = sp.reach()
    for h in range(m):
        assert set(reach[h].tolist()) == set(((h + sp.shifts) % m).tolist())


def test_fa_groups_rules_and_errors():
    rng = np.random.default_rng(4)
    x = _pixels(rng, 100)
    np.testing.assert_array_equal(fa_groups(x, 5, 2), x.astype(int).sum(1) % 10)
    g = fa_groups(x, 5, 2, rule="seeded_hash", seed=1)
    assert g.min() >= 0 and g.max() < 10
    np.testing.assert_array_equal(fa_groups(x, 5, 2, rule="ss_dpa"), ss_dpa_partition(x, 10))
    with pytest.raises(ValueError, match="unknown FA group rule"):
        fa_groups(x, 5, 2, rule="nope")
    with pytest.raises(ValueError, match="k\\*d=200 exceeds"):
        fa_groups(x, 100, 2)
    with pytest.raises(ValueError, match="group_ids must lie in 0..5"):
        fa_spread(np.array([0, 6]), 3, 2)
    with pytest.raises(ValueError, match="integers"):
        fa_spread(np.array([0.5]), 3, 2)
    with pytest.raises(ValueError, match="learners would have no training samples"):
        fa_spread(np.zeros(5, int), 4, 1)
    sp = fa_spread(np.arange(6), 3, 2)
    with pytest.raises(ValueError, match="learner"):
        sp.learner_indices(6)


def test_pixel_codes_only_for_exact_scaled_pixels():
    from kernelcert.partition import _pixel_codes

    rng = np.random.default_rng(3)
    k = rng.integers(0, 256, (9000, 7))  # more rows than one block
    x = k / 255.0
    np.testing.assert_array_equal(_pixel_codes(x, x.min(), x.max()), k)
    y = x.copy()
    y[-1, -1] = np.nextafter(y[-1, -1], 2.0)  # off by one rounding step in the last block
    assert _pixel_codes(y, y.min(), y.max()) is None
    z = x.copy()
    z[0, 0] = -1 / 255.0
    assert _pixel_codes(z, z.min(), z.max()) is None
    np.testing.assert_array_equal(ss_dpa_partition(x, 50), ss_dpa_partition(k.astype(np.uint8), 50))
