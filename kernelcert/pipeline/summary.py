"""The run's tables: `summary.json` (per-method numbers, unit statistics, timings, memory) and
`points.csv` (one row per test point, one column per learner/N_p/method/field), the same numbers as a
tidy long table (`points_long.parquet` when pyarrow is installed, `points_long.csv` otherwise: one row
per test point, learner, N_p or k, method), plus their readers.

MCR numbers are given in both conventions of docs/math.md §1: "radius" (the largest budget with
certified accuracy >= 50%) and "anchor" (that plus one, as the DPA/FA/ROE scripts print it).

Per-point flags: `exact` (the radius is the true robustness radius of the aggregate, proven),
`exact_before_refinement` (EnsembleCert with `[exactness] refine`), and, for white-box ROE with
`[exactness] refine`, `resolved` / `resolved_before_refinement`: the radius proven equal to the
white-box certificate at the exact per-class costs — a statement about the certificate, which stays
a lower bound on the run-off election's true radius (docs/math.md §4.4), so `exact` stays 0 there.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..metrics import certified_accuracy, median_certified_robustness
from ..procmem import peak_rss_mb
from .aggregate import MethodResult
from .config import RunConfig
from .plan import RunPlan
from .store import UnitFile, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

def resolved_flags(r: MethodResult) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(resolved, resolved_before) (t,) bool of a white-box ROE result refined by `[exactness] refine`
    (the fields of `kernelcert.pipeline.exactness.RefinedWhiteboxResult`); (None, None) for any other
    result."""
    resolved: np.ndarray | None = getattr(r, "resolved", None)
    before: np.ndarray | None = getattr(r, "resolved_before", None)
    return resolved, before


MCR_CONVENTIONS = {"radius": "largest budget r with certified accuracy >= 50% (docs/math.md §1)",
                   "anchor": "radius convention + 1, as printed by the DPA/FA/ROE scripts (docs/math.md §7.0.2)"}


def method_summary(r: MethodResult, y_test: np.ndarray, budgets: Iterable[int]) -> dict[str, Any]:
    """Accuracy, certified accuracy at `budgets`, MCR (both conventions), exactness and the curve."""
    correct = r.prediction == y_test
    eff = np.where(correct, r.radius, -1)
    vals = np.unique(eff[eff >= 0])
    curve_acc = [float(np.mean(eff >= v)) for v in vals]
    d: dict[str, Any] = {"learner": r.learner, "num_partitions": r.num_partitions, "method": r.method,
         "clean_accuracy": float(np.mean(correct)),
         "certified_accuracy": {str(b): certified_accuracy(r.radius, correct, int(b)) for b in budgets},
         "mcr": {"radius": median_certified_robustness(r.radius, correct, "radius"),
                 "anchor": median_certified_robustness(r.radius, correct, "anchor")},
         "exact_fraction": float(np.mean(r.exact)),
         "median_radius": float(np.median(r.radius)),
         "curve": {"radius": [int(v) for v in vals], "certified_accuracy": curve_acc}}
    if r.exact_before is not None:
        d["exact_fraction_before_refinement"] = float(np.mean(r.exact_before))
    resolved, resolved_before = resolved_flags(r)
    if resolved is not None and resolved_before is not None:
        d["resolved_fraction"] = float(np.mean(resolved))
        d["resolved_fraction_before_refinement"] = float(np.mean(resolved_before))
    if r.radius_upper is not None:
        d["mcr_upper"] = {"radius": median_certified_robustness(r.radius_upper, correct, "radius"),
                          "anchor": median_certified_robustness(r.radius_upper, correct, "anchor")}
        d["bounds_agree_fraction"] = float(np.mean(r.radius == r.radius_upper))
    return d


def _unit_statistics(cfg: RunConfig, plan: RunPlan, files: dict[str, UnitFile],
                     computed_keys: Iterable[str]
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, float]]:
    """(base-model accuracy, SVM C_max per partition ensemble, unit seconds, worker peak memory of
    this run: over the units computed by this run, whose workers' peaks were reset at its start)."""
    metas = {k: f.meta() for k, f in files.items()}
    peaks: dict[str, float] = {}
    for m in (metas[k] for k in computed_keys):
        wid = f"{m['host']}:{m['pid']}"
        peaks[wid] = max(peaks.get(wid, 0.0), float(m["peak_rss_mb"]))
    base_acc: dict[str, Any] = {}
    c_max: dict[str, Any] = {}
    for j, lc in enumerate(cfg.learners):
        for target in (t for t in plan.targets if t.kind == "partition"):
            accs = [float(np.mean(files[k].rows(f"L{j}.votes") == plan.y_test)) for k in target.units]
            base_acc.setdefault(lc.name, {})[str(target.size)] = {
                "mean": float(np.mean(accs)), "min": float(np.min(accs)), "max": float(np.max(accs))}
            if lc.type == "svm":
                cm = np.array([metas[k]["c_max"][j] for k in target.units])
                c_max.setdefault(lc.name, {})[str(target.size)] = {
                    "min": float(cm.min()), "median": float(np.median(cm)), "max": float(cm.max()),
                    "C_used": "C_max per partition" if lc.C is None else lc.C}
    seconds = {k: float(sum(m["seconds"][k] for m in metas.values())) for k in ("gram", "fit", "certify", "total")}
    return base_acc, c_max, seconds, peaks


