"""Run every benchmark and regenerate docs/results.md from their result files.

    .venv/bin/python -m benchmarks.run_all               # full mode (hours; resumable)
    .venv/bin/python -m benchmarks.run_all --quick       # quick mode (under 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks.run_all --docs-only   # only rebuild docs/results.md from existing JSON
    .venv/bin/python -m benchmarks.run_all --only certify ensemble

Each benchmark runs as its own process (`python -m benchmarks.NAME [--quick]`), so a failure in one
does not stop the others (the exit status is 1 if any failed). Full mode is resumable: a benchmark
whose full result file exists is skipped unless `--rerun` is given, and the long benchmarks cache
their own finished pieces. docs/results.md shows, per benchmark, the full result when it exists and
the quick one otherwise; every section names the command and machine that produced its numbers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS, result_path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "results.md"

# Order: cheap and foundational first; the results page follows the same order.
BENCHMARKS = ("kernels", "certify", "ensemble", "aggregate", "published", "exactness", "roe_tightness", "experiments",
              "finite_width", "scale")

INTRO = """\
# Results

Every number on this page comes from a result file under `benchmarks/results/`, written by a
benchmark script, and this page is regenerated from those files by

    make bench          # full mode: every benchmark at full size (hours; resumable)
    make bench-quick    # quick mode: small configurations, under 10 minutes on 2 cores
    .venv/bin/python -m benchmarks.run_all --docs-only   # rebuild this page only

Each section states the exact command that reproduces it, whether it is the quick or full
configuration, and the machine it ran on. Timings on a shared 2-core machine are noisy
(a few tens of percent); the soundness and exactness figures are deterministic given the seeds.
"""


def available(name: str) -> bool:
    """True if benchmarks/NAME.py exists (some benchmarks are optional pieces of the project)."""
    return (Path(__file__).resolve().parent / f"{name}.py").exists()


def run_one(name: str, quick: bool, timeout: float | None) -> tuple[bool, float]:
    """Run one benchmark in a subprocess; returns (succeeded, seconds)."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout)
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        print(f"=== {name}: timed out after {timeout:.0f} s", flush=True)
        ok = False
    secs = time.perf_counter() - t0
    print(f"=== {name}: {'ok' if ok else 'FAILED'} in {secs:.0f} s", flush=True)
    return ok, secs


def load_result(name: str, prefer_quick: bool = False) -> dict | None:
    """The full result of a benchmark if present (or the quick one when prefer_quick), else the other."""
    order = (True, False) if prefer_quick else (False, True)
    for quick in order:
        path = result_path(name, quick)
        if path.exists():
            return json.loads(path.read_text())
    return None


def render(prefer_quick: bool = False, names=BENCHMARKS) -> str:
    """The text of docs/results.md from the result files (missing benchmarks are listed, not invented)."""
    sections, missing = [], []
    for name in names:
        result = load_result(name, prefer_quick) if available(name) else None
        if result is None:
            missing.append(name)
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        sections.append(module.markdown(result).rstrip() + "\n")
    toc = [f"- [{s.splitlines()[0][3:]}](#{_anchor(s.splitlines()[0][3:])})" for s in sections]
    text = INTRO + "\n" + "\n".join(toc) + "\n\n" + "\n".join(sections)
    if missing:
        text += ("\n## Not yet measured\n\nNo result file exists yet for: "
                 + ", ".join(f"`benchmarks/{m}.py`" for m in missing) + ".\n")
    return text


def _anchor(title: str) -> str:
    """GitHub-style heading anchor."""
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def write_docs(text: str, path: Path = DOCS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick configurations (under 10 minutes in total)")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    ap.add_argument("--rerun", action="store_true", help="full mode: rerun benchmarks whose results exist")
    ap.add_argument("--docs-only", action="store_true", help="do not run anything; rebuild docs/results.md")
    ap.add_argument("--timeout", type=float, default=None, help="per-benchmark time limit in seconds")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed, times = [], {}
    if not args.docs_only:
        for name in args.only or BENCHMARKS:
            if not available(name):
                print(f"=== {name}: benchmarks/{name}.py does not exist; skipped")
                continue
            if not args.quick and not args.rerun and result_path(name, False).exists():
                print(f"=== {name}: full result exists ({result_path(name, False).name}); skipped (--rerun to redo)")
                continue
            ok, times[name] = run_one(name, args.quick, args.timeout)
            if not ok:
                failed.append(name)
    path = write_docs(render(prefer_quick=False))
    print(f"\nwrote {path.relative_to(ROOT)}")
    if times:
        print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
