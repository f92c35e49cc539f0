"""Value pre-alignment (VPA, Marvel, seed 002, eqs. 8-9): fitted-Q evaluation of the frozen
offline policy pi0 on the offline data, starting from the pretrained Q and Qc.

Before online finetuning the offline critics answer the offline objective (CPQ pushed the cost
Q of out-of-distribution actions up and gated the reward backup); VPA re-evaluates pi0 under the
online objective, with no penalty, SARSA-style with the paper's entropy terms:
    Q(s, a)  <- r + gamma (1 - d) [Q'(s', a')  - alpha   log pi0(a' | s')],  a' ~ pi0(s')
    Qc(s, a) <- c + gamma (1 - d) [Qc'(s', a') - alpha_c log pi0(a' | s')]
(Q', Qc': the Polyak-averaged targets). The entropy bonus raises both values where pi0 is
uncertain, which is what makes the finetuned policy explore there. pi0 is not updated.

It works on CPQ's state layout (cpq.py): the actor, one ``CriticEnsemble`` with groups
``reward`` and ``cost``, and its target; ``ValuePreAlignment`` holds references to those
modules and updates the critics in place, so marvel.py runs it as a ``vpa`` stage between
``cpq`` and the online stage, with ``state_dict`` (its optimiser) in the stage's state.

Settings: alpha = 1e-3 and alpha_c = 5e-4 (Marvel Table 6), about 5,000 steps
(shared/notes/algorithm-facts.md, from the public code); learning rates are Table 6's Q and
Qc rates (3e-5, 8e-5), which the paper lists once for its critics. Departures and choices:
- The paper's public code has the entropy terms off by default; the paper keeps them, and so
  does this default (``entropy=false`` turns them off).
- The paper trains Q and Qc with their own optimisers; here they are one fused ensemble with
  one Adam, and each group's step is rescaled to its own learning rate after the step
  (``rescale_group_steps``). Adam's moments do not depend on the learning rate, so this is
  exactly Adam at each group's rate.
- Each group's next value reduces its members by ``reward_reduction`` / ``cost_reduction``
  (the minimum by default, as CPQ's targets): Marvel does not state it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from safepolicy.training.algorithms.base import Logs, TrainingContext, adam, soft_update
from safepolicy.training.algorithms.cpq import squashed_sample
from safepolicy.training.config import Config, param
from safepolicy.training.data import Batch
from safepolicy.training.losses import ensemble_mse, reduce_groups, stacked_targets, td_target
from safepolicy.training.networks import CriticEnsemble, SquashedGaussianActor

STAGE = "vpa"
Reduction = Literal["min", "max", "mean"]


class VPAConfig(Config):
    """Marvel's value pre-alignment: entropy-regularised FQE of the frozen offline policy."""

    steps: int = param(5_000, "VPA updates", "Marvel: about 5,000", gt=0)
    reward_temperature: float = param(
        1e-3, "alpha: entropy weight in the Q targets", "Marvel Table 6: 1e-3", ge=0.0
    )
    cost_temperature: float = param(
        5e-4, "alpha_c: entropy weight in the Qc targets", "Marvel Table 6: 5e-4", ge=0.0
    )
    entropy: bool = param(
        True, "keep the entropy terms (false: plain FQE, as the public code's default)", "paper: on"
    )
    reward_lr: float = param(3e-5, "Q learning rate", "Marvel Table 6: 3e-5", gt=0.0)
    cost_lr: float = param(8e-5, "Qc learning rate", "Marvel Table 6: 8e-5", gt=0.0)
    tau: float = param(0.005, "target network EMA rate", "SAC: 0.005", gt=0.0, le=1.0)
    reward_reduction: Reduction = param(
        "min", "how Q's members combine in the target", "not stated; CPQ: min"
    )
    cost_reduction: Reduction = param(
        "min", "how Qc's members combine in the target", "not stated; CPQ: min"
    )


