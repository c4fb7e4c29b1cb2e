"""Provenance of computed results: which code, numeric libraries and device produced them.

`Provenance.current(device, dtype)` describes this process: the kernelcert version, the resolved
device ("cpu" or "gpu", plus the accelerator model), the kernel dtype, the numpy / scipy / jax /
jaxlib versions, the BLAS libraries loaded (implementation, version and the CPU kernel set it
dispatched to, e.g. OpenBLAS "Haswell"), the machine architecture and the Python version.

Two environments are *compatible* when every field that can change a single bit of a result is
equal (`Provenance.differences`): all of the above except the Python version, which is recorded
for information only. Every work unit records the provenance of the process that computed it;
a unit whose provenance differs from the client's is never mixed into a run (it is recomputed),
and a worker whose provenance differs from the client's is refused (`EnvironmentMismatch`).

Limits: the check sees library versions and the BLAS kernel set, not every CPU feature XLA may
compile for; workers of one cluster are expected to run one build of the environment.
"""

from __future__ import annotations

import functools
import json
import platform
from dataclasses import asdict, dataclass, fields
from typing import Any

import jax
import jaxlib
import numpy as np
import scipy
import scipy.linalg  # noqa: F401 - loads scipy's BLAS, so that every process lists the same libraries
from threadpoolctl import threadpool_info

from ._jax import resolve_device
from ._version import __version__

DEVICES = ("cpu", "gpu")


class EnvironmentMismatch(RuntimeError):
    """A worker (or a stored unit) comes from an environment that would compute different numbers."""


def _blas_libraries() -> tuple[str, ...]:
    """'internal_api version architecture' of the BLAS libraries numpy and scipy compute with, sorted.

    Only the libraries shipped with numpy and scipy count: other packages (e.g. a solver's own
    OpenBLAS, loaded only once that solver is imported) do not take part in the numbers a unit
    stores, and whether they happen to be loaded must not make two identical environments differ.
    """
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS, so the answer does not depend on import order)

    out = set()
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        path = str(lib.get("filepath") or "")
        if not any(f"{pkg}.libs" in path or f"/{pkg}/" in path for pkg in ("numpy", "scipy")):
            continue
        out.add(" ".join(str(lib.get(k) or "?") for k in ("internal_api", "version", "architecture")))
    return tuple(sorted(out))


@dataclass(frozen=True)
class Provenance:
    """The environment that computed a result; JSON round trip via `to_dict` / `from_dict`."""

    kernelcert: str
    device: str
    device_kind: str
    dtype: str
    numpy: str
    scipy: str
    jax: str
    jaxlib: str
    blas: tuple[str, ...]
    machine: str
    python: str

    INFORMATIONAL = ("python",)  # recorded, but not compared

    @classmethod
    def current(cls, device: str, dtype: str = "float64") -> "Provenance":
        """This process, computing on `device` ("cpu" or "gpu", already resolved) in `dtype`.

        Raises ValueError for an unresolved or unknown device, and (from `resolve_device`) when
        "gpu" is asked on a process that has none.
        """
        if device not in DEVICES:
            raise ValueError(f"provenance: device must be resolved to one of {DEVICES}, got {device!r}")
        dev = resolve_device(device)
        return cls(kernelcert=__version__, device=device, device_kind=str(dev.device_kind), dtype=str(np.dtype(dtype)),
                   numpy=np.__version__, scipy=scipy.__version__, jax=jax.__version__, jaxlib=jaxlib.__version__,
                   blas=_blas_libraries(), machine=platform.machine(), python=platform.python_version())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blas"] = list(self.blas)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Provenance":
        """Inverse of `to_dict`; ValueError naming the missing or extra keys."""
        if not isinstance(d, dict):
            raise ValueError(f"provenance must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        missing, extra = sorted(names - set(d)), sorted(set(d) - names)
        if missing or extra:
            raise ValueError(f"provenance record: missing keys {missing}, unknown keys {extra}")
        return cls(kernelcert=str(d["kernelcert"]), device=str(d["device"]), device_kind=str(d["device_kind"]),
                   dtype=str(d["dtype"]), numpy=str(d["numpy"]), scipy=str(d["scipy"]), jax=str(d["jax"]),
                   jaxlib=str(d["jaxlib"]), blas=tuple(str(b) for b in d["blas"]), machine=str(d["machine"]),
                   python=str(d["python"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def differences(self, other: "Provenance") -> list[str]:
        """One line per result-relevant field that differs: 'numpy 2.4.6 here, 2.3.0 there'."""
        out = []
        for f in fields(self):
            if f.name in self.INFORMATIONAL:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                fmt = (lambda v: "[" + ", ".join(v) + "]") if f.name == "blas" else str
                out.append(f"{f.name} {fmt(a)} here, {fmt(b)} there")
        return out

    def require_same(self, other: "Provenance", who: str) -> None:
        """Raise `EnvironmentMismatch` naming `who` and every difference, unless compatible."""
        diff = self.differences(other)
        if diff:
            raise EnvironmentMismatch(f"{who} runs a different environment than this client ({'; '.join(diff)}); "
                                      "its results would not be bit-identical, so it is refused: run every worker "
                                      "from the client's environment")

    def describe(self) -> str:
        return (f"kernelcert {self.kernelcert}, {self.device} ({self.device_kind}), {self.dtype}, numpy {self.numpy}, "
                f"scipy {self.scipy}, jax {self.jax}, jaxlib {self.jaxlib}, BLAS {', '.join(self.blas) or 'none'}, "
                f"{self.machine}")


@functools.cache
def current_environment(device: str, dtype: str = "float64") -> Provenance:
    """`Provenance.current(device, dtype)`, computed once per process."""
    return Provenance.current(device, dtype)


def check_environment(expected: Provenance, who: str) -> Provenance:
    """Inside a work unit: this process's provenance, after checking it equals `expected` (the
    client's); `EnvironmentMismatch` naming `who` otherwise."""
    here = current_environment(expected.device, expected.dtype)
    expected.require_same(here, who)
    return here


def resolved_device(name: str) -> str:
    """'auto' / 'cpu' / 'gpu' -> the platform it resolves to here ("cpu" or "gpu"). The client
    resolves the device once and sends the result to its workers, which then never guess."""
    return "cpu" if resolve_device(name).platform == "cpu" else "gpu"


__all__ = ["Provenance", "EnvironmentMismatch", "current_environment", "check_environment", "resolved_device",
           "DEVICES"]
