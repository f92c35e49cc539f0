"""Shared losses: targets of unequal critic groups, expectile, AWR, SAC temperature."""

from __future__ import annotations

import pytest
import torch

from safepolicy.training.losses import (
    awr_weights,
    ensemble_estimate,
    ensemble_mse,
    expectile_loss,
    reduce_members,
    sac_actor_loss,
    sac_temperature_loss,
    td3bc_actor_loss,
    td_targets,
)


def test_td_targets_reduce_each_group_by_its_own_rule() -> None:
    """2 reward critics (min) and 5 cost critics (max): targets per member, [7, batch]."""
    next_q = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)
    rewards, costs = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 0.0])
    terminals = torch.tensor([0.0, 0.0, 1.0])
    targets = td_targets(
        next_q, (rewards, costs), terminals, 0.5, sizes=(2, 5), reductions=("min", "max")
    )
    assert targets.shape == (7, 3)
    expected_reward = rewards + 0.5 * (1 - terminals) * next_q[:2].min(0).values
    expected_cost = costs + 0.5 * (1 - terminals) * next_q[2:].max(0).values
    assert torch.equal(targets[:2], expected_reward.expand(2, -1))
    assert torch.equal(targets[2:], expected_cost.expand(5, -1))
    assert targets[0, 2] == 3.0  # terminal: no bootstrap
    with pytest.raises(ValueError, match="min"):
        reduce_members(next_q, "median")


def test_ensemble_mse_sums_members() -> None:
    q = torch.zeros(3, 4)
    assert ensemble_mse(q, torch.ones(3, 4)).item() == pytest.approx(3.0)


def test_expectile_and_awr() -> None:
    assert expectile_loss(torch.tensor([2.0]), 0.9).item() == pytest.approx(0.9 * 4)
    assert expectile_loss(torch.tensor([-2.0]), 0.9).item() == pytest.approx(0.1 * 4)
    weights = awr_weights(torch.tensor([0.0, 1.0, 10.0]), beta=1.0, max_weight=5.0)
    assert weights.tolist() == pytest.approx([1.0, 2.718281828, 5.0])


def test_td3bc_actor_loss_divides_q_by_the_given_scale() -> None:
    q, actions = torch.full((4,), 8.0), torch.zeros(4, 1)
    loss = td3bc_actor_loss(q, actions, actions, alpha=2.5, q_scale=torch.tensor(4.0))
    assert loss.item() == pytest.approx(-2.5 * 8.0 / 4.0)


def test_sac_temperature_falls_when_entropy_is_above_target_and_rises_below() -> None:
    for log_prob, direction in ((-5.0, -1.0), (5.0, 1.0)):  # entropy 5 / -5 vs target -1
        log_temperature = torch.zeros((), requires_grad=True)
        sac_temperature_loss(log_temperature, torch.full((8,), log_prob), -1.0).backward()
        assert log_temperature.grad is not None
        assert -log_temperature.grad.item() * direction > 0  # gradient descent moves that way
    temperature = torch.tensor(0.5)
    assert sac_actor_loss(torch.ones(2), torch.full((2,), -2.0), temperature).item() == -2.0


def test_ensemble_estimates_are_mean_max_and_mean_plus_k_std() -> None:
    # two states; members (1, 3, 5) and (2, 2, 2): std 2 and 0
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    assert torch.equal(ensemble_estimate(q, "mean"), torch.tensor([3.0, 2.0]))
    assert torch.equal(ensemble_estimate(q, "max"), torch.tensor([5.0, 2.0]))
    assert torch.allclose(ensemble_estimate(q, "ucb", ucb_k=1.5), torch.tensor([6.0, 2.0]))
    assert torch.equal(ensemble_estimate(q[:1], "ucb", ucb_k=3.0), q[0])  # no spread to add
    with pytest.raises(ValueError, match="one of"):
        ensemble_estimate(q, "median")
