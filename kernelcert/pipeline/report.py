"""Tables, plots and the Markdown report of a certification run (input: the run's summary dict).

MCR numbers are given in both conventions of docs/math.md §1: "radius" (the largest
budget with certified accuracy >= 50%) and "anchor" (that plus one, as the DPA/FA/ROE scripts
print it). Certified accuracy counts a test point at budget r when it is classified correctly
and its certified radius is >= r.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .methods import REGISTRY, method_label, method_style
from .store import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

Summary = dict[str, Any]
"""A run's (or `kernelcert aggregate`'s) summary dict, as written to summary.json."""


def _fmt_mcr(v: int | None) -> str:
    return "n/a" if v is None else str(int(v))


def _learners(summary: Summary) -> list[str]:
    seen: list[str] = []
    for r in summary["results"]:
        if r["learner"] not in seen:
            seen.append(r["learner"])
    return seen


def _rows(summary: Summary, learner: str | None = None) -> list[dict[str, Any]]:
    return [r for r in summary["results"] if learner is None or r["learner"] == learner]


def _method_name(r: dict[str, Any], summary: Summary) -> str:
    name = method_label(r["method"])
    if r["method"] in REGISTRY and REGISTRY[r["method"]].target == "fa" and summary.get("fa"):
        name += f" (d={summary['fa']['d']})"
    return name


def results_table(summary: Summary, budgets: Iterable[int | str] | None = None) -> str:
    """Plain-text table: one row per (learner, N_p, method) with accuracy, MCR (both conventions),
    exactness and certified accuracy at a few budgets."""
    shown = [str(b) for b in (budgets if budgets is not None else summary.get("budgets", [])[:6])]
    head = (f"{'learner':<26}{'N_p':>5}  {'method':<30}{'acc':>7}{'MCR':>6}{'MCR+1':>7}{'exact':>7}"
            + "".join(f"{'@' + b:>7}" for b in shown))
    lines = [head, "-" * len(head)]
    prev = None
    for r in summary["results"]:
        group = (r["learner"], r["num_partitions"])
        if prev is not None and group != prev:
            lines.append("")
        prev = group
        ca = r["certified_accuracy"]
        mcr = r["mcr"]
        upper = ""
        if "mcr_upper" in r and r["mcr_upper"]["radius"] != mcr["radius"]:
            upper = f" (<= {_fmt_mcr(r['mcr_upper']['radius'])})"
        if "resolved_fraction" in r:
            upper += f" (resolved {r['resolved_fraction']:.2f})"
        lines.append(f"{r['learner']:<26}{r['num_partitions']:>5}  {_method_name(r, summary):<30}"
                     f"{r['clean_accuracy']:>7.3f}{_fmt_mcr(mcr['radius']):>6}{_fmt_mcr(mcr['anchor']):>7}"
                     f"{r['exact_fraction']:>7.2f}" + "".join(f"{ca.get(b, float('nan')):>7.3f}" for b in shown)
                     + upper)
    lines.append("")
    lines.append("acc = clean accuracy of the aggregate's prediction; MCR = median certified robustness (largest "
                 "budget with >= 50% certified accuracy; n/a when accuracy < 50%); MCR+1 = the DPA/FA/ROE scripts' "
                 "convention; exact = fraction of points whose radius is proven exact; @r = certified accuracy at r "
                 "label flips; '(<= u)' = MCR from EnsembleCert's upper-bound costs; '(resolved f)' = fraction of "
                 "white-box ROE radii proven equal to the certificate at exact class costs ([exactness] refine).")
    return "\n".join(lines)


def _plot_label(method: str, summary: Summary) -> str:
    """Legend label of a method: FA methods with their k (the N_p axis/panel) and d."""
    name = method_label(method)
    if method in REGISTRY and REGISTRY[method].target == "fa" and summary.get("fa"):
        name += f" (k = N_p, d = {summary['fa']['d']})"
    return name


def curve_at_budgets(curve: dict[str, list[Any]], max_budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(budgets 0..max_budget (int64), certified accuracy at each) from a summary's compact curve
    (`{"radius": distinct radii r_1 < r_2 < ..., "certified_accuracy": accuracy at each}`, as
    `kernelcert.pipeline.summary.method_summary` writes it): the accuracy at budget b is the one at
    the smallest stored radius >= b (0 beyond the largest)."""
    rad = np.asarray(curve["radius"], np.int64)
    acc = np.asarray(curve["certified_accuracy"], float)
    budgets = np.arange(max_budget + 1, dtype=np.int64)
    if rad.size == 0:
        return budgets, np.zeros(len(budgets))
    idx = np.searchsorted(rad, budgets, side="left")
    return budgets, np.where(idx < len(rad), acc[np.minimum(idx, len(rad) - 1)], 0.0)


def _setting(summary: Summary) -> str:
    """One line naming what was certified: run name, dataset and sizes (what the summary records)."""
    d = summary.get("data", {})
    parts = [str(summary.get("name", "run"))]
    if d.get("dataset"):
        parts.append(str(d["dataset"]))
    if d.get("n_train") is not None:
        parts.append(f"n_train = {d['n_train']}")
    if d.get("n_test") is not None:
        parts.append(f"n_test = {d['n_test']}")
    if d.get("num_classes") is not None:
        parts.append(f"{d['num_classes']} classes")
    return ", ".join(parts)


