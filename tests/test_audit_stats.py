"""safepolicy.audit.stats: exact answers on small cases, coverage of the bootstrap on simulated
costs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safepolicy.audit import stats


def test_cvar_on_hand_cases() -> None:
    costs = np.array([0.0, 10.0, 2.0, 30.0, 4.0])
    assert stats.cvar(costs, 0.2) == pytest.approx(30.0)  # the single worst episode
    assert stats.cvar(costs, 0.4) == pytest.approx((30.0 + 10.0) / 2)
    # k = 0.5 * 5 = 2.5: the two worst plus half of the third, over 2.5
    assert stats.cvar(costs, 0.5) == pytest.approx((30.0 + 10.0 + 0.5 * 4.0) / 2.5)
    assert stats.cvar(costs, 1.0) == pytest.approx(costs.mean())
    batched = stats.cvar(np.stack([costs, costs[::-1] + 1]), 0.4)
    assert batched.tolist() == pytest.approx([20.0, 21.0])
    with pytest.raises(ValueError, match="alpha"):
        stats.cvar(costs, 0.0)


def test_violation_rate_counts_strictly_over_the_limit() -> None:
    costs = np.array([0.0, 25.0, 25.0001, 40.0])
    assert stats.violation_rate(costs, 25.0) == pytest.approx(0.5)
    assert stats.violation_rate(costs, 100.0) == 0.0
    assert stats.violation_rate(costs, -1.0) == 1.0


def test_jackknife_matches_the_definition() -> None:
    data = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    expected = [np.delete(data, i).max() for i in range(data.size)]
    assert stats._jackknife(data, lambda v: v.max(axis=-1)).tolist() == expected


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    costs = np.random.default_rng(1).exponential(10.0, size=60)
    first = stats.bootstrap_interval(costs, seed=3)
    assert first == stats.bootstrap_interval(costs, seed=3)
    assert first.low < costs.mean() < first.high
    upper = stats.bootstrap_interval(costs, alternative="upper", seed=3)
    assert upper.low == -math.inf and costs.mean() < upper.high < first.high
    lower = stats.bootstrap_interval(costs, alternative="lower", seed=3)
    assert upper.high - costs.mean() > costs.mean() - lower.low  # right skew: longer upper side


def test_constant_costs_give_a_degenerate_bound() -> None:
    assert stats.cost_upper_bound([0.0] * 10) == 0.0
    assert stats.verdict(stats.cost_upper_bound([7.0] * 10), 7.0) == "PASS"


def zero_inflated_costs(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Most episodes cost nothing, the rest an exponential amount: mean 0.3 * 40 = 12."""
    return (rng.random(size) < 0.3) * rng.exponential(40.0, size)


@pytest.mark.parametrize(
    ("alternative", "sampler", "true_mean"),
    [
        ("upper", zero_inflated_costs, 12.0),
        ("two-sided", lambda rng, size: rng.normal(5.0, 3.0, size), 5.0),
    ],
)
def test_bootstrap_covers_the_true_mean_at_the_stated_rate(alternative, sampler, true_mean) -> None:
    datasets, n, confidence = 200, 50, 0.9
    rng = np.random.default_rng(2024)
    samples = sampler(rng, (datasets, n))
    covered = 0
    for index, sample in enumerate(samples):
        interval = stats.bootstrap_interval(
            sample, confidence=confidence, alternative=alternative, resamples=1000, seed=index
        )
        covered += interval.low <= true_mean <= interval.high
    # 200 Bernoulli(0.9) trials: standard deviation 0.021; allow 3 of them either side
    tolerance = 3 * math.sqrt(confidence * (1 - confidence) / datasets)
    assert abs(covered / datasets - confidence) <= tolerance, covered / datasets


def test_a_naive_bound_would_fail_the_coverage_check() -> None:
    """The coverage test can fail: the sample mean itself as a 'bound' covers about half."""
    rng = np.random.default_rng(7)
    samples = zero_inflated_costs(rng, (200, 50))
    coverage = np.mean(samples.mean(axis=1) >= 12.0)
    assert abs(coverage - 0.9) > 3 * math.sqrt(0.9 * 0.1 / 200)


def test_verdict_rule() -> None:
    assert stats.verdict(19.99, 20.0) == "PASS"
    assert stats.verdict(20.0, 20.0) == "PASS"
    assert stats.verdict(20.01, 20.0) == "FAIL"
    assert "95% upper confidence bound" in stats.verdict_rule(0.95, 20.0)


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]]])
def test_bootstrap_rejects_bad_samples(bad) -> None:
    with pytest.raises(ValueError, match="non-empty 1-d"):
        stats.bootstrap_interval(bad)


# --- cross-check against scipy (a test-only dependency; the audit itself never imports it) ----


def test_bca_agrees_with_scipy_on_a_large_skewed_sample() -> None:
    """At n = 400 Hesterberg's widening is negligible (about 0.3 %), so the hand-written BCa
    bounds must match scipy.stats.bootstrap(method="BCa") to within the resampling noise (3 % of
    the width; the plain percentile interval misses by 4-5 % here, so the check can tell)."""
    scipy_stats = pytest.importorskip(
        "scipy.stats",
        reason="scipy is the cross-check; install it to run this test (it is not in the lock)",
    )
    rng = np.random.default_rng(3)
    costs = np.where(rng.random(400) < 0.3, rng.exponential(20.0, 400), 0.0)
    ours = stats.bootstrap_interval(costs, stats.mean, 0.9, "two-sided", resamples=20000, seed=1)
    theirs = scipy_stats.bootstrap(
        (costs,), np.mean, confidence_level=0.9, method="BCa", n_resamples=20000, random_state=2
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours.low == pytest.approx(theirs.low, abs=0.03 * width)
    assert ours.high == pytest.approx(theirs.high, abs=0.03 * width)


def test_equal_costs_are_where_scipy_gives_nan_and_ours_a_bound() -> None:
    """A safe policy's audit often sees the same cost (0) in every episode: scipy's BCa has no
    spread to work with and returns NaN, which is why the audit keeps its own."""
    scipy_stats = pytest.importorskip(
        "scipy.stats",
        reason="scipy is the cross-check; install it to run this test (it is not in the lock)",
    )
    costs = np.zeros(50)
    with pytest.warns(Warning):
        theirs = scipy_stats.bootstrap(
            (costs,), np.mean, confidence_level=0.95, method="BCa", n_resamples=1000, random_state=0
        ).confidence_interval
    assert np.isnan(theirs.high)
    assert stats.cost_upper_bound(costs, 0.95, resamples=1000) == 0.0
