"""The published certification scripts' algorithms, transcribed operation by operation (one copy).

Sources: DPA `certify.py` (alevine0/DPA), FA `FiniteAggregation_cerfity.py`
(wangwenxiao/FiniteAggregation), ROE `dp_calc.py`, `dpa_roe_certify.py`, `fa_roe_certify.py` and
`evaluations/dpa_star_bases.py` (k1rezaei/Run-Off-Election); the algorithms are those of the DPA,
FA and ROE papers (docs/references.md) as summarised in docs/math.md §7. numpy stands in for torch
(torch is not a dependency): every torch call has a numpy counterpart of the same complexity, and
the per-test-point Python loops of the scripts are kept as loops. These functions are the
comparison side of `benchmarks/published.py` and the oracle of the tests that check kernelcert's
DPA, FA, DPA+ROE, FA+ROE and DPA* summation against the published rules.

Conventions: scores (t, M, K) real, labels (t,) int or None. With labels, radii are -1 where the
prediction is wrong (the scripts' convention); with labels=None every point is certified for its
own prediction (the scripts' computation with the label set to the prediction). "No attack of this
kind" is 10**9 inside the ROE rules (the scripts' loops would run off the end of their arrays);
FA starts from k*d, as the script does.
"""

from __future__ import annotations

import random

import numpy as np

FA_SEED = 999999999 + 208  # random.seed of the published FA / ROE scripts
UNREACHABLE = 10**9


def published_shifts(k: int, d: int) -> list[int]:
    """The d shifts of the FA / FA+ROE scripts: random.seed(FA_SEED); random.sample(range(k*d), d)."""
    rnd = random.Random(FA_SEED)
    return rnd.sample(range(k * d), d)


def dp_table(size: int = 1209) -> np.ndarray:
    """dp_calc.py's table (the DPA+ROE script loads it, size 1209, from data/array_v2.json)."""
    A = np.zeros((size, size), dtype=np.int64)
    for i in range(size):
        for j in range(size):
            if i == 0 and j == 0:
                A[i][j] = 0
            elif (i <= 1 and j <= 2) or (i <= 2 and j <= 1):
                A[i][j] = 1
            elif j <= 1:
                A[i][j] = (i + 1) // 2
            elif i <= 1:
                A[i][j] = (j + 1) // 2
            else:
                A[i][j] = 1 + min(A[i - 2][j - 1], A[i - 1][j - 2])
    return A


def _vote_counts(max_classes: np.ndarray, K: int) -> np.ndarray:
    """The scripts' `predictions` tensor: one indexed += per base model (float, as torch.zeros)."""
    predictions = np.zeros((max_classes.shape[0], K))
    rows = np.arange(max_classes.shape[0])
    for i in range(max_classes.shape[1]):
        predictions[(rows, max_classes[:, i])] += 1
    return predictions


def _base_accuracy(max_classes: np.ndarray, labels: np.ndarray | None) -> float | None:
    """The base-classifier accuracy the DPA and FA scripts print (one more pass over the votes)."""
    if labels is None:
        return None
    return 100 * float((max_classes == labels[:, None]).sum()) / max_classes.size


