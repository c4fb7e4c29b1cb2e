"""`kernelcert aggregate` on saved ensemble scores: end-to-end CPU time per method (read, check, certify, write).

A synthetic trained ensemble (t test points x M base models x K classes, float32 logits in an .npy,
labels in another) is certified through the command line in this process, one method at a time,
with plots off. The floor is the time this process needs to read the scores file once and take
every base model's argmax (np.load + argmax), measured in the same process: the ratio says how
much of each command is certification rather than I/O.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"t = {QUICK['t']} instead of {FULL['t']}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
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
