"""CPQ: Constraints Penalized Q-learning (Xu, Zhan & Zhu, AAAI 2022), as OSRL implements it.

CPQ is Marvel's offline stage (seed 002) and an offline algorithm on its own
(``safepolicy train cpq``). One update, in OSRL's order:

1. the conditional VAE (training/vae.py) takes one ELBO step on the batch's (s, a);
2. the critics (one fused ensemble, groups ``reward`` and ``cost``) take one step:
   - cost:   (Qc(s, a) - [c + gamma (1 - d) Qc'(s', a')])^2 - alpha_p * (E_ood Qc - qc_thres),
     a' ~ pi(s'); the out-of-distribution (OOD) actions are ``sample_actions`` draws from
     pi(. | s) per state whose VAE posterior KL to the prior is in the top ``ood_fraction`` of
     the batch's draws (OSRL: KL >= its 0.75 quantile), so the penalty pushes their cost Q up;
   - reward: (Q(s, a) - [r + gamma (1 - d) 1[Qc'(s', a') <= qc_limit] Q'(s', a')])^2, i.e. the
     reward Q is backed up only through next actions whose cost Q is within the threshold;
   - alpha_p (the penalty weight, a dual variable) moves towards keeping E_ood Qc >= qc_thres:
     log alpha_p += lr * alpha_p * (qc_thres - E_ood Qc), clamped to [-5, 5] (OSRL's rule);
3. the actor, a squashed Gaussian (the project's exported policy form), minimises
   E[alpha log pi(a|s) - 1[Qc(s, a) <= qc_limit] Q(s, a)], a ~ pi(s) reparameterised, and the
   SAC temperature alpha is tuned towards the target entropy -|A|;
4. the target critics move by Polyak averaging (tau).

Thresholds (OSRL): qc_limit = L (1 - gamma^T) / ((1 - gamma) T), the per-step share of the episode
limit L over T steps, discounted; qc_thres = qc_scalar * qc_limit is the level OOD cost Q is
pushed to. Reduction of each group's members (OSRL's ``predict``): the minimum, for reward and
cost alike.

The VAE is trained jointly, one step per update, as OSRL does (no separate ``vae`` stage): it is
the reference's schedule, so the speed comparison and the results are like for like, and with
lr 1e-3 the VAE settles within the first few thousand of 100k updates.

Departures from OSRL (osrl-lib 0.1.0) and the paper, and why:
- The penalty acts on the live cost critics. OSRL computes E_ood Qc under ``torch.no_grad``
  with the target cost critic, so its penalty term carries no gradient and the cost critic is
  plain TD (the term only drives alpha_p). The paper's loss is -alpha_p E_{a~nu} Qc(s, a) on the
  critic being trained; that is what this file does, per cost member (each member its own
  penalty, as each has its own TD loss). alpha_p's update reads the members' minimum, as OSRL.
- OOD draws are squashed actions tanh(u). OSRL draws u from the pre-tanh Gaussian and feeds it
  unsquashed to the VAE and the cost critic (values outside the action box).
- The OOD set is the top-k of the KL scores, k = ceil(ood_fraction * draws), instead of
  ``KL >= quantile(KL, 0.75)``: the same set up to ties, with a fixed size, so the penalised
  critic pass needs no host sync and evaluates only those k draws (a quarter of OSRL's work
  there). E_ood Qc is the mean over those k draws (the paper's E_{a~nu} Qc). OSRL divides the
  sum over the OOD draws by all draws (its mean over draws of 1[OOD] * Qc), which asks OOD
  cost Q to reach 1 / ood_fraction = 4x qc_thres. With the penalty's gradient live, that form
  took the mean OOD cost Q of a BallRun run (limit 10, 4,000 steps) to about 275 against
  qc_thres 9.5, its critic TD loss grew to about 2,100, and it ended unsafe (normalised cost
  2.95; benchmarks/results/quality-cpq-osrl-ood-mean).
- The penalty weight's step size is 3e-3, not OSRL's 1e-4. OSRL's rate moves a dual whose
  penalty never reaches the critic; with the live penalty the linear term -alpha_p E_ood Qc
  pushes OOD cost Q up at a constant force until alpha_p falls, and at 1e-4 it falls too
  slowly: on BallRun (limit 10, 64-wide nets, batch 128, 600 steps; `train cpq --set
  penalty_lr=...`) E_ood Qc reached 27 against qc_thres 9.5 and was still rising, the critic
  TD loss at 65 and growing; at 3e-3 E_ood Qc was 10.4 and the TD loss 4.8 at step 600; at
  3e-2, 5.3 (below the target) and 0.9.
- The cost target is masked at terminal states, (1 - d); OSRL's cost backup has no mask.
- The actor is SAC-style, with an entropy bonus and automatic temperature (``entropy="auto"``);
  OSRL's CPQ actor loss has no entropy term (``entropy="off"`` reproduces it). Marvel finetunes
  this actor with SAC-Lag, whose temperature starts where CPQ's ends. The critics' targets have
  no entropy term (as OSRL); VPA (vpa.py) adds the paper's.
- The VAE sees normalised observations (the dataset's statistics, like the actor and critics);
  OSRL feeds it raw observations. Its ELBO sums squared error over action dims and KL over
  latent dims (training/vae.py), where OSRL averages both; with the latent 2x the action size,
  beta = 0.5 here weighs the KL twice as much relative to the reconstruction as OSRL's 0.5.
- No target actor (OSRL keeps one but never reads it) and one fused critic optimiser (Adam is
  elementwise, so one optimiser over stacked members equals OSRL's two).
- All noise of an update (next actions, OOD draws, actor sample, VAE latent) is one draw from
  the run's CPU generator, so runs replay and resume bit for bit.

State layout (``state_dict``; what Marvel's stages load from a ``train cpq`` run's
``checkpoints/stage-cpq.pt``, whose ``["algorithm"]`` entry is this dict; ``cpq_state`` reads it):
    actor                  SquashedGaussianActor state (the offline policy pi0)
    critic                 CriticEnsemble state, groups {"reward": reward_critics,
                           "cost": cost_critics} in that order (Q then Qc)
    target_critic          the same layout, the Polyak-averaged targets
    log_temperature        0-dim tensor, log of SAC's alpha
    vae, vae_normalizer    the ConditionalVAE and its observation normaliser
    log_penalty            0-dim tensor, log of the OOD penalty weight alpha_p
    *_optimizer            Adam states of actor, critic, vae, temperature
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

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
from safepolicy.training.config import Config, PositiveInt, param
from safepolicy.training.data import Batch
from safepolicy.training.losses import (
    ensemble_mse,
    reduce_groups,
    sac_actor_loss,
    sac_temperature_loss,
    stacked_targets,
    td_target,
)
from safepolicy.training.networks import (
    ObservationNormalizer,
    SquashedGaussianActor,
    squashed_gaussian_log_prob,
)
from safepolicy.training.registry import AlgorithmSpec, Stage
from safepolicy.training.vae import ConditionalVAE, elbo_loss, gaussian_kl_to_standard_normal

STAGE = "cpq"
# OSRL's CPQ configs for the Bullet tasks train on batches of 512 (run.batch_size's default is 256)
BULLET_TASKS = (
    "BallRun",
    "BallCircle",
    "CarRun",
    "CarCircle",
    "DroneRun",
    "DroneCircle",
    "AntRun",
    "AntCircle",
)


class CPQConfig(Config):
    """CPQ (Xu et al. 2022) with OSRL's Bullet settings; its steps are ``run.steps``."""

    actor_lr: float = param(1e-4, "actor learning rate", "OSRL: 1e-4", gt=0.0)
    critic_lr: float = param(1e-3, "reward and cost critic learning rate", "OSRL: 1e-3", gt=0.0)
    vae_lr: float = param(1e-3, "VAE learning rate", "OSRL: 1e-3", gt=0.0)
    penalty_lr: float = param(
        3e-3,
        "step size of the OOD penalty weight alpha_p",
        "OSRL alpha_lr: 1e-4 (see the departures)",
        gt=0.0,
    )
    log_penalty_bound: float = param(
        5.0, "log alpha_p is clamped to [-bound, bound]", "OSRL: 5", gt=0.0
    )
    qc_scalar: float = param(
        1.5, "OOD cost Q is pushed to qc_scalar * qc_limit", "OSRL: 1.5", gt=0.0
    )
    sample_actions: int = param(10, "policy draws per state scored by the VAE", "OSRL: 10", gt=0)
    ood_fraction: float = param(
        0.25,
        "share of the draws (highest VAE KL) treated as OOD",
        "OSRL: KL above its 0.75 quantile",
        gt=0.0,
        le=1.0,
    )
    vae_kl_weight: float = param(0.5, "beta of the VAE's ELBO", "OSRL: 0.5", gt=0.0)
    vae_hidden_sizes: list[PositiveInt] = param(
        [400, 400], "VAE encoder/decoder widths", "OSRL: 400, 400", min_length=1
    )
    reward_critics: int = param(
        2, "reward Q ensemble size (targets take the minimum)", "OSRL num_q: 2", ge=1
    )
    cost_critics: int = param(
        2, "cost Q ensemble size (targets take the minimum)", "OSRL num_qc: 2", ge=1
    )
    tau: float = param(0.005, "target network EMA rate", "OSRL: 0.005", gt=0.0, le=1.0)
    entropy: Literal["auto", "off"] = param(
        "auto",
        "auto: SAC entropy bonus with a tuned temperature; off: OSRL's actor loss",
        "SAC actor (OSRL: none)",
    )
    temperature_lr: float = param(3e-4, "SAC temperature learning rate", "SAC: 3e-4", gt=0.0)
    initial_temperature: float = param(1.0, "SAC alpha at the start", "SAC: 1.0", gt=0.0)


