"""The registry of aggregation methods: the one place that says what a method is.

Each `AggregationMethod` record names a method, says which aggregation target it applies to
(a partition ensemble, or a Finite Aggregation spread), which `Evidence` fields of the base
models it reads, how the report labels and draws it, and holds its certificate function. The
config validation, the work units (which evidence level to compute), the aggregation, the
report and the benchmarks all read `METHODS`; adding a method is one record plus its function.

Every certificate function has the same call shape

    certify(evidence, num_classes, shifts) -> MethodOutput

where `evidence` is the stacked evidence (t, M, ...) of the target's M base models on a block of
t test points (`kernelcert.evidence.stack_evidence`) and `shifts` the FA shift table (None for
partition ensembles). Radii follow the convention of docs/math.md §1 (attack size = radius + 1);
the run caps them at the number of training labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ensemble import dpa, ensemblecert
from ..evidence import Evidence, level_for_fields
from ..roe import dpa_roe, fa, fa_roe, whitebox_roe
from ..voting import AggregateResult

TARGET_KINDS = ("partition", "fa")


@dataclass(frozen=True)
class MethodOutput:
    """One method's certificates on a block of t test points: prediction (t,) int64, radius (t,)
    int64 (uncapped), exact (t,) bool (radius proven exact) and, for methods that bound the radius
    from both sides, radius_upper (t,) int64."""

    prediction: np.ndarray
    radius: np.ndarray
    exact: np.ndarray
    radius_upper: np.ndarray | None = None


@dataclass(frozen=True)
class AggregationMethod:
    """One aggregation method (see the module docstring).

    target: "partition" (the N_p partition ensembles) or "fa" (the FA spreads of k*d learners);
    needs: the evidence fields `certify` reads; single_model: applies to the un-partitioned model
    (N_p = 1) only; label / style: report text and matplotlib (color, linestyle, marker).
    """

    name: str
    label: str
    style: tuple[str, str, str]
    target: str
    needs: tuple[str, ...]
    certify: Callable[[Evidence, int, np.ndarray | None], MethodOutput]
    single_model: bool = False

    @property
    def level(self) -> str:
        """The evidence level (`kernelcert.evidence.LEVELS`) the base models must provide."""
        return level_for_fields(self.needs)

    def applies_to(self, kind: str, size: int) -> bool:
        """Whether this method aggregates a target of this kind and size (N_p or k)."""
        return kind == self.target and (size == 1 or not self.single_model)


def _no_exact(t: int) -> np.ndarray:
    return np.zeros(t, bool)


def _from(res: AggregateResult, t: int) -> MethodOutput:
    return MethodOutput(np.asarray(res.prediction, np.int64), res.radius, _no_exact(t))


def _fa_shifts(shifts: np.ndarray | None) -> np.ndarray:
    """The FA shift table of an "fa" target; ValueError when a caller gives none."""
    if shifts is None:
        raise ValueError("an FA method needs the shift table of its target (shifts=None given)")
    return shifts


def _single(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    # the one model's ScaLabelCert radius, exact (docs/math.md §3)
    return MethodOutput(ev.votes[:, 0].copy(), ev.require("radius")[:, 0], np.ones(ev.num_points, bool))


def _dpa(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    return _from(dpa(ev.votes, num_classes), ev.num_points)


def _ensemblecert(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    lo = ensemblecert(ev.votes, ev.require("cost_lower"), num_classes)
    hi = ensemblecert(ev.votes, ev.require("cost_upper"), num_classes)
    return MethodOutput(np.asarray(lo.prediction, np.int64), lo.radius, lo.radius == hi.radius, hi.radius)


def _dpa_roe(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    return _from(dpa_roe(ev.require("scores")), ev.num_points)


def _whitebox_roe(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    vote_costs, pair_costs = ev.roe_costs()
    return _from(whitebox_roe(ev.require("scores"), vote_costs, pair_costs), ev.num_points)


def _fa(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    return _from(fa(ev.votes, _fa_shifts(shifts), num_classes), ev.num_points)


def _fa_roe(ev: Evidence, num_classes: int, shifts: np.ndarray | None) -> MethodOutput:
    return _from(fa_roe(ev.require("scores"), _fa_shifts(shifts)), ev.num_points)


_ALL = (
    AggregationMethod("single", "single model (ScaLabelCert)", ("C4", "-", "s"), "partition", ("votes", "radius"),
                      _single, single_model=True),
    AggregationMethod("dpa", "DPA (black box)", ("C0", "--", "o"), "partition", ("votes",), _dpa),
    AggregationMethod("ensemblecert", "EnsembleCert", ("C1", "-", "D"), "partition",
                      ("votes", "cost_lower", "cost_upper"), _ensemblecert),
    AggregationMethod("dpa_roe", "DPA+ROE", ("C2", ":", "^"), "partition", ("scores",), _dpa_roe),
    AggregationMethod("whitebox_roe", "white-box ROE", ("C3", "-.", "v"), "partition",
                      ("scores", "cost_lower", "pair_costs", "fallback"), _whitebox_roe),
    AggregationMethod("fa", "FA", ("C5", "--", "<"), "fa", ("votes",), _fa),
    AggregationMethod("fa_roe", "FA+ROE", ("C6", ":", ">"), "fa", ("scores",), _fa_roe),
)

REGISTRY: dict[str, AggregationMethod] = {m.name: m for m in _ALL}
METHODS: tuple[str, ...] = tuple(REGISTRY)  # registry order = the order of every table and plot


def method_label(name: str) -> str:
    """Report label of a method (the name itself for an unknown one)."""
    return REGISTRY[name].label if name in REGISTRY else name


def method_style(name: str) -> tuple[str | None, str, str]:
    """(color, linestyle, marker) of a method for matplotlib."""
    return REGISTRY[name].style if name in REGISTRY else (None, "-", "o")


def evidence_level(methods: Iterable[str], kind: str) -> str | None:
    """The evidence level the base models of a `kind` target must provide for `methods` (None when
    no method reads that kind of target)."""
    fields = [f for m in methods if REGISTRY[m].target == kind for f in REGISTRY[m].needs]
    return level_for_fields(fields) if fields else None


__all__ = ["AggregationMethod", "MethodOutput", "REGISTRY", "METHODS", "TARGET_KINDS", "method_label",
           "method_style", "evidence_level"]
