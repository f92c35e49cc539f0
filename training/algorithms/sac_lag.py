"""SAC-Lag (Ray et al. 2019; Marvel's "From Scratch" baseline, seed 002), online, from scratch.

Soft actor-critic on the Lagrangian Q_r - lambda Q_c in the task's real (vectorised)
environments, with lambda driven by the measured cost of the episodes that finish. Settings
are FSRL's SAC-Lag (Liu et al. 2024, the reference Marvel compares its SAC-Lag with) unless
a field says otherwise.

One loop step is one vector step of ``num_envs`` environments (``num_envs`` transitions into
the replay buffer) followed by the gradient updates it is owed at ``update_to_data`` updates per
transition (a fractional credit carries over), so ``--steps N`` plays N * num_envs transitions.
The first ``warmup_steps`` transitions use uniform random actions and no updates. Every time
episodes finish, the multiplier takes one update from their mean episode cost against
``--cost-limit``.

One update, in the paper's order (Marvel Eq. 4-5 with the Lagrangian actor; Haarnoja 2018):
1. critics, one fused ensemble with groups "reward" and "cost": targets
   r + gamma (1 - d) (min_j Q_r'(s', a') - alpha log pi(a'|s')) and
   c + gamma (1 - d) max_j Q_c'(s', a'), a' ~ pi(s') (``cost_reduction``: max by default);
2. actor: E[alpha log pi(a|s) - (min Q_r - lambda max Q_c)] / (1 + lambda), a ~ pi(s);
3. temperature: SAC's automatic alpha towards the entropy target -|A|;
4. target critics: Polyak averaging at rate ``tau``.
``SACLagUpdate`` (the update) and ``OnlineLearner`` (collector, replay, sampler, multiplier,
update credit) are shared with Marvel's online stage (marvel.py).

Departures, and why:
- Reward and cost critics are one fused ensemble with one Adam; their own learning rates
  (``critic_lr``, ``cost_critic_lr``) are applied by scaling each group's step.
- The cost target has no entropy term: the entropy bonus is part of the reward objective
  (as in safety-starter-agents' SAC-Lag); the cost group is reduced by ``cost_reduction``,
  max by default (pessimistic for a signal to keep low), the reward group by min (clipped
  double Q).
- The multiplier updates once per vector step in which episodes finished, from their mean
  cost (FSRL's cadence: once per collect), not once per gradient update, so the paper's
  per-iteration aPID gains (1e-4, 1e-5, 1e-5) do not transfer; the defaults are FSRL's PID
  gains (0.05, 0.0005, 0.1), made for this cadence. Warm-up episodes (random actions) do not
  update it.
- The actor loss is divided by 1 + lambda (FSRL's ``rescaling``), so a large lambda does not
  inflate the actor's step.
- Sampling noise comes from the run's CPU generator (replayable), not torch's global RNG.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from safepolicy.training.algorithms.base import (
    Logs,
    TrainingContext,
    adam,
    component_states,
    load_component_states,
    soft_update,
)
from safepolicy.training.algorithms.vpa import rescale_group_steps
from safepolicy.training.config import Config, param
from safepolicy.training.data import Batch, OfflineBuffer
from safepolicy.training.losses import (
    ensemble_mse,
    reduce_members,
    sac_actor_loss,
    sac_temperature_loss,
    td_targets,
)
from safepolicy.training.multipliers import (
    AdaptivePIDMultiplier,
    DualAscent,
    Multiplier,
    PIDGains,
    PIDMultiplier,
)
from safepolicy.training.networks import (
    CriticEnsemble,
    SquashedGaussianActor,
    squashed_gaussian_log_prob,
)
from safepolicy.training.registry import AlgorithmSpec
from safepolicy.training.replay import EnvironmentCollector, MixedSampler, ReplayBuffer

MultiplierName = Literal["apid", "pid", "dual-ascent"]


class OnlineConfig(Config):
    """What the online learner and the SAC-Lag update read (shared with Marvel's online stage,
    which sets its own defaults)."""

    num_envs: int = param(4, "vectorised environments stepped together", "FSRL: 20", gt=0)
    warmup_steps: int = param(
        2_000,
        "first environment transitions with uniform random actions and no updates",
        "Tianshou/FSRL random start",
        ge=0,
    )
    update_to_data: float = param(
        0.2, "gradient updates per environment transition", "FSRL update_per_step: 0.2", gt=0.0
    )
    replay_capacity: int = param(
        100_000, "online replay buffer size (transitions)", "FSRL: 1e5; Marvel: 1e6", gt=0
    )
    actor_lr: float = param(5e-4, "actor learning rate", "FSRL: 5e-4", gt=0.0)
    critic_lr: float = param(1e-3, "reward critics' learning rate", "FSRL: 1e-3", gt=0.0)
    cost_critic_lr: float | None = param(
        None, "cost critics' learning rate (none: critic_lr)", "FSRL: critic_lr", gt=0.0
    )
    temperature_lr: float = param(3e-4, "entropy temperature learning rate", "FSRL: 3e-4", gt=0.0)
    learn_temperature: bool = param(
        True, "adapt alpha towards the entropy target -|A|", "FSRL auto_alpha: true"
    )
    tau: float = param(
        0.05, "target critics' Polyak rate", "FSRL: 0.05; Marvel: 5e-3", gt=0.0, le=1.0
    )
    cost_reduction: Literal["max", "min", "mean"] = param(
        "max",
        "how the cost critics combine in targets and the actor (max: pessimistic)",
        "not stated; reward critics: min (clipped double Q)",
    )
    rescale_actor_loss: bool = param(
        True, "divide the actor loss by 1 + lambda", "FSRL rescaling: true"
    )
    multiplier: MultiplierName = param(
        "apid",
        "Lagrange update: apid (Marvel's adaptive PID), pid (Stooke et al.) or dual-ascent",
        "Marvel: apid",
    )
    kp: float = param(
        0.05,
        "initial proportional gain (pid, apid)",
        "FSRL: 0.05 per collect; Marvel: 1e-4 per update",
        ge=0.0,
    )
    ki: float = param(
        0.0005,
        "initial integral gain (pid, apid)",
        "FSRL: 5e-4 per collect; Marvel: 1e-5 per update",
        ge=0.0,
    )
    kd: float = param(
        0.1,
        "initial derivative gain (pid, apid)",
        "FSRL: 0.1 per collect; Marvel: 1e-5 per update",
        ge=0.0,
    )
    apid_rate: float = param(
        0.05, "aPID gain adaptation rate (eta for Kp, Ki and Kd)", "Marvel: 0.05", ge=0.0
    )
    dual_ascent_lr: float = param(
        0.005,
        "dual-ascent step per update on the episode-cost violation",
        "Marvel: 10x its Ki (1e-4 vs 1e-5)",
        gt=0.0,
    )
    initial_lambda: float = param(
        0.0, "lambda at the start (integral state for pid/apid)", "Marvel: 0", ge=0.0
    )
    lambda_max: float = param(1000.0, "upper bound of lambda", gt=0.0)


class SACLagConfig(OnlineConfig):
    """SAC-Lag from scratch: online SAC on Q_r - lambda Q_c, lambda from the episodes' cost."""

    reward_critics: int = param(
        2, "reward critics (min of them in targets and the actor)", "SAC: 2", gt=0
    )
    cost_critics: int = param(
        2, "cost critics (max of them in targets and the actor)", "FSRL: 2", gt=0
    )
    initial_temperature: float = param(
        0.005, "entropy temperature alpha at the start", "FSRL: 0.005", gt=0.0
    )


