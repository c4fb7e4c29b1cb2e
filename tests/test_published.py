"""kernelcert against the published scripts' algorithms (benchmarks/_published_rules.py, the one
transcription of DPA certify.py, FA FiniteAggregation_cerfity.py and the ROE scripts), on random
and tie-heavy inputs; and the transcription itself against the rules written out per point."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from benchmarks._published_rules import (
    dp_table, published_dpa, published_dpa_roe, published_dpa_star_sum, published_fa, published_fa_roe,
    published_shifts,
)
from kernelcert import roe
from kernelcert.ensemble import dpa, dpa_from_scores
from kernelcert.partition import fa_spread

seeds = st.integers(0, 2**31)


def _scores(rng, shape, kind):
    if kind == "ties":  # small integers: exact logit ties and tied counts exercise every tie rule
        return rng.integers(0, 3, size=shape).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(seeds, st.integers(1, 12), st.integers(2, 5), st.sampled_from(["ties", "normal"]))
def test_dpa_and_dpa_roe_equal_the_published_rules(seed, M, K, kind):
    rng = np.random.default_rng(seed)
    s = _scores(rng, (12, M, K), kind)
    y = rng.integers(0, K, 12)
    for ours in (dpa(s.argmax(2), K), dpa_from_scores(s)):
        p, r = published_dpa(s, None, K)
        np.testing.assert_array_equal(ours.prediction, p)
        np.testing.assert_array_equal(ours.radius, r)
        _, r_lab = published_dpa(s, y, K)
        np.testing.assert_array_equal(r_lab, np.where(p == y, r, -1))
    ours = roe.dpa_roe(s, block_size=5)
    p, r = published_dpa_roe(s, None, K)
    np.testing.assert_array_equal(ours.prediction, p)
    np.testing.assert_array_equal(ours.radius, r)


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(1, 5), st.integers(1, 4), st.integers(2, 4), st.sampled_from(["ties", "normal"]))
def test_fa_and_fa_roe_equal_the_published_rules(seed, k, d, K, kind):
    rng = np.random.default_rng(seed)
    L = k * d
    shifts = rng.choice(L, size=d, replace=False).tolist()
    s = _scores(rng, (6, L, K), kind)
    ours = roe.fa(s.argmax(2), shifts, K, block_size=4)
    p, r = published_fa(s, None, K, shifts)
    np.testing.assert_array_equal(ours.prediction, p)
    np.testing.assert_array_equal(np.minimum(ours.radius, L), r)  # the script's "no attack" is k*d
    ours = roe.fa_roe(s, shifts, block_size=4)
    p, r = published_fa_roe(s, None, K, shifts)
    np.testing.assert_array_equal(ours.prediction, p)
    np.testing.assert_array_equal(np.where(r >= 10**9 - 1, roe.NO_ATTACK, r), ours.radius)


def test_published_shifts_are_the_fa_spread_default():
    for k, d in ((50, 16), (10, 4), (3, 1)):
        assert published_shifts(k, d) == fa_spread(np.arange(k * d), k, d).shifts.tolist()


def test_dp_table_is_the_knockout_table():
    np.testing.assert_array_equal(dp_table(40), roe._knockout_table(40)[:40, :40])


def test_dpa_roe_rule_by_hand():
    """One point worked by hand: 3 models, classes 0..2; votes 0, 0, 1 (plurality 0, runner-up 1);
    run-off 0 vs 1: models with z0 > z1 are the first two, E = 2*2 - 3 = 1 > 0, so 0 wins. Knock-out
    needs both rivals to beat 0 in round 1 (gaps 2 and 3 -> DP(2, 3) = 2); a rival c wins the final
    with max(ceil(gap to the runner-up / 2), ceil((E + [c > 0]) / 2)) = 1 for c = 1 (gap 0, E = 1 + 1):
    attack size 1, radius 0."""
    s = np.array([[[2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 2.0, 1.0]]])
    p, r = published_dpa_roe(s, None, 3)
    assert p.tolist() == [0] and r.tolist() == [0]
    assert roe.dpa_roe(s).radius.tolist() == [0]


@pytest.mark.parametrize("seed", range(2))
def test_dpa_star_float32_sum(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=(50, 4, 3, 5)) * 10) / 10
    total = published_dpa_star_sum(s)
    assert total.dtype == np.float32
    want = np.zeros((50, 4, 5), np.float32)
    for v in range(3):
        want = want + s[:, :, v].astype(np.float32)
    np.testing.assert_array_equal(total, want)
    ours = roe.dpa_star_roe(s, summation="float32")
    ref = roe.dpa_roe(total)
    np.testing.assert_array_equal(ours.radius, ref.radius)
