"""ScaLabelCert benchmark: throughput against the sort floor, exactness of the class bounds, LabelCert agreement.

    .venv/bin/python -m benchmarks.certify            # t = 10,000 x n = 60,000 x K = 10 (about 10 min; resumable)
    .venv/bin/python -m benchmarks.certify --quick    # t = 1,000 x n = 10,000 (about 1-2 minutes)

1. Throughput: `certify` on t x n label weights with K classes, streamed in chunks of rows that are
   generated from the seed chunk by chunk (the full 10k x 60k float64 matrix would be 4.8 GB); each
   chunk is also sorted along axis 1 (the floor), timed the same chunk-wise way: `ndarray.sort` in
   place on a pre-touched copy (np.sort's algorithm without the page faults of a fresh 480 MB output;
   plain `np.sort` is recorded too). Ratios use process CPU time (both single-threaded), which is
   robust to other jobs on a shared machine; wall-clock times are recorded as well.
   Modes: radius only (`class_bounds=False`), all pairwise costs (`pairwise_costs`), full certificate
   (radius + class bounds). Weights: i.i.d. N(0, 1) ("random") and synthetic kernel-regression-like
   rows ("realistic": small Student-t background plus a few large weights, mostly on one class).
   Working memory: tracemalloc peak of one chunk's call (the input chunk itself excluded).
2. Exactness of the class bounds: share of (test point, class != prediction) pairs with
   cost_lower == cost_upper, the gap distribution, share of test points with every class exact, on
   (a) the weights of section 1, (b) MNIST with the FullyConnected NTK and kernel-regression
   (ridge 1e-3) / kernel-SVM (C = C_max) label weights, (c) small problems against the exact per-class
   MILP optimum (`kernelcert.exact.milp_class_costs`).
3. ScaLabelCert against the LabelCert MILP (`kernelcert.exact.labelcert_svm_milp`) on small-C SVMs
   (MNIST NTK, binary and 3 classes): radii must agree where the MILP is exact and lie within its
   bounds where it timed out (per-MILP time limit); speed ratio.
4. Plot of the gap distributions: benchmarks/results/certify_gaps[_quick].png.
5. The shapes a run produces: partition-sized rows. Full MNIST (60,000 training images) split by
   SS-DPA into N_p = 10, 50, 100, 1,000 partitions; one partition's depth-2 ReLU NTK kernel
   regression (ridge 1e-3) and C_max kernel SVM, label weights on test points (rows of n / N_p
   weights, K = 10). Timed: what a run computes per model (radius + per-class bounds + the
   attacker-tie pairwise costs of white-box ROE, `certify(..., pairwise="attacker")`, one pass)
   with the compiled kernel on one thread (CPU time) and on every core (wall and CPU time), the
   numpy engine's two passes (`certify` + `pairwise_costs`, the path before the kernel), and one
   `ndarray.sort(axis=1)` of the same rows in the same process (the floor), and the split of the
   one-thread time into its stages (input checks, the per-class segment sort, the compiled kernel,
   the exact pass and the number of rows it resolved). Checks that both engines give bit-identical
   outputs and reports the kernel's compile count.
   `--partitions-only` runs just this section (writes certify_partitions[_quick].json);
   `--weights-cache DIR` saves the partition label weights to DIR (one npz per N_p) and reuses them
   in later runs (computing them takes minutes; the timings do not include it).

Writes benchmarks/results/certify[_quick].json atomically. Full mode caches finished pieces in
benchmarks/results/certify_cache.json (keyed by the configuration and the source of the modules
measured; `--fresh` ignores it) and removes it when the run completes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numba
import numpy as np

from kernelcert import _scalabel_kernel
from kernelcert import certificates as C  # its private stages are timed one by one in section 5
from kernelcert.certificates import certify, pairwise_costs
from kernelcert.exact import labelcert_svm_milp, milp_class_costs

from ._common import RESULTS, _jsonable, fmt, md_table, provenance, result_path, stamp, write_result

NAME = "certify"
ROOT = Path(__file__).resolve().parent.parent
CACHE = RESULTS / "certify_cache.json"
NTK_ARCH = dict(depth=2, W_std=1.4, b_std=0.1, activation="relu")

QUICK = dict(
    t=1000, n=10_000, K=10, chunk=500,
    mnist_train=500, mnist_test=200, ridge=1e-3,
    small=[["normal", 12, 3], ["normal", 16, 4], ["normal", 20, 4], ["heavy", 16, 3]], small_t=15,
    milp_time_limit=30.0,
    labelcert=[[2, 20, 3], [2, 50, 3], [3, 20, 2], [3, 50, 1]], labelcert_time_limit=20.0,
    binary_classes=[1, 7], multi_classes=[0, 1, 2],
    partitions=[10, 50, 100, 1000], partition_test=200,
)
FULL = dict(
    t=10_000, n=60_000, K=10, chunk=1000,
    mnist_train=2000, mnist_test=500, ridge=1e-3,
    small=[[kind, n, K] for kind in ("normal", "heavy") for K in (3, 4) for n in (12, 16, 20)], small_t=30,
    milp_time_limit=60.0,
    labelcert=[[2, 20, 5], [2, 50, 5], [2, 100, 4], [3, 20, 4], [3, 50, 2], [3, 100, 2]],
    labelcert_time_limit=60.0,
    binary_classes=[1, 7], multi_classes=[0, 1, 2],
    partitions=[10, 50, 100, 1000], partition_test=2000,
)
KINDS = ("random", "realistic")


# --------------------------------------------------------------------------- piece cache (full mode)
class Cache:
    """Finished pieces of a full run, keyed by config + measured sources; saved atomically after each piece."""

    def __init__(self, path: Path | None, key: str, fresh: bool):
        self.path, self.key, self.pieces = path, key, {}
        if path is not None and path.exists() and not fresh:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if data.get("key") == key:
                self.pieces = data.get("pieces", {})
                if self.pieces:
                    print(f"resuming: {len(self.pieces)} finished pieces from {path.name}")

    def get(self, name: str, fn):
        if name in self.pieces:
            return self.pieces[name]
        value = fn()
        self.pieces[name] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"key": self.key, "pieces": self.pieces}, f, default=_jsonable)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return value

    def finish(self):
        if self.path is not None and self.path.exists():
            self.path.unlink()


def cache_key(cfg: dict, seed: int) -> str:
    h = hashlib.sha256(json.dumps({"cfg": cfg, "seed": seed}, sort_keys=True).encode())
    for mod in ("certificates", "_scalabel_kernel", "exact", "learners", "kernels", "data"):
        h.update((ROOT / "kernelcert" / f"{mod}.py").read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- statistics helpers
def cert_stats(cert) -> dict:
    """Exactness counts of a full certificate over the pairs (test point, class != prediction)."""
    K = cert.cost_lower.shape[1]
    mask = np.arange(K)[None, :] != cert.prediction[:, None]
    lo, up = cert.cost_lower[mask], cert.cost_upper[mask]
    finite = np.isfinite(lo) & np.isfinite(up)
    gaps = (up[finite] - lo[finite]).astype(np.int64)
    return {
        "points": int(len(cert.prediction)),
        "pairs": int(mask.sum()),
        "exact_pairs": int((lo == up).sum()),
        "all_exact_points": int(cert.exact.sum()),
        "gap_hist": np.bincount(gaps).tolist() if gaps.size else [],
        "no_attack_pairs": int((np.isfinite(lo) & ~np.isfinite(up)).sum()),
        "unreachable_pairs": int((~np.isfinite(lo) & ~np.isfinite(up)).sum()),
        "radius_hist": np.bincount(cert.radius).tolist(),
    }


def merge_stats(parts: list[dict]) -> dict:
    out = {k: sum(p[k] for p in parts) for k in ("points", "pairs", "exact_pairs", "all_exact_points",
                                                  "no_attack_pairs", "unreachable_pairs")}
    for h in ("gap_hist", "radius_hist"):
        size = max(len(p[h]) for p in parts)
        acc = np.zeros(size, np.int64)
        for p in parts:
            acc[:len(p[h])] += p[h]
        out[h] = acc.tolist()
    return out


def hist_quantiles(hist, qs=(0.5, 0.9, 0.99, 1.0)) -> list:
    """Quantiles of the integer values whose counts are `hist` (None when empty)."""
    h = np.asarray(hist, np.int64)
    total = int(h.sum())
    if total == 0:
        return [None] * len(qs)
    cdf = np.cumsum(h)
    return [int(np.searchsorted(cdf, max(1, int(np.ceil(q * total))))) for q in qs]


def summarize(stats: dict) -> dict:
    """Fractions and quantiles derived from the counts of `cert_stats`/`merge_stats`."""
    q = hist_quantiles(stats["gap_hist"])
    r = hist_quantiles(stats["radius_hist"], (0.5,))
    gh = np.asarray(stats["gap_hist"], np.int64)
    nz = int(gh[1:].sum()) if gh.size > 1 else 0
    return {
        "exact_pair_fraction": stats["exact_pairs"] / max(1, stats["pairs"]),
        "all_exact_point_fraction": stats["all_exact_points"] / max(1, stats["points"]),
        "gap_q50": q[0], "gap_q90": q[1], "gap_q99": q[2], "gap_max": q[3],
        "mean_gap_nonzero": float((np.arange(gh.size)[1:] * gh[1:]).sum() / nz) if nz else 0.0,
        "median_radius": r[0],
    }


def best_time(fn, repeats: int = 3, cpu: bool = False) -> float:
    """Best of `repeats` runs of fn(): wall-clock seconds, or process CPU seconds with cpu=True."""
    clock = time.process_time if cpu else time.perf_counter
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def sort_floor_cpu(W: np.ndarray, repeats: int = 3) -> float:
    """Best CPU seconds of sorting the rows of W in place (on a fresh, already touched copy)."""
    times = []
    for _ in range(repeats):
        buf = W.copy()
        t0 = time.process_time()
        buf.sort(axis=1)
        times.append(time.process_time() - t0)
    return min(times)


def traced_peak_mib(fn) -> float:
    """Peak of the memory allocated by fn() (tracemalloc; numpy buffers included), MiB."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 2**20


