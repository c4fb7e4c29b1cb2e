"""Peak memory of this process, measurable per run rather than per process lifetime.

`peak_rss_mb()` is the high-water mark of the resident set size (Linux: `VmHWM` of
/proc/self/status). `reset_peak_rss()` sets that mark back to the current RSS (Linux >= 4.0:
writing "5" to /proc/self/clear_refs), so a long-lived process (a Dask worker, a notebook) can
report the peak of one run. Where the reset is not available it returns False and the peak is
the process's lifetime peak.
"""

from __future__ import annotations

import sys

import psutil

if sys.platform != "win32":
    import resource


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since start or the last `reset_peak_rss`).

    Linux: VmHWM (getrusage's ru_maxrss would also count the parent's memory at fork for spawned
    worker processes and cannot be reset). Elsewhere: getrusage, or psutil's current RSS.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    if sys.platform == "win32":  # pragma: no cover - no getrusage
        return float(psutil.Process().memory_info().rss) / 2**20
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return float(r) / (1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


__all__ = ["peak_rss_mb", "reset_peak_rss"]
