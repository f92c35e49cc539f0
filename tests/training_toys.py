"""Small constructed problems for training tests (no environment needed)."""

from __future__ import annotations

import numpy as np
import torch

from safepolicy.datasets import Dataset
from training.algorithms.base import TrainingContext
from training.data import OfflineBuffer

TOY_EPISODE_LENGTH = 10


def speed_cost_dataset(transitions: int = 4000, seed: int = 0) -> Dataset:
    """One action 'speed' a in [-1, 1]: reward a, cost (a + 1) / 2; behaviour uniform.

    Going faster always pays more and costs more, so an unconstrained learner drives a -> 1
    (cost rate about 1 per step), while a budget of b per step requires a <= 2b - 1.
    Episodes never terminate (they time out), so values bootstrap like a long task's.
    """
    rng = np.random.default_rng(seed)
    observations = rng.uniform(-1, 1, size=(transitions, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(transitions, 1)).astype(np.float32)
    timeouts = np.zeros(transitions, dtype=bool)
    timeouts[TOY_EPISODE_LENGTH - 1 :: TOY_EPISODE_LENGTH] = True
    return Dataset(
        observations=observations,
        next_observations=rng.uniform(-1, 1, size=(transitions, 2)).astype(np.float32),
        actions=actions,
        rewards=actions[:, 0].copy(),
        costs=(actions[:, 0] + 1.0) / 2.0,
        terminals=np.zeros(transitions, dtype=bool),
        timeouts=timeouts,
        attrs={"task": "toy-speed"},
    )


def toy_context(dataset: Dataset, cost_limit: float, total_steps: int, seed: int = 0,
                gamma: float = 0.9, hidden_sizes: tuple[int, ...] = (64, 64),
                batch_size: int = 128, reward_scale: float = 1.0) -> TrainingContext:
    torch.manual_seed(seed)
    buffer = OfflineBuffer(dataset, np.array([-1.0]), np.array([1.0]), torch.device("cpu"),
                           reward_scale=reward_scale)
    return TrainingContext(
        buffer=buffer, obs_dim=2, action_dim=1, action_low=[-1.0], action_high=[1.0],
        hidden_sizes=list(hidden_sizes), gamma=gamma, batch_size=batch_size, cost_limit=cost_limit,
        episode_length=TOY_EPISODE_LENGTH, total_steps=total_steps, device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed), seed=seed)


def episode_cost_of(actor: torch.nn.Module, dataset: Dataset) -> float:
    """The toy's exact episode cost of the deterministic actor, averaged over dataset states."""
    with torch.no_grad():
        actions = actor(torch.as_tensor(dataset.observations))[:, 0].numpy()
    return float(((actions + 1.0) / 2.0).mean() * TOY_EPISODE_LENGTH)
