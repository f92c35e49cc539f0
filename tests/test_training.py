"""Training core and O3SRL: behaviour on tiny problems that run in seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from training_toys import episode_cost_of, speed_cost_dataset, toy_context

from safepolicy.training.algorithms.base import per_step_budget
from safepolicy.training.algorithms.o3srl import O3SRL, O3SRLConfig
from safepolicy.training.algorithms.td3bc import TD3BCConfig, TD3BCOracle
from safepolicy.training.multipliers import (
    Exp3,
    exp3_learning_rate,
    lagrange_player_loss,
    lambda_arms,
)
from safepolicy.training.networks import CriticEnsemble, SquashedGaussianActor

ARM_MEAN_LOSSES = np.array([0.8, 0.6, 0.5, 0.35, 0.2])  # arm 4 is best


def play_bandit(rounds: int, seed: int) -> tuple[Exp3, float]:
    """Bernoulli losses; returns the bandit and its pseudo-regret against the best arm."""
    rng = np.random.default_rng(1000 + seed)
    bandit = Exp3(len(ARM_MEAN_LOSSES), rounds, seed=seed)
    regret = 0.0
    for _ in range(rounds):
        arm = bandit.sample()
        bandit.update(arm, float(rng.random() < ARM_MEAN_LOSSES[arm]))
        regret += ARM_MEAN_LOSSES[arm] - ARM_MEAN_LOSSES.min()
    return bandit, regret


def test_exp3_shifts_probability_to_the_best_arm() -> None:
    bandit, _ = play_bandit(4000, seed=0)
    probabilities = bandit.probabilities()
    assert probabilities.argmax() == 4
    assert probabilities[4] > 0.5


def test_exp3_regret_is_sublinear_and_within_its_bound() -> None:
    per_round = {}
    for rounds in (250, 4000):
        regrets = [play_bandit(rounds, seed)[1] for seed in range(4)]
        mean_regret = float(np.mean(regrets))
        k = len(ARM_MEAN_LOSSES)
        assert mean_regret <= math.sqrt(2 * rounds * k * math.log(k))
        per_round[rounds] = mean_regret / rounds
    # 16x the rounds: linear regret would keep the per-round regret flat; sqrt(T) quarters it.
    assert per_round[4000] < 0.5 * per_round[250]


def test_exp3_learning_rate_is_the_bound_minimiser() -> None:
    assert exp3_learning_rate(5, 1000) == pytest.approx(math.sqrt(2 * math.log(5) / 5000))


def test_per_step_budgets() -> None:
    assert per_step_budget(10.0, 0.99, 100, "paper") == pytest.approx(0.1)
    assert per_step_budget(10.0, 0.99, 300, "episode") == pytest.approx(10.0 / 300)
    with pytest.raises(ValueError, match="per_step_budget"):
        per_step_budget(10.0, 0.99, 300, "weekly")


def test_lambda_arms_cover_zero_to_c() -> None:
    uniform = lambda_arms(5, 5.0, "uniform")
    dense = lambda_arms(5, 5.0, "dense-near-zero")
    assert uniform.tolist() == [0.0, 1.25, 2.5, 3.75, 5.0]
    assert dense[0] == 0.0 and dense[-1] == 5.0 and dense[1] < uniform[1]
    with pytest.raises(ValueError, match="at least 2 arms"):
        lambda_arms(1, 5.0, "uniform")


def test_lagrange_player_prefers_large_lambda_only_when_over_budget() -> None:
    def loss(lam: float, cost_value: float) -> float:
        return lagrange_player_loss(
            lam, cost_value, budget_value=10.0, lambda_max=5.0, cost_value_bound=90.0
        )

    assert loss(5.0, cost_value=40.0) < loss(0.0, cost_value=40.0)  # violating: punish
    assert loss(5.0, cost_value=2.0) > loss(0.0, cost_value=2.0)  # safe: relax
    for lam in (0.0, 2.5, 5.0):
        for cost_value in (0.0, 10.0, 1e6):
            assert 0.0 <= loss(lam, cost_value) <= 1.0
    # Between arms the loss differs by -(lambda_k - lambda_j)(V_c - kappa_v) / (C G): the game's
    # payoff, up to a per-round shift that no arm can exploit; the range [0, 1] is used fully.
    assert loss(5.0, 40.0) - loss(2.5, 40.0) == pytest.approx(-2.5 * 30.0 / (5.0 * 90.0))
    assert loss(5.0, 100.0) == pytest.approx(0.0) and loss(0.0, 100.0) == pytest.approx(1.0)
    assert loss(2.5, 40.0) == pytest.approx(0.5)


def test_critic_ensemble_is_one_batched_pass_matching_separate_critics() -> None:
    critics = CriticEnsemble(obs_dim=3, action_dim=2, ensemble_size=4, hidden_sizes=[16, 16])
    observations, actions = torch.randn(8, 3), torch.randn(8, 2)
    q = critics(observations, actions)
    assert q.shape == (4, 8)
    member = 2  # recompute one member by hand from its slice of the stacked weights
    hidden = torch.cat([observations, actions], dim=-1)
    for index, layer in enumerate(critics.layers):
        hidden = hidden @ layer.weight[member] + layer.bias[member]
        if index < len(critics.layers) - 1:
            hidden = torch.relu(hidden)
    assert torch.allclose(q[member], hidden.squeeze(-1), atol=1e-5)


def test_td3bc_critic_loss_falls_on_a_toy_dataset() -> None:
    dataset = speed_cost_dataset(transitions=2000)
    oracle = TD3BCOracle(TD3BCConfig(), toy_context(dataset, 3.0, 400), "episode")
    losses = [float(oracle.step(0.0)["loss/critic"]) for _ in range(400)]
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:50])


def test_squashed_gaussian_actions_stay_within_bounds() -> None:
    actor = SquashedGaussianActor(3, 2, [16], action_low=[-2.0, 0.0], action_high=[1.0, 3.0])
    actions, log_prob = actor.sample(torch.randn(256, 3) * 10)
    assert torch.all(actions[:, 0] >= -2.0) and torch.all(actions[:, 0] <= 1.0)
    assert torch.all(actions[:, 1] >= 0.0) and torch.all(actions[:, 1] <= 3.0)
    assert torch.isfinite(log_prob).all()


@pytest.mark.slow  # over 30 s on the shared 2-core machine; over 300 s when it is loaded
@pytest.mark.timeout(1200)
def test_o3srl_keeps_the_cost_limit_where_the_unconstrained_oracle_does_not() -> None:
    """Toy: reward a, cost (a + 1) / 2 per step, limit 5 per 10-step episode (needs a <= 0).

    Fixed multipliers give costs 9.0 / 7.9 / 4.3 / 3.1 / 1.9 for lambda = 0 / 1.25 / 2.5 /
    3.75 / 5, so the game's equilibrium mixes arms around lambda = 2 and puts the cost on the
    limit; the last iterate wanders around it. Measured at 8000 steps over seeds 0-7: final
    cost 4.16-5.08, mean 4.69 (seeds 0 and 1 used here: 4.82, 4.92). The test asserts the
    seeds' mean within the limit and each seed within 5% of it, the size of that wander.
    """
    dataset = speed_cost_dataset()
    cost_limit, steps = 5.0, 8000
    sizes = {"gamma": 0.5, "hidden_sizes": (32, 32), "batch_size": 64}
    unconstrained = TD3BCOracle(
        TD3BCConfig(), toy_context(dataset, cost_limit, steps, **sizes), "episode"
    )
    for _ in range(steps // 4):  # it settles at about 9 within 500 steps
        unconstrained.step(0.0)
    assert episode_cost_of(unconstrained.actor, dataset) > 1.6 * cost_limit

    costs, expected_lambdas = [], []
    for seed in (0, 1):
        o3srl = O3SRL(O3SRLConfig(), toy_context(dataset, cost_limit, steps, seed, **sizes))
        for _ in range(steps):
            o3srl.step("train")
        costs.append(episode_cost_of(o3srl.actor, dataset))
        expected_lambdas.append(o3srl.multiplier.expected_value())
    assert np.mean(costs) <= cost_limit and max(costs) <= 1.05 * cost_limit, costs
    # EXP3 left lambda = 0 behind: its mass sits where fixed arms straddle the limit.
    assert min(expected_lambdas) > 1.0, expected_lambdas


def test_iql_oracle_learns_and_o3srl_runs_on_it() -> None:
    from safepolicy.training.algorithms.iql import IQLConfig, IQLOracle
    from safepolicy.training.losses import expectile_loss

    differences = torch.tensor([1.0, -1.0])
    assert expectile_loss(differences, 0.7) == pytest.approx((0.7 + 0.3) / 2)
    dataset = speed_cost_dataset(transitions=2000)
    oracle = IQLOracle(IQLConfig(), toy_context(dataset, 3.0, 300), "episode")
    losses = [float(oracle.step(0.0)["loss/critic"]) for _ in range(300)]
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:50])
    config = O3SRLConfig(oracle="iql")
    o3srl = O3SRL(config, toy_context(dataset, 3.0, 50))
    logs = [o3srl.step("train") for _ in range(20)]
    assert "o3srl/lambda" in logs[9] and o3srl.multiplier.value in o3srl.arms


def test_actor_checkpoint_with_a_path_in_its_config_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from safepolicy.training.checkpoint import ActorMetadata, load_actor, save_actor

    actor = SquashedGaussianActor(3, 1, [8])
    metadata = ActorMetadata(
        task="BallRun",
        env_id="SafetyBallRun-v0",
        algorithm="bc-safe",
        cost_limit=5.0,
        seed=0,
        config={"dataset": Path("/data/x.h5")},
    )
    save_actor(tmp_path, actor, metadata)
    _, loaded = load_actor(tmp_path)
    assert loaded.config == {"dataset": "/data/x.h5"}