def _integer_axis(ax: Axes, hi: float, locator: type[MaxNLocator]) -> None:
    """Linear budget axis from 0 to `hi` with integer ticks at 1, 2 or 5 times a power of ten
    (`locator`: matplotlib's MaxNLocator)."""
    ax.set_xlim(0, max(hi, 1))
    ax.xaxis.set_major_locator(locator(integer=True, nbins=8, steps=[1, 2, 5, 10]))


def _figure_legend(fig: Figure, axes: Iterable[Axes], summary: Summary, y: float = 0.0) -> None:
    """One legend for the whole figure, below the panels: every method drawn in any panel, in
    registry order (the single model included, though it is drawn only at N_p = 1)."""
    found: dict[str, Artist] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            found.setdefault(lab, h)
    order = [_plot_label(m, summary) for m in REGISTRY]
    handles = {lab: found[lab] for lab in sorted(found, key=lambda lab: (order.index(lab) if lab in order
                                                                         else len(order)))}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, y))


def write_plots(summary: Summary, run_dir: str | os.PathLike[str]) -> list[Path]:
    """Certified accuracy vs budget (one figure per learner, a panel per N_p, a line per method) and
    MCR vs N_p (a panel per learner). Budgets are integer label flips on a linear axis; one legend
    per figure below the panels. Returns the PNG paths (written atomically)."""
    import matplotlib  # imported here: plotting is the only user and matplotlib is slow to import

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(run_dir)
    paths: list[Path] = []
    learners = _learners(summary)
    legend_rows = -(-len({r["method"] for r in summary["results"]}) // 4)
    for learner in learners:
        rows = _rows(summary, learner)
        nps = sorted({r["num_partitions"] for r in rows})
        fig, axes = plt.subplots(1, len(nps), figsize=(4.2 * len(nps), 3.6 + 0.3 * legend_rows), squeeze=False,
                                 sharey=True)
        for ax, n_p in zip(axes[0], nps):
            panel = [r for r in rows if r["num_partitions"] == n_p]
            # budgets 0..(largest radius + 1): every curve ends at 0; value on [b, b + 1) = accuracy at b
            hi = max([max(r["curve"]["radius"], default=0) for r in panel] + [0]) + 1
            for r in panel:
                x, y = curve_at_budgets(r["curve"], hi)
                color, ls, _ = method_style(r["method"])
                ax.plot(np.append(x, hi + 1), np.append(y, y[-1]), drawstyle="steps-post", color=color,
                        linestyle=ls, linewidth=1.6, alpha=0.85, label=_plot_label(r["method"], summary))
            _integer_axis(ax, hi + 1, MaxNLocator)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{learner}, N_p = {n_p}")
            ax.set_xlabel("budget r (label flips)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("certified accuracy")
        fig.suptitle(f"Certified accuracy vs label-flip budget, learner {learner} ({_setting(summary)})", fontsize=10)
        _figure_legend(fig, axes[0], summary)
        fig.tight_layout(rect=(0, 0.01 + 0.055 * legend_rows, 1, 1))
        paths.append(_save(fig, out_dir / f"certified_accuracy_{_safe(learner)}.png"))
        plt.close(fig)
    fig, axes = plt.subplots(1, len(learners), figsize=(max(4.5 * len(learners) + 0.5, 8.5), 3.8 + 0.3 * legend_rows),
                             squeeze=False)
    for ax, learner in zip(axes[0], learners):
        rows = _rows(summary, learner)
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["num_partitions"], r["mcr"]["radius"]) for r in rows if r["method"] == method)
            xs = [p[0] for p in pts]
            ys = [np.nan if p[1] is None else p[1] for p in pts]
            color, ls, marker = method_style(method)
            ax.plot(xs, ys, color=color, linestyle=ls, marker=marker, alpha=0.85,
                    label=_plot_label(method, summary))
        nps = sorted({r["num_partitions"] for r in rows})
        ax.set_xscale("log")
        ax.set_xticks(nps)
        ax.set_xticklabels([str(n) for n in nps])
        ax.minorticks_off()
        top = max([r["mcr"]["radius"] for r in rows if r["mcr"]["radius"] is not None] + [1])
        ax.set_ylim(-0.05 * top - 0.1, 1.05 * top + 0.1)  # never an empty or sub-integer range
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_title(learner)
        ax.set_xlabel("N_p (number of partitions; k for FA)")
        ax.set_ylabel("MCR (label flips)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Median certified robustness vs N_p ({_setting(summary)})", fontsize=10)
    _figure_legend(fig, axes[0], summary, y=0.035)
    fig.text(0.5, 0.005, "MCR in the radius convention: the largest r with certified accuracy >= 50% "
             "(the DPA/FA/ROE scripts print MCR + 1); missing points: accuracy < 50%.",
             ha="center", va="bottom", fontsize=7, style="italic")
    fig.tight_layout(rect=(0, 0.05 + 0.055 * legend_rows, 1, 1))
    paths.append(_save(fig, out_dir / "mcr_vs_partitions.png"))
    plt.close(fig)
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # nothing outside the panels is cut off
    atomic_write_bytes(path, buf.getvalue())
    return path