# --------------------------------------------------------------------------- 1. throughput
def make_labels(seed: int, n: int, K: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).integers(0, K, n)


def make_weights(kind: str, seed: int, chunk: int, rows: int, n: int, y: np.ndarray, K: int) -> np.ndarray:
    """One chunk (rows, n) of weights, reproducible from (seed, kind, chunk index).

    random: i.i.d. N(0, 1). realistic (kernel-regression-like: mostly small, a few large): background
    0.003 * Student-t(3), plus 30 weights log-uniform in [0.02, 0.5] on random training points of the
    row's own (random) class and 10 weights of random sign, log-uniform in [0.01, 0.2], anywhere.
    """
    rng = np.random.default_rng([seed, 1 + KINDS.index(kind), chunk])
    if kind == "random":
        return rng.standard_normal((rows, n))
    W = 0.003 * rng.standard_t(3, size=(rows, n))
    own = rng.integers(0, K, rows)
    perm = np.argsort(y, kind="stable")
    off = np.concatenate([[0], np.cumsum(np.bincount(y, minlength=K))])
    counts = np.diff(off)
    pos = (rng.random((rows, 30)) * counts[own][:, None]).astype(np.int64)
    idx = perm[off[own][:, None] + pos]
    r = np.arange(rows)[:, None]
    W[r, idx] += np.exp(rng.uniform(np.log(0.02), np.log(0.5), (rows, 30)))
    idx2 = rng.integers(0, n, (rows, 10))
    W[r, idx2] += rng.choice([-1.0, 1.0], (rows, 10)) * np.exp(rng.uniform(np.log(0.01), np.log(0.2), (rows, 10)))
    return W