def build_multiplier(config: OnlineConfig) -> Multiplier:
    """The Lagrange multiplier the config names, started at ``initial_lambda``."""
    gains = PIDGains(config.kp, config.ki, config.kd)
    if config.multiplier == "apid":
        rate = config.apid_rate
        return AdaptivePIDMultiplier(
            gains,
            max_value=config.lambda_max,
            initial_integral=config.initial_lambda,
            proportional_rate=rate,
            integral_rate=rate,
            derivative_rate=rate,
        )
    if config.multiplier == "pid":
        return PIDMultiplier(
            gains, max_value=config.lambda_max, initial_integral=config.initial_lambda
        )
    return DualAscent(
        config.dual_ascent_lr, initial=config.initial_lambda, max_value=config.lambda_max
    )


def sample_unit_actions(
    actor: SquashedGaussianActor, observations: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised actions in [-1, 1] (the critics' units) and their log-probabilities,
    with the noise drawn from ``generator`` (CPU) so a run replays exactly."""
    mean, log_std = actor.distribution(observations)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device, non_blocking=True)
    pre_squash = mean + log_std.exp() * noise
    return torch.tanh(pre_squash), squashed_gaussian_log_prob(pre_squash, mean, log_std)


def soft_reward(
    rewards: torch.Tensor,
    terminals: torch.Tensor,
    next_log_prob: torch.Tensor,
    temperature: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """r - gamma (1 - d) alpha log pi(a'|s'): SAC's entropy bonus of the next state folded into
    the reward, so the one-step target r' + gamma (1 - d) min Q' is SAC's soft target."""
    return rewards - gamma * (1.0 - terminals) * temperature * next_log_prob


def lagrangian_actor_loss(
    reward_q: torch.Tensor,
    cost_q: torch.Tensor,
    log_prob: torch.Tensor,
    temperature: torch.Tensor,
    lagrange_multiplier: float,
    rescale: bool,
) -> torch.Tensor:
    """E[alpha log pi - (Q_r - lambda Q_c)], divided by 1 + lambda when ``rescale``."""
    loss = sac_actor_loss(reward_q - lagrange_multiplier * cost_q, log_prob, temperature)
    return loss / (1.0 + lagrange_multiplier) if rescale else loss


class SACLagUpdate:
    """SAC-Lag's networks, optimisers and one gradient update on a minibatch."""

    def __init__(
        self,
        config: OnlineConfig,
        context: TrainingContext,
        actor: SquashedGaussianActor,
        critics: CriticEnsemble,
        initial_temperature: float,
    ) -> None:
        if set(critics.groups) != {"reward", "cost"}:
            raise ValueError(
                f"SAC-Lag needs critic groups 'reward' and 'cost', got {', '.join(critics.groups)}"
            )
        self.config, self.context = config, context
        self.actor, self.critics = actor, critics
        self.target_critics = copy.deepcopy(critics).requires_grad_(False)
        self.actor_optimizer = adam(actor.parameters(), lr=config.actor_lr)
        # one Adam over the fused ensemble at the larger rate; each group's step is then
        # scaled to its own rate (vpa.py's rescale_group_steps: exact for Adam)
        cost_lr = config.critic_lr if config.cost_critic_lr is None else config.cost_critic_lr
        top_lr = max(config.critic_lr, cost_lr)
        self.critic_optimizer = adam(critics.parameters(), lr=top_lr)
        self.group_step_scales = {"reward": config.critic_lr / top_lr, "cost": cost_lr / top_lr}
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(initial_temperature), device=context.device)
        )
        self.temperature_optimizer = adam([self.log_temperature], lr=config.temperature_lr)
        self.target_entropy = -float(context.action_dim)
        self.reductions = [
            "min" if name == "reward" else config.cost_reduction for name in critics.groups
        ]

    def critic_loss(self, batch: Batch, temperature: torch.Tensor) -> torch.Tensor:
        """Soft TD error of every reward and cost critic against the target critics."""
        generator = self.context.generator
        with torch.no_grad():
            next_actions, next_log_prob = sample_unit_actions(
                self.actor, batch.next_observations, generator
            )
            next_q = self.target_critics(batch.next_observations, next_actions)
            signals = {
                "reward": soft_reward(
                    batch.rewards, batch.terminals, next_log_prob, temperature, self.context.gamma
                ),
                "cost": batch.costs,
            }
            targets = td_targets(
                next_q,
                [signals[name] for name in self.critics.groups],
                batch.terminals,
                self.context.gamma,
                self.critics.group_sizes,
                self.reductions,
            )
        return ensemble_mse(self.critics(batch.observations, batch.actions), targets)

    def update(self, batch: Batch, lagrange_multiplier: float) -> dict[str, torch.Tensor]:
        """Critics, actor, temperature, targets (one step each); returns detached logs."""
        temperature = self.log_temperature.exp().detach()
        critic_loss = self.critic_loss(batch, temperature)
        rescale = any(scale != 1.0 for scale in self.group_step_scales.values())
        before = [p.detach().clone() for p in self.critics.parameters()] if rescale else []
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        if rescale:
            rescale_group_steps(self.critics, before, self.group_step_scales)

        actions, log_prob = sample_unit_actions(
            self.actor, batch.observations, self.context.generator
        )
        self.critics.requires_grad_(False)
        q = self.critics(batch.observations, actions)
        self.critics.requires_grad_(True)
        reward_q = reduce_members(self.critics.group(q, "reward"), "min")
        cost_q = reduce_members(self.critics.group(q, "cost"), self.config.cost_reduction)
        actor_loss = lagrangian_actor_loss(
            reward_q,
            cost_q,
            log_prob,
            temperature,
            lagrange_multiplier,
            self.config.rescale_actor_loss,
        )
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()

        logs = {
            "loss/critic": critic_loss.detach(),
            "loss/actor": actor_loss.detach(),
            "q/reward": reward_q.detach().mean(),
            "q/cost": cost_q.detach().mean(),
            "sac/entropy": -log_prob.detach().mean(),
            "sac/temperature": temperature,
        }
        if self.config.learn_temperature:
            temperature_loss = sac_temperature_loss(
                self.log_temperature, log_prob, self.target_entropy
            )
            self.temperature_optimizer.zero_grad(set_to_none=True)
            temperature_loss.backward()
            self.temperature_optimizer.step()
            logs["loss/temperature"] = temperature_loss.detach()
        soft_update(self.target_critics, self.critics, self.config.tau)
        return logs

    COMPONENTS = (
        "actor",
        "critics",
        "target_critics",
        "actor_optimizer",
        "critic_optimizer",
        "temperature_optimizer",
    )

    def state_dict(self) -> dict[str, Any]:
        state = component_states(self, self.COMPONENTS)
        state["log_temperature"] = self.log_temperature.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_component_states(self, self.COMPONENTS, state)
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])


