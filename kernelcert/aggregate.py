"""`kernelcert aggregate`: certify a trained ensemble from its saved base-model outputs.

    kernelcert aggregate SCORES [--labels LABELS] --method dpa dpa_roe fa fa_roe dpa_star_roe
                         [--num-classes K] [--k K] [--d D] [--shifts S ...] [--fa-seed SEED]
                         [--models-per-partition V] [--budgets 0 1 2 ...] [--out DIR] [--device D]

Reads scores (t, M, K), DPA* scores (t, N_p, V, K) or votes (t, M) (`kernelcert.scores`), runs the
black-box aggregation certificates (docs/math.md §4-§5) through the run's method registry
(`kernelcert.pipeline.methods.REGISTRY`: dpa, dpa_roe, fa, fa_roe; DPA*+ROE, which needs several
models per partition, is `kernelcert.roe.dpa_star_roe`) and writes what a run writes for its
aggregation: `points.csv` (per test point: label, then prediction, radius and exactness per
method), the same as a tidy long table (`points_long.parquet` when pyarrow is installed, else
`points_long.csv`; read it with `kernelcert.read_points_long`), `summary.json` (clean and
certified accuracy at the budgets, MCR in both conventions, the certified-accuracy curve) and
plots. FA's k*d learners are the M models in learner order; the
shifts default to the published FA code's draw (`random.seed(999999999 + 208);
random.sample(range(k*d), d)`).

Everything is read, checked and computed before anything is written; the files are then written
into a staging directory and moved in, so an error never leaves a half-written output directory.
Radii are capped at the number of groups a poison can touch (M for DPA-type methods, k*d for FA):
an attacker controlling every group can always change the prediction, so the cap is sound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from ._jax import device_scope
from .arrayfiles import ArrayFileError
from .evidence import Evidence
from .partition import FA_DEFAULT_SEED, fa_spread
from .pipeline.aggregate import MethodResult
from .pipeline.config import DEFAULT_BUDGETS
from .pipeline.methods import METHODS, REGISTRY
from .pipeline.report import results_table, write_plots
from .pipeline.store import atomic_write_text
from .pipeline.summary import (MCR_CONVENTIONS, method_summary, remove_stale_points_long, write_points,
                               write_points_long)
from .voting import row_blocks
from .roe import DPA_STAR_SUMMATION, dpa_star_roe
from .scores import EnsembleOutputs, read_ensemble_outputs

__all__ = ["AGGREGATE_METHODS", "AggregateOutput", "certify_ensemble", "fa_shifts", "write_outputs",
           "add_aggregate_parser", "run_aggregate"]

# method -> what it reads: "votes" (any input), "scores" ((t, M, K)), "star" ((t, N_p, V, K)). The black-box
# methods of the registry (those reading only votes / scores) plus DPA*+ROE.
AGGREGATE_METHODS = {**{m: "scores" if "scores" in REGISTRY[m].needs else "votes" for m in METHODS
                        if set(REGISTRY[m].needs) <= {"votes", "scores"}}, "dpa_star_roe": "star"}
_BLOCK_BYTES = 128 * 2**20  # scores of one block of test points handed to the certificate functions


@dataclass(frozen=True)
class AggregateOutput:
    """Results of `certify_ensemble`: one MethodResult per method (prediction, radius per test point),
    the summary dict written to summary.json, and the FA shifts used (None without FA)."""

    results: tuple[MethodResult, ...] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    shifts: np.ndarray | None = None
    seconds: float = 0.0


def fa_shifts(num_learners: int, *, k: int | None = None, d: int | None = None,
              shifts: npt.ArrayLike | None = None, seed: int = FA_DEFAULT_SEED) -> tuple[int, int, np.ndarray]:
    """(k, d, shifts) for FA over `num_learners` = k*d learners: explicit `shifts` (d distinct values in
    0..k*d-1), else the published draw with `seed` (as `kernelcert.partition.fa_spread`)."""
    if shifts is not None:
        sh = np.asarray(shifts)
        if sh.ndim != 1 or sh.size == 0 or sh.dtype.kind not in "iu":
            raise ValueError(f"--shifts must be a non-empty list of integers, got {shifts!r}")
        if d is not None and d != len(sh):
            raise ValueError(f"--d {d} but {len(sh)} shifts were given")
        d = len(sh)
    if d is None and k is None:
        raise ValueError("FA needs --d (learners per group) or --k (groups per shift); k*d must equal the number of "
                         f"models ({num_learners})")
    if d is None:
        d = num_learners // k if k and num_learners % k == 0 else None
    elif k is None:
        k = num_learners // d if d and num_learners % d == 0 else None
    if k is None or d is None or k < 1 or d < 1 or k * d != num_learners:
        raise ValueError(f"FA: k*d must equal the number of models ({num_learners}), got k={k}, d={d}")
    if shifts is None:
        # the spread of the k*d singleton groups gives exactly the published shifts for `seed`
        sh = fa_spread(np.arange(k * d), k, d, seed=seed).shifts
    elif sh.min() < 0 or sh.max() >= k * d or len(np.unique(sh)) != len(sh):
        raise ValueError(f"--shifts must be {d} distinct integers in 0..{k * d - 1}, got {sh.tolist()}")
    return int(k), int(d), np.asarray(sh, np.int64)


def _run_method(method: str, ens: EnsembleOutputs, shifts: np.ndarray | None,
                star_summation: str) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, radius) over all test points, computed in blocks of test points: the registry's
    certificate function on the block's `Evidence` (votes, and scores when the method reads them)."""
    t, K = ens.num_test, ens.num_classes
    pred, rad = np.empty(t, np.int64), np.empty(t, np.int64)
    all_scores = ens.scores if AGGREGATE_METHODS[method] != "votes" else None  # checked by _check_methods
    row_bytes = 8 * (int(np.prod(all_scores.shape[1:])) if all_scores is not None else ens.num_models * K)
    for sl in row_blocks(t, row_bytes, block_size=max(1, _BLOCK_BYTES // max(1, row_bytes))):
        if method == "dpa_star_roe" and all_scores is not None:
            # scores as stored: the float32 published summation sees the original values
            star = dpa_star_roe(np.asarray(all_scores[sl]), summation=star_summation)
            pred[sl], rad[sl] = star.prediction, star.radius
        else:
            scores = None if all_scores is None else np.asarray(all_scores[sl], np.float64)
            res = REGISTRY[method].certify(Evidence(votes=ens.votes[sl], scores=scores), K, shifts)
            pred[sl], rad[sl] = res.prediction, res.radius
    return pred, rad


def _is_fa(method: str) -> bool:
    return method in REGISTRY and REGISTRY[method].target == "fa"


def _check_methods(methods: Sequence[str], ens: EnsembleOutputs) -> tuple[str, ...]:
    out = []
    for m in methods:
        if m not in AGGREGATE_METHODS:
            raise ValueError(f"unknown method {m!r}; known: {', '.join(AGGREGATE_METHODS)}")
        need = AGGREGATE_METHODS[m]
        if need == "scores" and (ens.scores is None or ens.per_partition):
            got = "votes only" if ens.scores is None else f"DPA* scores of shape {ens.scores.shape}"
            raise ArrayFileError(f"{ens.source}: method {m} needs scores of shape (t, M, K); the file holds {got}")
        if need == "star" and not ens.per_partition:
            raise ArrayFileError(f"{ens.source}: method dpa_star_roe needs several models per partition: scores "
                                 "(t, N_p, V, K), or (t, N_p*V, K) with --models-per-partition V")
        if _is_fa(m) and ens.scores is not None and ens.per_partition:
            raise ArrayFileError(f"{ens.source}: method {m} needs one output per FA learner, not DPA* scores "
                                 f"of shape {ens.scores.shape}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("no method given (--method dpa dpa_roe fa fa_roe dpa_star_roe)")
    return tuple(out)


def certify_ensemble(ens: EnsembleOutputs, methods: Sequence[str], *, k: int | None = None, d: int | None = None,
                     shifts: npt.ArrayLike | None = None, fa_seed: int = FA_DEFAULT_SEED,
                     budgets: Sequence[int] = DEFAULT_BUDGETS, name: str = "ensemble",
                     star_summation: str = "float64") -> AggregateOutput:
    """Certificates of every method in `methods` for the saved ensemble `ens`; nothing is written.

    Radii are exactly those of `kernelcert.ensemble.dpa`, `kernelcert.roe.dpa_roe / fa / fa_roe /
    dpa_star_roe` on the whole arrays (computed in blocks of test points, which is the same
    per-point computation), capped at the number of groups (see the module docstring).
    `star_summation`: how DPA*+ROE sums each partition's V scores ("float64", or "float32", the
    published pipeline's sequential float32 rule, to reproduce its tables; `kernelcert.roe.dpa_star_roe`).
    """
    if star_summation not in DPA_STAR_SUMMATION:
        raise ValueError(f"--dpa-star-summation must be one of {', '.join(DPA_STAR_SUMMATION)}, got {star_summation!r}")
    t0 = time.perf_counter()
    methods = _check_methods(methods, ens)
    M = ens.num_models
    sh = None
    if any(_is_fa(m) for m in methods):
        k, d, sh = fa_shifts(M, k=k, d=d, shifts=shifts, seed=fa_seed)
    results = []
    for m in methods:
        pred, rad = _run_method(m, ens, sh, star_summation)
        groups = M  # DPA: one poison per partition; FA: one poison per group, k*d = M groups
        results.append(MethodResult(name, int(k) if _is_fa(m) and k is not None else M, m, pred,
                                    np.minimum(rad, groups),
                                    np.zeros(len(pred), bool)))
    summary = {
        "name": name, "source": ens.source,
        "data": {"n_test": ens.num_test, "num_classes": ens.num_classes, "num_models": M,
                 "scores_shape": None if ens.scores is None else list(ens.scores.shape)},
        "fa": None if sh is None else {"k": k, "d": d, "shifts": sh.tolist(),
                                       "seed": None if shifts is not None else fa_seed},
        "methods": list(methods), "budgets": [int(b) for b in budgets],
        "mcr_conventions": MCR_CONVENTIONS,
        "base_model_accuracy": float(np.mean(ens.votes == ens.labels[:, None])),
        "results": [method_summary(r, ens.labels, budgets) for r in results],
    }
    seconds = time.perf_counter() - t0
    summary["seconds"] = seconds
    return AggregateOutput(tuple(results), summary, sh, seconds)


def write_outputs(out: AggregateOutput, labels: np.ndarray, out_dir: str | os.PathLike[str], *,
                  plots: bool = True) -> list[Path]:
    """points.csv, the long per-point table (`_write_long_table`), summary.json and (if `plots`) PNG
    plots into `out_dir`; returns their paths.

    All files are first written into a staging directory next to `out_dir` and only then moved in
    (one `os.replace` each), so a failure while writing leaves `out_dir` as it was.
    """
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write_points(stage / "points.csv", labels, list(out.results))
        long_name = _write_long_table(stage, labels, out)
        atomic_write_text(stage / "summary.json", json.dumps(out.summary, indent=1))
        pngs = write_plots(out.summary, stage) if plots else []
        target.mkdir(exist_ok=True)
        names = ["points.csv", long_name, "summary.json"] + [Path(p).name for p in pngs]
        for n in names:
            os.replace(stage / n, target / n)
        remove_stale_points_long(target, long_name)
        return [target / n for n in names]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_long_table(directory: Path, labels: np.ndarray, out: AggregateOutput) -> str:
    """The tidy per-point table of `out` into `directory`, as a run writes it
    (`kernelcert.pipeline.summary.write_points_long`: points_long.parquet with pyarrow, else
    points_long.csv; num_partitions is M for DPA-type methods and k for FA); returns its file name."""
    return write_points_long(directory, labels, list(out.results)).name


# --------------------------------------------------------------------------- command line
def add_aggregate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the `aggregate` subcommand on an argparse subparsers object; returns its parser."""
    a = sub.add_parser(
        "aggregate", help="certify a trained ensemble from saved base-model scores or votes",
        description="Certify a trained partition ensemble (DPA, DPA+ROE, FA, FA+ROE, DPA*+ROE) from its saved "
                    "base-model outputs: scores (t, M, K) or votes (t, M) in .npy/.npz, or the published "
                    "repositories' .pth evaluation files (needs torch). Writes points.csv, the long per-point "
                    "table (points_long.parquet with pyarrow, else points_long.csv), summary.json and plots to "
                    "--out. Exit status 2 on a bad file.")
    a.add_argument("scores", metavar="SCORES", help=".npy / .npz (key scores or votes, optionally labels) / .pth")
    a.add_argument("--labels", metavar="LABELS", help="labels file (.npy, .npz key labels, .pth); default: the "
                   "'labels' array of SCORES")
    a.add_argument("--key", help="array key inside SCORES (.npz/.pth); default scores, logits, votes or predictions")
    a.add_argument("--labels-key", help="array key inside LABELS (default labels, y_test or targets)")
    a.add_argument("--method", nargs="+", required=True, choices=tuple(AGGREGATE_METHODS), metavar="METHOD",
                   help=f"certificates to compute: {', '.join(AGGREGATE_METHODS)}")
    a.add_argument("--num-classes", type=int, metavar="K", help="number of classes (required for votes; checked "
                   "against the scores' last axis otherwise)")
    a.add_argument("--k", type=int, help="FA: number of groups per shift (k*d = number of models)")
    a.add_argument("--d", type=int, help="FA: learners each group is spread to (k*d = number of models)")
    a.add_argument("--shifts", type=int, nargs="+", metavar="S", help="FA: the d shifts (default: the published "
                   "FA draw with --fa-seed)")
    a.add_argument("--fa-seed", type=int, default=FA_DEFAULT_SEED, help="FA: random.seed of the shift draw "
                   f"(default {FA_DEFAULT_SEED}, the published code's)")
    a.add_argument("--models-per-partition", type=int, metavar="V", help="DPA*: consecutive groups of V models "
                   "belong to one partition (scores (t, N_p*V, K))")
    a.add_argument("--dpa-star-summation", choices=DPA_STAR_SUMMATION, default="float64",
                   help="DPA*+ROE: sum each partition's scores in float64 (default) or by the published pipeline's "
                        "sequential float32 rule (reproduces its tables)")
    a.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS), metavar="R",
                   help="budgets for the certified-accuracy table")
    a.add_argument("--out", metavar="DIR", default="aggregate", help="output directory (default ./aggregate)")
    a.add_argument("--name", default="ensemble", help="label of this ensemble in the tables and plots")
    a.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="JAX device for any JAX work (default auto: a GPU when JAX sees one)")
    a.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    a.add_argument("-q", "--quiet", action="store_true", help="only print the results table")
    return a


def run_aggregate(args: argparse.Namespace) -> int:
    """Execute a parsed `aggregate` command; returns the exit status (2 on a bad file or argument)."""
    try:
        if args.num_classes is not None and args.num_classes < 2:
            raise ValueError(f"--num-classes must be at least 2, got {args.num_classes}")
        if any(b < 0 for b in args.budgets):
            raise ValueError(f"--budgets must be non-negative, got {args.budgets}")
        with device_scope(args.device):
            ens = read_ensemble_outputs(args.scores, key=args.key, labels=args.labels, labels_key=args.labels_key,
                                        num_classes=args.num_classes, models_per_partition=args.models_per_partition)
            out = certify_ensemble(ens, args.method, k=args.k, d=args.d, shifts=args.shifts, fa_seed=args.fa_seed,
                                   budgets=sorted(set(args.budgets)), name=args.name,
                                   star_summation=args.dpa_star_summation)
        paths = write_outputs(out, ens.labels, args.out, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as exc:
        print(f"kernelcert: error: {exc}", file=sys.stderr)
        return 2
    print(results_table(out.summary))
    if not args.quiet:
        print()
        print(f"{ens.num_test} test points x {ens.num_models} models x {ens.num_classes} classes certified in "
              f"{out.seconds:.2f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0
