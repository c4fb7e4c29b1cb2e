"""Benchmark: FullyConnected NTK Gram vs neural-tangents vs the bare matmul floor.

    .venv/bin/python -m benchmarks.kernels            # N in {1000, 2000, 5000, 10000}
    .venv/bin/python -m benchmarks.kernels --quick    # N in {1000, 2000}
    .venv/bin/python -m benchmarks.kernels --compiles # only: XLA programs for the FA k=50, d=4 learner sizes

For each N and dtype (float32, float64) on MNIST-like inputs (uniform [0, 1], d = 784) it times the
symmetric NTK Gram of FullyConnected(depth=2, W_std=1.4, b_std=0.1, relu): ours (after a jit
warm-up, best of --repeats), neural-tangents 0.6.5 in its own environment (KERNELCERT_NT_PYTHON or
.venv-nt/bin/python; timed inside that process after its warm-up, same inputs, get="ntk"), and
numpy `x @ x.T` of the same shape (the arithmetic floor). It also reports the max relative error of
our float32 Gram against our float64 one, and of ours against neural-tangents (float64, N <= 2000;
off the diagonal and on it, where neural-tangents' arccos near 1 carries ~1e-8 error).
`--compiles`: the XLA programs compiled (`kernels.CompileCounter`) when the training Gram and one
block of 200 test rows are evaluated for every distinct learner size of Finite Aggregation k = 50,
d = 4 on MNIST 60,000 (seeded_hash groups, the pipeline's default), with tiles padded to the size
grid (`tile_grid_ceil`, the default) and without padding (one program per size, as before);
stored under "compiles" in the same result file, the other entries kept.
Writes benchmarks/results/kernels.json (kernels_quick.json with --quick) atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks._common import fmt, md_table, provenance, result_path, stamp, write_result
from kernelcert.data import mnist
from kernelcert.kernels import CompileCounter, FullyConnected, tile_grid_ceil
from kernelcert.partition import fa_groups, fa_spread

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NT_SCRIPT = ROOT / "tests" / "nt_reference.py"
ARCH = dict(depth=2, W_std=1.4, b_std=0.1, activation="relu")
COMPARE_MAX_N = 2000  # neural-tangents' Gram is shipped back for an accuracy check up to this N


def nt_python() -> str | None:
    exe = os.environ.get("KERNELCERT_NT_PYTHON")
    if exe:
        return exe
    local = ROOT / ".venv-nt" / "bin" / "python"
    return str(local) if local.exists() else None


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_neural_tangents(exe: str, xs: dict[int, np.ndarray], dtype: str, repeats: int):
    """{N: (seconds, ntk or None)} from one neural-tangents process; (None, message) on failure."""
    sizes = sorted(xs)
    specs = [dict(arch="fc", **ARCH, dtype=dtype, get=["ntk"], time=True, repeats=repeats,
                  store=bool(n <= COMPARE_MAX_N and dtype == "float64")) for n in sizes]
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays = {}
        for i, n in enumerate(sizes):
            arrays[f"x1_{i}"], arrays[f"x2_{i}"] = xs[n], np.zeros(0)
        np.savez(inp, specs=json.dumps(specs), **arrays)
        proc = subprocess.run([exe, str(NT_SCRIPT), str(inp), str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        res = np.load(out)
        return {n: (float(res[f"seconds_{i}"]), res[f"ntk_{i}"] if f"ntk_{i}" in res else None)
                for i, n in enumerate(sizes)}, None


def max_rel_err(a: np.ndarray, ref: np.ndarray, part: str = "all") -> float:
    """Max relative error of `a` against `ref` over all entries, the off-diagonal ones or the diagonal."""
    rel = np.abs(a.astype(np.float64) - ref) / np.abs(ref)
    if part == "diag":
        return float(np.max(np.diag(rel)))
    if part == "offdiag":
        np.fill_diagonal(rel, 0.0)
    return float(np.max(rel))


class _Unpadded(FullyConnected):
    """The same kernel with tiles of the exact input sizes (no grid): one program per shape."""

    _pad_tiles = False


def fa_compiles(k: int = 50, d: int = 4, test_rows: int = 200) -> dict:
    """XLA programs compiled for the Grams and test-row blocks of every distinct FA learner size."""
    x, _, xt, _ = mnist(scale=True, seed=0)
    x, xt = x.reshape(len(x), -1), xt[:test_rows].reshape(test_rows, -1)
    spread = fa_spread(fa_groups(x, k, d, rule="seeded_hash"), k, d)
    sizes = sorted({len(spread.learner_indices(l)) for l in range(k * d)})
    out = {"k": k, "d": d, "learners": k * d, "distinct_sizes": len(sizes), "size_range": [sizes[0], sizes[-1]],
           "grid_sizes": len({tile_grid_ceil(n) for n in sizes}), "test_rows": test_rows}
    for label, kernel in (("padded_to_grid", FullyConnected(**ARCH)), ("unpadded", _Unpadded(**ARCH))):
        kernel.ntk(x[:7])  # programs JAX builds once per process, outside the count
        with CompileCounter() as cc:
            for n in sizes:
                kernel.ntk(x[:n])
                kernel.ntk(xt, x[:n])
        out[label] = {"compiles": cc.count, "compile_seconds": cc.seconds}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiles", action="store_true", help="only the compile count for FA k=50, d=4 sizes")
    parser.add_argument("--quick", action="store_true", help="N in {1000, 2000}")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the N values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    parser.add_argument("--out", type=Path, help="JSON output path")
    args = parser.parse_args(argv)
    if args.compiles:
        path = result_path("kernels", args.quick)
        result = json.loads(path.read_text()) if path.exists() else {}
        result["compiles"] = fa_compiles()
        result["compiles"]["command"] = " ".join([".venv/bin/python -m benchmarks.kernels", *(argv or sys.argv[1:])])
        print(json.dumps(result["compiles"], indent=1))
        print(f"wrote {write_result('kernels', result, args.quick)}")
        return result
    sizes = args.sizes or ([1000, 2000] if args.quick else [1000, 2000, 5000, 10000])
    d = 784
    rng = np.random.default_rng(0)
    xs = {n: rng.uniform(size=(n, d)) for n in sizes}
    kernel = FullyConnected(**ARCH)
    exe = None if args.no_nt else nt_python()

    rows = []
    for dtype in ("float32", "float64"):
        nt_res, nt_err = (run_neural_tangents(exe, xs, dtype, args.repeats) if exe else (None, "not configured"))
        for n in sizes:
            x = xs[n]
            ours = kernel.ntk(x, dtype=dtype)  # jit warm-up for this shape (and the result for the accuracy check)
            ours_s = best_time(lambda: kernel.ntk(x, dtype=dtype), args.repeats)
            xd = x.astype(dtype)
            matmul_s = best_time(lambda: xd @ xd.T, args.repeats)
            row = dict(n=n, d=d, dtype=dtype, ours_s=ours_s, matmul_s=matmul_s, ours_over_matmul=ours_s / matmul_s,
                       nt_s=None, ours_over_nt=None, nt_rel_err_offdiag=None, nt_rel_err_diag=None,
                       f32_max_rel_err=None)
            if nt_res is not None:
                nt_s, nt_ntk = nt_res[n]
                row.update(nt_s=nt_s, ours_over_nt=ours_s / nt_s)
                if nt_ntk is not None:
                    row["nt_rel_err_offdiag"] = max_rel_err(ours, nt_ntk, "offdiag")
                    row["nt_rel_err_diag"] = max_rel_err(ours, nt_ntk, "diag")
            if dtype == "float64":
                f32 = next(r for r in rows if r["n"] == n and r["dtype"] == "float32")
                f32["f32_max_rel_err"] = max_rel_err(kernel.ntk(x, dtype="float32"), ours)
            rows.append(row)
            del ours
        if nt_err:
            print(f"neural-tangents ({dtype}): {nt_err}", file=sys.stderr)

    result = dict(
        benchmark="kernels", arch=dict(kernel="FullyConnected", **ARCH), d=d, repeats=args.repeats,
        device=str(jax.devices()[0]), neural_tangents=None if exe is None else dict(python=exe), rows=rows)
    stamp(result, "kernels", args.quick, argv)
    print_table(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.out)
        out_path = args.out
    else:
        out_path = write_result("kernels", result, args.quick)
    print(f"wrote {out_path}")
    return result


def print_table(rows):
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    head = f"{'N':>6} {'dtype':>8} {'ours s':>9} {'nt s':>9} {'x@x.T s':>9} {'ours/mm':>8} {'ours/nt':>8} " \
           f"{'f32 relerr':>11} {'nt err off':>11} {'nt err diag':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['n']:>6} {r['dtype']:>8} {r['ours_s']:>9.3f} {fmt(r['nt_s'], '9.3f'):>9} {r['matmul_s']:>9.3f} "
              f"{r['ours_over_matmul']:>8.2f} {fmt(r['ours_over_nt'], '8.2f'):>8} "
              f"{fmt(r['f32_max_rel_err'], '11.2e'):>11} {fmt(r['nt_rel_err_offdiag'], '11.2e'):>11} "
              f"{fmt(r['nt_rel_err_diag'], '11.2e'):>11}")


if __name__ == "__main__":
    main()


def markdown(result: dict) -> str:
    """Section of docs/results.md: kernel time against neural-tangents and the x @ x.T floor."""
    rows = result["rows"]
    a = result["arch"]
    out = ["## NTK kernels: speed and agreement with neural-tangents", "",
           f"Gram matrix `K(X, X)` of the {a['kernel']} NTK (depth {a['depth']}, {a['activation']}, "
           f"W_std {a['W_std']:.3g}, b_std {a['b_std']:.3g}) on N random points of dimension {result['d']}; "
           f"best of {result['repeats']} runs. `ours/mm` is our time over one `x @ x.T` of the same dtype "
           "(the matmul floor); `ours/nt` is our time over neural-tangents 0.6.5's `kernel_fn` "
           "(jax 0.5.3, separate environment); errors are max relative deviations.", "",
           provenance(result), "",
           md_table(["N", "dtype", "ours s", "neural-tangents s", "x@x.T s", "ours/mm", "ours/nt",
                     "float32 rel. err", "nt rel. err (off-diag)", "nt rel. err (diag)"],
                    [[r["n"], r["dtype"], r["ours_s"], r["nt_s"], r["matmul_s"], r["ours_over_matmul"],
                      r["ours_over_nt"], r["f32_max_rel_err"], r["nt_rel_err_offdiag"], r["nt_rel_err_diag"]]
                     for r in rows])]
    vs_nt = [r["ours_over_nt"] for r in rows if r["ours_over_nt"] is not None]
    errs = [e for r in rows for e in (r["nt_rel_err_offdiag"], r["nt_rel_err_diag"]) if e is not None]
    big = max(rows, key=lambda r: (r["n"], r["dtype"] == "float64"))
    out += ["", f"At N = {big['n']} ({big['dtype']}) a Gram matrix takes {fmt(big['ours_s'])} s, "
            f"{fmt(big['ours_over_matmul'])}x the matmul floor."]
    if vs_nt:
        out[-1] += (f" Against neural-tangents our time ratio ranges from {fmt(min(vs_nt))} to {fmt(max(vs_nt))} "
                    f"(below 1 = faster).")
    if errs:
        out[-1] += f" The largest relative deviation from neural-tangents' kernel is {max(errs):.1e}."
    c = result.get("compiles")
    if c:
        out += ["", f"Programs compiled for Finite Aggregation k = {c['k']}, d = {c['d']} on MNIST ({c['learners']} "
                f"learners, {c['distinct_sizes']} distinct sizes {c['size_range'][0]}..{c['size_range'][1]}; a Gram "
                f"and a block of {c['test_rows']} test rows each): {c['padded_to_grid']['compiles']} with tiles padded "
                f"to the size grid ({c['grid_sizes']} grid sizes, {fmt(c['padded_to_grid']['compile_seconds'])} s "
                f"compiling) against {c['unpadded']['compiles']} without padding "
                f"({fmt(c['unpadded']['compile_seconds'])} s); `{c['command']}`."]
    return "\n".join(out) + "\n"
