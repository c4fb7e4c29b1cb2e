"""kernelcert.evidence: one base model's contribution to an aggregation, built by one function.

Checked against direct calls of the certificates it wraps, against the independent white-box ROE
composition of kernelcert.roe, and for soundness against exhaustive relabelling on tiny ensembles."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert import exact, roe
from kernelcert.certificates import certify, pairwise_costs
from kernelcert.ensemble import ensemblecert
from kernelcert.evidence import LEVELS, Evidence, FlipCounts, build_evidence, level_for_fields, stack_evidence

# the brute-force oracle lives in kernelcert.exact (kernelcert.roe in older trees)
brute_force_label_flip_roe_radius = getattr(exact, "brute_force_label_flip_roe_radius", None) or getattr(
    roe, "brute_force_label_flip_roe_radius")


def _problem(rng, t, n, K, integer=False):
    W = rng.integers(-3, 4, size=(t, n)).astype(float) if integer else rng.normal(size=(t, n))
    return W, rng.integers(0, K, n)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 6), st.integers(1, 9), st.integers(2, 4), st.booleans())
def test_evidence_is_the_certificates_it_wraps(seed, t, n, K, integer):
    rng = np.random.default_rng(seed)
    W, y = _problem(rng, t, n, K, integer)
    votes_only = build_evidence(W, y, K, level="votes")
    scores = W @ np.eye(K)[y]
    np.testing.assert_array_equal(votes_only.scores, scores)
    np.testing.assert_array_equal(votes_only.votes, np.argmax(scores, axis=1))
    assert votes_only.radius is None and votes_only.pair_costs is None and votes_only.level == "votes"
    assert votes_only.num_points == t and Evidence(votes=None, scores=scores).num_points == t
    ev = build_evidence(W, y, K, level="pairs")
    cert = certify(W, y, K)
    np.testing.assert_array_equal(ev.votes, cert.prediction)
    np.testing.assert_array_equal(ev.radius, cert.radius)
    np.testing.assert_array_equal(ev.cost_lower, cert.cost_lower)
    np.testing.assert_array_equal(ev.cost_upper, cert.cost_upper)
    np.testing.assert_array_equal(ev.costs_exact, cert.exact)
    np.testing.assert_array_equal(ev.pair_costs, pairwise_costs(W, y, K, tie="attacker"))
    np.testing.assert_array_equal(ev.fallback, cert.prediction != np.argmax(scores, axis=1))
    assert ev.level == "pairs" and build_evidence(W, y, K, level="certificate").level == "certificate"


def test_roe_costs_give_fallback_models_unit_costs():
    lower = np.array([[[0.0, 3.0], [0.0, np.inf]]])  # (t=1, M=2, K=2)
    pair = np.full((1, 2, 2, 2), 5.0)
    ev = Evidence(votes=np.zeros((1, 2), np.int64), scores=np.zeros((1, 2, 2)), cost_lower=lower,
                  pair_costs=pair, fallback=np.array([[False, True]]))
    vc, pc = ev.roe_costs()
    np.testing.assert_array_equal(vc, [[[0.0, 3.0], [1.0, 1.0]]])
    assert np.all(pc[:, 0] == 5.0) and np.all(pc[:, 1] == 1.0)
    with pytest.raises(ValueError, match="level 'pairs'"):
        Evidence(votes=ev.votes, scores=ev.scores).roe_costs()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 4), st.integers(2, 3))
def test_stacked_evidence_drives_whitebox_roe_soundly(seed, M, K):
    """White-box ROE from stacked evidence equals kernelcert.roe's own composition and never exceeds
    the exact radius found by relabelling every label (tiny ensembles)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, M)
    sizes[0] = max(1, min(sizes[0], 12 - int(sizes[1:].sum())))
    problems = [_problem(rng, 3, int(s), K, integer=bool(seed % 2)) for s in sizes]
    stacked = stack_evidence([build_evidence(W, y, K) for W, y in problems])
    assert stacked.votes.shape == (3, M) and stacked.pair_costs.shape == (3, M, K, K)
    res = roe.whitebox_roe(stacked.scores, *stacked.roe_costs())
    n_total = int(sizes.sum())
    radius = np.minimum(res.radius, n_total)
    ref = roe.whitebox_roe_from_label_linear([W for W, _ in problems], [y for _, y in problems], K)
    np.testing.assert_array_equal(res.prediction, ref.prediction)
    np.testing.assert_array_equal(radius, ref.radius)
    if n_total <= 10:
        exact_radius, exact_pred = brute_force_label_flip_roe_radius([W for W, _ in problems],
                                                                     [y for _, y in problems], K)
        np.testing.assert_array_equal(res.prediction, exact_pred)
        assert np.all(radius <= exact_radius)
    # EnsembleCert reads the same stacked evidence
    lo = ensemblecert(stacked.votes, stacked.cost_lower, K)
    hi = ensemblecert(stacked.votes, stacked.cost_upper, K)
    assert np.all(lo.radius <= hi.radius)


