"""Run configuration: the TOML schema as frozen dataclasses, validation, overrides and the config hash.

Each section is a frozen dataclass whose fields carry their own check (`_spec`); one generic
parser (`_parse_section`) validates any table against its dataclass, so each key is spelled once.
Keys that depend on the dataset, the kernel architecture or the learner type are those the
loader / kernel class / learner class accepts (its signature), and the built objects validate
their own values: adding a dataset is a record in `kernelcert.data.LOADERS` (plus its class count
in `DATASET_CLASSES`), adding an architecture a record in `ARCHITECTURES`, a learner a record in
`LEARNER_TYPES`. Every problem found is collected into one `ConfigError` that lists each with its
section and key. Nothing here computes a kernel matrix.

The config hash (`RunConfig.hash`) covers everything that can change a bit of a result: data,
kernel, learners, partitions, FA, methods, memory cap, block size, BLAS threads, device platform,
package version and the run-directory format (`kernelcert.pipeline.store.FORMAT_VERSION`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._version import __version__
from .._jax import gpu_devices, resolve_device
from ..data import LOADERS
from ..kernels import Convolutional, FullyConnected
from ..learners import KernelRegression, KernelSVM
from ..partition import FA_DEFAULT_SEED
from .methods import METHODS, REGISTRY
from .store import FORMAT_VERSION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "digits": 10}  # synthetic: num_classes
ARCHITECTURES = {"fully_connected": FullyConnected, "convolutional": Convolutional}
LEARNER_TYPES = {"svm": KernelSVM, "regression": KernelRegression}
PARTITION_RULES = ("ss_dpa", "dpa_hash", "seeded_hash")
FA_RULES = ("dpa_hash", "seeded_hash")
BACKENDS = ("inprocess", "dask-local", "dask")
DEFAULT_BUDGETS = (0, 1, 2, 5, 10, 20, 50, 100)


class ConfigError(ValueError):
    """A bad run configuration (raised before any heavy work). `problems`: ((section, key, message), ...)."""

    def __init__(self, message: str, problems: tuple = ()):
        super().__init__(message)
        self.problems = tuple(problems)

    @classmethod
    def of(cls, problems) -> "ConfigError":
        """One error listing every (section, key, message) problem."""
        problems = tuple(problems)
        lines = [f"[{sec}]: {msg}" if sec else msg for sec, _, msg in problems]
        text = (f"config {lines[0]}" if len(lines) == 1
                else f"config: {len(lines)} problems:\n  " + "\n  ".join(lines))
        return cls(text, problems)


class _Bad(ValueError):
    """One invalid value (message without the section)."""


# --------------------------------------------------------------------------- value checks
def _int(minimum=None, maximum=None) -> Callable:
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise _Bad(f"{key} must be an integer, got {v!r}")
        v = int(v)
        if minimum is not None and v < minimum:
            raise _Bad(f"{key} must be >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise _Bad(f"{key} must be <= {maximum}, got {v}")
        return v
    return check


def _num(*, positive=False, nonneg=False, below=None) -> Callable:
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise _Bad(f"{key} must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise _Bad(f"{key} must be finite, got {v}")
        if positive and not v > 0:
            raise _Bad(f"{key} must be > 0, got {v}")
        if nonneg and v < 0:
            raise _Bad(f"{key} must be >= 0, got {v}")
        if below is not None and v >= below:
            raise _Bad(f"{key} must be < {below}, got {v}")
        return v
    return check


def _bool(key, v):
    if not isinstance(v, bool):
        raise _Bad(f"{key} must be true or false, got {v!r}")
    return v


def _choice(*choices) -> Callable:
    def check(key, v):
        if v not in choices:
            raise _Bad(f"{key} must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v
    return check


def _str(forbid: str = "") -> Callable:
    def check(key, v):
        if not isinstance(v, str) or not v or any(ch in v for ch in forbid):
            extra = f" without {' '.join(map(repr, forbid))}" if forbid else ""
            raise _Bad(f"{key} must be a non-empty string{extra}, got {v!r}")
        return v
    return check


def _ints(minimum=None, *, unique=True, sort=False, length=None) -> Callable:
    one = _int(minimum)

    def check(key, v):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and length is None:
            v = [v]
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            raise _Bad(f"{key} must be a non-empty list of integers, got {v!r}")
        out = tuple(one(f"{key} entries", x) for x in v)
        if unique and len(set(out)) != len(out):
            raise _Bad(f"{key} has duplicate entries: {list(out)}")
        if length is not None and len(out) != length:
            raise _Bad(f"{key} must be {length} integers, got {list(out)}")
        return tuple(sorted(out)) if sort else out
    return check


def _spec(default, check: Callable, **kw):
    """A dataclass field with its value check (read by `_parse_section`)."""
    return field(default=default, metadata={"check": check}, **kw)


_REQUIRED = dataclasses.MISSING


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DataConfig:
    """[data]: which dataset and how to subsample it (`kernelcert.data.load_dataset`).

    Keys beyond the shared ones are those the dataset's loader accepts (e.g. synthetic:
    num_classes, dim, separation; digits: test_fraction; the image datasets: path).
    """

    dataset: str = _spec(_REQUIRED, _choice(*LOADERS))
    classes: tuple[int, ...] | None = _spec(None, _ints(0))
    n_train: int | None = _spec(None, _int(1))
    n_test: int | None = _spec(None, _int(1))
    seed: int = _spec(0, _int(0))
    normalize: bool = _spec(False, _bool)
    scale: bool = _spec(True, _bool)
    path: str | None = _spec(None, _str())
    num_classes: int | None = _spec(None, _int(2))
    dim: int | None = _spec(None, _int(1))
    separation: float | None = _spec(None, _num(nonneg=True))
    test_fraction: float | None = _spec(None, _num(positive=True, below=1))


_DATA_SHARED = ("dataset", "classes", "n_train", "n_test", "seed", "normalize", "scale")


@dataclass(frozen=True)
class KernelConfig:
    """[kernel]: the infinite-width architecture whose NTK (or NNGP) the learners use. Keys beyond
    architecture / kind / dtype are the architecture class's constructor arguments."""

    architecture: str = _spec("fully_connected", _choice(*ARCHITECTURES))
    depth: int = _spec(2, _int(0))
    W_std: float = _spec(1.0, _num(positive=True))
    b_std: float = _spec(0.0, _num(nonneg=True))
    activation: str = _spec("relu", _choice("relu", "erf"))
    kind: str = _spec("ntk", _choice("ntk", "nngp"))
    filter_shape: tuple[int, int] = _spec((3, 3), _ints(1, unique=False, length=2))
    readout: str = _spec("flatten", _choice("flatten", "gap"))
    dtype: str = _spec("float64", _choice("float64", "float32"))  # kernel precision (certificates: float64)


