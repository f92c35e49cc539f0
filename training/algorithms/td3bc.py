"""TD3+BC (Fujimoto & Gu, 2021) as an offline RL oracle for the Lagrangian reward.

The oracle maximises the value of r' = r - lambda * (c - b) for the lambda passed to each
update (O3SRL changes lambda every M steps; TD3+BC-Lag keeps one); the multiplier itself lives in
training/multipliers.py, never in the oracle.

TD3+BC's Q normaliser. The actor loss is -lambda_bc * mean Q'(s, pi(s)) + mean (pi(s) - a)^2 with
lambda_bc = alpha / q_scale, and q_scale is mean_batch |Q'(s, pi(s))|: the absolute value of the
*Lagrangian* Q' = Q_r - lambda Q_c (first reward and first cost critic) at the *policy's*
actions, detached (TD3+BC's 1/N sum |Q(s_i, pi(s_i))|, with Q' in place of Q).

Departures from the paper, and why:
- Reward and cost critics are learned separately and combined linearly,
  Q_{r'} = Q_r - lambda * (Q_c - b / (1 - gamma)). For a fixed policy the Bellman operator is
  linear in the reward, so this is the same fixed point as a critic of r'; but when lambda jumps
  between arms the critics need not re-learn, and O3SRL's value estimate of the cost comes for
  free. Targets use the minimum of the reward critics and the maximum of the cost critics
  (clipped double Q, pessimistic for both signals).
- All 2 x ``critics_per_signal`` critics are one batched ensemble (one matmul per layer).
- The actor is the project's squashed Gaussian actor: TD3+BC trains its deterministic path
  tanh(mean); its log-std head is fitted by maximum likelihood to the dataset actions with the
  mean detached, so the exported stochastic policy has a calibrated spread without changing
  the TD3+BC objective.
- ``q_scale_ema`` > 0 (O3SRL's default) takes q_scale from a running average of that
  per-batch mean |Q'(s, pi(s))| (rate ``q_scale_ema``) instead of the current batch alone.
  With one lambda the two are the same up to noise; when O3SRL switches lambda every M
  steps, a per-batch scale gives each arm its own step size (arms whose Lagrangian Q is
  near zero push hardest), so the actor no longer follows the mixture EXP3 plays. On the
  speed/cost toy with per-batch scaling EXP3 had E[lambda] = 3.8 yet the actor's cost stayed
  at 5.8-6.5 (a fixed lambda of 3.75 gives 3.1); with a shared running scale the actor's
  cost tracked E[lambda] (tests/test_training.py).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

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
    ensemble_estimate,
    ensemble_mse,
    log_std_loss,
    td3bc_actor_loss,
    td_targets,
)
from safepolicy.training.networks import SquashedGaussianActor


class TD3BCConfig(Config):
    """TD3+BC (Fujimoto & Gu 2021) as an oracle for the Lagrangian reward."""

    actor_lr: float = param(3e-4, "actor learning rate", "TD3+BC: 3e-4", gt=0.0)
    critic_lr: float = param(3e-4, "critic learning rate", "TD3+BC: 3e-4", gt=0.0)
    tau: float = param(0.005, "target network EMA rate", "TD3+BC: 0.005", gt=0.0, le=1.0)
    policy_noise: float = param(
        0.2, "target policy smoothing noise (unit actions)", "TD3: 0.2", ge=0.0
    )
    noise_clip: float = param(0.5, "clip of the smoothing noise", "TD3: 0.5", ge=0.0)
    policy_delay: int = param(2, "critic updates per actor update", "TD3: 2", ge=1)
    alpha: float = param(
        2.5, "Q weight against BC: lambda_bc = alpha / mean|Q'(s, pi(s))|", "TD3+BC: 2.5", ge=0.0
    )
    critics_per_signal: int = param(
        2, "critics for reward and for cost (clipped double Q)", "TD3: 2", ge=1
    )
    cost_critics: int = param(
        0,
        "cost critics when they should differ from the reward's "
        "(0: critics_per_signal); a larger ensemble gives the pessimistic "
        "cost estimates room to disagree",
        "TD3: 2",
        ge=0,
    )
    cost_target: Literal["max", "mean"] = param(
        "max",
        "how the cost critics' TD target combines the target ensemble: max (the pessimistic "
        "mirror of clipped double Q) or mean (each member learns the same target; their "
        "disagreement off the data is left for the readers of the ensemble)",
        "TD3: min for reward, so max for cost",
    )
    q_scale_ema: float = param(
        0.0,
        "0: lambda_bc from this batch's mean|Q'(s, pi(s))| "
        "(TD3+BC); > 0: from its running average at this rate, one scale "
        "for all arms",
        "TD3+BC: per batch",
        ge=0.0,
        le=1.0,
    )


class TD3BCOracle:
    """TD3+BC on r - lambda (c - b); lambda is an argument of every update."""

    COMPONENTS = (
        "actor",
        "critic",
        "target_actor",
        "target_critic",
        "actor_optimizer",
        "critic_optimizer",
    )

    def __init__(
        self,
        config: TD3BCConfig,
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
            {
                "reward": config.critics_per_signal,
                "cost": config.cost_critics or config.critics_per_signal,
            }
        )
        # the actor reads the first critic of each group (TD3)
        self.first_critics = [self.critic.members("reward")[0], self.critic.members("cost")[0]]
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)
        self.updates = 0
        self.running_q_scale: torch.Tensor | None = None

    def unit_action(self, actor: SquashedGaussianActor, observations: torch.Tensor) -> torch.Tensor:
        """The deterministic action in [-1, 1] (critics work in these units)."""
        return torch.tanh(actor.distribution(observations)[0])

    def step(self, lagrange_multiplier: float) -> dict[str, float | torch.Tensor]:
        """One TD3+BC update on a fresh minibatch for the reward r - lambda (c - b)."""
        batch = self.context.offline.sample(self.context.batch_size, self.context.generator)
        return self.update(batch, lagrange_multiplier)

    def update(
        self,
        batch: Batch,
        lagrange_multiplier: float,
    ) -> dict[str, float | torch.Tensor]:
        """Critic update every call; actor, log-std and targets every ``policy_delay`` calls."""
        config = self.config
        logs: dict[str, float | torch.Tensor] = {}
        with torch.no_grad():
            noise = torch.randn(batch.actions.shape, generator=self.context.generator)
            noise = (noise.to(batch.actions.device) * config.policy_noise).clamp(
                -config.noise_clip, config.noise_clip
            )
            next_actions = (
                self.unit_action(self.target_actor, batch.next_observations) + noise
            ).clamp(-1.0, 1.0)
            next_q = self.target_critic(batch.next_observations, next_actions)
            targets = td_targets(
                next_q,
                (batch.rewards, batch.costs),
                batch.terminals,
                self.context.gamma,
                sizes=self.critic.group_sizes,
                reductions=("min", config.cost_target),
            )
        loss = ensemble_mse(self.critic(batch.observations, batch.actions), targets)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        logs["loss/critic"] = loss.detach()

        self.updates += 1
        if self.updates % config.policy_delay == 0:
            mean, log_std = self.actor.distribution(batch.observations)
            policy_actions = torch.tanh(mean)
            # TD3 reads the first critic of each signal; the critics' own weights get no
            # gradient here (they are not updated by the actor loss), which saves their
            # weight-gradient matmuls.
            self.critic.requires_grad_(False)
            q_reward, q_cost = self.critic(
                batch.observations, policy_actions, members=self.first_critics
            )
            self.critic.requires_grad_(True)
            lagrangian_q = q_reward - lagrange_multiplier * q_cost
            actor_loss = td3bc_actor_loss(
                lagrangian_q,
                policy_actions,
                batch.actions,
                config.alpha,
                self.q_scale(lagrangian_q),
            )
            actor_loss = actor_loss + log_std_loss(mean, log_std, batch.actions)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
            soft_update(self.target_critic, self.critic, config.tau)
            soft_update(self.target_actor, self.actor, config.tau)
            logs["loss/actor"] = actor_loss.detach()
        return logs

    def q_scale(self, lagrangian_q: torch.Tensor) -> torch.Tensor:
        """mean |Q| of this batch (TD3+BC), or its running average when ``q_scale_ema`` > 0.

        Kept as a device tensor: reading it back to Python would wait on the device every
        actor update.
        """
        batch_scale = lagrangian_q.detach().abs().mean()
        rate = self.config.q_scale_ema
        if rate <= 0.0:
            return batch_scale
        if self.running_q_scale is None:
            self.running_q_scale = batch_scale
        else:
            self.running_q_scale = torch.lerp(self.running_q_scale, batch_scale, rate)
        return self.running_q_scale

    @torch.no_grad()
    def value_estimates(
        self, observations: torch.Tensor, cost_estimate: str = "mean", ucb_k: float = 1.0
    ) -> tuple[float, float]:
        """Mean Q_r(s, pi(s)) and the cost ensemble's estimate of Q_c(s, pi(s)) over states.

        ``cost_estimate`` reduces the cost critics per state (``losses.ensemble_estimate``:
        mean, max or mean + ucb_k * std) before the mean over ``observations``.
        """
        q = self.critic(observations, self.unit_action(self.actor, observations))
        return (
            self.critic.group(q, "reward").mean().item(),
            ensemble_estimate(self.critic.group(q, "cost"), cost_estimate, ucb_k).mean().item(),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **component_states(self, self.COMPONENTS),
            "updates": self.updates,
            "running_q_scale": self.running_q_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_component_states(self, self.COMPONENTS, state)
        self.updates = int(state["updates"])
        running = state.get("running_q_scale")
        self.running_q_scale = (
            None if running is None else torch.as_tensor(running, device=self.context.device)
        )
