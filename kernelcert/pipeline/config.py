"""Run configuration: validation of a TOML document into a `RunConfig`, overrides and the config hash.

Sections are parsed by `kernelcert.pipeline.schema`; this module adds what spans sections (the
methods against the partitions and FA, sizes, device and backend checks), the objects a config
builds (`make_kernel`, `make_learner`, which also validate their own values), and the hash. Every
problem found is collected into one `ConfigError` that lists each with its section and key.
Nothing here computes a kernel matrix.

The config hash (`RunConfig.hash`) covers everything that can change a bit of a result: data,
kernel, learners, partitions, FA, methods, memory cap, block size, BLAS threads, device platform,
package version and the run-directory format (`kernelcert.pipeline.store.FORMAT_VERSION`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._jax import gpu_devices, resolve_device
from .._version import __version__
from ..data import LOADERS, arrays_feature_dtype, arrays_metadata
from ..kernels import Kernel
from ..learners import KernelRegression, KernelSVM
from .methods import REGISTRY
from .schema import (ARCHITECTURES, BACKENDS, DATASET_CLASSES, DEFAULT_BUDGETS, LEARNER_TYPES, BadValue, ConfigError,
                     DataConfig, ExactnessConfig, ExecutionConfig, FAConfig, KernelConfig, LearnerConfig, OutputConfig,
                     MethodsConfig, PartitionConfig, Problem, check_field, ctor_keys, data_keys, parse_section)
from .store import FORMAT_VERSION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def _set_fields(section: DataclassInstance | None) -> dict[str, Any] | None:
    """JSON form of a section dataclass without its None-valued (unset) fields; None for no section."""
    if section is None:
        return None
    return {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(section))).items() if v is not None}


# --------------------------------------------------------------------------- object factories
def make_kernel(kc: KernelConfig, *, max_block_bytes: int | None = None) -> Kernel:
    """The `kernelcert.kernels` object described by a KernelConfig."""
    cls = ARCHITECTURES[kc.architecture]
    kw = {k: getattr(kc, k) for k in ctor_keys(cls, KernelConfig)}
    if max_block_bytes is not None:
        kw["max_block_bytes"] = int(max_block_bytes)
    return cls(**kw)


def make_learner(lc: LearnerConfig) -> KernelSVM | KernelRegression:
    """A fresh, unfitted learner for a LearnerConfig."""
    cls = LEARNER_TYPES[lc.type]
    return cls(**{k: getattr(lc, k) for k in ctor_keys(cls, LearnerConfig)})


def num_classes_of(data: DataConfig) -> int:
    """Number of classes K implied by a [data] section."""
    if data.classes is not None:
        return len(data.classes)
    if data.dataset == "synthetic":
        return data.num_classes if data.num_classes is not None else 3
    if data.dataset == "arrays":
        if data.num_classes is None:  # declared or stored in the .npz (`_resolve_arrays` fills it in)
            raise ConfigError.of([("data", "num_classes", "dataset 'arrays' needs num_classes (or a num_classes "
                                                          "scalar in the .npz)")])
        return data.num_classes
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
    exactness: ExactnessConfig = ExactnessConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-able) dict of every field."""
        plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return plain

    def hash_payload(self) -> dict[str, Any]:
        """The fields that can change results (see the module docstring). Unset (None) fields are left
        out, so adding an option that defaults to None to a section (a new dataset, kernel or learner
        option) leaves the hash of every existing config unchanged; every other value, defaults
        included, is hashed (a changed default changes the hash)."""
        ex = self.execution
        return {"format": FORMAT_VERSION, "version": __version__, "data": _set_fields(self.data),
                "kernel": _set_fields(self.kernel), "learners": [_set_fields(lc) for lc in self.learners],
                "partition": _set_fields(self.partition), "fa": _set_fields(self.fa), "methods": list(self.methods),
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


_SECTIONS = ("data", "kernel", "learners", "partition", "fa", "methods", "output", "execution", "exactness")


def _default_learner_name(t: dict[str, Any]) -> str:
    if t.get("type") == "svm":
        return "svm" if t.get("C") is None else f"svm_C{t['C']:g}"
    name = f"regression_ridge{t.get('ridge', 0.0):g}"
    return name + (f"_t{t['train_time']:g}" if t.get("train_time") is not None else "")


def _parse_learners(items: object, problems: list[Problem]) -> tuple[LearnerConfig, ...]:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        problems.append(("learners", None, "need at least one [[learners]] entry (type = \"svm\" or \"regression\")"))
        return ()
    out: list[LearnerConfig] = []
    for i, t in enumerate(items):
        where = f"learners #{i + 1}"
        typ = t.get("type") if isinstance(t, dict) else None
        if not isinstance(typ, str) or typ not in LEARNER_TYPES:
            problems.append((where, "type", "each [[learners]] entry needs type = \"svm\" or \"regression\"" if typ is None
                             else f"type must be one of {', '.join(map(repr, LEARNER_TYPES))}, got {typ!r}"))
            continue
        allowed = {"type", "name"} | ctor_keys(LEARNER_TYPES[typ], LearnerConfig)
        defaults = {"name": _default_learner_name(t)} if "name" not in t else None
        lc = parse_section(LearnerConfig, where, t, problems, allowed=allowed, defaults=defaults)
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


def _parse_methods(t: object, partition: PartitionConfig | None, fa: FAConfig | None,
                   problems: list[Problem]) -> tuple[str, ...]:
    section = parse_section(MethodsConfig, "methods", t, problems)
    if section is None:
        return ()
    if section.aggregations is None:
        has_single = partition is not None and 1 in partition.num_partitions
        return tuple(m for m in REGISTRY if (REGISTRY[m].target != "fa" or fa is not None)
                     and (not REGISTRY[m].single_model or has_single))
    v = section.aggregations
    unknown = [m for m in v if m not in REGISTRY]
    if unknown:
        problems.append(("methods", "aggregations", f"unknown aggregation(s) {unknown}; known: {', '.join(REGISTRY)}"))
    for m in (m for m in v if m in REGISTRY):
        if REGISTRY[m].target == "fa" and fa is None:
            problems.append(("methods", "aggregations", f"{m!r} needs an [fa] section (d = number of shifts)"))
        if REGISTRY[m].single_model and partition is not None and 1 not in partition.num_partitions:
            problems.append(("methods", "aggregations",
                             f"{m!r} (the un-partitioned model) needs 1 in partition.num_partitions"))
    return tuple(m for m in REGISTRY if m in v)  # registry order


def _resolve_arrays(data: DataConfig, problems: list[Problem]) -> DataConfig:
    """[data] dataset = "arrays": one source (path or files), num_classes declared or stored in the .npz
    (never guessed from labels; both must agree), max_value likewise."""
    if (data.path is None) == (data.files is None):
        problems.append(("data", "path", "dataset 'arrays' needs exactly one of path = <.npz with x_train, y_train, "
                                         "x_test, y_test, or a directory of those .npy files> and files = {...}"))
        return data
    try:
        stored_k, stored_max = arrays_metadata(data.path, data.files_dict())
    except (FileNotFoundError, ValueError) as exc:
        problems.append(("data", "path" if data.path else "files", str(exc)))
        return data
    for key, given, stored in (("num_classes", data.num_classes, stored_k), ("max_value", data.max_value, stored_max)):
        if given is not None and stored is not None and given != stored:
            problems.append(("data", key, f"{key} = {given} but {data.path} stores {key} = {stored}"))
    if data.num_classes is None and stored_k is None:
        problems.append(("data", "num_classes", "dataset 'arrays' needs num_classes (or a num_classes scalar in the "
                                                ".npz); it is never guessed from the labels"))
    return dataclasses.replace(data, num_classes=data.num_classes if data.num_classes is not None else stored_k,
                               max_value=data.max_value if data.max_value is not None else stored_max)


def _integer_features_problems(data: DataConfig, partition: PartitionConfig, fa: FAConfig | None) -> list[Problem]:
    """The dpa_hash rule (DPA's pixel-sum hash) on arrays needs integer pixel features."""
    rules = [("partition", partition.rule), ("fa", fa.rule if fa is not None else None)]
    hashed = [sec for sec, rule in rules if rule == "dpa_hash"]
    if data.dataset != "arrays" or not hashed:
        return []
    try:
        dt = arrays_feature_dtype(data.path, data.files_dict())
    except (FileNotFoundError, ValueError):
        return []  # reported by _resolve_arrays
    if dt.kind in "iub":
        return []
    return [(sec, "rule", f"rule 'dpa_hash' (DPA's pixel-sum hash) needs integer pixel features, but the arrays' "
                          f"x_train is {dt}; use rule = 'ss_dpa' or 'seeded_hash' for real-valued features such as "
                          "embeddings") for sec in hashed]


def config_from_dict(d: dict[str, Any], *, name: str | None = None) -> RunConfig:
    """Validate a parsed TOML document into a `RunConfig`; one ConfigError (a ValueError) lists every
    problem. `name` is the default run name (e.g. the config file's stem) when [output] has none."""
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a table, got {type(d).__name__}")
    p: list[Problem] = []
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
        data = parse_section(DataConfig, "data", data_t, p, allowed=data_keys(ds) if ds else None)
    else:
        data = None
    kern_t = d.get("kernel", {})
    arch = kern_t.get("architecture", "fully_connected") if isinstance(kern_t, dict) else None
    arch = arch if isinstance(arch, str) else None
    allowed = ({"architecture", "kind", "dtype"} | ctor_keys(ARCHITECTURES[arch], KernelConfig)
               if arch in ARCHITECTURES else None)
    kernel = parse_section(KernelConfig, "kernel", kern_t, p, allowed=allowed)
    if kernel is not None and kernel.architecture == "precomputed":
        for key in ("train_train", "test_train"):
            if getattr(kernel, key) is None:
                p.append(("kernel", key, f"architecture 'precomputed' needs {key} = <.npy of "
                                         f"K({key.replace('_', ', ')})>"))
        if kernel.train_train is None or kernel.test_train is None:
            kernel = None
    if kernel is not None:
        try:
            make_kernel(kernel)  # the kernel's own validation (cheap; a precomputed kernel reads file headers)
        except (FileNotFoundError, TypeError, ValueError) as exc:
            p.append(("kernel", None, str(exc)))
    if data is not None and data.dataset == "arrays":
        data = _resolve_arrays(data, p)
    learners = _parse_learners(d["learners"], p) if "learners" in d else ()
    partition = parse_section(PartitionConfig, "partition", d.get("partition", {}), p)
    fa = None
    if "fa" in d:
        k_default = tuple(n for n in partition.num_partitions if n > 1) if partition else ()
        fa = parse_section(FAConfig, "fa", d["fa"], p, defaults={"k": k_default})
        if fa is not None and not fa.k:
            p.append(("fa", "k", "no k given and partition.num_partitions has no N_p > 1; set k = [...]"))
    methods = _parse_methods(d.get("methods", {}), partition, fa if "fa" in d else None, p)
    out_t = d.get("output", {})
    if name is not None and isinstance(out_t, dict) and "name" not in out_t:
        out_t = {**out_t, "name": name}
    output = parse_section(OutputConfig, "output", out_t, p)
    execution = parse_section(ExecutionConfig, "execution", d.get("execution", {}), p)
    exactness = parse_section(ExactnessConfig, "exactness", d.get("exactness", {}), p)
    if execution is not None:
        if execution.device == "gpu" and not gpu_devices():
            p.append(("execution", "device", "device = 'gpu' but JAX sees no GPU here; use 'auto' or 'cpu'"))
        if execution.backend == "dask" and execution.scheduler is None:
            p.append(("execution", "scheduler",
                      "backend 'dask' needs scheduler = 'tcp://host:port' (or use 'dask-local')"))
    if data is not None and kernel is not None:
        if data.dataset == "synthetic" and kernel.architecture == "convolutional":
            p.append(("kernel", "architecture", "the convolutional kernel needs image data; 'synthetic' gives vectors"))
        k_total = ((data.num_classes or 3) if data.dataset == "synthetic" else data.num_classes
                   if data.dataset == "arrays" else DATASET_CLASSES.get(data.dataset))
        if data.classes is not None and len(data.classes) < 2:
            p.append(("data", "classes", f"classes must list at least two classes, got {list(data.classes)}"))
        elif data.classes is not None and k_total is not None and max(data.classes) >= k_total:
            p.append(("data", "classes", f"classes {list(data.classes)} out of range for {data.dataset} "
                                         f"(labels 0..{k_total - 1})"))
    if data is not None and partition is not None:
        p += size_problems(data.n_train, partition, fa)
        p += _integer_features_problems(data, partition, fa)
    if p:
        raise ConfigError.of(p)
    # every section that failed to parse (None) appended a problem above
    assert data is not None and kernel is not None and partition is not None
    assert output is not None and execution is not None and exactness is not None
    return RunConfig(data=data, kernel=kernel, learners=learners, partition=partition, fa=fa, methods=methods,
                     output=output, execution=execution, exactness=exactness)


def size_problems(n_train: int | None, partition: PartitionConfig, fa: FAConfig | None,
                  what: str | None = None) -> list[Problem]:
    """Size checks against the training-set size n (None: unknown until the data is loaded):
    every N_p <= n and every FA k*d <= n. `what` describes n in the messages."""
    if n_train is None:
        return []
    what = what or f"n_train={n_train}"
    p: list[Problem] = [("partition", "num_partitions", f"num_partitions {n_p} exceeds the training set size {what}")
         for n_p in partition.num_partitions if n_p > n_train]
    if fa is not None:
        p += [("fa", "k", f"k*d = {k}*{fa.d} = {k * fa.d} groups exceed {what}")
              for k in fa.k if k * fa.d > n_train]
    return p


def load_config(path: str | os.PathLike[str], **overrides: Any) -> RunConfig:
    """Read and validate a TOML config file; `overrides` as in `with_overrides`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        with open(file, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML ({exc})") from None
    try:
        cfg = config_from_dict(doc, name=file.stem)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}", exc.problems) from None
    return with_overrides(cfg, **overrides) if overrides else cfg


def parse_toml(text: str) -> dict[str, Any]:
    """The TOML document `text` as a dict (ConfigError on invalid TOML)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML ({exc})") from None


def load_config_string(text: str, *, name: str = "run", **overrides: Any) -> RunConfig:
    """Same as `load_config` for TOML text."""
    cfg = config_from_dict(parse_toml(text), name=name)
    return with_overrides(cfg, **overrides) if overrides else cfg


def with_overrides(cfg: RunConfig, *, out_dir: str | os.PathLike[str] | None = None, backend: str | None = None,
                   workers: int | None = None, scheduler: str | None = None, progress: bool | None = None,
                   plots: bool | None = None, device: str | None = None) -> RunConfig:
    """Copy of `cfg` with command-line overrides (none of them changes the config hash).

    scheduler implies backend "dask"; workers without a scheduler implies "dask-local" unless a
    backend is given.
    """
    ex, out = cfg.execution, cfg.output
    try:
        if scheduler is not None:
            ex = dataclasses.replace(ex, scheduler=str(scheduler), backend="dask")
        if workers is not None:
            ex = dataclasses.replace(ex, workers=check_field(ExecutionConfig, "workers", workers),
                                     backend=ex.backend if scheduler is not None else "dask-local")
        if backend is not None:
            ex = dataclasses.replace(ex, backend=check_field(ExecutionConfig, "backend", backend))
        if device is not None:
            ex = dataclasses.replace(ex, device=check_field(ExecutionConfig, "device", device))
    except BadValue as exc:
        raise ConfigError.of([("execution", None, str(exc))]) from None
    if device == "gpu" and not gpu_devices():
        raise ConfigError.of([("execution", "device", "--device gpu but JAX sees no GPU here; use auto or cpu")])
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
           "ExecutionConfig", "ConfigError", "load_config", "load_config_string", "config_from_dict", "parse_toml",
           "with_overrides", "make_kernel", "make_learner", "size_problems", "num_classes_of", "DATASET_CLASSES",
           "ARCHITECTURES", "LEARNER_TYPES", "BACKENDS", "DEFAULT_BUDGETS"]