def timed(fn):
    """(fn(), wall seconds, CPU seconds of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def throughput_chunk(kind: str, j: int, cfg: dict, seed: int, y: np.ndarray) -> dict:
    """Times of sort / radius / pairs / full on chunk j, consistency checks and exactness counts."""
    t, n, K, chunk = cfg["t"], cfg["n"], cfg["K"], cfg["chunk"]
    rows = min(chunk, t - j * chunk)
    W = make_weights(kind, seed, j, rows, n, y, K)
    out = {"rows": rows}

    def measure():
        # the floor: the sort itself, in place on a copy whose pages are already touched (np.sort
        # also allocates and page-faults a fresh output; timed separately for reference)
        buf = W.copy()
        _, out["sort_s"], out["sort_cpu_s"] = timed(lambda: buf.sort(axis=1))
        del buf
        S, out["np_sort_s"], out["np_sort_cpu_s"] = timed(lambda: np.sort(W, axis=1))
        del S
        cr, out["radius_s"], out["radius_cpu_s"] = timed(lambda: certify(W, y, K, class_bounds=False))
        P = None
        if kind == "random":
            P, out["pairs_s"], out["pairs_cpu_s"] = timed(lambda: pairwise_costs(W, y, K))
        cf, out["full_s"], out["full_cpu_s"] = timed(lambda: certify(W, y, K))
        return cr, P, cf

    if j == 0:  # warm-up run, discarded (first calls, page faults of the first block-sized buffers)
        measure()
    cr, P, cf = measure()
    # consistency: both modes give the same radius; the radius is min_b P(p, b) - 1
    out["radius_mismatch"] = int((cr.radius != cf.radius).sum() + (cr.prediction != cf.prediction).sum())
    if kind == "random":
        own = np.where(np.arange(K)[None, :] == cf.prediction[:, None], np.inf, P[np.arange(rows), cf.prediction])
        best = own.min(axis=1)
        out["radius_mismatch"] += int((np.where(np.isfinite(best), best - 1, n) != cf.radius).sum())
        del P
    out["stats"] = cert_stats(cf)
    if j == 0:  # witnesses re-verified from scratch on a few points
        ok = total = 0
        for i in range(min(5, rows)):
            if cf.radius[i] < n:
                total += 1
                ok += len(cf.witness(i)) >= cf.radius[i] + 1
            for c in range(K):
                if c != cf.prediction[i] and np.isfinite(cf.cost_upper[i, c]):
                    total += 1
                    ok += len(cf.witness(i, c)) == cf.cost_upper[i, c]
        out["witnesses_checked"], out["witnesses_ok"] = int(total), int(ok)
    return out


def memory_piece(kind: str, cfg: dict, seed: int, y: np.ndarray) -> dict:
    """tracemalloc peaks (MiB) of sort / radius / full on chunk 0 (the chunk itself not counted)."""
    rows = min(cfg["chunk"], cfg["t"])
    W = make_weights(kind, seed, 0, rows, cfg["n"], y, cfg["K"])
    K = cfg["K"]
    return {"rows": rows, "chunk_mib": W.nbytes / 2**20,
            "sort_mib": traced_peak_mib(lambda: np.sort(W, axis=1)),
            "radius_mib": traced_peak_mib(lambda: certify(W, y, K, class_bounds=False)),
            "pairs_mib": traced_peak_mib(lambda: pairwise_costs(W, y, K)) if kind == "random" else None,
            "full_mib": traced_peak_mib(lambda: certify(W, y, K))}


def throughput(cfg: dict, seed: int, cache: Cache) -> dict:
    y = make_labels(seed, cfg["n"], cfg["K"])
    nchunks = -(-cfg["t"] // cfg["chunk"])
    res = {}
    for kind in KINDS:
        parts = []
        for j in range(nchunks):
            p = cache.get(f"thr/{kind}/{j}", lambda: throughput_chunk(kind, j, cfg, seed, y))
            parts.append(p)
            print(f"  {kind} chunk {j + 1}/{nchunks}: sort {p['sort_s']:.2f}s radius {p['radius_s']:.2f}s "
                  f"full {p['full_s']:.2f}s", flush=True)
        mem = cache.get(f"mem/{kind}", lambda: memory_piece(kind, cfg, seed, y))
        sort_s = sum(p["sort_s"] for p in parts)
        sort_cpu = sum(p["sort_cpu_s"] for p in parts)
        np_sort_s = sum(p["np_sort_s"] for p in parts)
        np_sort_cpu = sum(p["np_sort_cpu_s"] for p in parts)
        modes = {}
        for mode in ("radius", "pairs", "full"):
            if f"{mode}_s" not in parts[0]:
                continue
            secs = sum(p[f"{mode}_s"] for p in parts)
            cpu = sum(p[f"{mode}_cpu_s"] for p in parts)
            modes[mode] = {"seconds": secs, "cpu_seconds": cpu, "ratio_to_sort": cpu / sort_cpu,
                           "wall_ratio_to_sort": secs / sort_s, "us_per_point": 1e6 * cpu / cfg["t"],
                           "peak_mib": mem.get(f"{mode}_mib")}
        stats = merge_stats([p["stats"] for p in parts])
        res[kind] = {"sort_seconds": sort_s, "sort_cpu_seconds": sort_cpu, "np_sort_seconds": np_sort_s,
                     "np_sort_cpu_seconds": np_sort_cpu, "sort_peak_mib": mem["sort_mib"],
                     "chunk_mib": mem["chunk_mib"],
                     "modes": modes, "radius_mismatches": sum(p["radius_mismatch"] for p in parts),
                     "witnesses_checked": sum(p.get("witnesses_checked", 0) for p in parts),
                     "witnesses_ok": sum(p.get("witnesses_ok", 0) for p in parts),
                     "stats": stats, "summary": summarize(stats)}
    return res


# --------------------------------------------------------------------------- 2b. MNIST
def mnist_piece(cfg: dict, seed: int) -> dict:
    from kernelcert.data import mnist
    from kernelcert.kernels import FullyConnected
    from kernelcert.learners import KernelRegression, KernelSVM

    try:
        xtr, ytr, xte, yte = mnist(n_train=cfg["mnist_train"], n_test=cfg["mnist_test"], seed=seed)
    except FileNotFoundError as exc:  # reported, never invented
        return {"error": str(exc)}
    kern = FullyConnected(**NTK_ARCH)
    Ktr, Kx = kern.ntk(xtr), kern.ntk(xte, xtr)
    out = {"n_train": len(ytr), "n_test": len(yte), "K": 10, "learners": []}
    for name, model in ((f"kernel regression (ridge {cfg['ridge']:g})", KernelRegression(ridge=cfg["ridge"])),
                        ("kernel SVM (C = C_max)", KernelSVM(None))):
        model.fit(Ktr, ytr, 10)
        W = model.label_weights(Kx)
        cert = certify(W, ytr, 10)
        absw = np.abs(W) / np.abs(W).max(axis=1, keepdims=True)
        stats = cert_stats(cert)
        out["learners"].append({
            "learner": name, "accuracy": float((cert.prediction == yte).mean()),
            "abs_weight_quantiles_rel_row_max": np.quantile(absw, [0.5, 0.9, 0.99]).tolist(),
            "sort_s": sort_floor_cpu(W),
            "radius_s": best_time(lambda: certify(W, ytr, 10, class_bounds=False), cpu=True),
            "full_s": best_time(lambda: certify(W, ytr, 10), cpu=True),
            "stats": stats, "summary": summarize(stats)})
    return out


# --------------------------------------------------------------------------- 5. partition-sized rows
CERT_FIELDS = ("prediction", "radius", "cost_lower", "cost_upper", "class_exact", "exact")


def _timed_threads(fn, threads: int):
    """(fn(), wall s, CPU s) with numba's kernel on `threads` threads."""
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return timed(fn)
    finally:
        numba.set_num_threads(before)


def _stage_split(W: np.ndarray, y: np.ndarray, K: int) -> dict:
    """Single-thread CPU seconds of the stages of one `certify(..., pairwise="attacker")` call: input
    checks, the per-class segment sort, the compiled kernel, the exact pass (and its row count)."""
    def best(fn):
        return min(timed(fn)[2] for _ in range(2))

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        w, yy, K, _, tol = C._validate(W, y, K, None, 0.0, None)
        layout = C._Layout(yy, K)
        validate = best(lambda: C._validate(W, y, K, None, 0.0, None))
        segsort = best(lambda: C._sorted_segments(w, layout))
        S, _ = C._sorted_segments(w, layout)
        S, tol_b = C._rescale(S, layout, tol)
        args = (S, layout.off, layout.first_window, layout.max_group, C._WINDOW_GROWTH, tol_b, "full", "attacker", True)
        kernel = best(lambda: _scalabel_kernel.solve_block(*args))
        out = _scalabel_kernel.solve_block(*args)
        rows = np.flatnonzero(out["band"] | out["pairs_band"])
        res = {"prediction": out["prediction"].copy(), "radius": out["radius"].copy(), "own": out["own"].copy(),
               "radius_exact": np.ones(len(w), bool), "lower": out["lower"].copy(), "upper": out["upper"].copy(),
               "P": out["P"].copy()}
        exact = timed(lambda: (C._resolve_exact(w, yy, K, tol, np.flatnonzero(out["band"]), res, "full", "index", layout),
                               C._resolve_exact(w, yy, K, tol, np.flatnonzero(out["pairs_band"]), res, "pairs",
                                                "attacker", layout)))[2]
    finally:
        numba.set_num_threads(before)
    return {"validate_cpu_s": validate, "segment_sort_cpu_s": segsort, "kernel_only_cpu_s": kernel,
            "exact_pass_cpu_s": exact, "exact_pass_rows": int(rows.size)}


def partition_weights(cfg: dict, seed: int, weights_dir: Path | None = None):
    """Yield (N_p, learner name, label weights W (t, n), labels y (n,)) of section 5: partition 0 of the
    SS-DPA split of MNIST, the depth-2 ReLU NTK, kernel regression and C_max SVM. With `weights_dir`
    the weights are read from / saved to weights_dir/partition_<N_p>_<test>_<seed>.npz (computing them
    takes minutes; the file holds only what this function computed, keyed by its configuration)."""
    from kernelcert.data import mnist
    from kernelcert.kernels import FullyConnected
    from kernelcert.learners import KernelRegression, KernelSVM
    from kernelcert.partition import ss_dpa_partition

    data = None
    kern = FullyConnected(depth=2, W_std=2.0 ** 0.5, b_std=0.1, activation="relu")
    for n_p in cfg["partitions"]:
        path = None if weights_dir is None else weights_dir / f"partition_{n_p}_{cfg['partition_test']}_{seed}.npz"
        if path is not None and path.exists():
            z = np.load(path)
            for name in ("regression", "svm"):
                yield n_p, name, np.ascontiguousarray(z[name]), z["y"]
            continue
        if data is None:
            data = mnist(n_test=cfg["partition_test"], seed=seed)  # FileNotFoundError: reported by the caller
        xtr, ytr, xte, _ = data
        idx = np.flatnonzero(ss_dpa_partition(xtr, n_p) == 0)
        Ktr, Kx = kern.ntk(xtr[idx]), kern.ntk(xte, xtr[idx])
        y = ytr[idx]
        Ws = {}
        for name, model in (("regression", KernelRegression(ridge=1e-3)), ("svm", KernelSVM(None))):
            model.fit(Ktr, y, 10)
            Ws[name] = np.ascontiguousarray(model.label_weights(Kx))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, y=y, **Ws)
        for name in ("regression", "svm"):
            yield n_p, name, Ws[name], y


