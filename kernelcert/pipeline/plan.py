"""The plan of a run, built once: data, aggregation targets, work units with fingerprints, size and
C_max checks. Everything after planning (units, aggregation, summary) reads the plan, never the
config's partition / FA sections again.

An aggregation target is one ensemble the methods aggregate: the N_p partitions of a partition
ensemble, or the k*d learners of a Finite Aggregation spread (with its shifts). Each of its
members is a work unit (one base-model training set).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Split, arrays_split_sizes, load_dataset
from ..kernels import PrecomputedKernel, max_abs_row_sum
from ..partition import fa_groups, fa_spread, partition
from .config import ConfigError, RunConfig, make_kernel, size_problems
from .progress import progress
from .store import atomic_write_text, read_json, unit_key
from .unit import kernel_block_bytes

logger = logging.getLogger("kernelcert.pipeline")


@dataclass(frozen=True)
class UnitSpec:
    """One work unit: member `index` of the target (kind, size); its training rows and a fingerprint
    (sha256 of its training data and the test points) that ties a stored unit to its inputs."""

    key: str
    kind: str
    num_partitions: int
    index: int
    train_index: np.ndarray = field(repr=False)
    fingerprint: str = ""

    @property
    def size(self) -> int:
        return int(len(self.train_index))


@dataclass(frozen=True)
class AggregationTarget:
    """One ensemble to aggregate: kind "partition" (size = N_p) or "fa" (size = k, `d` shifts,
    `shifts` (d,) int64); `units` are the keys of its members in model order."""

    kind: str
    size: int
    units: tuple[str, ...]
    d: int | None = None
    shifts: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RunPlan:
    """Data, work units and aggregation targets of a run (computed before any heavy work)."""

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    units: tuple[UnitSpec, ...]
    targets: tuple[AggregationTarget, ...]
    # what the kernel is evaluated on: the features, or for a precomputed kernel the index rows
    # (split, row) of `PrecomputedKernel.train_points` / `test_points`
    k_train: np.ndarray = field(repr=False)
    k_test: np.ndarray = field(repr=False)

    @property
    def fa_shifts(self) -> dict:
        """k -> FA shifts (d,) int64."""
        return {t.size: t.shifts for t in self.targets if t.kind == "fa"}


def load_data(cfg: RunConfig, *, raw: bool = False) -> Split:
    """(x_train, y_train, x_test, y_test) via `kernelcert.data.load_dataset`; raw=True gives unscaled pixels.
    With a precomputed kernel (and not raw) also (idx_train, idx_test): the kept rows of the source splits."""
    d = cfg.data
    opts: dict[str, Any] = {"seed": d.seed, "flatten": cfg.kernel.architecture != "convolutional",
                            "scale": False if raw else d.scale, "normalize": False if raw else d.normalize}
    if d.classes is not None:
        opts["classes"] = list(d.classes)
    for key in ("n_train", "n_test", "path", "num_classes", "dim", "separation", "test_fraction", "max_value"):
        if getattr(d, key) is not None:
            opts[key] = getattr(d, key)
    if d.files is not None:
        opts["files"] = d.files_dict()
    if cfg.kernel.architecture == "precomputed" and not raw:
        opts["return_index"] = True
    return load_dataset(d.dataset, **opts)


def precomputed_inputs(cfg: RunConfig, idx_train: np.ndarray, idx_test: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(train index rows, test index rows, fingerprint of the kernel files) for a precomputed kernel;
    ConfigError when the files' rows do not match the data (sizes of an arrays source, or a kept
    sample beyond the files' rows). The fingerprint (path, size, mtime of both files) lets a resumed
    run notice replaced kernel files."""
    kc = cfg.kernel
    kernel = make_kernel(kc)
    assert isinstance(kernel, PrecomputedKernel), "precomputed_inputs needs architecture = 'precomputed'"
    if cfg.data.dataset == "arrays":
        n_tr, n_te = arrays_split_sizes(cfg.data.path, cfg.data.files_dict())
        for path, got, want, what in ((kc.train_train, kernel.num_train, n_tr, "training"),
                                      (kc.test_train, kernel.num_test, n_te, "test")):
            if got != want:
                raise ConfigError(f"config [kernel]: {path} has {got} rows but the arrays have {want} {what} samples")
    for what, idx, n, path in (("training", idx_train, kernel.num_train, kc.train_train),
                               ("test", idx_test, kernel.num_test, kc.test_train)):
        if len(idx) and idx.max() >= n:
            raise ConfigError(f"config [kernel]: {path} has {n} rows but the data has {what} sample {int(idx.max())} "
                              f"(rows follow the dataset's full {what} split, before classes / n_train / n_test)")
    stats = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns)
             for p in (kc.train_train, kc.test_train) if p is not None]
    return (PrecomputedKernel.train_points(idx_train), PrecomputedKernel.test_points(idx_test),
            hashlib.sha256(json.dumps(stats).encode()).hexdigest())


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fa_sets(cfg: RunConfig, x: np.ndarray, k: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Training index sets of the k*d FA learners and the shifts (docs/math.md §5)."""
    fa = cfg.fa
    if fa is None:
        raise ConfigError("config: no [fa] section")
    n = len(x)
    kw = {"seed": fa.hash_seed} if fa.rule == "seeded_hash" else {}
    try:
        groups = fa_groups(x.reshape(n, -1), k, fa.d, rule=fa.rule, **kw)
        spread = fa_spread(groups, k, fa.d, seed=fa.seed)
    except ValueError as exc:
        raise ConfigError(f"config [fa]: k={k}, d={fa.d}: {exc}") from None
    sets = [np.sort(np.asarray(spread.learner_indices(l), np.int64)) for l in range(k * fa.d)]
    return sets, np.asarray(spread.shifts, np.int64)


def plan_run(cfg: RunConfig) -> RunPlan:
    """Load the data, compute partitions (features only) and FA spread sets; ConfigError on bad sizes."""
    try:
        x_tr, y_tr, x_te, y_te, *kept = load_data(cfg)
    except (FileNotFoundError, TypeError, ValueError) as exc:
        raise ConfigError(f"config [data]: cannot load {cfg.data.dataset!r}: {exc}") from None
    k_tr, k_te, kernel_fp = x_tr, x_te, ""
    if kept:  # precomputed kernel: evaluated on index rows of its files
        k_tr, k_te, kernel_fp = precomputed_inputs(cfg, *kept)
    K = cfg.num_classes
    for name, yy in (("training", y_tr), ("test", y_te)):
        if len(yy) and (yy.min() < 0 or yy.max() >= K):
            raise ConfigError(f"config [data]: {name} labels outside 0..{K - 1}")
    n = len(y_tr)
    if len(y_te) == 0 or n == 0:
        raise ConfigError("config [data]: empty training or test set")
    if cfg.data.n_train is not None and n < cfg.data.n_train:
        logger.warning("n_train = %d exceeds the %d training samples available: using %d", cfg.data.n_train, n, n)
    problems = size_problems(n, cfg.partition, cfg.fa, what=f"the {n} training samples loaded")
    if problems:
        raise ConfigError.of(problems)
    needs_raw = cfg.partition.rule == "dpa_hash" or (cfg.fa is not None and cfg.fa.rule == "dpa_hash")
    x_raw = x_tr  # replaced by the unscaled pixels where a rule needs them
    if needs_raw:  # integer pixels for the DPA pixel-sum hash: the same subsample, unscaled
        x_raw, y_raw, _, y_te_raw, *_ = load_data(cfg, raw=True)
        if len(x_raw) != n or not np.array_equal(y_raw, y_tr) or not np.array_equal(y_te_raw, y_te):
            raise ConfigError("config [data]: the unscaled data needed by the dpa_hash rule is not the same "
                              "subsample as the scaled data")
    units: list[UnitSpec] = []
    targets: list[AggregationTarget] = []
    for n_p in cfg.partition.num_partitions:
        if n_p == 1:
            assign = np.zeros(n, np.int64)
        else:
            src = x_raw if cfg.partition.rule == "dpa_hash" else x_tr
            kw = {"seed": cfg.partition.seed} if cfg.partition.rule == "seeded_hash" else {}
            try:
                assign = partition(src.reshape(n, -1), n_p, cfg.partition.rule, **kw)
            except ValueError as exc:
                raise ConfigError(f"config [partition]: N_p={n_p}: {exc}") from None
        members = [UnitSpec(unit_key("partition", n_p, i), "partition", n_p, i, np.flatnonzero(assign == i))
                   for i in range(n_p)]
        units += members
        targets.append(AggregationTarget("partition", n_p, tuple(u.key for u in members)))
    if cfg.fa is not None:
        for k in cfg.fa.k:
            sets, shifts = _fa_sets(cfg, x_tr if cfg.fa.rule == "seeded_hash" else x_raw, k)
            members = [UnitSpec(unit_key("fa", k, i, cfg.fa.d), "fa", k, i, idx) for i, idx in enumerate(sets)]
            units += members
            targets.append(AggregationTarget("fa", k, tuple(u.key for u in members), cfg.fa.d, shifts))
    for u in units:
        if u.size == 0:
            raise ConfigError(f"work unit {u.key} has no training samples; use fewer partitions")
    # Fingerprints tie each stored unit to the exact data it was computed from, so that a resumed run
    # never reuses a unit whose inputs changed (e.g. a data-loader change the config hash cannot see).
    # (a precomputed kernel's units are tied to its files' fingerprint and their index rows)
    fp_parts = (np.array([kernel_fp.encode()]),) if kernel_fp else ()
    test_fp = _digest(np.ascontiguousarray(k_te), y_te, np.array([K]), *fp_parts)
    units = [dataclasses.replace(u, fingerprint=_digest(np.array([test_fp.encode()]), u.train_index,
                                                        np.ascontiguousarray(k_tr[u.train_index]), y_tr[u.train_index]))
             for u in units]
    return RunPlan(x_tr, y_tr, x_te, y_te, K, tuple(units), tuple(targets), k_tr, k_te)


def check_c_max(cfg: RunConfig, plan: RunPlan, run_dir: Path) -> dict:
    """Pre-pass for SVMs with an explicit C: C <= C_max = 1 / max_i sum_j |K_ij| on every unit.

    One streamed kernel evaluation per unit (`kernels.max_abs_row_sum`, no Gram kept, no fits),
    cached in `cmax_prepass.json` for resumed runs. ConfigError naming the offending units.
    Returns {unit key: C_max bound}.
    """
    explicit = [lc for lc in cfg.learners if lc.type == "svm" and lc.C is not None]
    if not explicit:
        return {}
    cache_path = run_dir / "cmax_prepass.json"
    cache = read_json(cache_path, {})
    kernel = make_kernel(cfg.kernel, max_block_bytes=kernel_block_bytes(cfg.execution))
    todo = [u for u in plan.units if u.key not in cache]
    if todo:
        logger.info("C_max pre-pass (explicit SVM C): %d work units", len(todo))
        for u in progress(todo, cfg.execution.progress, desc="C_max pre-pass", unit="unit"):
            cache[u.key] = 1.0 / max_abs_row_sum(kernel, plan.k_train[u.train_index], kind=cfg.kernel.kind)
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


__all__ = ["UnitSpec", "AggregationTarget", "RunPlan", "plan_run", "load_data", "precomputed_inputs", "check_c_max"]
