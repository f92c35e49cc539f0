"""Offline data on the training device, sampled by index.

The whole dataset is moved to the device once as tensors; a batch is one ``torch.randint`` and
one gather per key, with no Python-side copying. Actions are stored in the actor's squashed
units ([-1, 1] per dimension), which is what critics and losses work in; observation
statistics are computed here from the dataset and copied into every network's normaliser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from safepolicy.datasets import Dataset


@dataclass(frozen=True)
class Batch:
    """One minibatch of transitions (actions in [-1, 1])."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    costs: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor  # 1.0 where the episode terminated (not at timeouts: those bootstrap)


class OfflineBuffer:
    """A DSRL dataset as device tensors with observation statistics."""

    def __init__(
        self,
        dataset: Dataset,
        action_low: np.ndarray,
        action_high: np.ndarray,
        device: torch.device,
        reward_scale: float = 1.0,
    ) -> None:
        self.device = device
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        actions = torch.as_tensor(dataset.actions, dtype=torch.float32)
        unit_actions = (2.0 * (actions - low) / (high - low) - 1.0).clamp(-1.0, 1.0)

        def tensor(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float32, device=device)

        self.observations = tensor(dataset.observations)
        self.next_observations = tensor(dataset.next_observations)
        self.actions = unit_actions.to(device)
        self.rewards = tensor(dataset.rewards) * reward_scale
        self.costs = tensor(dataset.costs)
        self.terminals = tensor(dataset.terminals.astype(np.float32))
        self.size = len(dataset)
        # Constant dimensions (e.g. unused sensor slots) get std 1 so they do not blow up.
        self.obs_mean = self.observations.mean(dim=0)
        std = self.observations.std(dim=0)
        self.obs_std = torch.where(std < 1e-6, torch.ones_like(std), std)
        self.max_step_cost = float(self.costs.max().item()) if self.size else 1.0

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A uniform minibatch; ``generator`` lives on the CPU so runs replay exactly."""
        index = torch.randint(self.size, (batch_size,), generator=generator).to(self.device)
        return Batch(
            observations=self.observations[index],
            actions=self.actions[index],
            rewards=self.rewards[index],
            costs=self.costs[index],
            next_observations=self.next_observations[index],
            terminals=self.terminals[index],
        )

    def subset(self, rows: torch.Tensor) -> OfflineBuffer:
        """A buffer over ``rows`` only, sharing this buffer's observation statistics."""
        clone = object.__new__(OfflineBuffer)
        clone.__dict__.update(self.__dict__)
        keys = ("observations", "next_observations", "actions", "rewards", "costs", "terminals")
        for key in keys:
            setattr(clone, key, getattr(self, key)[rows.to(self.device)])
        clone.size = int(rows.numel())
        return clone


def episode_rows_within_cost(dataset: Dataset, cost_limit: float) -> np.ndarray:
    """Row indices of the episodes whose undiscounted cost is at most ``cost_limit``."""
    rows = [
        np.arange(s.start, s.stop)
        for s in dataset.episode_slices()
        if dataset.costs[s].sum() <= cost_limit
    ]
    return np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
