"""Benchmark: the paper's experiments on real data (MNIST, MNIST 1 vs 7, Fashion-MNIST), on the pipeline.

    .venv/bin/python -m benchmarks.experiments --quick   # ~3 min: n_train 3000, n_test 300, N_p in {1, 10, 50}
    .venv/bin/python -m benchmarks.experiments           # full (resumable): see MODES below

Every number comes from `kernelcert.pipeline.run` (one run per dataset and training-set size; infinite-width
fully connected ReLU network, NTK on pixels in [0, 1], SS-DPA partitions). Learners: the small-C kernel SVM
(C = C_max of every partition, docs/math.md §2) and kernel (ridge) regression at one or more ridges. Aggregations:
the single model (N_p = 1, ScaLabelCert), DPA, EnsembleCert (lower and upper bound), DPA+ROE, white-box ROE,
FA and FA+ROE (k = N_p, d shifts).

N_p is limited to n_train / MIN_PER_PARTITION. In full mode the un-partitioned model (N_p = 1) needs the
whole training Gram and its certificates cost as much as an ensemble's, so each 10-class dataset gets two
runs: "main" (the larger training set, N_p > 1 only) and "small" (a smaller training set with N_p = 1 and
a few ensembles, the like-for-like comparison of partition against no partition). The training-set sizes
are in MODES and in the output.

Reported per dataset x run x learner x N_p x method: clean accuracy, certified accuracy at budgets, MCR in
both conventions (docs/math.md §1 "radius" and the anchor scripts' radius + 1), the fraction of exact radii,
EnsembleCert's bound gap (lower == upper fraction, gap sizes, MCR of the upper bound), the fraction of
exact per-model class costs (read from the run's unit files), unit timings per N_p and aggregation time
per method. Plots: MCR vs N_p and certified accuracy vs budget per dataset. Findings are sentences
computed from these numbers.

Full mode is resumable: the pipeline's run directories live under runs/experiments/ (git-ignored) and
skip finished work units; the JSON is rewritten after every run with "complete": false until the end.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kernelcert import pipeline
from kernelcert.pipeline import store
from kernelcert.pipeline.aggregate import AggTask, aggregate_block
from kernelcert.pipeline.methods import METHODS, REGISTRY, method_label, method_style
from kernelcert.pipeline.report import curve_at_budgets

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "experiments"

KERNEL = {"architecture": "fully_connected", "depth": 1, "W_std": 2.0 ** 0.5, "b_std": 0.0, "activation": "relu",
          "kind": "ntk"}
PARTITION_RULE = "ss_dpa"
MIN_PER_PARTITION = 40  # smallest mean partition size allowed (N_p <= n_train / 40)
NP_GRID = (1, 10, 50, 100, 500, 1000)
ALL_METHODS = METHODS  # the registry's order
ENSEMBLE_METHODS = tuple(m for m in METHODS if not REGISTRY[m].single_model)
BUDGETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
TABLE_BUDGETS = ("0", "1", "2", "5", "10", "20", "50")
AGG_TIMING_ROWS = 200  # test points on which each aggregation method is timed (reported per point)

DATASETS = {
    "mnist": {"label": "MNIST (10 classes)", "data": {"dataset": "mnist"}},
    "mnist_1v7": {"label": "MNIST 1 vs 7", "data": {"dataset": "mnist", "classes": [1, 7]}},
    "fashion_mnist": {"label": "Fashion-MNIST (10 classes)", "data": {"dataset": "fashion_mnist"}},
}

# runs per dataset: (run name, n_train, n_test, N_p values before the MIN_PER_PARTITION filter)
MODES = {
    "quick": {
        "ridges": (0.1,), "fa_d": 2, "backend": "inprocess",
        "runs": {ds: [("main", 3000, 300, (1, 10, 50))] for ds in DATASETS},
    },
    "full": {
        "ridges": (1e-3, 1e-1, 10.0), "fa_d": 2, "backend": "dask-local",
        "runs": {
            # MNIST 1 vs 7 has 13007 training points: its whole training set fits for N_p = 1.
            "mnist_1v7": [("main", 13000, 500, (1, 10, 50, 100, 500, 1000))],
            "mnist": [("small", 10000, 500, (1, 10, 50)), ("main", 20000, 500, (10, 50, 100, 500, 1000))],
            "fashion_mnist": [("small", 10000, 500, (1, 10, 50)), ("main", 20000, 500, (10, 50, 100, 500, 1000))],
        },
    },
}


# =========================================================================== configs
def learner_specs(ridges) -> list[dict]:
    """[[learners]] tables: the C_max SVM and kernel regression at each ridge."""
    out = [{"type": "svm", "name": "svm"}]
    out += [{"type": "regression", "name": f"krr_ridge{r:g}", "ridge": float(r)} for r in ridges]
    return out


def learner_label(spec: dict) -> str:
    if spec["type"] == "svm":
        return "SVM (C = C_max)" if spec.get("C") is None else f"SVM (C = {spec['C']:g})"
    return f"KRR (ridge {spec['ridge']:g})"


def feasible_partitions(n_train: int, candidates, min_per_partition: int = MIN_PER_PARTITION) -> tuple[int, ...]:
    """The candidate N_p values with at least `min_per_partition` training points per partition on average."""
    return tuple(sorted(n for n in candidates if n == 1 or n * min_per_partition <= n_train))


def make_config(dataset: str, data: dict, run_name: str, n_train: int, n_test: int, nps, ridges, fa_d: int,
                out_dir: Path, backend: str = "inprocess", workers: int = 2,
                kernel: dict | None = None) -> pipeline.RunConfig:
    """The pipeline RunConfig of one experiment run (every applicable method, FA with k = the N_p > 1)."""
    nps = tuple(sorted(nps))
    methods = [m for m in ALL_METHODS if not (REGISTRY[m].single_model and 1 not in nps)
               and not (REGISTRY[m].target == "fa" and not any(n > 1 for n in nps))]
    doc = {
        "data": {**data, "n_train": int(n_train), "n_test": int(n_test), "seed": 0},
        "kernel": dict(kernel or KERNEL),
        "learners": learner_specs(ridges),
        "partition": {"rule": PARTITION_RULE, "num_partitions": list(nps)},
        "methods": {"aggregations": methods},
        "output": {"dir": str(out_dir), "name": f"{dataset}-{run_name}", "budgets": list(BUDGETS), "plots": False},
        "execution": {"backend": backend, "workers": int(workers), "memory_cap_mb": 1024, "progress": False},
    }
    if any(n > 1 for n in nps) and fa_d:
        doc["fa"] = {"d": int(fa_d), "k": [n for n in nps if n > 1 and n * fa_d <= n_train]}
    return pipeline.config_from_dict(doc)


# =========================================================================== extraction from a run
def _unit_files(run_dir: Path, kind: str, n_p: int, count: int, d: int | None = None):
    return [store.UnitFile(store.unit_path(run_dir, store.unit_key(kind, n_p, i, d))) for i in range(count)]


def _class_cost_exactness(files, j: int) -> dict:
    """Per-model class costs of learner j over all (test point, partition) pairs: exact fraction and gaps."""
    exact, gaps, cells, cells_exact = 0, [], 0, 0
    n_pairs = 0
    for f in files:
        ce = f.rows(f"L{j}.class_exact")
        exact += int(ce.sum())
        n_pairs += ce.size
        lo = store.counts_to_float(f.rows(f"L{j}.cost_lower"))
        hi = store.counts_to_float(f.rows(f"L{j}.cost_upper"))
        fin = np.isfinite(lo) & np.isfinite(hi)
        cells += int(fin.sum())
        cells_exact += int((fin & (lo == hi)).sum())
        g = (hi - lo)[fin & (hi > lo)]
        if g.size:
            gaps.append(g)
    g = np.concatenate(gaps) if gaps else np.zeros(0)
    return {"model_exact_fraction": exact / max(1, n_pairs),
            "class_cost_cells_exact_fraction": cells_exact / max(1, cells),
            "class_cost_gap_mean": float(g.mean()) if g.size else 0.0,
            "class_cost_gap_max": float(g.max()) if g.size else 0.0}


def _unit_seconds(files) -> dict:
    secs = [f.meta()["seconds"] for f in files]
    return {k: float(sum(s[k] for s in secs)) for k in ("gram", "fit", "certify", "total")}


def _time_aggregation(files, j: int, kind: str, methods, num_classes: int, n_train: int, shifts=None) -> dict:
    """Seconds per test point of each aggregation method (aggregate_block on the first rows)."""
    t = files[0].shape(f"L{j}.votes")[0]
    stop = min(t, AGG_TIMING_ROWS)
    out = {}
    for m in methods:
        arrays = store.read_stored_block(files, j, 0, stop, REGISTRY[m].needs)
        task = AggTask(j, len(files), kind, 0, stop, (m,), num_classes, n_train, arrays, shifts)
        t0 = time.perf_counter()
        aggregate_block(task)
        out[m] = (time.perf_counter() - t0) / stop
    return out


def extract_rows(res: pipeline.RunResult, dataset: str, run_name: str, learners: list[dict]) -> tuple[list, dict]:
    """Flat result rows (one per learner x N_p x method) and per-run metadata from a RunResult."""
    s = res.summary
    run_dir = Path(res.run_dir)
    K = s["data"]["num_classes"]
    n_train = s["data"]["n_train"]
    by_name = {lc["name"]: (j, lc) for j, lc in enumerate(learners)}
    mres = {(r.learner, r.num_partitions, r.method): r for r in res.results}
    nps = s["partition"]["num_partitions"]
    fa = s.get("fa")
    unit_secs, fa_secs, files_np, files_fa = {}, {}, {}, {}
    for n_p in nps:
        files_np[n_p] = _unit_files(run_dir, "partition", n_p, n_p)
        unit_secs[n_p] = _unit_seconds(files_np[n_p])
    if fa:
        for k in fa["k"]:
            files_fa[k] = _unit_files(run_dir, "fa", k, k * fa["d"], fa["d"])
            fa_secs[k] = _unit_seconds(files_fa[k])
    agg_time: dict[tuple, float] = {}
    cost_exact: dict[tuple, dict] = {}
    for name, (j, _) in by_name.items():
        for n_p in nps:
            ms = [m for m in s["methods"] if REGISTRY[m].applies_to("partition", n_p)]
            for m, v in _time_aggregation(files_np[n_p], j, "partition", ms, K, n_train).items():
                agg_time[(name, n_p, m)] = v
            if f"L{j}.class_exact" in files_np[n_p][0]:
                cost_exact[(name, n_p)] = _class_cost_exactness(files_np[n_p], j)
        if fa:
            ms = [m for m in s["methods"] if REGISTRY[m].target == "fa"]
            for k in fa["k"]:
                sh = np.asarray(fa["shifts"][str(k)], np.int64)
                for m, v in _time_aggregation(files_fa[k], j, "fa", ms, K, n_train, sh).items():
                    agg_time[(name, k, m)] = v
    rows = []
    for r in s["results"]:
        name, n_p, m = r["learner"], r["num_partitions"], r["method"]
        j, lc = by_name[name]
        row = {"dataset": dataset, "run": run_name, "n_train": n_train, "n_test": s["data"]["n_test"],
               "learner": name, "learner_type": lc["type"], "ridge": lc.get("ridge"), "num_partitions": n_p,
               "method": m, "clean_accuracy": r["clean_accuracy"], "certified_accuracy": r["certified_accuracy"],
               "mcr": r["mcr"], "exact_fraction": r["exact_fraction"], "median_radius": r["median_radius"],
               "curve": r["curve"],
               "timings": {"units_seconds": fa_secs[n_p] if m in ("fa", "fa_roe") else unit_secs[n_p],
                           "aggregation_ms_per_point": 1e3 * agg_time.get((name, n_p, m), float("nan"))}}
        if "mcr_upper" in r:
            mr = mres[(name, n_p, m)]
            gap = np.asarray(mr.radius_upper, np.int64) - np.asarray(mr.radius, np.int64)
            if np.any(gap < 0):
                raise RuntimeError(f"{dataset}/{run_name}/{name}/N_p={n_p}: EnsembleCert upper bound below lower")
            row["mcr_upper"] = r["mcr_upper"]
            row["bounds"] = {"agree_fraction": r["bounds_agree_fraction"],
                             "gap_mean_all": float(gap.mean()),
                             "gap_mean_where_differ": float(gap[gap > 0].mean()) if np.any(gap > 0) else 0.0,
                             "gap_max": int(gap.max())}
        if m in ("ensemblecert", "single") and (name, n_p) in cost_exact:
            row["class_costs"] = cost_exact[(name, n_p)]
        rows.append(row)
    meta = {"run": run_name, "n_train": n_train, "n_test": s["data"]["n_test"], "num_classes": K,
            "num_partitions": nps, "fa": None if not fa else {"d": fa["d"], "k": fa["k"]},
            "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
            "config_hash": res.config_hash, "computed_units": res.computed_units,
            "skipped_units": res.skipped_units, "timings": s["timings"],
            "units_seconds": {str(k): v for k, v in unit_secs.items()},
            "fa_units_seconds": {str(k): v for k, v in fa_secs.items()},
            "base_model_accuracy": s.get("base_model_accuracy"), "c_max": s.get("c_max"),
            "memory": s.get("memory"), "execution": s.get("execution")}
    return rows, meta


def run_dataset(dataset: str, spec: dict, run_specs, ridges, fa_d: int, out_dir: Path, backend: str = "inprocess",
                workers: int = 2, kernel: dict | None = None, min_per_partition: int = MIN_PER_PARTITION,
                log=print, on_run=None) -> dict:
    """Run (or resume) every run of one dataset; returns {"label", "learners", "runs": [meta...], "rows": [...]}.

    `on_run(partial)` is called after each run with the dataset dict so far (used to save progress)."""
    rows, metas = [], []
    learners = learner_specs(ridges)
    for run_name, n_train, n_test, cands in run_specs:
        nps = feasible_partitions(n_train, cands, min_per_partition)
        cfg = make_config(dataset, spec["data"], run_name, n_train, n_test, nps, ridges, fa_d, out_dir,
                          backend=backend, workers=workers, kernel=kernel)
        log(f"[{dataset}/{run_name}] n_train={n_train} n_test={n_test} N_p={list(nps)} "
            f"-> {pipeline.run_directory(cfg)}")
        t0 = time.perf_counter()
        res = pipeline.run(cfg)
        wall = time.perf_counter() - t0
        r, meta = extract_rows(res, dataset, run_name, learners)
        meta["wall_seconds"] = wall
        meta["partitions_dropped"] = [n for n in cands if n not in nps]
        log(f"[{dataset}/{run_name}] done in {wall:.1f} s ({res.computed_units} units computed, "
            f"{res.skipped_units} resumed)")
        rows += r
        metas.append(meta)
        if on_run is not None:
            on_run({"label": spec["label"], "learners": learners, "runs": list(metas), "rows": list(rows)})
    return {"label": spec["label"], "learners": learners, "runs": metas, "rows": rows}


# =========================================================================== findings
def _mcr(row) -> int | None:
    return row["mcr"]["radius"]


def _mcr_key(v) -> int:
    return -1 if v is None else int(v)


def _fmt(v) -> str:
    return "n/a" if v is None else str(int(v))


def _series(rows, learner, method, run) -> list[tuple[int, int | None]]:
    return sorted((r["num_partitions"], _mcr(r)) for r in rows
                  if r["learner"] == learner and r["method"] == method and r["run"] == run)


def _trend(values) -> str:
    """'flat', 'decays', 'grows' or 'non-monotone' for a sequence of MCRs (None = undefined)."""
    v = [_mcr_key(x) for x in values]
    if len(v) < 2:
        return "single point"
    lo, hi = min(v), max(v)
    if hi - lo <= max(1, 0.2 * max(abs(hi), 1)):
        return "flat"
    if all(a >= b for a, b in zip(v, v[1:])):
        return "decays"
    if all(a <= b for a, b in zip(v, v[1:])):
        return "grows"
    return "non-monotone"


def _seq_text(series) -> str:
    return ", ".join(f"{_fmt(m)} (N_p={n})" for n, m in series)


def compute_findings(result: dict) -> list[str]:
    """Sentences computed from the result rows (no hard-coded claims)."""
    out = []
    wins: dict[str, int] = {}
    strict: dict[str, int] = {}
    settings = 0
    by_type: dict[str, dict] = {}  # learner type -> {"n": settings, method: wins}
    for ds, d in result["datasets"].items():
        rows = d["rows"]
        label = d["label"]
        learners = [lc["name"] for lc in d["learners"]]
        runs = {m["run"]: m for m in d["runs"]}
        for run, meta in runs.items():
            tag = f"{label}, n_train={meta['n_train']}"
            # SVM flatness, regression decay (EnsembleCert, the white-box ensemble certificate)
            for lc in d["learners"]:
                name = lc["name"]
                ser = [(n, m) for n, m in _series(rows, name, "ensemblecert", run) if n > 1]
                ser = _series(rows, name, "single", run) + ser
                if len(ser) < 2:
                    continue
                tr = _trend([m for _, m in ser])
                acc = [r["clean_accuracy"] for r in rows if r["learner"] == name and r["run"] == run
                       and r["method"] in ("ensemblecert", "single")]
                head = f"{tag}: the {learner_label(lc)} EnsembleCert MCR (N_p = 1: the single model's exact radius) is"
                if all(m is None for _, m in ser):
                    out.append(f"{head} undefined at every N_p: clean accuracy {min(acc):.2f}-{max(acc):.2f} is "
                               "below 50%.")
                    continue
                verb = {"flat": "stays flat", "non-monotone": "is non-monotone"}.get(tr, tr)
                text = f"{head} {_seq_text(ser)}, i.e. it {verb} as N_p grows"
                ens_only = [(n, m) for n, m in ser if n > 1]
                if ser[0][0] == 1 and len(ens_only) >= 2:
                    tr2 = _trend([m for _, m in ens_only])
                    text += (f" (over the ensembles alone, N_p = {ens_only[0][0]}..{ens_only[-1][0]}, it "
                             f"{ {'flat': 'stays flat', 'non-monotone': 'is non-monotone'}.get(tr2, tr2)})")
                if any(m is None for _, m in ser):
                    text += (f" (MCR undefined where clean accuracy < 50%; accuracy "
                             f"{min(acc):.2f}-{max(acc):.2f})")
                dpa_ser = dict(_series(rows, name, "dpa", run))
                meet = [n for n, m in ser if n > 1 and n in dpa_ser and m is not None and m == dpa_ser[n]]
                if meet and lc["type"] == "svm":
                    text += f"; it equals the black-box DPA MCR at N_p = {', '.join(map(str, meet))}"
                out.append(text + ".")
            # single model against every ensemble of the same run
            for lc in d["learners"]:
                name = lc["name"]
                single = _series(rows, name, "single", run)
                ens = [r for r in rows if r["learner"] == name and r["run"] == run and r["num_partitions"] > 1]
                if not single or not ens:
                    continue
                best = max(ens, key=lambda r: (_mcr_key(_mcr(r)), r["clean_accuracy"]))
                s_m = single[0][1]
                if s_m is None and _mcr(best) is None:
                    verdict = "and no ensemble has a defined MCR either (clean accuracy < 50%)"
                elif _mcr_key(s_m) > _mcr_key(_mcr(best)):
                    verdict = "more robust than every ensemble"
                elif _mcr_key(s_m) == _mcr_key(_mcr(best)):
                    verdict = "as robust as the best ensemble"
                else:
                    verdict = "less robust than the best ensemble"
                s_acc = next(r["clean_accuracy"] for r in rows if r["learner"] == name and r["run"] == run
                             and r["method"] == "single")
                out.append(f"{tag}, {learner_label(lc)}: the single model (N_p = 1, accuracy {s_acc:.3f}) has MCR "
                           f"{_fmt(s_m)}, {verdict} (best: {best['method']} at N_p = {best['num_partitions']}, "
                           f"MCR {_fmt(_mcr(best))}, accuracy {best['clean_accuracy']:.3f}).")
            # white-box against black-box: EnsembleCert vs DPA at equal N_p, and at few vs many partitions
            for lc in d["learners"]:
                name = lc["name"]
                ec = [(n, m) for n, m in _series(rows, name, "ensemblecert", run) if n > 1]
                dp = dict(_series(rows, name, "dpa", run))
                pairs = [(n, m, dp[n]) for n, m in ec if n in dp and m is not None and dp[n] is not None]
                if not pairs:
                    continue
                g_n, g_e, g_d = max(pairs, key=lambda p: (p[1] - p[2], -p[0]))
                if g_e > g_d:
                    text = (f"{tag}, {learner_label(lc)}: EnsembleCert's MCR exceeds DPA's by up to {g_e - g_d} "
                            f"flip{'s' if g_e - g_d > 1 else ''} at equal N_p (N_p = {g_n}: {g_e} vs {g_d})")
                else:
                    text = (f"{tag}, {learner_label(lc)}: EnsembleCert's MCR equals DPA's at every N_p where both "
                            "are defined")
                n_lo, n_hi = pairs[0][0], pairs[-1][0]
                if n_hi > n_lo:
                    text += (f"; EnsembleCert with N_p = {n_lo} certifies MCR {pairs[0][1]} against DPA's {pairs[-1][2]} "
                             f"with N_p = {n_hi}")
                out.append(text + ".")
            # which aggregation wins where
            for name in learners:
                for n_p in sorted({r["num_partitions"] for r in rows if r["run"] == run and r["num_partitions"] > 1}):
                    cand = [r for r in rows if r["learner"] == name and r["run"] == run
                            and r["num_partitions"] == n_p and r["method"] in ENSEMBLE_METHODS]
                    if not cand:
                        continue
                    top = max(_mcr_key(_mcr(r)) for r in cand)
                    winners = [r["method"] for r in cand if _mcr_key(_mcr(r)) == top]
                    settings += 1
                    bt = by_type.setdefault(next(lc["type"] for lc in d["learners"] if lc["name"] == name), {"n": 0})
                    bt["n"] += 1
                    for w in winners:
                        wins[w] = wins.get(w, 0) + 1
                        bt[w] = bt.get(w, 0) + 1
                    if len(winners) == 1:
                        strict[winners[0]] = strict.get(winners[0], 0) + 1
        # partition against no partition across runs (single on the small set vs ensembles on the main set)
        if "small" in runs and "main" in runs:
            for lc in d["learners"]:
                name = lc["name"]
                single = _series(rows, name, "single", "small")
                ens = [r for r in rows if r["learner"] == name and r["run"] == "main"]
                if not single or not ens:
                    continue
                best = max(ens, key=lambda r: (_mcr_key(_mcr(r)), r["clean_accuracy"]))
                cmp = ("higher than" if _mcr_key(single[0][1]) > _mcr_key(_mcr(best)) else
                       "equal to" if _mcr_key(single[0][1]) == _mcr_key(_mcr(best)) else "lower than")
                out.append(f"{label}, {learner_label(lc)}: the single model on {runs['small']['n_train']} points "
                           f"(MCR {_fmt(single[0][1])}) is {cmp} the best ensemble on {runs['main']['n_train']} "
                           f"points ({best['method']}, N_p = {best['num_partitions']}, MCR {_fmt(_mcr(best))}).")
        # exactness of the multiclass bounds
        ec = [r for r in rows if r["method"] == "ensemblecert" and "bounds" in r]
        if ec:
            agree = [r["bounds"]["agree_fraction"] for r in ec]
            mexact = [r["class_costs"]["model_exact_fraction"] for r in ec if "class_costs" in r]
            gmax = max(r["bounds"]["gap_max"] for r in ec)
            text = (f"{label}: EnsembleCert's lower and upper radius agree on {min(agree):.1%}-{max(agree):.1%} of "
                    f"test points across learners and N_p (largest gap {gmax} flips)")
            if mexact:
                text += f"; per-model class costs are exact for {min(mexact):.1%}-{max(mexact):.1%} of (point, model) pairs"
            diff = [r for r in ec if r.get("mcr_upper") and r["mcr_upper"]["radius"] != r["mcr"]["radius"]]
            text += (f"; the MCR of the upper bound differs from the certified MCR in {len(diff)} of {len(ec)} "
                     "settings.")
            out.append(text)
    labels = {"svm": "the small-C SVM", "regression": "kernel regression"}
    for typ, bt in by_type.items():
        order = sorted((m for m in bt if m != "n"), key=lambda m: (-bt[m], ALL_METHODS.index(m)))
        out.append(f"For {labels.get(typ, typ)}, the highest ensemble MCR (ties counted for each tied method) over "
                   f"{bt['n']} settings: " + ", ".join(f"{m} {bt[m]}" for m in order) + ".")
    if settings:
        order = sorted(wins, key=lambda m: (-wins[m], ALL_METHODS.index(m)))
        out.append("Highest MCR among the ensemble aggregations (ties counted for every tied method), over "
                   f"{settings} (dataset, run, learner, N_p) settings: "
                   + ", ".join(f"{m} {wins[m]}" for m in order)
                   + "; alone on top: " + (", ".join(f"{m} {strict[m]}" for m in sorted(strict, key=lambda m: -strict[m]))
                                           or "never (always tied)") + ".")
    return out


# =========================================================================== plots
def _png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # legends below the panels are kept
    store.atomic_write_bytes(path, buf.getvalue())


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _plot_label(method: str, fa_d: int | None) -> str:
    """Legend label of a method: FA methods with their k (= the N_p of the axis or panel) and d."""
    label = method_label(method)
    if REGISTRY[method].target == "fa" and fa_d is not None:
        label += f" (k = N_p, d = {fa_d})"
    return label


def _budget_axis(ax, xmax: int) -> None:
    """Symmetric-log budget axis (linear on [0, 1], log above) with plain integer ticks 0, 1, 10, 100, ..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_xlim(0, xmax)
    ticks = [0] + [10 ** e for e in range(0, int(math.log10(max(xmax, 1))) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())


def write_plots(result: dict, prefix: str, out_dir: Path = RESULTS) -> list[str]:
    """MCR vs N_p and certified accuracy vs budget per dataset, as `out_dir/<prefix>_{mcr,certacc}_<dataset>.png`;
    returns the paths (repo-relative when inside the repository)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt


    paths = []
    for ds, d in result["datasets"].items():
        rows = d["rows"]
        learners = d["learners"]
        runs = [m["run"] for m in d["runs"]]
        main = "main" if "main" in runs else runs[0]
        fa_d = next(((m.get("fa") or {}).get("d") for m in d["runs"] if m.get("fa")), None)
        # --- MCR vs N_p: one panel per learner, one line per method (main run); single model and the
        # like-for-like small run (if any) as extra lines.
        fig, axes = plt.subplots(1, len(learners), figsize=(4.3 * len(learners), 3.6), squeeze=False)
        for ax, lc in zip(axes[0], learners):
            name = lc["name"]
            for run in runs:
                small = run != main
                for m in (("dpa", "ensemblecert") if small else ALL_METHODS):
                    pts = [(n, v) for n, v in _series(rows, name, m, run) if m != "single" and n > 1]
                    if not pts:
                        continue
                    color, ls, marker = method_style(m)
                    n_tr = next(x["n_train"] for x in d["runs"] if x["run"] == run)
                    ax.plot([p[0] for p in pts], [np.nan if p[1] is None else p[1] for p in pts], color=color,
                            linestyle=ls, marker=marker, alpha=0.45 if small else 0.85, markersize=4 if small else 6,
                            markerfacecolor="none" if small else color, linewidth=1 if small else 1.6,
                            label=_plot_label(m, fa_d) + (f" (n={n_tr})" if len(runs) > 1 else ""))
                single = _series(rows, name, "single", run)
                if single and single[0][1] is not None:
                    n_tr = next(x["n_train"] for x in d["runs"] if x["run"] == run)
                    ax.axhline(single[0][1], color="C4", linestyle=(0, (1, 1)), linewidth=1.4,
                               label=f"single model N_p=1 (n={n_tr})")
                    ax.plot([1], [single[0][1]], marker="s", color="C4")
            nps = sorted({r["num_partitions"] for r in rows})
            ax.set_xscale("log")
            ax.set_xticks(nps)
            ax.set_xticklabels([str(n) for n in nps])
            ax.minorticks_off()
            ax.set_title(f"{d['label']}\n{learner_label(lc)}", fontsize=9)
            ax.set_xlabel("N_p (number of partitions; k for FA)")
            ax.set_ylabel("MCR (label flips)")
            ax.grid(alpha=0.3)
        handles: dict = {}
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        rows_ = math.ceil(len(handles) / 4)
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.045))
        fig.text(0.5, 0.005, "MCR in the radius convention: the largest budget r with certified accuracy >= 50% "
                 "(the DPA/FA/ROE scripts print MCR + 1); a missing point: clean accuracy < 50%.",
                 ha="center", va="bottom", fontsize=7, style="italic")
        fig.tight_layout(rect=(0, 0.09 + 0.035 * rows_, 1, 1))
        p = Path(out_dir) / f"{prefix}_mcr_{ds}.png"
        _png(fig, p)
        plt.close(fig)
        paths.append(_rel(p))
        # --- certified accuracy vs budget: rows = learners, columns = (run, N_p)
        cols = [(run, n) for run in runs for n in sorted({r["num_partitions"] for r in rows if r["run"] == run})]
        fig, axes = plt.subplots(len(learners), len(cols), figsize=(2.9 * len(cols), 2.4 * len(learners)),
                                 squeeze=False, sharey=True)
        for i, lc in enumerate(learners):
            for jx, (run, n_p) in enumerate(cols):
                ax = axes[i][jx]
                sel = [r for r in rows if r["learner"] == lc["name"] and r["run"] == run and r["num_partitions"] == n_p
                       and (n_p > 1 or r["method"] == "single")]
                xmax = max([max(r["curve"]["radius"] or [0]) for r in sel] + [1])
                for r in sel:
                    b, y = curve_at_budgets(r["curve"], xmax + 1)
                    color, ls, _ = method_style(r["method"])
                    ax.plot(b, y, color=color, linestyle=ls, linewidth=1.3, alpha=0.85, drawstyle="steps-post",
                            label=_plot_label(r["method"], fa_d))
                _budget_axis(ax, xmax + 1)
                ax.set_ylim(0, 1.02)
                ax.grid(alpha=0.3)
                n_tr = sel[0]["n_train"] if sel else ""
                ax.set_title(f"{learner_label(lc)}\nN_p = {n_p}, n_train = {n_tr}", fontsize=8)
                if i == len(learners) - 1:
                    ax.set_xlabel("budget r (label flips, log above 1)", fontsize=8)
                if jx == 0:
                    ax.set_ylabel("certified accuracy", fontsize=8)
        handles = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.suptitle(f"{d['label']}: certified accuracy vs label-flip budget (rows: learners; columns: N_p and "
                     "training-set size)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        # below the panels, as many columns as the figure's width holds (the PNG's tight box includes it)
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(len(handles), max(3, 2 * len(cols))), fontsize=7, frameon=False)
        p = Path(out_dir) / f"{prefix}_certacc_{ds}.png"
        _png(fig, p)
        plt.close(fig)
        paths.append(_rel(p))
    return paths


# =========================================================================== tables
def _row_table(rows) -> list[str]:
    head = ("| run (n_train) | learner | N_p | method | acc | MCR | MCR+1 | exact | "
            + " | ".join(f"@{b}" for b in TABLE_BUDGETS) + " | unit s | agg ms/pt |")
    lines = [head, "|" + "---|" * (10 + len(TABLE_BUDGETS))]
    for r in rows:
        ca = r["certified_accuracy"]
        mcr = _fmt(r["mcr"]["radius"])
        if r.get("mcr_upper") and r["mcr_upper"]["radius"] != r["mcr"]["radius"]:
            mcr += f" (ub {_fmt(r['mcr_upper']['radius'])})"
        agg = r["timings"]["aggregation_ms_per_point"]
        lines.append(f"| {r['run']} ({r['n_train']}) | {r['learner']} | {r['num_partitions']} | {r['method']} | "
                     f"{r['clean_accuracy']:.3f} | {mcr} | {_fmt(r['mcr']['anchor'])} | {r['exact_fraction']:.2f} | "
                     + " | ".join(f"{ca[b]:.3f}" if b in ca else "" for b in TABLE_BUDGETS)
                     + f" | {r['timings']['units_seconds']['total']:.1f} | "
                     + ("n/a" if not math.isfinite(agg) else f"{agg:.3f}") + " |")
    return lines


def _exactness_table(rows) -> list[str]:
    lines = ["| run (n_train) | learner | N_p | lower == upper | mean gap (where differ) | max gap | MCR lower / upper "
             "| models exact | class-cost cells exact | class-cost gap mean / max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] != "ensemblecert" or "bounds" not in r:
            continue
        b, c = r["bounds"], r.get("class_costs", {})
        lines.append(f"| {r['run']} ({r['n_train']}) | {r['learner']} | {r['num_partitions']} | {b['agree_fraction']:.3f} "
                     f"| {b['gap_mean_where_differ']:.2f} | {b['gap_max']} | {_fmt(r['mcr']['radius'])} / "
                     f"{_fmt(r['mcr_upper']['radius'])} | {c.get('model_exact_fraction', float('nan')):.3f} | "
                     f"{c.get('class_cost_cells_exact_fraction', float('nan')):.3f} | "
                     f"{c.get('class_cost_gap_mean', float('nan')):.2f} / {c.get('class_cost_gap_max', float('nan')):.0f} |")
    return lines


def text_table(result: dict) -> str:
    """Plain-text summary printed by main()."""
    lines = []
    for ds, d in result["datasets"].items():
        lines.append(f"== {d['label']}")
        lines.append(f"{'run':<6}{'n':>7} {'learner':<16}{'N_p':>5} {'method':<13}{'acc':>7}{'MCR':>6}{'MCR+1':>6}"
                     f"{'exact':>7}{'@1':>7}{'@5':>7}{'@20':>7}")
        for r in d["rows"]:
            ca = r["certified_accuracy"]
            lines.append(f"{r['run']:<6}{r['n_train']:>7} {r['learner']:<16}{r['num_partitions']:>5} {r['method']:<13}"
                         f"{r['clean_accuracy']:>7.3f}{_fmt(r['mcr']['radius']):>6}{_fmt(r['mcr']['anchor']):>6}"
                         f"{r['exact_fraction']:>7.2f}{ca['1']:>7.3f}{ca['5']:>7.3f}{ca['20']:>7.3f}")
    lines.append("")
    lines += [f"* {f}" for f in result.get("findings", [])]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """Markdown section for docs/results.md (tables, plots, computed findings)."""
    from benchmarks._machine import machine_line

    mode = "quick" if result["quick"] else "full"
    st = result["settings"]
    k = st["kernel"]
    lines = [f"## Experiments on real data ({mode} mode)", "",
             f"Command: `{result['command']}`  ", f"Machine: {machine_line(result['machine'])}  ",
             f"Total wall time: {result['wall_seconds'] / 60:.1f} min"
             + ("" if result.get("complete", True) else
                f" -- **incomplete** (finished: {', '.join(result.get('finished_runs', [])) or 'nothing'})") + ".", "",
             f"Kernel: infinite-width fully connected {k['activation']} network, depth {k['depth']}, "
             f"W_std = {k['W_std']:.4g}, b_std = {k['b_std']:g}, {k['kind'].upper()} on pixels in [0, 1]. "
             f"Partitions: {st['partition_rule']} (features only), N_p <= n_train / {st['min_per_partition']}. "
             f"Learners: small-C kernel SVM (C = C_max of each partition) and kernel regression with ridge "
             f"{', '.join(f'{r:g}' for r in st['ridges'])}. FA: d = {st['fa_d']}, k = N_p. "
             "MCR = largest budget with certified accuracy >= 50% (docs/math.md §1; n/a when clean accuracy < 50%); "
             "MCR+1 is the number the DPA/FA/ROE scripts print. \"exact\" = fraction of test points whose radius "
             "is proven exact (ScaLabelCert always; EnsembleCert where its lower and upper cost bounds give the "
             "same radius). @r = certified accuracy at budget r. unit s = summed time of the N_p work units "
             "(Gram, fits and certificates of all learners together); agg ms/pt = aggregation time per test point. "
             "In the findings an MCR sequence is called flat when its range is within 20% of its largest value "
             "(or 1 flip).",
             ""]
    for ds, d in result["datasets"].items():
        lines += [f"### {d['label']}", ""]
        for m in d["runs"]:
            dropped = (f"; N_p {m['partitions_dropped']} dropped (fewer than {st['min_per_partition']} points per "
                       "partition)") if m.get("partitions_dropped") else ""
            lines.append(f"- run `{m['run']}`: n_train = {m['n_train']}, n_test = {m['n_test']}, N_p = "
                         f"{m['num_partitions']}{dropped}; {m['wall_seconds']:.0f} s wall "
                         f"({m['computed_units']} work units computed, {m['skipped_units']} resumed).")
        lines.append("")
        lines += _row_table([r for r in d["rows"] if r["num_partitions"] > 1 or r["method"] == "single"])
        lines += ["", "(At N_p = 1 only the single model is listed: EnsembleCert and white-box ROE of one model "
                  "reproduce its radius, DPA and DPA+ROE of one vote certify 0; all are in the JSON.)", ""]
        ex = _exactness_table(d["rows"])
        if len(ex) > 2:
            lines += ["Exactness of the multiclass bounds (EnsembleCert): fraction of test points where the lower "
                      "and upper radius agree, gap sizes in flips, MCR of both bounds, fraction of (test point, "
                      "model) pairs whose per-class costs are all exact, fraction of exact finite class-cost "
                      "entries and the mean / max gap of the inexact ones.", ""] + ex + [""]
        for p in result.get("plots", []):
            name = Path(p).name
            kind = next((k for k in ("mcr", "certacc") if name.endswith(f"_{k}_{ds}.png")), None)
            if kind is not None:
                kind = "MCR vs N_p" if kind == "mcr" else "certified accuracy vs budget"
                lines.append(f"![{d['label']}: {kind}]({p if os.path.isabs(p) else '../' + p})")
        lines.append("")
    lines += ["### Findings", ""] + [f"- {f}" for f in result.get("findings", [])] + [""]
    return "\n".join(lines)


# =========================================================================== main
def _write_json(path: Path, result: dict) -> None:
    store.atomic_write_text(path, json.dumps(result, indent=1, allow_nan=False, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _sanitize(obj):
    """NaN -> None so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sanitize(v) for v in obj]
    return obj


