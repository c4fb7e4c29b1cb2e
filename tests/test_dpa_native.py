"""The fused DPA pass `voting.argmax_plurality_margin`: its C pass (kernelcert/_argmax_c.c, float32,
8 <= K <= 16) and its numba kernel against a numpy oracle and each other, bit for bit, on fresh
random scores with exact ties (also -0.0 against +0.0), extreme finite values and non-finite ones."""

import platform
from pathlib import Path

import numpy as np
import pytest

from kernelcert import voting
from kernelcert.ensemble import dpa_from_scores
from kernelcert.voting import NATIVE_DPA, argmax_plurality_margin, scores_for_argmax


def _oracle(s):
    """numpy: votes = first maximiser (numpy.argmax), counts, plurality p (first maximiser of the
    counts) and radius (n_p - max_{c != p}(n_c + [c < p])) // 2, one test point at a time."""
    t, M, K = s.shape
    votes = s.argmax(2)
    counts = np.stack([np.bincount(v, minlength=K) for v in votes]).astype(np.int64).reshape(t, K)
    p = counts.argmax(1)
    r = np.empty(t, np.int64)
    for i in range(t):
        r[i] = (counts[i, p[i]] - max(counts[i, c] + (c < p[i]) for c in range(K) if c != p[i])) // 2
    return p, r, counts


def _run(s, native):
    s = scores_for_argmax(s)
    t, _, K = s.shape
    counts = np.full((t, K), -5, np.int64)  # overwritten, not accumulated
    p, r = np.empty(t, np.int64), np.empty(t, np.int64)
    bad = voting._argmax_margin_into(s, counts, p, r, native)
    return bad, p, r, counts


def _avx2_fma():
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags and "bmi1" in flags


def test_native_pass_is_built_where_the_cpu_has_it():
    """`make install` (pip install -e .) builds kernelcert/_argmax_c.c; on x86-64 Linux with AVX2 and
    FMA the DPA of float32 scores must run it (a missing build falls back to numba silently)."""
    if platform.machine() not in ("x86_64", "AMD64") or not _avx2_fma():
        pytest.skip("the C pass needs x86-64 with AVX2, FMA and BMI1")
    assert NATIVE_DPA, "kernelcert._argmax_c is not built: run `make install` (pip install -e .)"


def _tied_scores(rng, t, M, K, kind):
    if kind == "few values":  # many exact ties of scores, and of vote counts
        return rng.integers(-2, 3, (t, M, K)).astype(np.float32)
    if kind == "signed zeros":  # -0.0 == +0.0: the first of them wins
        return np.where(rng.random((t, M, K)) < 0.5, np.float32(-0.0), np.float32(0.0)) - (
            rng.random((t, M, K)) < 0.3).astype(np.float32)
    if kind == "extremes":  # the largest finite floats and subnormals: finite, no error
        vals = np.array([3.4028235e38, -3.4028235e38, 1e-45, -1e-45, 0.0, 1.0], np.float32)
        return vals[rng.integers(0, len(vals), (t, M, K))]
    s = rng.normal(size=(t, M, K)).astype(np.float32)
    if kind == "unanimous":  # every model votes for one class (the C pass's byte counters at their limit)
        s[:, :, rng.integers(K)] += 100
        return s
    s[rng.random((t, M)) < 0.3, :] = s[0, 0, 0]  # whole models tied across every class
    return s


