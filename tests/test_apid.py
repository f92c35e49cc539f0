"""Marvel's adaptive PID multiplier (training.multipliers.AdaptivePIDMultiplier)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from safepolicy.training.multipliers import AdaptivePIDMultiplier, PIDGains, PIDMultiplier

LIMIT = 20.0


def initial_gains() -> PIDGains:
    return PIDGains(proportional=0.02, integral=0.01, derivative=0.01)


def lagged_cost_process(
    multiplier: PIDMultiplier, seed: int, steps: int = 400, lag: int = 3
) -> np.ndarray:
    """Cost relaxes towards 40 / (1 + lambda) seen ``lag`` updates late; noisy measurements."""
    rng = np.random.default_rng(seed)
    multipliers = [0.0] * lag
    true_cost = 40.0
    costs = []
    for _ in range(steps):
        true_cost = 0.8 * true_cost + 0.2 * 40.0 / (1.0 + multipliers[-lag])
        costs.append(true_cost)
        multiplier.update(true_cost + rng.normal(0.0, 1.0), LIMIT)
        multipliers.append(multiplier.value)
    return np.asarray(costs)


def overshoot(costs: np.ndarray) -> float:
    """How far the cost falls below the limit after it first reaches it."""
    first = int(np.argmax(costs <= LIMIT))
    return max(0.0, LIMIT - float(costs[first:].min()))


def test_lambda_rises_under_sustained_violation_and_falls_under_slack() -> None:
    apid = AdaptivePIDMultiplier(initial_gains())
    values = []
    for _ in range(30):
        apid.update(30.0, LIMIT)
        values.append(apid.value)
    assert values[-1] > values[0] > 0.0
    assert all(b >= a for a, b in itertools.pairwise(values))
    peak = apid.value
    for _ in range(200):
        apid.update(5.0, LIMIT)
    assert apid.value < 0.5 * peak


def test_gains_move_in_the_stated_directions_and_stay_clamped() -> None:
    start = initial_gains()
    apid = AdaptivePIDMultiplier(initial_gains())
    for _ in range(5):
        apid.update(30.0, LIMIT)
    assert apid.gains.proportional > start.proportional
    assert apid.gains.integral > start.integral
    for _ in range(2000):
        apid.update(30.0 + (5.0 if len(apid.smoothed_costs) % 2 else -5.0), LIMIT)
    assert apid.gains.proportional == pytest.approx(10.0 * start.proportional)
    assert apid.gains.integral == pytest.approx(10.0 * start.integral)
    assert apid.gains.derivative > start.derivative
    assert apid.gains.derivative <= 10.0 * start.derivative + 1e-12
    for _ in range(2000):
        apid.update(10.0, LIMIT)
    assert apid.gains.proportional == pytest.approx(0.1 * start.proportional)
    assert apid.gains.integral == pytest.approx(0.1 * start.integral)
    assert apid.gains.derivative <= 10.0 * start.derivative + 1e-12


def test_kd_grows_with_the_spread_of_smoothed_costs() -> None:
    steady = AdaptivePIDMultiplier(initial_gains())
    noisy = AdaptivePIDMultiplier(initial_gains())
    rng = np.random.default_rng(0)
    for _ in range(50):
        steady.update(LIMIT, LIMIT)
        noisy.update(LIMIT + rng.normal(0.0, 5.0), LIMIT)
    assert steady.gains.derivative == pytest.approx(initial_gains().derivative)
    assert noisy.gains.derivative > steady.gains.derivative


@pytest.mark.parametrize("seed", [0, 1])
def test_settles_a_lagged_noisy_cost_process_at_the_limit(seed: int) -> None:
    costs = lagged_cost_process(AdaptivePIDMultiplier(initial_gains()), seed)
    assert costs[0] > LIMIT + 15.0
    assert abs(float(costs[-100:].mean()) - LIMIT) < 0.5


@pytest.mark.xfail(
    strict=True,
    reason=(
        "finding stands (see the docstring): under the paper's rule the gains only grow while the "
        "cost is over the limit, so aPID's lambda runs ahead of PID's and the first undershoot is "
        "larger (seed 0: aPID 3.17 vs PID 1.53; seed 1: 3.41 vs 1.89)"
    ),
)
@pytest.mark.parametrize("seed", [0, 1])
def test_overshoots_less_than_plain_pid_with_the_same_initial_gains(seed: int) -> None:
    """Issue 12's claim, checked on a step response; it fails, and not from a scaling bug.

    Checked against the paper (Section 3.2, Appendix F, Table 6): the implementation's law,
    EMAs, lagged derivative, anti-windup and gain schedule are the stated ones, and the
    paper's gains (1e-4, 1e-5, 1e-5) are per controller update (one per training iteration),
    as this process applies them. Writing the
    integral as Stooke et al.'s K_i * sum(e) instead of sum(K_i e) makes it worse (seed 0:
    4.56). The cause is the schedule itself: before the cost first reaches the limit it is
    over the limit at every update, so K_p and K_i grow (never shrink) and aPID's lambda is
    at least PID's all the way to the crossing; in a lagged process a larger lambda there
    means a larger undershoot after it. This test's gains (0.02, 0.01, 0.01) are 200-1000x
    the paper's and put the loop in a fast, under-damped regime; at the paper's scale plain
    PID is over-damped and never reaches the limit (next test). In no regime tried did aPID
    undershoot less (process lag 3, 50, 200 updates at this test's gains: 3.17 vs 1.53,
    18.50 vs 14.29, 19.89 vs 17.65 on seed 0). The paper's ablation (Fig. 3) compares cost
    fluctuations during finetuning, not a step response.
    """
    apid_costs = lagged_cost_process(AdaptivePIDMultiplier(initial_gains()), seed)
    pid_costs = lagged_cost_process(PIDMultiplier(initial_gains()), seed)
    assert overshoot(apid_costs) < overshoot(pid_costs)


@pytest.mark.parametrize("seed", [0, 1])
def test_at_the_papers_gains_apid_settles_where_plain_pid_has_not_arrived(seed: int) -> None:
    """Marvel's Table 6 gains: PID's integral alone is too slow to reach the limit in 10k
    updates; aPID's schedule (gains up to 10x while over the limit) settles at it with a
    small undershoot. Measured: aPID undershoot 0.06 (seed 0) and 0.03 (seed 1), last-1000
    mean 19.96 and 20.02; PID never below 22.9."""
    paper_gains = PIDGains(proportional=1e-4, integral=1e-5, derivative=1e-5)
    apid_costs = lagged_cost_process(AdaptivePIDMultiplier(paper_gains), seed, steps=10_000)
    pid_costs = lagged_cost_process(
        PIDMultiplier(
            PIDGains(paper_gains.proportional, paper_gains.integral, paper_gains.derivative)
        ),
        seed,
        steps=10_000,
    )
    assert pid_costs.min() > LIMIT + 2.0
    assert apid_costs.min() <= LIMIT
    assert abs(float(apid_costs[-1_000:].mean()) - LIMIT) < 0.5
    assert overshoot(apid_costs) < 0.5


def test_state_dict_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(3)
    original = AdaptivePIDMultiplier(initial_gains())
    for _ in range(25):
        original.update(float(rng.uniform(0.0, 40.0)), LIMIT)
    restored = AdaptivePIDMultiplier(PIDGains(1.0, 1.0, 1.0), delay=10)
    restored.load_state_dict(original.state_dict())
    for _ in range(25):
        cost = float(rng.uniform(0.0, 40.0))
        assert restored.update(cost, LIMIT) == original.update(cost, LIMIT)
    assert restored.gains == original.gains


@pytest.mark.parametrize(
    "kwargs", [{"smoothing": 1.0}, {"delay": 0}, {"gain_floor": 0.0}, {"proportional_rate": -0.1}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="aPID"):
        AdaptivePIDMultiplier(initial_gains(), **kwargs)  # type: ignore[arg-type]
