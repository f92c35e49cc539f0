"""Lagrange multipliers on constructed cost sequences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from safepolicy.training.multipliers import (
    DualAscent,
    Exp3Multiplier,
    FixedMultiplier,
    PIDGains,
    PIDMultiplier,
    lambda_arms,
)

LIMIT = 10.0
VIOLATION = [15.0] * 20  # sustained 5 over the limit
SLACK = [4.0] * 40  # sustained 6 under


def run(multiplier: object, costs: list[float]) -> list[float]:
    values = []
    for cost in costs:
        multiplier.update(cost, LIMIT)  # type: ignore[attr-defined]
        values.append(multiplier.value)  # type: ignore[attr-defined]
    return values


@pytest.mark.parametrize(
    "make",
    [
        lambda: DualAscent(learning_rate=0.05),
        lambda: PIDMultiplier(PIDGains(proportional=0.1, integral=0.05, derivative=0.1)),
    ],
    ids=["dual-ascent", "pid"],
)
def test_multiplier_rises_under_violation_and_falls_under_slack(make) -> None:  # type: ignore[no-untyped-def]
    multiplier = make()
    assert multiplier.value == 0.0
    rising = run(multiplier, VIOLATION)
    assert all(b >= a for a, b in itertools.pairwise(rising))
    assert rising[-1] > rising[0] > 0.0
    falling = run(multiplier, SLACK)
    assert falling[-1] < rising[-1]
    assert falling[-1] == 0.0  # projected onto lambda >= 0, never negative
    assert min(falling) >= 0.0


def test_dual_ascent_is_the_projected_gradient_step() -> None:
    multiplier = DualAscent(learning_rate=0.1, initial=1.0, max_value=1.4)
    multiplier.update(13.0, LIMIT)
    assert multiplier.value == pytest.approx(1.3)
    multiplier.update(13.0, LIMIT)
    assert multiplier.value == pytest.approx(1.4)  # clipped at max_value


def test_pid_reacts_to_the_rise_before_the_integral_catches_up() -> None:
    """Same error now, but a cost rising fast gets a larger lambda through the derivative."""
    gains = PIDGains(proportional=0.0, integral=0.01, derivative=0.5)
    steady, rising = PIDMultiplier(gains), PIDMultiplier(gains)
    run(steady, [12.0, 12.0])
    run(rising, [2.0, 12.0])
    assert rising.value > steady.value + 1.0


def test_pid_state_round_trips() -> None:
    multiplier = PIDMultiplier(PIDGains(0.1, 0.05, 0.1))
    run(multiplier, VIOLATION[:5])
    copy = PIDMultiplier(PIDGains(0.0, 0.0, 0.0))
    copy.load_state_dict(multiplier.state_dict())
    assert run(copy, [12.0, 3.0]) == run(multiplier, [12.0, 3.0])


def test_fixed_multiplier_stays_and_refuses_negative_values() -> None:
    multiplier = FixedMultiplier(2.5)
    assert run(multiplier, VIOLATION + SLACK)[-1] == 2.5
    with pytest.raises(ValueError, match=">= 0"):
        FixedMultiplier(-1.0)


def test_exp3_multiplier_moves_to_large_lambda_over_budget_and_small_under() -> None:
    arms = lambda_arms(5, 5.0, "uniform")
    over = Exp3Multiplier(arms, rounds=2000, seed=0, cost_value_bound=10.0)
    under = Exp3Multiplier(arms, rounds=2000, seed=0, cost_value_bound=10.0)
    for _ in range(2000):
        over.update(18.0, LIMIT)
        under.update(2.0, LIMIT)
    assert over.expected_value() > 4.0
    assert under.expected_value() < 1.0
    assert over.value in arms


def test_exp3_observed_bound_reads_a_small_gap_that_the_worst_case_bound_drowns() -> None:
    # a policy 1.0 under a budget of 3.3 in value units, the worst case |V_c - kappa_v| being
    # ~97 (per-step cost 1, gamma 0.99): O3SRL's CarCircle runs at 1,000 rounds
    arms = lambda_arms(5, 5.0, "uniform")
    budget = 10.0 / 3.0
    worst = Exp3Multiplier(arms, rounds=1000, seed=0, cost_value_bound=100.0 - budget)
    observed = Exp3Multiplier(
        arms, rounds=1000, seed=0, cost_value_bound=budget, observed_bound=True
    )
    for _ in range(1000):
        for player in (worst, observed):
            logs = player.update(budget - 1.0, budget)
            assert 0.0 <= logs["multiplier/bandit_loss"] <= 1.0
    # seeds 0-3: worst case E[lambda] 1.5-2.8 (uniform: 2.5), observed 0.14-0.52
    assert worst.expected_value() > 1.2
    assert observed.expected_value() < 0.6
    # the bound grows to the largest gap read, so a later large gap still maps into [0, 1]
    logs = observed.update(budget + 50.0, budget)
    assert observed.cost_value_bound == pytest.approx(50.0)
    assert 0.0 <= logs["multiplier/bandit_loss"] <= 1.0
    restored = Exp3Multiplier(arms, rounds=1000, seed=1, cost_value_bound=budget)
    restored.load_state_dict(observed.state_dict())
    assert restored.cost_value_bound == pytest.approx(50.0)


def test_exp3_multiplier_resumes_to_the_same_arms() -> None:
    arms = lambda_arms(3, 5.0, "dense-near-zero")
    first = Exp3Multiplier(arms, rounds=100, seed=3, cost_value_bound=5.0)
    run(first, list(np.linspace(5, 15, 30)))
    second = Exp3Multiplier(arms, rounds=100, seed=99, cost_value_bound=5.0)
    second.load_state_dict(first.state_dict())
    tail = list(np.linspace(15, 5, 20))
    assert run(second, tail) == run(first, tail)