@pytest.mark.parametrize("K", [8, 9, 10, 13, 16])
@pytest.mark.parametrize("kind", ["few values", "signed zeros", "extremes", "normal", "unanimous"])
def test_native_pass_equals_numba_and_numpy(K, kind):
    """C pass == numba kernel == numpy oracle (predictions, radii and counts) on fresh random
    scores, for model counts around the pairs of the C pass (odd and even M) and its byte counters
    (255 pairs, then widened), and one or several test points."""
    if not NATIVE_DPA:
        pytest.skip("the C pass is not built or the CPU lacks AVX2/FMA (see the test above)")
    seed = int(np.random.SeedSequence().entropy % 2**63)  # fresh inputs each run; the seed is in any failure
    rng = np.random.default_rng(seed)
    for t, M in ((23, 1), (23, 2), (23, 3), (23, 7), (23, 32), (23, 33), (7, 509), (5, 510), (5, 511), (3, 1021),
                 (1, 2), (1, 3), (1, 6), (2, 1), (2, 4)):
        s = _tied_scores(rng, t, M, K, kind)
        p0, r0, n0 = _oracle(s)
        for native in (True, False):
            bad, p, r, n = _run(s, native)
            msg = f"seed {seed}, M {M}, native {native}"
            assert not bad, msg
            np.testing.assert_array_equal(p, p0, err_msg=msg)
            np.testing.assert_array_equal(r, r0, err_msg=msg)
            np.testing.assert_array_equal(n, n0, err_msg=msg)
        for dtype in (np.int32, np.uint16) + ((np.uint8,) if M <= 255 else ()):  # smaller counts (numba: converted)
            n = np.full((t, K), 9, dtype)
            p, r = argmax_plurality_margin(s, n)
            np.testing.assert_array_equal(n, n0, err_msg=f"seed {seed}, M {M}, counts {dtype}")
            np.testing.assert_array_equal(p, p0, err_msg=f"seed {seed}, M {M}, counts {dtype}")
        p, r = argmax_plurality_margin(s)  # no counts wanted: the C pass keeps them per row only
        np.testing.assert_array_equal(p, p0, err_msg=f"seed {seed}, M {M}, counts not kept")
        np.testing.assert_array_equal(r, r0, err_msg=f"seed {seed}, M {M}, counts not kept")


@pytest.mark.parametrize("K,dtype", [(2, np.float32), (7, np.float32), (17, np.float32), (43, np.float32),
                                     (10, np.float64), (2, np.float64)])
def test_other_inputs_run_numba_and_equal_numpy(K, dtype):
    """K outside 8..16 or float64: the numba kernel (never the C pass), against the oracle."""
    rng = np.random.default_rng()
    s = rng.integers(-2, 3, (31, 9, K)).astype(dtype)
    assert not voting._native_dpa_applies(scores_for_argmax(s))
    p0, r0, n0 = _oracle(s)
    n = np.empty((31, K), np.int64)
    p, r = argmax_plurality_margin(s, n)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(r, r0)
    np.testing.assert_array_equal(n, n0)


@pytest.mark.parametrize("K", [8, 9, 10, 13, 16])
def test_native_pass_rejects_non_finite_at_every_class(K):
    """NaN, +inf and -inf at every class position (both overlapping loads, their shared classes) and
    in the first, second and last model: ValueError, as the numba kernel; finite extremes pass."""
    rng = np.random.default_rng()
    for bad in (np.nan, np.inf, -np.inf):
        for c in range(K):
            # first and second model of a pair (they share registers), the odd last model (voted alone);
            # a point before the last and the last
            for i, m in ((0, 0), (0, 1), (1, 3), (2, 0), (2, 3), (2, 4)):
                s = rng.normal(size=(3, 5, K)).astype(np.float32)
                s[i, m, c] = bad
                if NATIVE_DPA:
                    assert _run(s, True)[0]
                assert _run(s, False)[0]
                with pytest.raises(ValueError, match="NaN or infinite"):
                    dpa_from_scores(s)
    s = np.full((2, 3, K), np.finfo(np.float32).max, np.float32)
    s[:, :, 1] = -np.finfo(np.float32).max
    np.testing.assert_array_equal(dpa_from_scores(s).prediction, [0, 0])