def base_result(command: str, quick: bool, mode: dict, names, machine: dict) -> dict:
    """The result skeleton (settings, empty datasets) that `main` fills in dataset by dataset."""
    return {"command": command, "machine": machine, "quick": quick, "complete": False,
            "settings": {"kernel": KERNEL, "partition_rule": PARTITION_RULE, "min_per_partition": MIN_PER_PARTITION,
                         "ridges": list(mode["ridges"]), "fa_d": mode["fa_d"], "budgets": list(BUDGETS),
                         "np_grid": list(NP_GRID), "backend": mode["backend"],
                         "runs": {ds: [list(x[:3]) + [list(x[3])] for x in mode["runs"][ds]] for ds in names}},
            "datasets": {}, "finished_runs": [], "findings": [], "plots": [], "wall_seconds": 0.0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configuration (about 3 minutes)")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None, help="subset of the datasets")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers in full mode (default 2)")
    ap.add_argument("--out", default=None,
                    help="parent of the pipeline run directories (default: runs/experiments/full; with --quick a "
                         "fresh temporary directory, so that its timings are never those of a resumed run)")
    args = ap.parse_args(argv)
    tmp = None
    if args.out:
        out_dir = Path(args.out)
    elif args.quick:
        tmp = tempfile.TemporaryDirectory(prefix="kernelcert-experiments-")
        out_dir = Path(tmp.name)
    else:
        out_dir = RUNS / "full"
    try:
        return _main(args, out_dir)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _main(args, out_dir: Path) -> dict:
    from benchmarks._machine import machine_info

    mode = MODES["quick" if args.quick else "full"]
    names = args.datasets or list(mode["runs"])
    cmd = ".venv/bin/python -m benchmarks.experiments" + (" --quick" if args.quick else "")
    if args.datasets:
        cmd += " --datasets " + " ".join(args.datasets)
    prefix = "experiments_quick" if args.quick else "experiments"
    json_path = RESULTS / f"{prefix}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = base_result(cmd, bool(args.quick), mode, names, machine_info())
    t0 = time.perf_counter()
    for ds in names:
        def save(partial, ds=ds):  # partial result after every run (full mode resumes from the run directories)
            result["datasets"][ds] = partial
            result["finished_runs"] = [f"{n}/{m['run']}" for n, dd in result["datasets"].items() for m in dd["runs"]]
            result["wall_seconds"] = time.perf_counter() - t0
            result["findings"] = compute_findings(result)
            result["plots"] = write_plots(result, prefix)
            _write_json(json_path, _sanitize(result))

        run_dataset(ds, DATASETS[ds], mode["runs"][ds], mode["ridges"], mode["fa_d"], out_dir,
                    backend=mode["backend"], workers=args.workers, on_run=save)
    result["findings"] = compute_findings(result)
    result["plots"] = write_plots(result, prefix)
    result["complete"] = True
    result["wall_seconds"] = time.perf_counter() - t0
    result = _sanitize(result)
    _write_json(json_path, result)
    print(text_table(result))
    print(f"wrote {json_path.relative_to(ROOT)} and {len(result['plots'])} plots in {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
