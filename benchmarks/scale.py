"""Benchmark: the end-to-end certification run at scale (kernelcert.pipeline and its backends).

    .venv/bin/python -m benchmarks.scale            # full MNIST 60k/10k + CIFAR-10 simulation (about an hour)
    .venv/bin/python -m benchmarks.scale --quick    # small versions (about a minute)

Part 1, MNIST: the whole pipeline (depth-2 ReLU NTK, kernel regression and C_max kernel SVM,
SS-DPA partitions; DPA, EnsembleCert, DPA+ROE, white-box ROE) on real MNIST, once in-process and
once on a 2-worker `dask.distributed.LocalCluster` (threads_per_worker=1). Reported: wall time,
per-phase times, the sum of the work units' own times, peak RSS of the main process and of every
worker process, and whether both backends produced byte-identical points.csv. Full: 60000/10000 at
N_p = 100 (run directories under runs/bench_scale/, so an interrupted full run resumes; a resumed run
reports `resumed`, and a fully resumed run keeps the timings measured earlier in scale.json); --quick: 1000/200 at N_p = 10 in a fresh temporary directory. The same
in-process run is repeated at every N_p of `--partitions` (full: 10, 50, 100, 1000; quick: 10, 50)
for the end-to-end time and peak-memory table.

Part 2, CIFAR-10 at N_p = 1000 on 16 workers (simulated: no CIFAR-10 is available offline).
Partitions of 50000/1000 = 50 points with 3072 features (32x32x3 flattened), K = 10. A few
work units are run for real on such partitions (random uniform features and labels; the cost of
the kernels, the fits and ScaLabelCert does not depend on the values) in a 1-worker Dask cluster,
with `--cifar-test` test points (default 1000, quick 200); their time is split into a fixed part
(Gram + fits) and a per-test-point part, which is scaled linearly to 10000 test points. The
aggregation over 1000 partitions is timed on a block of test points tiled from the measured units
and scaled linearly. Extrapolation, stated in the output: makespan = ceil(1000 / 16) x (one unit
at 10000 test points) + ceil(blocks / 16) x (one aggregation block), i.e. equal-cost independent
tasks, 16 workers each as fast as one core of this machine, no scheduler or transfer overhead,
data loading not included.
Per-worker memory = the measured worker's RSS high-water (it holds one unit at a time).

Writes benchmarks/results/scale.json (scale_quick.json with --quick) atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import fmt, md_table, provenance, result_path, stamp, write_result
from kernelcert import _scalabel_kernel, pipeline

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "bench_scale"
ARCH = {"architecture": "fully_connected", "depth": 2, "W_std": 2.0 ** 0.5, "b_std": 0.1, "activation": "relu"}
LEARNERS = [{"type": "regression", "name": "regression", "ridge": 1e-3}, {"type": "svm", "name": "svm"}]
METHODS = ["dpa", "ensemblecert", "dpa_roe", "whitebox_roe"]


def mnist_config(n_train, n_test, n_p, out_dir) -> pipeline.RunConfig:
    return pipeline.config_from_dict({
        "data": {"dataset": "mnist", "n_train": n_train, "n_test": n_test, "seed": 0},
        "kernel": ARCH, "learners": LEARNERS,
        "partition": {"rule": "ss_dpa", "num_partitions": [n_p]},
        "methods": {"aggregations": METHODS},
        "output": {"dir": str(out_dir), "name": f"mnist-{n_train}x{n_test}-np{n_p}", "plots": False},
        "execution": {"backend": "inprocess", "memory_cap_mb": 1024, "progress": False},
    })


def run_mnist(n_train, n_test, n_p, workers, out_root: Path) -> dict:
    """The same config in-process and on a `workers`-process LocalCluster (separate run directories)."""
    out = {"n_train": n_train, "n_test": n_test, "num_partitions": n_p, "runs": {}}
    points = {}
    for label, overrides in (("inprocess", {}), (f"dask-local-{workers}", {"workers": workers})):
        cfg = pipeline.with_overrides(mnist_config(n_train, n_test, n_p, out_root / label), **overrides)
        t0, c0 = time.perf_counter(), time.process_time()
        res = pipeline.run(cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = res.summary
        out["runs"][label] = {
            "wall_seconds": wall, "main_process_cpu_seconds": cpu, "kernel_compiles": _scalabel_kernel.compile_count(),
            "resumed": res.skipped_units > 0, "units_computed": res.computed_units,
            "timings": s["timings"], "unit_seconds_sum": s["units"]["seconds_sum"],
            "main_peak_rss_mb": s["memory"]["main_peak_rss_mb"],
            "worker_peak_rss_mb": s["memory"]["unit_peak_rss_mb"],
            "execution": s["execution"], "run_dir": str(res.run_dir),
            "results": [{k: r[k] for k in ("learner", "num_partitions", "method", "clean_accuracy", "mcr",
                                           "exact_fraction")} for r in s["results"]],
        }
        points[label] = res.points_path.read_bytes()
    a, b = list(points.values())
    out["backends_identical"] = a == b
    return out


def run_sweep(n_train, n_test, nps, out_root: Path, reuse: dict | None = None) -> list[dict]:
    """End-to-end in-process runs at several N_p (one run directory each, so each resumes on its own)."""
    rows = []
    for n_p in nps:
        if reuse is not None and reuse["num_partitions"] == n_p:
            r = reuse["runs"]["inprocess"]
        else:
            cfg = mnist_config(n_train, n_test, n_p, out_root / "inprocess")
            t0, c0 = time.perf_counter(), time.process_time()
            res = pipeline.run(cfg)
            s = res.summary
            r = {"wall_seconds": time.perf_counter() - t0, "main_process_cpu_seconds": time.process_time() - c0,
                 "kernel_compiles": _scalabel_kernel.compile_count(), "resumed": res.skipped_units > 0,
                 "timings": s["timings"], "unit_seconds_sum": s["units"]["seconds_sum"],
                 "main_peak_rss_mb": s["memory"]["main_peak_rss_mb"],
                 "results": [{k: x[k] for k in ("learner", "num_partitions", "method", "clean_accuracy", "mcr",
                                                "exact_fraction")} for x in s["results"]]}
        rows.append({"num_partitions": n_p, "wall_seconds": r["wall_seconds"], "resumed": r["resumed"],
                     "cpu_seconds": r.get("main_process_cpu_seconds"), "kernel_compiles": r.get("kernel_compiles"),
                     "pipeline_seconds": r["timings"]["total"], "unit_seconds_sum": r["unit_seconds_sum"],
                     "aggregation_seconds": r["timings"]["aggregation"], "peak_rss_mb": r["main_peak_rss_mb"],
                     "results": r["results"]})
    return rows


def simulate_cifar(n_train, n_test, n_p, workers, sample_units, sample_test, agg_rows) -> dict:
    """Measure work units at CIFAR-10 partition size in a 1-worker Dask process, extrapolate to n_p units."""
    from kernelcert.pipeline.aggregate import agg_block_rows
    from kernelcert.pipeline.backends import DaskBackend
    from kernelcert.pipeline.store import counts_to_float
    from kernelcert.pipeline.unit import SharedInputs, UnitTask, compute_unit
    from kernelcert.provenance import Provenance, resolved_device
    from kernelcert.ensemble import dpa, ensemblecert
    from kernelcert.roe import dpa_roe, whitebox_roe

    K, dim = 10, 32 * 32 * 3
    n_part = n_train // n_p
    cfg = pipeline.config_from_dict({
        "data": {"dataset": "synthetic", "num_classes": K, "n_train": n_part, "n_test": 1, "dim": 1},
        "kernel": ARCH, "learners": LEARNERS, "partition": {"num_partitions": [1]},
        "methods": {"aggregations": METHODS}, "execution": {"memory_cap_mb": 1024, "progress": False}})
    rng = np.random.default_rng(0)
    shared = SharedInputs(x_test=rng.random((sample_test, dim)), num_classes=K, kernel=cfg.kernel,
                          learners=cfg.learners, execution=cfg.execution, config_hash="simulation",
                          levels={"partition": "pairs"},
                          provenance=Provenance.current(resolved_device(cfg.execution.device), cfg.kernel.dtype))
    tasks = [UnitTask(f"sim-{i}", "partition", n_p, i, rng.random((n_part, dim)), rng.integers(0, K, n_part))
             for i in range(sample_units + 1)]  # the first one warms up the worker (imports, jit)
    with DaskBackend(n_workers=1) as be:
        outs = []
        for task in tasks:  # one at a time, so each unit's wall time is its own
            ((_, res),) = list(be.map(compute_unit, [task], shared))
            outs.append(res)
    metas = [json.loads(str(o["meta"])) for o in outs[1:]]
    fixed = float(np.median([m["seconds"]["gram"] + m["seconds"]["fit"] for m in metas]))
    per_test = float(np.median([(m["seconds"]["total"] - m["seconds"]["gram"] - m["seconds"]["fit"]) / sample_test
                                for m in metas]))
    unit_full = fixed + per_test * n_test
    # aggregation over n_p partitions: tile the measured units' outputs to n_p partitions, agg_rows test points
    rows = min(agg_rows, sample_test)
    src = outs[1:]

    def stack(name, conv=None):
        arrs = [src[i % len(src)][f"L0.{name}"][:rows] for i in range(n_p)]
        arrs = [conv(a) if conv else a for a in arrs]
        return np.stack(arrs, axis=1)

    votes = stack("votes").astype(np.int64)
    lower = stack("cost_lower", counts_to_float)
    upper = stack("cost_upper", counts_to_float)
    scores = stack("scores")
    pair = stack("pair", counts_to_float)
    agg = {}
    for name, fn in (("dpa", lambda: dpa(votes, K)), ("ensemblecert_lower", lambda: ensemblecert(votes, lower, K)),
                     ("ensemblecert_upper", lambda: ensemblecert(votes, upper, K)),
                     ("dpa_roe", lambda: dpa_roe(scores)),
                     ("whitebox_roe", lambda: whitebox_roe(scores, lower, pair))):
        t0 = time.perf_counter()
        fn()
        agg[name] = (time.perf_counter() - t0) * n_test / rows * len(LEARNERS)
    agg_total = float(sum(agg.values()))
    # the run maps aggregation blocks over the same workers (pipeline.aggregate_block)
    block = agg_block_rows(n_p, K, cfg.execution)
    blocks = math.ceil(n_test / block) * len(LEARNERS)
    agg_makespan = math.ceil(blocks / workers) * agg_total / blocks
    makespan = math.ceil(n_p / workers) * unit_full + agg_makespan
    return {
        "n_train": n_train, "n_test": n_test, "num_partitions": n_p, "partition_size": n_part, "features": dim,
        "workers": workers, "measured_units": sample_units, "measured_test_points": sample_test,
        "unit_seconds_measured": [m["seconds"] for m in metas],
        "unit_fixed_seconds": fixed, "unit_seconds_per_test_point": per_test,
        "unit_seconds_at_full_test": unit_full,
        "worker_peak_rss_mb": max(m["peak_rss_mb"] for m in metas),
        "pair_cost_bytes_per_unit": int(outs[1]["L0.pair"].nbytes * n_test / sample_test * len(LEARNERS)),
        "aggregation_seconds": agg, "aggregation_rows_timed": rows, "aggregation_blocks": blocks,
        "aggregation_block_rows": block, "aggregation_makespan_seconds": agg_makespan,
        "single_core_seconds": n_p * unit_full + agg_total,
        "makespan_seconds": makespan,
        "assumption": (f"units independent and of equal cost; {workers} workers each as fast as one core of this "
                       "machine; unit time = (Gram + fits) + per-test-point cost x n_test (linear in the number of "
                       "test points, measured at a smaller count); aggregation linear in n_test, split into "
                       f"{blocks} equal blocks mapped over the same workers; "
                       "no scheduler/transfer overhead; data loading excluded; random features of CIFAR-10 shape"),
    }


def _table(res: dict) -> str:
    lines = []
    m = res["mnist"]
    lines.append(f"MNIST {m['n_train']}/{m['n_test']}, N_p = {m['num_partitions']} (both learners, "
                 f"{', '.join(METHODS)})")
    lines.append(f"{'backend':<16}{'wall s':>9}{'units s':>9}{'agg s':>8}{'main MiB':>10}  worker peak MiB")
    for label, r in m["runs"].items():
        workers = ", ".join(f"{v:.0f}" for v in r["worker_peak_rss_mb"].values())
        lines.append(f"{label:<16}{r['wall_seconds']:>9.1f}{r['unit_seconds_sum']['total']:>9.1f}"
                     f"{r['timings']['aggregation']:>8.1f}{r['main_peak_rss_mb']:>10.0f}  {workers}"
                     + ("  (resumed)" if r["resumed"] else ""))
    lines.append(f"backends byte-identical: {m['backends_identical']}")
    first = next(iter(m["runs"].values()))
    lines.append(f"{'learner':<12}{'method':<14}{'acc':>7}{'MCR':>6}{'MCR+1':>7}{'exact':>7}")
    for r in first["results"]:
        mcr = r["mcr"]
        fmt = lambda v: "n/a" if v is None else str(v)  # noqa: E731
        lines.append(f"{r['learner']:<12}{r['method']:<14}{r['clean_accuracy']:>7.3f}{fmt(mcr['radius']):>6}"
                     f"{fmt(mcr['anchor']):>7}{r['exact_fraction']:>7.2f}")
    sw = res.get("sweep")
    if sw:
        lines.append("")
        lines.append(f"End-to-end, in-process, MNIST {sw['n_train']}/{sw['n_test']}:")
        lines.append(f"{'N_p':>6}{'wall s':>9}{'CPU s':>9}{'units s':>9}{'certify s':>10}{'agg s':>8}{'peak MiB':>10}"
                     f"{'compiles':>9}")
        for r in sw["rows"]:
            cpu = r.get("cpu_seconds")
            cert = r["unit_seconds_sum"].get("certify", float("nan"))
            lines.append(f"{r['num_partitions']:>6}{r['wall_seconds']:>9.1f}"
                         f"{cpu if cpu is not None else float('nan'):>9.1f}"
                         f"{r['unit_seconds_sum']['total']:>9.1f}{cert:>10.1f}"
                         f"{r['aggregation_seconds']:>8.1f}{r['peak_rss_mb']:>10.0f}{r.get('kernel_compiles') or 0:>9}"
                         + ("  (resumed)" if r["resumed"] else ""))
    c = res["cifar_simulation"]
    lines.append("")
    lines.append(f"CIFAR-10 scale (simulated): {c['n_train']}/{c['n_test']}, N_p = {c['num_partitions']} "
                 f"({c['partition_size']} points x {c['features']} features per partition), {c['workers']} workers")
    lines.append(f"  one unit: {c['unit_fixed_seconds']:.2f} s fixed + {c['unit_seconds_per_test_point'] * 1e3:.3f} ms "
                 f"per test point -> {c['unit_seconds_at_full_test']:.1f} s at {c['n_test']} test points "
                 f"(measured on {c['measured_units']} units x {c['measured_test_points']} test points)")
    lines.append(f"  aggregation (all methods, both learners): {sum(c['aggregation_seconds'].values()):.1f} s in one "
                 f"process, {c['aggregation_makespan_seconds']:.1f} s as {c['aggregation_blocks']} blocks on "
                 f"{c['workers']} workers; worker peak RSS {c['worker_peak_rss_mb']:.0f} MiB")
    lines.append(f"  single core: {c['single_core_seconds'] / 3600:.2f} h; {c['workers']} workers: "
                 f"{c['makespan_seconds'] / 60:.1f} min (assumption: {c['assumption']})")
    return "\n".join(lines)


def _load_full() -> dict:
    """The existing full scale.json ({} if none): a rerun reuses what it already measured."""
    path = result_path("scale", False)
    return json.loads(path.read_text()) if path.exists() else {}


def _earlier_runs(prev: dict, n_test: int) -> list[dict]:
    """{mnist, sweep, command} of `prev` (and the runs it kept) measured with another n_test."""
    if not prev:
        return []
    runs = [{"mnist": prev["mnist"], "sweep": prev["sweep"], "command": prev.get("command")}] + prev.get("earlier", [])
    return [r for r in runs if r["sweep"]["n_test"] != n_test]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configuration (about a minute)")
    ap.add_argument("--workers", type=int, default=2, help="local Dask workers for part 1 (default 2)")
    ap.add_argument("--partitions", type=int, nargs="+", default=None,
                    help="N_p values of the in-process end-to-end sweep (full: 10 50 100 1000; quick: 10 50)")
    ap.add_argument("--n-test", type=int, default=10000,
                    help="full mode: MNIST test points (default all 10000; fewer for a shorter run, the per-test-"
                         "point cost is linear)")
    ap.add_argument("--cifar-test", type=int, default=None, help="test points per measured CIFAR-scale unit")
    ap.add_argument("--rerun-cifar", action="store_true", help="full mode: remeasure the CIFAR-10 simulation even "
                    "if scale.json already has it")
    args = ap.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:  # always fresh: timings of a resumed run mean little
            mnist = run_mnist(1000, 200, 10, args.workers, Path(tmp))
            sweep = run_sweep(1000, 200, args.partitions or [10, 50], Path(tmp), reuse=mnist)
        cifar = simulate_cifar(50000, 10000, 1000, 16, sample_units=2, sample_test=args.cifar_test or 200,
                               agg_rows=100)
        n_train, n_test = 1000, 200
    else:
        n_test = args.n_test
        full = _load_full()
        # a run whose units were all on disk measured nothing new: keep the timings of the same-size run
        prev = full if full.get("sweep", {}).get("n_test") == n_test else {}
        mnist = run_mnist(60000, n_test, 100, args.workers, RUNS)
        for label, r in mnist["runs"].items():
            old = prev.get("mnist", {}).get("runs", {}).get(label)
            if r["resumed"] and r["units_computed"] == 0 and old and not old["resumed"]:
                mnist["runs"][label] = old
        sweep = run_sweep(60000, n_test, args.partitions or [10, 50, 100, 1000], RUNS, reuse=mnist)
        old_rows = {r["num_partitions"]: r for r in prev.get("sweep", {}).get("rows", [])}
        sweep = [old_rows[r["num_partitions"]] if r["resumed"] and r["num_partitions"] in old_rows
                 and not old_rows[r["num_partitions"]]["resumed"] else r for r in sweep]
        sample_test = args.cifar_test or 1000
        old_cifar = full.get("cifar_simulation")
        if old_cifar and old_cifar["measured_test_points"] == sample_test and not args.rerun_cifar:
            cifar = old_cifar
        else:
            cifar = simulate_cifar(50000, 10000, 1000, 16, sample_units=3, sample_test=sample_test, agg_rows=500)
        n_train = 60000
    res = {"mnist": mnist, "sweep": {"n_train": n_train, "n_test": n_test, "rows": sweep}, "cifar_simulation": cifar}
    if not args.quick:  # keep the measurements of earlier full runs made with another number of test points
        earlier = _earlier_runs(full, n_test)
        if earlier:
            res["earlier"] = earlier
    stamp(res, "scale", args.quick, argv)
    print(_table(res))
    print(f"wrote {write_result('scale', res, args.quick)}")
    return res


def _mnist_markdown(result: dict, quick: bool) -> list[str]:
    """Sweep and backend tables of one full or quick MNIST measurement."""
    out = []
    m = result["mnist"]
    sw = result.get("sweep")
    if sw:
        scale_up = 1.0 if quick else 10000 / sw["n_test"]
        headers = ["N_p", "wall s", "CPU s", "units s", "certify s", "aggregation s", "peak RSS MiB",
                   "kernel compiles", "resumed"]
        if scale_up > 1:
            headers.append("est. wall s at 10,000 test points")
        out += [f"**In-process, MNIST {sw['n_train']:,} train / {sw['n_test']:,} test:**", "",
                md_table(headers,
                         [[r["num_partitions"], r["wall_seconds"], r.get("cpu_seconds"),
                           r["unit_seconds_sum"]["total"], r["unit_seconds_sum"].get("certify"),
                           r["aggregation_seconds"], r["peak_rss_mb"], r.get("kernel_compiles"), r["resumed"]]
                          + ([r["wall_seconds"] + (scale_up - 1) * (r["unit_seconds_sum"]["total"]
                                                                     - r["unit_seconds_sum"]["gram"]
                                                                     + r["aggregation_seconds"])]
                             if scale_up > 1 else []) for r in sw["rows"]]), ""]
        if scale_up > 1:
            out += [f"The estimate for the full test set scales the per-test-point work (units minus their "
                    f"training Grams, plus the aggregation) by {scale_up:g}; everything in a unit except the "
                    "training Gram and the fits is linear in the number of test points.", ""]
    rows = []
    for label, r in m["runs"].items():
        peaks = list(r["worker_peak_rss_mb"].values())
        rows.append([label, r["wall_seconds"], r["unit_seconds_sum"]["total"], r["timings"]["aggregation"],
                     r["main_peak_rss_mb"], max(peaks) if peaks else None, len(peaks), r["resumed"]])
    out += [f"**Backends at N_p = {m['num_partitions']}** (MNIST {m['n_train']:,}/{m['n_test']:,}):", "",
            md_table(["backend", "wall s", "units s", "aggregation s", "main peak MiB", "max worker peak MiB",
                      "processes", "resumed"], rows), "",
            f"The per-test-point tables of both backends are byte-identical: {fmt(m['backends_identical'])}.", ""]
    first = next(iter(m["runs"].values()))
    out += [md_table(["learner", "method", "clean accuracy", "MCR", "MCR (anchor convention)", "exact fraction"],
                     [[r["learner"], r["method"], r["clean_accuracy"], r["mcr"]["radius"], r["mcr"]["anchor"],
                       r["exact_fraction"]] for r in first["results"]]), ""]
    return out


def markdown(result: dict) -> str:
    """Section of docs/results.md: end-to-end time and memory, Dask vs in-process, CIFAR-10 scale estimate."""
    m, c = result["mnist"], result["cifar_simulation"]
    out = ["## Scale: end-to-end runs, Dask and memory", "",
           "The whole pipeline (`kernelcert.pipeline.run`: data, SS-DPA partitions, depth-2 ReLU NTK, kernel "
           "regression and C_max kernel SVM per partition, ScaLabelCert, then DPA, EnsembleCert, DPA+ROE and "
           "white-box ROE) on real MNIST. Wall time includes data loading; *units* is the sum of the per-partition "
           "work (Gram, fits, certificates); memory is peak RSS.", "", provenance(result), ""]
    out += _mnist_markdown(result, result.get("quick", False))
    for e in result.get("earlier", []):
        out += [f"Measured earlier with {e['sweep']['n_test']:,} test points (`{e.get('command')}`):", ""]
        out += _mnist_markdown(e, False)
    out += [f"**CIFAR-10 scale (simulated)**: {c['n_train']:,}/{c['n_test']:,} points, N_p = {c['num_partitions']:,} "
            f"({c['partition_size']} points x {c['features']} features per partition), {c['workers']} workers. "
            f"One unit costs {fmt(c['unit_fixed_seconds'])} s (Gram + fits) + "
            f"{fmt(c['unit_seconds_per_test_point'] * 1e3)} ms per test point, so "
            f"{fmt(c['unit_seconds_at_full_test'])} s at {c['n_test']:,} test points (measured on {c['measured_units']} "
            f"units x {c['measured_test_points']} test points); the aggregation takes "
            f"{fmt(c['aggregation_makespan_seconds'])} s as {c['aggregation_blocks']} blocks; a worker peaks at "
            f"{fmt(c['worker_peak_rss_mb'])} MiB. Estimated makespan: **{fmt(c['makespan_seconds'] / 60)} min on "
            f"{c['workers']} workers** ({fmt(c['single_core_seconds'] / 3600)} h on one core). Assumptions: "
            f"{c['assumption']}."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
