"""The end-to-end certification run: TOML config -> run directory with certificates, tables and plots.

Flow of `run(config)` (SPEC §2-§5):

1. Validate the config (`load_config` / `config_from_dict`) into frozen dataclasses; check the
   output directory is writable, the dataset and keys are known, every N_p fits the training set,
   and (for SVMs with an explicit C) that C <= C_max on every partition. All of this happens
   before any kernel matrix is computed for certification.
2. Load data, compute the feature-only partitions for every N_p (and the Finite Aggregation
   spread sets when `[fa]` is configured) and turn them into work units, one per (N_p, partition)
   or per FA learner.
3. Each work unit (run by a backend, `kernelcert.backends`) computes its training Gram once, fits
   every learner on it, streams the test points in blocks of the test-by-partition kernel, and
   certifies every test point with ScaLabelCert. Its arrays are written atomically (temporary
   file + `os.replace`) to `units/<key>.npz`, so a killed run resumes without recomputing
   finished units.
4. Aggregation per (learner, N_p) in blocks of test points (rows read straight from the unit
   files, each block one backend task): single model (N_p = 1), DPA, EnsembleCert (lower and upper
   bound), DPA+ROE, white-box ROE, FA and FA+ROE. Outputs: `points.csv`, `summary.json`, plots and
   `report.md` (written atomically; recomputed on every run, which is cheap).

Run directory: `<output.dir>/<output.name>-<hash12>`, where the hash covers everything that can
change a single bit of a result (data, kernel, learners, partitions, FA, methods, memory cap,
block size and BLAS threads, package version). A changed config therefore never mixes with old
results: it gets its own directory (and a directory whose `config.hash` names another config is
refused). Backend, worker count, scheduler address, budgets and plotting are not hashed. Each unit
file also records a fingerprint of its inputs (its training rows and labels, the test points),
so a code change that alters the data behind an unchanged config recomputes the affected units.

Memory: a work unit holds its partition's Gram (and the learners' factorisations) plus one block
of test-by-partition kernel rows, label weights and certificate temporaries sized to
`[execution] memory_cap_mb` (`unit_block_rows`); aggregation blocks are sized the same way
(`_agg_block_rows`). No train-by-test matrix is ever held whole.

Unit file format (`.npz`, stored uncompressed so rows can be read without loading whole arrays):
`meta` (JSON) and per learner j: `L{j}.votes` (t,) int16, `L{j}.scores` (t, K) float64 class
scores W @ onehot(y); partition units also hold `L{j}.radius` (t,) int64 (ScaLabelCert, exact),
`L{j}.cost_lower` / `L{j}.cost_upper` (t, K) uint32 per-class flip costs (`COST_INF` = no attack),
`L{j}.class_exact` (t,) bool and, when white-box ROE is requested, `L{j}.pair` (t, K, K) uint16 or
uint32 pairwise costs (tie="attacker"; the dtype's maximum = no attack) with `L{j}.roe_fallback`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import socket
import struct
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

logger = logging.getLogger("kernelcert.pipeline")

FORMAT_VERSION = 1
COST_INF = np.iinfo(np.uint32).max  # sentinel for "no attack" in uint32 cost arrays
DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "digits": 10}
METHODS = ("single", "dpa", "ensemblecert", "dpa_roe", "whitebox_roe", "fa", "fa_roe")
ARCHITECTURES = ("fully_connected", "convolutional", "precomputed")
PARTITION_RULES = ("ss_dpa", "dpa_hash", "seeded_hash")
FA_RULES = ("dpa_hash", "seeded_hash")
BACKENDS = ("inprocess", "dask-local", "dask")
FA_DEFAULT_SEED = 999999999 + 208  # the FA reference code's random.seed for the shifts (anchors §2)
DEFAULT_BUDGETS = (0, 1, 2, 5, 10, 20, 50, 100)


class ConfigError(ValueError):
    """A bad run configuration (raised before any heavy work)."""


# =========================================================================== config dataclasses
@dataclass(frozen=True)
class DataConfig:
    """[data]: which dataset and how to subsample it (see `kernelcert.data.load_dataset`)."""

    dataset: str
    classes: tuple[int, ...] | None = None
    n_train: int | None = None
    n_test: int | None = None
    seed: int = 0
    normalize: bool = False
    scale: bool = True
    path: str | None = None
    num_classes: int | None = None  # synthetic and arrays only
    max_value: float | None = None  # arrays only: the feature maximum scale=True divides by
    files: tuple[str, str, str, str] | None = None  # arrays only: x_train, y_train, x_test, y_test .npy files
    dim: int | None = None  # synthetic only
    separation: float | None = None  # synthetic only
    test_fraction: float | None = None  # digits only


@dataclass(frozen=True)
class KernelConfig:
    """[kernel]: the infinite-width architecture whose NTK (or NNGP) kernel the learners use."""

    architecture: str = "fully_connected"
    depth: int = 2
    W_std: float = 1.0
    b_std: float = 0.0
    activation: str = "relu"
    kind: str = "ntk"
    filter_shape: tuple[int, int] = (3, 3)  # convolutional only
    readout: str = "flatten"  # convolutional only
    dtype: str = "float64"  # precision of the kernel evaluation (certificates are always float64)
    train_train: str | None = None  # precomputed only: K(train, train) .npy
    test_train: str | None = None  # precomputed only: K(test, train) .npy


@dataclass(frozen=True)
class LearnerConfig:
    """One [[learners]] entry: type "svm" (C; None = C_max) or "regression" (ridge, train_time, learning_rate)."""

    type: str
    name: str
    C: float | None = None
    ridge: float = 0.0
    train_time: float | None = None
    learning_rate: float = 1.0


@dataclass(frozen=True)
class PartitionConfig:
    """[partition]: feature-only rule and the numbers of partitions N_p (1 = the single model)."""

    rule: str = "ss_dpa"
    num_partitions: tuple[int, ...] = (1, 10, 50)
    seed: int = 0  # seeded_hash only


@dataclass(frozen=True)
class FAConfig:
    """[fa]: Finite Aggregation with k = N_p for each k and d shifts (k*d learners on spread sets)."""

    d: int
    k: tuple[int, ...]
    rule: str = "seeded_hash"
    seed: int = FA_DEFAULT_SEED  # seed of the shifts (Python random, as the FA code)
    hash_seed: int = 0  # key of seeded_hash group ids


@dataclass(frozen=True)
class OutputConfig:
    """[output]: where the run directory goes, budgets for the certified-accuracy table, plots on/off."""

    dir: str = "runs"
    name: str = "run"
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    plots: bool = True


@dataclass(frozen=True)
class ExecutionConfig:
    """[execution]: backend, workers, scheduler address, memory cap for kernel blocks, test block size.

    `blas_threads`: BLAS threads inside a work unit (threadpoolctl). It is part of the config hash:
    with a fixed count every backend produces bit-identical results (Dask workers default to one
    BLAS thread, and a multi-threaded Cholesky may round differently).
    """

    backend: str = "inprocess"
    workers: int = 2
    scheduler: str | None = None
    memory_cap_mb: int = 1024
    block_size: int | None = None
    blas_threads: int = 1
    progress: bool = True
    device: str = "auto"  # where the kernels run: "auto" (a GPU if JAX sees one, else CPU), "cpu", "gpu"


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration. `hash()` identifies the results it produces."""

    data: DataConfig
    kernel: KernelConfig
    learners: tuple[LearnerConfig, ...]
    partition: PartitionConfig
    fa: FAConfig | None
    methods: tuple[str, ...]
    output: OutputConfig
    execution: ExecutionConfig

    def to_dict(self) -> dict:
        """Plain (JSON-able) dict of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def hash_payload(self) -> dict:
        """The fields that can change results (see the module docstring)."""
        from . import __version__

        d = self.to_dict()
        return {"format": FORMAT_VERSION, "version": __version__, "data": d["data"], "kernel": d["kernel"],
                "learners": d["learners"], "partition": d["partition"], "fa": d["fa"], "methods": d["methods"],
                "numerics": {"memory_cap_mb": self.execution.memory_cap_mb, "block_size": self.execution.block_size,
                             "blas_threads": self.execution.blas_threads,
                             "device": _device_platform(self.execution.device)}}

    def hash(self) -> str:
        """sha256 hex digest of `hash_payload()` (canonical JSON)."""
        blob = json.dumps(self.hash_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def num_classes(self) -> int:
        """Number of classes K implied by the data section."""
        d = self.data
        if d.classes is not None:
            return len(d.classes)
        if d.dataset == "synthetic":
            return d.num_classes if d.num_classes is not None else 3
        if d.dataset == "arrays":
            return d.num_classes  # resolved (declared or stored in the .npz) when the config is parsed
        return DATASET_CLASSES[d.dataset]


# =========================================================================== config parsing
_SECTIONS = ("data", "kernel", "learners", "partition", "fa", "methods", "output", "execution")
_DATA_COMMON = {"dataset", "classes", "n_train", "n_test", "seed", "normalize", "scale"}
_DATA_EXTRA = {"mnist": {"path"}, "fashion_mnist": {"path"}, "cifar10": {"path"}, "digits": {"test_fraction"},
               "synthetic": {"num_classes", "dim", "separation"},
               "arrays": {"path", "num_classes", "max_value", "x_train", "y_train", "x_test", "y_test"}}


def _err(where: str, msg: str) -> ConfigError:
    return ConfigError(f"config [{where}]: {msg}")


def _check_keys(where: str, table: dict, allowed: set) -> None:
    if not isinstance(table, dict):
        raise _err(where, f"must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _err(where, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}")


def _int(where, key, v, minimum=None, maximum=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise _err(where, f"{key} must be an integer, got {v!r}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise _err(where, f"{key} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise _err(where, f"{key} must be <= {maximum}, got {v}")
    return v


def _float(where, key, v, *, positive=False, nonneg=False, allow_inf=False):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise _err(where, f"{key} must be a number, got {v!r}")
    v = float(v)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise _err(where, f"{key} must be finite, got {v}")
    if positive and not v > 0:
        raise _err(where, f"{key} must be > 0, got {v}")
    if nonneg and v < 0:
        raise _err(where, f"{key} must be >= 0, got {v}")
    return v


def _bool(where, key, v):
    if not isinstance(v, bool):
        raise _err(where, f"{key} must be true or false, got {v!r}")
    return v


def _choice(where, key, v, choices):
    if v not in choices:
        raise _err(where, f"{key} must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def _int_list(where, key, v, minimum=None, unique=True):
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) == 0:
        raise _err(where, f"{key} must be a non-empty list of integers, got {v!r}")
    out = tuple(_int(where, f"{key} entries", x, minimum) for x in v)
    if unique and len(set(out)) != len(out):
        raise _err(where, f"{key} has duplicate entries: {list(out)}")
    return out


def _parse_data(t: dict) -> DataConfig:
    if "dataset" not in t:
        raise _err("data", "missing required key 'dataset'")
    from .data import LOADERS

    name = t["dataset"]
    if name not in LOADERS:
        raise _err("data", f"unknown dataset {name!r}; known datasets: {', '.join(LOADERS)}")
    _check_keys("data", t, _DATA_COMMON | _DATA_EXTRA.get(name, set()))
    kw: dict[str, Any] = {"dataset": name}
    if "classes" in t:
        kw["classes"] = _int_list("data", "classes", t["classes"], minimum=0)
        if len(kw["classes"]) < 2:
            raise _err("data", f"classes must list at least two classes, got {list(kw['classes'])}")
    for key in ("n_train", "n_test"):
        if key in t:
            kw[key] = _int("data", key, t[key], minimum=1)
    if "seed" in t:
        kw["seed"] = _int("data", "seed", t["seed"], minimum=0)
    for key in ("normalize", "scale"):
        if key in t:
            kw[key] = _bool("data", key, t[key])
    if "path" in t:
        if not isinstance(t["path"], str) or not t["path"]:
            raise _err("data", f"path must be a non-empty string, got {t['path']!r}")
        kw["path"] = t["path"]
    if name == "cifar10" and "path" not in kw:
        raise _err("data", "dataset 'cifar10' needs path = <cifar-10-batches-py directory>")
    if "num_classes" in t:
        kw["num_classes"] = _int("data", "num_classes", t["num_classes"], minimum=2)
    if name == "arrays":
        kw.update(_parse_arrays_source(t, kw))
    if "dim" in t:
        kw["dim"] = _int("data", "dim", t["dim"], minimum=1)
    if "separation" in t:
        kw["separation"] = _float("data", "separation", t["separation"], nonneg=True)
    if "test_fraction" in t:
        kw["test_fraction"] = _float("data", "test_fraction", t["test_fraction"], positive=True)
        if kw["test_fraction"] >= 1:
            raise _err("data", f"test_fraction must be < 1, got {kw['test_fraction']}")
    cfg = DataConfig(**kw)
    k_total = (cfg.num_classes or 3) if name in ("synthetic", "arrays") else DATASET_CLASSES[name]
    if cfg.classes is not None and max(cfg.classes) >= k_total:
        raise _err("data", f"classes {list(cfg.classes)} out of range for {name} (labels 0..{k_total - 1})")
    return cfg


def _parse_arrays_source(t: dict, kw: dict) -> dict:
    """[data] keys of dataset = "arrays": `path` (an .npz or a directory of x_train.npy ...) or the four
    .npy files; `num_classes` declared or stored in the .npz (never guessed); optional `max_value`."""
    from .data import ARRAY_ROLES, arrays_metadata

    out: dict[str, Any] = {}
    given = [r for r in ARRAY_ROLES if r in t]
    if given:
        if "path" in t or len(given) != len(ARRAY_ROLES):
            raise _err("data", "dataset 'arrays' takes either path = <.npz or directory> or all four of "
                       f"{', '.join(ARRAY_ROLES)} (.npy files), got {', '.join(sorted(set(given) | ({'path'} & set(t))))}")
        for r in ARRAY_ROLES:
            if not isinstance(t[r], str) or not t[r]:
                raise _err("data", f"{r} must be a path string, got {t[r]!r}")
        out["files"] = tuple(t[r] for r in ARRAY_ROLES)
    elif "path" not in t:
        raise _err("data", "dataset 'arrays' needs path = <.npz with x_train, y_train, x_test, y_test, or a "
                   "directory of x_train.npy, y_train.npy, x_test.npy, y_test.npy> (or the four .npy files)")
    if "max_value" in t:
        out["max_value"] = _float("data", "max_value", t["max_value"], positive=True)
    try:
        stored_k, stored_max = arrays_metadata(t.get("path"), dict(zip(ARRAY_ROLES, out["files"]))
                                               if "files" in out else None)
    except (FileNotFoundError, ValueError) as exc:
        raise _err("data", str(exc)) from None
    k = kw.get("num_classes")
    if k is not None and stored_k is not None and k != stored_k:
        raise _err("data", f"num_classes = {k} but {t.get('path')} stores num_classes = {stored_k}")
    if k is None and stored_k is None:
        raise _err("data", "dataset 'arrays' needs num_classes (or a num_classes scalar in the .npz); it is never "
                   "guessed from the labels")
    out["num_classes"] = k if k is not None else stored_k
    if "max_value" in out and stored_max is not None and out["max_value"] != stored_max:
        raise _err("data", f"max_value = {out['max_value']} but {t.get('path')} stores max_value = {stored_max}")
    if "max_value" not in out and stored_max is not None:
        out["max_value"] = stored_max
    return out


def _parse_kernel(t: dict) -> KernelConfig:
    arch = t.get("architecture", "fully_connected")
    _choice("kernel", "architecture", arch, ARCHITECTURES)
    if arch == "precomputed":
        return _parse_precomputed(t)
    allowed = {"architecture", "depth", "W_std", "b_std", "activation", "kind", "dtype"}
    if arch == "convolutional":
        allowed |= {"filter_shape", "readout"}
    _check_keys("kernel", t, allowed)
    kw: dict[str, Any] = {"architecture": arch}
    if "depth" in t:
        kw["depth"] = _int("kernel", "depth", t["depth"], minimum=0)
    if "W_std" in t:
        kw["W_std"] = _float("kernel", "W_std", t["W_std"], positive=True)
    if "b_std" in t:
        kw["b_std"] = _float("kernel", "b_std", t["b_std"], nonneg=True)
    if "activation" in t:
        kw["activation"] = _choice("kernel", "activation", t["activation"], ("relu", "erf"))
    if "kind" in t:
        kw["kind"] = _choice("kernel", "kind", t["kind"], ("ntk", "nngp"))
    if "dtype" in t:
        kw["dtype"] = _choice("kernel", "dtype", t["dtype"], ("float64", "float32"))
    if "filter_shape" in t:
        fs = _int_list("kernel", "filter_shape", t["filter_shape"], minimum=1, unique=False)
        if len(fs) != 2:
            raise _err("kernel", f"filter_shape must be two integers, got {list(fs)}")
        kw["filter_shape"] = fs
    if "readout" in t:
        kw["readout"] = _choice("kernel", "readout", t["readout"], ("flatten", "gap"))
    cfg = KernelConfig(**kw)
    try:
        make_kernel(cfg)  # the kernel's own validation (cheap, no computation)
    except (TypeError, ValueError) as exc:
        raise _err("kernel", str(exc)) from None
    return cfg


def _parse_precomputed(t: dict) -> KernelConfig:
    """[kernel] architecture = "precomputed": train_train / test_train .npy paths, kind, dtype."""
    _check_keys("kernel", t, {"architecture", "train_train", "test_train", "kind", "dtype"})
    kw: dict[str, Any] = {"architecture": "precomputed"}
    for key in ("train_train", "test_train"):
        if key not in t:
            raise _err("kernel", f"architecture 'precomputed' needs {key} = <.npy of K({key.replace('_', ', ')})>")
        if not isinstance(t[key], str) or not t[key]:
            raise _err("kernel", f"{key} must be a path string, got {t[key]!r}")
        kw[key] = t[key]
    if "kind" in t:
        kw["kind"] = _choice("kernel", "kind", t["kind"], ("ntk", "nngp"))
    if "dtype" in t:
        kw["dtype"] = _choice("kernel", "dtype", t["dtype"], ("float64", "float32"))
    cfg = KernelConfig(**kw)
    try:
        make_kernel(cfg)  # opens both files (headers only): existence, shapes, dtype
    except (FileNotFoundError, ValueError) as exc:
        raise _err("kernel", str(exc)) from None
    return cfg


def _default_learner_name(kw: dict) -> str:
    if kw["type"] == "svm":
        return "svm" if kw.get("C") is None else f"svm_C{kw['C']:g}"
    name = f"regression_ridge{kw.get('ridge', 0.0):g}"
    if kw.get("train_time") is not None:
        name += f"_t{kw['train_time']:g}"
    return name


def _parse_learners(items) -> tuple[LearnerConfig, ...]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise _err("learners", "need at least one [[learners]] entry (type = \"svm\" or \"regression\")")
    out = []
    for i, t in enumerate(items):
        where = f"learners #{i + 1}"
        if not isinstance(t, dict) or "type" not in t:
            raise _err(where, "each [[learners]] entry needs type = \"svm\" or \"regression\"")
        typ = _choice(where, "type", t["type"], ("svm", "regression"))
        allowed = {"type", "name", "C"} if typ == "svm" else {"type", "name", "ridge", "train_time", "learning_rate"}
        _check_keys(where, t, allowed)
        kw: dict[str, Any] = {"type": typ}
        if "C" in t:
            kw["C"] = _float(where, "C", t["C"], positive=True)
        if "ridge" in t:
            kw["ridge"] = _float(where, "ridge", t["ridge"], nonneg=True)
        if "train_time" in t:
            kw["train_time"] = _float(where, "train_time", t["train_time"], positive=True)
        if "learning_rate" in t:
            kw["learning_rate"] = _float(where, "learning_rate", t["learning_rate"], positive=True)
        name = t.get("name", _default_learner_name(kw))
        if not isinstance(name, str) or not name or any(ch in name for ch in "/,\n\""):
            raise _err(where, f"name must be a non-empty string without '/', ',', quotes or newlines, got {name!r}")
        kw["name"] = name
        cfg = LearnerConfig(**kw)
        try:
            make_learner(cfg)
        except (TypeError, ValueError) as exc:
            raise _err(where, str(exc)) from None
        out.append(cfg)
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err("learners", f"duplicate learner names {dup}; give each a distinct name = \"...\"")
    return tuple(out)


def _parse_partition(t: dict) -> PartitionConfig:
    _check_keys("partition", t, {"rule", "num_partitions", "seed"})
    kw: dict[str, Any] = {}
    if "rule" in t:
        kw["rule"] = _choice("partition", "rule", t["rule"], PARTITION_RULES)
    if "num_partitions" in t:
        kw["num_partitions"] = tuple(sorted(_int_list("partition", "num_partitions", t["num_partitions"], minimum=1)))
    if "seed" in t:
        kw["seed"] = _int("partition", "seed", t["seed"], minimum=0)
    return PartitionConfig(**kw)


def _parse_fa(t: dict, partition: PartitionConfig) -> FAConfig:
    _check_keys("fa", t, {"d", "k", "rule", "seed", "hash_seed"})
    if "d" not in t:
        raise _err("fa", "missing required key 'd' (number of shifts, learners per sample)")
    d = _int("fa", "d", t["d"], minimum=1)
    if "k" in t:
        k = tuple(sorted(_int_list("fa", "k", t["k"], minimum=1)))
    else:
        k = tuple(n for n in partition.num_partitions if n > 1)
        if not k:
            raise _err("fa", "no k given and partition.num_partitions has no N_p > 1; set k = [...]")
    kw: dict[str, Any] = {"d": d, "k": k}
    if "rule" in t:
        kw["rule"] = _choice("fa", "rule", t["rule"], FA_RULES)
    if "seed" in t:
        kw["seed"] = _int("fa", "seed", t["seed"], minimum=0)
    if "hash_seed" in t:
        kw["hash_seed"] = _int("fa", "hash_seed", t["hash_seed"], minimum=0)
    return FAConfig(**kw)


def _parse_methods(t: dict, partition: PartitionConfig, fa: FAConfig | None) -> tuple[str, ...]:
    _check_keys("methods", t, {"aggregations"})
    if "aggregations" not in t:
        methods = [m for m in METHODS if m not in ("fa", "fa_roe") or fa is not None]
        if 1 not in partition.num_partitions:
            methods.remove("single")
        return tuple(methods)
    v = t["aggregations"]
    if not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v):
        raise _err("methods", f"aggregations must be a non-empty list of method names, got {v!r}")
    unknown = [m for m in v if m not in METHODS]
    if unknown:
        raise _err("methods", f"unknown aggregation(s) {unknown}; known: {', '.join(METHODS)}")
    if len(set(v)) != len(v):
        raise _err("methods", f"duplicate aggregations in {v}")
    if ("fa" in v or "fa_roe" in v) and fa is None:
        raise _err("methods", "'fa' / 'fa_roe' need an [fa] section (d = number of shifts)")
    if "single" in v and 1 not in partition.num_partitions:
        raise _err("methods", "'single' (the un-partitioned model) needs 1 in partition.num_partitions")
    return tuple(m for m in METHODS if m in v)


def _parse_output(t: dict) -> OutputConfig:
    _check_keys("output", t, {"dir", "name", "budgets", "plots"})
    kw: dict[str, Any] = {}
    for key in ("dir", "name"):
        if key in t:
            if not isinstance(t[key], str) or not t[key]:
                raise _err("output", f"{key} must be a non-empty string, got {t[key]!r}")
            kw[key] = t[key]
    if "name" in kw and any(ch in kw["name"] for ch in "/\\"):
        raise _err("output", f"name must not contain path separators, got {kw['name']!r}")
    if "budgets" in t:
        kw["budgets"] = tuple(sorted(_int_list("output", "budgets", t["budgets"], minimum=0)))
    if "plots" in t:
        kw["plots"] = _bool("output", "plots", t["plots"])
    return OutputConfig(**kw)


def _parse_execution(t: dict) -> ExecutionConfig:
    _check_keys("execution", t, {"backend", "workers", "scheduler", "memory_cap_mb", "block_size", "blas_threads",
                                 "progress", "device"})
    kw: dict[str, Any] = {}
    if "backend" in t:
        kw["backend"] = _choice("execution", "backend", t["backend"], BACKENDS)
    if "workers" in t:
        kw["workers"] = _int("execution", "workers", t["workers"], minimum=1)
    if "scheduler" in t:
        if not isinstance(t["scheduler"], str) or not t["scheduler"]:
            raise _err("execution", "scheduler must be an address string like 'tcp://host:8786', "
                       f"got {t['scheduler']!r}")
        kw["scheduler"] = t["scheduler"]
    if "memory_cap_mb" in t:
        kw["memory_cap_mb"] = _int("execution", "memory_cap_mb", t["memory_cap_mb"], minimum=16)
    if "block_size" in t:
        kw["block_size"] = _int("execution", "block_size", t["block_size"], minimum=1)
    if "blas_threads" in t:
        kw["blas_threads"] = _int("execution", "blas_threads", t["blas_threads"], minimum=1)
    if "progress" in t:
        kw["progress"] = _bool("execution", "progress", t["progress"])
    if "device" in t:
        kw["device"] = _choice("execution", "device", t["device"], ("auto", "cpu", "gpu"))
        if kw["device"] == "gpu":
            from ._jax import gpu_devices

            if not gpu_devices():
                raise _err("execution", "device = 'gpu' but JAX sees no GPU here; use 'auto' or 'cpu'")
    cfg = ExecutionConfig(**kw)
    if cfg.backend == "dask" and cfg.scheduler is None:
        raise _err("execution", "backend 'dask' needs scheduler = 'tcp://host:port' (or use 'dask-local')")
    return cfg


def config_from_dict(d: dict, *, name: str | None = None) -> RunConfig:
    """Validate a parsed TOML document into a `RunConfig` (ConfigError, a ValueError, on any problem).

    `name` is the default run name (e.g. the config file's stem) when [output] has none.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a table, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"config: unknown section(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(_SECTIONS)}")
    for sec in ("data", "learners"):
        if sec not in d:
            raise ConfigError(f"config: missing required section [{sec}]" if sec == "data"
                              else "config: missing [[learners]] (at least one learner)")
    for sec in ("data", "kernel", "partition", "fa", "methods", "output", "execution"):
        if sec in d and not isinstance(d[sec], dict):
            raise ConfigError(f"config: [{sec}] must be a table, got {type(d[sec]).__name__}")
    data = _parse_data(d["data"])
    kernel = _parse_kernel(d.get("kernel", {}))
    learners = _parse_learners(d["learners"])
    partition = _parse_partition(d.get("partition", {}))
    fa = _parse_fa(d["fa"], partition) if "fa" in d else None
    methods = _parse_methods(d.get("methods", {}), partition, fa)
    out_t = dict(d.get("output", {}))
    if name is not None and "name" not in out_t:
        out_t["name"] = name
    output = _parse_output(out_t)
    execution = _parse_execution(d.get("execution", {}))
    if data.dataset == "synthetic" and kernel.architecture == "convolutional":
        raise _err("kernel", "the convolutional kernel needs image data; 'synthetic' gives vectors")
    if data.dataset == "arrays" and "dpa_hash" in (partition.rule, fa.rule if fa is not None else None):
        from .data import arrays_feature_dtype

        dt = arrays_feature_dtype(data.path, dict(zip(("x_train", "y_train", "x_test", "y_test"), data.files))
                                  if data.files else None)
        if dt.kind not in "iub":
            raise _err("partition" if partition.rule == "dpa_hash" else "fa",
                       f"rule 'dpa_hash' (DPA's pixel-sum hash) needs integer pixel features, but the arrays' x_train "
                       f"is {dt}; use rule = 'ss_dpa' or 'seeded_hash' for real-valued features such as embeddings")
    cfg = RunConfig(data=data, kernel=kernel, learners=learners, partition=partition, fa=fa, methods=methods,
                    output=output, execution=execution)
    _check_sizes_static(cfg)
    return cfg


def load_config(path, **overrides) -> RunConfig:
    """Read and validate a TOML config file. `overrides` replace fields of [output] / [execution]
    (e.g. out_dir=..., backend=..., workers=..., scheduler=...); see `with_overrides`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    cfg = config_from_dict(doc, name=path.stem)
    return with_overrides(cfg, **overrides) if overrides else cfg


def load_config_string(text: str, *, name: str = "run", **overrides) -> RunConfig:
    """Same as `load_config` for TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML ({exc})") from None
    cfg = config_from_dict(doc, name=name)
    return with_overrides(cfg, **overrides) if overrides else cfg


def with_overrides(cfg: RunConfig, *, out_dir=None, backend=None, workers=None, scheduler=None, progress=None,
                   plots=None, device=None) -> RunConfig:
    """Copy of `cfg` with command-line overrides (none of them changes the config hash).

    scheduler implies backend "dask"; workers without a scheduler implies "dask-local" unless a
    backend is given.
    """
    ex, out = cfg.execution, cfg.output
    if scheduler is not None:
        ex = dataclasses.replace(ex, scheduler=str(scheduler), backend="dask")
    if workers is not None:
        w = _int("execution", "workers", workers, minimum=1)
        ex = dataclasses.replace(ex, workers=w, backend=ex.backend if scheduler is not None else "dask-local")
    if backend is not None:
        ex = dataclasses.replace(ex, backend=_choice("execution", "backend", backend, BACKENDS))
    if progress is not None:
        ex = dataclasses.replace(ex, progress=bool(progress))
    if device is not None:
        ex = dataclasses.replace(ex, device=_parse_execution({"device": device}).device)
    if ex.backend == "dask" and ex.scheduler is None:
        raise _err("execution", "backend 'dask' needs a scheduler address (--scheduler tcp://host:port)")
    if out_dir is not None:
        out = dataclasses.replace(out, dir=str(out_dir))
    if plots is not None:
        out = dataclasses.replace(out, plots=bool(plots))
    return dataclasses.replace(cfg, execution=ex, output=out)


def _check_sizes_static(cfg: RunConfig) -> None:
    """Size checks that need no data: N_p and k*d against n_train when n_train is given."""
    n = cfg.data.n_train
    if n is None:
        return
    for n_p in cfg.partition.num_partitions:
        if n_p > n:
            raise _err("partition", f"num_partitions {n_p} exceeds the training set size n_train={n}")
    if cfg.fa is not None:
        for k in cfg.fa.k:
            if k * cfg.fa.d > n:
                raise _err("fa", f"k*d = {k}*{cfg.fa.d} = {k * cfg.fa.d} groups exceed n_train={n}")


# =========================================================================== object factories
def make_kernel(kc: KernelConfig, *, max_block_bytes: int | None = None):
    """The `kernelcert.kernels` object described by a KernelConfig."""
    from .kernels import DEFAULT_MAX_BLOCK_BYTES, Convolutional, FullyConnected, PrecomputedKernel

    mbb = int(max_block_bytes) if max_block_bytes is not None else DEFAULT_MAX_BLOCK_BYTES
    if kc.architecture == "precomputed":
        return PrecomputedKernel(kc.train_train, kc.test_train, kind=kc.kind, max_block_bytes=mbb)
    if kc.architecture == "fully_connected":
        return FullyConnected(kc.depth, W_std=kc.W_std, b_std=kc.b_std, activation=kc.activation,
                              max_block_bytes=mbb)
    return Convolutional(kc.depth, filter_shape=kc.filter_shape, W_std=kc.W_std, b_std=kc.b_std,
                         activation=kc.activation, readout=kc.readout, max_block_bytes=mbb)


def make_learner(lc: LearnerConfig):
    """A fresh, unfitted learner for a LearnerConfig."""
    from .learners import KernelRegression, KernelSVM

    if lc.type == "svm":
        return KernelSVM(C=lc.C)
    return KernelRegression(ridge=lc.ridge, train_time=lc.train_time, learning_rate=lc.learning_rate)


def _kernel_eval(kernel, kc: KernelConfig):
    fn = kernel.ntk if kc.kind == "ntk" else kernel.nngp
    return functools.partial(fn, dtype=np.dtype(kc.dtype))


def _device_platform(device: str) -> str:
    """'cpu' or 'gpu': where `device` resolves on this machine (part of the config hash, since a GPU
    evaluates the kernels with a different rounding)."""
    from ._jax import resolve_device

    return "cpu" if resolve_device(device).platform == "cpu" else "gpu"


def _cap_bytes(ex: ExecutionConfig) -> int:
    return int(ex.memory_cap_mb) * 2**20


def _kernel_block_bytes(ex: ExecutionConfig) -> int:
    from .kernels import DEFAULT_MAX_BLOCK_BYTES

    return int(max(2**20, min(DEFAULT_MAX_BLOCK_BYTES, _cap_bytes(ex) // 4)))


def unit_block_rows(n_part: int, num_classes: int, num_learners: int, ex: ExecutionConfig) -> int:
    """Test points per block inside a work unit.

    `execution.block_size` if set, else the largest block whose test-by-partition kernel block,
    label weights and certificate temporaries (about 8 * n_part * (3 + 2 L + K) bytes per test
    point) fit in `memory_cap_mb`.
    """
    if ex.block_size is not None:
        return int(ex.block_size)
    per_row = 8 * max(1, n_part) * (3 + 2 * num_learners + num_classes)
    return int(max(1, _cap_bytes(ex) // per_row))


# =========================================================================== atomic files
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same directory, fsync, os.replace."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez (uncompressed, so rows can be read in place) to a temporary file, then os.replace."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class UnitFile:
    """Random row access to the arrays of an uncompressed `.npz` without loading whole members.

    Reads the zip directory and each member's .npy header once; `rows(name, start, stop)` reads only
    the bytes of rows start..stop of a C-ordered array (one open/seek/read).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._index: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        with zipfile.ZipFile(self.path) as zf, open(self.path, "rb") as f:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"{self.path}: member {info.filename} is compressed; expected np.savez output")
                f.seek(info.header_offset)
                local = f.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError(f"{self.path}: corrupt zip member header for {info.filename}")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                if fortran and len(shape) > 1:
                    raise ValueError(f"{self.path}: member {info.filename} is Fortran-ordered")
                if dtype.hasobject:
                    raise ValueError(f"{self.path}: member {info.filename} holds Python objects")
                self._index[info.filename[:-4]] = (f.tell(), dtype, tuple(shape))

    def __contains__(self, name) -> bool:
        return name in self._index

    def shape(self, name) -> tuple[int, ...]:
        return self._index[name][2]

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop of member `name` (all rows when stop is None)."""
        offset, dtype, shape = self._index[name]
        n = shape[0] if shape else 1
        stop = n if stop is None else min(stop, n)
        start = max(0, min(start, stop))
        row_items = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        row_bytes = row_items * dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(offset + start * row_bytes)
            buf = f.read((stop - start) * row_bytes)
        if len(buf) != (stop - start) * row_bytes:
            raise ValueError(f"{self.path}: truncated member {name}")
        arr = np.frombuffer(buf, dtype=dtype)
        return arr.reshape((stop - start,) + shape[1:]) if shape else arr.reshape(())

    def meta(self) -> dict:
        """The unit's JSON metadata."""
        return json.loads(str(self.rows("meta")[()]))


# =========================================================================== work units
@dataclass(frozen=True)
class UnitSpec:
    """One work unit: a partition of an N_p ensemble ("partition") or one learner of an FA ensemble ("fa")."""

    key: str
    kind: str
    num_partitions: int
    index: int
    train_index: np.ndarray = field(repr=False)
    fingerprint: str = ""  # sha256 of the unit's inputs (its training data and the test points)

    @property
    def size(self) -> int:
        return int(len(self.train_index))


@dataclass(frozen=True)
class UnitTask:
    """What a backend ships to a worker for one unit: the spec and the partition's own training data."""

    key: str
    kind: str
    num_partitions: int
    index: int
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    fingerprint: str = ""


@dataclass(frozen=True)
class SharedInputs:
    """Inputs common to every unit (scattered once to each Dask worker)."""

    x_test: np.ndarray = field(repr=False)
    num_classes: int
    kernel: KernelConfig
    learners: tuple[LearnerConfig, ...]
    execution: ExecutionConfig
    config_hash: str
    want_costs: bool
    want_pairs: bool
    progress: bool = False


def unit_key(kind: str, num_partitions: int, index: int, d: int | None = None) -> str:
    if kind == "partition":
        return f"np{num_partitions:05d}-p{index:05d}"
    return f"fa-k{num_partitions:05d}-d{d:03d}-l{index:05d}"


def _to_counts(a: np.ndarray, dtype, what: str) -> np.ndarray:
    """Float flip counts (inf = no attack) -> unsigned integers with the dtype's maximum as inf sentinel."""
    a = np.asarray(a, dtype=np.float64)
    sentinel = np.iinfo(dtype).max
    fin = np.isfinite(a)
    if np.any(np.isnan(a)) or np.any(a[fin] < 0) or np.any(a[fin] != np.round(a[fin])):
        raise ValueError(f"{what}: expected non-negative integer flip counts or inf")
    if np.any(a[fin] >= sentinel):
        raise ValueError(f"{what}: a flip count does not fit {np.dtype(dtype).name}")
    return np.where(fin, a, sentinel).astype(dtype)


def counts_to_float(a: np.ndarray) -> np.ndarray:
    """Inverse of the integer encoding: float64 with inf where the dtype's maximum was stored."""
    a = np.asarray(a)
    out = a.astype(np.float64)
    out[a == np.iinfo(a.dtype).max] = np.inf
    return out


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux: VmHWM of /proc/self/status (the high-water mark of this process image; getrusage's
    ru_maxrss would also count the parent's memory at fork for spawned worker processes).
    Elsewhere: getrusage, or psutil's current RSS.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return float(r) / (1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0)


def compute_unit(task: UnitTask, shared: SharedInputs) -> dict:
    """Certify every test point for one work unit (module-level so that Dask workers can run it).

    Training Gram computed once and shared by all learners; test points streamed in blocks of
    `unit_block_rows(...)`; for every learner: label weights, class scores, ScaLabelCert
    certificate (partition units) or votes and scores only (FA units). BLAS runs with
    `execution.blas_threads` threads. Returns a dict of arrays plus `meta` (JSON string); the
    caller writes it atomically.
    """
    from threadpoolctl import threadpool_limits

    from ._jax import device_scope

    with threadpool_limits(limits=shared.execution.blas_threads, user_api="blas"), \
            device_scope(shared.execution.device):
        return _compute_unit(task, shared)


def _compute_unit(task: UnitTask, shared: SharedInputs) -> dict:
    from .certificates import certify, pairwise_costs
    from .learners import onehot

    t_start = time.perf_counter()
    K = shared.num_classes
    ex = shared.execution
    kernel = make_kernel(shared.kernel, max_block_bytes=_kernel_block_bytes(ex))
    evaluate = _kernel_eval(kernel, shared.kernel)
    sort_device = {"cpu": "numpy", "gpu": "jax"}.get(ex.device, "auto")  # certificate sorts follow the kernels
    x, y = task.x, task.y
    n = len(y)
    G = evaluate(x)
    t_gram = time.perf_counter() - t_start
    models = []
    c_max = []
    for lc in shared.learners:
        m = make_learner(lc).fit(G, y, K)
        models.append(m)
        c_max.append(float(m.C_max) if lc.type == "svm" else None)
    del G
    t_fit = time.perf_counter() - t_start - t_gram
    t_test = len(shared.x_test)
    full = task.kind == "partition" and shared.want_costs
    pair_dtype = np.uint16 if n < np.iinfo(np.uint16).max else np.uint32
    L = len(models)
    out: dict[str, np.ndarray] = {}
    for j in range(L):
        out[f"L{j}.votes"] = np.empty(t_test, np.int16)
        out[f"L{j}.scores"] = np.empty((t_test, K), np.float64)
        if full:
            out[f"L{j}.radius"] = np.empty(t_test, np.int64)
            out[f"L{j}.cost_lower"] = np.empty((t_test, K), np.uint32)
            out[f"L{j}.cost_upper"] = np.empty((t_test, K), np.uint32)
            out[f"L{j}.class_exact"] = np.empty(t_test, bool)
            if shared.want_pairs:
                out[f"L{j}.pair"] = np.empty((t_test, K, K), pair_dtype)
                out[f"L{j}.roe_fallback"] = np.empty(t_test, bool)
    Y = onehot(y, K)
    B = unit_block_rows(n, K, L, ex)
    starts = range(0, t_test, B)
    if shared.progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=-(-t_test // B), desc=f"  {task.key} test blocks", leave=False, unit="block")
    t_cert = 0.0
    for s0 in starts:
        sl = slice(s0, min(t_test, s0 + B))
        Kt = evaluate(shared.x_test[sl], x)
        for j, m in enumerate(models):
            W = m.label_weights(Kt)
            scores = W @ Y
            vote = np.argmax(scores, axis=1)
            out[f"L{j}.scores"][sl] = scores
            t0 = time.perf_counter()
            if full:
                cert = certify(W, y, K, block_size=B, sort_device=sort_device)
                out[f"L{j}.votes"][sl] = cert.prediction
                out[f"L{j}.radius"][sl] = cert.radius
                out[f"L{j}.cost_lower"][sl] = _to_counts(cert.cost_lower, np.uint32, "cost_lower")
                out[f"L{j}.cost_upper"][sl] = _to_counts(cert.cost_upper, np.uint32, "cost_upper")
                out[f"L{j}.class_exact"][sl] = cert.exact
                if shared.want_pairs:
                    P = pairwise_costs(W, y, K, tie="attacker", block_size=B, sort_device=sort_device)
                    out[f"L{j}.pair"][sl] = _to_counts(P, pair_dtype, "pairwise costs")
                    # Same guard as roe.whitebox_roe_from_label_linear: if the certified vote and the
                    # argmax of these scores ever disagree, that model gets black-box unit costs.
                    out[f"L{j}.roe_fallback"][sl] = cert.prediction != vote
            else:
                out[f"L{j}.votes"][sl] = vote
            t_cert += time.perf_counter() - t0
        del Kt
    meta = {"key": task.key, "kind": task.kind, "num_partitions": task.num_partitions, "index": task.index,
            "fingerprint": task.fingerprint, "n": n, "num_test": t_test, "num_classes": K,
            "config_hash": shared.config_hash, "format": FORMAT_VERSION,
            "learners": [lc.name for lc in shared.learners], "c_max": c_max,
            "block_rows": B, "seconds": {"gram": t_gram, "fit": t_fit, "certify": t_cert,
                                         "total": time.perf_counter() - t_start},
            "pid": os.getpid(), "host": socket.gethostname(), "peak_rss_mb": _peak_rss_mb()}
    out["meta"] = np.array(json.dumps(meta))
    return out


# =========================================================================== planning
@dataclass(frozen=True)
class RunPlan:
    """Data and work units of a run (computed before any heavy work)."""

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    units: tuple[UnitSpec, ...]
    fa_shifts: dict  # k -> shifts (d,) int64
    # what the kernel is evaluated on: the features, or for a precomputed kernel the index rows
    # (split, row) of `PrecomputedKernel.train_points` / `test_points`
    k_train: np.ndarray = field(default=None, repr=False)
    k_test: np.ndarray = field(default=None, repr=False)


def _load_data(cfg: RunConfig, *, raw: bool = False):
    """(x_train, y_train, x_test, y_test) via `kernelcert.data.load_dataset`; raw=True gives unscaled pixels."""
    from .data import load_dataset

    d = cfg.data
    opts: dict[str, Any] = {"seed": d.seed, "flatten": cfg.kernel.architecture != "convolutional",
                            "scale": False if raw else d.scale, "normalize": False if raw else d.normalize}
    if d.classes is not None:
        opts["classes"] = list(d.classes)
    for key in ("n_train", "n_test", "path", "num_classes", "dim", "separation", "test_fraction", "max_value"):
        if getattr(d, key) is not None:
            opts[key] = getattr(d, key)
    if d.files is not None:
        opts["files"] = dict(zip(("x_train", "y_train", "x_test", "y_test"), d.files))
    if cfg.kernel.architecture == "precomputed" and not raw:
        opts["return_index"] = True
    return load_dataset(d.dataset, **opts)


def _precomputed_inputs(cfg: RunConfig, idx_train: np.ndarray, idx_test: np.ndarray):
    """Index rows for a precomputed kernel and a fingerprint of its files (size, mtime); ConfigError when the
    kept samples are not rows of the files."""
    from .kernels import PrecomputedKernel

    kernel = make_kernel(cfg.kernel)
    if cfg.data.dataset == "arrays":
        from .data import arrays_split_sizes

        n_tr, n_te = arrays_split_sizes(cfg.data.path, dict(zip(("x_train", "y_train", "x_test", "y_test"),
                                                                  cfg.data.files)) if cfg.data.files else None)
        for path, got, want in ((cfg.kernel.train_train, kernel.num_train, n_tr),
                                (cfg.kernel.test_train, kernel.num_test, n_te)):
            if got != want:
                raise ConfigError(f"config [kernel]: {path} has {got} rows but the arrays have {want} samples in that "
                                  "split")
    for what, idx, n, path in (("training", idx_train, kernel.num_train, cfg.kernel.train_train),
                               ("test", idx_test, kernel.num_test, cfg.kernel.test_train)):
        if len(idx) and idx.max() >= n:
            raise ConfigError(f"config [kernel]: {path} has {n} rows but the data has {what} sample {int(idx.max())} "
                              f"(rows follow the dataset's full {what} split, before classes / n_train / n_test)")
    stats = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns)
             for p in (cfg.kernel.train_train, cfg.kernel.test_train)]
    return (PrecomputedKernel.train_points(idx_train), PrecomputedKernel.test_points(idx_test),
            hashlib.sha256(json.dumps(stats).encode()).hexdigest())


def plan_run(cfg: RunConfig) -> RunPlan:
    """Load the data, compute partitions (features only) and FA spread sets; ValueError on bad sizes."""
    from . import partition as part

    try:
        x_tr, y_tr, x_te, y_te, *kept = _load_data(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"config [data]: cannot load {cfg.data.dataset!r}: {exc}") from None
    k_tr, k_te, kernel_fp = x_tr, x_te, ""
    if kept:  # precomputed kernel: evaluated on index rows of its files
        k_tr, k_te, kernel_fp = _precomputed_inputs(cfg, *kept)
    K = cfg.num_classes
    for name, yy in (("training", y_tr), ("test", y_te)):
        if len(yy) and (yy.min() < 0 or yy.max() >= K):
            raise ConfigError(f"config [data]: {name} labels outside 0..{K - 1}")
    n = len(y_tr)
    if len(y_te) == 0 or n == 0:
        raise ConfigError("config [data]: empty training or test set")
    needs_raw = cfg.partition.rule == "dpa_hash" or (cfg.fa is not None and cfg.fa.rule == "dpa_hash")
    x_raw = None
    if needs_raw:  # integer pixels for the DPA pixel-sum hash: the same subsample, unscaled
        x_raw, y_raw, _, y_te_raw, *_ = _load_data(cfg, raw=True)
        if len(x_raw) != n or not np.array_equal(y_raw, y_tr) or not np.array_equal(y_te_raw, y_te):
            raise ConfigError("config [data]: the unscaled data needed by the dpa_hash rule is not the same "
                              "subsample as the scaled data")
    units: list[UnitSpec] = []
    for n_p in cfg.partition.num_partitions:
        if n_p > n:
            raise ConfigError(f"config [partition]: num_partitions {n_p} exceeds the training set size ({n})")
        if n_p == 1:
            assign = np.zeros(n, np.int64)
        else:
            src = x_raw if cfg.partition.rule == "dpa_hash" else x_tr
            kw = {"seed": cfg.partition.seed} if cfg.partition.rule == "seeded_hash" else {}
            try:
                assign = part.partition(src.reshape(n, -1), n_p, cfg.partition.rule, **kw)
            except ValueError as exc:
                raise ConfigError(f"config [partition]: N_p={n_p}: {exc}") from None
        for i in range(n_p):
            idx = np.flatnonzero(assign == i)
            units.append(UnitSpec(unit_key("partition", n_p, i), "partition", n_p, i, idx))
    shifts: dict[int, np.ndarray] = {}
    if cfg.fa is not None:
        for k in cfg.fa.k:
            sets, sh = _fa_sets(cfg, x_tr if cfg.fa.rule == "seeded_hash" else x_raw, k)
            shifts[k] = sh
            for i, idx in enumerate(sets):
                units.append(UnitSpec(unit_key("fa", k, i, cfg.fa.d), "fa", k, i, idx))
    for u in units:
        if u.size == 0:
            raise ConfigError(f"work unit {u.key} has no training samples; use fewer partitions")
    # Fingerprints tie each stored unit to the exact data it was computed from, so that a resumed run
    # never reuses a unit whose inputs changed (e.g. a data-loader change the config hash cannot see).
    test_fp = _digest(np.ascontiguousarray(k_te), y_te, np.array([K]), np.array([kernel_fp.encode()]))
    units = [dataclasses.replace(u, fingerprint=_digest(np.array([test_fp.encode()]), u.train_index,
                                                        np.ascontiguousarray(k_tr[u.train_index]), y_tr[u.train_index]))
             for u in units]
    return RunPlan(x_tr, y_tr, x_te, y_te, K, tuple(units), shifts, k_tr, k_te)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fa_sets(cfg: RunConfig, x: np.ndarray, k: int):
    """Training index sets of the k*d FA learners and the shifts (anchors §2), via kernelcert.partition."""
    from . import partition as part

    fa = cfg.fa
    n = len(x)
    if k * fa.d > n:
        raise ConfigError(f"config [fa]: k*d = {k * fa.d} groups exceed the training set size ({n})")
    if not hasattr(part, "fa_spread") or not hasattr(part, "fa_groups"):
        raise ConfigError("config [fa]: Finite Aggregation needs kernelcert.partition.fa_groups / fa_spread, "
                          "which this installation does not provide")
    kw = {"seed": fa.hash_seed} if fa.rule == "seeded_hash" else {}
    try:
        groups = part.fa_groups(x.reshape(n, -1), k, fa.d, rule=fa.rule, **kw)
        spread = part.fa_spread(groups, k, fa.d, seed=fa.seed)
    except ValueError as exc:
        raise ConfigError(f"config [fa]: k={k}, d={fa.d}: {exc}") from None
    sets = [np.sort(np.asarray(spread.learner_indices(l), np.int64)) for l in range(k * fa.d)]
    return sets, np.asarray(spread.shifts, np.int64)


def _check_c_max(cfg: RunConfig, plan: RunPlan, run_dir: Path) -> dict:
    """Pre-pass for SVMs with an explicit C: C <= C_max = 1 / max_i sum_j |K_ij| on every unit.

    Uses `kernels.max_abs_row_sum` per unit (streamed over kernel tiles, no Gram kept: one kernel
    evaluation per unit, no learner fits). Results are cached in `cmax_prepass.json` for resumed
    runs. Raises ConfigError naming the first offending units. Returns {unit key: C_max bound}.
    """
    explicit = [lc for lc in cfg.learners if lc.type == "svm" and lc.C is not None]
    if not explicit:
        return {}
    from .kernels import max_abs_row_sum

    cache_path = run_dir / "cmax_prepass.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    kernel = make_kernel(cfg.kernel, max_block_bytes=_kernel_block_bytes(cfg.execution))
    todo = [u for u in plan.units if u.key not in cache]
    if todo:
        logger.info("C_max pre-pass (explicit SVM C): %d work units", len(todo))
        it = todo
        if cfg.execution.progress:
            from tqdm.auto import tqdm

            it = tqdm(todo, desc="C_max pre-pass", unit="unit")
        for u in it:
            m = max_abs_row_sum(kernel, plan.k_train[u.train_index], kind=cfg.kernel.kind)
            cache[u.key] = 1.0 / m
        atomic_write_text(cache_path, json.dumps(cache, indent=0, sort_keys=True))
    for lc in explicit:
        bad = [(k, v) for k, v in sorted(cache.items()) if lc.C > v]
        if bad:
            worst = min(v for _, v in bad)
            raise ConfigError(
                f"config [learners] {lc.name}: C={lc.C:g} exceeds C_max on {len(bad)} of {len(cache)} work units "
                f"(e.g. {bad[0][0]}: C_max={bad[0][1]:.6g}; smallest {worst:.6g}). Above C_max the SVM is not linear "
                "in the labels and ScaLabelCert does not apply; use a smaller C or omit C (C = C_max per partition)")
    return cache


# =========================================================================== run directory
def run_directory(cfg: RunConfig) -> Path:
    """`<output.dir>/<output.name>-<first 12 hex digits of the config hash>`."""
    return Path(cfg.output.dir) / f"{cfg.output.name}-{cfg.hash()[:12]}"


def _prepare_run_dir(cfg: RunConfig) -> Path:
    """Create (or reuse) the run directory after checking it is writable; refuse a hash mismatch."""
    out = Path(cfg.output.dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"config [output]: output directory {str(out)!r} is not writable ({exc})") from None
    run_dir = run_directory(cfg)
    h = cfg.hash()
    hash_file = run_dir / "config.hash"
    if hash_file.exists():
        old = hash_file.read_text().strip()
        if old != h:
            raise ConfigError(f"{run_dir} holds results of another config (hash {old[:12]}, this one {h[:12]}); "
                              "refusing to mix them")
    (run_dir / "units").mkdir(parents=True, exist_ok=True)
    for stale in list(run_dir.glob(".*.tmp")) + list((run_dir / "units").glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # leftovers of a killed run
    atomic_write_text(run_dir / "config.json", json.dumps(
        {"hash": h, "hash_payload": cfg.hash_payload(), "config": cfg.to_dict()}, indent=2, sort_keys=True))
    atomic_write_text(hash_file, h + "\n")
    return run_dir


def _unit_done(path: Path, cfg_hash: str, fingerprint: str) -> bool:
    """True when `path` holds a complete unit of this config computed from exactly these inputs."""
    if not path.exists():
        return False
    try:
        meta = UnitFile(path).meta()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        logger.warning("unreadable unit file %s: recomputing it", path)
        return False
    if meta.get("config_hash") != cfg_hash or meta.get("format") != FORMAT_VERSION:
        return False
    if meta.get("fingerprint") != fingerprint:
        logger.warning("unit %s was computed from different inputs (data or partition code changed): "
                       "recomputing it", path.name)
        return False
    return True


# =========================================================================== aggregation
@dataclass(frozen=True)
class MethodResult:
    """Per-test-point result of one (learner, N_p, method)."""

    learner: str
    num_partitions: int
    method: str
    prediction: np.ndarray
    radius: np.ndarray
    exact: np.ndarray
    radius_upper: np.ndarray | None = None


def _agg_block_rows(M: int, K: int, ex: ExecutionConfig) -> int:
    """Test points per aggregation block: the block's float64 votes/costs/scores/pair costs
    (about 8 * M * K * (2K + 16) bytes per test point) stay under `memory_cap_mb`."""
    if ex.block_size is not None:
        return int(ex.block_size)
    per_row = 8 * M * K * (2 * K + 16)
    return int(max(1, _cap_bytes(ex) // per_row))


@dataclass(frozen=True)
class AggTask:
    """One aggregation work item: one (learner, N_p) ensemble on test points start..stop.

    Holds the block's rows of every partition's unit arrays in their compact stored dtypes, so a
    Dask worker needs no access to the run directory.
    """

    learner: int
    num_partitions: int
    kind: str  # "ensemble" (partition units) or "fa"
    start: int
    stop: int
    methods: tuple[str, ...]
    num_classes: int
    n_train: int
    arrays: dict = field(repr=False)
    shifts: np.ndarray | None = field(default=None, repr=False)


def aggregate_block(task: AggTask, shared=None) -> dict:
    """Aggregation certificates for one AggTask (module-level, runs on any backend).

    Returns {method: {"prediction", "radius", "exact"[, "radius_upper"]}} over the block's test
    points. Radii are capped at n_train (a sentinel radius means no relabelling at all changes the
    prediction, and there are only n_train labels to flip).
    """
    from .ensemble import dpa, ensemblecert
    from .roe import dpa_roe, fa, fa_roe, whitebox_roe

    a, K, B = task.arrays, task.num_classes, task.stop - task.start
    out: dict[str, dict] = {}

    def put(method, res, exact=None, upper=None):
        d = {"prediction": np.asarray(res.prediction, np.int64), "radius": np.minimum(res.radius, task.n_train),
             "exact": np.zeros(B, bool) if exact is None else exact}
        if upper is not None:
            d["radius_upper"] = np.minimum(upper, task.n_train)
        out[method] = d

    votes = a["votes"].astype(np.int64) if "votes" in a else None
    if task.kind == "fa":
        if "fa" in task.methods:
            put("fa", fa(votes, task.shifts, K))
        if "fa_roe" in task.methods:
            put("fa_roe", fa_roe(a["scores"], task.shifts))
        return out
    m = task.methods
    if "single" in m:
        out["single"] = {"prediction": votes[:, 0].copy(), "radius": np.minimum(a["radius"], task.n_train),
                         "exact": np.ones(B, bool)}  # ScaLabelCert's radius is exact (SPEC §3)
    if "dpa" in m:
        put("dpa", dpa(votes, K))
    lower = counts_to_float(a["cost_lower"]) if "cost_lower" in a else None
    if "ensemblecert" in m:
        lo = ensemblecert(votes, lower, K)
        hi = ensemblecert(votes, counts_to_float(a["cost_upper"]), K)
        put("ensemblecert", lo, exact=lo.radius == hi.radius, upper=hi.radius)
    if "dpa_roe" in m:
        put("dpa_roe", dpa_roe(a["scores"]))
    if "whitebox_roe" in m:
        fb = a["roe_fallback"]
        vc = np.where(fb[..., None], 1.0, lower)
        pc = np.where(fb[..., None, None], 1.0, counts_to_float(a["pair"]))
        put("whitebox_roe", whitebox_roe(a["scores"], vc, pc))
    return out


_AGG_FIELDS = {
    "single": ("votes", "radius"), "dpa": ("votes",), "ensemblecert": ("votes", "cost_lower", "cost_upper"),
    "dpa_roe": ("scores",), "whitebox_roe": ("scores", "cost_lower", "pair", "roe_fallback"),
    "fa": ("votes",), "fa_roe": ("scores",),
}


def _agg_groups(cfg: RunConfig, files: dict, plan: RunPlan) -> list[tuple]:
    """(learner index, N_p or k, kind, methods, unit files, FA shifts) for every ensemble to aggregate."""
    groups = []
    for j in range(len(cfg.learners)):
        for n_p in cfg.partition.num_partitions:
            methods = tuple(m for m in cfg.methods if m in ("dpa", "ensemblecert", "dpa_roe", "whitebox_roe")
                            or (m == "single" and n_p == 1))
            if methods:
                groups.append((j, n_p, "ensemble", methods,
                               [files[unit_key("partition", n_p, i)] for i in range(n_p)], None))
        if cfg.fa is not None:
            methods = tuple(m for m in cfg.methods if m in ("fa", "fa_roe"))
            for k in cfg.fa.k:
                if methods:
                    groups.append((j, k, "fa", methods,
                                   [files[unit_key("fa", k, i, cfg.fa.d)] for i in range(k * cfg.fa.d)],
                                   plan.fa_shifts[k]))
    return groups


def _agg_tasks(cfg: RunConfig, groups: list[tuple], plan: RunPlan):
    """Lazily yield the AggTasks of `groups` (rows are read from the unit files when a task is built)."""
    K, t, n_train = plan.num_classes, len(plan.y_test), len(plan.y_train)
    for j, n_p, kind, methods, fl, shifts in groups:
        fields = sorted({f for m in methods for f in _AGG_FIELDS[m]})
        B = _agg_block_rows(len(fl), K, cfg.execution)
        for s0 in range(0, t, B):
            s1 = min(t, s0 + B)
            arrays = {}
            for name in fields:
                if name == "radius":
                    arrays[name] = fl[0].rows(f"L{j}.radius", s0, s1)
                else:
                    arrays[name] = np.stack([f.rows(f"L{j}.{name}", s0, s1) for f in fl], axis=1)
            yield AggTask(j, n_p, kind, s0, s1, methods, K, n_train, arrays, shifts)


def _aggregate(cfg: RunConfig, files: dict, plan: RunPlan, backend) -> list[MethodResult]:
    """Run every aggregation block on the backend and assemble per-(learner, N_p, method) results."""
    t = len(plan.y_test)
    acc: dict[tuple, dict] = {}
    groups = _agg_groups(cfg, files, plan)
    tasks = _agg_tasks(cfg, groups, plan)
    if cfg.execution.progress:
        from tqdm.auto import tqdm

        total = sum(-(-t // _agg_block_rows(len(g[4]), plan.num_classes, cfg.execution)) for g in groups)
        tasks = tqdm(tasks, total=total, desc="aggregation blocks", unit="block")
    for task, res in backend.map(aggregate_block, tasks, None):
        sl = slice(task.start, task.stop)
        for method, d in res.items():
            key = (task.learner, task.num_partitions, method)
            if key not in acc:
                acc[key] = {name: np.empty(t, arr.dtype) for name, arr in d.items()}
            for name, arr in d.items():
                acc[key][name][sl] = arr
    order = {m: i for i, m in enumerate(METHODS)}
    out = []
    for (j, n_p, method) in sorted(acc, key=lambda k: (k[0], k[1], order[k[2]])):
        d = acc[(j, n_p, method)]
        out.append(MethodResult(cfg.learners[j].name, n_p, method, d["prediction"], d["radius"], d["exact"],
                                d.get("radius_upper")))
    return out


# =========================================================================== results
@dataclass(frozen=True)
class RunResult:
    """What `run` produced: the run directory, output paths, the summary dict and unit counts."""

    run_dir: Path
    config_hash: str
    summary: dict
    results: tuple[MethodResult, ...] = field(repr=False)
    points_path: Path
    summary_path: Path
    report_path: Path | None
    plots: tuple[Path, ...]
    computed_units: int
    skipped_units: int


def _method_summary(r: MethodResult, y_test: np.ndarray, budgets) -> dict:
    from .metrics import certified_accuracy, median_certified_robustness

    correct = r.prediction == y_test
    eff = np.where(correct, r.radius, -1)
    vals = np.unique(eff[eff >= 0])
    curve_acc = [float(np.mean(eff >= v)) for v in vals]
    d = {"learner": r.learner, "num_partitions": r.num_partitions, "method": r.method,
         "clean_accuracy": float(np.mean(correct)),
         "certified_accuracy": {str(b): certified_accuracy(r.radius, correct, int(b)) for b in budgets},
         "mcr": {"radius": median_certified_robustness(r.radius, correct, "radius"),
                 "anchor": median_certified_robustness(r.radius, correct, "anchor")},
         "exact_fraction": float(np.mean(r.exact)),
         "median_radius": float(np.median(r.radius)),
         "curve": {"radius": [int(v) for v in vals], "certified_accuracy": curve_acc}}
    if r.radius_upper is not None:
        d["mcr_upper"] = {"radius": median_certified_robustness(r.radius_upper, correct, "radius"),
                          "anchor": median_certified_robustness(r.radius_upper, correct, "anchor")}
        d["bounds_agree_fraction"] = float(np.mean(r.radius == r.radius_upper))
    return d


def _write_points(path: Path, y_test: np.ndarray, results: list[MethodResult]) -> None:
    cols = ["index", "label"]
    data = [np.arange(len(y_test)), y_test]
    for r in results:
        base = f"{r.learner}/{r.num_partitions}/{r.method}"
        cols += [f"{base}/prediction", f"{base}/radius", f"{base}/exact"]
        data += [r.prediction, r.radius, r.exact.astype(np.int64)]
        if r.radius_upper is not None:
            cols.append(f"{base}/radius_upper")
            data.append(r.radius_upper)
    table = np.stack([np.asarray(c, np.int64) for c in data], axis=1)
    lines = [",".join(cols)]
    lines += [",".join(map(str, row)) for row in table.tolist()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_points(path) -> tuple[list[str], np.ndarray]:
    """(column names, int64 table) of a points.csv."""
    with open(path) as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    return header, table


# =========================================================================== the run
def run(config, *, backend=None) -> RunResult:
    """Run (or resume) the certification described by `config` (RunConfig, path to a TOML file or dict).

    `backend`: an open `kernelcert.backends.Backend` to use instead of the configured one.
    Returns a RunResult; the run directory holds points.csv, summary.json, plots and report.md.
    """
    from .backends import make_backend

    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, a TOML path or a dict, got {type(config).__name__}")
    cfg = config
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    cfg_hash = cfg.hash()
    run_dir = _prepare_run_dir(cfg)
    logger.info("run directory %s (config hash %s)", run_dir, cfg_hash[:12])

    t0 = time.perf_counter()
    plan = plan_run(cfg)
    timings["data_and_partitions"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepass = _check_c_max(cfg, plan, run_dir)
    timings["c_max_prepass"] = time.perf_counter() - t0

    K, t = plan.num_classes, len(plan.y_test)
    want_costs = any(m in cfg.methods for m in ("single", "ensemblecert", "whitebox_roe"))
    want_pairs = "whitebox_roe" in cfg.methods
    unit_dir = run_dir / "units"
    done = [u for u in plan.units if _unit_done(unit_dir / f"{u.key}.npz", cfg_hash, u.fingerprint)]
    done_keys = {u.key for u in done}
    todo = sorted((u for u in plan.units if u.key not in done_keys), key=lambda u: -u.size)
    logger.info("%d work units: %d already done (skipped), %d to compute", len(plan.units), len(done), len(todo))

    t0 = time.perf_counter()
    worker_peaks: dict[str, float] = {}
    own = backend is None
    be = make_backend(cfg.execution) if own else backend
    try:
        backend_info = be.describe()
        if todo:
            shared = SharedInputs(x_test=plan.k_test, num_classes=K, kernel=cfg.kernel, learners=cfg.learners,
                                  execution=cfg.execution, config_hash=cfg_hash, want_costs=want_costs,
                                  want_pairs=want_pairs, progress=cfg.execution.progress and be.in_process)
            tasks = (UnitTask(u.key, u.kind, u.num_partitions, u.index, plan.k_train[u.train_index],
                              plan.y_train[u.train_index], u.fingerprint) for u in todo)
            bar = None
            if cfg.execution.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(todo), desc="work units", unit="unit")
            try:
                for task, result in be.map(compute_unit, tasks, shared):
                    atomic_save_npz(unit_dir / f"{task.key}.npz", result)
                    if bar is not None:
                        bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
        timings["units_wall"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        files = {u.key: UnitFile(unit_dir / f"{u.key}.npz") for u in plan.units}
        metas = {k: f.meta() for k, f in files.items()}
        results = _aggregate(cfg, files, plan, be)
        timings["aggregation"] = time.perf_counter() - t0
    finally:
        if own:
            be.close()
    n_train = len(plan.y_train)

    # --- per-unit statistics: timings, C_max, base-model accuracy, worker memory
    unit_seconds = {k: m["seconds"] for k, m in metas.items()}
    for m in metas.values():
        wid = f"{m['host']}:{m['pid']}"
        worker_peaks[wid] = max(worker_peaks.get(wid, 0.0), float(m["peak_rss_mb"]))
    c_max_summary: dict = {}
    base_acc: dict = {}
    for j, lc in enumerate(cfg.learners):
        for n_p in cfg.partition.num_partitions:
            keys = [unit_key("partition", n_p, i) for i in range(n_p)]
            accs = [float(np.mean(files[k].rows(f"L{j}.votes") == plan.y_test)) for k in keys]
            base_acc.setdefault(lc.name, {})[str(n_p)] = {"mean": float(np.mean(accs)), "min": float(np.min(accs)),
                                                         "max": float(np.max(accs))}
            if lc.type == "svm":
                cm = np.array([metas[k]["c_max"][j] for k in keys])
                c_max_summary.setdefault(lc.name, {})[str(n_p)] = {
                    "min": float(cm.min()), "median": float(np.median(cm)), "max": float(cm.max()),
                    "C_used": "C_max per partition" if lc.C is None else lc.C}
    timings["total"] = time.perf_counter() - t_all
    summary = {
        "config_hash": cfg_hash, "run_dir": str(run_dir), "name": cfg.output.name,
        "data": {"dataset": cfg.data.dataset, "n_train": n_train, "n_test": t, "num_classes": K,
                 "feature_shape": list(plan.x_train.shape[1:])},
        "kernel": dataclasses.asdict(cfg.kernel), "learners": [dataclasses.asdict(lc) for lc in cfg.learners],
        "partition": dataclasses.asdict(cfg.partition),
        "fa": None if cfg.fa is None else {**dataclasses.asdict(cfg.fa),
                                           "shifts": {str(k): v.tolist() for k, v in plan.fa_shifts.items()}},
        "methods": list(cfg.methods), "budgets": list(cfg.output.budgets),
        "mcr_conventions": {"radius": "largest budget r with certified accuracy >= 50% (SPEC §1)",
                            "anchor": "radius convention + 1, as printed by the DPA/FA/ROE scripts (anchors §0.2)"},
        "results": [_method_summary(r, plan.y_test, cfg.output.budgets) for r in results],
        "base_model_accuracy": base_acc,
        "c_max": c_max_summary,
        "c_max_prepass": {"units": len(prepass), "min": min(prepass.values())} if prepass else None,
        "units": {"total": len(plan.units), "computed": len(todo), "skipped": len(done),
                  "seconds_sum": {k: float(sum(s[k] for s in unit_seconds.values()))
                                  for k in ("gram", "fit", "certify", "total")}},
        "timings": timings,
        "memory": {"main_peak_rss_mb": _peak_rss_mb(), "unit_peak_rss_mb": worker_peaks,
                   "memory_cap_mb": cfg.execution.memory_cap_mb},
        "execution": {"backend": cfg.execution.backend, **backend_info},
    }
    points_path = run_dir / "points.csv"
    _write_points(points_path, plan.y_test, results)
    plots: tuple[Path, ...] = ()
    report_path = None
    from . import report

    if cfg.output.plots:
        plots = tuple(report.write_plots(summary, run_dir))
    report_path = run_dir / "report.md"
    atomic_write_text(report_path, report.markdown_report(summary, plots, run_dir))
    summary_path = run_dir / "summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=1, sort_keys=False))
    logger.info("done in %.1f s: %s", timings["total"], run_dir)
    return RunResult(run_dir=run_dir, config_hash=cfg_hash, summary=summary, results=tuple(results),
                     points_path=points_path, summary_path=summary_path, report_path=report_path, plots=plots,
                     computed_units=len(todo), skipped_units=len(done))


__all__ = ["RunConfig", "DataConfig", "KernelConfig", "LearnerConfig", "PartitionConfig", "FAConfig", "OutputConfig",
           "ExecutionConfig", "ConfigError", "load_config", "load_config_string", "config_from_dict", "with_overrides",
           "run", "RunResult", "MethodResult", "plan_run", "compute_unit", "UnitFile", "run_directory", "read_points",
           "make_kernel", "make_learner", "METHODS"]