def partition_piece(cfg: dict, seed: int, weights_dir: Path | None = None) -> dict:
    """Sort floor, compiled kernel (1 thread / all cores) and numpy engine on partition-sized MNIST rows
    (weights from `partition_weights`, cached in weights_dir if given)."""
    cores = numba.config.NUMBA_NUM_THREADS
    warm = np.random.default_rng(0).standard_normal((2, 20))
    certify(warm, np.arange(20) % 10, 10, pairwise="attacker")  # compile (or load from numba's cache)
    rows = []
    try:
        for n_p, name, W, y in partition_weights(cfg, seed, weights_dir):
            t = W.shape[0]
            sort_cpu = sort_floor_cpu(W)
            one = [_timed_threads(lambda: certify(W, y, 10, pairwise="attacker"), 1) for _ in range(2)]
            (cert, P), wall1, cpu1 = min(one, key=lambda r: r[2])
            _, wall_all, cpu_all = min((_timed_threads(lambda: certify(W, y, 10, pairwise="attacker"), cores)
                                        for _ in range(2)), key=lambda r: r[1])
            stages = _stage_split(W, y, 10)
            (ref, P_ref), wall_np, cpu_np = timed(
                lambda: (certify(W, y, 10, engine="numpy"), pairwise_costs(W, y, 10, tie="attacker", engine="numpy")))
            identical = bool(np.array_equal(P, P_ref) and all(np.array_equal(getattr(cert, f), getattr(ref, f))
                                                              for f in CERT_FIELDS))
            row = {"num_partitions": n_p, "n": len(y), "learner": name, "points": t, "sort_cpu_s": sort_cpu,
                   "kernel_cpu_s": cpu1, "kernel_wall_s": wall1, "kernel_ratio": cpu1 / sort_cpu,
                   "threads": cores, "kernel_threads_wall_s": wall_all, "kernel_threads_cpu_s": cpu_all,
                   "kernel_threads_wall_ratio": wall_all / sort_cpu,
                   "numpy_cpu_s": cpu_np, "numpy_wall_s": wall_np, "numpy_ratio": cpu_np / sort_cpu,
                   "speedup_cpu": cpu_np / cpu1, "identical": identical,
                   "exact_points": float(cert.exact.mean()), "median_radius": float(np.median(cert.radius)),
                   **stages}
            rows.append(row)
            print(f"  N_p={n_p} n={len(y)} {name}: sort {1e6 * sort_cpu / t:.2f} us/pt; certify "
                  f"{1e6 * cpu1 / t:.1f} us/pt CPU on 1 thread = {row['kernel_ratio']:.1f}x sort (kernel alone "
                  f"{1e6 * stages['kernel_only_cpu_s'] / t:.1f}, segment sort {1e6 * stages['segment_sort_cpu_s'] / t:.1f}, "
                  f"exact pass {1e6 * stages['exact_pass_cpu_s'] / t:.1f} us/pt on {stages['exact_pass_rows']} rows); "
                  f"{cores} threads: {1e6 * wall_all / t:.1f} us/pt wall; numpy engine {row['numpy_ratio']:.1f}x; "
                  f"identical {identical}", flush=True)
    except FileNotFoundError as exc:  # no MNIST: reported, never invented
        return {"error": str(exc)}
    return {"threads": cores, "compile_count": _scalabel_kernel.compile_count(), "rows": rows}


def _stages(r: dict) -> str:
    """Stage split of a partition row (absent in results recorded before it was measured)."""
    if "kernel_only_cpu_s" not in r:
        return "-"
    t = r["points"]
    return (f"{1e6 * r['kernel_only_cpu_s'] / t:.1f} / {1e6 * r['segment_sort_cpu_s'] / t:.1f} / "
            f"{1e6 * r['exact_pass_cpu_s'] / t:.1f} ({r['exact_pass_rows']})")


def partition_markdown(part: dict) -> list[str]:
    """Table and summary of section 5."""
    out = ["### The shapes a run produces: partition-sized rows", ""]
    if "error" in part:
        return out + [f"Not run: {part['error']}"]
    out += ["Full MNIST split by SS-DPA into N_p partitions; one partition's depth-2 ReLU NTK learner (kernel "
            "regression, ridge 1e-3, and C_max kernel SVM), label weights on the test points (rows of n = "
            "60,000 / N_p weights, K = 10). *kernel* = what a run computes per model in one pass: radius, per-class "
            "bounds and the attacker-tie pairwise costs of white-box ROE (`certify(..., pairwise=\"attacker\")`, "
            "compiled numba kernel); *numpy engine* = the vectorised reference in two passes (`certify` + "
            "`pairwise_costs`, the path before the kernel). Ratios are CPU time over one `ndarray.sort(axis=1)` of "
            "the same rows in the same process; the kernel is timed on one thread (CPU) and on every core "
            f"({part['threads']} threads, wall). The kernel compiled {part['compile_count']} time(s) for all "
            "shapes (one signature; numba's on-disk cache makes later processes load it instead).", "",
            md_table(["N_p", "n", "learner", "points", "sort µs/pt", "kernel µs/pt (1 thread CPU)", "kernel / sort",
                      "of which: compiled kernel / segment sort / exact pass µs/pt (rows)",
                      "kernel µs/pt (all cores, wall)", "numpy engine / sort", "speed-up", "identical"],
                     [[r["num_partitions"], r["n"], r["learner"], r["points"], 1e6 * r["sort_cpu_s"] / r["points"],
                       1e6 * r["kernel_cpu_s"] / r["points"], r["kernel_ratio"], _stages(r),
                       1e6 * r["kernel_threads_wall_s"] / r["points"], r["numpy_ratio"], r["speedup_cpu"],
                       r["identical"]] for r in part["rows"]])]
    return out


# --------------------------------------------------------------------------- 2c. small problems vs MILP
def small_weights(kind: str, rng, t: int, n: int) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal((t, n))
    return rng.standard_t(1.5, size=(t, n))  # heavy tails: a few weights dominate


