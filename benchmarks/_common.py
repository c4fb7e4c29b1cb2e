"""Shared pieces of the benchmark scripts: atomic result files and Markdown rendering."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ._machine import machine_info, machine_line

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(name: str, quick: bool) -> Path:
    """benchmarks/results/NAME.json, or NAME_quick.json for the quick configuration."""
    return RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")


def stamp(result: dict, name: str, quick: bool, argv=None) -> dict:
    """Add the reproducing command, the machine and the mode to a result dict (in place; returned)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if quick and "--quick" not in args:
        args.append("--quick")
    result["command"] = " ".join([".venv/bin/python -m benchmarks." + name, *args])
    result["machine"] = machine_info()
    result["quick"] = bool(quick)
    return result


def write_result(name: str, result: dict, quick: bool) -> Path:
    """Write the result JSON atomically (temp file + os.replace) and return its path."""
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1, default=_jsonable)
    os.replace(tmp, path)
    return path


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def provenance(result: dict) -> str:
    """'Command ... on <machine>' line for a Markdown section (tolerates older result files)."""
    cmd = result.get("command")
    m = result.get("machine") or {}
    where = machine_line(m) if "cores" in m else f"{m.get('cpus', '?')} cores"
    mode = "quick" if result.get("quick") else "full"
    return (f"*Reproduce with `{cmd}`* ({mode} mode; measured on {where})." if cmd else
            f"*{mode} mode; measured on {where}.*")


def md_table(headers, rows) -> str:
    """A Markdown table; cells are formatted with `fmt`."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt(v, digits: int = 3) -> str:
    """Compact cell text: None -> '-', floats to `digits` significant digits, booleans as yes/no."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)