def build_summary(cfg: RunConfig, plan: RunPlan, results: list[MethodResult], files: dict[str, UnitFile], *,
                  run_dir: Path, cfg_hash: str, prepass: dict[str, float], computed: Collection[str], skipped: int,
                  timings: dict[str, float], backend_info: dict[str, Any]) -> dict[str, Any]:
    """The summary dict written to summary.json (and read by the report); `computed`: the keys of
    the units this run computed."""
    base_acc, c_max, seconds, peaks = _unit_statistics(cfg, plan, files, computed)
    return {
        "config_hash": cfg_hash, "run_dir": str(run_dir), "name": cfg.output.name,
        "data": {"dataset": cfg.data.dataset, "n_train": len(plan.y_train), "n_test": len(plan.y_test),
                 "num_classes": plan.num_classes, "feature_shape": list(plan.x_train.shape[1:])},
        "kernel": dataclasses.asdict(cfg.kernel), "learners": [dataclasses.asdict(lc) for lc in cfg.learners],
        "partition": dataclasses.asdict(cfg.partition),
        "fa": None if cfg.fa is None else {**dataclasses.asdict(cfg.fa),
                                           "shifts": {str(k): v.tolist() for k, v in plan.fa_shifts.items()}},
        "methods": list(cfg.methods), "budgets": list(cfg.output.budgets),
        "mcr_conventions": MCR_CONVENTIONS,
        "results": [method_summary(r, plan.y_test, cfg.output.budgets) for r in results],
        "base_model_accuracy": base_acc,
        "c_max": c_max,
        "c_max_prepass": {"units": len(prepass), "min": min(prepass.values())} if prepass else None,
        "units": {"total": len(plan.units), "computed": len(computed), "skipped": skipped, "seconds_sum": seconds},
        "timings": timings,
        "memory": {"main_peak_rss_mb": peak_rss_mb(), "unit_peak_rss_mb": peaks,
                   "memory_cap_mb": cfg.execution.memory_cap_mb},
        "execution": {"backend": cfg.execution.backend, **backend_info},
    }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write `summary` to `path` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(summary, indent=1, sort_keys=False))