def small_piece(kind: str, n: int, K: int, cfg: dict, seed: int) -> dict:
    rng = np.random.default_rng([seed, 7, n, K, ("normal", "heavy").index(kind)])
    t = cfg["small_t"]
    W = small_weights(kind, rng, t, n)
    y = rng.integers(0, K, n)
    t0 = time.perf_counter()
    cert = certify(W, y, K)
    sc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    failed = 0
    try:
        A = milp_class_costs(W, y, K, time_limit=cfg["milp_time_limit"])
    except RuntimeError:  # a near tie or a time limit somewhere: per point, so only that point is lost
        A = np.full((t, K), np.nan)
        for i in range(t):
            try:
                A[i] = milp_class_costs(W[i:i + 1], y, K, time_limit=cfg["milp_time_limit"])[0]
            except RuntimeError:
                failed += 1
    milp_s = time.perf_counter() - t0
    ok = ~np.isnan(A).any(axis=1)
    mask = (np.arange(K)[None, :] != cert.prediction[:, None]) & ok[:, None]
    lo, up, a = cert.cost_lower[mask], cert.cost_upper[mask], A[mask]
    fl, fu = np.isfinite(a) & np.isfinite(lo), np.isfinite(a) & np.isfinite(up)
    # radius against the MILP: min over c != p of A_c, minus 1 (n if no class can win)
    Am = np.where(np.arange(K)[None, :] == cert.prediction[:, None], np.inf, A)[ok]
    amin = Am.min(axis=1)
    rad_milp = np.where(np.isfinite(amin), amin - 1, n)
    return {
        "kind": kind, "n": n, "K": K, "points": int(ok.sum()), "milp_failed_points": failed, "pairs": int(mask.sum()),
        "lower_exact": int((lo == a).sum()), "upper_exact": int((up == a).sum()),
        "both_exact": int(((lo == a) & (up == a)).sum()),
        "certified_exact": int((lo == up).sum()),
        "unsound_lower": int((lo > a).sum()), "upper_below_milp": int((up < a).sum()),
        "no_attack": int((np.isfinite(a) & ~np.isfinite(up)).sum()),
        "lower_gap_hist": np.bincount((a[fl] - lo[fl]).clip(0).astype(np.int64)).tolist() if fl.any() else [],
        "upper_gap_hist": np.bincount((up[fu] - a[fu]).clip(0).astype(np.int64)).tolist() if fu.any() else [],
        "radius_agree": int((rad_milp == cert.radius[ok]).sum()),
        "prediction_agree": int((np.argmax(W[ok] @ np.eye(K)[y], axis=1) == cert.prediction[ok]).sum()),
        "scalabelcert_s": sc_s, "milp_s": milp_s,
    }


# --------------------------------------------------------------------------- 3. LabelCert MILP
def labelcert_piece(K: int, n: int, pts: int, cfg: dict, seed: int) -> dict:
    from kernelcert.data import mnist
    from kernelcert.kernels import FullyConnected
    from kernelcert.learners import KernelSVM

    classes = cfg["binary_classes"] if K == 2 else cfg["multi_classes"][:K]
    try:
        xtr, ytr, xte, _ = mnist(n_train=n, n_test=pts, seed=seed, classes=classes)
    except FileNotFoundError as exc:
        return {"K": K, "n": n, "error": str(exc)}
    kern = FullyConnected(**NTK_ARCH)
    Kt, Kx = kern.ntk(xtr), kern.ntk(xte, xtr)
    svm = KernelSVM(None).fit(Kt, ytr, K)
    W = svm.label_weights(Kx)
    cert = certify(W, ytr, K)
    sc_s = best_time(lambda: certify(W, ytr, K), 5)
    t0 = time.perf_counter()
    lc = labelcert_svm_milp(Kt, ytr, Kx, None, K, time_limit=cfg["labelcert_time_limit"])
    milp_s = time.perf_counter() - t0
    rows, disagree = [], []
    witness_ok = 0
    for i in range(len(xte)):
        r_sc, r_lo, r_up = int(cert.radius[i]), int(lc.radius[i]), int(lc.radius_upper[i])
        # ScaLabelCert's attack of size radius + 1, checked by retraining the SVM on the attacked labels
        if r_sc < n:
            y2 = ytr.copy()
            att = cert.witness(i)
            for j, v in att:
                y2[j] = v
            flips = int(KernelSVM(svm.C_).fit(Kt, y2, K).predict(Kx[i:i + 1])[0]) != int(cert.prediction[i])
            witness_ok += bool(flips and len(att) == r_sc + 1)
        else:
            witness_ok += 1  # nothing to attack: no relabelling changes the prediction
        exact = bool(lc.exact[i])
        same_pred = int(cert.prediction[i]) == int(lc.prediction[i])
        if not same_pred or (exact and r_sc != r_lo) or (not exact and not r_lo <= r_sc <= r_up):
            verdict = "DISAGREE"
            disagree.append(i)
        else:
            verdict = "agree" if exact else "within MILP bounds"
        rows.append({"point": i, "scalabelcert": r_sc, "milp_radius": r_lo, "milp_radius_upper": r_up,
                     "milp_exact": exact, "status": lc.status[i], "verdict": verdict})
    timeouts = sum("user_limit" in s for s in lc.status)
    return {"K": K, "n": n, "classes": list(classes), "points": len(xte), "C": lc.C, "C_max": lc.C_max,
            "agree": sum(r["verdict"] == "agree" for r in rows),
            "within_bounds": sum(r["verdict"] == "within MILP bounds" for r in rows),
            "disagree": len(disagree), "timeouts": int(timeouts), "milp_exact": int(lc.exact.sum()),
            "witness_retrain_ok": int(witness_ok),
            "milp_s_per_point": milp_s / len(xte), "scalabelcert_s_per_point": sc_s / len(xte),
            "speed_ratio": (milp_s / len(xte)) / max(sc_s / len(xte), 1e-12), "rows": rows}


# --------------------------------------------------------------------------- 4. plot
def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(f"{k} weights (synthetic)", result["throughput"][k]["stats"]) for k in KINDS]
    mn = result.get("mnist", {})
    for row in mn.get("learners", []):
        series.append((f"MNIST {row['learner']} (n_train = {mn['n_train']}, {mn['K']} classes)", row["stats"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    ax = axes[0]
    width = 0.8 / len(series)
    gmax = max(len(s["gap_hist"]) for _, s in series)
    xs = np.arange(gmax + 1)
    for k, (label, s) in enumerate(series):
        h = np.zeros(gmax + 1)
        h[:len(s["gap_hist"])] = s["gap_hist"]
        h[gmax] = s["no_attack_pairs"]
        ax.bar(xs + (k - (len(series) - 1) / 2) * width, h / max(1, s["pairs"]), width, label=label)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(v) for v in range(gmax)] + ["no\nattack"], fontsize=8)
    ax.set_xlabel("cost_upper - cost_lower (flips)")
    ax.set_ylabel("fraction of (test point, class != prediction) pairs")
    ax.set_title("ScaLabelCert per-class flip costs: upper - lower bound")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)
    ax = axes[1]
    lo = np.zeros(1, np.int64)
    up = np.zeros(1, np.int64)
    for r in result["small"]:
        a, b = np.asarray(r["lower_gap_hist"], np.int64), np.asarray(r["upper_gap_hist"], np.int64)
        lo = np.pad(lo, (0, max(0, a.size - lo.size)))
        lo[:a.size] += a
        up = np.pad(up, (0, max(0, b.size - up.size)))
        up[:b.size] += b
    size = max(lo.size, up.size)
    lo, up = np.pad(lo, (0, size - lo.size)), np.pad(up, (0, size - up.size))
    xs = np.arange(size)
    ax.bar(xs - 0.2, lo / max(1, lo.sum()), 0.4, label="MILP optimum - cost_lower")
    ax.bar(xs + 0.2, up / max(1, up.sum()), 0.4, label="cost_upper - MILP optimum")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xlabel("gap to the exact per-class cost (flips)")
    ax.set_ylabel("fraction of pairs")
    ns, ks = [r["n"] for r in result["small"]], [r["K"] for r in result["small"]]
    span = lambda v: f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"  # noqa: E731
    ax.set_title(f"Small problems (n = {span(ns)}, K = {span(ks)}): bounds vs exact MILP")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)
    fig.text(0.5, 0.01, "log y axis: a missing bar = no pair with that gap", ha="center", va="bottom", fontsize=7,
             style="italic")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------- printing