class UniformRandomActor(SquashedGaussianActor):
    """The warm-up policy: actions uniform in the bounds, through the collector's actor
    interface (a pre-squash mean atanh(u), u ~ U(-1, 1), with a vanishing spread)."""

    def __init__(self, context: TrainingContext) -> None:
        super().__init__(
            context.obs_dim, context.action_dim, [1], context.action_low, context.action_high
        )
        self.generator = context.generator
        self.to(context.device)

    def distribution(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (observations.shape[0], self.action_dim)
        uniform = torch.rand(shape, generator=self.generator).to(observations.device)
        mean = torch.atanh((2.0 * uniform - 1.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        return mean, torch.full_like(mean, -30.0)


class OnlineLearner:
    """Online SAC-Lag: steps the environments, keeps the replay, updates the multiplier from
    finished episodes and runs the owed gradient updates on a (possibly mixed) minibatch."""

    def __init__(
        self,
        config: OnlineConfig,
        context: TrainingContext,
        update: SACLagUpdate,
        offline: OfflineBuffer | None = None,
        online_fraction: float = 1.0,
    ) -> None:
        if context.task is None:
            raise ValueError(
                "an online algorithm needs the task's environment; the training context has no task"
            )
        self.config, self.context, self.update = config, context, update
        self.replay = ReplayBuffer(
            config.replay_capacity,
            context.obs_dim,
            context.action_dim,
            context.device,
            reward_scale=context.reward_scale,
        )
        self.sampler = MixedSampler(offline, self.replay, online_fraction)
        self.multiplier = build_multiplier(config)
        self.random_actor = UniformRandomActor(context)
        self.update_credit = 0.0
        self._collector: EnvironmentCollector | None = None
        self._collector_state: dict[str, Any] | None = None

    @property
    def collector(self) -> EnvironmentCollector:
        """The environments, opened on first use (after a resume: at the saved counters)."""
        if self._collector is None:
            assert self.context.task is not None
            self._collector = EnvironmentCollector(
                self.context.task, self.config.num_envs, self.context.seed, self.context.device
            )
            if self._collector_state is not None:
                self._collector.load_state_dict(self._collector_state)
        return self._collector

    def step(self) -> Logs:
        """One vector step in the environments, then the gradient updates it is owed."""
        collector = self.collector
        warming_up = collector.env_steps < self.config.warmup_steps
        actor = self.random_actor if warming_up else self.update.actor
        finished = collector.collect(actor, 1, self.replay, self.context.generator)
        logs: dict[str, float | torch.Tensor] = {}
        if finished:
            episode_cost = float(np.mean([record.episode_cost for record in finished]))
            logs["online/episode_return"] = float(
                np.mean([record.episode_return for record in finished])
            )
            logs["online/episode_cost"] = episode_cost
            logs["online/cumulative_cost"] = collector.cumulative_cost
            logs["online/env_steps"] = float(collector.env_steps)
            if not warming_up:
                logs.update(self.multiplier.update(episode_cost, self.context.cost_limit))
        logs["multiplier/lambda"] = self.multiplier.value
        if not warming_up:
            self.update_credit += self.config.update_to_data * collector.num_envs
            while self.update_credit >= 1.0:
                batch = self.sampler.sample(self.context.batch_size, self.context.generator)
                logs.update(self.update.update(batch, self.multiplier.value))
                self.update_credit -= 1.0
        return logs

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, multiplier, replay rows, collector counters, update credit."""
        collector = (
            self._collector.state_dict() if self._collector is not None else self._collector_state
        )
        return {
            "update": self.update.state_dict(),
            "multiplier": self.multiplier.state_dict(),
            "replay": self.replay.state_dict(),
            "collector": collector,
            "update_credit": self.update_credit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update.load_state_dict(state["update"])
        self.multiplier.load_state_dict(state["multiplier"])
        self.replay.load_state_dict(state["replay"])
        self.update_credit = float(state["update_credit"])
        self._collector_state = state["collector"]
        if self._collector is not None and self._collector_state is not None:
            self._collector.load_state_dict(self._collector_state)


class SACLag:
    """SAC-Lag from scratch: a fresh actor and critics, trained online only."""

    def __init__(self, config: SACLagConfig, context: TrainingContext) -> None:
        actor = context.new_actor()
        critics = context.new_critics(
            {"reward": config.reward_critics, "cost": config.cost_critics}
        )
        update = SACLagUpdate(config, context, actor, critics, config.initial_temperature)
        self.learner = OnlineLearner(config, context, update)

    @property
    def actor(self) -> SquashedGaussianActor:
        return self.learner.update.actor

    def start_stage(self, stage: str) -> None:
        """One stage; the environments open on the first step."""

    def step(self, stage: str) -> Logs:
        return self.learner.step()

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)


SPEC = AlgorithmSpec(
    name="sac-lag",
    config_type=SACLagConfig,
    build=SACLag,
    needs_dataset=False,
    summary="online SAC-Lag from scratch in the task's environments (no dataset; --steps "
    "counts vector environment steps)",
)