@pytest.mark.parametrize("K", [9, 10, 13, 15])
def test_native_pass_reads_nothing_past_the_scores(K):
    """Scores that end where an inaccessible page begins (mprotect PROT_NONE): the C pass must not read
    past them (a pair's last chunk is classes K-4..K-1 of each model, overlapping the chunk before).
    A read past the end is a segmentation fault."""
    if not NATIVE_DPA or platform.system() != "Linux":
        pytest.skip("the C pass is not built, or no mprotect")
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page = mmap.PAGESIZE
    rng = np.random.default_rng()
    for t, M in ((1, 2), (1, 5), (2, 6), (3, 7)):
        n = t * M * K
        pages = -(-n * 4 // page)
        buf = mmap.mmap(-1, (pages + 1) * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert libc.mprotect(base + pages * page, page, 0) == 0, ctypes.get_errno()  # PROT_NONE after the data
        s = np.frombuffer(buf, np.float32, n, pages * page - n * 4).reshape(t, M, K)
        s[...] = rng.integers(-2, 3, (t, M, K))
        p0, r0, _ = _oracle(s)
        bad, p, r, _ = _run(s, True)
        assert not bad
        np.testing.assert_array_equal(p, p0)
        np.testing.assert_array_equal(r, r0)
        del s
        libc.mprotect(base + pages * page, page, 3)  # readable and writable again before unmapping
        buf.close()


def test_native_pass_input_checks():
    if not NATIVE_DPA:
        pytest.skip("the C pass is not built")
    from kernelcert import _argmax_c
    s = np.zeros((2, 3, 10), np.float32)
    n, p, r = np.empty((2, 10), np.int64), np.empty(2, np.int64), np.empty(2, np.int64)
    with pytest.raises(ValueError, match="bytes"):
        _argmax_c.argmax_margin_f32(s, 2, 3, 10, np.empty((2, 9), np.int64), p, r)
    with pytest.raises(ValueError, match="8 <= K <= 16"):
        _argmax_c.argmax_margin_f32(np.zeros((2, 3, 7), np.float32), 2, 3, 7, n, p, r)
    for dtype in (np.uint32, np.int16, np.int8, np.float64, np.uint64):  # counts: int64, int32, uint16, uint8 only
        with pytest.raises(ValueError, match="int64, int32, uint16"):
            _argmax_c.argmax_margin_f32(s, 2, 3, 10, np.empty((2, 10), dtype), p, r)
    big = np.zeros((1, 65536, 10), np.float32)
    with pytest.raises(ValueError, match="M <= 65535"):  # uint16 counts must hold M
        _argmax_c.argmax_margin_f32(big, 1, 65536, 10, np.empty((1, 10), np.uint16), p[:1], r[:1])
    with pytest.raises(ValueError, match="counts_out"):
        argmax_plurality_margin(big, np.empty((1, 10), np.uint16))
    with pytest.raises(ValueError, match="M <= 255"):  # uint8 counts: M <= 255
        _argmax_c.argmax_margin_f32(big[:, :256], 1, 256, 10, np.empty((1, 10), np.uint8), p[:1], r[:1])
    read_only = np.empty(2, np.int64)
    read_only.setflags(write=False)
    with pytest.raises(TypeError):  # outputs must be writable
        _argmax_c.argmax_margin_f32(s, 2, 3, 10, n, p, read_only)
    read_only_counts = np.empty((2, 10), np.int64)
    read_only_counts.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):  # counts too, when given
        _argmax_c.argmax_margin_f32(s, 2, 3, 10, read_only_counts, p, r)
    p[:], r[:] = -1, -1
    assert _argmax_c.argmax_margin_f32(s, 2, 3, 10, None, p, r) is False  # counts not stored
    np.testing.assert_array_equal(p, [0, 0])
    np.testing.assert_array_equal(r, [1, 1])
    with pytest.raises((ValueError, BufferError)):  # non-contiguous scores are refused by the buffer protocol
        _argmax_c.argmax_margin_f32(np.zeros((2, 3, 20), np.float32)[:, :, ::2], 2, 3, 10, n, p, r)
    assert _argmax_c.argmax_margin_f32(s, 2, 3, 10, n, p, r) is False
