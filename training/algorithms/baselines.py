"""Baselines users compare against: BC-Safe and TD3+BC-Lag with a fixed multiplier.

BC-Safe (as the OSRL library configures it): keep the episodes whose undiscounted cost is within
the limit and clone them. Departure: the squashed Gaussian actor is fitted by the MSE of its
deterministic action (OSRL's loss) plus the maximum-likelihood log-std fit used by every actor
here, so the exported policy has a stochastic form too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from safepolicy.training.algorithms.base import TrainingContext, adam
from safepolicy.training.algorithms.td3bc import TD3BCConfig, TD3BCOracle
from safepolicy.training.config import Config, param
from safepolicy.training.data import episode_rows_within_cost
from safepolicy.training.losses import log_std_loss
from safepolicy.training.multipliers import FixedMultiplier
from safepolicy.training.networks import SquashedGaussianActor
from safepolicy.training.registry import AlgorithmSpec


class TD3BCLagConfig(Config):
    """Baseline: TD3+BC on the Lagrangian reward with one fixed multiplier."""

    lagrange_multiplier: float = param(1.0, "the fixed lambda", "baseline, no paper value", ge=0.0)
    per_step_budget: Literal["episode", "paper"] = param("episode", "as in O3SRL")
    td3bc: TD3BCConfig = Field(default_factory=TD3BCConfig)


class BCSafeConfig(Config):
    """Baseline: behaviour cloning of the episodes within the cost limit."""

    actor_lr: float = param(1e-3, "actor learning rate", "OSRL BC-Safe: 1e-3", gt=0.0)


class BCSafe:
    """Behaviour cloning restricted to the episodes that keep the cost limit."""

    def __init__(self, config: BCSafeConfig, context: TrainingContext) -> None:
        if context.dataset is None:
            raise ValueError("BC-Safe clones dataset episodes; the run has no dataset")
        rows = episode_rows_within_cost(context.dataset, context.cost_limit)
        if rows.size == 0:
            raise ValueError(
                f"BC-Safe: no episode in the dataset has cost <= {context.cost_limit:g}; "
                "raise --cost-limit or collect data with safer behaviour"
            )
        self.buffer = context.offline.subset(torch.as_tensor(rows))
        self.context = context
        self.actor = context.new_actor()
        self.optimizer = adam(self.actor.parameters(), lr=config.actor_lr)

    def start_stage(self, stage: str) -> None:
        """One stage; nothing to set up."""

    def step(self, stage: str) -> dict[str, float | torch.Tensor]:
        batch = self.buffer.sample(self.context.batch_size, self.context.generator)
        mean, log_std = self.actor.distribution(batch.observations)
        loss = F.mse_loss(torch.tanh(mean), batch.actions) + log_std_loss(
            mean, log_std, batch.actions
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss/actor": loss.detach()}

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

    def start_stage(self, stage: str) -> None:
        """One stage; nothing to set up."""

    def step(self, stage: str) -> dict[str, float | torch.Tensor]:
        """One TD3+BC update at the fixed lambda."""
        return self.oracle.step(self.multiplier.value)

    def state_dict(self) -> dict[str, Any]:
        return {"oracle": self.oracle.state_dict(), "multiplier": self.multiplier.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.oracle.load_state_dict(state["oracle"])
        self.multiplier.load_state_dict(state["multiplier"])


TD3BC_LAG_SPEC = AlgorithmSpec(
    name="td3bc-lag",
    config_type=TD3BCLagConfig,
    build=TD3BCLag,
    summary="TD3+BC on r - lambda (c - b) with one fixed lambda (baseline)",
)
BC_SAFE_SPEC = AlgorithmSpec(
    name="bc-safe",
    config_type=BCSafeConfig,
    build=BCSafe,
    summary="behaviour cloning of the episodes within the cost limit (baseline)",
)
