"""The config schema: one frozen dataclass per TOML section, each field carrying its own check.

One generic parser (`parse_section`) validates any table against its dataclass, so each key is
spelled once; problems are collected as (section, key, message) and raised together as one
`ConfigError`. The registries below name what a config may build: `kernelcert.data.LOADERS`
(datasets), `ARCHITECTURES` (kernel classes), `LEARNER_TYPES` (learner classes). Keys that depend
on the dataset, architecture or learner type are the arguments that loader / class accepts.
A new option should default to None (unset): unset fields are left out of the config hash, so
existing run directories keep their names.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from .._validation import check_range, check_real
from ..data import ARRAY_ROLES, LOADERS
from ..kernels import Convolutional, FullyConnected, Kernel, PrecomputedKernel
from ..learners import KernelRegression, KernelSVM
from ..partition import FA_DEFAULT_SEED

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Problem = tuple[str | None, str | None, str]
"""One config problem: (section, key, message); section/key None when the problem is not in one."""
Check = Callable[[str, Any], Any]
"""A field's value check: (key, raw value) -> the clean value, or BadValue."""
_Section = TypeVar("_Section", bound="DataclassInstance")
_T = TypeVar("_T")

DATASET_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "digits": 10}  # synthetic, arrays: num_classes
ARCHITECTURES: dict[str, type[Kernel]] = {"fully_connected": FullyConnected, "convolutional": Convolutional,
                                          "precomputed": PrecomputedKernel}
LEARNER_TYPES: dict[str, type[KernelSVM] | type[KernelRegression]] = {"svm": KernelSVM, "regression": KernelRegression}
PARTITION_RULES = ("ss_dpa", "dpa_hash", "seeded_hash")
FA_RULES = ("dpa_hash", "seeded_hash")
BACKENDS = ("inprocess", "dask-local", "dask")
DEFAULT_BUDGETS = (0, 1, 2, 5, 10, 20, 50, 100)


class ConfigError(ValueError):
    """A bad run configuration (raised before any heavy work). `problems`: ((section, key, message), ...)."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> ConfigError:
        """One error listing every (section, key, message) problem."""
        listed = tuple(problems)
        lines = [f"[{sec}]: {msg}" if sec else msg for sec, _, msg in listed]
        text = (f"config {lines[0]}" if len(lines) == 1
                else f"config: {len(lines)} problems:\n  " + "\n  ".join(lines))
        return cls(text, listed)


class BadValue(ValueError):
    """One invalid value (message without the section)."""


# --------------------------------------------------------------------------- value checks
def _shared(check: Callable[..., _T], key: str, *args: Any, **kwargs: Any) -> _T:
    """`check(key, *args, **kwargs)`, a check of `kernelcert._validation`, with its ValueError or
    TypeError raised as BadValue (same message)."""
    try:
        return check(key, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise BadValue(str(exc)) from None


def _int(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(key: str, v: Any) -> int:
        # a TOML integer: unlike `kernelcert._validation.check_int`, 2.0 is not accepted
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise BadValue(f"{key} must be an integer, got {v!r}")
        return _shared(check_range, key, int(v), minimum, maximum)
    return check


def _num(*, positive: bool = False, nonneg: bool = False, below: float | None = None) -> Check:
    def check(key: str, v: Any) -> float:
        value = _shared(check_real, key, v)
        return _shared(check_range, key, value, 0 if nonneg else None, above=0 if positive else None, below=below)
    return check


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise BadValue(f"{key} must be true or false, got {v!r}")
    return v


def _choice(*choices: str) -> Check:
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise BadValue(f"{key} must be one of {', '.join(map(repr, choices))}, got {v!r}")
        return v
    return check


def _str(forbid: str = "") -> Check:
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str) or not v or any(ch in v for ch in forbid):
            extra = f" without {' '.join(map(repr, forbid))}" if forbid else ""
            raise BadValue(f"{key} must be a non-empty string{extra}, got {v!r}")
        return v
    return check


def _ints(minimum: int | None = None, *, unique: bool = True, sort: bool = False, length: int | None = None) -> Check:
    one = _int(minimum)

    def check(key: str, v: Any) -> tuple[int, ...]:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and length is None:
            v = [v]
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            raise BadValue(f"{key} must be a non-empty list of integers, got {v!r}")
        out = tuple(one(f"{key} entries", x) for x in v)
        if unique and len(set(out)) != len(out):
            raise BadValue(f"{key} has duplicate entries: {list(out)}")
        if length is not None and len(out) != length:
            raise BadValue(f"{key} must be {length} integers, got {list(out)}")
        return tuple(sorted(out)) if sort else out
    return check


def _names(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(m, str) for m in v):
        raise BadValue(f"{key} must be a non-empty list of method names, got {v!r}")
    if len(set(v)) != len(v):
        raise BadValue(f"duplicate {key} in {v}")
    return tuple(v)


def _array_files(key: str, v: Any) -> tuple[str, ...]:
    """[data] files = {x_train = "...", y_train = "...", x_test = "...", y_test = "..."} -> 4 paths in that order."""
    if not isinstance(v, dict) or set(v) != set(ARRAY_ROLES) or not all(isinstance(p, str) and p for p in v.values()):
        raise BadValue(f"{key} must be a table of the four .npy paths "
                       f"{{{', '.join(r + ' = <path>' for r in ARRAY_ROLES)}}}, got {v!r}")
    return tuple(v[r] for r in ARRAY_ROLES)


def _spec(default: Any, check: Check, **kw: Any) -> Any:
    """A dataclass field with its value check (read by `_parse_section`)."""
    return field(default=default, metadata={"check": check}, **kw)


_REQUIRED = dataclasses.MISSING


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DataConfig:
    """[data]: which dataset and how to subsample it (`kernelcert.data.load_dataset`).

    Keys beyond the shared ones are those the dataset's loader accepts (e.g. synthetic:
    num_classes, dim, separation; digits: test_fraction; the image datasets: path; arrays: path or
    files, num_classes, max_value). For "arrays", num_classes and max_value stored in the .npz are
    filled in when the config is read (`kernelcert.pipeline.config`).
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
    max_value: float | None = _spec(None, _num(positive=True))
    files: tuple[str, str, str, str] | None = _spec(None, _array_files)

    def files_dict(self) -> dict[str, str] | None:
        """`files` as the {role: path} dict `kernelcert.data.arrays` takes (None when not given)."""
        return None if self.files is None else dict(zip(ARRAY_ROLES, self.files))