@dataclass(frozen=True)
class LearnerConfig:
    """One [[learners]] entry: its type (`LEARNER_TYPES`), a name, and the type's constructor arguments."""

    type: str = _spec(_REQUIRED, _choice(*LEARNER_TYPES))
    name: str = _spec(_REQUIRED, _str("/,\n\""))
    C: float | None = _spec(None, _num(positive=True))
    ridge: float = _spec(0.0, _num(nonneg=True))
    train_time: float | None = _spec(None, _num(positive=True))
    learning_rate: float = _spec(1.0, _num(positive=True))


@dataclass(frozen=True)
class PartitionConfig:
    """[partition]: feature-only rule and the numbers of partitions N_p (1 = the single model)."""

    rule: str = _spec("ss_dpa", _choice(*PARTITION_RULES))
    num_partitions: tuple[int, ...] = _spec((1, 10, 50), _ints(1, sort=True))
    seed: int = _spec(0, _int(0))  # seeded_hash only


@dataclass(frozen=True)
class FAConfig:
    """[fa]: Finite Aggregation, k*d learners on spread sets for each k (default: the N_p > 1)."""

    d: int = _spec(_REQUIRED, _int(1))
    k: tuple[int, ...] = _spec((), _ints(1, sort=True))
    rule: str = _spec("seeded_hash", _choice(*FA_RULES))
    seed: int = _spec(FA_DEFAULT_SEED, _int(0))  # seed of the shifts (Python random, as the FA code)
    hash_seed: int = _spec(0, _int(0))  # key of seeded_hash group ids


@dataclass(frozen=True)
class OutputConfig:
    """[output]: where the run directory goes, budgets for the certified-accuracy table, plots on/off."""

    dir: str = _spec("runs", _str())
    name: str = _spec("run", _str("/\\"))
    budgets: tuple[int, ...] = _spec(DEFAULT_BUDGETS, _ints(0, sort=True))
    plots: bool = _spec(True, _bool)


@dataclass(frozen=True)
class ExecutionConfig:
    """[execution]: backend, workers, scheduler, memory cap for kernel blocks, test block size, BLAS
    threads (hashed: a fixed count makes every backend bit-identical), progress, device."""

    backend: str = _spec("inprocess", _choice(*BACKENDS))
    workers: int = _spec(2, _int(1))
    scheduler: str | None = _spec(None, _str())
    memory_cap_mb: int = _spec(1024, _int(16))
    block_size: int | None = _spec(None, _int(1))
    blas_threads: int = _spec(1, _int(1))
    progress: bool = _spec(True, _bool)
    device: str = _spec("auto", _choice("auto", "cpu", "gpu"))  # "auto": a GPU if JAX sees one