def published_dpa(scores: np.ndarray | None, labels: np.ndarray | None, K: int,
                  max_classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """certify.py (DPA): (prediction, radius). max_classes: the votes (t, M) when they are given
    instead of the scores (the script's first line computes them: scores.max(2).indices)."""
    if max_classes is None:
        max_classes = scores.argmax(2)
    predictions = _vote_counts(max_classes, K)
    idxsort = np.argsort(-predictions, axis=1, kind="stable")
    valsort = -np.sort(-predictions, axis=1, kind="stable")
    val, idx = valsort[:, 0], idxsort[:, 0]
    valsecond, idxsecond = valsort[:, 1], idxsort[:, 1]
    certs = ((val - valsecond - (idxsecond <= idx)) / 2).astype(int)
    if labels is not None:
        certs[idx != labels] = -1
    _base_accuracy(max_classes, labels)
    return idx, certs


def _ceil(a: int, b: int) -> int:
    return (max(0, a) + b - 1) // b


def _election(scores_i: np.ndarray, prediction: np.ndarray, M: int, K: int):
    """Round 1 finalists (stable order of the counts) and the run-off, as in the ROE scripts."""
    ordered = np.argsort(-prediction, kind="stable")
    m1, m2 = ordered[0].item(), ordered[1].item()
    m1_el = np.zeros(K, dtype=int)
    m2_el = np.zeros(K, dtype=int)
    for cls in range(K):
        m1_el[cls] = 2 * (scores_i[:, m1] > scores_i[:, cls]).sum().item() - M
        m2_el[cls] = 2 * (scores_i[:, m2] > scores_i[:, cls]).sum().item() - M
    elec = m1_el[m2]
    cp = m1 if elec > 0 else (m2 if elec < 0 else min(m1, m2))
    return m1, m2, m1_el, m2_el, cp


def published_dpa_roe(scores: np.ndarray, labels: np.ndarray | None, K: int,
                      table: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """dpa_roe_certify.py (its DPA+ROE part): (prediction, radius). table: dp_table (the script's
    1209 x 1209; built here when None, large enough for the gaps of M models)."""
    t, M, _ = scores.shape
    if table is None:
        table = dp_table(M + 3)
    max_classes = np.argsort(-scores, axis=2, kind="stable")  # torch.argsort(descending=True)
    predictions = np.zeros((t, K), dtype=int)
    for i in range(M):
        predictions[(np.arange(t), max_classes[:, i, 0])] += 1
    pred = np.zeros(t, int)
    cert = np.zeros(t, int)
    for i in range(t):
        prediction = predictions[i]
        m1, m2, m1_el, m2_el, cp = _election(scores[i], prediction, M, K)
        c_sec = m1 + m2 - cp
        R2 = m1_el if cp == m1 else m2_el
        cert_r1 = UNREACHABLE
        for c1 in range(K):
            if c1 == cp:
                continue
            for c2 in range(K):
                if c2 == cp or c2 == c1:
                    continue
                gap1 = max(prediction[cp] - prediction[c1] + (c1 > cp), 0)
                gap2 = max(prediction[cp] - prediction[c2] + (c2 > cp), 0)
                cert_r1 = min(cert_r1, table[gap1][gap2])
        cert_r2 = UNREACHABLE
        for c in range(K):
            if c == cp:
                continue
            a = _ceil(prediction[c_sec] - prediction[c] + (c > c_sec), 2)
            b = _ceil(R2[c] + (c > cp), 2)
            cert_r2 = min(cert_r2, max(a, b))
        pred[i] = cp
        # the script asserts CertR2 > 0 (false only on exact ties): an attack needs at least one poison
        cert[i] = min(cert_r1, max(cert_r2, 1)) - 1
    if labels is not None:
        cert[pred != labels] = -1
    return pred, cert


def _shifted(shifts, n_subsets: int) -> np.ndarray:
    """shifted[h] = the d learners reached by group h: (h + s) mod (k*d) for every shift s."""
    return np.array([[(h + s) % n_subsets for s in shifts] for h in range(n_subsets)])


def _sample_cert(gap, reducers) -> int:
    """fa_roe_certify.py's greedy: groups needed, largest reducers first, until the gap is <= 0."""
    reducers = -np.sort(-reducers)
    c = 0
    while gap > 0:
        if c == len(reducers):
            return UNREACHABLE  # the published loop would index past the end: no attack of this kind
        gap -= reducers[c].item()
        c += 1
    return c


def published_fa(scores: np.ndarray | None, labels: np.ndarray | None, K: int, shifts,
                 max_classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FiniteAggregation_cerfity.py: (prediction, radius); shifts: the d FA shifts
    (`published_shifts(k, d)` for the script's); max_classes as in `published_dpa`."""
    if max_classes is None:
        max_classes = scores.argmax(2)
    n_subsets = max_classes.shape[1]
    d = len(shifts)
    shifted = _shifted(shifts, n_subsets)
    predictions = _vote_counts(max_classes, K)
    idx = np.argsort(-predictions, axis=1, kind="stable")[:, 0]
    n = max_classes.shape[0]
    certs = np.zeros(n, int)
    for i in range(n):
        if labels is not None and idx[i] != labels[i]:
            certs[i] = -1
            continue
        certs[i] = n_subsets
        label = int(idx[i] if labels is None else labels[i])
        mc = max_classes[i][shifted.reshape(-1)].reshape(-1, d)
        for c in range(K):
            if c != label:
                diff = predictions[i][label] - predictions[i][c] - (1 if c < label else 0)
                deltas = (1 + (mc == label).astype(np.int64) - (mc == c).astype(np.int64)).sum(axis=1)
                deltas = -np.sort(-deltas)
                radius = 0
                while radius < len(deltas) and diff - deltas[radius] >= 0:
                    diff -= deltas[radius].item()
                    radius += 1
                certs[i] = min(certs[i], radius)
    _base_accuracy(max_classes, labels)
    return idx, certs


def published_fa_roe(scores: np.ndarray, labels: np.ndarray | None, K: int, shifts
                     ) -> tuple[np.ndarray, np.ndarray]:
    """fa_roe_certify.py: (prediction, radius); shifts as in `published_fa`."""
    t, M, _ = scores.shape
    d = len(shifts)
    flat = _shifted(shifts, M).reshape(-1)
    max_classes = np.argsort(-scores, axis=2, kind="stable")
    predictions = np.zeros((t, K))
    for i in range(M):
        predictions[(np.arange(t), max_classes[:, i, 0])] += 1
    pred = np.zeros(t, int)
    certs = np.zeros(t, int)
    for i in range(t):
        prediction = predictions[i]
        m1, m2, m1_el, m2_el, cp = _election(scores[i], prediction, M, K)
        pred[i] = cp
        if labels is not None and cp != labels[i]:
            certs[i] = -1
            continue
        c_sec = m1 + m2 - cp
        mc = max_classes[i, flat, 0].reshape(-1, d)
        m1_to = np.zeros(K)
        m2_to = np.zeros(K)
        for m3 in range(K):
            gap = prediction[m1] - prediction[m3] + (m3 > m1)
            pw = (1 + (mc == m1).astype(np.int64) - (mc == m3).astype(np.int64)).sum(axis=1)
            m1_to[m3] = _sample_cert(gap, pw)
            gap = prediction[m2] - prediction[m3] + (m3 > m2)
            pw = (1 + (mc == m2).astype(np.int64) - (mc == m3).astype(np.int64)).sum(axis=1)
            m2_to[m3] = _sample_cert(gap, pw)
        el_h = np.zeros((K, M, d))
        for cls in range(K):
            el_h[cls] = (scores[i, flat, cp] > scores[i, flat, cls]).reshape(-1, d)
        R1, R1_sec, R2_gaps = (m1_to, m2_to, m1_el) if cp == m1 else (m2_to, m1_to, m2_el)
        cert_r1 = UNREACHABLE
        for c1 in range(K):
            if c1 == cp:
                continue
            for c2 in range(c1):
                if c2 == cp:
                    continue
                gap = (prediction[cp] - prediction[c1] + (c1 > cp) + prediction[cp] - prediction[c2] + (c2 > cp))
                pw = (1 + 2 * (mc == cp).astype(np.int64) - (mc == c1).astype(np.int64)
                      - (mc == c2).astype(np.int64)).sum(axis=1)
                cert_r1 = min(cert_r1, max(max(R1[c1], R1[c2]), _sample_cert(gap, pw)))
        cert_r2 = UNREACHABLE
        for c in range(K):
            if c == cp:
                continue
            gap = R2_gaps[c] + (c > cp)
            cert_r2 = min(cert_r2, max(R1_sec[c], _sample_cert(gap, 2 * el_h[c].sum(axis=1))))
        certs[i] = min(cert_r1, max(cert_r2, 1)) - 1  # as in published_dpa_roe
    return pred, certs


def published_dpa_star_sum(s: np.ndarray) -> np.ndarray:
    """dpa_star_bases.py: per partition, a float32 zero tensor to which each version's float32
    scores are added in version order. s (t, N_p, V, K) -> (t, N_p, K) float32."""
    total = np.zeros((s.shape[0], s.shape[1], s.shape[3]), np.float32)
    for version in range(s.shape[2]):
        total = (total + s[:, :, version].astype(np.float32)).astype(np.float32)
    return total
