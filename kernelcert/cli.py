"""`kernelcert` command line.

    kernelcert run CONFIG.toml [--scheduler ADDR] [--workers N] [--out DIR] [--backend B] [--device D]
    kernelcert demo [--out DIR] [--workers N] [--n-train N] [--n-test N] [--partitions 1 10 50]
    kernelcert aggregate SCORES [--labels LABELS] --method dpa dpa_roe fa fa_roe dpa_star_roe [...]
    kernelcert --version

`run` executes (or resumes) the certification run of a TOML config (see `kernelcert.pipeline`
and configs/*.toml) and prints the results table; `demo` runs the built-in MNIST demo config
(`demo_config_text()`, the package data file kernelcert/configs/demo.toml); `aggregate` certifies
a trained ensemble from its saved base-model outputs (`kernelcert.aggregate`).

Exit status (`kernelcert.endings.ExitStatus`; every early stop prints one line saying what
happened, how many work units are saved, and that rerunning the same command resumes):
0 finished; 1 unexpected error (traceback); 2 bad config, a bad input file, bad arguments, missing
data or a missing command; 3 the run directory is in use by another client; 4 a Dask worker's
environment differs from this client's; 5 disk full; 6 permission denied; 7 out of memory (this
process, or a worker killed for memory); 8 the Dask cluster was lost; 130 interrupted (Ctrl-C,
SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from importlib import resources

from ._version import __version__
from .aggregate import add_aggregate_parser, run_aggregate
from .endings import ExitStatus, RunInterrupted, RunStopped
from .pipeline import RunConfig, config_from_dict, load_config, run, with_overrides
from .pipeline.config import parse_toml
from .pipeline.report import results_table
from .provenance import EnvironmentMismatch
from .runlock import RunLocked


def demo_config_text() -> str:
    """The TOML text of the built-in demo config (package data kernelcert/configs/demo.toml)."""
    return resources.files("kernelcert").joinpath("configs", "demo.toml").read_text(encoding="utf-8")


def _setup_logging(quiet: bool) -> None:
    log = logging.getLogger("kernelcert")
    if not any(getattr(h, "_kernelcert_cli", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("kernelcert: %(message)s"))
        setattr(h, "_kernelcert_cli", True)  # marks our handler, so repeated main() calls add it once
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("-q", "--quiet", action="store_true", help="only print the results table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelcert",
        description="Label-flip certificates for infinite-width networks (NTK kernel regression / small-C kernel "
                    "SVM) and partition-aggregation ensembles (DPA, EnsembleCert, run-off election, finite "
                    "aggregation).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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


def _demo_config(args: argparse.Namespace) -> RunConfig:
    """The demo config with the command-line sizes, validated like any config."""
    doc = parse_toml(demo_config_text())
    if args.n_train is not None:
        doc["data"]["n_train"] = args.n_train
    if args.n_test is not None:
        doc["data"]["n_test"] = args.n_test
    if args.partitions:
        nps = sorted(set(args.partitions))
        doc["partition"]["num_partitions"] = nps
        if any(n > 1 for n in nps):
            doc["fa"]["k"] = [n for n in nps if n > 1]
        else:
            doc.pop("fa")  # no ensemble to spread
    return config_from_dict(doc, name="demo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("kernelcert: error: a command is required (run, demo, aggregate); see kernelcert --help",
              file=sys.stderr)
        return 2
    if args.command == "aggregate":
        return run_aggregate(args)
    _setup_logging(args.quiet)
    t0 = time.perf_counter()
    try:
        cfg = load_config(args.config) if args.command == "run" else _demo_config(args)
        cfg = with_overrides(cfg, out_dir=args.out, backend=args.backend, workers=args.workers,
                             scheduler=args.scheduler, progress=False if args.no_progress else None,
                             plots=False if args.no_plots else None, device=args.device)
        result = run(cfg)
    except (RunStopped, RunInterrupted) as exc:
        print(f"kernelcert: {exc}", file=sys.stderr)
        return int(exc.ending.status)
    except KeyboardInterrupt:  # before the run started: nothing computed
        print("kernelcert: interrupted before any work unit was computed", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except RunLocked as exc:
        print(f"kernelcert: error: {exc}", file=sys.stderr)
        return int(ExitStatus.LOCKED)
    except EnvironmentMismatch as exc:
        print(f"kernelcert: error: {exc}", file=sys.stderr)
        return int(ExitStatus.ENVIRONMENT)
    except (FileNotFoundError, ValueError) as exc:
        print(f"kernelcert: error: {exc}", file=sys.stderr)
        return int(ExitStatus.CONFIG)
    print(results_table(result.summary))
    print()
    print(f"run directory: {result.run_dir}  ({result.computed_units} work units computed, "
          f"{result.skipped_units} reused; {time.perf_counter() - t0:.1f} s)")
    outputs = [result.points_path, result.summary_path, result.report_path, *result.plots]
    print("  " + ", ".join(p.name for p in outputs if p is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
