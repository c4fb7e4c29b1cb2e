"""`kernelcert aggregate` on saved ensemble scores: end-to-end CPU time per method (read, check, certify, write).

A synthetic trained ensemble (t test points x M base models x K classes, float32 logits in an .npy,
labels in another) is certified through the command line in this process, one method at a time,
with plots off. The floor is the time this process needs to read the scores file once and take
every base model's argmax (np.load + argmax), measured in the same process: the ratio says how
much of each command is certification rather than I/O.

`--threads`: the pipeline's aggregation stage (`kernelcert.pipeline.aggregate`) on 1 and on 2
threads, on the stored units of a real MNIST run (60,000 training points, `--n-test` test points,
`--partitions` SS-DPA partitions, the methods and memory cap of benchmarks.scale; the run is made
under runs/bench_aggregate_threads the first time, resumed when unfinished, and reused as it is
once it has its summary.json). Alternating 1- and 2-thread
aggregations in one process, per repetition: wall, process CPU, and per worker thread the
scheduler's accounting (/proc/self/task/TID/schedstat): time on a CPU (and, of it, the thread CPU
time spent reading the blocks' stored rows, `StoredRows.read`), time runnable but waiting for one
(other processes), and the rest of the block's wall time, blocked (the GIL or the page cache:
nothing else blocks inside a block); the calling thread's time on a CPU (it builds the tasks and
collects the results). "Idle-machine wall": what the wall would be without other processes (GIL
waits as measured here): 1 thread: the calling thread's time on a CPU plus the blocks' on-CPU and
blocked time; 2 threads: the larger of the busiest worker's on-CPU + blocked time and the calling
thread's time on a CPU. This machine shares its cores between sessions per session (autogroup), so a
process there may get under one core whatever its thread count: the wall alone does not show what
a second thread buys. Prints; writes no result file.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import fmt, md_table, provenance, stamp, write_result
from kernelcert import cli

FULL = {"t": 10000, "M": 1200, "K": 10, "fa_d": 16, "star_v": 3}
QUICK = {"t": 2000, "M": 1200, "K": 10, "fa_d": 16, "star_v": 3}
METHODS = ("dpa", "dpa_roe", "fa", "fa_roe", "dpa_star_roe")


def write_scores(directory: Path, cfg: dict, seed: int) -> tuple[Path, Path]:
    """Logits with the true class lifted by 1.5 (base accuracy about 0.6), written in row blocks."""
    rng = np.random.default_rng(seed)
    t, M, K = cfg["t"], cfg["M"], cfg["K"]
    y = rng.integers(0, K, t)
    scores = np.lib.format.open_memmap(directory / "scores.npy", mode="w+", dtype=np.float32, shape=(t, M, K))
    for s in range(0, t, 500):
        blk = rng.normal(size=(min(500, t - s), M, K)).astype(np.float32)
        blk[np.arange(len(blk)), :, y[s:s + 500]] += 1.5
        scores[s:s + 500] = blk
    scores.flush()
    del scores
    np.save(directory / "labels.npy", y)
    return directory / "scores.npy", directory / "labels.npy"


def _cpu(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting) of the calling thread (Linux)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        run, wait, _ = map(int, f.read().split())
    return run / 1e9, wait / 1e9


def aggregation_threads_benchmark(n_test: int, n_p: int, reps: int) -> dict:
    """1 vs 2 threads of `pipeline.aggregate` on a stored MNIST run (see the module docstring)."""
    from benchmarks.scale import ROOT, mnist_config
    from kernelcert import pipeline
    from kernelcert.pipeline import aggregate as agg
    from kernelcert.pipeline.backends import InProcessBackend
    from kernelcert.pipeline.store import UnitFile, unit_path

    cfg = mnist_config(60000, n_test, n_p, ROOT / "runs" / "bench_aggregate_threads")
    cfg = dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, workers=1))
    run_dir = pipeline.run_directory(cfg)
    if not (run_dir / "summary.json").exists():
        run_dir = pipeline.run(cfg).run_dir
    plan = pipeline.plan_run(cfg)
    files = {u.key: UnitFile(unit_path(run_dir, u.key)) for u in plan.units}
    block = agg.aggregate_block
    per_thread: dict[int, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])

    def accounted(task, shared):
        w0, (r0, q0) = time.perf_counter(), _schedstat()
        out = block(task, shared)
        (r1, q1), acc = _schedstat(), per_thread[threading.get_native_id()]
        acc[0] += time.perf_counter() - w0
        acc[1] += r1 - r0
        acc[2] += q1 - q0
        return out

    agg.aggregate_block = accounted
    read = agg.StoredRows.read
    reading: dict[int, float] = collections.defaultdict(float)

    def timed_read(self):
        c0 = time.thread_time()
        out = read(self)
        reading[threading.get_native_id()] += time.thread_time() - c0
        return out

    agg.StoredRows.read = timed_read  # type: ignore[method-assign]
    rows = []
    try:
        for rep in range(reps + 1):  # the first pair warms the caches
            for threads in ((1, 2) if rep % 2 == 0 else (2, 1)):
                run_cfg = dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, workers=threads))
                per_thread.clear()
                reading.clear()
                load = os.getloadavg()[0]
                w0, c0, (m0, _) = time.perf_counter(), time.process_time(), _schedstat()
                agg.aggregate(run_cfg, plan, files, InProcessBackend())
                wall, cpu, main_cpu = time.perf_counter() - w0, time.process_time() - c0, _schedstat()[0] - m0
                if rep == 0:
                    continue
                tids = sorted(per_thread)
                acc = [per_thread[tid] for tid in tids]
                blocked = sum(a[0] - a[1] - a[2] for a in acc)
                # 1 thread: the blocks run on the calling thread (its CPU time includes theirs)
                idle = main_cpu + blocked if threads == 1 else max(main_cpu, max(a[0] - a[2] for a in acc))
                row = {"threads": len(acc), "wall_s": wall, "cpu_s": cpu, "load_1min": load,
                       "block_on_cpu_s": sum(a[1] for a in acc), "block_read_cpu_s": sum(reading.values()),
                       "block_runqueue_wait_s": sum(a[2] for a in acc), "block_blocked_s": blocked,
                       "calling_thread_cpu_s": main_cpu, "idle_machine_wall_s": idle,
                       "per_thread": [{"on_cpu_s": a[1], "read_cpu_s": reading.get(tid, 0.0),
                                       "runqueue_wait_s": a[2], "blocked_s": a[0] - a[1] - a[2]}
                                      for tid, a in zip(tids, acc)]}
                rows.append(row)
                split = ", ".join(f"[on CPU {t['on_cpu_s']:.2f} (reading {t['read_cpu_s']:.2f}), waiting "
                                  f"{t['runqueue_wait_s']:.2f}, blocked {t['blocked_s']:.2f}]" for t in row["per_thread"])
                print(f"threads {row['threads']}: wall {wall:6.2f} s  CPU {cpu:6.2f} s  | per block thread: {split}; "
                      f"calling thread on CPU {main_cpu:5.2f} s; idle-machine wall {idle:6.2f} s  (load {load:.1f})",
                      flush=True)
    finally:
        agg.aggregate_block = block
        agg.StoredRows.read = read  # type: ignore[method-assign]
    out: dict = {"n_test": n_test, "num_partitions": n_p, "run_dir": str(run_dir), "rows": rows}
    for threads in (1, 2):
        mine = [r for r in rows if r["threads"] == threads]
        med = {k: float(sorted(r[k] for r in mine)[len(mine) // 2]) for k in mine[0] if k not in ("threads", "per_thread")}
        out[f"median_{threads}"] = med
        print(f"median, {threads} thread(s): wall {med['wall_s']:.2f} s, CPU {med['cpu_s']:.2f} s, "
              f"blocks on CPU {med['block_on_cpu_s']:.2f} s (reading {med['block_read_cpu_s']:.2f} s), "
              f"blocked {med['block_blocked_s']:.2f} s, idle-machine wall {med['idle_machine_wall_s']:.2f} s")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"t = {QUICK['t']} instead of {FULL['t']}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", action="store_true", help="time the pipeline's aggregation on 1 vs 2 threads")
    ap.add_argument("--n-test", type=int, default=1000, help="--threads: MNIST test points")
    ap.add_argument("--partitions", type=int, default=1000, help="--threads: N_p")
    ap.add_argument("--reps", type=int, default=4, help="--threads: timed repetitions per thread count")
    args = ap.parse_args(argv)
    if args.threads:
        return aggregation_threads_benchmark(args.n_test, args.partitions, args.reps)
    cfg = QUICK if args.quick else FULL
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scores, labels = write_scores(tmp, cfg, args.seed)
        _, floor_cpu, floor_wall = _cpu(lambda: np.argmax(np.load(scores), axis=2))
        for method in METHODS:
            extra = {"fa": ["--d", cfg["fa_d"]], "fa_roe": ["--d", cfg["fa_d"]],
                     "dpa_star_roe": ["--models-per-partition", cfg["star_v"]]}.get(method, [])
            argv_m = ["aggregate", str(scores), "--labels", str(labels), "--method", method, *map(str, extra),
                      "--out", str(tmp / method), "--no-plots", "-q"]
            rc, cpu, wall = _cpu(lambda: cli.main(argv_m))
            rows.append({"method": method, "exit": rc, "cpu_s": cpu, "wall_s": wall, "ratio_to_floor": cpu / floor_cpu})
            print(f"{method:<14} exit {rc}  cpu {cpu:7.2f} s  wall {wall:7.2f} s  x{cpu / floor_cpu:5.1f} floor",
                  flush=True)
    out = {"config": dict(cfg, seed=args.seed), "floor_cpu_s": floor_cpu, "floor_wall_s": floor_wall, "rows": rows,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    stamp(out, "aggregate", args.quick, argv)
    print(f"floor (read + argmax) cpu {floor_cpu:.2f} s; wrote {write_result('aggregate', out, args.quick)}")
    return out


def markdown(result: dict) -> str:
    """Section of docs/results.md: certifying saved ensemble scores from the command line."""
    c = result["config"]
    out = ["## Certifying trained ensembles from saved scores (`kernelcert aggregate`)", "",
           f"`kernelcert aggregate` on a saved ensemble of t = {c['t']:,} test points x M = {c['M']:,} base models x "
           f"K = {c['K']} classes (float32 logits in an `.npy`), one method per command, end to end: read and check "
           f"the file, certify every point, write points.csv and summary.json. FA and FA+ROE use d = {c['fa_d']} "
           f"(k = {c['M'] // c['fa_d']}), DPA*+ROE {c['star_v']} models per partition. Floor: reading the scores and "
           "taking every argmax once in the same process.", "", provenance(result), "",
           md_table(["method", "exit", "CPU s", "wall s", "x floor"],
                    [[r["method"], r["exit"], r["cpu_s"], r["wall_s"], r["ratio_to_floor"]] for r in result["rows"]]),
           "", f"Floor: {fmt(result['floor_cpu_s'])} CPU s; peak RSS {fmt(float(result['peak_rss_mib']))} MiB."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
