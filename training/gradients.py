"""DRCORL safe adaptation: gradient manipulation between reward and cost, gated by slack bands.

Gradient manipulation follows Gu et al. (2024a), which DRCORL adopts (its Eq. 12): with g_r the
reward-objective gradient and g_c the cost-objective gradient (both as descent directions of
their losses),
    aligned (g_r . g_c >= 0):    g = (g_r + g_c) / 2
    conflicting (g_r . g_c < 0): g = (g_r+ + g_c+) / 2,  g_r+ = g_r - (g_r . g_c / |g_c|^2) g_c,
                                                         g_c+ = g_c - (g_c . g_r / |g_r|^2) g_r,
i.e. each gradient projected onto the normal plane of the other.

The gate compares the cost estimate, normalised by the cost limit (the paper sets the slack
"relative to the normalized cost"), with the band [1 - h-, 1 + h+]: below it a reward step,
above it a cost step, inside it the manipulated combination. h+ and h- decay linearly from
their start (0.2) to 0 over the extraction stage.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class SafeStep(enum.Enum):
    """Which objective a safe-adaptation step follows."""

    REWARD = "reward"
    MANIPULATED = "manipulated"
    COST = "cost"


def manipulate_gradients(
    reward_grad: torch.Tensor, cost_grad: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Half the sum of two flat gradients, each projected off the other when they conflict."""
    dot = torch.dot(reward_grad, cost_grad)
    if dot >= 0:
        return 0.5 * (reward_grad + cost_grad)
    reward_projected = reward_grad - dot / (cost_grad.dot(cost_grad) + eps) * cost_grad
    cost_projected = cost_grad - dot / (reward_grad.dot(reward_grad) + eps) * reward_grad
    return 0.5 * (reward_projected + cost_projected)


@dataclass(frozen=True)
class SlackBands:
    """h+ and h- decaying linearly from their start values to 0 over `decay_steps`."""

    start_upper: float = 0.2
    start_lower: float = 0.2
    decay_steps: int = 1

    def at(self, step: int) -> tuple[float, float]:
        """(h+, h-) at this step of the decay."""
        remaining = max(0.0, 1.0 - step / max(self.decay_steps, 1))
        return self.start_upper * remaining, self.start_lower * remaining


def choose_step(cost_estimate: float, cost_limit: float, upper: float, lower: float) -> SafeStep:
    """Gate on the normalised cost: reward below 1 - h-, cost above 1 + h+, manipulated between.

    A cost limit of 0 has no scale to normalise by: its bands are h wide in cost units.
    """
    scale = cost_limit if cost_limit > 0 else 1.0
    # compared in cost units, so a band edge such as 10 * 1.2 is not moved by a division
    if cost_estimate < cost_limit - lower * scale:
        return SafeStep.REWARD
    if cost_estimate > cost_limit + upper * scale:
        return SafeStep.COST
    return SafeStep.MANIPULATED


def flat_gradient(
    loss: torch.Tensor, parameters: Sequence[torch.nn.Parameter], retain_graph: bool = False
) -> torch.Tensor:
    """The gradient of loss with respect to parameters, concatenated into one vector."""
    grads = torch.autograd.grad(
        loss, list(parameters), retain_graph=retain_graph, allow_unused=True
    )
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


def assign_flat_gradient(parameters: Sequence[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """Write a flat gradient vector back into each parameter's .grad."""
    needed = sum(parameter.numel() for parameter in parameters)
    if needed != flat.numel():
        raise ValueError(f"flat gradient has {flat.numel()} entries, parameters need {needed}")
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
        offset += size