def print_tables(result: dict) -> None:
    cfg = result["config"]
    print(f"\n1. Throughput: t={cfg['t']} x n={cfg['n']} x K={cfg['K']} (chunks of {cfg['chunk']} rows)")
    print(f"{'weights':<11}{'mode':<8}{'CPU s':>8}{'sort CPU':>9}{'ratio':>7}{'wall s':>8}{'sort wall':>10}"
          f"{'ratio':>7}{'us/pt':>8}{'peak MiB':>10}    (sort = in-place ndarray.sort; CPU = process time)")
    for kind, r in result["throughput"].items():
        for mode, m in r["modes"].items():
            print(f"{kind:<11}{mode:<8}{m['cpu_seconds']:>8.2f}{r['sort_cpu_seconds']:>9.2f}{m['ratio_to_sort']:>7.2f}"
                  f"{m['seconds']:>8.2f}{r['sort_seconds']:>10.2f}{m['wall_ratio_to_sort']:>7.2f}"
                  f"{m['us_per_point']:>8.0f}{m['peak_mib']:>10.0f}")
        print(f"{'':<11}plain np.sort (allocating its output): {r['np_sort_cpu_seconds']:.2f} CPU s, "
              f"{r['np_sort_seconds']:.2f} wall s")
        print(f"{'':<11}radius mismatches between modes: {r['radius_mismatches']}; witnesses verified "
              f"{r['witnesses_ok']}/{r['witnesses_checked']}; np.sort peak {r['sort_peak_mib']:.0f} MiB "
              f"(chunk {r['chunk_mib']:.0f} MiB)")
    print(f"process peak RSS {result['peak_rss_mib']:.0f} MiB")
    print("\n2. Exactness of the class bounds (pairs: test point x class != prediction)")
    print(f"{'weights':<42}{'exact pairs':>12}{'all-exact pts':>14}{'gap q50/q90/q99/max':>22}{'no attack':>10}"
          f"{'med radius':>11}")
    for label, st, sm in exactness_rows(result):
        print(f"{label:<42}{sm['exact_pair_fraction']:>12.3f}{sm['all_exact_point_fraction']:>14.3f}"
              f"{'/'.join(str(v) for v in (sm['gap_q50'], sm['gap_q90'], sm['gap_q99'], sm['gap_max'])):>22}"
              f"{st['no_attack_pairs']:>10}{str(sm['median_radius']):>11}")
    mn = result["mnist"]
    if "error" in mn:
        print(f"MNIST: not run ({mn['error']})")
    else:
        for row in mn["learners"]:
            print(f"  MNIST {row['learner']}: accuracy {row['accuracy']:.3f}; full {row['full_s']:.3f}s, "
                  f"radius {row['radius_s']:.3f}s, sort {row['sort_s']:.4f}s")
    print("\n2c. Small problems against the exact MILP (pairs: test point x class != prediction)")
    print(f"{'weights':<8}{'n':>4}{'K':>3}{'pts':>5}{'pairs':>7}{'lower=opt':>10}{'upper=opt':>10}{'unsound':>8}"
          f"{'up<opt':>7}{'radius ok':>10}{'MILP s':>8}{'ours s':>8}")
    for r in result["small"]:
        print(f"{r['kind']:<8}{r['n']:>4}{r['K']:>3}{r['points']:>5}{r['pairs']:>7}"
              f"{r['lower_exact'] / max(1, r['pairs']):>10.3f}{r['upper_exact'] / max(1, r['pairs']):>10.3f}"
              f"{r['unsound_lower']:>8}{r['upper_below_milp']:>7}{r['radius_agree']:>6}/{r['points']:<3}"
              f"{r['milp_s']:>8.2f}{r['scalabelcert_s']:>8.3f}")
    print("\n3. ScaLabelCert vs LabelCert MILP (small-C SVM, MNIST NTK)")
    print(f"{'K':>3}{'n':>5}{'pts':>5}{'agree':>7}{'in bounds':>10}{'DISAGREE':>9}{'witness':>8}{'timeouts':>9}"
          f"{'MILP s/pt':>11}{'ours s/pt':>11}{'speed-up':>10}")
    for r in result["labelcert"]:
        if "error" in r:
            print(f"{r['K']:>3}{r['n']:>5}  not run: {r['error']}")
            continue
        print(f"{r['K']:>3}{r['n']:>5}{r['points']:>5}{r['agree']:>7}{r['within_bounds']:>10}{r['disagree']:>9}"
              f"{r.get('witness_retrain_ok', '-'):>8}{r['timeouts']:>9}{r['milp_s_per_point']:>11.2f}"
              f"{r['scalabelcert_s_per_point']:>11.5f}"
              f"{r['speed_ratio']:>10.0f}")
    bad = [(r["K"], r["n"], x) for r in result["labelcert"] for x in r.get("rows", []) if x["verdict"] == "DISAGREE"]
    for K, n, x in bad:
        print(f"!!! DISAGREEMENT K={K} n={n} point {x['point']}: ScaLabelCert radius {x['scalabelcert']}, "
              f"MILP {x['milp_radius']}..{x['milp_radius_upper']} (exact={x['milp_exact']}, {x['status']})")
    unsound = sum(r["unsound_lower"] for r in result["small"])
    if unsound:
        print(f"!!! {unsound} lower bounds above the MILP optimum")


def exactness_rows(result: dict):
    cfg = result["config"]
    rows = [(f"{k} (t={cfg['t']}, n={cfg['n']}, K={cfg['K']})", r["stats"], r["summary"])
            for k, r in result["throughput"].items()]
    mn = result["mnist"]
    for row in mn.get("learners", []):
        rows.append((f"MNIST {row['learner']}", row["stats"], row["summary"]))
    return rows