def _parse_section(cls, where: str, table, problems: list, *, allowed=None, defaults=None):
    """Validate `table` against dataclass `cls` (only `allowed` keys); the instance, or None with
    the problems appended to `problems`."""
    if not isinstance(table, dict):
        problems.append((where, None, f"must be a table, got {type(table).__name__}"))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = set(fields) if allowed is None else set(allowed)
    n0 = len(problems)
    unknown = sorted(set(table) - allowed)
    if unknown:
        problems.append((where, unknown[0], f"unknown key(s) {', '.join(map(repr, unknown))}; "
                                            f"allowed: {', '.join(sorted(allowed))}"))
    kw: dict[str, Any] = dict(defaults or {})
    for key, f in fields.items():
        if key in table and key in allowed:
            try:
                kw[key] = f.metadata["check"](key, table[key])
            except _Bad as exc:
                problems.append((where, key, str(exc)))
        elif key not in kw and f.default is _REQUIRED:
            problems.append((where, key, f"missing required key {key!r}"))
    return cls(**kw) if len(problems) == n0 else None


def _ctor_keys(cls, config_cls) -> set:
    """The constructor arguments of `cls` that are fields of `config_cls`."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return set(inspect.signature(cls).parameters) & names


def _data_keys(dataset: str) -> set:
    loader_args = set(inspect.signature(LOADERS[dataset]).parameters)
    return set(_DATA_SHARED) | (loader_args & {f.name for f in dataclasses.fields(DataConfig)})


# --------------------------------------------------------------------------- object factories
def make_kernel(kc: KernelConfig, *, max_block_bytes: int | None = None):
    """The `kernelcert.kernels` object described by a KernelConfig."""
    cls = ARCHITECTURES[kc.architecture]
    kw = {k: getattr(kc, k) for k in _ctor_keys(cls, KernelConfig)}
    if max_block_bytes is not None:
        kw["max_block_bytes"] = int(max_block_bytes)
    return cls(**kw)


def make_learner(lc: LearnerConfig):
    """A fresh, unfitted learner for a LearnerConfig."""
    cls = LEARNER_TYPES[lc.type]
    return cls(**{k: getattr(lc, k) for k in _ctor_keys(cls, LearnerConfig)})


def num_classes_of(data: DataConfig) -> int:
    """Number of classes K implied by a [data] section."""
    if data.classes is not None:
        return len(data.classes)
    if data.dataset == "synthetic":
        return data.num_classes if data.num_classes is not None else 3
    return DATASET_CLASSES[data.dataset]


# --------------------------------------------------------------------------- the run config
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
        d = self.to_dict()
        ex = self.execution
        return {"format": FORMAT_VERSION, "version": __version__, "data": d["data"], "kernel": d["kernel"],
                "learners": d["learners"], "partition": d["partition"], "fa": d["fa"], "methods": d["methods"],
                "numerics": {"memory_cap_mb": ex.memory_cap_mb, "block_size": ex.block_size,
                             "blas_threads": ex.blas_threads,
                             "device": "cpu" if resolve_device(ex.device).platform == "cpu" else "gpu"}}

    def hash(self) -> str:
        """sha256 hex digest of `hash_payload()` (canonical JSON)."""
        blob = json.dumps(self.hash_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def num_classes(self) -> int:
        """Number of classes K implied by the data section."""
        return num_classes_of(self.data)


_SECTIONS = ("data", "kernel", "learners", "partition", "fa", "methods", "output", "execution")


def _default_learner_name(t: dict) -> str:
    if t.get("type") == "svm":
        return "svm" if t.get("C") is None else f"svm_C{t['C']:g}"
    name = f"regression_ridge{t.get('ridge', 0.0):g}"
    return name + (f"_t{t['train_time']:g}" if t.get("train_time") is not None else "")


def _parse_learners(items, problems: list) -> tuple[LearnerConfig, ...]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        problems.append(("learners", None, "need at least one [[learners]] entry (type = \"svm\" or \"regression\")"))
        return ()
    out = []
    for i, t in enumerate(items):
        where = f"learners #{i + 1}"
        typ = t.get("type") if isinstance(t, dict) else None
        if not isinstance(typ, str) or typ not in LEARNER_TYPES:
            problems.append((where, "type", "each [[learners]] entry needs type = \"svm\" or \"regression\"" if typ is None
                             else f"type must be one of {', '.join(map(repr, LEARNER_TYPES))}, got {typ!r}"))
            continue
        allowed = {"type", "name"} | _ctor_keys(LEARNER_TYPES[typ], LearnerConfig)
        defaults = {"name": _default_learner_name(t)} if "name" not in t else None
        lc = _parse_section(LearnerConfig, where, t, problems, allowed=allowed, defaults=defaults)
        if lc is not None:
            try:
                make_learner(lc)  # the learner's own validation
            except (TypeError, ValueError) as exc:
                problems.append((where, None, str(exc)))
            out.append(lc)
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(("learners", "name", f"duplicate learner names {dup}; give each a distinct name = \"...\""))
    return tuple(out)


def _parse_methods(t: dict, partition, fa, problems: list) -> tuple[str, ...]:
    _parse_section(_MethodsTable, "methods", t, problems)
    v = t.get("aggregations") if isinstance(t, dict) else None
    if v is None:
        has_single = partition is not None and 1 in partition.num_partitions
        return tuple(m for m in METHODS if (REGISTRY[m].target != "fa" or fa is not None)
                     and (not REGISTRY[m].single_model or has_single))
    if not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v):
        problems.append(("methods", "aggregations", f"aggregations must be a non-empty list of method names, got {v!r}"))
        return ()
    unknown = [m for m in v if m not in REGISTRY]
    if unknown:
        problems.append(("methods", "aggregations", f"unknown aggregation(s) {unknown}; known: {', '.join(METHODS)}"))
    if len(set(v)) != len(v):
        problems.append(("methods", "aggregations", f"duplicate aggregations in {v}"))
    for m in (m for m in v if m in REGISTRY):
        if REGISTRY[m].target == "fa" and fa is None:
            problems.append(("methods", "aggregations", f"{m!r} needs an [fa] section (d = number of shifts)"))
        if REGISTRY[m].single_model and partition is not None and 1 not in partition.num_partitions:
            problems.append(("methods", "aggregations",
                             f"{m!r} (the un-partitioned model) needs 1 in partition.num_partitions"))
    return tuple(m for m in METHODS if m in v)


@dataclass(frozen=True)
class _MethodsTable:
    aggregations: Any = _spec(None, lambda key, v: v)


def config_from_dict(d: dict, *, name: str | None = None) -> RunConfig:
    """Validate a parsed TOML document into a `RunConfig`; one ConfigError (a ValueError) lists every
    problem. `name` is the default run name (e.g. the config file's stem) when [output] has none."""
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a table, got {type(d).__name__}")
    p: list = []
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        p.append((None, None, f"unknown section(s) {', '.join(map(repr, unknown))}; allowed: "
                                  f"{', '.join(_SECTIONS)}"))
    if "data" not in d:
        p.append(("data", None, "missing required section [data]"))
    if "learners" not in d:
        p.append(("learners", None, "missing [[learners]] (at least one learner)"))
    data_t = d.get("data", {})
    ds = data_t.get("dataset") if isinstance(data_t, dict) else None
    ds = ds if isinstance(ds, str) or ds is None else repr(ds)
    if "data" in d and isinstance(data_t, dict) and ds is not None and ds not in LOADERS:
        p.append(("data", "dataset", f"unknown dataset {ds!r}; known datasets: {', '.join(LOADERS)}"))
        data = None
    elif "data" in d:
        data = _parse_section(DataConfig, "data", data_t, p, allowed=_data_keys(ds) if ds else None)
    else:
        data = None
    kern_t = d.get("kernel", {})
    arch = kern_t.get("architecture", "fully_connected") if isinstance(kern_t, dict) else None
    arch = arch if isinstance(arch, str) else None
    allowed = ({"architecture", "kind", "dtype"} | _ctor_keys(ARCHITECTURES[arch], KernelConfig)
               if arch in ARCHITECTURES else None)
    kernel = _parse_section(KernelConfig, "kernel", kern_t, p, allowed=allowed)
    if kernel is not None:
        try:
            make_kernel(kernel)  # the kernel's own validation (cheap, no computation)
        except (TypeError, ValueError) as exc:
            p.append(("kernel", None, str(exc)))
    learners = _parse_learners(d["learners"], p) if "learners" in d else ()
    partition = _parse_section(PartitionConfig, "partition", d.get("partition", {}), p)
    fa = None
    if "fa" in d:
        k_default = tuple(n for n in partition.num_partitions if n > 1) if partition else ()
        fa = _parse_section(FAConfig, "fa", d["fa"], p, defaults={"k": k_default})
        if fa is not None and not fa.k:
            p.append(("fa", "k", "no k given and partition.num_partitions has no N_p > 1; set k = [...]"))
    methods = _parse_methods(d.get("methods", {}), partition, fa if "fa" in d else None, p)
    out_t = d.get("output", {})
    if name is not None and isinstance(out_t, dict) and "name" not in out_t:
        out_t = {**out_t, "name": name}
    output = _parse_section(OutputConfig, "output", out_t, p)
    execution = _parse_section(ExecutionConfig, "execution", d.get("execution", {}), p)
    if execution is not None:
        if execution.device == "gpu" and not gpu_devices():
            p.append(("execution", "device", "device = 'gpu' but JAX sees no GPU here; use 'auto' or 'cpu'"))
        if execution.backend == "dask" and execution.scheduler is None:
            p.append(("execution", "scheduler",
                      "backend 'dask' needs scheduler = 'tcp://host:port' (or use 'dask-local')"))
    if data is not None and kernel is not None:
        if data.dataset == "synthetic" and kernel.architecture == "convolutional":
            p.append(("kernel", "architecture", "the convolutional kernel needs image data; 'synthetic' gives vectors"))
        k_total = (data.num_classes or 3) if data.dataset == "synthetic" else DATASET_CLASSES.get(data.dataset)
        if data.classes is not None and len(data.classes) < 2:
            p.append(("data", "classes", f"classes must list at least two classes, got {list(data.classes)}"))
        elif data.classes is not None and k_total is not None and max(data.classes) >= k_total:
            p.append(("data", "classes", f"classes {list(data.classes)} out of range for {data.dataset} "
                                         f"(labels 0..{k_total - 1})"))
    if data is not None and partition is not None:
        p += size_problems(data.n_train, partition, fa)
    if p:
        raise ConfigError.of(p)
    return RunConfig(data=data, kernel=kernel, learners=learners, partition=partition, fa=fa, methods=methods,
                     output=output, execution=execution)


def size_problems(n_train: int | None, partition: PartitionConfig, fa: FAConfig | None, what: str | None = None) -> list:
    """Size checks against the training-set size n (None: unknown until the data is loaded):
    every N_p <= n and every FA k*d <= n. `what` describes n in the messages."""
    if n_train is None:
        return []
    what = what or f"n_train={n_train}"
    p = [("partition", "num_partitions", f"num_partitions {n_p} exceeds the training set size {what}")
         for n_p in partition.num_partitions if n_p > n_train]
    if fa is not None:
        p += [("fa", "k", f"k*d = {k}*{fa.d} = {k * fa.d} groups exceed {what}")
              for k in fa.k if k * fa.d > n_train]
    return p


def load_config(path, **overrides) -> RunConfig:
    """Read and validate a TOML config file; `overrides` as in `with_overrides`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    try:
        cfg = config_from_dict(doc, name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", exc.problems) from None
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
                   plots=None) -> RunConfig:
    """Copy of `cfg` with command-line overrides (none of them changes the config hash).

    scheduler implies backend "dask"; workers without a scheduler implies "dask-local" unless a
    backend is given.
    """
    ex, out = cfg.execution, cfg.output
    try:
        if scheduler is not None:
            ex = dataclasses.replace(ex, scheduler=str(scheduler), backend="dask")
        if workers is not None:
            ex = dataclasses.replace(ex, workers=_int(1)("workers", workers),
                                     backend=ex.backend if scheduler is not None else "dask-local")
        if backend is not None:
            ex = dataclasses.replace(ex, backend=_choice(*BACKENDS)("backend", backend))
    except _Bad as exc:
        raise ConfigError.of([("execution", None, str(exc))]) from None
    if progress is not None:
        ex = dataclasses.replace(ex, progress=bool(progress))
    if ex.backend == "dask" and ex.scheduler is None:
        raise ConfigError.of([("execution", "scheduler",
                               "backend 'dask' needs a scheduler address (--scheduler tcp://host:port)")])
    if out_dir is not None:
        out = dataclasses.replace(out, dir=str(out_dir))
    if plots is not None:
        out = dataclasses.replace(out, plots=bool(plots))
    return dataclasses.replace(cfg, execution=ex, output=out)


__all__ = ["RunConfig", "DataConfig", "KernelConfig", "LearnerConfig", "PartitionConfig", "FAConfig", "OutputConfig",
           "ExecutionConfig", "ConfigError", "load_config", "load_config_string", "config_from_dict",
           "with_overrides", "make_kernel", "make_learner", "size_problems", "num_classes_of", "DATASET_CLASSES",
           "ARCHITECTURES", "LEARNER_TYPES", "BACKENDS", "DEFAULT_BUDGETS"]