def cost_threshold(cost_limit: float, gamma: float, episode_length: int) -> float:
    """OSRL's per-step cost threshold L (1 - gamma^T) / ((1 - gamma) T) in Q units."""
    if gamma >= 1.0:
        return cost_limit
    return cost_limit * (1.0 - gamma**episode_length) / ((1.0 - gamma) * episode_length)


def squashed_sample(
    actor: SquashedGaussianActor, observations: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised action in [-1, 1] (critic units) and its log-probability, from the
    given standard normal ``noise`` (shape of the actions, or [draws, *that])."""
    mean, log_std = actor.distribution(observations)
    pre_squash = mean + log_std.exp() * noise
    return torch.tanh(pre_squash), squashed_gaussian_log_prob(pre_squash, mean, log_std)


def ood_scores(
    vae: ConditionalVAE,
    observations: torch.Tensor,
    actions: torch.Tensor,
) -> torch.Tensor:
    """OSRL's OOD score: KL of the VAE posterior q(z | s, a) to the prior, one per row."""
    mean, log_std = vae.encode(observations, actions)
    return gaussian_kl_to_standard_normal(mean, log_std)


def penalty_step(
    log_penalty: torch.Tensor, ood_cost: torch.Tensor, target: float, lr: float, bound: float
) -> torch.Tensor:
    """OSRL's alpha_p update: log a += lr * a * (target - E_ood Qc), clamped (device ops)."""
    updated = log_penalty + lr * log_penalty.exp() * (target - ood_cost)
    return updated.clamp(-bound, bound)


class CPQ:
    """CPQ's networks and one update; the module docstring lists the state layout."""

    COMPONENTS = (
        "actor",
        "critic",
        "target_critic",
        "vae",
        "vae_normalizer",
        "actor_optimizer",
        "critic_optimizer",
        "vae_optimizer",
        "temperature_optimizer",
    )

    def __init__(self, config: CPQConfig, context: TrainingContext) -> None:
        self.config = config
        self.context = context
        self.buffer = context.offline  # a clear error now if the run has no dataset
        self.qc_limit = cost_threshold(context.cost_limit, context.gamma, context.episode_length)
        self.qc_target = config.qc_scalar * self.qc_limit
        self.target_entropy = -float(context.action_dim)
        draws = config.sample_actions * context.batch_size
        self.ood_count = max(1, math.ceil(config.ood_fraction * draws))

        self.actor = context.new_actor()
        self.critic = context.new_critics(
            {"reward": config.reward_critics, "cost": config.cost_critics}
        )
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.cost_members = self.critic.members("cost")
        self.vae_normalizer = context.place(ObservationNormalizer(context.obs_dim))
        self.vae = context.place(
            ConditionalVAE(context.obs_dim, context.action_dim, config.vae_hidden_sizes)
        )
        device = context.device
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(config.initial_temperature), device=device)
        )
        self.log_penalty = torch.zeros((), device=device)
        self.actor_optimizer = adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)
        self.vae_optimizer = adam(self.vae.parameters(), lr=config.vae_lr)
        self.temperature_optimizer = adam([self.log_temperature], lr=config.temperature_lr)

    def start_stage(self, stage: str) -> None:
        """One stage, ``cpq``; nothing to set up."""

    def step(self, stage: str) -> Logs:
        """One CPQ update on a fresh minibatch."""
        return self.update(self.buffer.sample(self.context.batch_size, self.context.generator))

    def update_noise(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """All standard normal draws of one update, from the run's generator in one call:
        next actions, OOD draws, the actor's sample, the VAE's latent."""
        actions, latent = self.context.action_dim, self.vae.latent_dim
        draws = self.config.sample_actions
        sizes = [
            batch_size * actions,
            draws * batch_size * actions,
            batch_size * actions,
            batch_size * latent,
        ]
        noise = torch.randn(sum(sizes), generator=self.context.generator)
        noise = noise.to(self.context.device, non_blocking=True)
        next_noise, ood_noise, actor_noise, latent_noise = noise.split(sizes)
        return (
            next_noise.view(batch_size, actions),
            ood_noise.view(draws, batch_size, actions),
            actor_noise.view(batch_size, actions),
            latent_noise.view(batch_size, latent),
        )

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """VAE, critics (with the OOD penalty), actor and temperature, targets: OSRL's order."""
        next_noise, ood_noise, actor_noise, latent_noise = self.update_noise(
            batch.observations.shape[0]
        )
        vae_loss = self.vae_step(batch, latent_noise)
        critic_loss, ood_cost = self.critic_step(batch, next_noise, ood_noise)
        actor_loss, entropy = self.actor_step(batch, actor_noise)
        soft_update(self.target_critic, self.critic, self.config.tau)
        return {
            "loss/vae": vae_loss,
            "loss/critic": critic_loss,
            "loss/actor": actor_loss,
            "cpq/ood_cost_q": ood_cost,
            "cpq/penalty": self.log_penalty.exp(),
            "cpq/temperature": self.log_temperature.detach().exp(),
            "cpq/entropy": entropy,
        }

    def vae_step(self, batch: Batch, latent_noise: torch.Tensor) -> torch.Tensor:
        states = self.vae_normalizer(batch.observations)
        loss = elbo_loss(self.vae, states, batch.actions, self.config.vae_kl_weight, latent_noise)
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def targets(self, batch: Batch, next_noise: torch.Tensor) -> torch.Tensor:
        """Reward targets gated by the next cost Q, and cost targets: [members, batch]."""
        next_actions, _ = squashed_sample(self.actor, batch.next_observations, next_noise)
        next_q = self.target_critic(batch.next_observations, next_actions)
        next_reward, next_cost = reduce_groups(next_q, self.critic.group_sizes, ("min", "min"))
        within = (next_cost <= self.qc_limit).float()
        reward_target = td_target(
            batch.rewards, batch.terminals, within * next_reward, self.context.gamma
        )
        cost_target = td_target(batch.costs, batch.terminals, next_cost, self.context.gamma)
        return stacked_targets([reward_target, cost_target], self.critic.group_sizes)

    @torch.no_grad()
    def ood_draws(
        self,
        observations: torch.Tensor,
        ood_noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``ood_count`` policy draws with the highest VAE KL: (observations, actions)."""
        draws, batch_size, action_dim = ood_noise.shape
        actions, _ = squashed_sample(self.actor, observations, ood_noise)  # [draws, batch, A]
        actions = actions.reshape(draws * batch_size, action_dim)
        states = observations.repeat(draws, 1)  # row i is state i % batch, like ``actions``
        with torch.autocast(
            states.device.type, dtype=torch.bfloat16, enabled=self.context.precision == "bf16-mixed"
        ):
            scores = ood_scores(self.vae, self.vae_normalizer(states), actions)
        chosen = scores.float().topk(self.ood_count, sorted=False).indices
        return states[chosen], actions[chosen]

    def critic_step(
        self,
        batch: Batch,
        next_noise: torch.Tensor,
        ood_noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets(batch, next_noise)
        ood_observations, ood_actions = self.ood_draws(batch.observations, ood_noise)
        td_loss = ensemble_mse(self.critic(batch.observations, batch.actions), targets)
        # E_{a ~ nu} Qc per cost member: the mean over the OOD draws (the paper's expectation)
        ood_cost = self.critic(ood_observations, ood_actions, members=self.cost_members).mean(1)
        penalty = self.log_penalty.exp() * (ood_cost - self.qc_target).sum()
        loss = td_loss - penalty
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        measured = ood_cost.detach().min()
        self.log_penalty = penalty_step(
            self.log_penalty,
            measured,
            self.qc_target,
            self.config.penalty_lr,
            self.config.log_penalty_bound,
        )
        return td_loss.detach(), measured

    def actor_step(
        self,
        batch: Batch,
        actor_noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        actions, log_prob = squashed_sample(self.actor, batch.observations, actor_noise)
        # the critics' own weights get no gradient from the actor loss
        self.critic.requires_grad_(False)
        q_values = self.critic(batch.observations, actions)
        self.critic.requires_grad_(True)
        q_reward, q_cost = reduce_groups(q_values, self.critic.group_sizes, ("min", "min"))
        gated_reward = (q_cost <= self.qc_limit).float() * q_reward
        if self.config.entropy == "auto":
            temperature = self.log_temperature.exp()
        else:
            temperature = torch.zeros((), device=self.context.device)
        loss = sac_actor_loss(gated_reward, log_prob, temperature)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optimizer.step()
        if self.config.entropy == "auto":
            temperature_loss = sac_temperature_loss(
                self.log_temperature, log_prob, self.target_entropy
            )
            self.temperature_optimizer.zero_grad(set_to_none=True)
            temperature_loss.backward()
            self.temperature_optimizer.step()
        return loss.detach(), -log_prob.detach().mean()

    def state_dict(self) -> dict[str, Any]:
        return {
            **component_states(self, self.COMPONENTS),
            "log_temperature": self.log_temperature.detach().clone(),
            "log_penalty": self.log_penalty.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_component_states(self, self.COMPONENTS, state)
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])
        self.log_penalty = state["log_penalty"].to(self.context.device).clone()


def cpq_state(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The CPQ state (layout in the module docstring) from a ``train cpq`` run directory or
    one of its checkpoints (``checkpoints/stage-cpq.pt`` when a directory is given)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / f"stage-{STAGE}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no CPQ checkpoint; run `safepolicy train cpq` to the "
            "end of its stage or name its checkpoint file"
        )
    payload = torch.load(path, map_location=device, weights_only=False)
    algorithm = payload.get("config", {}).get("algorithm") if isinstance(payload, dict) else None
    if algorithm != "cpq":
        raise ValueError(f"{path}: a checkpoint of {algorithm!r}, not of a `train cpq` run")
    return payload["algorithm"]


SPEC = AlgorithmSpec(
    name="cpq",
    config_type=CPQConfig,
    build=CPQ,
    summary="CPQ: VAE-marked OOD actions get their cost Q pushed up; reward Q backed up only "
    "where cost Q is within the threshold; SAC-style actor",
    stages=lambda config, run: [Stage(STAGE, run.steps)],
    task_overrides={task: {"run.batch_size": 512} for task in BULLET_TASKS},
)
