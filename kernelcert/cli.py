"""`kernelcert` command line.

    kernelcert run CONFIG.toml [--scheduler ADDR] [--workers N] [--out DIR] [--backend B] [--device D]
    kernelcert demo [--out DIR] [--workers N] [--n-train N] [--n-test N] [--partitions 1 10 50]
    kernelcert aggregate SCORES [--labels LABELS] --method dpa dpa_roe fa fa_roe dpa_star_roe [...]

`run` executes (or resumes) the certification run of a TOML config (see `kernelcert.pipeline`
and configs/*.toml) and prints the results table; `demo` runs the built-in MNIST demo config
(`DEMO_CONFIG`, identical to configs/demo.toml); `aggregate` certifies a trained ensemble from its
saved base-model scores (`kernelcert.aggregate`). Exit status 2 on a bad config, file or missing data.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .aggregate import add_aggregate_parser, run_aggregate

DEMO_CONFIG = """\
# kernelcert demo: real MNIST, NTK of a depth-4 erf network, kernel regression and small-C kernel
# SVM, N_p in {1, 10, 50} (SS-DPA partitions), every aggregation on the same ensembles, plus
# Finite Aggregation (d = 2) with k in {10, 50}.
# Sizes are chosen so that `make demo` finishes within 5 minutes on 2 CPU cores.
# (erf rather than ReLU: at C = C_max the SVM scores are per-class kernel sums, and on this
# subset the depth-4 erf NTK gives that classifier about 0.70 accuracy against 0.53 for a
# depth-2 ReLU NTK, with the same regression accuracy.)

[data]
dataset = "mnist"
n_train = 5000
n_test = 1000
seed = 0

[kernel]
architecture = "fully_connected"
depth = 4
W_std = 2.0
b_std = 0.0
activation = "erf"

[[learners]]
type = "regression"
name = "regression"
ridge = 0.001

[[learners]]
type = "svm"
name = "svm"

[partition]
rule = "ss_dpa"
num_partitions = [1, 10, 50]

[fa]
d = 2
k = [10, 50]
rule = "seeded_hash"

[output]
dir = "runs"
name = "demo"
budgets = [0, 1, 2, 5, 10, 20, 50]

[execution]
backend = "inprocess"
memory_cap_mb = 1024
"""


def _setup_logging(quiet: bool) -> None:
    log = logging.getLogger("kernelcert")
    if not any(getattr(h, "_kernelcert_cli", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("kernelcert: %(message)s"))
        h._kernelcert_cli = True
        log.addHandler(h)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def _add_exec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDR", help="run the work units on an existing Dask scheduler "
                   "(tcp://host:port)")
    p.add_argument("--workers", type=int, metavar="N", help="run on a local Dask cluster with N worker processes")
    p.add_argument("--backend", choices=("inprocess", "dask-local", "dask"), help="override [execution] backend")
    p.add_argument("--out", metavar="DIR", help="parent directory of the run directory (overrides [output] dir)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), help="where the kernels run (overrides [execution] "
                   "device; auto = a GPU when JAX sees one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("-q", "--quiet", action="store_true", help="only print the results table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelcert",
        description="Label-flip certificates for infinite-width networks (NTK kernel regression / small-C kernel "
                    "SVM) and partition-aggregation ensembles (DPA, EnsembleCert, run-off election, finite "
                    "aggregation).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run or resume the certification described by a TOML config",
                       description="Run (or resume: finished work units are reused) the certification run of "
                                   "CONFIG. Outputs go to <out>/<name>-<config hash>/: points.csv, summary.json, "
                                   "report.md and plots.")
    r.add_argument("config", metavar="CONFIG.toml")
    _add_exec_args(r)
    d = sub.add_parser("demo", help="certify NTK regression and SVM ensembles on real MNIST (about 5 minutes on "
                                    "2 cores)",
                       description="The built-in demo config (configs/demo.toml): MNIST subset, both learners, "
                                   "N_p in {1, 10, 50}, DPA vs EnsembleCert vs DPA+ROE vs white-box ROE vs FA.")
    d.add_argument("--n-train", type=int, help="training subset size (changes the config hash)")
    d.add_argument("--n-test", type=int, help="test subset size (changes the config hash)")
    d.add_argument("--partitions", type=int, nargs="+", metavar="N_P", help="numbers of partitions")
    _add_exec_args(d)
    add_aggregate_parser(sub)
    return parser


def _demo_config(args):
    import dataclasses

    from .pipeline import ConfigError, _check_sizes_static, load_config_string

    cfg = load_config_string(DEMO_CONFIG, name="demo")
    data, part, fa = cfg.data, cfg.partition, cfg.fa
    if args.n_train is not None:
        if args.n_train < 1:
            raise ConfigError(f"--n-train must be positive, got {args.n_train}")
        data = dataclasses.replace(data, n_train=args.n_train)
    if args.n_test is not None:
        if args.n_test < 1:
            raise ConfigError(f"--n-test must be positive, got {args.n_test}")
        data = dataclasses.replace(data, n_test=args.n_test)
    if args.partitions:
        nps = tuple(sorted(set(args.partitions)))
        if nps[0] < 1:
            raise ConfigError(f"--partitions must be positive, got {list(args.partitions)}")
        part = dataclasses.replace(part, num_partitions=nps)
        ks = tuple(n for n in nps if n > 1)
        fa = dataclasses.replace(fa, k=ks) if ks else None
    from . import partition

    if fa is not None and not (hasattr(partition, "fa_groups") and hasattr(partition, "fa_spread")):
        logging.getLogger("kernelcert").warning(
            "Finite Aggregation skipped: kernelcert.partition has no fa_groups / fa_spread in this installation")
        fa = None
    methods = cfg.methods
    if fa is None:
        methods = tuple(m for m in methods if m not in ("fa", "fa_roe"))
    if 1 not in part.num_partitions:
        methods = tuple(m for m in methods if m != "single")
    cfg = dataclasses.replace(cfg, data=data, partition=part, fa=fa, methods=methods)
    _check_sizes_static(cfg)
    return cfg


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "aggregate":
        return run_aggregate(args)
    _setup_logging(args.quiet)
    from . import pipeline, report

    t0 = time.perf_counter()
    try:
        if args.command == "run":
            cfg = pipeline.load_config(args.config)
        else:
            cfg = _demo_config(args)
        cfg = pipeline.with_overrides(cfg, out_dir=args.out, backend=args.backend, workers=args.workers,
                                      scheduler=args.scheduler, progress=False if args.no_progress else None,
                                      plots=False if args.no_plots else None, device=args.device)
        result = pipeline.run(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"kernelcert: error: {exc}", file=sys.stderr)
        return 2
    print(report.results_table(result.summary))
    print()
    print(f"run directory: {result.run_dir}  ({result.computed_units} work units computed, "
          f"{result.skipped_units} reused; {time.perf_counter() - t0:.1f} s)")
    print(f"  {result.points_path.name}, {result.summary_path.name}, "
          + (f"{result.report_path.name}, " if result.report_path else "")
          + ", ".join(p.name for p in result.plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