# --------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small configuration (about 1-2 minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="full mode: ignore cached pieces of an earlier run")
    ap.add_argument("--partitions-only", action="store_true",
                    help="run only section 5 (partition-sized rows); writes certify_partitions[_quick].json")
    ap.add_argument("--weights-cache", type=Path, default=None, metavar="DIR",
                    help="section 5: read the partition label weights from / save them to DIR (npz per N_p)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.partitions_only:
        t_start = time.perf_counter()
        print("5. partition-sized rows", flush=True)
        result = {"config": {"partitions": cfg["partitions"], "partition_test": cfg["partition_test"],
                             "seed": args.seed}, "partitions": partition_piece(cfg, args.seed, args.weights_cache),
                  "wall_seconds": time.perf_counter() - t_start}
        stamp(result, NAME, args.quick, argv)
        print("\n".join(partition_markdown(result["partitions"])))
        path = write_result(NAME + "_partitions", result, args.quick)
        print(f"\nwrote {path.relative_to(ROOT)}")
        return result
    cache = Cache(None if args.quick else CACHE, cache_key(cfg, args.seed), args.fresh)
    t_start = time.perf_counter()
    print("1. throughput", flush=True)
    thr = throughput(cfg, args.seed, cache)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("2b. MNIST", flush=True)
    mn = cache.get("mnist", lambda: mnist_piece(cfg, args.seed))
    print("2c. small problems vs MILP", flush=True)
    small = [cache.get(f"small/{kind}/{n}/{K}", lambda: small_piece(kind, n, K, cfg, args.seed))
             for kind, n, K in cfg["small"]]
    print("3. LabelCert MILP", flush=True)
    lc = []
    for K, n, pts in cfg["labelcert"]:
        lc.append(cache.get(f"lc/{K}/{n}", lambda: labelcert_piece(K, n, pts, cfg, args.seed)))
        r = lc[-1]
        if "error" not in r:
            print(f"  K={K} n={n}: {r['agree']} agree, {r['within_bounds']} within bounds, {r['disagree']} disagree, "
                  f"{r['timeouts']} timeouts, MILP {r['milp_s_per_point']:.1f}s/pt", flush=True)
    print("5. partition-sized rows", flush=True)
    part = cache.get("partitions", lambda: partition_piece(cfg, args.seed, args.weights_cache))
    result = {"config": dict(cfg, seed=args.seed), "throughput": thr, "peak_rss_mib": peak_rss, "mnist": mn,
              "small": small, "labelcert": lc, "partitions": part, "wall_seconds": time.perf_counter() - t_start}
    png = RESULTS / ("certify_gaps_quick.png" if args.quick else "certify_gaps.png")
    plot(result, png)
    result["plot"] = png.name
    stamp(result, NAME, args.quick, argv)
    print_tables(result)
    path = write_result(NAME, result, args.quick)
    cache.finish()
    print(f"\nwrote {path.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    return result


# --------------------------------------------------------------------------- Markdown
def markdown(result: dict) -> str:
    """Section of docs/results.md: ScaLabelCert throughput, exactness of the bounds, LabelCert agreement."""
    cfg = result["config"]
    thr = result["throughput"]
    out = ["## ScaLabelCert: throughput, exactness of the class bounds, agreement with LabelCert", "",
           f"`kernelcert.certify` on t = {cfg['t']:,} test points x n = {cfg['n']:,} training points x "
           f"K = {cfg['K']} classes, streamed in chunks of {cfg['chunk']:,} rows generated from the seed (the sort "
           "floor is measured chunk by chunk the same way). *random*: i.i.d. N(0, 1) weights; *realistic*: "
           "synthetic kernel-regression-like rows (a small Student-t background plus 40 large weights, 30 of "
           "them on the row's own class). Modes: *radius* = `certify(..., class_bounds=False)`, *pairs* = "
           "`pairwise_costs` (all K x K pairwise problems), *full* = `certify` (radius and per-class bounds). "
           "`ratio` is the time over sorting every row of the same matrix (`ndarray.sort(axis=1)`, np.sort's "
           "algorithm, in place on a pre-touched copy so that the page faults of a fresh output buffer are not "
           "counted), from the CPU time of the process (`time.process_time`; both are single-threaded, so this "
           "is robust to other jobs on the shared machine) and from wall-clock time; `peak MiB` is the "
           "tracemalloc peak of one chunk's call, the chunk itself not counted.", "",
           provenance(result), "",
           md_table(["weights", "mode", "CPU s", "sort CPU s", "ratio (CPU)", "wall s", "sort wall s",
                     "ratio (wall)", "µs / point", "peak MiB"],
                    [[kind, mode, m["cpu_seconds"], r["sort_cpu_seconds"], m["ratio_to_sort"], m["seconds"],
                      r["sort_seconds"], m["wall_ratio_to_sort"], m["us_per_point"], m["peak_mib"]]
                     for kind, r in thr.items() for mode, m in r["modes"].items()])]
    full = [(k, r["modes"]["full"]["ratio_to_sort"]) for k, r in thr.items()]
    rad = [(k, r["modes"]["radius"]["ratio_to_sort"]) for k, r in thr.items()]
    met = [f"{mode} on {k}" for k, r in thr.items() for mode, m in r["modes"].items() if m["ratio_to_sort"] <= 3]
    missed = [f"{mode} on {k}" for k, r in thr.items() for mode, m in r["modes"].items() if m["ratio_to_sort"] > 3]
    target = ("met by every mode" if not missed else
              f"met by {', '.join(met)} and missed by {', '.join(missed)}" if met else "missed by every mode")
    out += ["", "In CPU time the full certificate (radius and per-class bounds) takes "
            f"{fmt(min(v for _, v in full))}x to {fmt(max(v for _, v in full))}x the sort floor and the radius alone "
            f"{fmt(min(v for _, v in rad))}x to {fmt(max(v for _, v in rad))}x; the 3x target is {target}. "
            f"Its working memory stays at {fmt(max(r['modes']['full']['peak_mib'] for r in thr.values()))} MiB "
            f"per call on a {fmt(max(r['chunk_mib'] for r in thr.values()))} MiB chunk (np.sort needs "
            f"{fmt(max(r['sort_peak_mib'] for r in thr.values()))} MiB for its output); the process peaked at "
            f"{fmt(result['peak_rss_mib'])} MiB RSS."]
    if all("np_sort_cpu_seconds" in r for r in thr.values()):
        vs_np = [r["modes"]["full"]["cpu_seconds"] / r["np_sort_cpu_seconds"] for r in thr.values()]
        out[-1] += (f" Against plain `np.sort(W, axis=1)`, which also allocates its output, the full certificate "
                    f"takes {fmt(min(vs_np))}x to {fmt(max(vs_np))}x.")
    mism = sum(r["radius_mismatches"] for r in thr.values())
    wc, wo = sum(r["witnesses_checked"] for r in thr.values()), sum(r["witnesses_ok"] for r in thr.values())
    same = "identical radii" if mism == 0 else f"{mism} differing radii"
    out[-1] += (f" Radius-only, pairwise and full modes gave {same}; {wo} of {wc} attack witnesses re-verified "
                "from scratch.")

    out += ["", "### Exactness of the per-class bounds", "",
            "Over the pairs (test point, class c != prediction): `exact pairs` is the share with "
            "cost_lower == cost_upper (the exact number of flips to make c the prediction), `all-exact points` "
            "the share of test points whose every class is exact, gap quantiles of cost_upper - cost_lower, "
            "`no attack` the pairs with no verified attack (cost_upper = inf)."]
    mn = result["mnist"]
    if "error" in mn:
        out += ["", f"MNIST was not run: {mn['error']}"]
    else:
        out[-1] += (f" MNIST: n = {mn['n_train']:,} training / {mn['n_test']} test images, 10 classes, "
                    f"FullyConnected NTK (depth {NTK_ARCH['depth']}, relu, W_std {NTK_ARCH['W_std']}, "
                    f"b_std {NTK_ARCH['b_std']}).")
    rows = []
    for label, st, sm in exactness_rows(result):
        rows.append([label, sm["exact_pair_fraction"], sm["all_exact_point_fraction"], sm["gap_q50"], sm["gap_q90"],
                     sm["gap_q99"], sm["gap_max"], st["no_attack_pairs"], sm["median_radius"]])
    out += ["", md_table(["weights", "exact pairs", "all-exact points", "gap q50", "gap q90", "gap q99", "gap max",
                          "no attack", "median radius"],
                         [[r[0], _pct(r[1]), _pct(r[2])] + r[3:] for r in rows])]
    if "error" not in mn:
        out += ["", md_table(["MNIST learner", "accuracy", "full certify CPU s", "radius only CPU s", "sort CPU s",
                              "median abs weight / row max", "99% abs weight / row max"],
                             [[r["learner"], r["accuracy"], r["full_s"], r["radius_s"], r["sort_s"],
                               r["abs_weight_quantiles_rel_row_max"][0], r["abs_weight_quantiles_rel_row_max"][2]]
                              for r in mn["learners"]])]
    best = max(rows, key=lambda r: r[1])
    low = min(rows, key=lambda r: r[1])
    out += ["", f"The bounds are exact on {_pct(low[1])} ({low[0]}) to {_pct(best[1])} ({best[0]}) of the "
            f"pairs; the largest gap seen is {max(r[6] or 0 for r in rows)} flips."]
    if "error" not in mn and mn["learners"]:
        slow = max(mn["learners"], key=lambda r: r["full_s"] / max(r["sort_s"], 1e-12))
        out[-1] += (f" At MNIST size (n = {mn['n_train']:,}) the sort is so cheap that the fixed per-window work "
                    f"dominates: the full certificate takes {fmt(slow['full_s'])} s for {mn['n_test']} points "
                    f"({slow['learner']}), {fmt(slow['full_s'] / slow['sort_s'])}x its sort.")
    png = result.get("plot")
    if png:
        out += ["", f"![gap distributions](../benchmarks/results/{png})"]

    sm = result["small"]
    out += ["", "### Against the exact per-class MILP (small problems)", "",
            f"{cfg['small_t']} test points per row, random labels; weights N(0, 1) (*normal*) or Student-t with "
            "1.5 degrees of freedom (*heavy*); the exact A_c from `milp_class_costs` (HiGHS, "
            f"{fmt(cfg['milp_time_limit'])} s limit per MILP). `unsound` counts lower bounds above the optimum "
            "(must be 0), `radius = MILP` test points whose radius equals min_c A_c - 1.", "",
            md_table(["weights", "n", "K", "points", "pairs", "lower = opt", "upper = opt", "both exact", "unsound",
                      "radius = MILP", "MILP s", "ScaLabelCert s"],
                     [[r["kind"], r["n"], r["K"], r["points"], r["pairs"], r["lower_exact"] / max(1, r["pairs"]),
                       r["upper_exact"] / max(1, r["pairs"]), r["both_exact"] / max(1, r["pairs"]),
                       r["unsound_lower"], f"{r['radius_agree']}/{r['points']}", r["milp_s"], r["scalabelcert_s"]]
                      for r in sm])]
    pairs = sum(r["pairs"] for r in sm)
    lo_ex, up_ex = sum(r["lower_exact"] for r in sm), sum(r["upper_exact"] for r in sm)
    uns, rad_ok = sum(r["unsound_lower"] for r in sm), sum(r["radius_agree"] for r in sm)
    pts = sum(r["points"] for r in sm)
    lo_h = _sum_hists([r["lower_gap_hist"] for r in sm])
    up_h = _sum_hists([r["upper_gap_hist"] for r in sm])
    out += ["", f"Over {pairs} pairs the lower bound equals the optimum in {fmt(100 * lo_ex / max(1, pairs))}% and "
            f"the upper bound in {fmt(100 * up_ex / max(1, pairs))}%; the largest misses are "
            f"{len(lo_h) - 1 if lo_h else 0} (lower) and {len(up_h) - 1 if up_h else 0} (upper) flips. "
            + ("No lower bound exceeds the optimum" if uns == 0 else f"{uns} LOWER BOUNDS EXCEED THE OPTIMUM")
            + f", and the radius matches the MILP on {rad_ok} of {pts} test points."]

    lc = [r for r in result["labelcert"] if "error" not in r]
    out += ["", "### Against the LabelCert MILP (small-C kernel SVM)", "",
            f"MNIST, FullyConnected NTK, one-vs-rest SVM at C = C_max (label-linear), binary "
            f"({'/'.join(map(str, cfg['binary_classes']))}) and 3 classes "
            f"({'/'.join(map(str, cfg['multi_classes']))}). `labelcert_svm_milp` (HiGHS, "
            f"{fmt(cfg['labelcert_time_limit'])} s limit per MILP) against ScaLabelCert's radius: *agree* = MILP exact "
            "and equal; *in bounds* = MILP stopped by the time limit (or unverified) and ScaLabelCert's radius lies "
            "within its proven bounds; *disagree* = anything else. *witness retrained*: ScaLabelCert's attack of "
            "size radius + 1 changes the prediction of the SVM retrained on the attacked labels (so the true "
            "radius is at most ScaLabelCert's).", "",
            md_table(["K", "n", "points", "agree", "in bounds", "disagree", "witness retrained", "timeouts",
                      "MILP s / point", "ScaLabelCert s / point", "speed-up"],
                     [[r["K"], r["n"], r["points"], r["agree"], r["within_bounds"], r["disagree"],
                       f"{r['witness_retrain_ok']}/{r['points']}" if "witness_retrain_ok" in r else None, r["timeouts"],
                       r["milp_s_per_point"], r["scalabelcert_s_per_point"],
                       ("≥ " if r["timeouts"] else "") + fmt(float(r["speed_ratio"]))] for r in lc])]
    for r in result["labelcert"]:
        if "error" in r:
            out += ["", f"K = {r['K']}, n = {r['n']} was not run: {r['error']}"]
    if lc:
        dis = sum(r["disagree"] for r in lc)
        agree, within = sum(r["agree"] for r in lc), sum(r["within_bounds"] for r in lc)
        tout = sum(r["timeouts"] for r in lc)
        if dis:
            text = f"**{dis} DISAGREEMENTS** with the MILP (listed in the result file)."
        else:
            text = f"ScaLabelCert's radius equals the MILP's on all {agree} points the MILP solved exactly"
            if within:
                gaps = [x["scalabelcert"] - x["milp_radius"] for r in lc for x in r["rows"]
                        if x["verdict"] == "within MILP bounds"]
                text += (f" and lies within the MILP's proven bounds on the remaining {within} point"
                         f"{'s' if within != 1 else ''} (there the stopped MILP's proven lower bound is "
                         f"{min(gaps)} to {max(gaps)} flips below ScaLabelCert's radius).")
            else:
                text += "."
        wok = sum(r.get("witness_retrain_ok", 0) for r in lc)
        if all("witness_retrain_ok" in r for r in lc):
            text += (f" On {wok} of {sum(r['points'] for r in lc)} points ScaLabelCert's attack witness flips the "
                     "retrained SVM.")
        text += (f" {tout} MILP{'s' if tout != 1 else ''} hit the {fmt(cfg['labelcert_time_limit'])} s time limit "
                 "(speed-ups marked ≥ are lower bounds)." if tout else " No MILP hit the time limit.")
        done = [r["speed_ratio"] for r in lc if not r["timeouts"]]
        if done:
            text += (f" Where every MILP finished, ScaLabelCert is {fmt(float(min(done)))}x to "
                     f"{fmt(float(max(done)))}x faster per point.")
        out += ["", text]
    if "partitions" in result:
        out += [""] + partition_markdown(result["partitions"])
    else:  # measured on its own (`--partitions-only`), with its own command and machine
        path = result_path(NAME + "_partitions", quick=bool(result.get("quick")))
        if path.exists():
            part = json.loads(path.read_text())
            section = partition_markdown(part["partitions"])
            out += [""] + section[:2] + [provenance(part), ""] + section[2:]
    return "\n".join(out) + "\n"


def _pct(x: float) -> str:
    """A fraction as a percentage with two decimals (100% only when exactly 1)."""
    return "100%" if x == 1 else f"{min(100 * x, 99.99):.2f}%"


def _sum_hists(hists) -> list:
    size = max((len(h) for h in hists), default=0)
    acc = np.zeros(size, np.int64)
    for h in hists:
        acc[:len(h)] += h
    return acc.tolist()


if __name__ == "__main__":
    main()
