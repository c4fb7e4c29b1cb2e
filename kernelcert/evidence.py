"""What one label-linear base model contributes to an aggregation: its `Evidence` on test points.

A base model of a partition ensemble (docs/math.md §2-§5) is seen by every aggregation method
through the same few arrays, all computed from its label weights W (t, n), its training labels
y (n,) and the number of classes K by one function, `build_evidence`:

- `votes` (t,) int64: the model's vote (the ScaLabelCert prediction when certificates are
  computed, otherwise the argmax of the scores; the two differ only at rounding-level ties);
- `scores` (t, K) float64: class scores W @ onehot(y);
- `radius` (t,) int64: the ScaLabelCert radius (exact, docs/math.md §3);
- `cost_lower` / `cost_upper` (t, K) float64: per-class flip-cost bounds (inf = no attack);
- `costs_exact` (t,) bool: lower == upper for every class;
- `pair_costs` (t, K, K) float64: P[i, a, b] = fewest flips after which b beats a, with ties
  counted for the attacker (a lower bound under any tie convention; inf = no attack); or the same
  counts held compactly as `FlipCounts` (unsigned integers, the dtype's maximum = inf), which the
  run's aggregation reads so that only the rows white-box ROE needs are ever widened to float64;
- `fallback` (t,) bool: the certified vote and the argmax of the scores disagree (a rounding-level
  tie); white-box run-off election then gives this model black-box unit costs (`roe_costs`).

What is computed depends on `level`: "votes" (votes and scores), "certificate" (plus radius and
class-cost bounds), "pairs" (plus pairwise costs and the fallback flags). `stack_evidence` puts
the evidence of M models side by side (a model axis after the test-point axis), which is what the
aggregation methods read. This module is used both by the certification run
(`kernelcert.pipeline`) and by in-memory compositions such as white-box ROE from label weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from .certificates import certify
from .learners import onehot

LEVELS = ("votes", "certificate", "pairs")
FIELD_LEVEL = {"votes": "votes", "scores": "votes", "radius": "certificate", "cost_lower": "certificate",
               "cost_upper": "certificate", "costs_exact": "certificate", "pair_costs": "pairs",
               "fallback": "pairs"}


@dataclass(frozen=True)
class FlipCounts:
    """Flip counts held as unsigned integers whose dtype's maximum means inf (no attack).

    `codes` (..., K, K) for pairwise costs (t, M, K, K) of M stacked models; `unit` (t, M) bool or
    None: models whose every count reads as 1 (black-box unit costs, `Evidence.roe_costs`). The
    decoded values are exactly the float64 counts (inf at the maximum); `rows_at` widens only the
    rows a caller reads, so a block of M models x K^2 counts is never copied to float64 whole.
    """

    codes: np.ndarray
    unit: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.codes.dtype.kind != "u":
            raise TypeError(f"FlipCounts needs unsigned integer codes, got dtype {self.codes.dtype}")
        if self.unit is not None and self.unit.shape != self.codes.shape[:self.unit.ndim]:
            raise ValueError(f"FlipCounts: unit mask of shape {self.unit.shape} does not lead codes {self.codes.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def __len__(self) -> int:
        return len(self.codes)

    def decode(self) -> npt.NDArray[np.float64]:
        """All counts as float64 (inf where the dtype's maximum is stored; 1 on `unit` models)."""
        return _widen(self.codes, None if self.unit is None else self.unit)

    def rows_at(self, rows: slice, classes: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
        """codes[rows][i, :, classes[i], :] as float64, shape (B, M, K) for codes (t, M, K, K):
        each test point's counts out of row `classes[i]` (i indexes the points of `rows`)."""
        block = self.codes[rows]
        if block.ndim != 4 or len(classes) != len(block):
            raise ValueError(f"rows_at needs codes (t, M, K, K) and one class per row, got {block.shape}, "
                             f"{len(classes)} classes")
        picked = block[np.arange(len(block)), :, np.asarray(classes), :]  # (B, M, K)
        return _widen(picked, None if self.unit is None else self.unit[rows])


def _widen(codes: np.ndarray, unit: np.ndarray | None) -> npt.NDArray[np.float64]:
    """float64 of unsigned codes, inf at the dtype's maximum, every count of a `unit` row (leading axes) = 1."""
    out = codes.astype(np.float64)
    out[codes == np.iinfo(codes.dtype).max] = np.inf
    if unit is not None:
        out[unit] = 1.0
    return out


@dataclass(frozen=True)
class Evidence:
    """Evidence of one base model on t test points, or of M models stacked on axis 1 (see module doc).

    Shapes for one model: votes (t,), scores (t, K), radius (t,), cost_lower / cost_upper (t, K),
    costs_exact (t,), pair_costs (t, K, K), fallback (t,); stacked: (t, M, ...) throughout.
    Fields above the computed `level` are None. `pair_costs` is float64, or `FlipCounts` where the
    run's aggregation decodes its stored counts lazily.
    """

    votes: np.ndarray
    scores: np.ndarray | None = None
    radius: np.ndarray | None = None
    cost_lower: np.ndarray | None = None
    cost_upper: np.ndarray | None = None
    costs_exact: np.ndarray | None = None
    pair_costs: np.ndarray | FlipCounts | None = None
    fallback: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        """Number of test points t (the first axis of every present field)."""
        present = [getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        if not present:
            raise ValueError("empty Evidence: no field is present")
        return len(present[0])

    @property
    def level(self) -> str:
        """The highest level whose fields are all present."""
        present = [lv for lv in LEVELS
                   if all(getattr(self, f) is not None for f, need in FIELD_LEVEL.items() if need == lv)]
        return present[-1] if present else "votes"

    def require(self, name: str) -> Any:
        """Field `name` (an array; `pair_costs` may be `FlipCounts`); ValueError when the evidence was
        computed below the level that has it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"evidence of level {self.level!r} has no {name!r} (reading it needs a higher level)")
        return value

    def roe_costs(self) -> tuple[np.ndarray, np.ndarray | FlipCounts]:
        """(vote costs, pair costs) for white-box run-off election: `cost_lower` and `pair_costs`,
        with black-box unit costs (1 flip) for every model flagged `fallback` (sound: any change of a
        model needs at least one flip). Pair costs held as `FlipCounts` stay so (the fallback models
        become its `unit` mask): `kernelcert.roe.whitebox_roe` widens only the rows it reads."""
        if self.cost_lower is None or self.pair_costs is None or self.fallback is None:
            raise ValueError("white-box ROE costs need evidence of level 'pairs'")
        vote_costs = np.where(self.fallback[..., None], 1.0, self.cost_lower)
        if isinstance(self.pair_costs, FlipCounts):
            unit = self.fallback if self.pair_costs.unit is None else self.fallback | self.pair_costs.unit
            return vote_costs, FlipCounts(self.pair_costs.codes, unit)
        pair_costs = np.where(self.fallback[..., None, None], 1.0, self.pair_costs)
        return vote_costs, pair_costs


def _level(level: str) -> int:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}, got {level!r}")
    return LEVELS.index(level)


def level_for_fields(names: Iterable[str]) -> str:
    """The lowest level that provides every evidence field in `names`."""
    unknown = sorted(set(names) - set(FIELD_LEVEL))
    if unknown:
        raise ValueError(f"unknown evidence field(s) {unknown}; known: {', '.join(FIELD_LEVEL)}")
    return LEVELS[max((_level(FIELD_LEVEL[n]) for n in names), default=0)]


def build_evidence(weights: ArrayLike, labels: ArrayLike, num_classes: int, *, level: str = "pairs",
                   **certify_options: Any) -> Evidence:
    """The `Evidence` of a label-linear model with label weights W (t, n) and labels y (n,).

    Certificates (`kernelcert.certificates.certify`, with the tie="attacker" pairwise costs taken
    from the same pass) are computed only for level "certificate" / "pairs"; `certify_options`
    (e.g. block_size, sort_device, tolerances) are passed on unchanged, so their defaults are the
    certificates' own. A model with no training labels (n = 0) can never change: its costs are
    inf except 0 at its own vote, its radius 0 (= n) and its fallback False.
    """
    lv = _level(level)
    W = np.asarray(weights, dtype=np.float64)
    y = np.asarray(labels)
    if W.ndim != 2 or y.ndim != 1 or W.shape[1] != len(y):
        raise ValueError(f"weights must be (t, n) and labels (n,), got shapes {W.shape} and {y.shape}")
    K = int(num_classes)
    scores = W @ onehot(y, K)
    vote = np.argmax(scores, axis=1)
    if lv == 0:
        return Evidence(votes=vote, scores=scores)
    t = W.shape[0]
    if len(y) == 0:
        own = np.arange(K)[None, :] == vote[:, None]
        costs = np.where(own, 0.0, np.inf)
        pairs = np.where(np.eye(K, dtype=bool)[None], 0.0, np.full((t, K, K), np.inf))
        ev = Evidence(votes=vote, scores=scores, radius=np.zeros(t, np.int64), cost_lower=costs,
                      cost_upper=costs.copy(), costs_exact=np.ones(t, bool))
        return ev if lv == 1 else dataclasses.replace(ev, pair_costs=pairs, fallback=np.zeros(t, bool))
    # level "pairs": the attacker-tie pairwise costs come from the same certify pass
    P: np.ndarray | None = None
    if lv == 2:
        cert, P = certify(W, y, K, pairwise="attacker", **certify_options)
    else:
        cert = certify(W, y, K, **certify_options)
    ev = Evidence(votes=cert.prediction, scores=scores, radius=cert.radius, cost_lower=cert.cost_lower,
                  cost_upper=cert.cost_upper, costs_exact=cert.exact)
    if lv == 1:
        return ev
    return dataclasses.replace(ev, pair_costs=P, fallback=cert.prediction != vote)


def stack_evidence(items: Sequence[Evidence]) -> Evidence:
    """The evidence of M models side by side: every present field stacked on a new axis 1."""
    items = list(items)
    if not items:
        raise ValueError("stack_evidence needs at least one Evidence")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Evidence):
        vals = [getattr(e, f.name) for e in items]
        if any(v is None for v in vals):
            if not all(v is None for v in vals):
                raise ValueError(f"evidence field {f.name!r} is present for some models only")
            out[f.name] = None
        elif any(isinstance(v, FlipCounts) for v in vals):  # compact pair costs: decoded to float64 to stack
            out[f.name] = np.stack([v.decode() if isinstance(v, FlipCounts) else v for v in vals], axis=1)
        else:
            out[f.name] = np.stack(vals, axis=1)
    return Evidence(**out)


__all__ = ["Evidence", "FlipCounts", "build_evidence", "stack_evidence", "level_for_fields", "LEVELS", "FIELD_LEVEL"]