DATA_SHARED = ("dataset", "classes", "n_train", "n_test", "seed", "normalize", "scale")


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
    train_train: str | None = _spec(None, _str())  # precomputed: K(train, train) .npy
    test_train: str | None = _spec(None, _str())  # precomputed: K(test, train) .npy


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
    """[execution]: backend, workers (dask-local: worker processes; inprocess: threads that run the
    aggregation blocks, at most the CPUs; results are bit-identical for every count), scheduler, memory
    cap per block (kernel blocks; aggregation blocks, of which the in-process aggregation holds up to
    `workers`: each thread reads and certifies one block at a time), test block size, BLAS threads (hashed: a fixed count makes every backend
    bit-identical), progress, device."""

    backend: str = _spec("inprocess", _choice(*BACKENDS))
    workers: int = _spec(2, _int(1))
    scheduler: str | None = _spec(None, _str())
    memory_cap_mb: int = _spec(1024, _int(16))
    block_size: int | None = _spec(None, _int(1))
    blas_threads: int = _spec(1, _int(1))
    progress: bool = _spec(True, _bool)
    device: str = _spec("auto", _choice("auto", "cpu", "gpu"))  # "auto": a GPU if JAX sees one


@dataclass(frozen=True)
class ExactnessConfig:
    """[exactness]: after aggregation, refine EnsembleCert radii until proven exact and white-box ROE radii
    until resolved at exact class costs (`kernelcert.refine`, docs/math.md §4.4): refine on/off; CPU-time budget of the refinement, at most budget_factor times the run's time before
    it (and at most budget_seconds when set); time_limit seconds per class-cost problem. Not hashed: the
    work units do not depend on it (the step re-reads them)."""

    refine: bool = _spec(False, _bool)
    budget_factor: float = _spec(1.0, _num(positive=True))
    budget_seconds: float | None = _spec(None, _num(positive=True))
    time_limit: float = _spec(10.0, _num(positive=True))


@dataclass(frozen=True)
class MethodsConfig:
    """[methods]: the aggregation methods (names of `kernelcert.pipeline.methods.REGISTRY`; default: all
    that apply). Checked against the registry by `kernelcert.pipeline.config`."""

    aggregations: tuple[str, ...] | None = _spec(None, _names)


def parse_section(cls: type[_Section], where: str, table: object, problems: list[Problem], *,
                  allowed: Iterable[str] | None = None, defaults: Mapping[str, Any] | None = None) -> _Section | None:
    """Validate `table` against dataclass `cls` (only `allowed` keys); the instance, or None with
    the problems appended to `problems`."""
    if not isinstance(table, dict):
        problems.append((where, None, f"must be a table, got {type(table).__name__}"))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed_keys = set(fields) if allowed is None else set(allowed)
    n0 = len(problems)
    unknown = sorted(set(table) - allowed_keys)
    if unknown:
        problems.append((where, unknown[0], f"unknown key(s) {', '.join(map(repr, unknown))}; "
                                            f"allowed: {', '.join(sorted(allowed_keys))}"))
    kw: dict[str, Any] = dict(defaults or {})
    for key, f in fields.items():
        if key in table and key in allowed_keys:
            try:
                kw[key] = f.metadata["check"](key, table[key])
            except BadValue as exc:
                problems.append((where, key, str(exc)))
        elif key not in kw and f.default is _REQUIRED:
            problems.append((where, key, f"missing required key {key!r}"))
    return cls(**kw) if len(problems) == n0 else None


def check_field(cls: type[DataclassInstance], key: str, value: Any) -> Any:
    """`value` checked by the check of field `key` of section dataclass `cls` (BadValue if invalid)."""
    return {f.name: f for f in dataclasses.fields(cls)}[key].metadata["check"](key, value)


def ctor_keys(cls: Callable[..., Any], config_cls: type[DataclassInstance]) -> set[str]:
    """The constructor arguments of `cls` that are fields of `config_cls`."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return set(inspect.signature(cls).parameters) & names


def data_keys(dataset: str) -> set[str]:
    """The [data] keys a config for `dataset` may set: the shared ones plus its loader's arguments."""
    loader_args = set(inspect.signature(LOADERS[dataset]).parameters)
    return set(DATA_SHARED) | (loader_args & {f.name for f in dataclasses.fields(DataConfig)})


__all__ = ["ConfigError", "BadValue", "parse_section", "check_field", "MethodsConfig", "ctor_keys", "data_keys", "DataConfig", "KernelConfig",
           "LearnerConfig", "PartitionConfig", "FAConfig", "OutputConfig", "ExecutionConfig", "ExactnessConfig",
           "DATASET_CLASSES",
           "ARCHITECTURES", "LEARNER_TYPES", "PARTITION_RULES", "FA_RULES", "BACKENDS", "DEFAULT_BUDGETS", "DATA_SHARED"]
