"""Compiled ScaLabelCert core: one row of label weights at a time, all of docs/math.md §3 from one sort.

`certify_rows` computes, for every row of class-grouped, segment-sorted label weights S (B, n),
exactly what the vectorised numpy core of `kernelcert.certificates` computes for it (`_Context`,
`_solve` and the window-growing loop of `_run`): the prediction, the radius, the pairwise costs
P(a, b) and the per-class bounds (pairwise lower bounds, verified greedy / safe-order attacks,
Lagrangian lower bounds, sequential greedy). The windows, merged lists, prefix sums and count
tables are built once per row and window size (branch-free merges); every pairwise problem, search
and bound is then a scalar loop over those tables, the independent binary searches (the K - 1 pairs
of a class, the safe-order searches of all classes) in lockstep so that their look-ups overlap. Every floating-point expression is evaluated in the same order
as the numpy code (sequential prefix sums, numpy's pairwise summation for `sum`/`add.reduce`,
the same binary-search probes), so every integer output (radius, costs, bounds, prediction) is
bit-identical to the numpy core; `tests/test_scalabel_kernel.py` checks this on random and
adversarial rows.

Rows are independent and run in parallel (numba `prange` over contiguous chunks of rows, a few
per thread; each chunk allocates its work space once). The count table (how many entries of each
group lie in every prefix of the merged list) holds every row up to `_DENSE_COUNTS` window entries
and every 8th row beyond (the larger windows of the rows that need them), with the lookup compiled
as two specialisations, so the dense case has no extra branch. The kernel has one signature
(float64 / int64 arrays, sizes are run-time values): it compiles once per process (or never, when
numba's on-disk cache is warm) whatever the shapes.

`exact_rows` is the exact post-pass of `certificates._resolve_exact` for the rows decided inside
the rounding band: the values of `certificates._ExactRow`, with every decision taken as the sign of
an error-free float expansion instead of Python integers.
"""

from __future__ import annotations

import numpy as np
import numba
from numba import njit, prange

_EPS = float(np.finfo(np.float64).eps)
_PW_BLOCK = 128  # numpy's pairwise-summation block (PW_BLOCKSIZE)

MODE_RADIUS, MODE_PAIRS, MODE_FULL = 0, 1, 2
TIE_INDEX, TIE_ATTACKER = 0, 1