def write_points(path: Path, y_test: np.ndarray, results: list[MethodResult]) -> None:
    """points.csv: index, label, then learner/N_p/method/{prediction, radius, exact[, radius_upper]
    [, exact_before_refinement][, resolved, resolved_before_refinement]}; flags as 0/1."""
    cols = ["index", "label"]
    data = [np.arange(len(y_test)), y_test]
    for r in results:
        base = f"{r.learner}/{r.num_partitions}/{r.method}"
        cols += [f"{base}/prediction", f"{base}/radius", f"{base}/exact"]
        data += [r.prediction, r.radius, r.exact.astype(np.int64)]
        if r.radius_upper is not None:
            cols.append(f"{base}/radius_upper")
            data.append(r.radius_upper)
        if r.exact_before is not None:
            cols.append(f"{base}/exact_before_refinement")
            data.append(r.exact_before.astype(np.int64))
        resolved, resolved_before = resolved_flags(r)
        if resolved is not None and resolved_before is not None:
            cols += [f"{base}/resolved", f"{base}/resolved_before_refinement"]
            data += [resolved.astype(np.int64), resolved_before.astype(np.int64)]
    table = np.stack([np.asarray(c, np.int64) for c in data], axis=1)
    lines = [",".join(cols)]
    lines += [",".join(map(str, row)) for row in table.tolist()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_points(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """(column names, int64 table) of a points.csv."""
    with open(path) as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    return header, table


POINTS_LONG_NAMES = ("points_long.parquet", "points_long.csv")
POINTS_LONG_COLUMNS = ("point", "label", "learner", "num_partitions", "method", "prediction", "radius",
                       "radius_upper", "exact", "exact_before_refinement", "resolved", "resolved_before_refinement",
                       "correct")
_LONG_DTYPES = {"point": "int64", "label": "int64", "learner": "string", "num_partitions": "int64",
                "method": "string", "prediction": "int64", "radius": "int64", "radius_upper": "Int64",
                "exact": "bool", "exact_before_refinement": "boolean", "resolved": "boolean",
                "resolved_before_refinement": "boolean", "correct": "bool"}
_LONG_OPTIONAL = ("radius_upper", "exact_before_refinement", "resolved", "resolved_before_refinement")
"""Long-table columns missing (<NA>) where a method has none."""


def points_long_frame(y_test: np.ndarray, results: list[MethodResult]) -> pd.DataFrame:
    """The tidy form of points.csv: one row per (method result, test point), columns
    `POINTS_LONG_COLUMNS`; `num_partitions` is N_p for partition methods and k for FA methods;
    radius_upper / exact_before_refinement / resolved / resolved_before_refinement are missing (<NA>)
    where a method has none; correct = prediction == label. Rows in the order of points.csv's column
    groups, then points."""
    import pandas as pd  # imported where the long table is built or read: `import kernelcert` stays light
    y_test = np.asarray(y_test, np.int64)
    t = len(y_test)
    frames = []

    def optional_flags(flags: np.ndarray | None) -> pd.api.extensions.ExtensionArray:
        return pd.array(np.asarray(flags, bool) if flags is not None else [pd.NA] * t, dtype="boolean")

    for r in results:
        resolved, resolved_before = resolved_flags(r)
        frames.append(pd.DataFrame({
            "point": np.arange(t, dtype=np.int64), "label": y_test, "learner": r.learner,
            "num_partitions": int(r.num_partitions), "method": r.method,
            "prediction": np.asarray(r.prediction, np.int64), "radius": np.asarray(r.radius, np.int64),
            "radius_upper": pd.array(np.asarray(r.radius_upper, np.int64) if r.radius_upper is not None
                                     else [pd.NA] * t, dtype="Int64"),
            "exact": np.asarray(r.exact, bool),
            "exact_before_refinement": optional_flags(r.exact_before),
            "resolved": optional_flags(resolved), "resolved_before_refinement": optional_flags(resolved_before),
            "correct": np.asarray(r.prediction, np.int64) == y_test}))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(POINTS_LONG_COLUMNS))
    return frame.astype(_LONG_DTYPES)[list(POINTS_LONG_COLUMNS)]


def write_points_long(run_dir: str | os.PathLike[str], y_test: np.ndarray, results: list[MethodResult]) -> Path:
    """Write the long table into `run_dir` atomically: Parquet when pyarrow is importable, CSV
    otherwise (missing values as empty fields). Removes a stale table of the other format. Returns
    the path written."""
    run_dir = Path(run_dir)
    frame = points_long_frame(y_test, results)
    try:
        import pyarrow  # noqa: F401  (optional dependency: Parquet output only when it is installed)
    except ImportError:
        path = run_dir / "points_long.csv"
        atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    else:
        path = run_dir / "points_long.parquet"
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(path, buf.getvalue())
    remove_stale_points_long(run_dir, path.name)
    return path


def remove_stale_points_long(directory: str | os.PathLike[str], written: str) -> None:
    """Delete the long tables in `directory` other than `written` (one of `POINTS_LONG_NAMES`): a table
    of the other format left by an earlier write without / with pyarrow would be out of date."""
    for name in POINTS_LONG_NAMES:
        if name != written:
            (Path(directory) / name).unlink(missing_ok=True)


def read_points_long(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The long per-point table of a run directory (or of the file itself) as a pandas DataFrame
    with columns `POINTS_LONG_COLUMNS` (radius_upper: nullable Int64; exact_before_refinement,
    resolved, resolved_before_refinement: nullable boolean; a table written before a column existed
    reads it as all <NA>). Raises FileNotFoundError naming the directory when neither file exists."""
    import pandas as pd  # imported where the long table is built or read: `import kernelcert` stays light
    path = Path(run_dir)
    if path.is_dir():
        found = [path / n for n in POINTS_LONG_NAMES if (path / n).exists()]
        if not found:
            raise FileNotFoundError(f"{path}: no {' or '.join(POINTS_LONG_NAMES)} (written by runs of kernelcert "
                                    "since the long table was added; re-run the config to write it)")
        path = found[0]
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={"learner": "string", "method": "string"}, keep_default_na=False,
                            na_values={col: [""] for col in _LONG_OPTIONAL})
        for col in ("exact", "correct"):
            frame[col] = frame[col].map({True: True, False: False, "True": True, "False": False})
    for col in _LONG_OPTIONAL:
        if col not in frame.columns:
            frame[col] = pd.NA
    return frame.astype(_LONG_DTYPES)[list(POINTS_LONG_COLUMNS)]


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary dict of a summary.json (or of the run directory holding it)."""
    p = Path(path)
    summary: dict[str, Any] = json.loads((p / "summary.json" if p.is_dir() else p).read_text())
    return summary


__all__ = ["method_summary", "resolved_flags", "build_summary", "write_summary", "write_points", "read_points",
           "read_summary",
           "MCR_CONVENTIONS", "POINTS_LONG_COLUMNS", "POINTS_LONG_NAMES", "points_long_frame", "write_points_long",
           "remove_stale_points_long", "read_points_long"]
