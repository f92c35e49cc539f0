"""IQL (Kostrikov et al., 2022) as an offline RL oracle for the Lagrangian reward.

Departures from the paper, and why:
- As in the TD3+BC oracle, reward and cost are learned separately: Q_r with an upper expectile
  value V_r (optimistic in-sample maximum of reward), Q_c with the lower expectile value V_c
  (the in-sample minimum of cost). The Lagrangian advantage used by advantage-weighted
  regression is A = (Q_r - V_r) - lambda * (Q_c - V_c). An expectile is not linear, so this is
  an approximation of IQL on r' (exact when both signals' expectiles are taken at the same
  actions); it lets lambda change every M steps without re-learning any value.
- The policy is the squashed Gaussian actor; AWR fits its full log-likelihood.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from safepolicy.training.algorithms.base import (
    TrainingContext,
    adam,
    component_states,
    load_component_states,
    per_step_budget,
    soft_update,
)
from safepolicy.training.config import Config, param
from safepolicy.training.data import Batch
from safepolicy.training.losses import (
    awr_weights,
    ensemble_estimate,
    ensemble_mse,
    expectile_loss,
    reduce_groups,
    stacked_targets,
    td_target,
)


class IQLConfig(Config):
    """IQL (Kostrikov et al. 2022) as an oracle for the Lagrangian reward."""

    actor_lr: float = param(3e-4, "actor learning rate", "IQL: 3e-4", gt=0.0)
    critic_lr: float = param(3e-4, "Q and V learning rate", "IQL: 3e-4", gt=0.0)
    tau: float = param(0.005, "target network EMA rate", "IQL: 0.005", gt=0.0, le=1.0)
    expectile: float = param(
        0.7,
        "expectile of the reward value (cost uses 1 - expectile)",
        "IQL: 0.7 (locomotion)",
        gt=0.0,
        lt=1.0,
    )
    beta: float = param(
        3.0, "inverse temperature of advantage-weighted regression", "IQL: 3.0", ge=0.0
    )
    max_weight: float = param(100.0, "clip of the exp-advantage weights", "IQL: 100", gt=0.0)
    critics_per_signal: int = param(2, "critics for reward and for cost", "IQL: 2", ge=1)


class IQLOracle:
    """IQL on r - lambda (c - b) with separate reward and cost values; lambda per update."""

    COMPONENTS = (
        "actor",
        "critic",
        "value",
        "target_critic",
        "actor_optimizer",
        "critic_optimizer",
        "value_optimizer",
    )

    def __init__(
        self,
        config: IQLConfig,
        context: TrainingContext,
        per_step_budget_mode: str,
    ) -> None:
        self.config = config
        self.context = context
        self.budget_per_step = per_step_budget(
            context.cost_limit, context.gamma, context.episode_length, per_step_budget_mode
        )
        self.actor = context.new_actor()
        self.critic = context.new_critics(
            {"reward": config.critics_per_signal, "cost": config.critics_per_signal}
        )
        self.value = context.new_value(outputs=2)  # reward and cost values
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)
        self.value_optimizer = adam(self.value.parameters(), lr=config.critic_lr)

    def step(self, lagrange_multiplier: float) -> dict[str, float | torch.Tensor]:
        """One IQL update on a fresh minibatch for the reward r - lambda (c - b)."""
        batch = self.context.offline.sample(self.context.batch_size, self.context.generator)
        return self.update(batch, lagrange_multiplier)

    def update(
        self,
        batch: Batch,
        lagrange_multiplier: float,
    ) -> dict[str, float | torch.Tensor]:
        """Value, then Q, then policy, as in the IQL paper's Algorithm 1."""
        config, gamma = self.config, self.context.gamma
        with torch.no_grad():
            target_q = self.target_critic(batch.observations, batch.actions)
            reward_q, cost_q = reduce_groups(target_q, self.critic.group_sizes, ("min", "max"))
        values = self.value(batch.observations)
        value_loss = expectile_loss(reward_q - values[:, 0], config.expectile) + expectile_loss(
            cost_q - values[:, 1], 1.0 - config.expectile
        )
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_optimizer.step()

        with torch.no_grad():
            next_values = self.value(batch.next_observations)
            targets = stacked_targets(
                [
                    td_target(batch.rewards, batch.terminals, next_values[:, 0], gamma),
                    td_target(batch.costs, batch.terminals, next_values[:, 1], gamma),
                ],
                self.critic.group_sizes,
            )
        q_loss = ensemble_mse(self.critic(batch.observations, batch.actions), targets)
        self.critic_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_optimizer.step()
        soft_update(self.target_critic, self.critic, config.tau)

        with torch.no_grad():
            values = values.detach()
            advantages = (reward_q - values[:, 0]) - lagrange_multiplier * (cost_q - values[:, 1])
            weights = awr_weights(advantages, config.beta, config.max_weight)
        log_prob = self.actor.log_prob(batch.observations, self.actor.scale(batch.actions))
        actor_loss = -(weights * log_prob).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        return {
            "loss/value": value_loss.detach(),
            "loss/critic": q_loss.detach(),
            "loss/actor": actor_loss.detach(),
        }

    @torch.no_grad()
    def value_estimates(
        self, observations: torch.Tensor, cost_estimate: str = "mean", ucb_k: float = 1.0
    ) -> tuple[float, float]:
        """Mean Q_r(s, pi(s)) and the cost critics' estimate of Q_c(s, pi(s))
        (``losses.ensemble_estimate``) at the policy's deterministic actions."""
        actions = torch.tanh(self.actor.distribution(observations)[0])
        q = self.critic(observations, actions)
        return (
            self.critic.group(q, "reward").mean().item(),
            ensemble_estimate(self.critic.group(q, "cost"), cost_estimate, ucb_k).mean().item(),
        )

    def state_dict(self) -> dict[str, Any]:
        return component_states(self, self.COMPONENTS)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_component_states(self, self.COMPONENTS, state)
