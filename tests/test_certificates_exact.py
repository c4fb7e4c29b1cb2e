"""The exact post-pass of `certify` / `pairwise_costs` (rows decided inside the rounding band).

The compiled exact kernel (`_scalabel_kernel.resolve_rows`: error-free float expansions) must give
exactly what the Python-integer reference (`certificates._ExactRow`) gives, on adversarial rows:
exact ties, integer, repeated and decimal weights, values one ulp apart, zeros, magnitudes from
subnormal to 2^800, zero and positive tolerances (also tolerances equal to a margin). Its sign
primitive is checked against `fractions.Fraction`. Fresh seed per run (KERNELCERT_EXACT_SEED replays).
The brute-force enumeration oracle of tests/test_soundness.py runs on top of it through `certify`.
"""
import os
import secrets
from fractions import Fraction

import numpy as np
import pytest

from kernelcert import _scalabel_kernel, certificates
from kernelcert.certificates import certify, pairwise_costs

SEED = int(os.environ.get("KERNELCERT_EXACT_SEED", secrets.randbits(32)))
print(f"test_certificates_exact seed: {SEED} (replay with KERNELCERT_EXACT_SEED={SEED})")

KINDS = ("int", "decimal", "ulp", "scaled", "wide", "normal", "zeros", "repeated")


def draw(rng, kind, n):
    if kind == "int":
        return rng.integers(-3, 4, n).astype(float)
    if kind == "decimal":
        return rng.choice([0.1, 0.2, 0.3, -0.1, -0.2, -0.3, 0.0, 0.6], n)
    if kind == "ulp":
        return rng.choice([1.0, np.nextafter(1.0, 2.0), -1.0, np.nextafter(-1.0, -2.0), 0.5, 2.0], n)
    if kind == "scaled":
        return rng.standard_normal(n) * 2.0 ** rng.integers(-60, 60, n)
    if kind == "wide":  # every magnitude the compiled path accepts, subnormals included
        return rng.choice([1.0, -1.0], n) * 2.0 ** rng.integers(-1074, 801, n).astype(float)
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "zeros":
        return rng.integers(-1, 2, n) * (rng.random(n) < 0.3).astype(float)
    v = rng.standard_normal(2)
    return rng.choice([v[0], -v[0], 2 * v[0], v[1], 0.0], n)


def python_rows(W, y, K, tol, mode, tie):
    """The Python-integer reference for every row (the values `_resolve_exact` takes from it)."""
    out = []
    for r in range(W.shape[0]):
        row = certificates._ExactRow(W[r], y, K, float(tol[r]))
        if mode == "pairs":
            out.append(np.array([[row.pair(a, b, tie=tie)[0] if a != b else 0.0 for b in range(K)] for a in range(K)]))
            continue
        radius, exact, own = row.radius()
        item = [row.prediction, radius, exact, own]
        if mode == "full":
            item += list(row.class_bounds())
        out.append(item)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_exact_rows_equal_python_integers(kind):
    rng = np.random.default_rng([SEED, KINDS.index(kind)])
    for trial in range(40):
        K = int(rng.integers(2, 6))
        n = int(rng.integers(1, 14))
        y = rng.integers(0, K, n)
        W = np.stack([draw(rng, kind, n) for _ in range(3)])
        choice = trial % 3
        if choice == 0:
            tol = np.zeros(3)
        elif choice == 1:
            tol = np.abs(draw(rng, kind, 3))
        else:  # a tolerance equal to a score margin: decisions exactly at the tolerance
            s = np.array([[W[r, y == k].sum() for k in range(K)] for r in range(3)])
            tol = np.abs(s[:, 0] - s[:, -1])
        layout = certificates._Layout(y, K)
        msg = f"seed {SEED}, {kind}, trial {trial}: W={W.tolist()!r}, y={y.tolist()}, K={K}, tol={tol.tolist()}"
        for mode, tie in (("pairs", "index"), ("pairs", "attacker"), ("radius", "index"), ("full", "index")):
            got = _scalabel_kernel.resolve_rows(W, y, layout.perm, layout.off, tol, mode, tie)
            for r, ref in enumerate(python_rows(W, y, K, tol, mode, tie)):
                where = f"{msg}, mode {mode}/{tie}, row {r}"
                if mode == "pairs":
                    np.testing.assert_array_equal(got["P"][r], ref, err_msg=where)
                    continue
                assert got["prediction"][r] == ref[0], where
                assert got["radius"][r] == ref[1], where
                assert got["radius_exact"][r] == ref[2], where
                np.testing.assert_array_equal(got["own"][r], ref[3], err_msg=where)
                if mode == "full":
                    np.testing.assert_array_equal(got["lower"][r], ref[4], err_msg=where)
                    np.testing.assert_array_equal(got["upper"][r], ref[5], err_msg=where)


