"""Reading the base-model outputs of a trained ensemble (for `kernelcert aggregate`).

Accepted inputs (every array may also be memory-mapped, see `kernelcert.arrayfiles`):

- scores `(t, M, K)`: per test point, the real-valued output (logits, softmax, ...) of each of the M
  base models for each of the K classes (DPA+ROE, FA+ROE; DPA and FA use their argmax votes);
- DPA* scores `(t, N_p, V, K)`: V base models per partition (or `(t, N_p * V, K)` with
  `models_per_partition=V`, model m belonging to partition m // V);
- votes `(t, M)`: integer class predictions only (DPA and FA only).

Files: `.npy` (the array itself), `.npz` (key `scores` or `votes`, optionally `labels`; or the key
given), and the `.pth` evaluation files of the published DPA / FA / ROE repositories (a dict with
`scores` (t, M, K) and `labels` (t,)), read with `torch.load(..., weights_only=True)` when torch is
importable. Labels come from the scores file or from a separate `.npy` / `.npz` (key `labels`) /
`.pth` file. The number of classes is the scores' last axis, or declared (`num_classes`) for
votes; a declared value that contradicts the scores is an error. Every problem raises
`ArrayFileError` naming the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import numpy.typing as npt

from .arrayfiles import ArrayFileError, check_finite_rows, npz_keys, open_array
from .voting import argmax_votes

__all__ = ["EnsembleOutputs", "read_ensemble_outputs", "read_labels", "SCORE_KEYS", "VOTE_KEYS", "LABEL_KEYS"]

SCORE_KEYS = ("scores", "logits")
VOTE_KEYS = ("votes", "predictions")
LABEL_KEYS = ("labels", "y_test", "targets")


@dataclass(frozen=True)
class EnsembleOutputs:
    """Base-model outputs of one ensemble on t test points.

    scores: (t, M, K) real or (t, N_p, V, K) for DPA* (None for votes-only input); votes: (t, M)
    int64 argmax votes (ties to the smaller class index; for DPA* input, of the per-partition float64
    sums); labels: (t,) int64 in 0..K-1; num_classes K; source: the file read (for messages).
    """

    scores: np.ndarray | None = field(repr=False)
    votes: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    num_classes: int
    source: str

    @property
    def num_test(self) -> int:
        return int(len(self.labels))

    @property
    def num_models(self) -> int:
        """M: base models (for DPA* input: partitions)."""
        return int(self.votes.shape[1])

    @property
    def per_partition(self) -> bool:
        """True for DPA* scores (t, N_p, V, K)."""
        return self.scores is not None and self.scores.ndim == 4


def _torch_load(path: Path) -> dict:
    try:
        import torch  # optional dependency: only the published repositories' .pth files need it
    except ImportError:
        raise ArrayFileError(f"{path}: reading a .pth evaluation file needs PyTorch, which is not importable here; "
                             "install torch, or convert it once where torch is available: "
                             "d = torch.load(path); numpy.savez('scores.npz', scores=d['scores'].cpu().numpy(), "
                             "labels=d['labels'].cpu().numpy())") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        raise ArrayFileError(f"{path}: not a readable .pth file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        obj = {"scores": obj}
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            out[str(k)] = v.detach().cpu().numpy()
        elif isinstance(v, np.ndarray):
            out[str(k)] = v
    return out


def _members(path: Path) -> tuple[dict, str]:
    """key -> array (lazy for .npy/.npz) and the kind of file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ArrayFileError(f"{path}: file not found")
    if suffix == ".pth" or suffix == ".pt":
        return _torch_load(path), "pth"
    if suffix == ".npz":
        return {k: None for k in npz_keys(path)}, "npz"
    if suffix == ".npy":
        return {None: None}, "npy"
    raise ArrayFileError(f"{path}: unknown file type {suffix!r}; expected .npy, .npz or .pth")


def _get(path: Path, members: dict[Any, Any], kind: str, key: str | None) -> np.ndarray:
    if kind == "pth":
        return np.asarray(members[key])
    return open_array(path, key)


def _pick(path: Path, members: dict[Any, Any], key: str | None, candidates: Iterable[str]) -> str | None:
    if key is not None:
        if key not in members:
            present = ", ".join(map(str, members)) or "none"
            raise ArrayFileError(f"{path}: missing key {key!r} (keys present: {present})")
        return key
    for c in candidates:
        if c in members:
            return c
    return None