def vpa_targets(
    next_q: torch.Tensor,
    next_log_prob: torch.Tensor,
    batch: Batch,
    gamma: float,
    sizes: list[int],
    reductions: tuple[str, str],
    temperatures: tuple[float, float],
) -> torch.Tensor:
    """Eqs. 8-9's targets for the reward and cost groups, [members, batch]:
    signal + gamma (1 - d) (next value - temperature * log pi0(a' | s'))."""
    next_reward, next_cost = reduce_groups(next_q, sizes, reductions)
    alpha, alpha_c = temperatures
    reward = td_target(batch.rewards, batch.terminals, next_reward - alpha * next_log_prob, gamma)
    cost = td_target(batch.costs, batch.terminals, next_cost - alpha_c * next_log_prob, gamma)
    return stacked_targets([reward, cost], sizes)


def rescale_group_steps(
    critic: CriticEnsemble, before: list[torch.Tensor], scales: dict[str, float]
) -> None:
    """Scale each group's last optimiser step, p <- before + scale * (p - before), in place
    (parameters are stacked along dim 0 by member)."""
    with torch.no_grad():
        for parameter, old in zip(critic.parameters(), before, strict=True):
            if parameter.dim() == 0 or parameter.shape[0] != critic.ensemble_size:
                continue  # not a stacked per-member tensor (none today)
            for name, scale in scales.items():
                if scale == 1.0:
                    continue
                members = critic.members(name)
                rows = slice(members[0], members[-1] + 1)
                parameter[rows] = torch.lerp(old[rows], parameter[rows], scale)


class ValuePreAlignment:
    """VPA on CPQ's modules: updates ``critic`` and ``target_critic`` in place, ``actor`` frozen."""

    def __init__(
        self,
        config: VPAConfig,
        context: TrainingContext,
        actor: SquashedGaussianActor,
        critic: CriticEnsemble,
        target_critic: CriticEnsemble,
    ) -> None:
        if set(critic.groups) != {"reward", "cost"}:
            raise ValueError(
                f"VPA needs critics in groups 'reward' and 'cost' (CPQ's layout); "
                f"got {', '.join(critic.groups)}"
            )
        self.config = config
        self.context = context
        self.actor, self.critic, self.target_critic = actor, critic, target_critic
        top_lr = max(config.reward_lr, config.cost_lr)
        self.optimizer = adam(critic.parameters(), lr=top_lr)
        self.step_scales = {"reward": config.reward_lr / top_lr, "cost": config.cost_lr / top_lr}
        self.temperatures = (
            (config.reward_temperature, config.cost_temperature) if config.entropy else (0.0, 0.0)
        )

    def step(self) -> Logs:
        """One VPA update on a fresh minibatch."""
        batch = self.context.offline.sample(self.context.batch_size, self.context.generator)
        return self.update(batch)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        noise = torch.randn(batch.actions.shape, generator=self.context.generator)
        with torch.no_grad():
            next_actions, next_log_prob = squashed_sample(
                self.actor, batch.next_observations, noise.to(batch.actions.device)
            )
            next_q = self.target_critic(batch.next_observations, next_actions)
            targets = vpa_targets(
                next_q,
                next_log_prob,
                batch,
                self.context.gamma,
                self.critic.group_sizes,
                (self.config.reward_reduction, self.config.cost_reduction),
                self.temperatures,
            )
        q_values = self.critic(batch.observations, batch.actions)
        loss = ensemble_mse(q_values, targets)
        before = [parameter.detach().clone() for parameter in self.critic.parameters()]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        rescale_group_steps(self.critic, before, self.step_scales)
        soft_update(self.target_critic, self.critic, self.config.tau)
        return {"loss/vpa": loss.detach(), "vpa/entropy": -next_log_prob.mean()}

    def state_dict(self) -> dict[str, Any]:
        """The optimiser (the critics themselves are in the owner's state)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