# --------------------------------------------------------------------------- float helpers
@njit(cache=True)
def _block_sum(a, lo, n):
    """numpy's pairwise-summation leaf (n <= 128): sequential below 8 terms, else 8 lanes."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    stop = n - n % 8
    while i < stop:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True)
def _pairwise_sum(a, lo, n):
    """Sum of a[lo:lo+n] in numpy's order (`np.add.reduce` on a contiguous axis): `_pairwise_sum_in`
    with its own stack."""
    if n <= _PW_BLOCK:
        return _block_sum(a, lo, n)
    return _pairwise_sum_in(a, lo, n, np.empty((3, 64), np.int64), np.empty(64))


@njit(cache=True)
def _pairwise_sum_in(a, lo, n, frames, vals):
    """Sum of a[lo:lo+n] in numpy's order: split in halves (rounded to multiples of 8) down to blocks
    of at most 128, summed as `_block_sum`. The recursion is unrolled onto an explicit stack
    (numba's cache does not keep recursive functions): frames (3, 64) int64 and vals (64,) scratch."""
    if n <= _PW_BLOCK:
        return _block_sum(a, lo, n)
    # frames: (lo, n, state) with state 0: not started, 1: left half summed (value on vals)
    f_lo = frames[0]
    f_n = frames[1]
    f_st = frames[2]
    top = 0
    nv = 0
    f_lo[0], f_n[0], f_st[0] = lo, n, 0
    while top >= 0:
        flo, fn, st = f_lo[top], f_n[top], f_st[top]
        if fn <= _PW_BLOCK:
            vals[nv] = _block_sum(a, flo, fn)
            nv += 1
            top -= 1
            continue
        n2 = fn // 2
        n2 -= n2 % 8
        if st == 0:
            f_st[top] = 1
            top += 1
            f_lo[top], f_n[top], f_st[top] = flo, n2, 0
        elif st == 1:
            f_st[top] = 2
            top += 1
            f_lo[top], f_n[top], f_st[top] = flo + n2, fn - n2, 0
        else:
            nv -= 1
            vals[nv - 1] = vals[nv - 1] + vals[nv]
            top -= 1
    return vals[0]


@njit(cache=True)
def _argmax(a):
    """First index of the maximum (np.argmax without NaNs)."""
    best = 0
    for k in range(1, a.shape[0]):
        if a[k] > a[best]:
            best = k
    return best


@njit(cache=True, inline="always")
def _iters(size):
    """Binary search steps that shrink an interval of `size` candidates to one (ceil(log2(size + 1)), >= 1)."""
    steps = 0
    while (1 << steps) < size + 1:
        steps += 1
    return max(1, steps)


# --------------------------------------------------------------------------- per-row tables
@njit(cache=True)
def _merge_runs(src_v, src_t, dst_v, dst_t, start, mid, end):
    """Stable merge of the decreasing runs src[start:mid] and src[mid:end] (both non-empty) into
    dst[start:end] (the left run first among equals). Branch-free, from both ends at once (two
    independent chains): the front takes the larger head (the left one among equals), the back the
    smaller tail (the right one among equals); each end writes its half of the output. Indices are
    unsigned (no wrap-around code): the front may read src[end] (src holds one entry more than any
    run ends at), the back reads src[min(ib, jb)] when its left run is used up (ib wrapped below
    start); such values are never selected."""
    one = np.uint64(1)
    us = np.uint64(start)
    um = np.uint64(mid)
    ue = np.uint64(end)
    i = us
    j = um
    ib = um - one
    jb = ue - one
    o = us
    ob = ue - one
    n = end - start
    for _ in range(n >> 1):
        a = src_v[i]
        b = src_v[j]
        ta = (i < um) & ((j >= ue) | (a >= b))
        dst_v[o] = a if ta else b
        dst_t[o] = src_t[i] if ta else src_t[j]
        ua = np.uint64(ta)
        i += ua
        j += one - ua
        o += one
        ir = min(ib, jb)  # ib once wrapped (the left run used up) is the largest uint64
        a = src_v[ir]
        b = src_v[jb]
        tb = (jb >= um) & ((ib + one < us + one) | (b <= a))
        dst_v[ob] = b if tb else a
        dst_t[ob] = src_t[jb] if tb else src_t[ir]
        ub = np.uint64(tb)
        jb -= ub
        ib -= one - ub
        ob -= one
    if n & 1:
        a = src_v[i]
        b = src_v[j]
        ta = (i < um) & ((j >= ue) | (a >= b))
        dst_v[o] = a if ta else b
        dst_t[o] = src_t[i] if ta else src_t[j]


@njit(cache=True)
def _merge_double(c, nz, V, Q2):
    """V[:2 nz]: the positive entries c[:nz] (decreasing) and their doubles merged, decreasing, c
    first among equals; Q2[:2 nz + 1]: how many doubles among the first q. Branch-free, from both
    ends at once (`_merge_runs`): the front takes c[i] when c[i] >= 2 c[j], the back 2 c[jb] when
    2 c[jb] <= c[ib]. Unsigned indices, reads clamped to [0, nz): a used-up list (front: index nz,
    back: index wrapped below 0) is read at a valid index and never selected."""
    one = np.uint64(1)
    un = np.uint64(nz)
    i = np.uint64(0)
    j = np.uint64(0)
    ib = un - one
    jb = un - one
    o = np.uint64(0)
    ob = un + un - one
    last = un - one if nz > 0 else un
    Q2[0] = 0
    for _ in range(nz):
        x = c[min(i, last)]
        z = 2.0 * c[min(j, last)]
        t = (j >= un) | ((i < un) & (x >= z))
        V[o] = x if t else z
        ut = np.uint64(t)
        i += ut
        j += one - ut
        o += one
        Q2[o] = j
        x = c[min(ib, last)]  # ib once wrapped (c used up) is the largest uint64
        z = 2.0 * c[min(jb, last)]
        tb = (jb + one >= one) & ((ib + one < one) | (z <= x))
        V[ob] = z if tb else x
        Q2[ob + one] = jb + one
        ub = np.uint64(tb)
        jb -= ub
        ib -= one - ub
        ob -= one


@njit(cache=True)
def _count_rows(CTf, tag, G, GL):
    """The dense count table, flat (CTf[q G + g] = CT[q, g]): row q+1 = row q plus the one-hot of
    tag[q] (each row one vectorised pass over the previous one)."""
    for g in range(G):
        CTf[g] = 0
    base = 0
    for q in range(GL):
        t = tag[q]
        for g in range(G):
            CTf[base + G + g] = CTf[base + g] + np.int32(g == t)
        base += G


_DENSE_COUNTS = 4096  # up to this many window entries (G L) the count table holds every row
_SPARSE_SHIFT = 3  # beyond, every 8th row


@njit(cache=True)
def _build_tables(row, off, K, L, X, cut, Xc, c, tag, buf_v, buf_t, Cc, CT, V, Q2, cnt, sh):
    """Windows X (G, L), cut (G,), prefix sums Xc (G, L+1), merged list c (GL,) with group tags
    (GL,), its prefix sums Cc (GL+1,), count table CT, c ∪ 2c merged V (2GL,) and Q2 (2GL+1,).
    c, tag, buf_v and buf_t have GL+1 entries (the merges may read one past a run); cnt (G,) is
    scratch. Returns nz, the number of positive entries of c (they come first; c[nz:], V[2 nz:] are 0).
    Same definitions (and tie orders: stable by flat index) as `certificates._Context`.

    CT[r, g] = number of group-g entries among the first r 2^sh entries of c (`_ct` adds the tags
    in between): sh = 0 up to `_DENSE_COUNTS` window entries, else 3 (every 8th row: the full table
    would cost G times the windows to build, a look-up then reads at most 7 tags)."""
    G = 2 * K
    GL = G * L
    for k in range(K):
        lo = off[k]
        hi = off[k + 1]
        nk = hi - lo
        m = min(L, nk)
        for i in range(L):
            X[2 * k, i] = 0.0
            X[2 * k + 1, i] = 0.0
        for i in range(m):
            x = row[hi - 1 - i]
            X[2 * k, i] = x if x > 0.0 else 0.0
            x = -row[lo + i]
            X[2 * k + 1, i] = x if x > 0.0 else 0.0
        if nk > L:
            x = row[hi - 1 - L]
            cut[2 * k] = x if x > 0.0 else 0.0
            x = -row[lo + L]
            cut[2 * k + 1] = x if x > 0.0 else 0.0
        else:
            cut[2 * k] = 0.0
            cut[2 * k + 1] = 0.0
    for g in range(G):
        Xc[g, 0] = 0.0
        acc = X[g, 0]
        Xc[g, 1] = acc
        for i in range(1, L):
            acc = acc + X[g, i]
            Xc[g, i + 1] = acc
    # c: stable merge (decreasing, ties by flat index) of the G decreasing group lists. Zeros (the
    # tail of every group) all come last, in flat-index order, so only the positive prefixes are
    # merged: bottom-up, adjacent non-empty runs pairwise (`_merge_runs`, the left run first among
    # equals: any such merge tree gives the one stable order).
    runs = cnt  # run starts (cnt is free until the count table is built)
    nruns = 0
    pos = 0
    for g in range(G):
        x = X[g, 0]
        if x > 0.0:  # only the non-empty runs
            runs[nruns] = pos
            nruns += 1
        for i in range(L):
            x = X[g, i]
            if not x > 0.0:
                break
            pos += 1
    nz = pos
    # the lists start in c or buf so that the last level lands in c
    levels = 0
    while (1 << levels) < nruns:
        levels += 1
    if levels % 2 == 1:
        dst_v, dst_t = buf_v, buf_t
    else:
        dst_v, dst_t = c, tag
    pos = 0
    for g in range(G):
        for i in range(L):
            x = X[g, i]
            if not x > 0.0:
                break
            dst_v[pos] = x
            dst_t[pos] = g
            pos += 1
    dst_v[nz] = -1.0  # the merges may read one entry past a run
    dst_t[nz] = 0
    if levels % 2 == 1:
        src_v, src_t, dst_v, dst_t = buf_v, buf_t, c, tag
    else:
        src_v, src_t, dst_v, dst_t = c, tag, buf_v, buf_t
    while nruns > 1:
        k = 0
        while k < nruns:
            start = runs[k]
            mid = runs[k + 1] if k + 1 < nruns else nz
            end = runs[k + 2] if k + 2 < nruns else nz
            if k + 1 < nruns:
                _merge_runs(src_v, src_t, dst_v, dst_t, start, mid, end)
            else:
                for q in range(start, end):
                    dst_v[q] = src_v[q]
                    dst_t[q] = src_t[q]
            runs[k // 2] = start
            k += 2
        nruns = (nruns + 1) // 2
        dst_v[nz] = -1.0
        dst_t[nz] = 0
        src_v, src_t, dst_v, dst_t = dst_v, dst_t, src_v, src_t
    pos = nz
    for g in range(G):
        for i in range(L):
            if not X[g, i] > 0.0:
                c[pos] = 0.0
                tag[pos] = g
                pos += 1
    Cc[0] = 0.0
    acc = c[0]
    Cc[1] = acc
    for q in range(1, GL):
        acc = acc + c[q]
        Cc[q + 1] = acc
    if sh == 0:
        # every row: row q+1 = row q plus the one-hot of tag[q], each row one vectorised pass over the
        # previous one (a per-group counter array read back right after its scalar update would stall)
        _count_rows(CT.reshape(CT.size), tag, G, GL)
    else:
        mask = (1 << sh) - 1
        for g in range(G):
            cnt[g] = 0
            CT[0, g] = 0
        for q in range(GL):
            cnt[tag[q]] += 1
            if (q + 1) & mask == 0:
                r = (q + 1) >> sh
                for g in range(G):
                    CT[r, g] = cnt[g]
    # V: c and 2c merged (decreasing; c first among equals), Q2[q]: 2c entries among the first q.
    # The positive entries of both come first (2 nz of them), then c's GL - nz zeros, then 2c's.
    _merge_double(c, nz, V, Q2)
    c[GL] = -1.0
    for o in range(2 * nz, 2 * GL):
        V[o] = 0.0
    for o in range(2 * nz, GL + nz):  # c's zeros, then 2c's
        Q2[o + 1] = nz
    for o in range(GL + nz, 2 * GL):
        Q2[o + 1] = o + 1 - GL
    return nz


@njit(cache=True, inline="always")
def _ct(CT, tag, sh, q, g):
    """Number of group-g entries among the first q entries of c: CT[q, g] when the table holds every
    row (sh is None: a separate compiled specialisation, no branch), else the table row below q (every
    2^sh-th row) plus the tags in between."""
    if sh is None:
        return CT[np.uint64(q), np.uint64(g)]  # unsigned: no wrap-around code
    r = q >> sh
    k = CT[np.uint64(r), np.uint64(g)]
    for j in range(r << sh, q):
        k += tag[j] == g
    return k


# --------------------------------------------------------------------------- pairwise problems
@njit(cache=True, inline="always")
def _pair_active(Cc, CT, tag, sh, Xc, Q2, a, b, q):
    """Sum and number of active reductions of pair (a, b) among the first q entries of V."""
    q2 = Q2[np.uint64(q)]
    q1 = q - q2
    tot = Cc[np.uint64(q1)]
    cnt = q1
    g = 2 * a
    k = _ct(CT, tag, sh, q1, g)
    cnt -= k
    tot = tot - Xc[np.uint64(g), np.uint64(k)]
    g = 2 * a + 1
    k = _ct(CT, tag, sh, q1, g)
    cnt -= k
    tot = tot - Xc[np.uint64(g), np.uint64(k)]
    g = 2 * b
    k = _ct(CT, tag, sh, q1, g)
    cnt -= k
    tot = tot - Xc[np.uint64(g), np.uint64(k)]
    g = 2 * b + 1
    k = _ct(CT, tag, sh, q1, g)
    cnt -= k
    tot = tot - Xc[np.uint64(g), np.uint64(k)]
    g = 2 * a
    k = _ct(CT, tag, sh, q2, g)
    cnt += k
    tot = tot + 2.0 * Xc[np.uint64(g), np.uint64(k)]
    g = 2 * b + 1
    k = _ct(CT, tag, sh, q2, g)
    cnt += k
    tot = tot + 2.0 * Xc[np.uint64(g), np.uint64(k)]
    return tot, cnt


@njit(cache=True)
def _pair_row(s, tol, band, absum, Cc, CT, Xc, Q2, V, tag, sh, cut, cutmax, GL, K, a, P, Qs, NR, si, sf):
    """P(a, b) for every b (`certificates._pairs`): P[a, b] (inf: unreachable), Qs[a, b] its prefix q in
    V (-1: none), NR[a, b]: the decision lies within `band` of its threshold. Returns (every P[a, b]
    valid, some NR[a, b]). si (4, K) int64, sf (2, K) float64: scratch.

    Every binary search probes the same prefixes as `certificates._pairs` (the rounded sums need not
    be monotone in q); a search is skipped where its result is not used (no prefix reaches the
    threshold). The searches of the K - 1 pairs run in lockstep, one probe of each per step, with
    branch-free updates: independent chains of look-ups the processor overlaps."""
    lo_, hi_, m_, found_ = si[0], si[1], si[2], si[3]
    T_, tq_ = sf[0], sf[1]
    top = 2 * GL
    sa = s[a]
    ok_all = True
    nr_any = False
    for b in range(K):
        lo_[b] = 0
        hi_[b] = 0  # lo == hi: no search
        found_[b] = -1  # decided here (b == a, b already beats a, or all weights 0)
        if b == a:
            P[a, b] = 0.0
            Qs[a, b] = -1
            NR[a, b] = False
            continue
        sb = s[b]
        if sb > sa or (sb == sa and b < a) or absum == 0.0:
            P[a, b] = 0.0 if absum != 0.0 or sb > sa or (sb == sa and b < a) else np.inf
            Qs[a, b] = -1
            NR[a, b] = abs(sa - sb) <= band
            nr_any = nr_any or NR[a, b]
            continue
        T = (sa - sb) - tol
        tq, m = _pair_active(Cc, CT, tag, sh, Xc, Q2, a, b, top)  # (sum, count) at q = hi, kept as hi moves
        T_[b] = T
        tq_[b] = tq
        m_[b] = m
        hi_[b] = top
        found_[b] = tq >= T and m >= 1
        if not found_[b]:  # the search's result is not used
            lo_[b] = top
    for _ in range(_iters(top + 1)):
        for b in range(K):
            lo = lo_[b]
            hi = hi_[b]
            if lo < hi:
                mid = (lo + hi) >> 1
                tot, cnt = _pair_active(Cc, CT, tag, sh, Xc, Q2, a, b, mid)
                hit = (tot >= T_[b]) & (cnt >= 1)
                hi_[b] = mid if hit else hi
                lo_[b] = lo if hit else mid + 1
                tq_[b] = tot if hit else tq_[b]
                m_[b] = cnt if hit else m_[b]
    for b in range(K):
        if found_[b] < 0:
            continue
        found = found_[b] == 1
        T = T_[b]
        tq = tq_[b]
        q = hi_[b]
        v = V[max(q - 1, 0)]
        need = max(cutmax, 2.0 * max(cut[2 * a], cut[2 * b + 1]))
        valid = (v > need) if found else (cutmax == 0.0)
        near = (T <= 0.0) or (found and (tq - T <= band))
        Qs[a, b] = q if found else -1
        NR[a, b] = near
        nr_any = nr_any or near
        if T <= 0.0:
            P[a, b] = 1.0
        else:
            P[a, b] = float(m_[b]) if found else np.inf
            ok_all = ok_all and valid
    return ok_all, nr_any


# --------------------------------------------------------------------------- attacks as group prefixes
@njit(cache=True, inline="always")
def _after(s, Cc, CT, tag, sh, Xc, Q2, K, q, member1, member2, dest, new, signed):
    """Scores `new` (K,) after the moves of a spec in the first q entries of V; returns their number."""
    G = 2 * K
    q2 = Q2[np.uint64(q)]
    q1 = q - q2
    count = 0
    for g in range(G):
        k = 0
        if member1[g]:
            k = _ct(CT, tag, sh, q1, g)
        elif member2[g]:
            k = _ct(CT, tag, sh, q2, g)
        count += k
        moved = Xc[np.uint64(g), np.uint64(k)]
        signed[g] = moved if g % 2 == 0 else -moved
    for k in range(K):
        part = 0.0
        part += signed[2 * k]
        part += signed[2 * k + 1]
        new[k] = s[k] - part
    for g in range(G):
        new[dest[g]] += signed[g]
    return count


@njit(cache=True, inline="always")
def _wins(new, c, margin):
    """c wins on the attacked scores by more than `margin` (the tolerance plus the rounding allowance)."""
    gmin = np.inf
    for k in range(new.shape[0]):
        if k != c:
            gap = new[c] - new[k]
            if gap < gmin:
                gmin = gap
    return gmin > margin


@njit(cache=True)
def _safe_searches(s, margin, Cc, CT, Xc, Q2, tag, sh, K, GL, cls, nact, M1, M2, D, upper, new, signed, si):
    """Shortest verified prefix of a monotone attack order (count or inf) for the classes cls[:nact],
    order of class c: member1 M1[c], member2 M2[c], dest D[c] (`_after`); upper[c] is lowered to it.
    The same probes as the numpy core (the rounded verification need not be monotone in the prefix);
    none when the whole order does not verify (the result is inf then whatever they find). The
    searches run in lockstep, one probe of each class per step, with branch-free updates (independent
    chains the processor overlaps). si (4, K) int64: scratch."""
    top = 2 * GL
    lo_, hi_, cnt_, ok_ = si[0], si[1], si[2], si[3]
    for i in range(nact):
        c = cls[i]
        cnt_[i] = _after(s, Cc, CT, tag, sh, Xc, Q2, K, top, M1[c], M2[c], D[c], new, signed)
        ok_[i] = _wins(new, c, margin)
        lo_[i] = 0 if ok_[i] else top  # the whole order does not verify: no prefix is searched
        hi_[i] = top  # the prefix of length hi verifies (cnt moves); the shortest one is searched
    for _ in range(_iters(top + 1)):
        for i in range(nact):
            lo = lo_[i]
            hi = hi_[i]
            if lo < hi:
                c = cls[i]
                mid = (lo + hi) >> 1
                cnt = _after(s, Cc, CT, tag, sh, Xc, Q2, K, mid, M1[c], M2[c], D[c], new, signed)
                w = _wins(new, c, margin)
                hi_[i] = mid if w else hi
                lo_[i] = lo if w else mid + 1
                cnt_[i] = cnt if w else cnt_[i]
    for i in range(nact):
        x = float(cnt_[i]) if ok_[i] else np.inf
        if x < upper[cls[i]]:
            upper[cls[i]] = x


@njit(cache=True, inline="always")
def _beats(s, c, k):
    """k beats c with no flips under the index tie rule."""
    return s[k] > s[c] or (s[k] == s[c] and k < c)


@njit(cache=True)
def _greedy_moves(s, X, margin, K, L, c, max_steps, sc, ptr, val, scn_, wn_, T1v, A, worst, first_free):
    """Sequential greedy towards target c (`certificates._greedy_moves`): moves or inf."""
    G = 2 * K
    if max_steps <= 0:
        return np.inf
    for k in range(K):
        sc[k] = s[k]
    for g in range(G):
        ptr[g] = 0
        val[g] = X[g, 0]
    step = 0
    while True:
        # the 3 strongest rivals, first index among equals (one pass; same as three argmax passes)
        o0, o1, o2 = -1, -1, -1
        v0, v1, v2 = -np.inf, -np.inf, -np.inf
        for k in range(K):
            if k == c:
                continue
            vk = sc[k]
            if o0 < 0 or vk > v0:
                o2, v2 = o1, v1
                o1, v1 = o0, v0
                o0, v0 = k, vk
            elif o1 < 0 or vk > v1:
                o2, v2 = o1, v1
                o1, v1 = k, vk
            elif o2 < 0 or vk > v2:
                o2, v2 = k, vk
        s_c = sc[c]
        sc_n0 = s_c + 0.0
        bg = 0
        for k in range(K):
            t1v = v1 if k == o0 else v0
            t2v = v2 if (k == o0 or k == o1) else v1
            T1v[k] = t1v
            vp = val[2 * k]
            vn = val[2 * k + 1]
            wp = (s_c + vp) - max(t1v, sc[k] - vp)
            w_n = -vn
            if k == c:
                sc_n = sc_n0 - w_n
                a_k = -np.inf
            else:
                sc_n = sc_n0 - 0.0
                a_k = sc[k] - w_n
            A[k] = a_k
            M1 = max(t2v, max(a_k, t1v + w_n))
            wn = sc_n - M1
            scn_[k] = sc_n
            wn_[k] = wn
            worst[2 * k] = wp if (vp > 0.0 and k != c) else -np.inf
            worst[2 * k + 1] = wn if (vn > 0.0 and t1v > -np.inf) else -np.inf
        bw = worst[0]
        for g in range(1, G):
            if worst[g] > bw:
                bg = g
                bw = worst[g]
        can = np.isfinite(bw)
        ug = bg // 2
        t1 = o1 if o0 == ug else o0
        tie = wn_[ug] == scn_[ug] - max(T1v[ug], A[ug])
        if bg % 2 == 0:
            bd = c
        elif tie:
            bd = first_free[c, ug]
        else:
            bd = t1
        w = val[bg] * (1.0 if bg % 2 == 0 else -1.0)
        moved = w if can else 0.0
        sc[ug] -= moved
        sc[bd] += moved
        if can:
            ptr[bg] += 1
            pc = ptr[bg]
            val[bg] = X[bg, min(pc, L - 1)] if pc < L else 0.0
        step += 1
        if can and _wins(sc, c, margin):
            return float(step)
        if not can or step >= max_steps:
            return np.inf


# --------------------------------------------------------------------------- Lagrangian lower bounds
@njit(cache=True, inline="always")
def _lag_counts(c, CT, tag, sh, Xc, K, GL, fu, fi, f, present, tau, strict, top_step, nb, terms, hint_j, hint_q):
    """Sum and number of the reductions >= tau (> tau when strict) of the relaxation (`counts`).

    npos[j] = nb[0, j]: how many entries q of c have fl(fu[j] c[q]) >= tau (> tau), a prefix since c
    decreases (and fl(fu[j] x) is monotone in x), so any search for the end of that prefix gives the
    same count. hint (not strict): tau == fl(fu[hint_j] c[hint_q]), so that prefix ends at the first
    q > hint_q whose product is smaller (found by scanning forward). Not strict, the other counts are
    searched within the bounds nb[1, j] <= npos[j] <= nb[2, j] (the caller's binary searches narrow
    them as tau moves monotonically); strict, over all of c."""
    G = 2 * K
    npos = nb[0]
    for j in range(3):
        if not present[j]:
            continue
        if j == hint_j and not strict:
            p = hint_q + 1
            while p < GL and fu[j] * c[np.uint64(p)] >= tau:
                p += 1
            npos[j] = p
            continue
        if not strict:
            lo = nb[1, j]
            hi = nb[2, j]
            fj = fu[j]
            while lo < hi:
                mid = (lo + hi) >> 1
                if fj * c[np.uint64(mid)] >= tau:
                    lo = mid + 1
                else:
                    hi = mid
            npos[j] = lo
            continue
        p = 0
        step = top_step
        while step:
            cand = p + step
            if cand <= GL:
                v = fu[j] * c[cand - 1]
                if (v > tau) if strict else (v >= tau):
                    p = cand
            step >>= 1
        npos[j] = p
    n = 0
    for g in range(G):
        k = 0
        if fi[g] >= 0:
            k = _ct(CT, tag, sh, npos[fi[g]], g)
        n += k
        terms[g] = f[g] * Xc[np.uint64(g), np.uint64(k)]
    return 0.0 + _pairwise_sum(terms, 0, G), n


@njit(cache=True)
def _lagrangian(s, tol, c, CT, tag, sh, Xc, cut, K, GL, nz, cidx, R, fi, f, nb, terms, sR, fu, present):
    """Lower bound on A_c from the rival set R (K,) bool with uniform multipliers (`_lagrangian`):
    returns (bound or inf, valid). nb (3, 3) int64, fu (3,), present (3,) bool: scratch. The first
    threshold search runs over c[:nz + 1] only (nz: positive entries of c): every later entry is 0,
    the same threshold tau = 0 as c[nz], and the sum F(tau) is exactly monotone (non-negative terms,
    each non-decreasing as tau falls), so the first index that reaches T is the same; where none
    does, hi ends at nz instead of GL - 1, both with tau = 0 and the same counts."""
    G = 2 * K
    size = 0
    for k in range(K):
        if R[k]:
            size += 1
    inv = 1.0 / float(size)
    fu[0] = 1.0 + inv
    fu[1] = 1.0
    fu[2] = inv
    for j in range(3):
        present[j] = False
    for g in range(G):
        cls = g // 2
        inr = R[cls]
        isc = cls == cidx
        if g % 2 == 0:
            fi[g] = 0 if inr else (-1 if isc else 1)
        else:
            fi[g] = 0 if isc else (-1 if inr else 2)
        f[g] = fu[fi[g]] if fi[g] >= 0 else 0.0
        if fi[g] >= 0:
            present[fi[g]] = True
    for k in range(K):
        sR[k] = s[k] if R[k] else 0.0
    M = (0.0 + _pairwise_sum(sR, 0, K)) * inv - s[cidx]
    T = M - tol
    if not T > 0.0:  # never valid
        return np.inf, False
    need = 0.0
    for g in range(G):
        x = f[g] * cut[g]
        if x > need:
            need = x
    top_step = 1
    while top_step * 2 <= GL:
        top_step *= 2
    j0 = 0
    while not present[j0]:
        j0 += 1
    f0 = fu[j0]
    # the probes' tau = fl(f0 c[mid]) decreases with mid: the counts of a probe bound those of the later ones
    nb[1, :] = 0  # the counts searched over all of c
    nb[2, :] = GL
    lo = 0
    hi = min(nz, GL - 1)
    F_hi = -1.0  # the sum at tau = fl(f0 c[hi]) once a probe moved hi (it is >= T >= 0 then)
    for _ in range(_iters(GL)):
        if lo >= hi:
            break
        mid = (lo + hi) >> 1
        F, _n = _lag_counts(c, CT, tag, sh, Xc, K, GL, fu, fi, f, present, f0 * c[mid], False, top_step, nb, terms, j0,
                            mid)
        if F >= T:
            hi = mid
            F_hi = F
            nb[2, :] = nb[0, :]
        else:
            lo = mid + 1
            nb[1, :] = nb[0, :]
    tau0 = f0 * c[hi]
    if F_hi >= 0.0:
        F = F_hi
    else:
        F, _n = _lag_counts(c, CT, tag, sh, Xc, K, GL, fu, fi, f, present, tau0, False, top_step, nb, terms, j0, hi)
    ok0 = F >= T
    hit0 = ok0 and tau0 > 0.0
    if ok0:
        U = f0 * c[max(hi - 1, 0)] if hi > 0 else np.inf
    else:
        U = tau0
    Lo = tau0 if hit0 else 0.0
    v = tau0 if hit0 else 0.0
    for j in range(3):
        if not present[j] or j == j0:
            continue
        fj = fu[j]
        qa = 0
        qb = 0
        step = top_step
        while step:
            cand = qa + step
            if cand <= GL and fj * c[min(cand, GL) - 1] >= U:
                qa = cand
            cand = qb + step
            if cand <= GL and fj * c[min(cand, GL) - 1] > Lo:
                qb = cand
            step >>= 1
        qb = max(qa, qb)
        lo = qa
        hi = qb
        nb[1, :] = 0  # the counts searched over all of c
        nb[2, :] = GL
        while lo < hi:
            mid = (lo + hi) >> 1
            F, _n = _lag_counts(c, CT, tag, sh, Xc, K, GL, fu, fi, f, present, fj * c[min(mid, GL - 1)], False, top_step,
                                nb, terms, j, min(mid, GL - 1))
            if F >= T:
                hi = mid
                nb[2, :] = nb[0, :]
            else:
                lo = mid + 1
                nb[1, :] = nb[0, :]
        tau = fj * c[min(hi, GL - 1)] if hi < qb else 0.0
        if tau > v:
            v = tau
    found = v > 0.0
    vv = v if found else 1.0
    F_gt, N_gt = _lag_counts(c, CT, tag, sh, Xc, K, GL, fu, fi, f, present, vv, True, top_step, nb, terms, -1, 0)
    nb[1, :] = 0  # the counts searched over all of c
    nb[2, :] = GL
    _f, N_ge = _lag_counts(c, CT, tag, sh, Xc, K, GL, fu, fi, f, present, vv, False, top_step, nb, terms, -1, 0)
    k = max(1.0, np.ceil((T - F_gt) / vv))
    m = min(float(N_gt) + k, float(N_ge))
    valid = ((v > need) if found else (need == 0.0)) and T > 0.0
    return (m if found else np.inf), valid


# --------------------------------------------------------------------------- one row, one window size
@njit(cache=True)
def _tables(K, L):
    """Work space of `_build_tables` for window sizes up to L (reused across the rows of a thread)."""
    G = 2 * K
    GL = G * L
    rows = GL if GL <= _DENSE_COUNTS else GL >> _SPARSE_SHIFT  # rows of the count table (`_build_tables`)
    return (np.empty((G, L)), np.empty(G), np.empty((G, L + 1)), np.empty(GL + 1), np.empty(GL + 1, np.int64),
            np.empty(GL + 1), np.empty(GL + 1, np.int64), np.empty(GL + 1), np.empty((rows + 1, G), np.int32),
            np.empty(2 * GL), np.empty(2 * GL + 1, np.int64), np.empty(G, np.int32))


@njit(cache=True)
def _scratch(K):
    """Work space of the per-class bounds of `_solve_row` (K classes; reused across the rows of a thread)."""
    G = 2 * K
    first_free = np.full((K, K), -1, np.int64)  # the smallest class other than c and u
    for c1 in range(K):
        for u in range(K):
            for d in range(K):
                if d != c1 and d != u:
                    first_free[c1, u] = d
                    break
    return (np.zeros((K, K), np.bool_), np.zeros(G, np.bool_), np.zeros(G, np.bool_), np.zeros(G, np.int64),
            np.zeros(K), np.zeros(G), np.zeros(K, np.bool_), np.zeros(K, np.int64), np.zeros(K, np.bool_),
            np.zeros(K), np.zeros(K, np.bool_), np.zeros(K, np.bool_), np.zeros(K, np.bool_), np.zeros(G, np.int64),
            np.zeros(G), np.zeros((3, 3), np.int64), np.zeros(G), np.zeros(K), np.zeros(K), np.zeros(G, np.int64),
            np.zeros(G), np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(G), first_free, np.zeros(3), np.zeros(3, np.bool_),
            np.zeros((4, K), np.int64), np.zeros((2, K)), np.zeros((K, G), np.bool_), np.zeros((K, G), np.bool_),
            np.zeros((K, G), np.int64), np.zeros(K, np.int64), np.zeros(K, np.int64))


@njit(cache=True)
def _solve_row(row, off, K, L, complete, n, user_tol, absum, s, pred, mode, P, Qs, lower, upper, ws, sh, bs):
    """All pairwise problems (and with mode FULL the per-class bounds) of one row for window size L.

    Fills P / Qs (K, K) (mode RADIUS: row `pred` only) and lower / upper (K,) (FULL); ws: `_tables`
    for a window size >= L, bs: `_scratch(K)`. Returns (pairs valid, bounds need larger windows, radius decided inside
    the band, some pair decided inside the band) — the band flags as `certificates._solve` sets them."""
    G = 2 * K
    GL = G * L
    X, cut, Xc, c, tag, buf_v, buf_t, Cc, CT, V, Q2, cnt = ws
    nz = _build_tables(row, off, K, L, X, cut, Xc, c, tag, buf_v, buf_t, Cc, CT, V, Q2, cnt, 0 if sh is None else sh)
    cutmax = 0.0
    for g in range(G):
        if cut[g] > cutmax:
            cutmax = cut[g]
    (NR, member1, member2, dest, new, signed, prio, jstar, rest, lower_pair, R, beat, top2, fi, f, nb, terms, sR,
     sc, ptr, val, scn_, wn_, T1v, A, worst, first_free, fu, present, si, sf, M1, M2, D, nbeats, active) = bs
    slack = 16.0 * (n + G * L + 16) * _EPS * absum
    tol = user_tol + slack  # an attack succeeds within tol; a verified attack wins by more than tol
    band = 2.0 * user_tol + 4.0 * slack

    pairs_ok = True
    nr_any = False
    best = np.inf
    for a in range(K):
        if mode == MODE_RADIUS and a != pred:
            continue
        ok, near = _pair_row(s, tol, band, absum, Cc, CT, Xc, Q2, V, tag, sh, cut, cutmax, GL, K, a, P, Qs, NR, si, sf)
        pairs_ok = pairs_ok and ok
        nr_any = nr_any or near
        if a == pred:
            for b in range(K):
                if b != a and P[a, b] < best:
                    best = P[a, b]
    # rows to resolve exactly: top two scores within the band, or a pair attaining the radius decided in it
    second = -np.inf
    for k in range(K):
        if k != pred and s[k] > second:
            second = s[k]
    radius_band = s[pred] - second <= band
    for b in range(K):
        if b != pred and NR[pred, b] and P[pred, b] == best:
            radius_band = True
    if mode != MODE_FULL:
        return pairs_ok, False, radius_band, nr_any
    if not pairs_ok and not complete:  # the row is redone with larger windows anyway
        return pairs_ok, True, radius_band, nr_any

    # ----- per-class bounds (`certificates._solve`, mode 'full')
    miss = False
    for cc in range(K):
        # binding rival: argmax_j P(j, cc) with -1 on the diagonal
        js = 0
        best = -1.0 if cc == 0 else P[0, cc]
        for j in range(1, K):
            v = -1.0 if j == cc else P[j, cc]
            if v > best:
                best = v
                js = j
        jstar[cc] = js
        lower[cc] = max(best, 0.0)
        upper[cc] = np.inf
        rest[cc] = False
        if cc == pred:
            lower[cc] = 0.0
            upper[cc] = 0.0
            continue
        if not np.isfinite(lower[cc]):
            continue
        # (1) greedy attack of the binding pair (j*, cc)
        q1 = Qs[js, cc]
        ver = False
        if q1 >= 0:
            for g in range(G):
                cls = g // 2
                member1[g] = cls != js and cls != cc
                member2[g] = g == 2 * js or g == 2 * cc + 1
                dest[g] = cc if g % 2 == 0 else js
            cnt = _after(s, Cc, CT, tag, sh, Xc, Q2, K, q1, member1, member2, dest, new, signed)
            ver = _wins(new, cc, tol)
            if ver:
                upper[cc] = float(cnt)
        if ver:
            continue
        rest[cc] = True
        nbeat = 0
        for k in range(K):
            if k != cc and _beats(s, cc, k):
                nbeat += 1
        nbeats[cc] = nbeat
    # (2) safe orders, variant by variant, the searches of all classes of a variant in lockstep (each
    # class's searches depend only on its own earlier ones). Variants 3 / 5 (prio: the classes that beat
    # cc) repeat variants 2 / 4 (prio: t alone) when t is the only class that beats cc: the same search,
    # skipped.
    for variant in range(2, 6):
        nact = 0
        for cc in range(K):
            if not rest[cc]:
                continue
            js = jstar[cc]
            t = js if variant < 4 else pred
            if not ((variant < 4 or js != pred) and upper[cc] > lower[cc]):
                continue
            if (variant == 3 or variant == 5) and nbeats[cc] == 1 and _beats(s, cc, t):
                continue
            for k in range(K):
                if variant == 2 or variant == 4:
                    prio[k] = k == t
                else:
                    prio[k] = k != cc and _beats(s, cc, k)
            for g in range(G):
                cls = g // 2
                if g % 2 == 0:
                    M1[cc, g] = cls != cc and not prio[cls]
                    M2[cc, g] = cls != cc and prio[cls]
                    D[cc, g] = cc
                else:
                    M1[cc, g] = False
                    M2[cc, g] = g == 2 * cc + 1
                    D[cc, g] = t
            active[nact] = cc
            nact += 1
        _safe_searches(s, tol, Cc, CT, Xc, Q2, tag, sh, K, GL, active, nact, M1, M2, D, upper, new, signed, si)
    for cc in range(K):
        lower_pair[cc] = lower[cc]
    # Lagrangian lower bounds where the pairwise bound is not tight
    if K >= 3:
        for cc in range(K):
            if cc == pred or not (lower[cc] < upper[cc]) or not np.isfinite(lower[cc]):
                continue
            nbeat = 0
            for k in range(K):
                beat[k] = k != cc and _beats(s, cc, k)
                if beat[k]:
                    nbeat += 1
                top2[k] = False
            # the two rivals with the largest P(j, cc) (first index among equals)
            first = -1
            for rep in range(2):
                bi = -1
                bv = -np.inf
                for k in range(K):
                    if k == cc or k == first:
                        continue
                    if bi < 0 or P[k, cc] > bv:
                        bi = k
                        bv = P[k, cc]
                top2[bi] = True
                first = bi
            all_ne_beat = False
            top2_ne_beat = False
            for k in range(K):
                if k != cc and not beat[k]:
                    all_ne_beat = True
                if top2[k] != beat[k]:
                    top2_ne_beat = True
            # |top2| == 2 always (K >= 3); top2 differs from all rivals iff K > 3
            for which in range(3):
                if which == 0:
                    use = nbeat >= 2
                elif which == 1:
                    use = all_ne_beat
                else:
                    use = top2_ne_beat and K > 3
                if not use or not (lower[cc] < upper[cc]):
                    continue
                for k in range(K):
                    if which == 0:
                        R[k] = beat[k]
                    elif which == 1:
                        R[k] = k != cc
                    else:
                        R[k] = top2[k]
                lb, ok = _lagrangian(s, tol, c, CT, tag, sh, Xc, cut, K, GL, nz, cc, R, fi, f, nb, terms, sR, fu, present)
                if ok and lb > lower[cc]:
                    lower[cc] = lb
    # (3) sequential greedy where a gap remains
    for cc in range(K):
        if not rest[cc]:
            continue
        if upper[cc] > lower[cc]:
            if np.isfinite(upper[cc]):
                cap = upper[cc] - 1.0
            else:
                cap = 3.0 * lower_pair[cc] + 10.0
            steps = int(min(cap, float(GL)))
            cnt = _greedy_moves(s, X, tol, K, L, cc, steps, sc, ptr, val, scn_, wn_, T1v, A, worst, first_free)
            if cnt < upper[cc]:
                upper[cc] = cnt
        if not np.isfinite(upper[cc]) and cutmax > 0.0:
            miss = True
    return pairs_ok, miss, radius_band, nr_any


# --------------------------------------------------------------------------- rows
@njit(cache=True, parallel=True)
def certify_rows(S, off, first_window, max_group, growth, user_tol, mode, tie, want_pairs,
                 pred, radius, own, band, pairs_band, nonfinite, P_out, lower_out, upper_out, nchunks):
    """Certificates of the rows of S (B, n): class-grouped, each class segment sorted ascending.

    off (K+1,) class segment offsets; windows start at `first_window` entries per group and grow
    by `growth` (capped at `max_group`) on the rows that need it, as in `certificates._run`;
    user_tol (B,) the absolute tolerance of every row. mode: MODE_RADIUS (radius and own costs),
    MODE_PAIRS (all pairwise costs), MODE_FULL (radius and per-class bounds; with want_pairs also
    the pairwise costs, taken at the window size where the pairs alone are accepted). tie:
    TIE_INDEX or TIE_ATTACKER for P. Outputs (written in place): pred, radius (B,) int64; own,
    lower, upper (B, K); P_out (B, K, K); band (B,): the row was decided inside the rounding /
    tolerance band (resolved exactly by the caller); pairs_band (B,): the same for the pairwise
    costs alone; nonfinite (B,): a score sum is not finite (nothing else is computed for the row).
    """
    B, n = S.shape
    K = off.shape[0] - 1
    # rows in contiguous chunks, a few per thread: the work space is allocated once per chunk
    nchunks = max(1, min(B, nchunks))
    for ch in prange(nchunks):
        ws0 = _tables(K, first_window)
        bs = _scratch(K)
        ab = np.empty(n)
        frames = np.empty((3, 64), np.int64)
        vals = np.empty(64)
        s = np.empty(K)
        P = np.zeros((K, K))
        Qs = np.full((K, K), -1, np.int64)
        lower = np.zeros(K)
        upper = np.zeros(K)
        for i in range(ch * B // nchunks, (ch + 1) * B // nchunks):
            _certify_row(S[i], i, off, K, n, first_window, max_group, growth, user_tol, mode, tie, want_pairs,
                         pred, radius, own, band, pairs_band, nonfinite, P_out, lower_out, upper_out,
                         ws0, bs, ab, frames, vals, s, P, Qs, lower, upper)


@njit(cache=True)
def _certify_row(row, i, off, K, n, first_window, max_group, growth, user_tol, mode, tie, want_pairs,
                 pred, radius, own, band, pairs_band, nonfinite, P_out, lower_out, upper_out,
                 ws0, bs, ab, frames, vals, s, P, Qs, lower, upper):
    """Row i of `certify_rows` (ws0: `_tables` for the first window, bs: `_scratch(K)`; ab (n,), frames,
    vals (`_pairwise_sum_in`), s (K,), P, Qs (K, K), lower, upper (K,): scratch)."""
    for j in range(n):
        ab[j] = abs(row[j])
    absum = 0.0 + _pairwise_sum_in(ab, 0, n, frames, vals)  # np.sum
    finite = np.isfinite(absum)
    for k in range(K):
        s[k] = 0.0 + _pairwise_sum_in(row, off[k], off[k + 1] - off[k], frames, vals)
        finite = finite and np.isfinite(s[k])
    nonfinite[i] = not finite
    if not finite:
        return
    p = _argmax(s)
    pred[i] = p
    for a in range(K):
        lower[a] = 0.0
        upper[a] = 0.0
        for b in range(K):
            P[a, b] = 0.0
            Qs[a, b] = -1
    L = first_window
    ws = ws0
    pairs_taken = not (mode == MODE_PAIRS or want_pairs)
    while True:
        complete = L >= max_group
        if 2 * K * L <= _DENSE_COUNTS:
            pairs_ok, miss, radius_band, nr_any = _solve_row(row, off, K, L, complete, n, user_tol[i], absum, s, p,
                                                             mode, P, Qs, lower, upper, ws, None, bs)
        else:
            pairs_ok, miss, radius_band, nr_any = _solve_row(row, off, K, L, complete, n, user_tol[i], absum, s, p,
                                                             mode, P, Qs, lower, upper, ws, _SPARSE_SHIFT, bs)
        if not pairs_taken and (pairs_ok or complete):
            pairs_taken = True
            pairs_band[i] = nr_any
            for a in range(K):
                for b in range(K):
                    x = P[a, b]
                    if tie == TIE_ATTACKER and a != b and s[a] == s[b]:
                        x = 0.0
                    P_out[i, a, b] = x
        if (pairs_ok and not miss) or complete:
            if mode == MODE_RADIUS:
                band[i] = radius_band
            elif mode == MODE_PAIRS:
                band[i] = nr_any
            else:
                band[i] = radius_band or nr_any
            break
        L = min(max_group, L * growth)
        ws = _tables(K, L)
    best = np.inf
    for b in range(K):
        x = np.inf if b == p else P[p, b]
        if x < best:
            best = x
        own[i, b] = 0.0 if b == p else x
    rad = int(best) - 1 if np.isfinite(best) else -1
    radius[i] = n if rad < 0 else rad
    if mode == MODE_FULL:
        for k in range(K):
            lower_out[i, k] = lower[k]
            upper_out[i, k] = upper[k]


_MODES = {"radius": MODE_RADIUS, "pairs": MODE_PAIRS, "full": MODE_FULL}
_TIES = {"index": TIE_INDEX, "attacker": TIE_ATTACKER}


def solve_block(S: np.ndarray, off: np.ndarray, first_window: int, max_group: int, growth: int, user_tol,
                mode: str, tie: str, want_pairs: bool) -> dict:
    """Run `certify_rows` on one block of sorted rows S (B, n) with absolute tolerances user_tol (B,).

    Returns a dict: prediction, radius (B,) int64 (n: no attack exists); own (B, K); band (B,) bool;
    P (B, K, K) and pairs_band (B,) for mode 'pairs' or want_pairs (tie rule `tie`); lower, upper
    (B, K) for mode 'full'. Raises FloatingPointError where a score sum is not finite.
    """
    S = np.ascontiguousarray(S, dtype=np.float64)
    off = np.ascontiguousarray(off, dtype=np.int64)
    user_tol = np.ascontiguousarray(np.broadcast_to(np.asarray(user_tol, dtype=np.float64), S.shape[:1]))
    B = S.shape[0]
    K = off.shape[0] - 1
    pairs = mode == "pairs" or want_pairs
    full = mode == "full"
    out = {"prediction": np.zeros(B, np.int64), "radius": np.zeros(B, np.int64), "own": np.zeros((B, K)),
           "band": np.zeros(B, np.bool_), "pairs_band": np.zeros(B, np.bool_),
           "P": np.zeros((B, K, K) if pairs else (0, K, K)), "lower": np.zeros((B, K) if full else (0, K)),
           "upper": np.zeros((B, K) if full else (0, K))}
    nonfinite = np.zeros(B, np.bool_)
    certify_rows(S, off, int(first_window), int(max_group), int(growth), user_tol, _MODES[mode], _TIES[tie],
                 bool(want_pairs), out["prediction"], out["radius"], out["own"], out["band"], out["pairs_band"],
                 nonfinite, out["P"], out["lower"], out["upper"], 4 * numba.get_num_threads())
    if nonfinite.any():
        raise FloatingPointError("non-finite intermediate in the certificate (a score sum overflowed); "
                                 "the range guard should have rescaled this row")
    if not pairs:
        del out["P"], out["pairs_band"]
    if not full:
        del out["lower"], out["upper"]
    return out


def compile_count() -> int:
    """Number of machine-code versions of the row kernel built (or loaded from the cache) in this process."""
    return len(certify_rows.signatures)


# --------------------------------------------------------------------------- exact resolution of band rows
# The rows the float core decides inside its rounding / tolerance band are recomputed exactly
# (`certificates._resolve_exact`). Every decision there is the sign of a sum of float64 terms
# (weights, tolerances, 2|w|): the sum is accumulated without error as a non-overlapping expansion
# (Shewchuk's msum: the float partials sum to it exactly, the largest one carries its sign), so no
# big-integer arithmetic is needed. Valid while no term or sum overflows: the caller passes only
# rows whose weights and tolerance are at most `EXACT_MAX` in magnitude.
EXACT_MAX = 2.0 ** 900
_PARTIALS = 96  # more than the non-overlapping float64 partials any sum can need (~2100 bits / 53)


@njit(cache=True)
def _xadd(part, npart, x):
    """Add x to the expansion part[:npart] (exactly); returns its new length."""
    i = 0
    for k in range(npart):
        y = part[k]
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo != 0.0:
            part[i] = lo
            i += 1
        x = hi
    part[i] = x
    return i + 1


@njit(cache=True)
def _xsign(part, npart):
    """Sign (-1, 0, 1) of the exact sum of the expansion part[:npart]."""
    for k in range(npart - 1, -1, -1):
        if part[k] > 0.0:
            return 1
        if part[k] < 0.0:
            return -1
    return 0


@njit(cache=True)
def _xscore_diff(w, perm, off, a, b, part):
    """part := the expansion of s_a - s_b (exact class scores); returns its length."""
    npart = 0
    for t in range(off[a], off[a + 1]):
        npart = _xadd(part, npart, w[perm[t]])
    for t in range(off[b], off[b + 1]):
        npart = _xadd(part, npart, -w[perm[t]])
    return npart


@njit(cache=True)
def _xfactor(w, y, j, a, b):
    """Factor of sample j in the pair problem (a, b) (docs/math.md §3): 2 for a's positive and b's
    negative weights, 0 for a's negative, b's positive and zero weights, 1 otherwise."""
    x = w[j]
    if x == 0.0:
        return 0
    if y[j] == a:
        return 2 if x > 0.0 else 0
    if y[j] == b:
        return 0 if x > 0.0 else 2
    return 1


@njit(cache=True)
def _xnext(w, y, ordr, a, b, ptr, f):
    """Next position >= ptr in ordr (indices by decreasing |w|, stable) whose factor is f (len: none)."""
    n = ordr.shape[0]
    while ptr < n and _xfactor(w, y, ordr[ptr], a, b) != f:
        ptr += 1
    return ptr


@njit(cache=True)
def _xorder(w, y, ordr, a, b, idx):
    """Greedy order of pair (a, b) into idx: active samples by decreasing reduction f |w|, then
    decreasing |w|, then index (`certificates._ExactRow._order`); returns their number."""
    n = ordr.shape[0]
    p1 = _xnext(w, y, ordr, a, b, 0, 1)
    p2 = _xnext(w, y, ordr, a, b, 0, 2)
    m = 0
    while p1 < n or p2 < n:
        if p2 >= n:
            take1 = True
        elif p1 >= n:
            take1 = False
        else:
            v1 = abs(w[ordr[p1]])
            v2 = abs(w[ordr[p2]])
            # keys |w1| and 2|w2| (exact below EXACT_MAX); among equal keys the larger |w| (factor 1)
            take1 = v1 >= 2.0 * v2
        if take1:
            idx[m] = ordr[p1]
            p1 = _xnext(w, y, ordr, a, b, p1 + 1, 1)
        else:
            idx[m] = ordr[p2]
            p2 = _xnext(w, y, ordr, a, b, p2 + 1, 2)
        m += 1
    return m


@njit(cache=True)
def _xpair(w, y, perm, off, ordr, a, b, strict, tie_attacker, tol, part, idx):
    """Exact P(a, b) (`certificates._ExactRow.pair`): fewest flips after which b beats a (0: b
    already does, inf: never); tol > 0: within tol counts (strict: b must win by more than tol)."""
    npart = _xscore_diff(w, perm, off, a, b, part)  # M = s_a - s_b
    sm = _xsign(part, npart)
    tie_b = b < a or tie_attacker
    if sm < 0 or (sm == 0 and tie_b):
        return 0.0
    # D = prefix - need: starts at -need
    for k in range(npart):
        part[k] = -part[k]
    if tol == 0.0:
        strict_gt = not tie_b
    elif strict:
        npart = _xadd(part, npart, -tol)
        strict_gt = True
    else:
        npart = _xadd(part, npart, tol)
        strict_gt = False
    m = _xorder(w, y, ordr, a, b, idx)
    for q in range(m + 1):
        if q > 0:
            j = idx[q - 1]
            x = abs(w[j])
            npart = _xadd(part, npart, x)
            if _xfactor(w, y, j, a, b) == 2:
                npart = _xadd(part, npart, x)
        sg = _xsign(part, npart)
        if sg > 0 or (sg == 0 and not strict_gt):
            return float(max(q, 1))
    return np.inf


@njit(cache=True)
def _xwins(w, y, perm, off, K, c, idx, m, a, tol, part):
    """c is the prediction after relabelling the first m samples of idx (positive weights to c,
    negative ones to a), by more than tol (tol > 0) or by the tie rule (tol == 0)."""
    for k in range(K):
        if k == c:
            continue
        npart = _xscore_diff(w, perm, off, c, k, part)
        for t in range(m):
            j = idx[t]
            x = w[j]
            dest = c if x > 0.0 else a
            if y[j] == c:
                npart = _xadd(part, npart, -x)
            if y[j] == k:
                npart = _xadd(part, npart, x)
            if dest == c:
                npart = _xadd(part, npart, x)
            if dest == k:
                npart = _xadd(part, npart, -x)
        if tol > 0.0:
            npart = _xadd(part, npart, -tol)
            if _xsign(part, npart) <= 0:
                return False
        else:
            sg = _xsign(part, npart)
            if sg < 0 or (sg == 0 and k < c):
                return False
    return True


@njit(cache=True)
def _xrow(w, y, perm, off, K, tol, mode, tie_attacker, pred, radius, exact, own, lower, upper, P, part, idx):
    """One row in exact arithmetic (`certificates._ExactRow`): mode PAIRS fills P (K, K) with tie
    rule tie_attacker; otherwise pred, radius, exact, own (K,) and, in mode FULL, lower / upper
    (K,) (`_ExactRow.radius` and `_ExactRow.class_bounds`)."""
    n = w.shape[0]
    ordr = np.argsort(-np.abs(w), kind="mergesort")
    if mode == MODE_PAIRS:
        for a in range(K):
            for b in range(K):
                P[a, b] = 0.0 if a == b else _xpair(w, y, perm, off, ordr, a, b, False, tie_attacker, tol, part, idx)
        return
    p = 0
    for k in range(1, K):
        if _xsign(part, _xscore_diff(w, perm, off, k, p, part)) > 0:
            p = k
    pred[0] = p
    best = np.inf
    best_strict = np.inf
    for b in range(K):
        own[b] = 0.0
        if b == p:
            continue
        own[b] = _xpair(w, y, perm, off, ordr, p, b, False, False, tol, part, idx)
        st = _xpair(w, y, perm, off, ordr, p, b, True, False, tol, part, idx) if tol > 0.0 else own[b]
        best = min(best, own[b])
        best_strict = min(best_strict, st)
    radius[0] = int(best - 1.0) if np.isfinite(best) else n
    ex = True
    if tol > 0.0:
        ex = best_strict == best
        for k in range(K):
            if k != p:
                npart = _xadd(part, _xscore_diff(w, perm, off, p, k, part), -tol)
                if _xsign(part, npart) <= 0:
                    ex = False
    exact[0] = ex
    if mode != MODE_FULL:
        return
    for c in range(K):
        lower[c] = 0.0
        upper[c] = 0.0
        if c == p:
            continue
        # binding rival: the largest P(j, c), the smallest j among equals
        jb = -1
        pj = -1.0
        for j in range(K):
            if j != c:
                x = _xpair(w, y, perm, off, ordr, j, c, False, False, tol, part, idx)
                if x > pj:
                    pj = x
                    jb = j
        lower[c] = pj
        upper[c] = np.inf
        if not np.isfinite(pj):
            continue
        pm = _xpair(w, y, perm, off, ordr, jb, c, True, False, tol, part, idx) if tol > 0.0 else pj
        if not np.isfinite(pm):
            continue
        m = min(int(pm), _xorder(w, y, ordr, jb, c, idx))
        if _xwins(w, y, perm, off, K, c, idx, m, jb, tol, part):
            upper[c] = float(m)


@njit(cache=True, parallel=True)
def exact_rows(W, y, perm, off, tol, mode, tie, pred, radius, exact, own, lower, upper, P):
    """`_xrow` for every row of W (R, n) (labels y (n,), perm / off the class grouping of
    `certificates._Layout`, tol (R,)); outputs pred, radius, exact (R,), own, lower, upper (R, K),
    P (R, K, K) (mode PAIRS; tie TIE_INDEX or TIE_ATTACKER)."""
    R, n = W.shape
    K = off.shape[0] - 1
    for r in prange(R):
        part = np.empty(_PARTIALS)
        idx = np.empty(n, np.int64)
        _xrow(W[r], y, perm, off, K, tol[r], mode, tie == TIE_ATTACKER, pred[r:r + 1], radius[r:r + 1],
              exact[r:r + 1], own[r], lower[r], upper[r], P[r], part, idx)


def resolve_rows(W: np.ndarray, labels: np.ndarray, perm: np.ndarray, off: np.ndarray, tol: np.ndarray, mode: str,
                 tie: str) -> dict:
    """Exact values of the rows of W (R, n) (`exact_rows`): |W| and tol (R,) at most `EXACT_MAX`.

    Returns a dict: prediction, radius (R,) int64 (n: no attack), radius_exact (R,) bool, own,
    lower, upper (R, K) (modes 'radius' / 'full'); P (R, K, K) (mode 'pairs', tie rule `tie`).
    """
    W = np.ascontiguousarray(W, dtype=np.float64)
    R = W.shape[0]
    K = len(off) - 1
    out = {"prediction": np.zeros(R, np.int64), "radius": np.zeros(R, np.int64),
           "radius_exact": np.ones(R, np.bool_), "own": np.zeros((R, K)), "lower": np.zeros((R, K)),
           "upper": np.zeros((R, K)), "P": np.zeros((R, K, K))}
    exact_rows(W, np.ascontiguousarray(labels, dtype=np.int64), np.ascontiguousarray(perm, dtype=np.int64),
               np.ascontiguousarray(off, dtype=np.int64), np.ascontiguousarray(tol, dtype=np.float64), _MODES[mode],
               _TIES[tie], out["prediction"], out["radius"], out["radius_exact"], out["own"], out["lower"],
               out["upper"], out["P"])
    return out