def test_empty_model_never_changes():
    ev = build_evidence(np.zeros((2, 0)), np.zeros(0, np.int64), 3)
    np.testing.assert_array_equal(ev.votes, [0, 0])
    np.testing.assert_array_equal(ev.cost_lower, [[0, np.inf, np.inf]] * 2)
    assert np.all(np.isinf(ev.pair_costs[:, 0, 1])) and np.all(ev.pair_costs[:, 1, 1] == 0)
    assert not ev.fallback.any() and ev.costs_exact.all()


def test_levels_and_errors():
    assert LEVELS == ("votes", "certificate", "pairs")
    assert level_for_fields(["votes", "scores"]) == "votes"
    assert level_for_fields(["votes", "radius"]) == "certificate"
    assert level_for_fields(["fallback"]) == "pairs"
    with pytest.raises(ValueError, match="unknown evidence field"):
        level_for_fields(["colour"])
    W, y = _problem(np.random.default_rng(0), 2, 3, 2)
    with pytest.raises(ValueError, match="level must be one of"):
        build_evidence(W, y, 2, level="everything")
    with pytest.raises(ValueError, match="weights must be"):
        build_evidence(W, y[:2], 2)
    with pytest.raises(ValueError, match="present for some models only"):
        stack_evidence([build_evidence(W, y, 2, level="votes"), build_evidence(W, y, 2)])
    with pytest.raises(ValueError, match="at least one"):
        stack_evidence([])


# --------------------------------------------------------------------------- compact pair costs
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 12), st.integers(2, 5), st.sampled_from([np.uint8, np.uint16]))
def test_flip_counts_decode_and_rows_equal_the_float_costs(seed, M, K, dtype):
    """FlipCounts (the run's stored codes) decode to the float64 costs, row gathers included, and white-box
    ROE gives the same certificates from them as from the float64 costs (fallback models as unit costs)."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 15))
    top = np.iinfo(dtype).max
    codes = rng.integers(0, 6, size=(t, M, K, K)).astype(dtype)
    codes[rng.random(codes.shape) < 0.2] = top  # inf
    if rng.random() < 0.3:
        codes[rng.random(codes.shape) < 0.1] = top - 1  # the largest finite count
    want = np.where(codes == top, np.inf, codes.astype(np.float64))
    fc = FlipCounts(codes)
    np.testing.assert_array_equal(fc.decode(), want)
    cls = rng.integers(0, K, t)
    sl = slice(0, t)
    np.testing.assert_array_equal(fc.rows_at(sl, cls), want[np.arange(t), :, cls, :])
    scores = rng.normal(size=(t, M, K))
    lower = np.where(rng.random((t, M, K)) < 0.1, np.inf, rng.integers(0, 6, size=(t, M, K)).astype(float))
    votes = np.argmax(scores, axis=2)
    lower[np.arange(t)[:, None], np.arange(M)[None, :], votes] = 0.0
    fallback = rng.random((t, M)) < 0.2
    dense = Evidence(votes=votes, scores=scores, cost_lower=lower, pair_costs=want, fallback=fallback)
    compact = Evidence(votes=votes, scores=scores, cost_lower=lower, pair_costs=fc, fallback=fallback)
    vc, pc = compact.roe_costs()
    assert isinstance(pc, FlipCounts)
    np.testing.assert_array_equal(pc.decode(), dense.roe_costs()[1])
    block = int(rng.integers(1, 6))
    a = roe.whitebox_roe(scores, *dense.roe_costs(), block_size=block)
    b = roe.whitebox_roe(scores, vc, pc, block_size=block)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    np.testing.assert_array_equal(a.radius, b.radius)
    stacked = stack_evidence([Evidence(votes=votes[:, 0], scores=scores[:, 0], pair_costs=FlipCounts(codes[:, 0]))])
    np.testing.assert_array_equal(stacked.pair_costs[:, 0], want[:, 0])


def test_flip_counts_reject_bad_codes():
    with pytest.raises(TypeError, match="unsigned"):
        FlipCounts(np.zeros((2, 3, 3), np.int16))
    with pytest.raises(ValueError, match="unit mask"):
        FlipCounts(np.zeros((2, 3, 3), np.uint8), unit=np.zeros(3, bool))
    with pytest.raises(ValueError, match="pair_costs must have shape"):
        roe.whitebox_roe(np.zeros((2, 1, 3)), np.zeros((2, 1, 3)), FlipCounts(np.zeros((2, 1, 2, 2), np.uint8)))
