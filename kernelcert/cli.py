"""`kernelcert` command line: `kernelcert demo` runs the MNIST certification demo."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def demo(n_train: int = 2000, n_test: int = 500, partitions=(1, 10, 50), seed: int = 0) -> dict:
    """NTK Grams on real MNIST, both learners, per-partition ScaLabelCert, DPA vs EnsembleCert.

    Prints test accuracy, timings and a table of median certified robustness (radius convention).
    """
    from . import data
    from .certificates import certify
    from .ensemble import dpa, ensemblecert
    from .kernels import FullyConnected
    from .learners import KernelRegression, KernelSVM
    from .metrics import median_certified_robustness
    from .partition import ss_dpa_partition

    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te = data.mnist(n_train=n_train, n_test=n_test, seed=seed)
    kernel = FullyConnected(depth=2, W_std=np.sqrt(2.0), b_std=0.1)
    print(f"MNIST subset: {len(y_tr)} train / {len(y_te)} test; kernel {kernel!r}  (load {time.perf_counter() - t0:.1f}s)")
    t1 = time.perf_counter()
    K_train = kernel.ntk(x_tr)
    K_test = kernel.ntk(x_te, x_tr)
    print(f"NTK Gram {K_train.shape} + test block {K_test.shape}: {time.perf_counter() - t1:.2f}s")
    learners = {"regression(ridge=1e-3)": lambda: KernelRegression(ridge=1e-3), "svm(C=C_max)": lambda: KernelSVM()}
    rows, results = [], {}
    for name, make in learners.items():
        for n_p in partitions:
            t2 = time.perf_counter()
            assign = np.zeros(len(y_tr), np.int64) if n_p == 1 else ss_dpa_partition(x_tr, n_p)
            votes = np.empty((len(y_te), n_p), np.int64)
            lower = np.empty((len(y_te), n_p, 10))
            upper = np.empty((len(y_te), n_p, 10))
            radius_single = None
            for i in range(n_p):
                idx = np.flatnonzero(assign == i)
                model = make().fit(K_train[np.ix_(idx, idx)], y_tr[idx], 10)
                cert = certify(model.label_weights(K_test[:, idx]), y_tr[idx], 10)
                votes[:, i], lower[:, i], upper[:, i] = cert.prediction, cert.cost_lower, cert.cost_upper
                radius_single = cert.radius
            ens_lo = ensemblecert(votes, lower, 10)
            ens_hi = ensemblecert(votes, upper, 10)
            black = dpa(votes, 10)
            correct = black.prediction == y_te
            acc = float(np.mean(correct))
            mcr = {"DPA": median_certified_robustness(black.radius, correct),
                   "EnsembleCert": median_certified_robustness(ens_lo.radius, correct),
                   "EnsembleCert(upper)": median_certified_robustness(ens_hi.radius, correct)}
            if n_p == 1:
                mcr["single model"] = median_certified_robustness(radius_single, correct)
            dt = time.perf_counter() - t2
            results[(name, n_p)] = dict(accuracy=acc, mcr=mcr, seconds=dt,
                                        exact_fraction=float(np.mean(ens_lo.radius == ens_hi.radius)))
            rows.append((name, n_p, acc, mcr["DPA"], mcr["EnsembleCert"], mcr["EnsembleCert(upper)"],
                         results[(name, n_p)]["exact_fraction"], dt))
    print()
    print(f"{'learner':<24}{'N_p':>5}{'acc':>8}{'MCR DPA':>10}{'MCR EnsCert':>13}{'(upper)':>9}{'exact':>8}{'sec':>8}")
    for r in rows:
        fmt = lambda m: "n/a" if m is None else str(m)  # noqa: E731
        print(f"{r[0]:<24}{r[1]:>5}{r[2]:>8.3f}{fmt(r[3]):>10}{fmt(r[4]):>13}{fmt(r[5]):>9}{r[6]:>8.2f}{r[7]:>8.1f}")
    print("\nMCR = largest budget (label flips) at which >= 50% of test points are correct and certified "
          "(radius convention; the DPA/FA/ROE scripts print this plus one).")
    print(f"total {time.perf_counter() - t0:.1f}s")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kernelcert", description="Label-flip certificates for infinite-width "
                                     "networks (NTK) and partition-aggregation ensembles.")
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="certify NTK kernel regression and SVM ensembles on real MNIST")
    d.add_argument("--n-train", type=int, default=2000)
    d.add_argument("--n-test", type=int, default=500)
    d.add_argument("--partitions", type=int, nargs="+", default=[1, 10, 50])
    d.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        try:
            demo(args.n_train, args.n_test, tuple(args.partitions), args.seed)
        except (FileNotFoundError, ValueError) as exc:
            print(f"kernelcert: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