def _check_labels_array(where: str, y: npt.ArrayLike, t: int | None, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        if y.ndim == 1 and y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.array_equal(y, np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ArrayFileError(f"{where}: labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if t is not None and len(y) != t:
        raise ArrayFileError(f"{where}: {len(y)} labels but the scores have {t} test points")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ArrayFileError(f"{where}: labels outside 0..{num_classes - 1} (found {int(y.min())}..{int(y.max())}; "
                             f"K = {num_classes} classes)")
    return y.astype(np.int64)


def read_labels(path: str | os.PathLike[str], num_classes: int, *, key: str | None = None, num_test: int | None = None) -> np.ndarray:
    """Labels (t,) int64 from `.npy`, `.npz` (key `labels`, `y_test` or `targets`, or `key`) or `.pth`."""
    path = Path(path)
    members, kind = _members(path)
    k = None if kind == "npy" else _pick(path, members, key, LABEL_KEYS)
    if kind != "npy" and k is None:
        raise ArrayFileError(f"{path}: missing key 'labels' (keys present: {', '.join(map(str, members)) or 'none'})")
    where = str(path) if k is None else f"{path} [{k}]"
    return _check_labels_array(where, _get(path, members, kind, k), num_test, num_classes)


def _argmax_votes(where: str, scores: np.ndarray, block_bytes: int = 64 * 2**20) -> np.ndarray:
    """Votes (t, M): argmax over the last axis (first maximum) of (t, M, K) scores, or of the float64
    per-partition sums of DPA* scores (t, N_p, V, K). (t, M, K) scores are read once, in their own
    dtype, by the compiled pass of `voting.argmax_votes`, which also checks that they are finite;
    ArrayFileError names the first non-finite entry."""
    if scores.ndim == 3:
        try:
            return argmax_votes(scores)[0]
        except ValueError:
            check_finite_rows(where, scores)  # names the first NaN / inf
            raise
    check_finite_rows(where, scores)
    t = len(scores)
    per_row = max(1, scores[0].size * 8) if t else 1
    step = max(1, block_bytes // per_row)
    out = np.empty(scores.shape[:2], np.int64)
    for s in range(0, t, step):
        blk = np.asarray(scores[s:s + step], np.float64)
        out[s:s + step] = np.argmax(blk.sum(axis=2), axis=-1)
    return out


def read_ensemble_outputs(path: str | os.PathLike[str], *, key: str | None = None,
                          labels: str | os.PathLike[str] | None = None, labels_key: str | None = None,
                          num_classes: int | None = None, models_per_partition: int | None = None
                          ) -> EnsembleOutputs:
    """Read scores or votes (and labels) of a trained ensemble; see the module docstring.

    path: the scores/votes file; key: its array key (.npz / .pth); labels: a separate labels file
    (default: the `labels` entry of the scores file); num_classes: required for votes-only input,
    checked against the scores' last axis otherwise; models_per_partition: V, turning (t, N_p*V, K)
    scores into DPA* scores (t, N_p, V, K). ArrayFileError names the file and the problem.
    """
    path = Path(path)
    members, kind = _members(path)
    if kind == "npy":
        arr_key = None
    else:
        arr_key = _pick(path, members, key, SCORE_KEYS + VOTE_KEYS)
        if arr_key is None:
            raise ArrayFileError(f"{path}: missing key 'scores' or 'votes' (keys present: "
                                 f"{', '.join(map(str, members)) or 'none'})")
    where = str(path) if arr_key is None else f"{path} [{arr_key}]"
    arr = _get(path, members, kind, arr_key)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ArrayFileError(f"{where}: must be numeric scores (t, M, K) or integer votes (t, M), "
                             f"got dtype {arr.dtype}")
    scores = None
    if arr.ndim == 2:
        if arr.dtype.kind not in "iu":
            raise ArrayFileError(f"{where}: a 2-D array is read as votes (t, M) and must hold integer class indices, "
                                 f"got {arr.dtype}; scores must have shape (t, M, K)")
        if num_classes is None:
            raise ArrayFileError(f"{where}: votes-only input (t, M) needs the number of classes declared "
                                 "(--num-classes K)")
        votes = np.asarray(arr).astype(np.int64)
        if votes.size and (votes.min() < 0 or votes.max() >= num_classes):
            raise ArrayFileError(f"{where}: votes outside 0..{num_classes - 1} (found {int(votes.min())}.."
                                 f"{int(votes.max())}; K = {num_classes} classes)")
        if models_per_partition is not None:
            raise ArrayFileError(f"{where}: several models per partition (DPA*) need scores, not votes")
    elif arr.ndim in (3, 4):
        if arr.dtype.kind not in "f":
            arr = np.asarray(arr, np.float64)
        K = int(arr.shape[-1])
        if num_classes is not None and K != num_classes:
            raise ArrayFileError(f"{where}: scores have {K} classes in their last axis (shape {arr.shape}) but "
                                 f"{num_classes} classes were declared")
        num_classes = K
        if K < 2 or min(arr.shape[:-1]) < 1:
            raise ArrayFileError(f"{where}: scores need at least one test point, one model and two classes, "
                                 f"got shape {arr.shape}")
        if models_per_partition is not None:
            V = int(models_per_partition)
            if arr.ndim != 3 or V < 1 or arr.shape[1] % V:
                raise ArrayFileError(f"{where}: {arr.shape[1] if arr.ndim == 3 else 'these'} models cannot be "
                                     f"grouped {V} per partition (scores of shape {arr.shape})")
            arr = arr.reshape(arr.shape[0], arr.shape[1] // V, V, K)
        scores = arr
        votes = _argmax_votes(where, arr)
    else:
        raise ArrayFileError(f"{where}: expected scores (t, M, K), DPA* scores (t, N_p, V, K) or votes (t, M), "
                             f"got shape {arr.shape}")
    t = len(votes)
    if labels is not None:
        y = read_labels(labels, num_classes, key=labels_key, num_test=t)
    else:
        lk = None if kind == "npy" else _pick(path, members, labels_key, LABEL_KEYS)
        if lk is None:
            raise ArrayFileError(f"{path}: no labels: pass --labels LABELS (or store a 'labels' array in the file)")
        y = _check_labels_array(f"{path} [{lk}]", _get(path, members, kind, lk), t, num_classes)
    return EnsembleOutputs(scores, votes, y, int(num_classes), str(path))
