"""Value pre-alignment (training/algorithms/vpa.py) on a toy MDP whose true values are known."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from safepolicy.datasets import Dataset
from safepolicy.training.algorithms.base import TrainingContext
from safepolicy.training.algorithms.vpa import (
    ValuePreAlignment,
    VPAConfig,
    rescale_group_steps,
)
from safepolicy.training.data import OfflineBuffer
from safepolicy.training.networks import CriticEnsemble, SquashedGaussianActor

STATES = 3
GAMMA = 0.5


def cycle_dataset(transitions: int = 3000, seed: int = 0) -> Dataset:
    """Three states (one-hot) visited in a cycle 0 -> 1 -> 2 -> 0, any action in [-1, 1];
    reward a + 0.5 k, cost (a + 1) / 2 in state 0 only (k: the state's index)."""
    rng = np.random.default_rng(seed)
    states = rng.integers(0, STATES, transitions)
    actions = rng.uniform(-1, 1, (transitions, 1)).astype(np.float32)
    eye = np.eye(STATES, dtype=np.float32)
    return Dataset(
        observations=eye[states],
        next_observations=eye[(states + 1) % STATES],
        actions=actions,
        rewards=(actions[:, 0] + 0.5 * states).astype(np.float32),
        costs=np.where(states == 0, (actions[:, 0] + 1) / 2, 0.0).astype(np.float32),
        terminals=np.zeros(transitions, dtype=bool),
        timeouts=np.zeros(transitions, dtype=bool),
        attrs={"task": "toy-cycle"},
    )


def context_for(dataset: Dataset) -> TrainingContext:
    buffer = OfflineBuffer(dataset, np.array([-1.0]), np.array([1.0]), torch.device("cpu"))
    return TrainingContext(
        buffer=buffer,
        obs_dim=STATES,
        action_dim=1,
        action_low=[-1.0],
        action_high=[1.0],
        hidden_sizes=[64, 64],
        gamma=GAMMA,
        batch_size=256,
        cost_limit=1.0,
        episode_length=10,
        total_steps=1,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seed=0,
    )


def true_values(
    actor: SquashedGaussianActor,
    observations: torch.Tensor,
    actions: torch.Tensor,
    temperatures: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q^pi and Qc^pi of the entropy-regularised evaluation (VPA's fixed point), exactly up to
    the Monte Carlo error of the per-state expectations (200k draws each):
    V(k) = E_pi[signal(k, a) - temperature log pi(a | k)] + gamma V(k + 1 mod 3),
    Q(s, a) = signal(s, a) + gamma V(next state)."""
    eye = torch.eye(STATES)
    mean_action, mean_log_prob = torch.zeros(STATES), torch.zeros(STATES)
    with torch.no_grad():
        for k in range(STATES):
            drawn, log_prob = actor.sample(eye[k].expand(200_000, -1))
            mean_action[k], mean_log_prob[k] = drawn.mean(), log_prob.mean()
    index = torch.arange(STATES)
    expected = {
        "reward": mean_action + 0.5 * index,
        "cost": torch.where(index == 0, (mean_action + 1) / 2, 0.0),
    }
    shift = torch.roll(torch.eye(STATES), 1, dims=1)  # row k has its 1 at column k + 1
    values = {}
    for (name, signal), temperature in zip(expected.items(), temperatures, strict=True):
        bonus = signal - temperature * mean_log_prob
        values[name] = torch.linalg.solve(torch.eye(STATES) - GAMMA * shift, bonus)
    state = observations.argmax(dim=1)
    a = actions[:, 0]
    q = a + 0.5 * state + GAMMA * values["reward"][(state + 1) % STATES]
    qc = torch.where(state == 0, (a + 1) / 2, 0.0) + GAMMA * values["cost"][(state + 1) % STATES]
    return q, qc


def evaluation_error(
    critic: CriticEnsemble,
    observations: torch.Tensor,
    actions: torch.Tensor,
    true_q: torch.Tensor,
    true_qc: torch.Tensor,
) -> tuple[float, float]:
    """Mean squared error of the group means against the true Q and Qc."""
    with torch.no_grad():
        q = critic(observations, actions)
    reward, cost = critic.group(q, "reward").mean(0), critic.group(q, "cost").mean(0)
    return float((reward - true_q).pow(2).mean()), float((cost - true_qc).pow(2).mean())


def test_vpa_moves_pretrained_critics_to_the_frozen_policys_entropy_regularised_values() -> None:
    dataset = cycle_dataset()
    context = context_for(dataset)
    torch.manual_seed(1)
    actor = context.new_actor()
    critic = context.new_critics({"reward": 2, "cost": 2})
    with torch.no_grad():  # "pretrained" critics that are off: like CPQ's pushed-up cost Q
        critic.layers[-1].bias += 4.0
    target_critic = copy.deepcopy(critic).requires_grad_(False)
    config = VPAConfig(
        reward_temperature=0.3, cost_temperature=0.2, reward_lr=1e-3, cost_lr=1e-3, tau=0.05
    )
    vpa = ValuePreAlignment(config, context, actor, critic, target_critic)
    actor_before = {k: v.clone() for k, v in actor.state_dict().items()}

    observations = torch.as_tensor(dataset.observations[:600])
    actions = torch.as_tensor(dataset.actions[:600])
    true_q, true_qc = true_values(actor, observations, actions, (0.3, 0.2))
    plain_q, plain_qc = true_values(actor, observations, actions, (0.0, 0.0))
    before = evaluation_error(critic, observations, actions, true_q, true_qc)
    for _ in range(400):
        logs = vpa.step()
    after = evaluation_error(critic, observations, actions, true_q, true_qc)
    # measured: MSE (Q, Qc) 9.0, 13.5 before; 0.0011, 0.0008 after; 0.028, 0.014 against the
    # values without the entropy terms
    assert after[0] < 0.05 * before[0] and after[1] < 0.05 * before[1], (before, after)
    # the entropy terms are in the targets: closer to the regularised values than the plain ones
    plain = evaluation_error(critic, observations, actions, plain_q, plain_qc)
    assert after[0] < 0.5 * plain[0] and after[1] < 0.5 * plain[1], (after, plain)
    assert all(torch.equal(actor_before[k], v) for k, v in actor.state_dict().items())
    assert torch.isfinite(logs["loss/vpa"])


def test_each_group_steps_at_its_own_learning_rate() -> None:
    critic = CriticEnsemble(3, 1, {"reward": 2, "cost": 1}, (8,))
    before = [p.detach().clone() for p in critic.parameters()]
    with torch.no_grad():
        for parameter in critic.parameters():
            parameter += 1.0
    rescale_group_steps(critic, before, {"reward": 0.25, "cost": 1.0})
    for parameter, old in zip(critic.parameters(), before, strict=True):
        assert torch.allclose(parameter[:2] - old[:2], torch.full_like(old[:2], 0.25))
        assert torch.allclose(parameter[2:] - old[2:], torch.ones_like(old[2:]))


def test_vpa_refuses_critics_without_reward_and_cost_groups() -> None:
    context = context_for(cycle_dataset(transitions=30))
    with pytest.raises(ValueError, match="groups 'reward' and 'cost'"):
        ValuePreAlignment(
            VPAConfig(),
            context,
            context.new_actor(),
            context.new_critics(2),
            context.new_critics(2),
        )
