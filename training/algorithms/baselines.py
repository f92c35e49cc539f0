"""Baselines users compare against: BC-Safe and TD3+BC-Lag with a fixed multiplier.

BC-Safe (as the OSRL library configures it): keep the episodes whose undiscounted cost is within
the limit and clone them. Departure: the squashed Gaussian actor is fitted by the MSE of its
deterministic action (OSRL's loss) plus the maximum-likelihood log-std fit used by every actor
here, so the exported policy has a stochastic form too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from safepolicy.datasets import Dataset
from training.algorithms.base import TrainingContext, adam
from training.algorithms.td3bc import TD3BCOracle
from training.config import BCSafeConfig, TD3BCLagConfig
from training.data import episode_rows_within_cost
from training.losses import log_std_loss
from training.multipliers import FixedMultiplier
from training.networks import SquashedGaussianActor


class BCSafe:
    """Behaviour cloning restricted to the episodes that keep the cost limit."""

    def __init__(self, config: BCSafeConfig, context: TrainingContext, dataset: Dataset) -> None:
        rows = episode_rows_within_cost(dataset, context.cost_limit)
        if rows.size == 0:
            raise ValueError(
                f"BC-Safe: no episode in the dataset has cost <= {context.cost_limit:g}; "
                "raise --cost-limit or collect data with safer behaviour")
        self.buffer = context.buffer.subset(torch.as_tensor(rows))
        self.context = context
        self.actor = context.new_actor()
        self.optimizer = adam(self.actor.parameters(), lr=config.actor_lr)

    def step(self) -> dict[str, float]:
        batch = self.buffer.sample(self.context.batch_size, self.context.generator)
        mean, log_std = self.actor.distribution(batch.observations)
        loss = F.mse_loss(torch.tanh(mean), batch.actions) + log_std_loss(
            mean, log_std, batch.actions)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss/actor": loss.item()}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])


class TD3BCLag:
    """TD3+BC on r - lambda (c - b) with one fixed lambda for the whole run."""

    def __init__(self, config: TD3BCLagConfig, context: TrainingContext) -> None:
        self.multiplier = FixedMultiplier(config.lagrange_multiplier)
        self.oracle = TD3BCOracle(config.td3bc, context, config.per_step_budget)

    @property
    def actor(self) -> SquashedGaussianActor:
        return self.oracle.actor

    def step(self) -> dict[str, float]:
        """One TD3+BC update at the fixed lambda."""
        return self.oracle.step(self.multiplier.value)

    def state_dict(self) -> dict[str, Any]:
        return {"oracle": self.oracle.state_dict(), "multiplier": self.multiplier.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.oracle.load_state_dict(state["oracle"])
        self.multiplier.load_state_dict(state["multiplier"])
