"""Machine description recorded with every benchmark result (so numbers say where they come from)."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict:
    """CPU model, logical cores, RAM (GiB), Python / numpy / jax versions and the JAX devices."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        ram = None
    try:
        import jax

        jax_version, devices = jax.__version__, sorted({d.platform for d in jax.devices()})
    except Exception:  # pragma: no cover - jax is a dependency
        jax_version, devices = None, []
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "python": platform.python_version(),
            "numpy": np.__version__, "jax": jax_version, "jax_devices": devices, "os": platform.platform()}


def machine_line(machine: dict) -> str:
    """One-line human summary of `machine_info()` output."""
    return (f"{machine.get('cores')} cores ({machine.get('cpu')}), {machine.get('ram_gib')} GiB RAM, "
            f"Python {machine.get('python')}, numpy {machine.get('numpy')}, jax {machine.get('jax')} "
            f"({', '.join(machine.get('jax_devices') or []) or 'cpu'})")