def markdown_report(summary: Summary, plots: Sequence[str | os.PathLike[str]] = (),
                    run_dir: str | os.PathLike[str] | None = None) -> str:
    """Short Markdown report: setup, a results table per learner, C_max, timings, memory, plots."""
    d = summary["data"]
    k = summary["kernel"]
    lines = [f"# kernelcert run `{summary.get('name', 'run')}`", "",
             f"Config hash `{summary['config_hash'][:12]}`. Dataset **{d['dataset']}**: {d['n_train']} training / "
             f"{d['n_test']} test points, {d['num_classes']} classes. Kernel: {k['architecture']} depth {k['depth']} "
             f"({k['activation']}, W_std={k['W_std']:g}, b_std={k['b_std']:g}, {k['kind'].upper()}). "
             f"Partition rule `{summary['partition']['rule']}`, N_p in {summary['partition']['num_partitions']}.", ""]
    if summary.get("fa"):
        fa = summary["fa"]
        lines += [f"Finite Aggregation: k = {fa['k']}, d = {fa['d']} ({fa['rule']} groups), i.e. k*d learners.", ""]
    lines += ["MCR = median certified robustness: the largest number of label flips r with certified accuracy "
              ">= 50% (radius convention, docs/math.md §1); MCR+1 is the number the DPA/FA/ROE scripts "
              "print. \"exact\" = fraction of test points whose radius is proven exact "
              "(ScaLabelCert always; EnsembleCert where lower and upper cost bounds give the same radius); "
              "all other radii are sound lower bounds.", ""]
    budgets = [str(b) for b in summary.get("budgets", [])]
    for learner in _learners(summary):
        lines += [f"## {learner}", "",
                  "| N_p | method | accuracy | MCR | MCR+1 | exact | " + " | ".join(f"@{b}" for b in budgets) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(budgets)]
        for r in _rows(summary, learner):
            ca = r["certified_accuracy"]
            mcr = _fmt_mcr(r["mcr"]["radius"])
            if "mcr_upper" in r and r["mcr_upper"]["radius"] != r["mcr"]["radius"]:
                mcr += f" (upper {_fmt_mcr(r['mcr_upper']['radius'])})"
            lines.append(f"| {r['num_partitions']} | {_method_name(r, summary)} | {r['clean_accuracy']:.3f} | {mcr} | "
                         f"{_fmt_mcr(r['mcr']['anchor'])} | {r['exact_fraction']:.2f} | "
                         + " | ".join(f"{ca[b]:.3f}" for b in budgets) + " |")
        lines.append("")
        base = summary.get("base_model_accuracy", {}).get(learner)
        if base:
            lines.append("Base-model accuracy (mean over partitions): "
                         + ", ".join(f"N_p={n}: {v['mean']:.3f}" for n, v in base.items()) + ".")
            lines.append("")
    if summary.get("c_max"):
        lines += ["## SVM C_max per partition", "",
                  "C_max = 1 / max_i sum_j |K_ij| of each partition's Gram; C <= C_max makes the SVM linear in the "
                  "labels (docs/math.md §2).", "", "| learner | N_p | min | median | max | C used |",
                  "|---|---|---|---|---|---|"]
        for learner, per in summary["c_max"].items():
            for n_p, v in per.items():
                lines.append(f"| {learner} | {n_p} | {v['min']:.4g} | {v['median']:.4g} | {v['max']:.4g} | "
                             f"{v['C_used']} |")
        lines.append("")
    t = summary["timings"]
    u = summary["units"]
    mem = summary["memory"]
    lines += ["## Run", "",
              f"Backend: {summary['execution'].get('name')} ({summary['execution'].get('workers')} worker(s)). "
              f"Work units: {u['total']} ({u['computed']} computed, {u['skipped']} reused from an earlier run).", "",
              "| phase | seconds |", "|---|---|"]
    lines += [f"| {k_} | {v:.2f} |" for k_, v in t.items()]
    lines += [f"| units: Gram (sum) | {u['seconds_sum']['gram']:.2f} |",
              f"| units: fit (sum) | {u['seconds_sum']['fit']:.2f} |",
              f"| units: certificates (sum) | {u['seconds_sum']['certify']:.2f} |", "",
              f"Peak memory (RSS high-water): main process {mem['main_peak_rss_mb']:.0f} MiB; per worker process "
              + ", ".join(f"{v:.0f} MiB" for v in mem["unit_peak_rss_mb"].values())
              + f" (memory cap for kernel blocks: {mem['memory_cap_mb']} MiB).", ""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            rel = Path(p).name if run_dir is None else Path(p).relative_to(run_dir)
            lines += [f"![{Path(p).stem}]({rel})", ""]
    return "\n".join(lines)


__all__ = ["results_table", "write_plots", "markdown_report", "curve_at_budgets"]