def test_expansion_sign_equals_rational_sign():
    """`_xadd` / `_xsign`: the sign of a float sum computed without error, against Fraction."""
    rng = np.random.default_rng([SEED, 99])
    part = np.empty(_scalabel_kernel._PARTIALS)
    for trial in range(400):
        n = int(rng.integers(1, 30))
        kind = KINDS[trial % len(KINDS)]
        x = draw(rng, kind, n)
        if trial % 2:  # force cancellation: append the negated terms but one, shuffled
            x = np.concatenate([x, -x[1:]])
            rng.shuffle(x)
        npart = 0
        for v in x:
            npart = _scalabel_kernel._xadd(part, npart, float(v))
        exact = sum((Fraction(float(v)) for v in x), Fraction(0))
        want = (exact > 0) - (exact < 0)
        assert _scalabel_kernel._xsign(part, npart) == want, f"seed {SEED}: {x.tolist()!r}"
        assert sum((Fraction(float(p)) for p in part[:npart]), Fraction(0)) == exact


def _tie_rows(rng, t, n, K):
    """Rows of a tiny partition: integer and repeated weights, classes absent (scores tied at 0)."""
    y = rng.integers(0, max(2, K // 2), n)  # the upper classes hold no sample
    W = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 0.1, 0.2, 0.3], (t, n))
    return W, y


def test_band_rows_take_the_compiled_path_and_agree_with_the_fallback(monkeypatch):
    rng = np.random.default_rng([SEED, 7])
    W, y = _tie_rows(rng, 40, 12, 6)
    ref_cert, ref_P = certify(W, y, 6, pairwise="attacker")
    ref_Pi = pairwise_costs(W, y, 6)

    class Refused(certificates._ExactRow):
        def __init__(self, *args, **kwargs):
            raise AssertionError("the Python-integer path ran on a row the compiled path accepts")

    with monkeypatch.context() as m:  # every band row here is in the compiled path's range
        m.setattr(certificates, "_ExactRow", Refused)
        cert, P = certify(W, y, 6, pairwise="attacker")
        Pi = pairwise_costs(W, y, 6)
    with monkeypatch.context() as m:  # everything through the Python-integer fallback
        m.setattr(_scalabel_kernel, "EXACT_MAX", -1.0)
        slow, P_slow = certify(W, y, 6, pairwise="attacker")
        Pi_slow = pairwise_costs(W, y, 6)
    for f in ("prediction", "radius", "radius_exact", "cost_lower", "cost_upper", "exact"):
        np.testing.assert_array_equal(getattr(cert, f), getattr(slow, f), err_msg=f)
        np.testing.assert_array_equal(getattr(ref_cert, f), getattr(slow, f), err_msg=f)
    np.testing.assert_array_equal(P, P_slow)
    np.testing.assert_array_equal(ref_P, P_slow)
    np.testing.assert_array_equal(Pi, Pi_slow)
    np.testing.assert_array_equal(ref_Pi, Pi_slow)
    assert cert.radius_exact.all()


def test_rows_beyond_the_compiled_range_fall_back(monkeypatch):
    """Weights above EXACT_MAX go to the Python-integer path (and only those)."""
    calls = []

    class Counted(certificates._ExactRow):
        def __init__(self, w, *args, **kwargs):
            calls.append(float(np.abs(w).max()))
            super().__init__(w, *args, **kwargs)

    monkeypatch.setattr(certificates, "_ExactRow", Counted)
    y = np.array([0, 0, 1, 1])
    W = np.array([[1.0, -1.0, 1.0, -1.0], [1e300, -1e300, 1e300, -1e300]])  # both rows: exact ties
    cert = certify(W, y, 2)
    assert calls and min(calls) > _scalabel_kernel.EXACT_MAX
    np.testing.assert_array_equal(cert.prediction, [0, 0])
    np.testing.assert_array_equal(cert.radius, [0, 0])
