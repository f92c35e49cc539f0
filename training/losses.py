"""Losses shared by the algorithms: TD targets, expectile, AWR, TD3+BC actor, SAC actor/temperature.

Critic ensembles stack their members along dim 0 ([members, batch]); a signal's critics are a
contiguous group (e.g. 2 reward critics then 5 cost critics), given here by ``sizes``. Each
group reduces its members with its own rule: ``min`` for a signal to maximise (clipped double
Q, pessimistic for reward), ``max`` for a signal to minimise (pessimistic for cost), ``mean``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from safepolicy.training.networks import squashed_gaussian_log_prob

REDUCTIONS = ("min", "max", "mean")


def reduce_members(q_values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Combine an ensemble group [members, batch] into one value per sample."""
    if reduction == "min":
        return q_values.min(dim=0).values
    if reduction == "max":
        return q_values.max(dim=0).values
    if reduction == "mean":
        return q_values.mean(dim=0)
    raise ValueError(f"ensemble reduction must be one of {REDUCTIONS}, got {reduction!r}")


def upper_confidence_bound(q_values: torch.Tensor, k: float) -> torch.Tensor:
    """mean + k * std over an ensemble group [members, batch]: a pessimistic cost estimate.

    Members disagree most where the data is thin, so the bound rises exactly where a policy
    leaves the data; std is the unbiased sample std (0 for a single member).
    """
    if q_values.shape[0] < 2:
        return q_values[0]
    return q_values.mean(dim=0) + k * q_values.std(dim=0)


ESTIMATES = ("mean", "max", "ucb")


def ensemble_estimate(q_values: torch.Tensor, estimate: str, ucb_k: float = 1.0) -> torch.Tensor:
    """One value per sample from an ensemble group [members, batch]: the members' mean, their
    max, or the upper confidence bound mean + ucb_k * std (``ESTIMATES``)."""
    if estimate == "ucb":
        return upper_confidence_bound(q_values, ucb_k)
    if estimate in ("mean", "max"):
        return reduce_members(q_values, estimate)
    raise ValueError(f"ensemble estimate must be one of {ESTIMATES}, got {estimate!r}")


def reduce_groups(
    q_values: torch.Tensor,
    sizes: Sequence[int],
    reductions: Sequence[str],
) -> list[torch.Tensor]:
    """Split a stacked ensemble into its groups and reduce each with its own rule."""
    groups = torch.split(q_values, list(sizes))
    return [reduce_members(group, rule) for group, rule in zip(groups, reductions, strict=True)]


def td_target(
    signal: torch.Tensor, terminals: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """One-step Bellman target y = signal + gamma (1 - done) V(s')."""
    return signal + gamma * (1.0 - terminals) * next_value


def stacked_targets(targets: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor:
    """Each signal's target repeated for every critic of its group: [sum(sizes), batch]."""
    return torch.cat([target.expand(size, -1) for target, size in zip(targets, sizes, strict=True)])


def td_targets(
    next_q: torch.Tensor,
    signals: Sequence[torch.Tensor],
    terminals: torch.Tensor,
    gamma: float,
    sizes: Sequence[int],
    reductions: Sequence[str],
) -> torch.Tensor:
    """Targets for a grouped ensemble from its target network's next-state values.

    ``signals[g]`` (rewards, costs, ...) is the per-step signal of group g, whose ``sizes[g]``
    members' next values are combined by ``reductions[g]``.
    """
    next_values = reduce_groups(next_q, sizes, reductions)
    return stacked_targets(
        [
            td_target(signal, terminals, value, gamma)
            for signal, value in zip(signals, next_values, strict=True)
        ],
        sizes,
    )


def ensemble_mse(q_values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error per member, summed over the ensemble (each member its own loss)."""
    return (q_values - targets).pow(2).mean(dim=1).sum()


def expectile_loss(differences: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric L2 of IQL: |tau - 1(u < 0)| * u^2, averaged."""
    weight = torch.where(differences > 0, expectile, 1.0 - expectile)
    return (weight * differences.pow(2)).mean()


def awr_weights(advantages: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """Advantage-weighted regression weights exp(beta * A), clipped at ``max_weight``."""
    return torch.exp(beta * advantages).clamp(max=max_weight)


def td3bc_actor_loss(
    q_values: torch.Tensor,
    policy_actions: torch.Tensor,
    dataset_actions: torch.Tensor,
    alpha: float,
    q_scale: torch.Tensor,
) -> torch.Tensor:
    """-lambda_bc * mean Q(s, pi(s)) + mean (pi(s) - a)^2, lambda_bc = alpha / q_scale.

    ``q_scale`` is what the Q term is divided by; TD3+BC uses the batch's mean |Q(s, pi(s))|
    (detached). The TD3+BC oracle passes the Lagrangian Q' = Q_r - lambda Q_c and its scale.
    """
    q_weight = alpha / q_scale.clamp(min=1e-6)
    return -q_weight * q_values.mean() + F.mse_loss(policy_actions, dataset_actions)


def log_std_loss(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    unit_actions: torch.Tensor,
) -> torch.Tensor:
    """Negative log-likelihood of dataset actions through the log-std head only."""
    pre_squash = torch.atanh(unit_actions.clamp(-1 + 1e-6, 1 - 1e-6))
    return -squashed_gaussian_log_prob(pre_squash, mean.detach(), log_std).mean()


def sac_actor_loss(
    q_values: torch.Tensor,
    log_prob: torch.Tensor,
    temperature: torch.Tensor,
) -> torch.Tensor:
    """SAC's policy loss E[alpha log pi(a|s) - Q(s, a)], a ~ pi (reparameterised)."""
    return (temperature.detach() * log_prob - q_values).mean()


def sac_temperature_loss(
    log_temperature: torch.Tensor, log_prob: torch.Tensor, target_entropy: float
) -> torch.Tensor:
    """SAC's automatic temperature: -E[log alpha (log pi(a|s) + H_target)]."""
    return -(log_temperature * (log_prob.detach() + target_entropy)).mean()
